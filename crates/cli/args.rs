//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Continuous, verified backups of a live SQLite database to S3 or a local folder.
#[derive(Debug, Parser)]
#[command(name = "lifeboat", version, about)]
pub struct Args {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "LIFEBOAT_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `debug`, `lifeboat_agent=debug`, ...); RUST_LOG also works.
    #[arg(long, global = true, default_value = "info", env = "LIFEBOAT_LOG")]
    pub log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replicate databases continuously until SIGINT or SIGTERM, then sync a last time.
    Replicate(ReplicateArgs),
    /// Run an app under lifeboat: restore on boot if the database is missing, replicate while it
    /// runs, forward signals, sync a last time when it exits, and exit with its status.
    Run(RunArgs),
    /// Restore a database from a replica, verified bit for bit.
    Restore(RestoreArgs),
    /// List the databases of the configuration file, their replicas and each replica's newest
    /// restore point (one listing per replica).
    Databases(DatabasesArgs),
    /// List a replica's generations and their restorable ranges (from one listing).
    Generations(InspectArgs),
    /// List a replica's snapshots (from one listing).
    Snapshots(ListArgs),
    /// List a replica's segments (from one listing).
    Segments(ListArgs),
    /// Read and check every object of a replica and rebuild every generation; non-zero exit on
    /// any problem.
    Verify(InspectArgs),
    /// Delete generations whose every restore point is older than the retention window (the
    /// newest restorable generation always stays; a chain is never cut).
    Prune(PruneArgs),
    /// Disaster-recovery drill: restore the newest state into a scratch folder, time it, check
    /// it (integrity, foreign keys, checksum), optionally compare it with the live database;
    /// exit 2 on any problem. The report is stored in the replica under `drills/`.
    Drill(DrillArgs),
    /// Wait until every transaction committed so far to the databases of a running `lifeboat
    /// run` (or `replicate`) is in every replica (`POST /sync` on its health address); exit 0
    /// when it is, 1 if the timeout passes first.
    Sync(SyncArgs),
    /// List the drill reports stored in a replica (under `drills/`), newest last.
    Drills(DrillsArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, ClapArgs)]
pub struct ReplicateArgs {
    /// Configuration file (several databases, several replicas each); without a database on
    /// the command line, `$LIFEBOAT_CONFIG`, else /etc/lifeboat.toml.
    #[arg(long, short, conflicts_with_all = ["db", "urls"])]
    pub config: Option<PathBuf>,
    /// The database file.
    pub db: Option<PathBuf>,
    /// Replica URLs: `file:///path/to/folder` or `s3://bucket/prefix?endpoint=...&region=...`.
    pub urls: Vec<String>,
    /// Replicate every database in this folder (`/data/tenants`, or with a pattern:
    /// `'/data/tenants/*.sqlite'`; default `*.db`), each under `URL/<file name>`, including
    /// those created while the agent runs. The replica URLs follow.
    #[arg(long, conflicts_with = "config")]
    pub dir_of_databases: Option<PathBuf>,
    /// Average PUT requests per second once the burst is spent.
    #[arg(long)]
    pub puts_per_second: Option<f64>,
    /// Hold the replica path's writer lease while replicating (refuses to start while another
    /// instance holds it; needs a store with conditional writes). `run` holds it by default.
    #[arg(long, env = "LIFEBOAT_LEASE")]
    pub lease: bool,
    #[command(flatten)]
    pub agent: AgentFlags,
}

/// The flags `replicate` and `run` share: the health endpoint, the writer lease, retention and
/// snapshots, and the folders backed up with the database.
#[derive(Debug, Clone, ClapArgs)]
pub struct AgentFlags {
    /// Serve `/health` (JSON) and `/metrics` (Prometheus) on this address, e.g. 127.0.0.1:9090.
    #[arg(long, visible_alias = "metrics-addr", env = "LIFEBOAT_HEALTH_ADDR")]
    pub health_addr: Option<String>,
    /// `/health` turns unhealthy once a replica is this far behind (default 60s).
    #[arg(long, env = "LIFEBOAT_HEALTH_MAX_LAG", value_parser = humantime::parse_duration)]
    pub health_max_lag: Option<std::time::Duration>,
    #[command(flatten)]
    pub lease_flags: LeaseFlags,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// A folder to back up with the database (`run` also restores it on boot), `PATH` or
    /// `NAME=PATH` (repeatable).
    #[arg(long = "dir", env = "LIFEBOAT_DIRS", value_delimiter = ',')]
    pub dirs: Vec<String>,
}

