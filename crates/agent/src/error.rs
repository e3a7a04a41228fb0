use std::path::PathBuf;

use thiserror::Error;

/// Result alias for the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops the agent or a restore. Messages name the file or object and say what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file does not exist.
    #[error("database {0} does not exist")]
    NoDatabase(PathBuf),
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
    #[error("{what} on {path}: {cause}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// What the agent was doing.
        what: &'static str,
        /// SQLite's error.
        cause: rusqlite::Error,
    },
    /// A local file operation failed.
    #[error("{what}: {cause}")]
    Io {
        /// What, on which file.
        what: String,
        /// The error.
        cause: std::io::Error,
    },
    /// A replica operation failed.
    #[error(transparent)]
    Storage(#[from] lifeboat_storage::Error),
    /// An object failed verification.
    #[error("object {key} is corrupt: {cause}; the replica cannot be restored past it")]
    Corrupt {
        /// The object.
        key: String,
        /// What was wrong.
        cause: lifeboat_wal::Error,
    },
    /// The replica does not hold a restorable chain.
    #[error("{0}")]
    Replica(String),
    /// Something that must hold did not.
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
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
}

impl Error {
    /// A short name for the kind of error, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NoDatabase(_) | Error::NotWal(_) | Error::AlreadyReplicating { .. } => "setup",
            Error::Sqlite { .. } => "sqlite",
            Error::Io { .. } => "io",
            Error::Storage(lifeboat_storage::Error::Conflict { .. }) => "conflict",
            Error::Storage(lifeboat_storage::Error::NotFound { .. }) => "not_found",
            Error::Storage(_) => "storage",
            Error::Corrupt { .. } => "corrupt",
            Error::Replica(_) | Error::Diverged { .. } => "replica",
            Error::Inconsistent(_) => "inconsistent",
            Error::Refused(_) => "refused",
        }
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
}
