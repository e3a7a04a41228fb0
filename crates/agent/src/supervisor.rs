//! One way to stop: the [`Supervisor`] that `lifeboat replicate` and `lifeboat run` share
//! starts every database (and folder of databases), and on a stop cancels them all and waits
//! for each final sync, on one teardown path.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::agent::{start, DbConfig, DbHandle, Registry};
use crate::{Error, Result};

/// The replicators of a set of databases (and folders of databases), stopped together.
pub struct Supervisor {
    handles: Vec<DbHandle>,
    folders: Vec<crate::folder::FolderHandle>,
    stop: CancellationToken,
    registry: Arc<Registry>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Supervisor::new()
    }
}

impl Supervisor {
    /// No database yet.
    pub fn new() -> Supervisor {
        Supervisor {
            handles: Vec::new(),
            folders: Vec::new(),
            stop: CancellationToken::new(),
            registry: Arc::default(),
        }
    }

    /// Starts replicating one database (see [`start`]): opens it, reads its replicas' state,
    /// starts its task. Blocking work runs off the async runtime.
    pub async fn start(&mut self, cfg: DbConfig) -> Result<()> {
        let rt = Handle::current();
        let stop = self.stop.child_token();
        let h = tokio::task::spawn_blocking(move || start(cfg, rt, stop))
            .await
            .map_err(|e| Error::join("starting a replicator", e))??;
        self.registry.add(&h);
        self.handles.push(h);
        Ok(())
    }

    /// Starts replicating a folder of databases (see [`crate::folder`]): those in it now, and
    /// those created while it runs.
    pub async fn start_folder(&mut self, cfg: crate::folder::FolderConfig) -> Result<()> {
        let f = crate::folder::start(cfg, self.stop.child_token(), self.registry.clone()).await?;
        self.folders.push(f);
        Ok(())
    }

    /// The databases started one by one with [`start`](Self::start).
    pub fn handles(&self) -> &[DbHandle] {
        &self.handles
    }

    /// Every running database, folders' included, as it is now and as it changes.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Stops every database with a final sync and waits for each; the first failure (each one
    /// is logged).
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        let mut first_err = None;
        for h in self.handles {
            if let Err(e) = h.join().await {
                error!(error = %e.chain(), "final sync failed");
                first_err.get_or_insert(e);
            }
        }
        for f in self.folders {
            let r = f
                .task
                .await
                .map_err(|e| Error::join("stopping a folder of databases", e))
                .and_then(|r| r);
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Replicates every database and folder of databases until `shutdown` is cancelled, then syncs
/// each database a last time. `started` is handed the registry of running databases once all
/// are running (for a status endpoint).
pub async fn replicate(
    dbs: Vec<DbConfig>,
    folders: Vec<crate::folder::FolderConfig>,
    shutdown: CancellationToken,
    started: impl FnOnce(Arc<Registry>),
) -> Result<()> {
    let mut sup = Supervisor::new();
    for cfg in dbs {
        if let Err(e) = sup.start(cfg).await {
            let _ = sup.stop().await;
            return Err(e);
        }
    }
    for cfg in folders {
        if let Err(e) = sup.start_folder(cfg).await {
            let _ = sup.stop().await;
            return Err(e);
        }
    }
    started(sup.registry());
    shutdown.cancelled().await;
    sup.stop().await
}
