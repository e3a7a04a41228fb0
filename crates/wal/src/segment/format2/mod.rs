//! Format 2 of a segment's body: each page version stored as a delta against the page's
//! previous version, versions grouped by page, the whole compressed with zstd.
//!
//! A hot page that a segment's transactions rewrite a hundred times is stored as the few bytes
//! each commit changed, next to each other so the compressor sees them together. A page's first
//! version in the segment is a delta against either an all-zero page or the page as it stood
//! before the segment's first commit (its *base*): the agent uses the base only when the bytes it
//! read for it hash to exactly what its per-page hashes say the page was, and restore reads it
//! from the database it is rebuilding, whose checksum it has just verified. The frames are then
//! rebuilt exactly — frame headers and SQLite's running checksums recomputed from the WAL salts
//! and the chain start in the header — and go through the same verification as format 1's stored
//! frames, so the chain must end at the checksum the agent read from the live WAL, and the
//! recorded database checksums are checked again. Restore does not write the frames out: it applies
//! each page's versions in place and carries SQLite's checksum through the changed bytes
//! ([`patch`]), which proves the same chain at the cost of the bytes that changed.
//!
//! Raw body (before compression), byte by byte in `docs/format.md`:
//! 1. the commit table (as format 1);
//! 2. the frame map: each frame's page number, in WAL order (LEB128);
//! 3. the base map: for each distinct page number in ascending order, one byte: 0 = the first
//!    version is a delta against an all-zero page, 1 = against the page before the segment;
//! 4. the page versions: for each page number in ascending order, each of its versions in WAL
//!    order, as a [`delta`] against the previous version.

pub(crate) mod delta;
mod encoder;
pub(crate) mod patch;
mod varint;
mod weights;

use std::collections::HashMap;

pub use encoder::{BaseReader, SegmentEncoder};
pub use patch::{Kept, PageWeight, Patch, Patching};

use crate::checksum::DbChecksum;
use crate::segment::{get32, get64, CommitRecord, Segment, SegmentHeader, COMMIT_RECORD_SIZE};
use crate::sqlite::{wal_checksum, WalChecksum, FRAME_HEADER_SIZE};
use crate::{Error, Result, TxId};

/// zstd level of segment bodies: level 3 stored 0.70× the bytes of LZ4 on benchmark segments at
/// a CPU cost the agent affords.
pub const ZSTD_LEVEL: i32 = 3;

/// Base-map value: the page's first version is a delta against an all-zero page.
const BASE_ZERO: u8 = 0;
/// Base-map value: against the page as it stood before the segment's first commit.
const BASE_BEFORE: u8 = 1;

/// Pages as they stood before a segment's first commit, by page number: the bases the encoder
/// may use for a page's first version. The caller vouches for every page it puts here (the agent
/// checks each against its per-page hash of that state).
pub type BasePages = HashMap<u32, Vec<u8>>;

/// The largest raw body a format-2 segment with these counts can have (bounds the allocation a
/// reader makes before the CRC-checked body proves the counts).
pub(crate) fn max_raw_len(h: &SegmentHeader) -> u64 {
    u64::from(h.commit_count) * COMMIT_RECORD_SIZE as u64
        + u64::from(h.frame_count) * (6 + delta::max_encoded_len(h.page_size as usize) as u64)
}

pub(crate) fn encode_commits(commits: &[CommitRecord], raw: &mut Vec<u8>) {
    for c in commits {
        raw.extend_from_slice(&c.txid.0.to_be_bytes());
        raw.extend_from_slice(&c.time_ms.to_be_bytes());
        raw.extend_from_slice(&c.frames.to_be_bytes());
        raw.extend_from_slice(&c.db_size.to_be_bytes());
        raw.extend_from_slice(&c.checksum.0.to_be_bytes());
    }
}

pub(crate) fn decode_commits(h: &SegmentHeader, table: &[u8]) -> Result<Vec<CommitRecord>> {
    let mut commits = Vec::with_capacity(h.commit_count as usize);
    for (i, r) in table.chunks_exact(COMMIT_RECORD_SIZE).enumerate() {
        let c = CommitRecord {
            txid: TxId(get64(r, 0)),
            time_ms: get64(r, 8),
            frames: get32(r, 16),
            db_size: get32(r, 20),
            checksum: DbChecksum(get64(r, 24)),
        };
        if c.txid.0 != h.first_txid.0 + i as u64 {
            return Err(Error::corrupt(0, format!("commit {i} has txid {}", c.txid)));
        }
        commits.push(c);
    }
    Ok(commits)
}

