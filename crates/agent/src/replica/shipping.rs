//! Shipping to one replica: read the next whole transactions from its place in the WAL (or from
//! what it carries over a WAL restart), build a segment with the database checksum after every
//! commit, upload it, and move the replica on only once the upload succeeded.
//!
//! Per-replica work lives on the replica (as Litestream keeps `Replica.Sync` in `replica.go`);
//! the replicator decides when each replica ships.

use std::cell::RefCell;
use std::fs::File;
use std::time::Duration;

use bytes::Bytes;
use lifeboat_storage::keys::Key;
use lifeboat_storage::retry::{retry, RetryPolicy};
use lifeboat_storage::{PutOutcome, ReplicaClient};
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::segment2::SegmentEncoder;
use lifeboat_wal::transaction::TxnFrames;
use lifeboat_wal::TxId;
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::commit_times::CommitTimes;
use crate::context::Context;
use crate::replica::packing::{self, Packed};
use crate::replica::{Phase, Reason, Replica, ReplicaState};
use crate::walfile::{Continuity, Cursor, Txn, WalFile};
use crate::{Error, Result};

/// What shipping needs besides the replica.
pub(crate) struct Ship<'a> {
    pub ctx: &'a Context,
    pub wal: &'a WalFile,
    pub page_size: u32,
    /// The database file, where a page's base may be read when the WAL no longer has it.
    pub db_file: &'a File,
    pub times: &'a CommitTimes,
    /// Ship no transaction past this position (while a scheduled snapshot is lined up).
    pub limit: Option<Cursor>,
}

/// What one upload shipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shipped {
    /// Objects written.
    pub puts: u32,
    /// Transactions in them.
    pub txns: u64,
    /// The batch was cut at the segment size limit: more is waiting.
    pub full: bool,
    /// Of `puts`, segments cut at the size bound (not carried batches): holding them back
    /// would coalesce nothing, so they do not draw on the PUT budget (see `scheduler`).
    pub at_bound: u32,
}

impl Replica {
    /// Ships what is new: one segment, or more while a backlog fills whole segments (catching
    /// up after an outage or a restart), so the PUT budget paces uploads. Returns what was
    /// shipped, and the failure that stopped it, if one did.
    pub(crate) fn ship(&mut self, ship: &Ship) -> (Shipped, Option<Error>) {
        let mut done = Shipped::default();
        loop {
            match self.ship_one(ship) {
                Ok(Shipped { txns: 0, .. }) => return (done, None),
                Ok(s) => {
                    done.puts += s.puts;
                    done.txns += s.txns;
                    done.at_bound += s.at_bound;
                    if !s.full || crate::snapshots::due(self, ship.ctx) {
                        return (done, None);
                    }
                }
                Err(e) => return (done, Some(e)),
            }
        }
    }

