//! Applying the chain of segments after the snapshot, in two stages on two threads.
//!
//! The *applying* stage (the caller's thread) takes the segments in order. A format-2 segment's
//! page deltas are applied in place to each page it changes, loaded once from the state before
//! it, and SQLite's checksum chain over its frames is proven from each page's changed bytes
//! ([`AnySegment::patch`]): no frame is written out. Each page's last version up to the target is
//! kept for the file ([`Pages`]), and hashed. A format-1 segment's frames were verified when it
//! was downloaded. The *verifying* stage (a thread of its own) checks each segment's header
//! against the state the restore reached, then applies its commits to the per-page hashes and
//! checks the database checksum the segment recorded: after every commit of format-1 frames (and
//! with [`super::RestoreOptions::every_commit`], for which every page version is hashed), after
//! the last commit applied of a patched segment (whose every frame the checksum chain proves),
//! while the first stage applies the next segment. Both stop at the same
//! commit (the target's, found by [`txns_to_apply`]). The applying stage trusts a segment's commit
//! records for the state it reads base pages at; the verifying stage checks them, and its error
//! (the first in the chain's order) is the one reported. The file, once written, is hashed again.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};

use lifeboat_wal::any_segment::{AnySegment, Unchained};
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::segment::{CommitRecord, Segment, SegmentHeader};
use lifeboat_wal::segment2::Patching;
use lifeboat_wal::{DbChecksum, Generation, TxId};

use super::copies::Copies;
use super::output::{Output, Pages};
use super::plan::Target;
use crate::catalog;
use crate::{Error, Result};

/// Bytes of pages held in memory before they are written to the file: a page reaches the file
/// once, unless more pages than this change between two writes.
const HELD_PAGES: usize = 32 << 20;

/// Segments of fewer frames than this are patched on one thread.
const SPLIT_FRAMES: u32 = 256;

/// A downloaded segment: its frames, verified, or a format-2 segment's page deltas.
pub(super) enum Ready {
    Built(Segment),
    Deltas(AnySegment),
}

/// What the applying stage hands the verifying stage for one segment.
enum Applying {
    /// Frames still to chain and prove, and to apply commit by commit.
    Frames(Unchained),
    /// A format-2 segment applied in place, its chain proven.
    Patched(Patched),
}

/// A format-2 segment applied in place: its header and commits, how many were applied, and the
/// page hashes to apply.
struct Patched {
    header: SegmentHeader,
    commits: Vec<CommitRecord>,
    applied: usize,
    hashes: PatchedHashes,
}

/// The page hashes of a segment applied in place.
enum PatchedHashes {
    /// Each frame's page number and page hash, in WAL order: every commit's checksum is checked.
    Frames(Vec<(u32, u64)>),
    /// Each page's last version's, among those the applied commits leave: the checksum after
    /// the last of them is checked.
    Last(Vec<(u32, u64)>),
}

/// How the chain is applied: up to which state, checking which commits' database checksums
/// (see [`super::RestoreOptions::every_commit`]), and where the decompression buffers of the
/// segments applied go back to.
pub(super) struct How {
    pub target: Target,
    pub every_commit: bool,
    pub raws: Raws,
}

/// The most bytes of decompression buffers [`Raws`] keeps.
const RAW_BYTES: usize = 64 << 20;

/// Decompression buffers of segments applied, for the next downloads to decompress into:
/// new memory costs a page fault every 4 KiB, and each segment's body is megabytes.
#[derive(Clone, Default)]
pub(super) struct Raws(Arc<Mutex<Vec<Vec<u8>>>>);

impl Raws {
    /// A buffer: a recycled one (of any size, holding old bytes), or an empty one.
    pub(super) fn take(&self) -> Vec<u8> {
        let mut raws = self.0.lock().unwrap_or_else(|p| p.into_inner());
        raws.pop().unwrap_or_default()
    }

    fn give(&self, buffer: Vec<u8>) {
        let mut raws = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let held: usize = raws.iter().map(Vec::capacity).sum();
        if held + buffer.capacity() <= RAW_BYTES {
            raws.push(buffer);
        }
    }
}

