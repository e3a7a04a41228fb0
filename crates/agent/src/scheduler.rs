//! When each database's passes run, and on which threads.
//!
//! Every database is a task on the async runtime: while it waits for a file event, a timer or
//! the stop token it holds no thread and costs nothing. A pass (reading the WAL, uploading,
//! checkpointing: blocking work) runs on the runtime's blocking pool, but only with one of
//! [`WORKERS`] slots, granted first come first served: however many databases there are, at
//! most that many passes run at once, and a busy database queues behind the others rather than
//! ahead of them. Each database keeps its own PUT budget ([`Budget`]), the same policy for all,
//! so one database's writes never spend another's uploads.
//!
//! A database whose WAL the shared watcher ([`crate::watcher`]) sees wakes on its events only,
//! with a stat of the WAL every [`WATCHED_POLL`] as a safety net; one that cannot be watched
//! looks every `poll-interval`.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::budget::Budget;
use crate::flush::{Flush, Synced};
use crate::replicator::{Replicator, SyncReport};
use crate::{Error, Options, Result};

/// Passes that may run at once, over every database of the agent.
pub const WORKERS: usize = 8;

/// During the final sync, a failing replica is tried again at least this often.
const FINAL_RETRY: Duration = Duration::from_millis(500);

/// How a database's task is stopped.
pub(crate) struct Stops {
    /// Cancelled to stop (then the final sync).
    pub stop: CancellationToken,
    /// When `stop` was cancelled: the final sync's deadline counts from it.
    pub at: Arc<std::sync::OnceLock<Instant>>,
    /// Cancelled before `stop` when the database file was removed: no final sync.
    pub removed: CancellationToken,
}

/// How often a watched database looks at its WAL without an event.
pub const WATCHED_POLL: Duration = Duration::from_secs(30);

/// While a pass is held back (by the PUT budget or a failing replica's backoff), file events
/// are looked at no more often than this: each look only notes commit times and keeps the WAL
/// in bounds, and a look per WAL write cost more CPU than shipping. Commit times are then at
/// most this late; a pass that is due, an idle database's first event and a stop are not
/// delayed.
pub const HELD_BACK_LOOKS: Duration = Duration::from_millis(50);

/// The agent's worker slots.
fn slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(WORKERS)))
        .clone()
}

/// One database's loop state between passes.
struct Task {
    rep: Replicator,
    opts: Options,
    budget: Budget,
    /// The WAL's size and modification time at the last look.
    stamp: Option<(u64, std::time::SystemTime)>,
    /// When the next pass is due; `None` while idle (only events or the poll wake it).
    due: Option<Instant>,
    /// The last pass shipped a segment cut at the size bound: the app writes faster than a
    /// segment a pass, so the next pass runs without waiting for the PUT budget.
    behind: bool,
    /// Durable acknowledgements waiting on this database's passes.
    flush: Arc<Flush>,
}

impl Task {
    /// Looks at the WAL and, if a pass is due and the budget allows, runs one.
    fn step(&mut self) {
        let now = Instant::now();
        let s = wal_stamp(&self.rep);
        if s != self.stamp {
            self.stamp = s;
            self.rep.observe();
            self.due = Some(self.due.map_or(now, |t| t.min(now)));
        }
        match self.due {
            Some(t) if t <= now => {}
            _ => {
                self.rep.between_passes();
                return;
            }
        }
        // A sync request (durable acknowledgement) goes past the budget. Read before the pass,
        // so the pass that settles it started after it was taken.
        let ticket = self.flush.wanted();
        let b = self.budget.wait(now);
        if !b.is_zero() && ticket.is_none() && !self.behind {
            self.due = Some(now + b);
            self.rep.between_passes();
            return;
        }
        let r = self.rep.sync();
        // A pass that shipped a full segment draws nothing: waiting could not have coalesced
        // its segments, and its last one (cut at the end of the WAL) is at most one per full
        // one, so uploads stay proportional to the bytes written (see design.md, "Pacing and
        // cost"). Otherwise a drained backlog would leave the next commit waiting out a debt.
        self.behind = r.at_bound > 0;
        if !self.behind {
            self.budget.spend(r.puts);
        }
        if let Some(t) = ticket {
            settle(&self.rep, &r, &self.flush, t);
        }
        self.due = if !r.pending {
            // Idle until the next event: hold the pin's connection only.
            self.rep.release_idle();
            None
        } else if r.puts > 0 {
            Some(Instant::now())
        } else {
            let retry = self.rep.replicas().iter().filter_map(|x| x.retry_at).min();
            Some(retry.unwrap_or_else(|| Instant::now() + self.opts.poll_interval))
        };
    }

