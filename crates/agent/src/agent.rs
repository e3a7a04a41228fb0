//! Running replicators: one thread per database, woken by file-system events (with a polling
//! fallback), paced by a PUT budget, stopped with a final sync.
//!
//! One way to stop: every database's thread watches a [`CancellationToken`]; the
//! [`Supervisor`] that `lifeboat replicate` and `lifeboat run` share cancels them all and waits
//! for each final sync, on one teardown path. The wake channel only says "look at the WAL now".

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_storage::ReplicaClient;
use notify::{RecursiveMode, Watcher};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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

/// During the final sync, a failing replica is tried again at least this often.
const FINAL_RETRY: Duration = Duration::from_millis(500);

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

/// A running replicator thread. It stops (with a final sync) when the token it was started
/// with is cancelled; [`Supervisor::stop`] does that for every database at once.
pub struct DbHandle {
    /// Its progress.
    pub status: Arc<Status>,
    thread: std::thread::JoinHandle<Result<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
    path: PathBuf,
}

impl DbHandle {
    /// The database.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Waits for the thread to end.
    pub fn join(self) -> Result<()> {
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => Err(Error::Panicked(format!(
                "the replicator thread for {}",
                self.path.display()
            ))),
        }
    }
}

/// Opens the database, resumes or plans generations, and starts its thread, which runs until
/// `stop` is cancelled and then syncs a last time.
pub fn start(cfg: DbConfig, rt: Handle, stop: CancellationToken) -> Result<DbHandle> {
    crate::staging::clean_staging(&cfg.options.staging_dir);
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
    let (wake, events) = sync_channel::<()>(1);
    let watcher = watch(rep.database().path(), wake.clone());
    // A cancelled token wakes the thread. If the channel is full a wake-up is pending already,
    // and the thread sees the token when it takes it.
    let cancelled = stop.clone();
    let stopped_at = Arc::new(std::sync::OnceLock::new());
    let at = stopped_at.clone();
    rt.spawn(async move {
        cancelled.cancelled().await;
        let _ = at.set(Instant::now());
        let _ = wake.try_send(());
    });
    rep.watch_stop(stop.clone(), stopped_at.clone());
    let opts = cfg.options.clone();
    let path = cfg.path.clone();
    info!(
        db = %cfg.path.display(),
        replicas = %cfg.replicas.iter().map(|r| r.describe()).collect::<Vec<_>>().join(", "),
        retention = %opts.retention.map_or("off".into(), |d| humantime::format_duration(d).to_string()),
        "replicating"
    );
    let thread = std::thread::Builder::new()
        .name(format!("lifeboat {}", cfg.path.display()))
        .spawn(move || {
            if run_loop(&mut rep, &opts, &events, &stop, &stopped_at) {
                Ok(())
            } else {
                Err(Error::FinalSyncIncomplete(
                    rep.database().path().to_path_buf(),
                ))
            }
        })
        .map_err(|e| Error::io("start replicator thread", e))?;
    Ok(DbHandle {
        status,
        thread,
        _watcher: watcher,
        path,
    })
}

fn watch(db: &std::path::Path, wake: SyncSender<()>) -> Option<notify::RecommendedWatcher> {
    let wal = crate::walfile::WalFile::for_db(db).path().to_path_buf();
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let res = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            // Only changes wake the agent: its own opens and reads of the WAL raise access
            // events too, and waking on those would make every pass schedule the next.
            if wakes(&ev.kind)
                && ev
                    .paths
                    .iter()
                    .any(|p| p == &wal || p.file_name() == wal.file_name())
            {
                let _ = wake.try_send(());
            }
        }
    });
    match res {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "file watching unavailable; polling only");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "file watching unavailable; polling only");
            None
        }
    }
}

