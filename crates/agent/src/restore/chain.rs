//! Applying the chain of segments after the snapshot, in two stages on two threads.
//!
//! The *rebuilding* stage (the caller's thread) takes the segments in order, rebuilds the pages
//! of each format-2 segment's frames against the state before it, and keeps each page's newest
//! version for the file ([`Pages`]). The *verifying* stage (a thread of its own) completes the
//! frames and proves them (SQLite's checksum chain to the end the agent read from the live WAL),
//! then applies every commit to the per-page hashes and checks the database checksum the
//! segment recorded after it, while the first stage rebuilds the next segment. Both stop at the same commit (the
//! target's, found by [`txns_to_apply`]). The rebuilding stage trusts a segment's commit records
//! for the state it reads base pages at; the verifying stage checks them, and its error (the
//! first in the chain's order) is the one reported. The file, once written, is hashed again.

use std::collections::HashMap;
use std::sync::mpsc;

use lifeboat_wal::any_segment::{AnySegment, Unchained};
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::segment::{CommitRecord, Segment};
use lifeboat_wal::{DbChecksum, Generation, TxId};

use super::copies::Copies;
use super::output::{Output, Pages};
use super::plan::Target;
use crate::catalog;
use crate::{Error, Result};

/// Bytes of pages held in memory before they are written to the file: a page reaches the file
/// once, unless more pages than this change between two writes.
const HELD_PAGES: usize = 32 << 20;

/// A downloaded segment: its frames, or a format-2 segment that needs the restored state.
pub(super) enum Ready {
    Built(Segment),
    NeedsBases(AnySegment),
}

/// Where the restore stands: after which transaction, and the database then.
#[derive(Clone, Debug)]
pub(super) struct State {
    pub generation: Generation,
    pub txid: TxId,
    pub time_ms: u64,
    pub db_size: u32,
    pub checksum: DbChecksum,
    pub page_size: u32,
}

impl State {
    /// The state after commit `c`.
    fn advance(&mut self, c: &CommitRecord) {
        self.txid = c.txid;
        self.time_ms = c.time_ms;
        self.db_size = c.db_size;
        self.checksum = c.checksum;
    }
}

/// What applying the chain left: the file (every page written), its hashes and verified state,
/// the segments applied, and whether the target was reached.
pub(super) struct Applied {
    pub out: Output,
    pub hashes: PageHashes,
    pub state: State,
    pub objects: usize,
    pub bytes: u64,
    pub reached: bool,
}

/// Applies the segments `rx` delivers, in order, to the restore at `state` (the snapshot's) in
/// `out`, until `target` or the end. `copies` checks redundant copies against the chain.
pub(super) fn apply(
    mut rx: tokio::sync::mpsc::Receiver<(catalog::Segment, Ready)>,
    out: Output,
    hashes: PageHashes,
    state: State,
    mut copies: Copies,
    target: Target,
) -> Result<Applied> {
    // A rendezvous: one segment being rebuilt, one being verified (a segment's frames can be
    // 64 MiB).
    let (to_verify, verify_rx) = mpsc::sync_channel::<(catalog::Segment, Unchained)>(0);
    let (give_back, buffers) = mpsc::channel::<Vec<u8>>();
    let mut pages = Pages::new(state.db_size);
    let mut at = state.clone();
    let (mut objects, mut bytes) = (0, 0);
    std::thread::scope(|s| {
        let verifier = s.spawn(move || verify(verify_rx, give_back, hashes, state, target));
        let rebuilt = (|| -> Result<()> {
            while let Some((o, seg)) = rx.blocking_recv() {
                let seg = match seg {
                    Ready::Built(s) => {
                        copies.check_and_keep(&o.key, &s.header, &s.commits, Some(&s.frames))?;
                        Unchained::verified(s)
                    }
                    Ready::NeedsBases(any) => {
                        copies.check_and_keep(&o.key, &any.header, &any.commits, None)?;
                        // The verifying stage hands back the frames it is done with: two
                        // segments' frames are alive at once, not one per segment.
                        let buffer = buffers.try_iter().last().unwrap_or_default();
                        rebuild_on(&out, &pages, &at, &o, any, buffer)?
                    }
                };
                objects += 1;
                bytes += o.size;
                let reached = keep_pages(&mut pages, &mut at, &seg, target);
                if pages.held() > HELD_PAGES {
                    out.flush(&mut pages)?;
                }
                // Closed: the verifying stage failed; its error is reported below.
                if to_verify.send((o, seg)).is_err() || reached {
                    break;
                }
            }
            Ok(())
        })();
        drop(to_verify);
        let verified = verifier
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let (hashes, state, reached) = verified?;
        rebuilt?;
        out.flush(&mut pages)?;
        Ok(Applied {
            out,
            hashes,
            state,
            objects,
            bytes,
            reached,
        })
    })
}

/// The verifying stage: every commit applied to the hashes and its checksum checked; hands
/// each segment's frame buffer back for reuse. Returns the hashes, the state reached, and
/// whether it is the target.
fn verify(
    rx: mpsc::Receiver<(catalog::Segment, Unchained)>,
    give_back: mpsc::Sender<Vec<u8>>,
    mut hashes: PageHashes,
    mut state: State,
    target: Target,
) -> Result<(PageHashes, State, bool)> {
    for (o, seg) in rx {
        let seg = seg.chain().map_err(|e| Error::Corrupt {
            key: o.key.clone(),
            cause: e,
        })?;
        let reached = apply_segment(&mut hashes, &mut state, &o, &seg, target)?;
        let _ = give_back.send(seg.frames);
        if reached {
            return Ok((hashes, state, true));
        }
    }
    Ok((hashes, state, false))
}