impl AgentFlags {
    /// The settings among these that beat the configuration file's.
    pub fn flags(&self) -> crate::config::Flags {
        crate::config::Flags {
            puts_per_second: None,
            health_max_lag: self.health_max_lag,
            retention: self.keep.retention,
            snapshot_interval: self.keep.snapshot_interval,
            snapshot_segments: self.keep.snapshot_segments,
            snapshot_ratio: self.keep.snapshot_ratio,
            pack_segments: self.keep.pack_segments,
            switch_to_wal: self.keep.switch_to_wal,
        }
    }
}

/// Retention and scheduled snapshots, for `replicate` and `run`; each beats the configuration
/// file.
#[derive(Debug, Clone, ClapArgs)]
pub struct KeepArgs {
    /// Keep every restore point this recent (`30d`, `12h`); hourly, delete what none of them
    /// needs. `off` keeps everything. Default: the configuration file's, else 30d.
    #[arg(long, env = "LIFEBOAT_RETENTION")]
    pub retention: Option<crate::config::Retention>,
    /// Take a fresh snapshot within the generation this often (default 24h).
    #[arg(long, env = "LIFEBOAT_SNAPSHOT_INTERVAL", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Option<std::time::Duration>,
    /// Or once this many segments were shipped since the last snapshot (default 1000).
    #[arg(long, env = "LIFEBOAT_SNAPSHOT_SEGMENTS")]
    pub snapshot_segments: Option<u32>,
    /// Or once the segments shipped since the last snapshot hold this many times its bytes (and
    /// are 16 or more), so that restoring the newest state reads about the database's size, not
    /// its whole history (default 4; 0: never).
    #[arg(long, env = "LIFEBOAT_SNAPSHOT_RATIO")]
    pub snapshot_ratio: Option<u32>,
    /// Store this many consecutive small segments (16 KiB or less each) again as one object and
    /// delete them, so a restore reads one object instead of many (default 16; 0: never).
    #[arg(long, env = "LIFEBOAT_PACK_SEGMENTS")]
    pub pack_segments: Option<u32>,
    /// Switch a database in rollback-journal mode (or an empty file) to WAL mode, which lifeboat
    /// needs; without it such a database is refused. The switch is persistent: the app's
    /// connections then use WAL mode too (`-wal` and `-shm` files beside the database).
    #[arg(long, env = "LIFEBOAT_SWITCH_TO_WAL")]
    pub switch_to_wal: bool,
}

#[derive(Debug, ClapArgs)]
pub struct RestoreArgs {
    /// Replica URL, or the path of a database of the configuration file (restored from its
    /// first replica, to that path unless -o says otherwise).
    pub url: String,
    /// Where to write the database (required with a replica URL).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Configuration file to find a database path in (default: `$LIFEBOAT_CONFIG`, else
    /// /etc/lifeboat.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Restore the state right after this transaction: decimal (`1234`), or hex as 16 digits
    /// (`00000000000004d2`, the key form) or with `0x`.
    #[arg(long, conflicts_with = "timestamp")]
    pub txid: Option<String>,
    /// Restore the state as of this time: RFC 3339 (`2026-11-28T17:00:00Z`) or relative to now
    /// (`-15m`, `-2h`).
    #[arg(long, allow_hyphen_values = true)]
    pub timestamp: Option<String>,
    /// Do nothing (exit 0) if the output database already exists.
    #[arg(long)]
    pub if_db_not_exists: bool,
    /// Do nothing (exit 0) if the replica holds no backup yet.
    #[arg(long)]
    pub if_replica_exists: bool,
    /// Print the plan (objects, bytes, target) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Restore from this generation (default: the newest).
    #[arg(long)]
    pub generation: Option<String>,
    /// Downloads in flight at once.
    #[arg(long, default_value_t = lifeboat_agent::restore::DEFAULT_PARALLELISM)]
    pub parallelism: usize,
    /// Replace the output file if it exists (its -wal and -shm are removed).
    #[arg(long)]
    pub force: bool,
    /// The restored file's permissions, in octal (`0640`). Default: those of the file it
    /// replaces, else 0644 less the umask (as SQLite creates a database).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<u32>,
    /// The URL holds a folder of databases: restore the one with this name (`acme.db`).
    #[arg(long, conflicts_with = "all_databases")]
    pub database: Option<String>,
    /// The URL holds a folder of databases: restore every one of them into the folder given
    /// by `--output`, each under its own name.
    #[arg(long)]
    pub all_databases: bool,
    /// Also restore this backed-up folder, as of the same point, `PATH` or `NAME=PATH`
    /// (repeatable; an existing non-empty folder needs --force, which moves it aside).
    #[arg(long = "dir")]
    pub dirs: Vec<String>,
    /// Restore only the database, not the folders the configuration backs up with it.
    #[arg(long, conflicts_with = "dirs")]
    pub no_dirs: bool,
}