/// Frame indexes ordered by page number, WAL order kept within a page (a stable sort).
fn by_page(pgnos: &[u32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..pgnos.len() as u32).collect();
    order.sort_by_key(|&i| pgnos[i as usize]);
    order
}

/// The raw (uncompressed) format-2 body of `seg`, using `bases` for the first versions of the
/// pages it holds.
pub(crate) fn encode_body(seg: &Segment, bases: &BasePages) -> Vec<u8> {
    let fs = seg.header.frame_size();
    let ps = seg.header.page_size as usize;
    let n = seg.frames.len() / fs;
    let mut raw = Vec::with_capacity(seg.commits.len() * COMMIT_RECORD_SIZE + n * 5 + n * ps / 4);
    encode_commits(&seg.commits, &mut raw);
    let pgnos: Vec<u32> = (0..n).map(|i| get32(&seg.frames, i * fs)).collect();
    let page = |i: usize| &seg.frames[i * fs + FRAME_HEADER_SIZE..(i + 1) * fs];
    for &p in &pgnos {
        varint::put(&mut raw, p);
    }
    let order = by_page(&pgnos);
    let firsts = || {
        order
            .iter()
            .enumerate()
            .filter(|&(k, &i)| k == 0 || pgnos[order[k - 1] as usize] != pgnos[i as usize])
            .map(|(_, &i)| pgnos[i as usize])
    };
    let base_of = |p: u32| bases.get(&p).filter(|b| b.len() == ps);
    for p in firsts() {
        raw.push(if base_of(p).is_some() {
            BASE_BEFORE
        } else {
            BASE_ZERO
        });
    }
    let zero = vec![0u8; ps];
    let mut prev: Option<usize> = None;
    for &i in &order {
        let i = i as usize;
        let base = match prev {
            Some(p) if pgnos[p] == pgnos[i] => page(p),
            _ => base_of(pgnos[i]).map_or(&zero[..], |b| &b[..]),
        };
        delta::encode(base, page(i), &mut raw);
        prev = Some(i);
    }
    raw
}

/// A format-2 body whose structure has been checked, before its frames are rebuilt.
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    pub(crate) raw: Vec<u8>,
    pgnos: Vec<u32>,
    /// Distinct page numbers in ascending order, each with whether its first version needs its
    /// base page.
    pages: Vec<(u32, bool)>,
    /// Where the page versions start in `raw`.
    versions_at: usize,
    /// Where each page's versions start, from `versions_at` (one entry per `pages` entry): a
    /// patch splits the pages between threads there.
    starts: Vec<usize>,
}

impl Parsed {
    /// The pages whose first version is a delta against the page before the segment.
    pub(crate) fn base_pages(&self) -> impl Iterator<Item = u32> + '_ {
        self.pages.iter().filter(|p| p.1).map(|p| p.0)
    }
}