    /// Ships the next batch: at most one segment. After a failed upload, the next call sends
    /// that same segment again (see [`Unsent`]).
    pub(crate) fn ship_one(&mut self, ship: &Ship) -> Result<Shipped> {
        let ctx = ship.ctx;
        let client = self.client.clone();
        let Phase::Active(st) = &mut self.phase else {
            return Ok(Shipped::default());
        };
        let unsent = match st.unsent.take() {
            Some(u) => u,
            None => match cut(st, ship, self.index)? {
                Cut::Segment(u) => u,
                Cut::Nothing => return Ok(Shipped::default()),
                Cut::LostContinuity(reason) => {
                    warn!(db = %ctx.path.display(), reason = %reason, "lost WAL continuity; a new generation will start");
                    self.lose_continuity(Reason::WalBroken(reason));
                    return Ok(Shipped::default());
                }
            },
        };
        // After a failure, one attempt a pass: the replica's backoff paces the rest.
        let attempts = if self.failures == 0 { 3 } else { 1 };
        let put = put_with_retry(client.as_ref(), &unsent.key, unsent.body.clone(), attempts);
        // A writer that lost its lease must not extend the history (see `lease`).
        let sent =
            crate::lease::may_write(ctx).and_then(|()| crate::upload::bounded(ctx, ship.wal, put));
        if let Err(e) = sent {
            // The object may have landed: only this key with these bytes may hold its
            // transactions, so it is what the next attempt sends. The replica's own hashes go
            // back to its last stored state; the unsent segment keeps its own.
            let mut unsent = unsent;
            if unsent.hashes.is_none() {
                let mut after = st.hashes.clone();
                after.commit();
                unsent.hashes = Some(after);
                st.hashes.rollback();
            }
            st.unsent = Some(unsent);
            return Err(e);
        }
        let u = *unsent;
        let pack = st.packer.stored(
            st.generation,
            &u.key,
            &u.body,
            (st.next_txid, u.last, u.time_ms),
            ctx.opts.pack_segments,
        );
        match u.hashes {
            Some(h) => st.hashes = h,
            None => st.hashes.commit(),
        }
        st.bases.shipped(u.pending);
        if u.carried {
            st.carry.pop_front();
        }
        st.cursor = u.end;
        st.next_txid = u.next_txid;
        st.at_end = false;
        st.since_snapshot += 1;
        st.bytes_since_snapshot += u.body.len() as u64;
        self.succeeded();
        let (n, bytes) = (u.txns, u.body.len());
        ctx.status
            .shipped(self.index, n, bytes as u64, u.time_ms, u.last);
        debug!(key = %u.key, txns = n, bytes, bases = u.found.used, base_misses = u.found.missed, read_back = u.found.read_back, "segment uploaded");
        let packed = pack.map(|p| packing::upload(ctx, ship.wal, client.as_ref(), p));
        if packed == Some(Packed::DeletesRefused) {
            if let Phase::Active(st) = &mut self.phase {
                st.packer.stop();
            }
        }
        Ok(Shipped {
            puts: 1 + u32::from(packed.is_some_and(|p| p != Packed::Failed)),
            txns: n,
            full: u.full,
            at_bound: u32::from(u.full && !u.carried),
        })
    }
}

/// A segment cut from the WAL and not known to be stored: its key and bytes, and the
/// replica's state once it is. An upload that failed may have landed all the same (a timeout
/// after the server acted, a reset after the body was sent), so until one attempt succeeds
/// this is the only object that may hold its transactions: a retry sends exactly it again,
/// and create-only writes make that safe (same bytes: success; other bytes: a real conflict).
#[derive(Clone, Debug)]
pub(crate) struct Unsent {
    key: String,
    body: Bytes,
    /// Page hashes after its last transaction, once an attempt failed (before that, the
    /// replica's own hashes hold them, journaled, so a segment costs no copy).
    hashes: Option<PageHashes>,
    end: Cursor,
    next_txid: TxId,
    /// It ships the replica's first carried batch.
    carried: bool,
    full: bool,
    txns: u64,
    last: TxId,
    time_ms: u64,
    /// Its frames, for the replica's base index once it is stored.
    pending: crate::bases::Pending,
    found: crate::bases::Found,
}

enum Cut {
    Segment(Box<Unsent>),
    Nothing,
    LostContinuity(String),
}

