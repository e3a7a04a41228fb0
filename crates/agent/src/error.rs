use std::fmt;
use std::path::PathBuf;

use lifeboat_wal::{DbChecksum, Generation, TxId};
use thiserror::Error;

/// Result alias for the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops the agent or a restore. Messages name the file or object and say what to do; the
/// underlying error is the [`source`](std::error::Error::source) (print it with [`Chain`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file does not exist.
    #[error("database {0} does not exist")]
    NoDatabase(PathBuf),
    /// The database path is not a database the agent replicates as it is: a folder, an empty
    /// file or a rollback-journal database (without `switch_to_wal`), not SQLite (see
    /// [`crate::dbfile`]).
    #[error("database {} {problem}", path.display())]
    NotReplicable {
        /// The path.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The database could not be put in WAL mode.
    #[error("database {0} is not in WAL mode and could not be switched (is another process holding it open in rollback mode?)")]
    NotWal(PathBuf),
    /// Another agent holds the lock.
    #[error(
        "another lifeboat is already replicating {db} (lock {lock} is held{}); stop it first — two \
         agents on one database would fight over its WAL",
        if holder.is_empty() { String::new() } else { format!(" by {holder}") }
    )]
    AlreadyReplicating {
        /// The database.
        db: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// SQLite failed.
    #[error("{what} on {path}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What the agent was doing.
        what: &'static str,
        /// SQLite's error.
        #[source]
        cause: rusqlite::Error,
    },
    /// A local file operation failed.
    #[error("{what}")]
    Io {
        /// What, on which file.
        what: String,
        /// The error.
        #[source]
        cause: std::io::Error,
    },
    /// A replica operation failed.
    #[error(transparent)]
    Storage(#[from] lifeboat_storage::Error),
    /// An upload was given up because the WAL grew past `max-wal-bytes` while it was in
    /// flight (see `upload`).
    #[error(
        "upload given up: {} grew to {bytes} bytes, past max-wal-bytes ({max}), while it was in \
         flight",
        wal.display()
    )]
    WalOverLimit {
        /// The WAL file.
        wal: std::path::PathBuf,
        /// Its size.
        bytes: u64,
        /// The bound.
        max: u64,
    },
    /// An upload was given up because the final sync's shutdown timeout passed.
    #[error("upload given up: the shutdown timeout passed")]
    ShutdownTimeout,
    /// A set-up mistake (credentials, bucket, permissions, region) found on start: no retry
    /// fixes it, so the agent does not start. `message` is the storage error's one line, which
    /// says what to set; the SDK's cause was logged at debug level.
    #[error("cannot replicate {}: {message}", db.display())]
    Setup {
        /// The database.
        db: std::path::PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Backing up or restoring a folder next to the database failed.
    #[error(transparent)]
    Dirs(#[from] lifeboat_dirs::Error),
    /// An object failed verification.
    #[error("object {key} is corrupt; the replica cannot be restored past it")]
    Corrupt {
        /// The object.
        key: String,
        /// What was wrong.
        #[source]
        cause: lifeboat_wal::Error,
    },
    /// A generation has no snapshot, so nothing in it can be restored.
    #[error("generation {0} has no snapshot: it cannot be restored")]
    NoSnapshot(Generation),
    /// The generation asked for is not in the replica.
    #[error("generation {0} not found in the replica")]
    NoGeneration(Generation),
    /// The generation asked for carries a `pruning` marker: retention is deleting it.
    #[error(
        "generation {0} is being deleted by retention (its `pruning` marker is present: a prune \
         was interrupted); it is not restored. Run `lifeboat prune` to finish deleting it"
    )]
    GenerationPruning(Generation),
    /// The replica holds no snapshot at all.
    #[error("the replica holds no snapshot: nothing to restore")]
    NothingToRestore,
    /// The replica holds no state at or before the target: `0` says what it can restore instead.
    #[error("{0}")]
    NoStateAtTarget(String),
    /// A generation's history ends before the target transaction.
    #[error("generation {generation} ends at txid {}, before the target txid {}", last.0, target.0)]
    TargetPastEnd {
        /// The generation.
        generation: Generation,
        /// Its last transaction in the replica.
        last: TxId,
        /// The transaction asked for.
        target: TxId,
    },
    /// An object does not fit where the restore stands (another generation, page size or
    /// starting state).
    #[error("object {key}: {problem}")]
    ObjectMismatch {
        /// The object.
        key: String,
        /// How it does not fit.
        problem: String,
    },
    /// The writer lease object is not one lifeboat wrote.
    #[error(
        "{key} in {replica} is not a lifeboat lease; if no lifeboat instance is running, delete \
         it and start again"
    )]
    LeaseUnreadable {
        /// The lease object.
        key: &'static str,
        /// The replica.
        replica: String,
        /// Why it does not parse.
        #[source]
        cause: serde_json::Error,
    },
    /// The writer lease was not renewed within its time to live: uploads wait until it is.
    #[error(
        "the writer lease (epoch {epoch}) was not renewed within its time to live; uploads wait \
         until it is"
    )]
    LeaseNotRenewed {
        /// The lease's epoch.
        epoch: u64,
    },
    /// A handoff request could not be written: other instances kept replacing it.
    #[error("cannot write {key} in {replica}: other instances keep replacing it")]
    HandoffContended {
        /// The handoff object.
        key: &'static str,
        /// The replica.
        replica: String,
    },
    /// Two segments of one generation hold the same transaction with different contents: the
    /// history forked there. (Two segments that agree on every transaction they share are
    /// redundant copies, not a fork.) The history before the fork still restores.
    #[error(
        "generation {generation} forked at txid {}: {first} and {second} both hold it, with \
         different contents ({difference}). The history before the fork restores with \
         --generation {generation} --txid {}",
        txid.0,
        txid.0 - 1
    )]
    Fork {
        /// The generation.
        generation: Generation,
        /// The first transaction both branches hold and disagree on.
        txid: TxId,
        /// One branch's segment.
        first: String,
        /// The other's.
        second: String,
        /// What differs, in words.
        difference: String,
    },
    /// Transactions `from..=to` of a generation are in no object: the chain is broken there.
    #[error(
        "generation {generation} is missing transactions {}..{}: expected a segment \
         starting at txid {} before {next}; the chain is broken and cannot be restored past \
         txid {}",
        from.0,
        to.0,
        from.0,
        from.0 - 1
    )]
    Gap {
        /// The generation.
        generation: Generation,
        /// First missing transaction.
        from: TxId,
        /// Last missing transaction.
        to: TxId,
        /// The object after the gap.
        next: String,
    },
    /// The local database does not continue a replica's newest state.
    #[error(
        "{db} is not the newest state of replica {replica}, nor a continuation of it ({reason}): \
         this looks like a stale disk (an old image came back) or a database changed while \
         lifeboat was not running"
    )]
    Diverged {
        /// The database.
        db: PathBuf,
        /// The replica.
        replica: String,
        /// Why continuity could not be proven.
        reason: String,
    },
    /// Refused to touch an existing file.
    #[error("{0}")]
    Refused(String),
    /// A database's pages, recomputed, do not have the checksum the replica recorded (or the
    /// agent computed): nothing was written or uploaded.
    #[error("{what} has database checksum {found}, expected {expected}; {consequence}")]
    ChecksumMismatch {
        /// Which state, of which file.
        what: String,
        /// The recorded (or computed) checksum.
        expected: DbChecksum,
        /// The one found.
        found: DbChecksum,
        /// What was not done because of it.
        consequence: &'static str,
    },
    /// A restored database fails `PRAGMA integrity_check`.
    #[error("the restored database {path} fails PRAGMA integrity_check: {problems}")]
    IntegrityCheck {
        /// The file checked.
        path: PathBuf,
        /// What SQLite found.
        problems: String,
    },
    /// Reading a database's pages through `sqlite_dbpage`, or from its file, gave something that
    /// is not a whole database (a page missing, of the wrong size, a short count).
    #[error("reading the pages of {path}: {problem}")]
    Pages {
        /// The database file.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
    /// The agent's read transaction could not be matched to the WAL file (the log kept changing
    /// under the look); the next pass tries again.
    #[error("{path}: {problem}")]
    PinPosition {
        /// The database.
        path: PathBuf,
        /// What did not match.
        problem: String,
    },
    /// A restore reached another transaction than the one asked for.
    #[error("restore reached txid {} but the target is {}", reached.0, target.0)]
    TargetMissed {
        /// Where the restore stopped.
        reached: TxId,
        /// What was asked for.
        target: TxId,
    },
    /// The final sync on shutdown did not ship everything.
    #[error(
        "the final sync of {0} did not complete: the newest transactions may not be in every replica"
    )]
    FinalSyncIncomplete(PathBuf),
    /// A thread or blocking task of the agent panicked or was cancelled.
    #[error("{0} panicked or was cancelled (a bug: please report it with the log)")]
    Panicked(String),
    /// A report could not be encoded.
    #[error("encode the drill report")]
    Encode(#[source] serde_json::Error),
    /// This instance no longer holds the writer lease (it released it, or another instance
    /// took it over): it writes nothing more to the replica.
    #[error("{0}")]
    LeaseLost(String),
    /// Another instance holds the writer lease and did not hand it over.
    #[error("{0}")]
    LeaseHeld(String),
}

