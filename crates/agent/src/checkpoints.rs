//! Moving the pin and letting the WAL restart: after every pass, the pin moves forward once every
//! replica has shipped what it protects, and when the log has grown past `checkpoint-pages` the
//! agent checkpoints it under a brief write lock, carrying each replica's unshipped tail in
//! memory, so the app's next write can restart the log (see `docs/design.md`, "Letting the log
//! restart under steady writes").

use std::time::{Duration, Instant};

use lifeboat_wal::sqlite::WAL_HEADER_SIZE;
use tracing::{debug, error, info, warn};

use crate::context::Context;
use crate::db::{CheckpointMode, CheckpointResult, Database};
use crate::replica::{Reason, Replica};
use crate::walfile::Continuity;
use crate::{Error, Result};

/// The most raw WAL one carried batch holds. A tail read under the write lock (to let the log
/// restart, or to resume) is split into batches of about this size, and each ships as one
/// segment, encoded whole: so this also bounds the memory such a segment takes to build.
pub(crate) const CARRIED_BATCH_BYTES: usize = 4 << 20;

/// The WAL file is cut back (past `truncate-wal-bytes`) at most this often. SQLite cuts the file
/// under its write lock, so the app's writes wait for the cut (130–500 ms for 130 MB–1.7 GB
/// here); under a writer that never pauses the file grows back to the same size within a second,
/// so cutting it at every restart cost the app a fifth of its throughput (the unpaced benchmark)
/// and gave back no space for longer than that second. That holds past `max-wal-bytes` too:
/// that bound is held by restarting the log, which reuses the file from the top (see
/// `docs/design.md`).
pub(crate) const TRUNCATE_EVERY: Duration = Duration::from_secs(10);

/// When the agent last tried to restart the WAL (it tries at most once a second), and last cut
/// the file back.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    last_restart_attempt: Option<Instant>,
    last_truncation: Option<Instant>,
}

/// Whether every replica in a generation has shipped what the current pin protects.
pub(crate) fn caught_up(db: &Database, replicas: &[Replica]) -> bool {
    replicas.iter().all(|r| covers_pin(db, r, false))
}

/// Whether a replica does not need the WAL the pin protects: it ships in no generation, or
/// has shipped everything up to the pin (or, unless `strict`, found nothing more to ship on
/// its last pass).
fn covers_pin(db: &Database, r: &Replica, strict: bool) -> bool {
    let pin = db.pin_position();
    r.state().is_none_or(|s| {
        (s.at_end && !strict && s.unsent.is_none()) || pin.is_some_and(|p| s.cursor.covers(&p))
    })
}

impl Checkpoints {
    /// After shipping: if every replica with a generation is caught up, move the pin forward;
    /// checkpoint when the WAL has grown past the threshold. If the WAL has grown past the bound
    /// because a replica is failing, give up on that replica's continuity so the app's WAL can
    /// be checkpointed.
    pub fn after_ship(&mut self, db: &mut Database, replicas: &mut [Replica], ctx: &Context) {
        self.tend(db, replicas, ctx, false);
    }

    /// Between passes, on every wake-up while the WAL is past `max-wal-bytes`: the same as
    /// after a pass, so the bound holds while passes wait out a failing replica's backoff.
    /// A replica's `at_end` is from its last pass and may be stale here, so only a cursor
    /// that provably covers the pin counts.
    pub fn between_passes(&mut self, db: &mut Database, replicas: &mut [Replica], ctx: &Context) {
        if db.wal().size().unwrap_or(0) > ctx.opts.max_wal_bytes {
            self.tend(db, replicas, ctx, true);
        } else {
            leave_mark_zero(db);
        }
    }