/// Rebuilds a format-2 segment's frames from the pages of the database restored so far, which
/// must be exactly the state before the segment (its checksum is the segment's starting one).
fn rebuild_on(
    out: &Output,
    pages: &Pages,
    state: &State,
    o: &catalog::Segment,
    any: AnySegment,
    buffer: Vec<u8>,
) -> Result<Unchained> {
    let h = &any.header;
    if h.first_txid != state.txid.next() || h.checksum_before != state.checksum {
        return Err(Error::ObjectMismatch {
            key: o.key.clone(),
            problem: format!(
                "its pages are deltas against the database at txid {} (checksum {}), but the \
                 restore is at txid {} (checksum {}); restore from another snapshot",
                TxId(h.first_txid.0.saturating_sub(1)),
                h.checksum_before,
                state.txid,
                state.checksum
            ),
        });
    }
    any.rebuild_into(
        &mut |pgno, page| {
            out.base(pages, pgno, page)
                .map_err(|e| lifeboat_wal::Error::Corrupt {
                    offset: 0,
                    reason: format!("cannot read base page {pgno}: {e}"),
                })
        },
        buffer,
    )
    .map_err(|e| Error::Corrupt {
        key: o.key.clone(),
        cause: e,
    })
}

/// How many of a segment's transactions before the restore's state `txid` it holds (a segment
/// may start before it), and how many after them to apply for `target`, and whether the last
/// of those reaches it.
fn txns_to_apply(
    first: TxId,
    commits: &[CommitRecord],
    txid: TxId,
    target: Target,
) -> (usize, usize, bool) {
    let skip = txid.0.saturating_sub(first.0 - 1) as usize;
    let mut n = 0;
    for c in commits.iter().skip(skip) {
        match target {
            Target::Time(t) if c.time_ms > t => return (skip, n, true),
            Target::TxId(t) if c.txid >= t => return (skip, n + 1, true),
            _ => n += 1,
        }
    }
    (skip, n, false)
}

/// The rebuilding stage's part: each page's newest version up to the target into `pages`, and
/// `at` moved to the last commit applied (as the segment records it). Whether the target is
/// reached. A page written several times in the segment is copied once, in its last version.
fn keep_pages(pages: &mut Pages, at: &mut State, seg: &Unchained, target: Target) -> bool {
    let (skip, n, reached) = txns_to_apply(seg.header().first_txid, seg.commits(), at.txid, target);
    let mut last: HashMap<u32, &[u8]> = HashMap::new();
    let mut high = 0;
    for (c, frames) in seg.txns_unproven().skip(skip).take(n) {
        for (pgno, page) in frames.pages() {
            last.insert(pgno, page);
            high = high.max(pgno);
        }
        // Pages past the size after the commit are gone, in either place.
        if high > c.db_size {
            last.retain(|&p, _| p <= c.db_size);
            high = c.db_size;
        }
        pages.commit(c.db_size);
        at.advance(c);
    }
    for (pgno, page) in last {
        pages.page(pgno, page);
    }
    reached
}

/// The verifying stage's part for one segment: its header against the chain, then each commit
/// up to the target applied to the hashes and checked. Whether the target is reached.
fn apply_segment(
    hashes: &mut PageHashes,
    state: &mut State,
    o: &catalog::Segment,
    seg: &Segment,
    target: Target,
) -> Result<bool> {
    let h = &seg.header;
    let bad = |problem: String| Error::ObjectMismatch {
        key: o.key.clone(),
        problem,
    };
    if h.generation != state.generation {
        return Err(bad(format!("belongs to generation {}", h.generation)));
    }
    if h.page_size != state.page_size {
        return Err(bad(format!(
            "page size {} differs from the snapshot's",
            h.page_size
        )));
    }
    if o.first != h.first_txid || o.last != h.last_txid {
        return Err(bad("header disagrees with its key".into()));
    }
    if h.first_txid.0 > state.txid.0 + 1 {
        return Err(bad(format!(
            "starts at txid {}, but the restore is at txid {}",
            h.first_txid, state.txid
        )));
    }
    let (skip, n, reached) = txns_to_apply(h.first_txid, &seg.commits, state.txid, target);
    if skip == 0 && h.checksum_before != state.checksum {
        return Err(bad(format!(
            "expects database checksum {} before it, the restore has {}",
            h.checksum_before, state.checksum
        )));
    }
    // A segment starting before the restore's state must hold that state too.
    if let Some(c) = seg.commits.get(skip.wrapping_sub(1)) {
        if c.txid != state.txid || c.checksum != state.checksum {
            return Err(bad(format!(
                "records database checksum {} after txid {}, the restore has {} there",
                c.checksum, c.txid, state.checksum
            )));
        }
    }
    for (c, frames) in seg.txns().skip(skip).take(n) {
        frames.apply(hashes, c.db_size);
        if hashes.checksum() != c.checksum {
            return Err(bad(format!(
                "after txid {} the database checksum is {}, the segment recorded {}",
                c.txid,
                hashes.checksum(),
                c.checksum
            )));
        }
        state.advance(c);
    }
    Ok(reached)
}