#[derive(Debug, ClapArgs)]
pub struct DatabasesArgs {
    /// Configuration file (default: `$LIFEBOAT_CONFIG`, else /etc/lifeboat.toml).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A replica URL holding a folder of databases (`replicate --dir-of-databases`): list the
    /// databases in it, with their newest restore point, instead of the configuration's.
    #[arg(conflicts_with = "config")]
    pub url: Option<String>,
    /// With a URL: the local folder, to say whether each database is there (and list local
    /// databases the replica does not hold yet).
    #[arg(long, requires = "url")]
    pub dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, ClapArgs)]
pub struct InspectArgs {
    /// Replica URL.
    pub url: String,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, ClapArgs)]
pub struct ListArgs {
    /// Replica URL.
    pub url: String,
    /// Only this generation.
    #[arg(long)]
    pub generation: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, ClapArgs)]
pub struct DrillArgs {
    /// Replica URL.
    pub url: String,
    /// The live database: check that it is the replica's newest state or a continuation of it
    /// (unshipped transactions still in its WAL), and how many transactions the replica is behind.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Also restore and check a random restore point of the newest generation.
    #[arg(long)]
    pub random_point: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Do not store the report in the replica (under `drills/`).
    #[arg(long)]
    pub no_store: bool,
    /// Downloads in flight at once.
    #[arg(long, default_value_t = lifeboat_agent::restore::DEFAULT_PARALLELISM)]
    pub parallelism: usize,
    /// Where the scratch folder for the restores goes (default: the system temp folder).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub struct DrillsArgs {
    /// Replica URL.
    pub url: String,
    /// Show this many of the newest reports.
    #[arg(long, default_value_t = 20)]
    pub last: usize,
    /// Machine-readable output: the reports as stored.
    #[arg(long)]
    pub json: bool,
}

/// What `lifeboat run` does when the local database does not continue the replica's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnStale {
    /// Refuse to start (exit 1) and explain.
    Refuse,
    /// Move the local files aside (`<db>.stale-<unix ms>`) and restore the replica's newest state.
    Restore,
    /// Keep the local database: it becomes a new generation (the older history stays readable).
    Keep,
}

#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// Configuration file (as for `replicate`): every database in it is restored if missing and
    /// replicated while the app runs. Without --db: `$LIFEBOAT_CONFIG`, else /etc/lifeboat.toml
    /// (so a `--db` or `LIFEBOAT_DB` beats a `LIFEBOAT_CONFIG` set for the whole host).
    #[arg(long, short, conflicts_with_all = ["db", "replica", "dir_of_databases"])]
    pub config: Option<PathBuf>,
    /// The database the app uses (with neither --db nor --config: the databases of
    /// /etc/lifeboat.toml).
    #[arg(long, env = "LIFEBOAT_DB", requires = "replica")]
    pub db: Option<PathBuf>,
    /// The app's folder of databases (as for `replicate`): those the replica holds and the
    /// folder lacks are restored on boot; all are replicated while the app runs.
    #[arg(
        long,
        env = "LIFEBOAT_DIR_OF_DATABASES",
        conflicts_with = "db",
        requires = "replica"
    )]
    pub dir_of_databases: Option<PathBuf>,
    /// Where to replicate it (and restore it from).
    #[arg(long = "replica", env = "LIFEBOAT_REPLICA_URL")]
    pub replica: Option<String>,
    /// How long to wait for the first sync before giving up without starting the app.
    #[arg(long, env = "LIFEBOAT_READY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub ready_timeout: std::time::Duration,
    /// How long the final sync may take after the app exits.
    #[arg(long, env = "LIFEBOAT_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// What to do when a local database exists but is not the replica's newest state nor a
    /// continuation of it (a stale disk, or a database changed while lifeboat was not running).
    #[arg(long, env = "LIFEBOAT_ON_STALE", value_enum, default_value_t = OnStale::Refuse)]
    pub on_stale: OnStale,
    /// Run a drill this often while the app runs (`24h`): restore the newest state into a
    /// temporary folder, check it, compare it with the live database, store the report in the
    /// replica under drills/, and show the result in /metrics. Failures are logged loudly; they
    /// never stop the app.
    #[arg(long, env = "LIFEBOAT_DRILL_INTERVAL", value_parser = humantime::parse_duration)]
    pub drill_interval: Option<std::time::Duration>,
    /// Do not take the writer lease: two instances may then write one replica at once (an
    /// overlapping deploy loses the old instance's last writes). Only for a store without
    /// conditional writes, with one instance at a time.
    #[arg(long, env = "LIFEBOAT_NO_LEASE")]
    pub no_lease: bool,
    #[command(flatten)]
    pub agent: AgentFlags,
    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, ClapArgs)]
