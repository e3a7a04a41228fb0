use thiserror::Error;

/// Result alias for storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a storage operation ran into.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A create-only write met an existing object with other bytes: another writer is using this
    /// replica, or the replica was tampered with.
    #[error(
        "object {key} already exists with different content: another lifeboat may be writing to \
         this replica; stop it, or give each database its own replica path"
    )]
    Conflict {
        /// The key written.
        key: String,
    },
    /// The backend failed.
    #[error("{op} {key}: {message}")]
    Backend {
        /// The operation (`put`, `get`, `list`, ...).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What the backend said.
        message: String,
        /// Whether retrying may help (network errors, throttling, 5xx).
        transient: bool,
    },
}

impl Error {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                transient: true,
                ..
            }
        )
    }

    /// A backend error built from an I/O error on a local file.
    pub fn io(op: &'static str, key: impl Into<String>, e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let transient = matches!(e.kind(), Interrupted | TimedOut | WouldBlock);
        Error::Backend {
            op,
            key: key.into(),
            message: e.to_string(),
            transient,
        }
    }
}