/// Cuts the next segment from the replica's place (or its first carried batch), leaving the
/// replica's own state as it was. The segment is encoded as the transactions are read, so
/// memory holds each page's latest version and the deltas, not the batch's frames.
fn cut(st: &mut ReplicaState, ship: &Ship, index: usize) -> Result<Cut> {
    let ctx = ship.ctx;
    let carried = !st.carry.is_empty();
    if !carried {
        match ship
            .wal
            .check(&st.cursor)
            .map_err(|e| Error::io("read WAL", e))?
        {
            Continuity::Same => {}
            Continuity::Empty => {
                st.at_end = true;
                return Ok(Cut::Nothing);
            }
            Continuity::Restarted(h) => {
                debug!(
                    salt1 = h.salt1,
                    checkpoint_seq = h.checkpoint_seq,
                    "WAL restarted"
                );
                st.cursor = st.cursor.restarted(h);
            }
            Continuity::Broken(reason) => return Ok(Cut::LostContinuity(reason)),
        }
    }
    let ReplicaState {
        hashes,
        bases,
        cursor,
        carry,
        ..
    } = st;
    let ps = hashes.page_size();
    // Read before the batch is applied to the hashes, which vouch for each base.
    let mut finder = bases.finder(cursor, carried, ps, ship.wal, ship.db_file);
    hashes.begin();
    let mut enc = SegmentEncoder::new(st.generation, st.next_txid, ship.page_size, hashes);
    // Pages' latest versions are read back from the WAL past an eighth of the segment's memory,
    // so that the segment is bounded by the bytes its commits changed, not the pages they touched.
    if finder.reads_back() {
        enc.hold_at_most(ctx.opts.max_segment_memory / 8);
    }
    let (now, mut last_time, mut n) = (now_ms(), 0u64, 0u64);
    let salts = carry.front().map_or(cursor.salts(), |b| b.end.salts());
    let mut failed = None;
    let mut add = |t: &Txn| {
        let time = ship
            .times
            .next_time(&mut last_time, salts, t.end_offset, now);
        let frames = TxnFrames {
            frames: &t.frames,
            count: t.frame_count,
            commit_size: t.commit_size,
            time_ms: time,
        };
        let pushed = {
            let f = RefCell::new(&mut finder);
            enc.push(
                hashes,
                frames,
                &mut |p, h| f.borrow_mut().base(p, h),
                &mut |p, _| f.borrow_mut().latest(p),
            )
        };
        if let Err(e) = pushed {
            failed = Some(e);
            return false;
        }
        // After the push: the encoder reads a page's frames before this transaction's back.
        finder.saw(t);
        n += 1;
        // Whether the segment may take another transaction.
        enc.held() < ctx.opts.max_segment_memory
    };
    let read = match carry.front() {
        // Read under the write lock before the WAL restarted; it starts at the cursor.
        Some(b) => {
            for t in &b.txns {
                add(t);
            }
            Ok((b.end, b.bytes))
        }
        None => {
            let until = ship
                .limit
                .filter(|p| p.salts().is_some() && p.salts() == cursor.salts())
                .map_or(u64::MAX, |p| p.offset);
            let max = ctx.opts.max_segment_bytes;
            ship.wal
                .read_txns(cursor, max, until, &mut |t| add(&t))
                .map_err(|e| Error::io(format!("read {}", ship.wal.path().display()), e))
        }
    };
    let (pending, found) = finder.finish();
    if let Some(e) = failed {
        // The WAL changed under the pin: nothing of the batch is used; the next pass starts
        // again from the replica's place.
        st.hashes.rollback();
        return Err(Error::io(
            format!("read {}", ship.wal.path().display()),
            std::io::Error::other(e.to_string()),
        ));
    }
    let (end, bytes) = match read {
        Ok(r) if n > 0 => r,
        r => {
            st.hashes.rollback();
            let r = r.map(|_| Cut::Nothing);
            st.at_end |= r.is_ok();
            return r;
        }
    };
    // Something is waiting: the replica is behind until it is stored.
    st.at_end = false;
    let full =
        carried || bytes >= ctx.opts.max_segment_bytes || enc.held() >= ctx.opts.max_segment_memory;
    let next_txid = enc.next_txid();
    let Some((header, body)) = enc.finish(end.position(&st.cursor)) else {
        st.hashes.rollback();
        return Ok(Cut::Nothing);
    };
    let last = header.last_txid;
    let time_ms = header.last_time_ms;
    // The folders first: a file written before these commits must be stored before them.
    if let Some(d) = &ctx.dirs {
        let complete = !full && ship.limit.is_none();
        if let Err(e) = d.flush(index, st.generation, last, complete) {
            st.hashes.rollback();
            return Err(e.into());
        }
    }
    let key = Key::Segment {
        generation: st.generation,
        first: st.next_txid,
        last,
        time_ms,
    }
    .to_string();
    let body = Bytes::from(body);
    Ok(Cut::Segment(Box::new(Unsent {
        key,
        body,
        hashes: None,
        end,
        next_txid,
        carried,
        full,
        txns: n,
        last,
        time_ms,
        pending,
        found,
    })))
}

/// A segment upload: a few quick attempts (the pass after retries with the replica's backoff).
async fn put_with_retry(
    client: &dyn ReplicaClient,
    key: &str,
    body: Bytes,
    attempts: u32,
) -> std::result::Result<PutOutcome, Error> {
    let policy = RetryPolicy {
        attempts,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    Ok(retry(policy, "segment upload", || client.put(key, body.clone())).await?)
}