pub struct PruneArgs {
    /// Replica URL.
    pub url: String,
    /// Keep every restore point this recent (`30d`, `12h`, ...).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: std::time::Duration,
    /// Print what would be deleted and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Evaluate the window as of this time (RFC 3339) instead of now: for checking a policy ahead.
    #[arg(long, hide = true)]
    pub now: Option<String>,
}

/// The writer lease (see docs/design.md, "The writer lease").
#[derive(Debug, Clone, ClapArgs)]
pub struct LeaseFlags {
    /// The lease's time to live: renewed every third of it; a holder that stops renewing (dead,
    /// paused) loses it this long after its last renewal.
    #[arg(long, env = "LIFEBOAT_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: std::time::Duration,
    /// How long a new instance waits for a live holder to hand the lease over (and how long
    /// the holder waits for the app's write lock and its last upload), before giving up.
    #[arg(long, env = "LIFEBOAT_HANDOFF_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub handoff_timeout: std::time::Duration,
}

#[derive(Debug, ClapArgs)]
pub struct SyncArgs {
    /// The health address of the running lifeboat (its `--health-addr`).
    #[arg(long, env = "LIFEBOAT_HEALTH_ADDR")]
    pub addr: String,
    /// Give up (exit 1) after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// An octal file mode (`0640`, `640`): permission bits only.
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!(
            "{s:?} is not a file mode: write it in octal, like 0640 or 0600"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `replicate` and `run` share their agent flags: both read them, and turn them into the
    /// settings that beat the configuration file, the same way.
    #[test]
    fn replicate_and_run_read_the_flags_they_share_the_same_way() {
        let shared = [
            "--metrics-addr",
            "127.0.0.1:9",
            "--health-max-lag",
            "5s",
            "--retention",
            "12h",
            "--snapshot-segments",
            "7",
            "--snapshot-ratio",
            "0",
            "--lease-ttl",
            "9s",
            "--dir",
            "up",
        ];
        let replicate = [
            &["lifeboat", "replicate"][..],
            &shared,
            &["a.db", "file:///r"],
        ]
        .concat();
        let run = [
            &["lifeboat", "run", "--db", "a.db", "--replica", "file:///r"][..],
            &shared,
            &["--", "true"],
        ]
        .concat();
        for argv in [replicate, run] {
            let agent = match Args::try_parse_from(&argv).unwrap().command {
                Command::Replicate(a) => a.agent,
                Command::Run(a) => a.agent,
                c => panic!("{c:?}"),
            };
            assert_eq!(
                agent.health_addr.as_deref(),
                Some("127.0.0.1:9"),
                "{argv:?}"
            );
            assert_eq!(
                agent.lease_flags.lease_ttl,
                std::time::Duration::from_secs(9)
            );
            assert_eq!(agent.dirs, ["up"]);
            let f = agent.flags();
            assert_eq!(f.health_max_lag, Some(std::time::Duration::from_secs(5)));
            assert_eq!(f.retention, Some("12h".parse().unwrap()));
            assert_eq!(f.snapshot_segments, Some(7));
            assert_eq!(f.snapshot_ratio, Some(0));
            assert_eq!(f.snapshot_interval, None);
            assert_eq!(f.puts_per_second, None, "only replicate's own flag sets it");
        }
    }
}
