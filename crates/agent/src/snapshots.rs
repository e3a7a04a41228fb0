//! Snapshots: the one that starts a new generation, and the fresh ones taken on a schedule inside
//! the current generation (see `docs/design.md`, "Snapshots on a schedule").
//!
//! A snapshot is read through `sqlite_dbpage` within the pin's read transaction, so it is exactly
//! the pinned state, streamed into a compressed file in the staging folder, fsynced, then
//! uploaded. A scheduled one is uploaded only after the replica has shipped exactly up to the
//! pinned state and its rolling checksum equals the file's.

use std::time::{Duration, Instant};

use lifeboat_storage::keys::Key;
use lifeboat_storage::retry::{retry, RetryPolicy};
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::snapshot::{SnapshotHeader, SnapshotTrailer, SnapshotWriter};
use lifeboat_wal::{snapshot, Generation, TxId};
use tempfile::NamedTempFile;
use tracing::info;

use crate::checkpoints::caught_up;
use crate::clock::now_ms;
use crate::commit_times::CommitTimes;
use crate::context::Context;
use crate::db::Database;
use crate::replica::shipping::Ship;
use crate::replica::{Phase, Replica, ReplicaState};
use crate::walfile::{Cursor, WalFile};
use crate::{staging, Error, Result};

/// A snapshot written to the staging folder.
struct Staged {
    file: NamedTempFile,
    hashes: PageHashes,
    trailer: SnapshotTrailer,
}

/// Streams the pinned state into a compressed snapshot file in the staging folder, fsynced.
fn write_snapshot(
    db: &Database,
    ctx: &Context,
    generation: Generation,
    txid: TxId,
    time_ms: u64,
    cursor: &Cursor,
) -> Result<Staged> {
    let header = SnapshotHeader {
        version: snapshot::VERSION,
        generation,
        txid,
        page_size: db.page_size(),
        time_ms,
        wal: cursor.position(cursor),
    };
    let tmp = staging::stage(&ctx.opts.staging_dir)?;
    let file = tmp
        .reopen()
        .map_err(|e| Error::io("open snapshot temp file", e))?;
    let mut w = SnapshotWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), header)
        .map_err(|e| Error::io("write snapshot", e))?;
    // A large database takes a while: say how far the read is (a bar on a terminal, a log line
    // every few seconds), as the size of the file suggests (the WAL may add pages).
    let ps = u64::from(db.page_size());
    let total = std::fs::metadata(&ctx.path).map_or(0, |m| m.len() / ps);
    let (started, mut logged, mut done) = (Instant::now(), Instant::now(), 0u64);
    db.for_each_page(|p| {
        done += 1;
        if done % 4096 == 0 {
            if let Some(pr) = &ctx.opts.snapshot_progress {
                (pr.0)(done * ps, total.max(done) * ps);
            }
            if logged.elapsed() >= Duration::from_secs(5) {
                logged = Instant::now();
                info!(db = %ctx.path.display(), pages = done, of_about = total, elapsed_s = started.elapsed().as_secs(), "snapshot: reading the database");
            }
        }
        w.write_page(p)
    })?;
    if let Some(pr) = ctx.opts.snapshot_progress.as_ref().filter(|_| done >= 4096) {
        (pr.0)(done * ps, done * ps);
    }
    let (out, hashes, trailer) = w.finish().map_err(|e| Error::io("write snapshot", e))?;
    out.into_inner()
        .map_err(|e| Error::io("write snapshot", e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io("write snapshot", e))?;
    Ok(Staged {
        file: tmp,
        hashes,
        trailer,
    })
}

/// Uploads a staged snapshot under `key` (create-only, with retries: a few quick ones, one
/// after the replica failed already), given up if the WAL grows past `max-wal-bytes` meanwhile.
fn upload(ctx: &Context, r: &Replica, wal: &WalFile, key: &str, staged: &Staged) -> Result<()> {
    crate::lease::may_write(ctx)?;
    let client = r.client.clone();
    let policy = RetryPolicy {
        attempts: if r.failures == 0 { 3 } else { 1 },
        ..RetryPolicy::default()
    };
    crate::upload::bounded(ctx, wal, async {
        retry(policy, "snapshot upload", || {
            client.put_file(key, staged.file.path())
        })
        .await?;
        Ok(())
    })
}

