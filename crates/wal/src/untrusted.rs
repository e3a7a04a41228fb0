//! Feeding the decoders bytes from anywhere: what the property tests (`tests/untrusted.rs`) and
//! the fuzz targets (`fuzz/`) run, so both exercise the same paths.
//!
//! A replica's objects are untrusted input: a damaged disk, a truncated upload, a bug in an older
//! writer or a hostile store may hand any bytes to a restore. Each `exercise_*` function decodes
//! its input every way a reader does and returns whether it was accepted; it must never panic,
//! whatever the bytes. The `reseal_*` functions recompute an object's CRCs after a mutation, so
//! that the mutated fields and bodies reach the parsing behind the checksums (which a random
//! mutation alone would almost never pass).
//!
//! The samples are small valid objects to mutate: a segment of a few transactions (in either
//! format) and a snapshot of a few pages.

use std::io::Cursor;

use crate::any_segment::AnySegment;
use crate::checksum::PageHashes;
use crate::segment::{Segment, WalPosition, HEADER_SIZE as SEGMENT_HEADER_SIZE};
use crate::snapshot::{
    SnapshotHeader, SnapshotReader, SnapshotWriter, HEADER_SIZE as SNAPSHOT_HEADER_SIZE, VERSION,
};
use crate::sqlite::{encode_frame, scan_frames, WalHeader, WAL_HEADER_SIZE};
use crate::transaction::{SegmentBuilder, TxnFrames};
use crate::{Generation, TxId};

/// Page size of the samples.
pub const SAMPLE_PAGE_SIZE: u32 = 512;

/// The header of the samples' WAL.
fn sample_wal_header() -> WalHeader {
    let h = WalHeader {
        big_endian: false,
        page_size: SAMPLE_PAGE_SIZE,
        checkpoint_seq: 3,
        salt1: 0xdead,
        salt2: 0xbeef,
        checksum: (0, 0),
    };
    WalHeader::parse(&h.encode()).expect("a valid header")
}

/// A WAL file of three transactions over pages 1 to 3, as SQLite would write it.
pub fn sample_wal() -> Vec<u8> {
    let h = sample_wal_header();
    let mut out = h.encode().to_vec();
    let mut running = h.checksum;
    for (t, pages) in [[1u32, 2].as_slice(), &[3], &[1, 3]].iter().enumerate() {
        for (k, &pgno) in pages.iter().enumerate() {
            let page = vec![(t * 7 + pgno as usize) as u8; SAMPLE_PAGE_SIZE as usize];
            let commit = if k + 1 == pages.len() { 3 } else { 0 };
            let (f, c) = encode_frame(&h, running, pgno, commit, &page);
            out.extend_from_slice(&f);
            running = c;
        }
    }
    out
}

/// A segment of the transactions of [`sample_wal`], in format 2 (`format1`: format 1).
pub fn sample_segment(format1: bool) -> Vec<u8> {
    let wal = sample_wal();
    let h = sample_wal_header();
    let mut hashes = PageHashes::new(SAMPLE_PAGE_SIZE as usize);
    let mut b = SegmentBuilder::new(
        Generation(1),
        TxId(1),
        SAMPLE_PAGE_SIZE,
        hashes.checksum(),
        0,
    );
    let fs = h.frame_size();
    let mut start = WAL_HEADER_SIZE;
    let mut at = WAL_HEADER_SIZE;
    while at + fs <= wal.len() {
        let commit = u32::from_be_bytes(wal[at + 4..at + 8].try_into().expect("4 bytes"));
        at += fs;
        if commit != 0 {
            let frames = &wal[start..at];
            b.push(
                &mut hashes,
                TxnFrames {
                    frames,
                    count: (frames.len() / fs) as u32,
                    commit_size: commit,
                    time_ms: 1000,
                },
            );
            start = at;
        }
    }
    let running = scan_frames(&h, h.checksum, &wal[WAL_HEADER_SIZE..]).checksum_after;
    let seg = b
        .finish(WalPosition {
            checkpoint_seq: h.checkpoint_seq,
            salt1: h.salt1,
            salt2: h.salt2,
            big_endian: h.big_endian,
            start_offset: WAL_HEADER_SIZE as u64,
            end_offset: at as u64,
            checksum_before: h.checksum,
            checksum_after: running,
        })
        .expect("three transactions");
    if format1 {
        seg.encode_format1()
    } else {
        seg.encode()
    }
}

