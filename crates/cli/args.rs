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
    /// Restore a database from a replica, verified bit for bit.
    Restore(RestoreArgs),
    /// List a replica's generations and their restorable ranges (from one listing).
    Generations(InspectArgs),
    /// List a replica's snapshots (from one listing).
    Snapshots(ListArgs),
    /// List a replica's segments (from one listing).
    Segments(ListArgs),
    /// Read and check every object of a replica and rebuild every generation; non-zero exit on
    /// any problem.
    Verify(InspectArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, ClapArgs)]
pub struct ReplicateArgs {
    /// Configuration file (several databases, several replicas each).
    #[arg(long, short, conflicts_with_all = ["db", "urls"])]
    pub config: Option<PathBuf>,
    /// The database file.
    #[arg(required_unless_present = "config")]
    pub db: Option<PathBuf>,
    /// Replica URLs: `file:///path/to/folder` or `s3://bucket/prefix?endpoint=...&region=...`.
    #[arg(required_unless_present = "config")]
    pub urls: Vec<String>,
    /// Average PUT requests per second once the burst is spent.
    #[arg(long)]
    pub puts_per_second: Option<f64>,
}

#[derive(Debug, ClapArgs)]
pub struct RestoreArgs {
    /// Replica URL.
    pub url: String,
    /// Where to write the database.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Restore the state right after this transaction (16 hex digits, as lifeboat prints them).
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
    #[arg(long, default_value_t = 8)]
    pub parallelism: usize,
    /// Replace the output file if it exists (its -wal and -shm are removed).
    #[arg(long)]
    pub force: bool,
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