/// Checks the structure of a raw format-2 body (commit table, frame map, base map, every page
/// delta within its page, nothing left over) and returns the commit table and the parsed body.
pub(crate) fn parse(h: &SegmentHeader, raw: Vec<u8>) -> Result<(Vec<CommitRecord>, Parsed)> {
    let table_len = h.commit_count as usize * COMMIT_RECORD_SIZE;
    if raw.len() < table_len {
        return Err(Error::corrupt(0, "body shorter than its commit table"));
    }
    let commits = decode_commits(h, &raw[..table_len])?;
    let n = h.frame_count as usize;
    let total: u64 = commits.iter().map(|c| u64::from(c.frames)).sum();
    if total != n as u64 || commits.iter().any(|c| c.frames == 0) {
        return Err(Error::corrupt(
            0,
            "commit table disagrees with the frame count",
        ));
    }
    let mut input = &raw[table_len..];
    // Each frame takes at least one byte of frame map and one of page version: refused before
    // `n`, any u32 the header declares, sizes an allocation.
    if (input.len() as u64) < 2 * n as u64 {
        return Err(Error::corrupt(
            0,
            format!(
                "frame count {n} needs at least {} body bytes after the commit table, {} remain",
                2 * n as u64,
                input.len()
            ),
        ));
    }
    let mut pgnos = Vec::with_capacity(n);
    for _ in 0..n {
        let p = varint::get(&mut input, "frame map")?;
        if p == 0 {
            return Err(Error::corrupt(0, "frame map holds page number 0"));
        }
        pgnos.push(p);
    }
    let mut distinct = pgnos.clone();
    distinct.sort_unstable();
    // How many versions each page has: the page versions are stored page by page.
    let counts: Vec<usize> = distinct.chunk_by(|a, b| a == b).map(<[u32]>::len).collect();
    distinct.dedup();
    if input.len() < distinct.len() {
        return Err(Error::corrupt(0, "body ends inside the base map"));
    }
    let mut pages = Vec::with_capacity(distinct.len());
    for (&p, &flag) in distinct.iter().zip(input.iter()) {
        match flag {
            BASE_ZERO | BASE_BEFORE => pages.push((p, flag == BASE_BEFORE)),
            _ => {
                return Err(Error::corrupt(
                    0,
                    format!("base map value {flag} for page {p}"),
                ))
            }
        }
    }
    input = &input[distinct.len()..];
    let versions_at = raw.len() - input.len();
    let mut starts = Vec::with_capacity(counts.len());
    for count in counts {
        starts.push(raw.len() - input.len() - versions_at);
        for _ in 0..count {
            delta::check(&mut input, h.page_size as usize)?;
        }
    }
    if !input.is_empty() {
        return Err(Error::corrupt(0, "bytes left after the last page version"));
    }
    Ok((
        commits,
        Parsed {
            raw,
            pgnos,
            pages,
            versions_at,
            starts,
        },
    ))
}

/// Rebuilds the pages of a parsed body's WAL frames, each with its page number; [`chain`]
/// completes their headers. `base(pgno, page)` fills `page` with the page as it stood before
/// the segment, for each page of [`Parsed::base_pages`]. The caller compares the chain's end
/// with the one the agent read from the live WAL (the frames are written from the checked
/// frame map and commit table, so the chain's end is what is left to prove).
pub(crate) fn rebuild_pages(
    h: &SegmentHeader,
    body: &Parsed,
    base: &mut dyn FnMut(u32, &mut [u8]) -> Result<()>,
    mut frames: Vec<u8>,
) -> Result<Vec<u8>> {
    let n = body.pgnos.len();
    let fs = h.frame_size();
    let pgnos = &body.pgnos;
    // Every byte is written below (headers, and each page from its previous version, its base
    // or zeros), so a reused buffer is only cut or grown, not cleared.
    if frames.capacity() < n * fs {
        // Growing would copy the old bytes first; and the old allocation goes before the new
        // one comes.
        drop(std::mem::take(&mut frames));
        frames = vec![0u8; n * fs];
    } else if frames.len() > n * fs {
        frames.truncate(n * fs);
    } else {
        frames.resize(n * fs, 0);
    }
    let mut input = &body.raw[body.versions_at..];
    let mut group = body.pages.iter();
    let mut prev: Option<usize> = None;
    for &i in &by_page(pgnos) {
        let i = i as usize;
        if let Some(p) = prev.filter(|&p| pgnos[p] == pgnos[i]) {
            // Start from the previous version (an earlier frame slot), then apply the runs.
            let (before, after) = frames.split_at_mut(i * fs);
            after[FRAME_HEADER_SIZE..fs]
                .copy_from_slice(&before[p * fs + FRAME_HEADER_SIZE..(p + 1) * fs]);
        } else {
            let &(p, needs) = group.next().expect("one base-map entry per page");
            debug_assert_eq!(p, pgnos[i]);
            let page = &mut frames[i * fs + FRAME_HEADER_SIZE..(i + 1) * fs];
            if needs {
                base(p, page)?;
            } else {
                page.fill(0);
            }
        }
        delta::decode(
            &mut input,
            &mut frames[i * fs + FRAME_HEADER_SIZE..(i + 1) * fs],
        )?;
        prev = Some(i);
    }
    for (f, pgno) in frames.chunks_exact_mut(fs).zip(pgnos) {
        f[0..4].copy_from_slice(&pgno.to_be_bytes());
    }
    Ok(frames)
}

