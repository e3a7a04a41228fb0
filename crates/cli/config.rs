//! The configuration file, and turning arguments into databases to replicate.
//!
//! ```toml
//! [[databases]]
//! path = "/data/app.db"
//! puts-per-second = 1.0          # optional
//! replicas = ["s3://my-bucket/app?region=${AWS_REGION}", "file:///mnt/backup/app"]
//!
//! [[database-folders]]           # every database in the folder, each under <replica>/<name>
//! path = "/data/tenants"         # or "/data/tenants/*.sqlite" (default pattern: *.db)
//! replicas = ["s3://my-bucket/tenants"]
//! ```
//! `${VAR}` is replaced by the environment variable `VAR` (an unset variable is an error;
//! `${VAR:-default}` gives a default). Credentials never go in this file: S3 credentials come from
//! the standard AWS environment variables and configuration files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lifeboat_agent::agent::DbConfig;
use lifeboat_agent::folder::FolderConfig;
use lifeboat_agent::Options;
use serde::Deserialize;

use crate::replica_url;

mod replica;
use replica::ReplicaEntry;

/// The configuration file used when none is named: `$LIFEBOAT_CONFIG`, else this.
pub const DEFAULT_PATH: &str = "/etc/lifeboat.toml";

/// The configuration file to use: `explicit` (`--config`), else `$LIFEBOAT_CONFIG` (from `env`),
/// else [`DEFAULT_PATH`].
pub fn locate(explicit: Option<PathBuf>, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    explicit
        .or_else(|| {
            env("LIFEBOAT_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// The configuration file to use when no database is named on the command line; an error that
/// says where it looked when there is none.
pub fn locate_existing(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = locate(explicit, |k| std::env::var(k).ok());
    if !path.exists() {
        bail!(
            "no database named and no configuration file at {}: name the database and its \
             replica on the command line, pass --config, or set LIFEBOAT_CONFIG",
            path.display()
        );
    }
    Ok(path)
}

/// A database of the configuration file: its path and its replica URLs, in order.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The database.
    pub path: PathBuf,
    /// Its replica URLs (the first is the one `run` and `restore` restore from).
    pub replicas: Vec<String>,
    /// The folders backed up with it (`dirs = [...]`: `PATH` or `NAME=PATH`).
    pub dirs: Vec<String>,
}

/// The databases a configuration file lists, with their replica URLs.
pub fn entries(path: &std::path::Path) -> Result<Vec<Entry>> {
    Ok(read_file(path)?
        .databases
        .into_iter()
        .map(|d| Entry {
            replicas: d.replicas.iter().map(|r| r.url().to_string()).collect(),
            path: d.path,
            dirs: d.dirs,
        })
        .collect())
}

/// The entry of the configuration file at `config` for the database at `db` (paths compared
/// made absolute, as the database may not exist).
pub fn find(config: &std::path::Path, db: &std::path::Path) -> Result<Entry> {
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let want = abs(db);
    let all = entries(config)?;
    all.iter()
        .find(|e| abs(&e.path) == want)
        .cloned()
        .with_context(|| {
            format!(
                "{} is not a database of {} (it lists {}); give a replica URL instead, or \
                 another --config",
                db.display(),
                config.display(),
                all.iter()
                    .map(|e| e.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Where the databases come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A configuration file.
    File(PathBuf),
    /// One database and its replica URLs, from the command line.
    Args { db: PathBuf, urls: Vec<String> },
    /// A folder of databases (and maybe a pattern) and its replica URLs, from the command line.
    Dir { spec: PathBuf, urls: Vec<String> },
}

impl Source {
    /// A configuration file if one is given, else the database and URLs, else the default
    /// configuration file ([`locate`]).
    pub fn new(config: Option<PathBuf>, db: Option<PathBuf>, urls: Vec<String>) -> Result<Source> {
        if let Some(path) = config {
            return Ok(Source::File(path));
        }
        let Some(db) = db else {
            if !urls.is_empty() {
                bail!("a replica URL was given without the database it replicates");
            }
            return Ok(Source::File(locate_existing(None)?));
        };
        if urls.is_empty() {
            bail!("give at least one replica URL after the database path");
        }
        Ok(Source::Args { db, urls })
    }

    /// A folder of databases and its replica URLs.
    pub fn dir(spec: PathBuf, urls: Vec<String>) -> Result<Source> {
        if urls.is_empty() {
            bail!("give at least one replica URL after --dir-of-databases");
        }
        Ok(Source::Dir { spec, urls })
    }
}

/// Settings given on the command line. Each one beats the same setting in the configuration
/// file: a flag is the more specific, later decision.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flags {
    /// `--puts-per-second`.
    pub puts_per_second: Option<f64>,
    /// `--health-max-lag`.
    pub health_max_lag: Option<Duration>,
    /// `--retention` (`LIFEBOAT_RETENTION`).
    pub retention: Option<Retention>,
    /// `--snapshot-interval` (`LIFEBOAT_SNAPSHOT_INTERVAL`).
    pub snapshot_interval: Option<Duration>,
    /// `--snapshot-segments` (`LIFEBOAT_SNAPSHOT_SEGMENTS`).
    pub snapshot_segments: Option<u32>,
    /// `--snapshot-ratio` (`LIFEBOAT_SNAPSHOT_RATIO`).
    pub snapshot_ratio: Option<u32>,
    /// `--pack-segments` (`LIFEBOAT_PACK_SEGMENTS`).
    pub pack_segments: Option<u32>,
    /// `--switch-to-wal`: a rollback-journal (or empty) database may be switched to WAL mode.
    pub switch_to_wal: bool,
}

/// The retention window when neither the command line, the environment nor the configuration
/// file sets one: restore points of the last 30 days stay restorable, older history goes.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86400);

/// How long restore points are kept: a window (`30d`), or `off` (keep everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Keep everything; the replica grows forever.
    Off,
    /// Delete what no restore point this recent needs.
    Window(Duration),
}

impl std::str::FromStr for Retention {
    type Err = String;
    fn from_str(s: &str) -> Result<Retention, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Retention::Off);
        }
        match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => {
                Err("a zero window would keep nothing; use off to keep everything".into())
            }
            Ok(d) => Ok(Retention::Window(d)),
            Err(e) => Err(format!("{s:?}: {e} (a duration like 30d or 12h, or off)")),
        }
    }
}

impl Retention {
    /// The window, `None` for `off`.
    pub fn window(self) -> Option<Duration> {
        match self {
            Retention::Off => None,
            Retention::Window(d) => Some(d),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    databases: Vec<Database>,
    /// Folders of databases (`[[database-folders]]`): `path` is a folder, or a folder and a
    /// file pattern (`/data/tenants/*.db`); the other settings are those of a database.
    #[serde(default, rename = "database-folders")]
    folders: Vec<Database>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Database {
    path: PathBuf,
    replicas: Vec<ReplicaEntry>,
    puts_per_second: Option<f64>,
    put_burst: Option<f64>,
    checkpoint_pages: Option<u32>,
    max_wal_bytes: Option<u64>,
    truncate_wal_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    poll_interval: Option<Duration>,
    staging_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "retention_opt")]
    retention: Option<Retention>,
    #[serde(default, with = "humantime_serde_opt")]
    snapshot_interval: Option<Duration>,
    snapshot_segments: Option<u32>,
    snapshot_ratio: Option<u32>,
    pack_segments: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    health_max_lag: Option<Duration>,
    #[serde(default)]
    dirs: Vec<String>,
    switch_to_wal: Option<bool>,
}

fn retention_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Retention>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl Database {
    /// A database named on the command line: no settings of its own.
    fn at(path: PathBuf) -> Database {
        Database {
            path,
            replicas: Vec::new(),
            puts_per_second: None,
            put_burst: None,
            checkpoint_pages: None,
            max_wal_bytes: None,
            truncate_wal_bytes: None,
            poll_interval: None,
            staging_dir: None,
            retention: None,
            snapshot_interval: None,
            snapshot_segments: None,
            snapshot_ratio: None,
            pack_segments: None,
            dirs: Vec::new(),
            health_max_lag: None,
            switch_to_wal: None,
        }
    }
}

/// `Option<Duration>` fields written as `30d`, `12h`, ... (for `#[serde(with)]`).
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Replaces `${VAR}` and `${VAR:-default}`.
pub fn expand_env(text: &str, get: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            bail!("unterminated ${{ in configuration");
        };
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("invalid variable name {name:?} in configuration");
        }
        match (get(name), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => bail!("environment variable {name} is not set (used in configuration)"),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The options of one database of the configuration file, with the command-line `flags` on top;
/// an error naming the setting if one would silently do something else than it says.
fn options(d: &Database, flags: &Flags) -> Result<Options> {
    check_settings(d, flags)?;
    let mut options = Options {
        switch_to_wal: flags.switch_to_wal || d.switch_to_wal.unwrap_or(false),
        ..Options::default()
    };
    if let Some(v) = flags.puts_per_second.or(d.puts_per_second) {
        options.puts_per_second = v;
    }
    if let Some(v) = d.put_burst {
        options.put_burst = v;
    }
    if let Some(v) = d.checkpoint_pages {
        options.checkpoint_pages = v;
    }
    if let Some(v) = d.max_wal_bytes {
        options.max_wal_bytes = v;
    }
    if let Some(v) = d.truncate_wal_bytes {
        options.truncate_wal_bytes = v;
    }
    if let Some(v) = d.poll_interval {
        options.poll_interval = v;
    }
    if let Some(v) = &d.staging_dir {
        options.staging_dir = v.clone();
    }
    options.retention = flags
        .retention
        .or(d.retention)
        .map_or(Some(DEFAULT_RETENTION), Retention::window);
    if let Some(v) = flags.snapshot_interval.or(d.snapshot_interval) {
        options.snapshot_interval = Some(v);
    }
    if let Some(v) = flags.snapshot_segments.or(d.snapshot_segments) {
        options.snapshot_segments = v;
    }
    if let Some(v) = flags.snapshot_ratio.or(d.snapshot_ratio) {
        options.snapshot_ratio = v;
    }
    if let Some(v) = flags.pack_segments.or(d.pack_segments) {
        options.pack_segments = v as usize;
    }
    if let Some(v) = flags.health_max_lag.or(d.health_max_lag) {
        options.health_max_lag = v;
    }
    options.snapshot_progress = crate::progress::bar("snapshot", crate::progress::Unit::Bytes);
    Ok(options)
}

/// The shortest `poll-interval`: shorter would look at the WAL in a loop and keep a core busy.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Refuses settings that would not do what they say: a zero `poll-interval` spins a core, a
/// `puts-per-second` of zero or less would not pace uploads at all.
fn check_settings(d: &Database, flags: &Flags) -> Result<()> {
    let db = d.path.display();
    let rate = |v: f64, name: &str| {
        if !(v > 0.0 && v.is_finite()) {
            bail!(
                "{name} {v} (database {db}) must be a number of PUT requests per second above \
                 0: zero or less would not pace uploads at all; for faster uploads set a large \
                 value such as 100"
            );
        }
        Ok(())
    };
    if let Some(v) = flags.puts_per_second {
        rate(v, "--puts-per-second")?;
    }
    if let Some(v) = d.puts_per_second {
        rate(v, "puts-per-second =")?;
    }
    if let Some(v) = d.put_burst.filter(|v| !(*v >= 1.0 && v.is_finite())) {
        bail!("put-burst = {v} (database {db}) must be 1 or more: the PUTs that may go out back to back");
    }
    if let Some(v) = d.poll_interval.filter(|v| *v < MIN_POLL_INTERVAL) {
        bail!(
            "poll-interval = \"{}\" (database {db}) is too short: the agent would look at the \
             WAL without pausing and keep a core busy; set it to {} or more (default 1s)",
            humantime::format_duration(v),
            humantime::format_duration(MIN_POLL_INTERVAL)
        );
    }
    Ok(())
}

/// Parses `--dir`/`dirs` entries (`PATH` or `NAME=PATH`).
pub fn dir_specs(v: &[String]) -> Result<Vec<lifeboat_dirs::DirSpec>> {
    Ok(lifeboat_dirs::DirSpec::parse_all(
        v.iter().map(String::as_str),
    )?)
}

/// Adds `--dir` folders (command line or `LIFEBOAT_DIRS`) to the one database given there.
pub fn with_dirs(dbs: &mut [DbConfig], dirs: &[String]) -> Result<()> {
    match dbs {
        _ if dirs.is_empty() => Ok(()),
        [d] if d.options.dirs.is_empty() => {
            d.options.dirs = dir_specs(dirs)?;
            Ok(())
        }
        _ => bail!("--dir (or LIFEBOAT_DIRS) goes with one database on the command line; in a configuration file, list a database's folders as dirs = [...]"),
    }
}

/// Reads and checks a configuration file (`${VAR}` expanded).
fn read_file(path: &std::path::Path) -> Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration {}", path.display()))?;
    let text = expand_env(&text, |k| std::env::var(k).ok())
        .with_context(|| format!("in {}", path.display()))?;
    let file: File = toml::from_str(&text)
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    if file.databases.is_empty() && file.folders.is_empty() {
        bail!(
            "{} lists no databases and no database folders",
            path.display()
        );
    }
    if let Some(f) = file.folders.iter().find(|f| !f.dirs.is_empty()) {
        bail!(
            "the database folder {} in {} lists dirs: backed-up folders go with one database \
             ([[databases]]), not with a folder of databases",
            f.path.display(),
            path.display()
        );
    }
    if let Some(d) = file
        .databases
        .iter()
        .chain(&file.folders)
        .find(|d| d.replicas.is_empty())
    {
        bail!(
            "database {} has no replicas in {}",
            d.path.display(),
            path.display()
        );
    }
    check_listed_once(&file).with_context(|| format!("in {}", path.display()))?;
    Ok(file)
}

/// Refuses a database listed twice (under two spellings of one path, or in `[[databases]]` and
/// in a folder of `[[database-folders]]`): two replicators on one database would fight over it,
/// and the second would only say that "another lifeboat" holds it.
fn check_listed_once(file: &File) -> Result<()> {
    // The file itself when it exists (symlinks resolved, as the agent does), else the path
    // made absolute.
    let same = |p: &std::path::Path| {
        std::fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let mut seen: Vec<(PathBuf, &PathBuf)> = Vec::new();
    for d in &file.databases {
        let key = same(&d.path);
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            bail!(
                "database {} is listed twice ({} and {} are the same file): list it once, with \
                 all its replicas in one replicas = [...]",
                key.display(),
                first.display(),
                d.path.display()
            );
        }
        seen.push((key, &d.path));
    }
    for f in &file.folders {
        let (dir, pattern) = FolderConfig::split_spec(&f.path);
        let dir = same(&dir);
        if let Some((_, db)) = seen.iter().find(|(k, _)| {
            k.parent() == Some(dir.as_path())
                && k.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| lifeboat_agent::folder::matches(&pattern, n))
        }) {
            bail!(
                "database {} is listed in [[databases]] and is also in the database folder {}: \
                 list it in one place only (or give the folder a pattern that leaves it out)",
                db.display(),
                f.path.display()
            );
        }
    }
    Ok(())
}

