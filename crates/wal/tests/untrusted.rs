//! Untrusted bytes never panic: segments (both formats), snapshots and WAL files, mutated,
//! truncated and extended, with and without their CRCs recomputed, decode to an error or to a
//! correct result. Case counts are modest so the set runs in seconds (`fuzz/` runs the same
//! paths for longer: see docs/testing.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lifeboat_wal::any_segment::AnySegment;
use lifeboat_wal::segment::HEADER_SIZE;
use lifeboat_wal::untrusted::*;
use proptest::prelude::*;

/// The allocator of this test binary: a request above 1 GiB fails (the process aborts, as it
/// would where memory runs out), and each thread's largest request is recorded, so that the
/// regressions at the end can show that a forged object never makes the reader ask for memory
/// far beyond its own size.
struct Capped;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) -> bool {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    size <= 1 << 30
}

// SAFETY: every call is passed to the system allocator unchanged, or fails with null.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if note(layout.size()) {
            System.alloc(layout)
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if note(layout.size()) {
            System.alloc_zeroed(layout)
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if note(new_size) {
            System.realloc(ptr, layout, new_size)
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// Runs `f` and returns its result with the largest allocation it requested.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let t = f();
    (t, LARGEST.with(Cell::get))
}

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

/// A sample segment (`format1`: format 1) with its body replaced by `body` and the header's
/// frame count and raw length set, with valid CRCs: what a hostile store could serve.
fn forge(format1: bool, body: &[u8], frame_count: u32, raw_len: u64) -> Vec<u8> {
    let mut b = sample_segment(format1)[..HEADER_SIZE].to_vec();
    b[36..40].copy_from_slice(&frame_count.to_be_bytes());
    b[128..136].copy_from_slice(&(body.len() as u64).to_be_bytes());
    b[136..144].copy_from_slice(&raw_len.to_be_bytes());
    b.extend_from_slice(body);
    b.extend_from_slice(&[0; 4]);
    reseal_segment(&mut b);
    b
}

/// Opens a forged segment: it must be refused, with an error containing `says`, without any
/// allocation larger than 8 times the object.
fn assert_refused_without_allocating(b: &[u8], says: &str) {
    let (opened, largest) = largest_allocation(|| AnySegment::open(b));
    let Err(e) = opened else {
        panic!("accepted");
    };
    assert!(e.to_string().contains(says), "{e}");
    assert!(
        largest <= 8 * b.len(),
        "{largest} bytes allocated for a {}-byte object",
        b.len()
    );
    assert!(exercise_segment(b).is_none());
}

/// Regression (review): a format-2 segment of a few dozen bytes whose header declares u32::MAX
/// frames and whose one commit claims them all made the reader reserve the frame map, 17 GiB,
/// before reading it.
#[test]
fn a_frame_count_the_body_cannot_hold_is_refused_before_allocating() {
    let valid = sample_segment(false);
    let first_txid = &valid[16..24];
    let mut raw = first_txid.to_vec(); // the commit's txid
    raw.extend_from_slice(&1000u64.to_be_bytes()); // time
    raw.extend_from_slice(&u32::MAX.to_be_bytes()); // frames
    raw.extend_from_slice(&3u32.to_be_bytes()); // database size
    raw.extend_from_slice(&0u64.to_be_bytes()); // database checksum
    raw.extend_from_slice(&[1, 0, 0]); // frame map, base map, page version of one frame
    let body = zstd::bulk::compress(&raw, 3).unwrap();
    let mut b = forge(false, &body, u32::MAX, raw.len() as u64);
    // One commit: the txid range and commit count say so.
    b[24..32].copy_from_slice(first_txid);
    b[40..44].copy_from_slice(&1u32.to_be_bytes());
    reseal_segment(&mut b);
    assert!(b.len() < 250, "{} bytes", b.len());
    assert_refused_without_allocating(&b, "frame count 4294967295 needs at least");
}

/// Regression (review): a zstd body may expand 32768 times, so a header could declare 32 GiB of
/// raw bytes for a 1 MiB body, which the reader allocated before decompressing. Here the body
/// is a valid sample body padded with a skippable frame and produces a few hundred bytes.
#[test]
fn a_raw_length_a_zstd_body_does_not_produce_is_never_allocated() {
    let valid = sample_segment(false);
    let mut body = valid[HEADER_SIZE..valid.len() - 4].to_vec();
    let pad = (1 << 20) - body.len() - 8;
    body.extend_from_slice(&0x184D_2A50u32.to_le_bytes()); // a skippable frame
    body.extend_from_slice(&(pad as u32).to_le_bytes());
    body.resize(1 << 20, 0);
    let raw_len = (body.len() as u64) << 15; // the most the check on the header lets through
    let b = forge(false, &body, u32::MAX, raw_len);
    assert_refused_without_allocating(&b, &format!("header declares {raw_len}"));
}

/// The same for format 1: an LZ4 block expands at most 255 times, so a 1 MiB body of
/// incompressible bytes may declare 255 MiB, which the reader allocated before decompressing.
#[test]
fn a_raw_length_an_lz4_body_does_not_produce_is_never_allocated() {
    let mut x = 1u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    let body = lz4_flex::block::compress(&noise);
    // The sample's three commits, and as many 536-byte frames as the body could expand to.
    let frames = (body.len() as u64 * 255 - 3 * 32) / 536;
    let raw_len = 3 * 32 + frames * 536;
    assert!(raw_len > 200 << 20);
    let b = forge(true, &body, frames as u32, raw_len);
    assert_refused_without_allocating(&b, &format!("LZ4 body holds {} bytes", noise.len()));
}