    /// One pass of the final sync: `Some(ok)` once done (or out of time), else how long to wait.
    fn final_step(&mut self, deadline: Instant) -> std::result::Result<bool, Duration> {
        // Without waiting out a failing replica's backoff (up to 30 s; the endpoint may well be
        // back): at once, then every half second at most, until the deadline.
        self.rep.retry_now();
        let r = self.rep.sync();
        // Caught up at the end: that settles every call, and is where this agent stopped.
        settle(&self.rep, &r, &self.flush, u64::MAX);
        if !r.pending || Instant::now() >= deadline {
            self.flush.stop();
            let db = self.rep.database().path().display();
            if r.pending {
                for x in self.rep.replicas() {
                    error!(db = %db, replica = %x.client.describe(), state = %x.progress(), failures = x.failures, "not caught up");
                }
                error!(db = %db, "final sync did not complete before the shutdown timeout");
            } else {
                info!(db = %db, "final sync complete");
            }
            return Ok(!r.pending && self.rep.replicas().iter().all(|x| x.halted().is_none()));
        }
        let retry = self.rep.replicas().iter().filter_map(|r| r.retry_at).min();
        Err(retry
            .map_or(Duration::from_millis(10), |t| {
                t.saturating_duration_since(Instant::now())
            })
            .min(FINAL_RETRY))
    }
}

/// Settles sync tickets up to `ticket` if the pass that just ran (which started after it was
/// taken) left every replica caught up.
fn settle(rep: &Replicator, r: &SyncReport, flush: &Flush, ticket: u64) {
    if r.pending || rep.replicas().iter().any(|x| x.halted().is_some()) {
        return;
    }
    let at = rep
        .replicas()
        .iter()
        .filter_map(|x| {
            x.state().map(|s| Synced {
                replica: x.client.describe(),
                generation: s.generation.to_string(),
                txid: s.last_txid().to_string(),
            })
        })
        .collect();
    flush.settle(ticket, at);
}

fn wal_stamp(rep: &Replicator) -> Option<(u64, std::time::SystemTime)> {
    stamp_of(rep.database().wal().path())
}

fn stamp_of(wal: &std::path::Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(wal).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Runs `f` on the task in the blocking pool, holding a worker slot.
async fn on_worker<T: Send + 'static>(
    task: Box<Task>,
    f: impl FnOnce(&mut Task) -> T + Send + 'static,
) -> Result<(Box<Task>, T)> {
    let _slot = slots()
        .acquire_owned()
        .await
        .map_err(|_| Error::Panicked("the worker slots were closed".into()))?;
    tokio::task::spawn_blocking(move || {
        let mut task = task;
        let out = f(&mut task);
        (task, out)
    })
    .await
    .map_err(|e| Error::join("a replication pass", e))
}

/// Replicates until `stop`, then syncs a last time (unless `removed` is cancelled first: the
/// database is gone, and nothing is left to sync). Returns whether the final sync completed.
pub(crate) async fn run(
    rep: Replicator,
    opts: Options,
    wake: Arc<Notify>,
    flush: Arc<Flush>,
    watched: bool,
    stops: Stops,
) -> Result<()> {
    let Stops { stop, at, removed } = stops;
    let idle = if watched {
        WATCHED_POLL.max(opts.poll_interval)
    } else {
        opts.poll_interval
    };
    let deadline_after = opts.shutdown_timeout;
    let path = rep.database().path().to_path_buf();
    let wal = rep.database().wal().path().to_path_buf();
    let mut task = Box::new(Task {
        budget: Budget::new(opts.puts_per_second, opts.put_burst),
        rep,
        opts,
        stamp: None,
        due: Some(Instant::now()),
        behind: false,
        flush: flush.clone(),
    });
    let mut last_look = Instant::now();
    loop {
        if stop.is_cancelled() {
            break;
        }
        if flush.wanted().is_some() {
            task.due = Some(Instant::now());
        }
        let now = Instant::now();
        let mut wait = task.due.map_or(idle, |t| t.saturating_duration_since(now));
        // Held back: events wait (the `Notify` keeps one) until the next look is allowed.
        let next_look = last_look + HELD_BACK_LOOKS;
        let coalesce = task.due.is_some() && !wait.is_zero() && next_look > now;
        if coalesce {
            wait = wait.min(next_look - now);
        }
        if !wait.is_zero() {
            let woke = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                // An event only says "look": the pass runs if the WAL changed (`step`).
                _ = wake.notified(), if !coalesce => true,
                _ = tokio::time::sleep(wait) => false,
            };
            if coalesce && !woke && task.due.is_some_and(|t| t > Instant::now()) {
                // A look is allowed again: take it only if an event came meanwhile.
                let event = tokio::select! {
                    biased;
                    _ = wake.notified() => true,
                    _ = std::future::ready(()) => false,
                };
                if !event {
                    continue;
                }
            }
            // Idle and unchanged (a stat, no worker needed): nothing to do.
            if task.due.is_none() && stamp_of(&wal) == task.stamp && flush.wanted().is_none() {
                continue;
            }
        }
        last_look = Instant::now();
        task = on_worker(task, Task::step).await?.0;
    }
    if removed.is_cancelled() {
        flush.stop();
        info!(db = %path.display(), "database removed: stopped replicating it");
        return Ok(());
    }
    // Final sync: ship everything committed, whatever the budget, by the shutdown timeout
    // counted from the stop signal.
    let deadline = at.get().copied().unwrap_or_else(Instant::now) + deadline_after;
    loop {
        let (t, out) = on_worker(task, move |t| t.final_step(deadline)).await?;
        task = t;
        match out {
            Ok(true) => return Ok(()),
            Ok(false) => return Err(Error::FinalSyncIncomplete(path)),
            Err(wait) => {
                tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now())))
                    .await
            }
        }
    }
}
