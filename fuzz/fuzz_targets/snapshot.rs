//! Snapshots from any bytes, as given and with the CRCs recomputed. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_wal::untrusted::{exercise_snapshot, reseal_snapshot};

fuzz_target!(|data: &[u8]| {
    let _ = exercise_snapshot(data, 256);
    let mut b = data.to_vec();
    if b.len() >= 4 {
        b[..4].copy_from_slice(b"LBSN");
    }
    reseal_snapshot(&mut b);
    let _ = exercise_snapshot(&b, 256);
});