/// The databases to replicate, from a config file or from the command line; `flags` beat the
/// file.
pub async fn databases(src: &Source, flags: &Flags) -> Result<Vec<DbConfig>> {
    let mut out = Vec::new();
    match src {
        Source::File(path) => {
            for d in read_file(path)?.databases {
                let mut options = options(&d, flags)?;
                options.dirs = dir_specs(&d.dirs)?;
                let mut replicas = Vec::new();
                for r in &d.replicas {
                    replicas.push(replica_url::open(r.url()).await?);
                }
                out.push(DbConfig {
                    path: d.path,
                    replicas,
                    options,
                    overrides: d.replicas.iter().map(ReplicaEntry::overrides).collect(),
                });
            }
        }
        Source::Args { db, urls } => {
            let options = options(&Database::at(db.clone()), flags)?;
            let mut replicas = Vec::new();
            for u in urls {
                replicas.push(replica_url::open(u).await?);
            }
            out.push(DbConfig {
                path: db.clone(),
                replicas,
                options,
                overrides: Vec::new(),
            });
        }
        Source::Dir { .. } => {}
    }
    Ok(out)
}

/// The folders of databases to replicate, from a config file or from the command line; `flags`
/// beat the file. Each replica URL is opened once, and all the folder's databases share it.
pub async fn folders(src: &Source, flags: &Flags) -> Result<Vec<FolderConfig>> {
    let mut out = Vec::new();
    match src {
        Source::File(path) => {
            for d in read_file(path)?.folders {
                let mut replicas = Vec::new();
                for r in &d.replicas {
                    replicas.push(replica_url::open(r.url()).await?);
                }
                let (dir, pattern) = FolderConfig::split_spec(&d.path);
                out.push(FolderConfig {
                    dir,
                    pattern,
                    replicas,
                    options: options(&d, flags)?,
                    overrides: d.replicas.iter().map(ReplicaEntry::overrides).collect(),
                    restored: Default::default(),
                });
            }
        }
        Source::Dir { spec, urls } => {
            let options = options(&Database::at(spec.clone()), flags)?;
            let mut replicas = Vec::new();
            for u in urls {
                replicas.push(replica_url::open(u).await?);
            }
            let (dir, pattern) = FolderConfig::split_spec(spec);
            out.push(FolderConfig {
                dir,
                pattern,
                replicas,
                options,
                overrides: Vec::new(),
                restored: Default::default(),
            });
        }
        Source::Args { .. } => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
