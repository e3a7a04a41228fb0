//! The writer lease around `run` and `replicate --lease`: take it before restoring, keep it
//! renewed, answer handoff requests, and freeze the app's writes while handing over.
//!
//! Taking ([`take`]): probe the store for conditional writes (refuse a store that ignores them,
//! saying so), then take the lease of the database's first replica, asking a live holder to hand
//! over. The state to continue from is the one the previous holder released at, or else the
//! replica's newest; it becomes the parent in the fence of every generation this instance starts.
//!
//! Keeping ([`Keeper`]): a task renews the lease every third of its TTL and looks for a handoff
//! request every tenth of it (between 250 ms and 2 s); it reports requests and a lost lease.
//!
//! Handing over ([`Freeze`], [`hand_over`]): take SQLite's write lock on a connection of our own
//! (`BEGIN IMMEDIATE`: the app's writers wait on their busy timeout, its readers go on), wait
//! until every transaction committed before it is in every replica, release the lease recording
//! the generation and transaction reached, and keep the lock until the app exits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lifeboat_agent::agent::{DbConfig, DbHandle};
use lifeboat_agent::catalog::Catalog;
use lifeboat_agent::flush::Flush;
use lifeboat_agent::lease::{
    self, Fencing, HandoffRequest, Holder, Lease, LeaseInfo, LeaseOptions, Renewal, Takeover,
};
use lifeboat_agent::status::Status;
use lifeboat_storage::probe;
use lifeboat_wal::{Generation, TxId};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::args::LeaseFlags;

/// A lease taken for one database, before its agent starts.
pub struct Taken {
    lease: Lease,
    holder: Holder,
    /// The state to continue from: where the previous holder released the lease, or the
    /// replica's newest state when the lease was taken (`None`: an empty replica).
    pub parent: Option<(Generation, TxId)>,
    /// The previous holder released the lease, or there was none (see [`Fencing::may_resume`]).
    may_resume: bool,
}

/// The newest state of a replica, from its listing: the newest generation and its last
/// transaction.
fn newest(cat: &Catalog) -> Option<(Generation, TxId)> {
    let (g, o) = cat.latest()?;
    let snap = o.snapshots.last()?.txid;
    let seg = o.segments.last().map_or(snap, |s| s.last);
    Some((g, seg.max(snap)))
}

/// Probes the database's first replica for conditional writes and takes its lease (asking a
/// live holder to hand over, waiting for a dead one's lease to expire).
pub async fn take(d: &DbConfig, flags: &LeaseFlags, handoff: bool) -> Result<Taken> {
    let client = d.replicas[0].clone();
    let support = probe::conditional_writes(client.as_ref(), "lease-probe.tmp")
        .await
        .with_context(|| format!("cannot probe {} for conditional writes", client.describe()))?;
    support.require_lease(&client.describe()).context(
        "refusing to run without a writer lease on this store; pass --no-lease to run \
         unfenced (only if one instance at a time ever writes this replica)",
    )?;
    let cat = Catalog::load(client.as_ref())
        .await
        .with_context(|| format!("cannot list {}", client.describe()))?;
    let holder = Holder::this_process();
    let opts = LeaseOptions {
        ttl: flags.lease_ttl,
        handoff,
        timeout: flags.handoff_timeout,
        poll: Duration::from_millis(200),
    };
    let db = d.path.display().to_string();
    let (lease, how) = lease::acquire(
        client.clone(),
        &holder,
        opts,
        lease::highest_epoch(&cat),
        |held| {
            info!(db = %db, holder = %held.holder, epoch = held.epoch, "another instance holds the writer lease: waiting for it to hand over (or for its lease to expire)");
        },
    )
    .await
    .with_context(|| format!("cannot take the writer lease of {}", client.describe()))?;
    let may_resume = !matches!(how, Takeover::Expired(_));
    let parent = match &how {
        Takeover::Released(r) => r.released.as_ref().and_then(|x| x.position()),
        Takeover::Fresh | Takeover::Expired(_) => None,
    };
    // What the previous holder shipped is in the replica now (it released after its last
    // upload, or stopped renewing a TTL ago): list again.
    let parent = match parent {
        Some(p) => Some(p),
        None => newest(
            &Catalog::load(client.as_ref())
                .await
                .with_context(|| format!("cannot list {}", client.describe()))?,
        ),
    };
    info!(db = %db, epoch = lease.epoch(), lease = how.describe(), from = %lease::fmt_position(parent), "holding the writer lease");
    Ok(Taken {
        lease,
        holder,
        parent,
        may_resume,
    })
}