    fn tend(&mut self, db: &mut Database, replicas: &mut [Replica], ctx: &Context, strict: bool) {
        let caught_up = |db: &Database, replicas: &[Replica]| {
            replicas.iter().all(|r| covers_pin(db, r, strict))
        };
        db.refresh_pin_position();
        if !caught_up(db, replicas) {
            let size = db.wal().size().unwrap_or(0);
            if size > ctx.opts.max_wal_bytes {
                // Only a replica that is failing is given up on: under heavy writes a healthy
                // replica may be a pass behind while the file (which never shrinks on a restart)
                // is large. Whether it failed once or many times, and whatever it was doing
                // (an upload, a retry of one), the bound holds.
                for r in replicas.iter_mut() {
                    if r.failures >= 1 && !covers_pin(db, r, strict) {
                        error!(
                            db = %ctx.path.display(),
                            replica = %r.client.describe(),
                            wal_bytes = size,
                            bound = ctx.opts.max_wal_bytes,
                            "replica is too far behind; releasing the WAL so the app can checkpoint — a new generation will start when it is reachable"
                        );
                        r.lose_continuity(Reason::TooFarBehind);
                    }
                }
            }
            if !caught_up(db, replicas) {
                leave_mark_zero(db);
                return;
            }
        }
        if let Err(e) = db.pin() {
            if ctx.path.exists() {
                warn!(error = %e.chain(), "cannot move the WAL pin");
            } else {
                // Removed (from a folder of databases): its task is being stopped.
                debug!(error = %e.chain(), "cannot move the WAL pin: the database is gone");
            }
            return;
        }
        let frames = db.pin_position().map_or(0, |p| {
            p.offset.saturating_sub(WAL_HEADER_SIZE as u64) / (24 + u64::from(db.page_size()))
        });
        // Only replicas that ship in a generation need the log to stay: one waiting for a new
        // generation (or to be read) must not keep it from restarting while it is down.
        let healthy = replicas.iter().all(|r| r.state().is_none() || r.healthy());
        // Once a second; past max-wal-bytes (a replica was just given up, the app writes fast),
        // as often as it takes to hold the bound.
        let every = if db.wal().size().unwrap_or(0) > ctx.opts.max_wal_bytes {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(1)
        };
        let due = self
            .last_restart_attempt
            .is_none_or(|t| t.elapsed() >= every);
        if frames >= u64::from(ctx.opts.checkpoint_pages) && healthy && due {
            // At most one cut per `TRUNCATE_EVERY`, past `max-wal-bytes` too: that bound is
            // held by restarting (the file is reused from the top), not by cutting it.
            let may_truncate = self
                .last_truncation
                .is_none_or(|t| t.elapsed() >= TRUNCATE_EVERY);
            match restart_wal(db, replicas, ctx, frames, may_truncate) {
                Ok((true, truncated)) => {
                    self.last_restart_attempt = Some(Instant::now());
                    if truncated {
                        self.last_truncation = self.last_restart_attempt;
                    }
                }
                Ok((false, _)) => {}
                Err(e) => {
                    self.last_restart_attempt = Some(Instant::now());
                    warn!(error = %e.chain(), "checkpoint failed");
                }
            }
        }
    }
}

/// A pin left on read mark zero by a restart must not stall the app's checkpoints while a
/// replica ships its carried tail, which under the PUT budget can take many seconds: it moves
/// onto the new log cycle as soon as that has a frame (see [`Database::leave_mark_zero`]).
fn leave_mark_zero(db: &mut Database) {
    match db.leave_mark_zero() {
        Ok(true) => debug!("pin moved off read mark zero onto the new log cycle"),
        Ok(false) => {}
        // Only the app's speed depends on it, not what is shipped; a pass that cannot pin
        // reports it (and a database just removed needs no pin).
        Err(e) => debug!(error = %e.chain(), "cannot move the pin off read mark zero"),
    }
}