impl Error {
    /// A short name for the kind of error, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoDatabase(_)
            | Error::NotReplicable { .. }
            | Error::NotWal(_)
            | Error::AlreadyReplicating { .. } => "setup",
            Error::Sqlite { .. } => "sqlite",
            Error::Io { .. } => "io",
            Error::Storage(lifeboat_storage::Error::Conflict { .. }) => "conflict",
            Error::Storage(lifeboat_storage::Error::NotFound { .. }) => "not_found",
            Error::Storage(_) => "storage",
            Error::Dirs(_) => "folder",
            Error::Corrupt { .. } => "corrupt",
            Error::NoSnapshot(_)
            | Error::NoGeneration(_)
            | Error::GenerationPruning(_)
            | Error::NothingToRestore
            | Error::NoStateAtTarget(_)
            | Error::TargetPastEnd { .. }
            | Error::ObjectMismatch { .. }
            | Error::LeaseUnreadable { .. }
            | Error::LeaseNotRenewed { .. }
            | Error::HandoffContended { .. }
            | Error::Fork { .. }
            | Error::Gap { .. }
            | Error::Diverged { .. }
            | Error::TargetMissed { .. } => "replica",
            Error::Setup { .. } => "setup",
            Error::WalOverLimit { .. } => "wal_over_limit",
            Error::ShutdownTimeout => "shutdown_timeout",
            Error::Refused(_) => "refused",
            Error::LeaseLost(_) | Error::LeaseHeld(_) => "lease",
            Error::ChecksumMismatch { .. }
            | Error::IntegrityCheck { .. }
            | Error::Pages { .. }
            | Error::PinPosition { .. }
            | Error::FinalSyncIncomplete(_)
            | Error::Panicked(_)
            | Error::Encode(_) => "inconsistent",
        }
    }

    /// Whether this is a set-up mistake that no retry fixes (see
    /// [`lifeboat_storage::Error::is_setup`]).
    pub fn is_setup(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_setup(),
            Error::Setup { .. } => true,
            _ => false,
        }
    }

    /// Whether the replica refuses this write for good: an object exists with other bytes
    /// (another writer on the same replica path), or the writer lease is lost. Such a replica
    /// halts.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Storage(lifeboat_storage::Error::Conflict { .. }) | Error::LeaseLost(_)
        )
    }

    pub(crate) fn sqlite(
        path: &std::path::Path,
        what: &'static str,
        source: rusqlite::Error,
    ) -> Self {
        Error::Sqlite {
            path: path.to_path_buf(),
            what,
            cause: source,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            cause: source,
        }
    }

    /// A blocking task that did not finish (it panicked, or the runtime is shutting down).
    pub(crate) fn join(what: &str, e: tokio::task::JoinError) -> Self {
        Error::Panicked(format!("{what} ({e})"))
    }
}

/// Displays an error with every cause after it (`what: cause: cause`), for logs and reports
/// that hold one line.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// The error and its causes on one line (see [`Chain`]).
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_shows_the_cause_once() {
        let e = Error::io("read /x", std::io::Error::other("disk on fire"));
        assert_eq!(e.to_string(), "read /x");
        assert_eq!(e.chain().to_string(), "read /x: disk on fire");
    }
}