/// Whether a failure to take the lease is the replica being unreachable (worth retrying until
/// the ready timeout), rather than a set-up mistake or a holder that will not let go.
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<lifeboat_storage::Error>()
            .is_some_and(|s| !s.is_setup())
            || c.downcast_ref::<lifeboat_agent::Error>()
                .is_some_and(|a| matches!(a, lifeboat_agent::Error::Storage(s) if !s.is_setup()))
    })
}

/// [`take`], retried while the replica is unreachable, until `ready_timeout` from now: the
/// same bound as the first sync's, so a replica down at boot is waited for, not a reason to
/// fail at once.
pub async fn take_within(
    d: &DbConfig,
    flags: &LeaseFlags,
    handoff: bool,
    ready_timeout: Duration,
) -> Result<Taken> {
    let deadline = Instant::now() + ready_timeout;
    loop {
        match take(d, flags, handoff).await {
            Ok(t) => return Ok(t),
            Err(e) if unreachable(&e) && Instant::now() < deadline => {
                warn!(db = %d.path.display(), error = %format!("{e:#}"), "cannot take the writer lease yet; trying again");
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            }
            Err(e) if unreachable(&e) => bail!(
                "taking the writer lease of {} did not complete within {} (last error: {e:#}); \
                 the app was not started. Check the replica URL and credentials, or raise \
                 --ready-timeout",
                d.replicas[0].describe(),
                humantime::format_duration(ready_timeout)
            ),
            Err(e) => return Err(e),
        }
    }
}

impl Taken {
    /// What the agent needs to fence its generations.
    pub fn fencing(&self) -> Fencing {
        Fencing {
            gate: self.lease.gate(),
            parent: self.parent,
            holder: self.holder.clone(),
            may_resume: self.may_resume,
        }
    }

    /// Starts renewing the lease at once (a restore may take longer than its TTL); events
    /// (handoff requests, a lost lease) for database `index` go to `events`.
    pub fn keep(self, index: usize, events: mpsc::UnboundedSender<(usize, Event)>) -> Keeper {
        let (tx, rx) = mpsc::unbounded_channel();
        let info = Arc::new(Shown::default());
        let ttl = self.lease.ttl();
        info.set(|l| l.holder = self.holder.to_string());
        info.record(&self.lease, ttl, "held");
        let task = tokio::spawn(keep(self.lease, ttl, index, info.clone(), events, rx));
        Keeper {
            commands: tx,
            task,
            info,
        }
    }
}

/// The lease's state, shown in the agent's status once it runs.
#[derive(Default)]
struct Shown {
    info: std::sync::Mutex<LeaseInfo>,
    status: std::sync::OnceLock<Arc<Status>>,
}

impl Shown {
    fn set(&self, f: impl FnOnce(&mut LeaseInfo)) {
        let mut i = self.info.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut i);
        if let Some(s) = self.status.get() {
            let copy = i.clone();
            s.update_lease(|l| *l = copy);
        }
    }

    fn record(&self, lease: &Lease, ttl: Duration, state: &str) {
        let r = lease.record();
        self.set(|l| {
            l.epoch = r.epoch;
            l.state = state.into();
            l.renewed_ms = r.renewed_ms;
            l.expires_ms = r.renewed_ms + ttl.as_millis() as u64;
        });
    }
}

/// What the lease task reports.
#[derive(Debug)]
pub enum Event {
    /// Another instance asks for the lease.
    HandoffRequested(HandoffRequest),
    /// Another instance took the lease: this one must not write any more.
    Lost(String),
}

/// The task that keeps a lease.
pub struct Keeper {
    commands: mpsc::UnboundedSender<Release>,
    task: tokio::task::JoinHandle<()>,
    info: Arc<Shown>,
}

