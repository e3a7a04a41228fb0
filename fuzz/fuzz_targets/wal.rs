//! SQLite WAL files from any bytes (the codec's header and frame scan). Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat_wal::untrusted::exercise_wal;

fuzz_target!(|data: &[u8]| {
    let _ = exercise_wal(data);
});
