//! What every part of one database's replication shares: which database, its options, the
//! runtime that runs uploads, and where progress is reported.
//!
//! The replicator owns one and lends it to the modules that do the work (resume, shipping,
//! checkpoints, snapshots, retention), so none of them reaches back into the replicator.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::status::Status;
use crate::Options;

/// The stop signal and when it came.
#[derive(Clone, Debug)]
pub(crate) struct Stop {
    /// Fires on stop.
    pub token: tokio_util::sync::CancellationToken,
    /// When it fired (set just after).
    pub at: Arc<std::sync::OnceLock<std::time::Instant>>,
}

/// One database's settings and services.
#[derive(Debug)]
pub(crate) struct Context {
    /// The database file (for logs and errors).
    pub path: PathBuf,
    /// Its options.
    pub opts: Options,
    /// Runs uploads and listings (the replicator itself is synchronous, on a thread of its own).
    pub rt: Handle,
    /// Where progress is reported.
    pub status: Arc<Status>,
    /// The stop signal: once it fires, an upload in flight may take `shutdown_timeout` more
    /// at most, and the final sync too.
    pub stop: Option<Stop>,
    /// The folders shipped with the database, if any.
    pub dirs: Option<lifeboat_dirs::DirShipper>,
}