/// A snapshot of a three-page database.
pub fn sample_snapshot() -> Vec<u8> {
    let h = sample_wal_header();
    let header = SnapshotHeader {
        version: VERSION,
        generation: Generation(1),
        txid: TxId(3),
        page_size: SAMPLE_PAGE_SIZE,
        time_ms: 1000,
        wal: WalPosition {
            checkpoint_seq: h.checkpoint_seq,
            salt1: h.salt1,
            salt2: h.salt2,
            big_endian: false,
            start_offset: 32,
            end_offset: 32,
            checksum_before: h.checksum,
            checksum_after: h.checksum,
        },
    };
    let mut w = SnapshotWriter::new(Vec::new(), header).expect("in memory");
    for p in 1..=3u8 {
        w.write_page(&vec![p; SAMPLE_PAGE_SIZE as usize])
            .expect("in memory");
    }
    w.finish().expect("in memory").0
}

/// Recomputes a segment's header CRC and its trailing CRC (where the bytes are long enough to
/// hold them).
pub fn reseal_segment(b: &mut [u8]) {
    reseal(b, SEGMENT_HEADER_SIZE);
}

/// Recomputes a snapshot's header CRC and its trailing CRC.
pub fn reseal_snapshot(b: &mut [u8]) {
    reseal(b, SNAPSHOT_HEADER_SIZE);
}

/// Recomputes the CRC that ends a `header_size`-byte header and the CRC that ends the file,
/// each where the bytes are long enough to hold it.
fn reseal(b: &mut [u8], header_size: usize) {
    if b.len() >= header_size {
        let crc = crc32fast::hash(&b[..header_size - 4]);
        b[header_size - 4..header_size].copy_from_slice(&crc.to_be_bytes());
    }
    if b.len() >= header_size + 4 {
        let end = b.len() - 4;
        let crc = crc32fast::hash(&b[..end]);
        b[end..].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Decodes `b` as a segment every way a reader does: [`Segment::decode`], and
/// [`AnySegment::open`] then a rebuild on zeroed base pages. Returns the decoded segment when
/// one is accepted.
pub fn exercise_segment(b: &[u8]) -> Option<Segment> {
    let _ = crate::segment::SegmentHeader::decode(b);
    if let Ok(any) = AnySegment::open(b) {
        let _ = any.base_pages();
        let _ = any.rebuild(&mut |_, page| {
            page.fill(0);
            Ok(())
        });
    }
    let seg = Segment::decode(b).ok()?;
    // An accepted segment is whole: every transaction walks to its frames.
    for (_, frames) in seg.txns() {
        let _ = frames.pages().count();
    }
    Some(seg)
}

/// Reads `b` as a snapshot to the end (chunk by chunk, at most `max_chunks`). Returns the page
/// images when the whole snapshot is accepted.
pub fn exercise_snapshot(b: &[u8], max_chunks: usize) -> Option<Vec<u8>> {
    let _ = SnapshotHeader::decode(b);
    let _ = crate::snapshot::SnapshotTrailer::decode(b);
    let mut r = SnapshotReader::new(Cursor::new(b)).ok()?;
    let mut pages = Vec::new();
    for _ in 0..max_chunks {
        match r.next_chunk() {
            Ok(Some(chunk)) => pages.extend_from_slice(&chunk),
            Ok(None) => return r.trailer().map(|_| pages),
            Err(_) => return None,
        }
    }
    None
}

/// Scans `b` as a WAL file (header, then frames), as the codec does. Returns the committed
/// frame count when the header is accepted.
pub fn exercise_wal(b: &[u8]) -> Option<u64> {
    let h = WalHeader::parse(b).ok()?;
    let body = b.get(WAL_HEADER_SIZE..).unwrap_or_default();
    Some(scan_frames(&h, h.checksum, body).frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_samples_are_valid() {
        for f1 in [false, true] {
            let s = exercise_segment(&sample_segment(f1)).expect("a valid segment");
            assert_eq!(s.commits.len(), 3);
        }
        let pages = exercise_snapshot(&sample_snapshot(), 16).expect("a valid snapshot");
        assert_eq!(pages.len(), 3 * SAMPLE_PAGE_SIZE as usize);
        assert_eq!(exercise_wal(&sample_wal()), Some(5));
        let mut s = sample_segment(false);
        reseal_segment(&mut s);
        assert!(
            exercise_segment(&s).is_some(),
            "resealing a valid one keeps it valid"
        );
        let mut s = sample_snapshot();
        reseal_snapshot(&mut s);
        assert!(exercise_snapshot(&s, 16).is_some());
    }
}