/// Completes frames whose pages and page numbers [`rebuild_pages`] wrote: the database size on
/// a transaction's last frame, the WAL's salts, and SQLite's running checksum continued from
/// the header's chain start. Returns the chain's end.
pub(crate) fn chain(h: &SegmentHeader, commits: &[CommitRecord], frames: &mut [u8]) -> WalChecksum {
    let fs = h.frame_size();
    let mut running = h.wal.checksum_before;
    let mut frame = 0usize;
    for c in commits {
        for k in 0..c.frames {
            let f = &mut frames[frame * fs..(frame + 1) * fs];
            let commit_size = if k + 1 == c.frames { c.db_size } else { 0 };
            f[4..8].copy_from_slice(&commit_size.to_be_bytes());
            f[8..12].copy_from_slice(&h.wal.salt1.to_be_bytes());
            f[12..16].copy_from_slice(&h.wal.salt2.to_be_bytes());
            running = wal_checksum(h.wal.big_endian, running, &f[0..8]);
            running = wal_checksum(h.wal.big_endian, running, &f[FRAME_HEADER_SIZE..]);
            f[16..20].copy_from_slice(&running.0.to_be_bytes());
            f[20..24].copy_from_slice(&running.1.to_be_bytes());
            frame += 1;
        }
    }
    running
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::PageHashes;
    use crate::segment::any::AnySegment;
    use crate::segment::WalPosition;
    use crate::sqlite::{encode_frame, WalHeader};
    use crate::transaction::{SegmentBuilder, TxnFrames};
    use crate::Generation;
    use proptest::prelude::*;

    pub(super) const PS: usize = 512;

    /// A transaction: the pages it writes, each as (page number, byte edits to its last version).
    pub(super) type Txn = Vec<(u32, Vec<(usize, u8)>)>;

    /// Builds a segment from transactions the way the agent does, from real WAL frames.
    pub(super) fn build(txns: &[Txn], big_endian: bool) -> Segment {
        build_on(&vec![vec![0u8; PS]; 9], txns, big_endian)
    }

    /// The same, on a database whose pages 1..=8 are `before[1..]` (page 0 unused).
    pub(super) fn build_on(before: &[Vec<u8>], txns: &[Txn], big_endian: bool) -> Segment {
        let wal = WalHeader::new(big_endian, PS as u32, 3, (0xdead, 0xbeef));
        let mut pages: Vec<Vec<u8>> = before.to_vec();
        let mut hashes = PageHashes::new(PS);
        let mut size = 0u32;
        for (p, page) in pages.iter().enumerate().skip(1) {
            if page.iter().any(|&b| b != 0) {
                hashes.set_page(p as u32, page);
                size = size.max(p as u32);
            }
        }
        hashes.resize(size);
        let mut b = SegmentBuilder::new(Generation(1), TxId(1), PS as u32, hashes.checksum(), 0);
        let mut running = wal.checksum;
        for (t, txn) in txns.iter().enumerate() {
            let mut bytes = Vec::new();
            for (k, (pgno, edits)) in txn.iter().enumerate() {
                let page = &mut pages[*pgno as usize];
                for &(at, v) in edits {
                    page[at] = v;
                }
                size = size.max(*pgno);
                let commit = if k + 1 == txn.len() { size } else { 0 };
                let (f, c) = encode_frame(&wal, running, *pgno, commit, page);
                bytes.extend_from_slice(&f);
                running = c;
            }
            b.push(
                &mut hashes,
                TxnFrames {
                    frames: &bytes,
                    count: txn.len() as u32,
                    commit_size: size,
                    time_ms: 1000 + t as u64,
                },
            );
        }
        b.finish(WalPosition {
            checkpoint_seq: 3,
            salt1: 0xdead,
            salt2: 0xbeef,
            big_endian,
            start_offset: 32,
            end_offset: 32,
            checksum_before: wal.checksum,
            checksum_after: running,
        })
        .unwrap()
    }

    pub(super) fn txns() -> impl Strategy<Value = Vec<Txn>> {
        let edits = proptest::collection::vec((0usize..PS, any::<u8>()), 0..40);
        let txn = proptest::collection::vec((1u32..9, edits), 1..5);
        proptest::collection::vec(txn, 1..12)
    }

    proptest! {
        #[test]
        fn format2_round_trips_exact_frames(txns in txns(), be in any::<bool>()) {
            let seg = build(&txns, be);
            let bytes = seg.encode();
            let d = Segment::decode(&bytes).unwrap();
            prop_assert_eq!(d.header.version, crate::segment::VERSION);
            prop_assert_eq!(&d.commits, &seg.commits);
            prop_assert!(d.frames == seg.frames, "rebuilt frames differ");
            // Format 1 of the same segment decodes to the same frames.
            let d1 = Segment::decode(&seg.encode_format1()).unwrap();
            prop_assert!(d1.frames == seg.frames);
        }

        #[test]
        fn format2_every_flipped_byte_is_detected(
            txns in txns(),
            at in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = build(&txns, false).encode();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(Segment::decode(&bytes).is_err(), "flip at byte {} not detected", i);
        }
    }

    #[test]
    fn every_byte_of_one_segment_flipped_is_detected() {
        let edits = |s: u8| {
            (0..30)
                .map(|i| (i * 7 % PS, s.wrapping_add(i as u8)))
                .collect()
        };
        let txns: Vec<Txn> = (0..6u8)
            .map(|t| vec![(1, edits(t)), (2 + u32::from(t % 3), edits(t + 9))])
            .collect();
        crate::segment::tests::assert_every_flip_detected(&build(&txns, false).encode(), 0x40);
    }

    #[test]
    fn a_hot_page_costs_its_changes_not_its_size() {
        // 200 commits each changing 16 bytes of one 512-byte page.
        let txns: Vec<Txn> = (0..200usize)
            .map(|t| {
                vec![(
                    1,
                    (0..16)
                        .map(|i| ((t * 16 + i) % PS, t as u8 ^ 0x5a))
                        .collect(),
                )]
            })
            .collect();
        let seg = build(&txns, false);
        let v2 = seg.encode().len();
        let v1 = seg.encode_format1().len();
        assert!(v2 * 2 < v1, "format 2 {v2} bytes, format 1 {v1} bytes");
        assert!(
            encode_body(&seg, &BasePages::new()).len() < 200 * (COMMIT_RECORD_SIZE + 1 + 24) + PS
        );
    }

    pub(super) fn before() -> Vec<Vec<u8>> {
        (0..9u8)
            .map(|p| (0..PS).map(|i| (i as u8).wrapping_mul(p | 1) ^ p).collect())
            .collect()
    }

    proptest! {
        #[test]
        fn format2_with_bases_rebuilds_from_the_state_before(txns in txns(), be in any::<bool>()) {
            let before = before();
            let seg = build_on(&before, &txns, be);
            let bases: BasePages = (1..9u32).map(|p| (p, before[p as usize].clone())).collect();
            let bytes = seg.encode_with_bases(&bases);
            let opened = AnySegment::open(&bytes).unwrap();
            let mut touched: Vec<u32> = txns.iter().flatten().map(|t| t.0).collect();
            touched.sort_unstable();
            touched.dedup();
            prop_assert_eq!(opened.base_pages(), touched);
            let d = opened
                .clone()
                .rebuild(&mut |p, page| {
                    page.copy_from_slice(&before[p as usize]);
                    Ok(())
                })
                .unwrap();
            prop_assert!(d.frames == seg.frames, "rebuilt frames differ");
            prop_assert_eq!(&d.commits, &seg.commits);
            // A reader without the state refuses; one with another state fails SQLite's chain.
            prop_assert!(Segment::decode(&bytes).is_err());
            let wrong = opened.rebuild(&mut |p, page| {
                // Every byte differs (a delta covers at most 40 runs of < 8 bytes of a page).
                for (o, b) in page.iter_mut().zip(&before[p as usize]) {
                    *o = b ^ 0x55;
                }
                Ok(())
            });
            prop_assert!(wrong.is_err());
        }
    }

    #[test]
    fn bases_make_a_small_change_to_a_full_page_small() {
        let before = before();
        let txns: Vec<Txn> = vec![vec![(3, vec![(10, 1), (200, 2)])]];
        let seg = build_on(&before, &txns, false);
        let bases: BasePages = [(3, before[3].clone())].into_iter().collect();
        let with = encode_body(&seg, &bases).len();
        let without = encode_body(&seg, &BasePages::new()).len();
        assert!(with < COMMIT_RECORD_SIZE + 20, "{with} bytes");
        assert!(without > PS, "{without} bytes");
    }
}
