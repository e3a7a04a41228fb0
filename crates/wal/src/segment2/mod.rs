//! Format 2 of a segment's body: each page version stored as a delta against the page's
//! previous version in the segment, versions grouped by page, the whole compressed with zstd.
//!
//! A hot page that a segment's transactions rewrite a hundred times is stored once in full and
//! then as the few bytes each commit changed, next to each other so the compressor sees them
//! together. Nothing refers outside the segment: a segment decodes on its own, as in format 1.
//! The frames are rebuilt exactly — frame headers and SQLite's running checksums recomputed from
//! the WAL salts and the chain start in the header — and then go through the same verification
//! as format 1's stored frames, so the chain must end at the checksum the agent read from the
//! live WAL, and restore re-checks every commit's database checksum.
//!
//! Raw body (before compression), byte by byte in `docs/format.md`:
//! 1. the commit table (as format 1);
//! 2. the frame map: each frame's page number, in WAL order (LEB128);
//! 3. the page versions: for each page number in ascending order, each of its versions in WAL
//!    order, as a [`delta`] against the previous version (the first against an all-zero page).

pub(crate) mod delta;
mod varint;

use crate::checksum::DbChecksum;
use crate::segment::{get32, get64, CommitRecord, Segment, SegmentHeader, COMMIT_RECORD_SIZE};
use crate::sqlite::{wal_checksum, FRAME_HEADER_SIZE};
use crate::{Error, Result, TxId};

/// zstd level of segment bodies: level 3 stored 0.70× the bytes of LZ4 on benchmark segments at
/// a CPU cost the agent affords.
pub const ZSTD_LEVEL: i32 = 3;

/// The largest raw body a format-2 segment with these counts can have (bounds the allocation a
/// reader makes before the CRC-checked body proves the counts).
pub(crate) fn max_raw_len(h: &SegmentHeader) -> u64 {
    u64::from(h.commit_count) * COMMIT_RECORD_SIZE as u64
        + u64::from(h.frame_count) * (5 + delta::max_encoded_len(h.page_size as usize) as u64)
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

/// The raw (uncompressed) format-2 body of `seg`.
pub(crate) fn encode_body(seg: &Segment) -> Vec<u8> {
    let fs = seg.header.frame_size();
    let ps = seg.header.page_size as usize;
    let n = seg.frames.len() / fs;
    let mut raw = Vec::with_capacity(seg.commits.len() * COMMIT_RECORD_SIZE + n * 5 + n * ps / 4);
    encode_commits(&seg.commits, &mut raw);
    let pgno = |i: usize| get32(&seg.frames, i * fs);
    let page = |i: usize| &seg.frames[i * fs + FRAME_HEADER_SIZE..(i + 1) * fs];
    for i in 0..n {
        varint::put(&mut raw, pgno(i));
    }
    // Frame indexes ordered by page, then by position: a stable sort keeps WAL order per page.
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| pgno(i as usize));
    let zero = vec![0u8; ps];
    let mut prev: Option<usize> = None;
    for &i in &order {
        let i = i as usize;
        let base = match prev {
            Some(p) if pgno(p) == pgno(i) => page(p),
            _ => &zero[..],
        };
        delta::encode(base, page(i), &mut raw);
        prev = Some(i);
    }
    raw
}

/// Rebuilds the commit table and the exact WAL frames from a raw format-2 body. The frames are
/// not verified here: the caller runs the same checks as for format 1.
pub(crate) fn decode_body(h: &SegmentHeader, raw: &[u8]) -> Result<(Vec<CommitRecord>, Vec<u8>)> {
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
    let mut pgnos = Vec::with_capacity(n);
    for _ in 0..n {
        let p = varint::get(&mut input, "frame map")?;
        if p == 0 {
            return Err(Error::corrupt(0, "frame map holds page number 0"));
        }
        pgnos.push(p);
    }
    let fs = h.frame_size();
    let mut frames = vec![0u8; n * fs];
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| pgnos[i as usize]);
    let mut prev: Option<usize> = None;
    for &i in &order {
        let i = i as usize;
        if let Some(p) = prev.filter(|&p| pgnos[p] == pgnos[i]) {
            // Start from the previous version (an earlier frame slot), then apply the runs.
            let (before, after) = frames.split_at_mut(i * fs);
            after[FRAME_HEADER_SIZE..fs]
                .copy_from_slice(&before[p * fs + FRAME_HEADER_SIZE..(p + 1) * fs]);
        }
        delta::decode(
            &mut input,
            &mut frames[i * fs + FRAME_HEADER_SIZE..(i + 1) * fs],
        )?;
        prev = Some(i);
    }
    if !input.is_empty() {
        return Err(Error::corrupt(0, "bytes left after the last page version"));
    }
    // Frame headers: page number, database size on a transaction's last frame, the WAL's salts,
    // and SQLite's running checksum continued from the header's chain start.
    let mut running = h.wal.checksum_before;
    let mut frame = 0usize;
    for c in &commits {
        for k in 0..c.frames {
            let f = &mut frames[frame * fs..(frame + 1) * fs];
            let commit_size = if k + 1 == c.frames { c.db_size } else { 0 };
            f[0..4].copy_from_slice(&pgnos[frame].to_be_bytes());
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
    Ok((commits, frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::PageHashes;
    use crate::segment::WalPosition;
    use crate::sqlite::{encode_frame, WalHeader};
    use crate::transaction::SegmentBuilder;
    use crate::Generation;
    use proptest::prelude::*;

    const PS: usize = 512;

    /// A transaction: the pages it writes, each as (page number, byte edits to its last version).
    type Txn = Vec<(u32, Vec<(usize, u8)>)>;

    /// Builds a segment from transactions the way the agent does, from real WAL frames.
    fn build(txns: &[Txn], big_endian: bool) -> Segment {
        let wal = WalHeader::parse(
            &WalHeader {
                big_endian,
                page_size: PS as u32,
                checkpoint_seq: 3,
                salt1: 0xdead,
                salt2: 0xbeef,
                checksum: (0, 0),
            }
            .encode(),
        )
        .unwrap();
        let mut pages: Vec<Vec<u8>> = vec![vec![0u8; PS]; 9];
        let mut hashes = PageHashes::new(PS);
        let mut b = SegmentBuilder::new(Generation(1), TxId(1), PS as u32, hashes.checksum(), 0);
        let mut running = wal.checksum;
        let mut size = 0u32;
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
            b.push(&mut hashes, &bytes, txn.len() as u32, size, 1000 + t as u64);
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

    fn txns() -> impl Strategy<Value = Vec<Txn>> {
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
        let bytes = build(&txns, false).encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(
                Segment::decode(&b).is_err(),
                "flip at byte {i} not detected"
            );
        }
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
        assert!(encode_body(&seg).len() < 200 * (COMMIT_RECORD_SIZE + 1 + 24) + PS);
    }
}
