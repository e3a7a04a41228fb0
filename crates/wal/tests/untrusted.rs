//! Untrusted bytes never panic: segments (both formats), snapshots and WAL files, mutated,
//! truncated and extended, with and without their CRCs recomputed, decode to an error or to a
//! correct result. Case counts are modest so the set runs in seconds (`fuzz/` runs the same
//! paths for longer: see docs/testing.md).

use lifeboat_wal::untrusted::*;
use proptest::prelude::*;

/// A mutation of a valid object: bytes overwritten, then the object cut or extended.
#[derive(Clone, Debug)]
struct Mutation {
    writes: Vec<(usize, u8)>,
    cut: Option<usize>,
    extend: Vec<u8>,
}

impl Mutation {
    fn apply(&self, valid: &[u8]) -> Vec<u8> {
        let mut b = valid.to_vec();
        for &(at, v) in &self.writes {
            let i = at % b.len();
            b[i] = v;
        }
        if let Some(n) = self.cut {
            b.truncate(n % (b.len() + 1));
        }
        b.extend_from_slice(&self.extend);
        b
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        proptest::option::weighted(0.3, any::<usize>()),
        proptest::collection::vec(any::<u8>(), 0..4),
    )
        .prop_map(|(writes, cut, extend)| Mutation {
            writes,
            cut,
            extend,
        })
}

/// Header fields most likely to steer a decoder wrong: lengths, counts, sizes. Writes there,
/// with the CRCs recomputed, reach the parsing behind the checksums.
fn header_write(header_len: usize) -> impl Strategy<Value = (usize, u8)> {
    (0..header_len - 4, any::<u8>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_mutated_segment_is_refused_unless_unchanged(m in mutation(), f1 in any::<bool>()) {
        let valid = sample_segment(f1);
        let b = m.apply(&valid);
        let decoded = exercise_segment(&b);
        if b == valid {
            prop_assert!(decoded.is_some());
        } else {
            prop_assert!(decoded.is_none(), "a changed segment was accepted");
        }
    }

    #[test]
    fn a_mutated_and_resealed_segment_never_panics(
        m in mutation(),
        h in proptest::collection::vec(header_write(148), 0..4),
        f1 in any::<bool>(),
    ) {
        let mut b = m.apply(&sample_segment(f1));
        for (at, v) in h {
            if at < b.len() {
                b[at] = v;
            }
        }
        reseal_segment(&mut b);
        // Accepted only if whole: every frame chain and commit checksum was verified, so a
        // re-encoding decodes to the same transactions.
        if let Some(seg) = exercise_segment(&b) {
            let again = exercise_segment(&seg.encode()).expect("re-encoded");
            prop_assert_eq!(again.commits, seg.commits);
        }
    }

    #[test]
    fn a_mutated_snapshot_is_refused_unless_unchanged(m in mutation()) {
        let valid = sample_snapshot();
        let b = m.apply(&valid);
        let read = exercise_snapshot(&b, 64);
        if b == valid {
            prop_assert!(read.is_some());
        } else {
            prop_assert!(read.is_none(), "a changed snapshot was accepted");
        }
    }

    #[test]
    fn a_mutated_and_resealed_snapshot_never_panics(
        m in mutation(),
        h in proptest::collection::vec(header_write(76), 0..4),
    ) {
        let valid = sample_snapshot();
        let mut b = m.apply(&valid);
        for (at, v) in h {
            if at < b.len() {
                b[at] = v;
            }
        }
        reseal_snapshot(&mut b);
        // Accepted only if the pages returned are those the trailer's database checksum
        // records.
        if let Some(pages) = exercise_snapshot(&b, 64) {
            let t = lifeboat_wal::snapshot::SnapshotTrailer::decode(&b).unwrap();
            let mut h = lifeboat_wal::checksum::PageHashes::new(SAMPLE_PAGE_SIZE as usize);
            for (i, p) in pages.chunks(SAMPLE_PAGE_SIZE as usize).enumerate() {
                h.set_page(i as u32 + 1, p);
            }
            prop_assert_eq!(h.page_count(), t.page_count);
            prop_assert_eq!(h.checksum(), t.checksum);
        }
    }

    #[test]
    fn a_mutated_wal_never_panics_and_never_counts_more_frames(m in mutation()) {
        let valid = sample_wal();
        let b = m.apply(&valid);
        if let Some(frames) = exercise_wal(&b) {
            // Checksums chain from the header: a damaged frame ends the log, so a mutated WAL
            // never shows more committed frames than the valid one, unless it was extended
            // with whole valid frames (impossible with at most 3 bytes added).
            prop_assert!(frames <= exercise_wal(&valid).unwrap());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = exercise_segment(&b);
        let _ = exercise_snapshot(&b, 64);
        let _ = exercise_wal(&b);
        let mut s = b.clone();
        if s.len() >= 4 {
            s[..4].copy_from_slice(b"LBSG");
        }
        reseal_segment(&mut s);
        let _ = exercise_segment(&s);
        let mut s = b;
        if s.len() >= 4 {
            s[..4].copy_from_slice(b"LBSN");
        }
        reseal_snapshot(&mut s);
        let _ = exercise_snapshot(&s, 64);
    }
}

/// Regression (found by `cargo fuzz run segment`): a segment whose header, with valid CRCs,
/// declares a raw length of 4 GB for a body of a hundred bytes made the reader allocate the
/// 4 GB before decompressing; an allocator that refuses aborts the process.
#[test]
fn a_raw_length_the_body_cannot_hold_is_refused_before_allocating() {
    for f1 in [false, true] {
        let mut b = sample_segment(f1);
        // As the fuzzer's input: a frame count of 0x04000005 (so the header's own check lets
        // a huge raw length pass) and a raw length of about 4 GB (format 1: exactly what the
        // frame count implies, 36 GB).
        let frames = 0x0400_0005u64;
        b[36..40].copy_from_slice(&(frames as u32).to_be_bytes());
        let raw = if f1 {
            3 * 32 + frames * (24 + 512)
        } else {
            0xff00_0a7c
        };
        b[136..144].copy_from_slice(&raw.to_be_bytes());
        reseal_segment(&mut b);
        let Err(e) = lifeboat_wal::any_segment::AnySegment::open(&b) else {
            panic!("accepted");
        };
        assert!(e.to_string().contains("more than a"), "{e}");
        assert!(exercise_segment(&b).is_none());
    }
}