impl Keeper {
    /// Shows the lease in `status` (for `/health` and `/metrics`) from now on.
    pub fn show_in(&self, status: Arc<Status>) {
        let _ = self.info.status.set(status);
        self.info.set(|_| {});
    }

    /// Releases the lease, recording where this instance stopped.
    pub async fn release(&self, at: Option<(Generation, TxId)>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send((at, tx)).is_err() {
            bail!("the writer lease is no longer held (it was lost or already released)");
        }
        rx.await
            .context("the lease task ended before releasing the lease")?
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request to release the lease at a position, and where to answer.
type Release = (Option<(Generation, TxId)>, oneshot::Sender<Result<()>>);

async fn keep(
    mut lease: Lease,
    ttl: Duration,
    index: usize,
    status: Arc<Shown>,
    events: mpsc::UnboundedSender<(usize, Event)>,
    mut commands: mpsc::UnboundedReceiver<Release>,
) {
    let renew_every = ttl / 3;
    let look_every = (ttl / 10).clamp(Duration::from_millis(250), Duration::from_secs(2));
    let mut next_renewal = Instant::now() + renew_every;
    let mut asked = false;
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some((at, reply)) = cmd else { return };
                let r = lease.release(at).await.map(|_| ()).map_err(anyhow::Error::new);
                status.set(|l| l.state = if r.is_ok() { "released".into() } else { "lost".into() });
                let _ = reply.send(r);
                return;
            }
            _ = tokio::time::sleep(look_every) => {}
        }
        if Instant::now() >= next_renewal {
            match lease.renew().await {
                Ok(Renewal::Renewed) => {
                    next_renewal = Instant::now() + renew_every;
                    status.record(&lease, ttl, "held");
                }
                Ok(Renewal::Lost(by)) => {
                    let why = match by {
                        Some(r) => format!(
                            "instance {} took the writer lease (epoch {}) from this one \
                             (epoch {}): this instance was paused or cut off past the lease's \
                             time to live",
                            r.holder,
                            r.epoch,
                            lease.epoch()
                        ),
                        None => format!("the writer lease (epoch {}) was lost", lease.epoch()),
                    };
                    status.set(|l| l.state = "lost".into());
                    let _ = events.send((index, Event::Lost(why)));
                    return;
                }
                Err(e) => {
                    warn!(error = %e.chain(), "cannot renew the writer lease; trying again (uploads stop if it is not renewed within its time to live)");
                    next_renewal = Instant::now() + Duration::from_millis(500).min(renew_every);
                }
            }
        }
        if !asked {
            match lease.handoff_requested().await {
                Ok(Some(req)) => {
                    asked = true;
                    let _ = events.send((index, Event::HandoffRequested(req)));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e.chain(), "cannot look for a handoff request; trying again")
                }
            }
        }
    }
}

/// `replicate --lease`: takes every database's lease (waiting for a holder to release it or
/// let it expire; `replicate` does not ask for a handoff, nor answers one: it does not own the
/// app, so it cannot freeze its writes for long) and keeps them.
pub async fn hold(dbs: &mut [DbConfig], flags: &LeaseFlags) -> Result<Vec<Keeper>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut keepers = Vec::new();
    for (i, d) in dbs.iter_mut().enumerate() {
        let t = take(d, flags, false).await?;
        d.options.lease = Some(t.fencing());
        keepers.push(t.keep(i, tx.clone()));
    }
    tokio::spawn(async move {
        while let Some((_, ev)) = rx.recv().await {
            match ev {
                Event::HandoffRequested(req) => {
                    warn!(requester = %req.requester, "another instance asks for the writer lease; `lifeboat replicate` does not hand over: stop this process (its final sync releases the lease)")
                }
                Event::Lost(why) => {
                    error!("{why}. This instance writes nothing more to the replica; stop it")
                }
            }
        }
    });
    Ok(keepers)
}

/// SQLite's write lock, held on a connection of lifeboat's own: the app's writers wait on their
/// busy timeout (and then fail), its readers go on. Released when dropped.
pub struct Freeze {
    conn: rusqlite::Connection,
    db: PathBuf,
}

