//! Writes valid objects as seeds for the fuzz targets (`fuzz/corpus/<target>/`), so the fuzzer
//! starts from objects that decode: `cargo run -p lifeboat-wal --example fuzz_seeds` before
//! fuzzing (see docs/testing.md).

use lifeboat_wal::untrusted::{sample_segment, sample_snapshot, sample_wal};

fn main() -> std::io::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus");
    for (target, name, bytes) in [
        ("segment", "format2", sample_segment(false)),
        ("segment", "format1", sample_segment(true)),
        ("snapshot", "three-pages", sample_snapshot()),
        ("wal", "three-txns", sample_wal()),
    ] {
        let dir = format!("{root}/{target}");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(format!("{dir}/{name}"), bytes)?;
        println!("{dir}/{name}");
    }
    Ok(())
}
