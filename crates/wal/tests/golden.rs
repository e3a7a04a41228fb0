//! The WAL codec against real SQLite WAL files (made by `scripts/make-golden-wal.py`).

use lifeboat_wal::sqlite::{scan_frames, FrameFault, WalHeader, WAL_HEADER_SIZE};

fn load(scenario: &str) -> (Vec<u8>, u64, u64) {
    let dir = format!("{}/testdata/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let wal = std::fs::read(format!("{dir}/wal")).unwrap();
    let expect = std::fs::read_to_string(format!("{dir}/expect.txt")).unwrap();
    let get = |k: &str| -> u64 {
        expect
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    (wal, get("frames"), get("commits"))
}

fn scan(scenario: &str) -> lifeboat_wal::sqlite::Scan {
    let (wal, frames, commits) = load(scenario);
    let h = WalHeader::parse(&wal).unwrap();
    assert_eq!(h.page_size, 1024);
    let s = scan_frames(&h, h.checksum, &wal[WAL_HEADER_SIZE..]);
    assert_eq!(s.frames, frames, "{scenario}: committed frames");
    assert_eq!(s.commits, commits, "{scenario}: commits");
    s
}

#[test]
fn ok_wal_is_read_to_the_last_commit() {
    let s = scan("ok");
    assert_eq!(s.stopped_by, None);
    assert!(s.db_size.unwrap() >= 2);
}

#[test]
fn salt_mismatch_ends_the_log() {
    assert_eq!(
        scan("salt-mismatch").stopped_by,
        Some(FrameFault::SaltMismatch)
    );
}

#[test]
fn checksum_mismatch_ends_the_log() {
    assert_eq!(
        scan("checksum-mismatch").stopped_by,
        Some(FrameFault::ChecksumMismatch)
    );
}

#[test]
fn truncated_frame_is_not_read() {
    let s = scan("truncated");
    assert_eq!(s.stopped_by, None);
}

#[test]
fn damaged_header_is_rejected() {
    let (mut wal, _, _) = load("ok");
    wal[20] ^= 1;
    assert!(WalHeader::parse(&wal).is_err());
    assert!(WalHeader::parse(&wal[..31]).is_err());
}