/// Takes one snapshot of the pinned state and starts a new generation with it on every replica
/// that needs one and may be tried at `now`; returns objects written.
pub(crate) fn new_generations(
    db: &mut Database,
    replicas: &mut [Replica],
    ctx: &Context,
    now: Instant,
) -> u32 {
    let needs = |r: &Replica| matches!(r.phase, Phase::NeedsGeneration(_)) && r.ready(now);
    if !replicas.iter().any(needs) {
        return 0;
    }
    let started = Instant::now();
    let staged = (|| {
        let cursor = db.pin_snapshot()?;
        let generation = match &ctx.opts.lease {
            Some(f) => f.generation_after(now_ms(), rand::random()),
            None => Generation::new(now_ms(), rand::random()),
        };
        let time_ms = now_ms();
        let staged = write_snapshot(db, ctx, generation, TxId(0), time_ms, &cursor)?;
        Ok::<_, Error>((cursor, generation, time_ms, staged))
    })();
    let (cursor, generation, time_ms, staged) = match staged {
        Ok(s) => s,
        Err(e) => {
            for r in replicas.iter_mut().filter(|r| needs(r)) {
                r.record_failure(&e, "cannot start a new generation", ctx);
            }
            return 0;
        }
    };
    let key = Key::Snapshot {
        generation,
        txid: TxId(0),
        time_ms,
    }
    .to_string();
    let mut puts = 0;
    for r in replicas.iter_mut().filter(|r| needs(r)) {
        let Phase::NeedsGeneration(reason) = &r.phase else {
            continue;
        };
        let reason = reason.to_string();
        // A lease holder's generation is fenced with its epoch before it can be restored.
        if let Err(e) = crate::lease::write_fence(ctx, r.client.as_ref(), generation) {
            r.record_failure(&e, "fence upload failed", ctx);
            continue;
        }
        // The folders first, as with every shipment (see `shipping`).
        if let Some(d) = &ctx.dirs {
            if let Err(e) = d.flush(r.index, generation, TxId(0), true) {
                r.record_failure(&e.into(), "folder backup failed", ctx);
                continue;
            }
        }
        if let Err(e) = upload(ctx, r, db.wal(), &key, &staged) {
            r.record_failure(&e, "snapshot upload failed", ctx);
            continue;
        }
        puts += 1;
        info!(
            db = %ctx.path.display(),
            replica = %r.client.describe(),
            generation = %generation,
            pages = staged.trailer.page_count,
            bytes = staged.trailer.total_len,
            elapsed_ms = started.elapsed().as_millis() as u64,
            reason = %reason,
            "new generation: snapshot uploaded"
        );
        r.succeeded();
        r.phase = Phase::Active(ReplicaState {
            snapshot_bytes: staged.trailer.total_len,
            ..ReplicaState::new(generation, TxId(0), cursor, staged.hashes.clone(), time_ms)
        });
        ctx.status.snapshotted(r.index, started.elapsed());
    }
    puts
}

/// Whether a replica's generation is due a fresh snapshot. A pass stops shipping once it is
/// (see `Replica::ship`): under a writer that never lets the replica reach the end of the WAL, a
/// pass would otherwise go on shipping and the snapshot wait for a lull.
pub(crate) fn due(r: &Replica, ctx: &Context) -> bool {
    let Some(st) = r.state() else {
        return false;
    };
    if !r.healthy() || !st.carry.is_empty() || st.unsent.is_some() || st.since_snapshot == 0 {
        return false;
    }
    let o = r.overrides;
    let ratio = u64::from(ctx.opts.snapshot_ratio);
    (ratio > 0
        && st.since_snapshot >= crate::SNAPSHOT_RATIO_MIN_SEGMENTS
        && st.bytes_since_snapshot >= ratio.saturating_mul(st.snapshot_bytes))
        || st.since_snapshot >= o.snapshot_segments.unwrap_or(ctx.opts.snapshot_segments)
        || o.snapshot_interval
            .or(ctx.opts.snapshot_interval)
            .is_some_and(|d| now_ms().saturating_sub(st.snapshot_ms) >= d.as_millis() as u64)
}

