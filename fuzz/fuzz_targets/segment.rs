//! Segments of either format from any bytes: as given, and with the CRCs recomputed so that the
//! bytes reach the parsing behind the checksums. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_wal::untrusted::{exercise_segment, reseal_segment};

fuzz_target!(|data: &[u8]| {
    let _ = exercise_segment(data);
    let mut b = data.to_vec();
    if b.len() >= 4 {
        b[..4].copy_from_slice(b"LBSG");
    }
    reseal_segment(&mut b);
    if let Some(seg) = exercise_segment(&b) {
        // Accepted means verified: it re-encodes to a segment with the same transactions.
        let again = exercise_segment(&seg.encode()).expect("a re-encoded segment decodes");
        assert_eq!(again.commits, seg.commits);
    }
});