/// The base of a page of a segment checked to have no base pages.
pub(super) fn no_base(pgno: u32, _: &mut [u8]) -> lifeboat_wal::Result<()> {
    Err(lifeboat_wal::Error::from(std::io::Error::other(format!(
        "page {pgno} has no base"
    ))))
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

/// Applies the segments `rx` delivers (a pack's parts one by one), in order, to the restore at `state` (the snapshot's) in
/// `out`, until `target` or the end. `copies` checks redundant copies against the chain.
pub(super) fn apply(
    mut rx: tokio::sync::mpsc::Receiver<(catalog::Segment, Ready, u64)>,
    out: Output,
    hashes: PageHashes,
    state: State,
    mut copies: Copies,
    how: How,
) -> Result<Applied> {
    let target = how.target;
    // A rendezvous: one segment being rebuilt, one being verified (a segment's frames can be
    // 64 MiB).
    let (to_verify, verify_rx) = mpsc::sync_channel::<(catalog::Segment, Applying)>(0);
    let (give_back, buffers) = mpsc::channel::<Vec<u8>>();
    let mut pages = Pages::new(state.db_size);
    let mut at = state.clone();
    let (mut objects, mut bytes) = (0, 0);
    std::thread::scope(|s| {
        let verifier = s.spawn(move || verify(verify_rx, give_back, hashes, state, target));
        let rebuilt = (|| -> Result<()> {
            // The third value: the size of the object the segment starts (0 for a pack's
            // later parts), for the report's counts.
            while let Some((o, seg, object)) = rx.blocking_recv() {
                objects += usize::from(object > 0);
                bytes += object;
                // Wholly behind the restore's state: a pack's part where the chain came to the
                // pack through a copy reaching further (the plan never holds such a segment
                // otherwise). Compared with what was applied, not applied again.
                let (h, commits) = match &seg {
                    Ready::Built(s) => (&s.header, &s.commits),
                    Ready::Deltas(any) => (&any.header, &any.commits),
                };
                if h.last_txid <= at.txid {
                    copies.check_and_keep(&o.key, h, commits, None)?;
                    continue;
                }
                let (seg, reached) = match seg {
                    Ready::Built(s) => {
                        copies.check_and_keep(&o.key, &s.header, &s.commits, Some(&s.frames))?;
                        frames(&mut pages, &mut at, Unchained::verified(s), target)
                    }
                    Ready::Deltas(any)
                        if any.header.first_txid != at.txid.next()
                            && any.base_pages().is_empty() =>
                    {
                        // Starts before the restore's state, which it does not need: its frames
                        // are rebuilt whole, and applied as stored frames are.
                        copies.check_and_keep(&o.key, &any.header, &any.commits, None)?;
                        let buffer = buffers.try_iter().last().unwrap_or_default();
                        let seg =
                            any.rebuild_into(&mut no_base, buffer)
                                .map_err(|e| Error::Corrupt {
                                    key: o.key.clone(),
                                    cause: e,
                                })?;
                        frames(&mut pages, &mut at, seg, target)
                    }
                    Ready::Deltas(any) => {
                        copies.check_and_keep(&o.key, &any.header, &any.commits, None)?;
                        let (p, reached) = patch_on(&out, &mut pages, &mut at, &o, any, &how)?;
                        (Applying::Patched(p), reached)
                    }
                };
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

/// The verifying stage: each segment's header checked, its commits applied to the hashes and
/// the database checksum checked; hands each segment's frame buffer back for reuse. Returns the
/// hashes, the state reached, and whether it is the target.
fn verify(
    rx: mpsc::Receiver<(catalog::Segment, Applying)>,
    give_back: mpsc::Sender<Vec<u8>>,
    mut hashes: PageHashes,
    mut state: State,
    target: Target,
) -> Result<(PageHashes, State, bool)> {
    for (o, seg) in rx {
        let reached = match seg {
            Applying::Frames(seg) => {
                let seg = seg.chain().map_err(|e| Error::Corrupt {
                    key: o.key.clone(),
                    cause: e,
                })?;
                let reached = apply_segment(&mut hashes, &mut state, &o, &seg, target)?;
                let _ = give_back.send(seg.frames);
                reached
            }
            Applying::Patched(p) => apply_patched(&mut hashes, &mut state, &o, &p, target)?,
        };
        if reached {
            return Ok((hashes, state, true));
        }
    }
    Ok((hashes, state, false))
}

/// Applies a format-2 segment's page deltas to the restore at `at` (base pages read through
/// `out` and `pages`), proving SQLite's checksum chain over all its frames, and keeps each
/// page's last version up to the target in `pages`; `at` moves to the last commit applied. What
/// the verifying stage needs, and whether the target is reached.
fn patch_on(
    out: &Output,
    pages: &mut Pages,
    at: &mut State,
    o: &catalog::Segment,
    any: AnySegment,
    how: &How,
) -> Result<(Patched, bool)> {
    let (target, every_commit) = (how.target, how.every_commit);
    let h = &any.header;
    if h.first_txid != at.txid.next() || h.checksum_before != at.checksum {
        return Err(Error::ObjectMismatch {
            key: o.key.clone(),
            problem: format!(
                "its pages are deltas against the database at txid {} (checksum {}), but the \
                 restore is at txid {} (checksum {}); restore from another snapshot",
                TxId(h.first_txid.0.saturating_sub(1)),
                h.checksum_before,
                at.txid,
                at.checksum
            ),
        });
    }
    let (_, n, reached) = txns_to_apply(h.first_txid, &any.commits, at.txid, target);
    let applied = &any.commits[..n];
    // A page a commit writes is gone if that commit or a later one leaves the database smaller:
    // `low_from[c]` is the smallest size from commit `c` on.
    let mut low_from = vec![u32::MAX; n + 1];
    for c in (0..n).rev() {
        low_from[c] = low_from[c + 1].min(applied[c].db_size);
    }
    let low = low_from[0];
    let ends: Vec<usize> = applied
        .iter()
        .scan(0, |end, c| {
            *end += c.frames as usize;
            Some(*end)
        })
        .collect();
    // A large segment's pages are split between threads; a small one's cost less than a thread.
    let parts = if any.header.frame_count < SPLIT_FRAMES {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    };
    let ps = h.page_size as usize;
    let kept = ends.last().copied().unwrap_or(0);
    // Every page the segment writes is then replaced by its last version, or dropped by the
    // commit that cuts it off: a held base page can be swapped out rather than copied.
    let take = kept == h.frame_count as usize;
    let spare = Mutex::new(pages.take_spare());
    // Base pages are all read before any kept page is added: no read sees a kept page.
    let held = Mutex::new(&mut *pages);
    let base = |pgno, page: &mut Vec<u8>| {
        out.base(&held, pgno, page, take)
            .map_err(|e| lifeboat_wal::Error::Corrupt {
                offset: 0,
                reason: format!("cannot read base page {pgno}: {e}"),
            })
    };
    let buffer = || {
        let recycled = spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        recycled.unwrap_or_else(|| vec![0; ps])
    };
    let patching = Patching {
        parts,
        every_version: every_commit,
        base: &base,
        buffer: &buffer,
    };
    let patch = any.patch(kept, &patching).map_err(|e| Error::Corrupt {
        key: o.key.clone(),
        cause: e,
    })?;
    let pages = held.into_inner().unwrap_or_else(|p| p.into_inner());
    pages.give_spare(spare.into_inner().unwrap_or_else(|p| p.into_inner()));
    let mut above = Vec::new();
    let mut last = Vec::new();
    for k in patch.pages {
        if k.pgno > low_from[ends.partition_point(|&e| e <= k.frame)] {
            continue;
        }
        last.push((k.pgno, k.hash));
        // A page past the segment's smallest size is added after its commits are, which drop
        // the pages there.
        if k.pgno <= low {
            pages.put(k.pgno, k.page, k.weight);
        } else {
            above.push(k);
        }
    }
    for c in applied {
        pages.commit(c.db_size);
        at.advance(c);
    }
    for k in above {
        pages.put(k.pgno, k.page, k.weight);
    }
    let hashes = if every_commit {
        PatchedHashes::Frames(patch.hashes)
    } else {
        PatchedHashes::Last(last)
    };
    let (header, commits, raw) = any.into_parts();
    how.raws.give(raw);
    Ok((
        Patched {
            header,
            commits,
            applied: n,
            hashes,
        },
        reached,
    ))
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

/// The applying stage's part for a segment's frames: each page's newest version up to the
/// target into `pages`, and `at` moved to the last commit applied (as the segment records it).
/// The frames for the verifying stage, and whether the target is reached. A page written several
/// times in the segment is copied once, in its last version.
fn frames(pages: &mut Pages, at: &mut State, seg: Unchained, target: Target) -> (Applying, bool) {
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
    (Applying::Frames(seg), reached)
}

/// The verifying stage's checks of a segment's header and commits against the restore's state:
/// generation, page size, key, where it starts and the checksum there. How many transactions to
/// skip and apply for `target`, and whether the last of those reaches it.
fn check_start(
    state: &State,
    o: &catalog::Segment,
    h: &SegmentHeader,
    commits: &[CommitRecord],
    target: Target,
) -> Result<(usize, usize, bool)> {
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
    let (skip, n, reached) = txns_to_apply(h.first_txid, commits, state.txid, target);
    if skip == 0 && h.checksum_before != state.checksum {
        return Err(bad(format!(
            "expects database checksum {} before it, the restore has {}",
            h.checksum_before, state.checksum
        )));
    }
    // A segment starting before the restore's state must hold that state too.
    if let Some(c) = commits.get(skip.wrapping_sub(1)) {
        if c.txid != state.txid || c.checksum != state.checksum {
            return Err(bad(format!(
                "records database checksum {} after txid {}, the restore has {} there",
                c.checksum, c.txid, state.checksum
            )));
        }
    }
    Ok((skip, n, reached))
}

/// The error for a database checksum that differs from the one a segment recorded.
fn checksum_differs(o: &catalog::Segment, c: &CommitRecord, hashes: &PageHashes) -> Error {
    Error::ObjectMismatch {
        key: o.key.clone(),
        problem: format!(
            "after txid {} the database checksum is {}, the segment recorded {}",
            c.txid,
            hashes.checksum(),
            c.checksum
        ),
    }
}

/// The verifying stage's part for a segment's frames: its header against the restore's state,
/// then each commit up to the target applied to the hashes and checked. Whether the target is
/// reached.
fn apply_segment(
    hashes: &mut PageHashes,
    state: &mut State,
    o: &catalog::Segment,
    seg: &Segment,
    target: Target,
) -> Result<bool> {
    let (skip, n, reached) = check_start(state, o, &seg.header, &seg.commits, target)?;
    for (c, frames) in seg.txns().skip(skip).take(n) {
        frames.apply(hashes, c.db_size);
        if hashes.checksum() != c.checksum {
            return Err(checksum_differs(o, c, hashes));
        }
        state.advance(c);
    }
    Ok(reached)
}

/// The verifying stage's part for a segment applied in place: its header against the
/// restore's state, then the commits up to the target applied to the hashes (from the page
/// hashes the applying stage computed) and checked: each one's checksum, or the last one's.
/// Whether the target is reached.
fn apply_patched(
    hashes: &mut PageHashes,
    state: &mut State,
    o: &catalog::Segment,
    p: &Patched,
    target: Target,
) -> Result<bool> {
    let (skip, n, reached) = check_start(state, o, &p.header, &p.commits, target)?;
    if (skip, n) != (0, p.applied) {
        return Err(Error::ObjectMismatch {
            key: o.key.clone(),
            problem: format!(
                "applied {} of its transactions from its first, the restore's state calls \
                 for {n} from its {}th",
                p.applied,
                skip + 1
            ),
        });
    }
    match &p.hashes {
        PatchedHashes::Frames(frames) => {
            let mut frames = frames.iter();
            for c in &p.commits[..n] {
                for &(pgno, h) in frames.by_ref().take(c.frames as usize) {
                    hashes.set_page_hash(pgno, h);
                }
                hashes.resize(c.db_size);
                if hashes.checksum() != c.checksum {
                    return Err(checksum_differs(o, c, hashes));
                }
                state.advance(c);
            }
        }
        PatchedHashes::Last(last) => {
            // The sizes in order drop what the commits drop; then each page's last version
            // (which no later commit dropped): the hashes the commits one by one would leave.
            for c in &p.commits[..n] {
                hashes.resize(c.db_size);
                state.advance(c);
            }
            for &(pgno, h) in last {
                hashes.set_page_hash(pgno, h);
            }
            if let Some(c) = p.commits[..n].last() {
                if hashes.checksum() != c.checksum {
                    return Err(checksum_differs(o, c, hashes));
                }
            }
        }
    }
    Ok(reached)
}