impl Freeze {
    /// Takes the write lock of `db`, waiting up to `timeout` for the app's transaction in
    /// progress to end.
    pub async fn take(db: &Path, timeout: Duration) -> Result<Freeze> {
        let db = db.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(&db)
                .with_context(|| format!("cannot open {} to freeze its writes", db.display()))?;
            conn.busy_timeout(timeout)?;
            conn.execute_batch("BEGIN IMMEDIATE").with_context(|| {
                format!(
                    "cannot take the write lock of {} within {} (the app holds a write \
                     transaction open)",
                    db.display(),
                    humantime::format_duration(timeout)
                )
            })?;
            Ok(Freeze { conn, db })
        })
        .await
        .context("freezing the app's writes")?
    }
}

impl Drop for Freeze {
    fn drop(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
        info!(db = %self.db.display(), "the app's writes are no longer frozen");
    }
}

/// Where a database's first replica stands after a sync: its generation and last transaction.
fn position(at: &[lifeboat_agent::flush::Synced]) -> Option<(Generation, TxId)> {
    let s = at.first()?;
    Some((s.generation.parse().ok()?, s.txid.parse().ok()?))
}

/// Hands database `h`'s lease over: freezes the app's writes, waits until everything
/// committed is in every replica, releases the lease at the transaction reached. The freeze is
/// returned, to be held until the app exits. On failure the lease stays held and the freeze is
/// lifted: the app goes on as before, and the requester gives up at its handoff timeout.
pub async fn hand_over(
    h: &DbHandle,
    keeper: &Keeper,
    req: &HandoffRequest,
    timeout: Duration,
) -> Result<Freeze> {
    let started = Instant::now();
    info!(db = %h.path().display(), requester = %req.requester, "handoff requested: freezing the app's writes and shipping the last commits");
    keeper.info.set(|l| l.state = "handing_over".into());
    let freeze = Freeze::take(h.path(), timeout).await?;
    let flush = h.flush.clone();
    let left = timeout.saturating_sub(started.elapsed());
    let synced = tokio::task::spawn_blocking(move || flush.sync(left))
        .await
        .context("waiting for the last upload")?
        .map_err(|e| anyhow::anyhow!("the last commits did not reach every replica ({e:?})"))?;
    let at = position(&synced);
    keeper.release(at).await?;
    keeper.info.set(|l| l.handoffs += 1);
    info!(
        db = %h.path().display(),
        at = %lease::fmt_position(at),
        elapsed = ?started.elapsed(),
        "handed the writer lease over; the app's writes stay frozen until it exits (its reads go on)"
    );
    Ok(freeze)
}

/// A lost lease: the app must not acknowledge writes that will never reach the replica, so
/// its writes are frozen (loudly) until it exits.
pub async fn lost(h: &DbHandle, why: &str) -> Option<Freeze> {
    error!(db = %h.path().display(), "{why}. This instance writes nothing more to the replica; the app's writes are frozen until it exits (its reads go on). Stop this instance");
    match Freeze::take(h.path(), Duration::from_secs(30)).await {
        Ok(f) => Some(f),
        Err(e) => {
            error!(db = %h.path().display(), error = %format!("{e:#}"), "cannot freeze the app's writes: writes it makes now will not be replicated");
            None
        }
    }
}

/// After the agents stopped: releases each lease still held, at the transaction its
/// database's agent stopped at if the final sync completed (`synced`), so the next instance
/// takes over at once and restores exactly that.
pub async fn release_all(keepers: Vec<(Keeper, Arc<Flush>)>, synced: bool) {
    // `--shutdown-timeout` bounds the stop: after a final sync that did not complete (the
    // replica is most likely down) the release gets one short try; a lease left behind only
    // makes the next instance wait out its TTL.
    let limit = if synced {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(500)
    };
    for (k, flush) in keepers {
        let at = if synced {
            flush.last_synced().as_deref().and_then(position)
        } else {
            None
        };
        let released = match tokio::time::timeout(limit, k.release(at)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "no answer from the replica within {limit:?}"
            )),
        };
        if let Err(e) = released {
            warn!(error = %format!("{e:#}"), "cannot release the writer lease: the next instance waits for it to expire");
        }
    }
}
