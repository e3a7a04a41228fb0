//! Errors of folder backup and restore: each names the file or object and says what to do.

use std::path::PathBuf;

/// A folder backup or restore error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local file or folder could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The replica could not be read or written.
    #[error("{what}: {source}")]
    Storage {
        /// What was being done (names the object).
        what: String,
        /// Why it failed.
        #[source]
        source: lifeboat_storage::Error,
    },
    /// A stored object is not what it claims to be (bad checksum, wrong hash, unparsable).
    #[error("corrupt object {key} in {replica}: {reason}; restore from another replica, or to an earlier point")]
    Corrupt {
        /// The object.
        key: String,
        /// The replica.
        replica: String,
        /// What is wrong.
        reason: String,
    },
    /// An object a manifest needs is missing.
    #[error("missing object {key} in {replica} (needed by {needed_by}); restore from another replica, or to another point")]
    Missing {
        /// The object.
        key: String,
        /// The replica.
        replica: String,
        /// The manifest that needs it.
        needed_by: String,
    },
    /// The replica holds no backup of this folder.
    #[error("{replica} holds no backup of folder {folder:?}; check the folder name (the last part of --dir, or NAME=PATH)")]
    NoBackup {
        /// The folder's name.
        folder: String,
        /// The replica.
        replica: String,
    },
    /// The restore's output exists and may not be replaced.
    #[error("{} exists and is not empty; pass --force to move it aside to {} and restore", path.display(), aside.display())]
    OutputExists {
        /// The folder.
        path: PathBuf,
        /// Where --force would move it.
        aside: PathBuf,
    },
    /// The configuration is wrong.
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn storage(what: impl Into<String>, source: lifeboat_storage::Error) -> Error {
        Error::Storage {
            what: what.into(),
            source,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