/// Lets SQLite restart the WAL from the top, which it can only do once every frame is
/// checkpointed and no reader holds a frame mark — never the case while the app writes
/// steadily and the pin sits on the newest frames. So, briefly holding the write lock
/// (nothing can be appended), the agent reads every replica's unshipped tail into memory,
/// releases its pin, checkpoints everything (PASSIVE: it waits for no one), takes a fresh
/// pin (mark zero when the checkpoint was complete) and lets go of the lock. The app's next
/// write then restarts the log. The carried tails are shipped on the next passes.
/// Returns whether the checkpoint ran to the end of the WAL.
/// Returns whether the checkpoint was complete, and whether the file was then cut back (only
/// if `may_truncate`).
fn restart_wal(
    db: &mut Database,
    replicas: &mut [Replica],
    ctx: &Context,
    frames: u64,
    may_truncate: bool,
) -> Result<(bool, bool)> {
    let wait = if frames >= 4 * u64::from(ctx.opts.checkpoint_pages) {
        Duration::from_millis(1000)
    } else {
        Duration::from_millis(100)
    };
    // First copy, without any lock, everything up to the pin (which stands where every
    // replica has shipped): the app keeps writing meanwhile, and what is left for the locked
    // step below is only what it appended since — so the app waits on the agent for a short
    // read and a small checkpoint, never for the bulk of the copying and its fsync.
    let pre = Instant::now();
    if let Err(e) = db.checkpoint(CheckpointMode::Passive) {
        debug!(error = %e.chain(), "checkpoint before the locked step failed");
    }
    let pre = pre.elapsed();
    // The file keeps its largest size across restarts; past the bound, the space goes back
    // right after the locked step (below). Cutting a file whose pages are still being written
    // back waits for the disk, so flush the log now, without a lock: then the cut is quick,
    // and it follows the release of the write lock at once, before an app that writes back to
    // back (asleep in its busy handler while the agent held the lock) can append and restart
    // the log. Flushing in between would hand it that moment on a slow disk every time.
    let truncate = may_truncate && db.wal().size().unwrap_or(0) > ctx.opts.truncate_wal_bytes;
    let flushed = if truncate {
        let started = Instant::now();
        if let Ok(Some(f)) = db.wal().open_file() {
            if let Err(e) = f.sync_data() {
                debug!(error = %e, "flushing the WAL before truncating it failed");
            }
        }
        Some(started.elapsed())
    } else {
        None
    };
    let waited = Instant::now();
    if !db.try_write_lock(wait)? {
        debug!(frames, "write lock busy; checkpoint deferred");
        return Ok((false, false));
    }
    let locked = Instant::now();
    let waited = waited.elapsed();
    let result = carry_tails_and_checkpoint(db, replicas, ctx);
    // Re-pin while the write lock is still held, so there is never a moment without a reader.
    let pinned = db.pin();
    let released = db.release_write_lock();
    let held = locked.elapsed();
    let r = result?;
    pinned?;
    released?;
    debug!(
        ?r,
        frames,
        ?held,
        ?pre,
        ?waited,
        "checkpoint under the agent's write lock"
    );
    let complete = r.is_some_and(|r| !r.busy && r.log_frames == r.checkpointed);
    let mut truncated = false;
    if complete && truncate {
        let started = Instant::now();
        match db.truncate_wal(Duration::from_millis(50)) {
            Ok(t) if !t.busy => {
                truncated = true;
                info!(db = %ctx.path.display(), frames = t.log_frames, ?flushed, took = ?started.elapsed(), "WAL truncated")
            }
            // The app appended first (its write restarted the log, which the pin on read mark
            // zero allows): nothing lost, the space goes back at a later restart.
            Ok(_) => debug!("the app wrote before the WAL could be truncated; put off"),
            Err(e) => warn!(error = %e.chain(), "WAL truncation failed"),
        }
    }
    Ok((complete, truncated))
}

/// Under the write lock: reads every replica's unshipped tail into its carry, then checkpoints
/// with the pin released. `None` (nothing done) if a replica already carries a tail or the WAL
/// does not continue from a replica's place.
fn carry_tails_and_checkpoint(
    db: &mut Database,
    replicas: &mut [Replica],
    ctx: &Context,
) -> Result<Option<CheckpointResult>> {
    let wal = db.wal().clone();
    for st in replicas.iter().filter_map(Replica::state) {
        // A segment not known to be stored holds transactions from the cursor on: carrying
        // them again would ship them twice.
        if !st.carry.is_empty()
            || st.unsent.is_some()
            || wal
                .check(&st.cursor)
                .map_err(|e| Error::io("read WAL", e))?
                != Continuity::Same
        {
            return Ok(None);
        }
    }
    // The tails are held in memory until shipped: at most one segment's worth each. A longer
    // one (a replica that fell behind an app writing flat out) waits in the WAL instead, and the
    // restart is tried again once the replica is closer.
    let bound = CARRIED_BATCH_BYTES;
    let mut tails = Vec::new();
    for st in replicas.iter().filter_map(Replica::state) {
        match wal
            .read_tail(st.cursor, CARRIED_BATCH_BYTES, bound)
            .map_err(|e| Error::io(format!("read {}", wal.path().display()), e))?
        {
            Some(t) => tails.push(t),
            None => {
                debug!(bound, "unshipped tail too long to carry; restart deferred");
                return Ok(None);
            }
        }
    }
    for (st, tail) in replicas
        .iter_mut()
        .filter_map(Replica::state_mut)
        .zip(tails)
    {
        st.at_end = tail.is_empty();
        st.carry = tail;
    }
    let started = Instant::now();
    db.unpin()?;
    // The app's own autocheckpoint may be running (it finishes quickly: with the write lock
    // held nothing new can arrive), in which case ours reports busy at once; try again.
    let mut r = db.checkpoint_unpinned(CheckpointMode::Passive)?;
    for _ in 0..50 {
        if !(r.busy && r.log_frames < 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
        r = db.checkpoint_unpinned(CheckpointMode::Passive)?;
    }
    ctx.status.checkpointed(started.elapsed());
    Ok(Some(r))
}