/// Takes the snapshots that are due, within each replica's current generation: pins the
/// newest state, streams it to a file, ships the replica exactly up to that state (no
/// further), checks that the replica's rolling checksum equals the file's, and uploads it as
/// the snapshot after that transaction. Returns objects written.
pub(crate) fn scheduled(
    db: &mut Database,
    replicas: &mut [Replica],
    ctx: &Context,
    times: &CommitTimes,
) -> u32 {
    let due: Vec<usize> = (0..replicas.len())
        .filter(|&i| due(&replicas[i], ctx))
        .collect();
    if !due.is_empty() {
        db.refresh_pin_position();
    }
    let mut puts = 0;
    for i in due {
        // The pin may only move once every replica has shipped what it protects; each snapshot
        // moves it, so the next may only once every replica covers it again.
        if !caught_up(db, replicas) {
            break;
        }
        let r = &mut replicas[i];
        let res = scheduled_one(db, r, ctx, times);
        // Put off (the log holds nothing to pin): nothing was shipped, and the replica stays
        // where its pass left it. Marking it behind would keep an idle agent busy and make a
        // final sync wait out its timeout for a snapshot no commit will bring.
        if let Ok(None) = res {
            continue;
        }
        // Shipping stopped at the pinned state, which need not be the end of the WAL.
        if let Some(st) = r.state_mut() {
            st.at_end = false;
        }
        match res {
            Ok(n) => puts += n.unwrap_or(0),
            Err(e) => {
                r.record_failure(&e, "scheduled snapshot failed", ctx);
            }
        }
    }
    puts
}

/// One replica's scheduled snapshot: the objects written, or `None` if it was put off before
/// anything was shipped (the log held nothing to pin).
fn scheduled_one(
    db: &mut Database,
    r: &mut Replica,
    ctx: &Context,
    times: &CommitTimes,
) -> Result<Option<u32>> {
    let started = Instant::now();
    let pin = db.pin_snapshot()?;
    if pin.header.is_none() {
        // The log just restarted from a fully checkpointed state: nothing to pin. The snapshot
        // stays due, and is taken after the next commit.
        return Ok(None);
    }
    // Ship up to the pinned state and no further.
    let ship = Ship {
        ctx,
        wal: db.wal(),
        page_size: db.page_size(),
        db_file: db.file(),
        times,
        limit: Some(pin),
    };
    let mut puts = 0;
    loop {
        let Some(st) = r.state() else {
            return Ok(Some(puts));
        };
        if st.carry.is_empty() && st.cursor.salts() == pin.salts() && st.cursor.offset == pin.offset
        {
            break;
        }
        let shipped = r.ship_one(&ship)?;
        if shipped.txns == 0 {
            return Ok(Some(puts));
        }
        puts += shipped.puts;
    }
    let Some(st) = r.state() else {
        return Ok(Some(puts));
    };
    let (generation, txid, expect) = (st.generation, st.last_txid(), st.hashes.checksum());
    let time_ms = now_ms();
    let staged = write_snapshot(db, ctx, generation, txid, time_ms, &pin)?;
    if staged.hashes.checksum() != expect {
        return Err(Error::ChecksumMismatch {
            what: format!(
                "the pinned state of {} (the replica's state after txid {})",
                ctx.path.display(),
                txid.0
            ),
            expected: expect,
            found: staged.hashes.checksum(),
            consequence: "snapshot not uploaded",
        });
    }
    let key = Key::Snapshot {
        generation,
        txid,
        time_ms,
    }
    .to_string();
    upload(ctx, r, db.wal(), &key, &staged)?;
    if let Some(st) = r.state_mut() {
        st.since_snapshot = 0;
        st.snapshot_ms = time_ms;
        st.snapshot_bytes = staged.trailer.total_len;
        st.bytes_since_snapshot = 0;
    }
    ctx.status.snapshotted(r.index, started.elapsed());
    info!(
        db = %ctx.path.display(),
        replica = %r.client.describe(),
        generation = %generation,
        txid = txid.0,
        pages = staged.trailer.page_count,
        bytes = staged.trailer.total_len,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scheduled snapshot uploaded"
    );
    Ok(Some(puts + 1))
}