/// Whether a file-system event on the WAL can mean new frames.
fn wakes(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

fn wal_stamp(rep: &Replicator) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(rep.database().wal().path()).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Runs until `stop`, then syncs a last time; returns whether that final sync completed.
fn run_loop(
    rep: &mut Replicator,
    opts: &Options,
    events: &Receiver<()>,
    stop: &CancellationToken,
    stopped_at: &std::sync::OnceLock<Instant>,
) -> bool {
    let mut budget = Budget::new(opts.puts_per_second, opts.put_burst);
    let mut stamp = None;
    // When the next pass is due; `None` while idle (only events or the poll wake us).
    let mut due: Option<Instant> = Some(Instant::now());
    loop {
        if stop.is_cancelled() {
            break;
        }
        let now = Instant::now();
        let wait = due.map_or(opts.poll_interval, |t| t.saturating_duration_since(now));
        if !wait.is_zero() {
            match events.recv_timeout(wait) {
                Ok(()) => due = Some(Instant::now()),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
        }
        if stop.is_cancelled() {
            break;
        }
        let now = Instant::now();
        let s = wal_stamp(rep);
        if s != stamp {
            stamp = s;
            rep.observe();
            due = Some(due.map_or(now, |t| t.min(now)));
        }
        match due {
            Some(t) if t <= now => {}
            _ => {
                rep.between_passes();
                continue;
            }
        }
        let b = budget.wait(now);
        if !b.is_zero() {
            due = Some(now + b);
            rep.between_passes();
            continue;
        }
        let r = rep.sync();
        budget.spend(r.puts);
        due = if !r.pending {
            None
        } else if r.puts > 0 {
            Some(Instant::now())
        } else {
            let retry = rep.replicas().iter().filter_map(|x| x.retry_at).min();
            Some(retry.unwrap_or_else(|| Instant::now() + opts.poll_interval))
        };
    }
    // Final sync: ship everything committed, whatever the budget, and without waiting out a
    // failing replica's backoff (up to 30 s; the endpoint may well be back): at once, then
    // every half second at most, until the shutdown timeout.
    // From the stop signal, not from the end of a pass that was hanging when it came.
    let deadline = stopped_at.get().copied().unwrap_or_else(Instant::now) + opts.shutdown_timeout;
    loop {
        rep.retry_now();
        let r = rep.sync();
        if !r.pending || Instant::now() >= deadline {
            if r.pending {
                error!(db = %rep.database().path().display(), "final sync did not complete before the shutdown timeout");
            } else {
                info!(db = %rep.database().path().display(), "final sync complete");
            }
            return !r.pending && rep.replicas().iter().all(|x| x.halted().is_none());
        }
        let retry = rep
            .replicas()
            .iter()
            .filter_map(|r| r.retry_at)
            .min()
            .map_or(Duration::from_millis(10), |t| {
                t.saturating_duration_since(Instant::now())
            });
        std::thread::sleep(
            retry
                .min(FINAL_RETRY)
                .min(deadline.saturating_duration_since(Instant::now())),
        );
    }
}

/// The replicator threads of a set of databases, stopped together.
pub struct Supervisor {
    handles: Vec<DbHandle>,
    stop: CancellationToken,
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
            stop: CancellationToken::new(),
        }
    }

    /// Starts replicating one database (see [`start`]): opens it, reads its replicas' state,
    /// starts its thread. Blocking work runs off the async runtime.
    pub async fn start(&mut self, cfg: DbConfig) -> Result<()> {
        let rt = Handle::current();
        let stop = self.stop.child_token();
        let h = tokio::task::spawn_blocking(move || start(cfg, rt, stop))
            .await
            .map_err(|e| Error::join("starting a replicator", e))??;
        self.handles.push(h);
        Ok(())
    }

    /// The running databases.
    pub fn handles(&self) -> &[DbHandle] {
        &self.handles
    }

    /// Stops every database with a final sync and waits for each; the first failure (each one
    /// is logged).
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        let mut first_err = None;
        for h in self.handles {
            let r = tokio::task::spawn_blocking(move || h.join())
                .await
                .map_err(|e| Error::join("stopping a replicator", e))
                .and_then(|r| r);
            if let Err(e) = r {
                error!(error = %e.chain(), "final sync failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Replicates every database until `shutdown` is cancelled, then syncs each one a last time.
/// `started` is handed each database's status once all are running (for a status endpoint).
pub async fn replicate(
    dbs: Vec<DbConfig>,
    shutdown: CancellationToken,
    started: impl FnOnce(&[DbHandle]),
) -> Result<()> {
    let mut sup = Supervisor::new();
    for cfg in dbs {
        if let Err(e) = sup.start(cfg).await {
            let _ = sup.stop().await;
            return Err(e);
        }
    }
    started(sup.handles());
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
