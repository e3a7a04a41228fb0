//! The resume proof: on start-up a replica resumes its newest generation only if the local
//! database provably is that generation's last state (see `docs/design.md`, "Starting, resuming,
//! new generations").
//!
//! The agent reads the generation's tip (two ranged GETs at most), hashes the database file's
//! pages, overlaid with the current WAL's frames up to the recorded offset when the log is still
//! the same cycle, and compares the result with the recorded database checksum. Any mismatch
//! means a new generation (or, with `--on-stale refuse`, a halted replica): a restarted agent
//! never stitches a history together by guesswork.

use std::collections::VecDeque;
use std::time::Duration;

use lifeboat_storage::ReplicaClient;
use tracing::{info, warn};

use crate::catalog::{self, Catalog};
use crate::checkpoints::CARRIED_BATCH_BYTES;
use crate::clock::now_ms;
use crate::context::Context;
use crate::db::Database;
use crate::replica::{Phase, Reason, ReplicaState};
use crate::walfile::{position_in_cycle, Batch, Continuity, Cursor};
use crate::{Error, Result};

/// The most unshipped WAL the agent reads into memory to resume a generation; past it, a new
/// generation (a snapshot) is cheaper and bounded.
const MAX_CARRY_BYTES: usize = 64 << 20;

/// Reads the replica's newest generation and decides where the replica stands: resuming it
/// ([`Phase::Active`]) when the proof holds, else needing a new generation and why. An error is
/// a replica (or local file) that could not be read: try again later, and start no generation
/// meanwhile.
pub(crate) fn resume(
    db: &mut Database,
    client: &dyn ReplicaClient,
    ctx: &Context,
) -> Result<Phase> {
    let phase = prove(db, client, ctx)?;
    if let Phase::NeedsGeneration(Reason::Diverged(why)) = &phase {
        warn!(
            db = %ctx.path.display(),
            replica = %client.describe(),
            reason = %why,
            "the local database does not continue the replica's newest state"
        );
    }
    Ok(phase)
}

fn prove(db: &mut Database, client: &dyn ReplicaClient, ctx: &Context) -> Result<Phase> {
    let diverged = |why: String| Ok(Phase::NeedsGeneration(Reason::Diverged(why)));
    let cat = ctx.rt.block_on(Catalog::load(client))?;
    let Some((generation, objs)) = cat.latest() else {
        return Ok(Phase::NeedsGeneration(Reason::EmptyReplica));
    };
    if !ctx.opts.resume {
        return Ok(Phase::NeedsGeneration(Reason::Restored));
    }
    let tip = ctx.rt.block_on(catalog::tip(client, generation, objs))?;
    let (segments_since, bytes_since_snapshot) = objs.since_snapshot();
    let (since_snapshot, snapshot_ms, snapshot_bytes) = match objs.snapshots.last() {
        Some(s) => (segments_since as u32, s.time_ms, s.size),
        None => (0, now_ms(), 0),
    };
    if tip.page_size != db.page_size() {
        return diverged(format!(
            "page size changed from {} to {}",
            tip.page_size,
            db.page_size()
        ));
    }
    // The pin is held: nothing the app does from here on can break the WAL under us.
    db.pin()?;
    let header = db
        .wal()
        .header()
        .map_err(|e| Error::io("read WAL header", e))?;
    let in_cycle = header.filter(|h| position_in_cycle(&tip.wal, h));
    let (hashes, cursor) = match in_cycle {
        Some(h) => {
            let c = Cursor {
                header: Some(h),
                offset: tip.wal.end_offset,
                checksum: tip.wal.checksum_after,
                prev: None,
            };
            if db.wal().check(&c).map_err(|e| Error::io("read WAL", e))? != Continuity::Same {
                return diverged("the WAL no longer holds the replica's last frame".into());
            }
            (
                db.hashes_at(tip.db_size, Some((&h, tip.wal.end_offset)))?,
                c,
            )
        }
        None => {
            // The log restarted (or was removed) since: the replica's last state must be
            // exactly the database file, and the whole current WAL comes after it.
            if header.is_some_and(|h| h.salt1 == tip.wal.salt1 && h.salt2 == tip.wal.salt2) {
                return diverged("the WAL changed in a way lifeboat cannot follow".into());
            }
            let c = header.map_or(Cursor::empty(), |h| Cursor {
                prev: Some((tip.wal.salt1, tip.wal.salt2)),
                ..Cursor::at_start(h)
            });
            (db.hashes_at(tip.db_size, None)?, c)
        }
    };
    let hashes = match hashes {
        Some(h) if h.checksum() == tip.checksum => h,
        Some(h) => {
            return diverged(format!(
                "the local database (checksum {}) is not the replica's last state (generation {generation}, txid {}, checksum {})",
                h.checksum(),
                tip.txid,
                tip.checksum
            ))
        }
        None => return diverged("the WAL no longer holds the replica's last frames".into()),
    };
    // A lease holder that took over from an expired holder (which may still be alive) writes
    // only generations fenced with its own epoch: proven, the local database still starts one.
    if ctx.opts.lease.as_ref().is_some_and(|f| !f.may_resume) {
        return Ok(Phase::NeedsGeneration(Reason::NewEpoch));
    }
    // The proof ran without a lock. Before resuming, make sure the log has not moved on since,
    // and read everything after the replica's last frame: if the app checkpointed it all while
    // the agent was stopped, the pin may hold read mark zero, which lets the app's next write
    // restart the log over those frames.
    let Some((cursor, carry)) = read_tail_locked(db, cursor)? else {
        return diverged(
            "the WAL moved on while lifeboat checked it, or its unshipped tail is too large to carry"
                .into(),
        );
    };
    info!(
        db = %ctx.path.display(),
        replica = %client.describe(),
        generation = %generation,
        txid = tip.txid.0,
        "resuming generation: the local database matches the replica's last state"
    );
    Ok(Phase::Active(ReplicaState {
        carry,
        since_snapshot,
        snapshot_bytes,
        bytes_since_snapshot,
        ..ReplicaState::new(generation, tip.txid, cursor, hashes, snapshot_ms)
    }))
}

/// Under the write lock (nothing can be appended or restarted meanwhile): checks that the
/// WAL still continues from `cursor`, reads every whole transaction after it, and re-pins.
/// `None` if the log moved on, the tail is larger than [`MAX_CARRY_BYTES`], or the app held
/// the write lock for two seconds.
fn read_tail_locked(
    db: &mut Database,
    cursor: Cursor,
) -> Result<Option<(Cursor, VecDeque<Batch>)>> {
    if !db.try_write_lock(Duration::from_secs(2))? {
        return Ok(None);
    }
    let wal = db.wal().clone();
    let read = (|| -> Result<Option<(Cursor, VecDeque<Batch>)>> {
        let start = match wal.check(&cursor).map_err(|e| Error::io("read WAL", e))? {
            Continuity::Same | Continuity::Empty => cursor,
            // A log that appeared since the proof, which was of the database file alone.
            Continuity::Restarted(h) if cursor.header.is_none() => cursor.restarted(h),
            Continuity::Restarted(_) | Continuity::Broken(_) => return Ok(None),
        };
        let tail = wal
            .read_tail(start, CARRIED_BATCH_BYTES, MAX_CARRY_BYTES)
            .map_err(|e| Error::io(format!("read {}", wal.path().display()), e))?;
        Ok(tail.map(|carry| (start, carry)))
    })();
    let pinned = db.pin();
    let released = db.release_write_lock();
    let r = read?;
    pinned?;
    released?;
    Ok(r)
}
