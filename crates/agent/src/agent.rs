//! Running replicators: one task per database (see [`crate::scheduler`] for when passes run and
//! on which threads), woken through the agent's one file-system watcher ([`crate::watcher`]),
//! paced by a PUT budget, stopped with a final sync.
//!
//! One way to stop: every database's task watches a [`CancellationToken`]; the
//! [`Supervisor`] that `lifeboat replicate` and `lifeboat run` share cancels them all and waits
//! for each final sync, on one teardown path. A wake-up only says "look at the WAL now".

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_storage::ReplicaClient;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

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

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Budget {
        Budget {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// How long until a token is available (zero if one is).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }

    /// Spends `n` tokens (the balance may go negative: the next wait is longer).
    pub fn spend(&mut self, n: u32) {
        if self.rate > 0.0 {
            self.tokens -= f64::from(n);
        }
    }
}

/// A running database: its task replicates until the token it was started with is cancelled,
/// then syncs a last time; [`Supervisor::stop`] does that for every database at once.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_burst_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(2.0, 3.0);
        for _ in 0..3 {
            assert_eq!(b.wait(t0), Duration::ZERO);
            b.spend(1);
        }
        // Spent: the next token comes at the rate (2 a second: half a second).
        let w = b.wait(t0);
        assert!(
            w > Duration::from_millis(490) && w <= Duration::from_millis(500),
            "{w:?}"
        );
        assert_eq!(b.wait(t0 + Duration::from_millis(500)), Duration::ZERO);
        // Refills never pass the burst.
        let mut b = Budget::new(2.0, 3.0);
        b.spend(3);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.wait(later), Duration::ZERO);
        b.spend(3);
        assert!(b.wait(later) > Duration::ZERO);
    }

    #[test]
    fn an_overspent_budget_waits_longer_and_a_zero_rate_never_waits() {
        let t0 = Instant::now();
        let mut b = Budget::new(1.0, 1.0);
        b.spend(3);
        let w = b.wait(t0);
        assert!(
            w > Duration::from_millis(2990) && w <= Duration::from_secs(3),
            "{w:?}"
        );
        let mut free = Budget::new(0.0, 1.0);
        free.spend(100);
        assert_eq!(free.wait(t0), Duration::ZERO);
    }
}
