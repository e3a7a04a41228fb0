//! Running replicators: one task per database (see [`crate::scheduler`] for when passes run and
//! on which threads), woken through the agent's one file-system watcher ([`crate::watcher`]),
//! paced by a PUT budget ([`crate::budget`]), stopped with a final sync.
//!
//! One way to stop: every database's task watches a [`CancellationToken`]; the
//! [`Supervisor`](crate::supervisor::Supervisor) that `lifeboat replicate` and `lifeboat run`
//! share cancels them all and waits for each final sync, on one teardown path. A wake-up only
//! says "look at the WAL now".

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use lifeboat_storage::ReplicaClient;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::replicator::Replicator;
use crate::status::Status;
use crate::{Error, OnDivergence, Options, Result};

/// One database and where to replicate it.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// The database file.
    pub path: PathBuf,
    /// Its replicas.
    pub replicas: Vec<Arc<dyn ReplicaClient>>,
    /// Tuning.
    pub options: Options,
    /// Per-replica settings, by index into `replicas` (missing entries: none).
    pub overrides: Vec<crate::replica::ReplicaOverrides>,
}

/// A running database: its task replicates until the token it was started with is cancelled,
/// then syncs a last time; [`Supervisor::stop`](crate::supervisor::Supervisor::stop) does that for every database at once.
pub struct DbHandle {
    /// Its progress.
    pub status: Arc<Status>,
    /// Durable acknowledgements: wait until what is committed is in every replica.
    pub flush: Arc<crate::flush::Flush>,
    task: tokio::task::JoinHandle<Result<()>>,
    /// Cancelled to stop this database alone (a child of the supervisor's token).
    stop: CancellationToken,
    /// Cancelled before `stop` when the database file was removed: no final sync.
    removed: CancellationToken,
    _route: Option<crate::watcher::Route>,
    path: PathBuf,
}

impl DbHandle {
    /// The database.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Waits for the task to end.
    pub async fn join(self) -> Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(_) => Err(Error::Panicked(format!(
                "the replicator for {}",
                self.path.display()
            ))),
        }
    }

    /// Stops this database without a final sync (its file is gone) and waits for it.
    pub(crate) async fn release(self) -> Result<()> {
        self.removed.cancel();
        self.stop.cancel();
        self.join().await
    }
}

/// Staging folders already cleaned by this process (cleaning scans the folder: once is enough).
fn clean_staging_once(dir: &std::path::Path) {
    static CLEANED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut done = CLEANED.lock().unwrap();
    if !done.iter().any(|d| d == dir) {
        done.push(dir.to_path_buf());
        drop(done);
        crate::staging::clean_staging(dir);
    }
}

/// Opens the database, resumes or plans generations, and starts its task (on `rt`), which runs
/// until `stop` is cancelled and then syncs a last time.
pub fn start(cfg: DbConfig, rt: Handle, stop: CancellationToken) -> Result<DbHandle> {
    clean_staging_once(&cfg.options.staging_dir);
    let status = Arc::new(Status::default());
    let mut rep = Replicator::open(
        &cfg.path,
        cfg.replicas.clone(),
        cfg.options.clone(),
        rt.clone(),
        status.clone(),
    )?;
    for (i, o) in cfg.overrides.iter().enumerate().take(cfg.replicas.len()) {
        rep.set_overrides(i, *o);
    }
    // A set-up mistake stops here, with one line saying what to fix, rather than retrying.
    rep.resume()?;
    if cfg.options.on_divergence == OnDivergence::Refuse {
        if let Some((r, why)) = rep
            .replicas()
            .iter()
            .find_map(|r| r.diverged().map(|why| (r, why)))
        {
            return Err(Error::Diverged {
                db: cfg.path.clone(),
                replica: r.client.describe(),
                reason: why.to_string(),
            });
        }
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    let wal = crate::walfile::WalFile::for_db(rep.database().path())
        .path()
        .to_path_buf();
    let flush = Arc::new(crate::flush::Flush::default());
    flush.set_waker(wake.clone());
    let (route, watched) = crate::watcher::Watcher::shared().watch_file(&wal, wake.clone());
    // When the stop came: the final sync's deadline counts from it, not from the end of a pass
    // that was running then (which sees the token through its context).
    let stopped_at = Arc::new(std::sync::OnceLock::new());
    let (cancelled, at) = (stop.clone(), stopped_at.clone());
    rt.spawn(async move {
        cancelled.cancelled().await;
        let _ = at.set(Instant::now());
    });
    rep.watch_stop(stop.clone(), stopped_at.clone());
    let opts = &cfg.options;
    info!(
        db = %cfg.path.display(),
        replicas = %cfg.replicas.iter().map(|r| r.describe()).collect::<Vec<_>>().join(", "),
        retention = %opts.retention.map_or("off".into(), |d| humantime::format_duration(d).to_string()),
        "replicating"
    );
    let removed = CancellationToken::new();
    let task = rt.spawn(crate::scheduler::run(
        rep,
        cfg.options.clone(),
        wake,
        flush.clone(),
        watched,
        crate::scheduler::Stops {
            stop: stop.clone(),
            at: stopped_at,
            removed: removed.clone(),
        },
    ));
    Ok(DbHandle {
        status,
        flush,
        task,
        stop,
        removed,
        _route: Some(route),
        path: cfg.path,
    })
}

/// A running database as the status endpoint sees it.
#[derive(Clone, Debug)]
pub struct Running {
    /// The database file.
    pub path: PathBuf,
    /// Its progress.
    pub status: Arc<Status>,
    /// Its durable-acknowledgement requests (`POST /sync`).
    pub flush: Arc<crate::flush::Flush>,
}

/// Every running database, for the status endpoint. A folder of databases adds and removes
/// entries while the agent runs, so readers take a fresh [`snapshot`](Self::snapshot).
#[derive(Debug, Default)]
pub struct Registry {
    dbs: std::sync::Mutex<Vec<Running>>,
}

impl Registry {
    /// The databases running now, in the order they started.
    pub fn snapshot(&self) -> Vec<Running> {
        self.dbs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn add(&self, h: &DbHandle) {
        self.dbs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Running {
                path: h.path().to_path_buf(),
                status: h.status.clone(),
                flush: h.flush.clone(),
            });
    }

    pub(crate) fn remove(&self, path: &std::path::Path) {
        self.dbs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|r| r.path != path);
    }
}
