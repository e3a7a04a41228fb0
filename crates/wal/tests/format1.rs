//! A format-1 segment written by lifeboat before format 2 (`testdata/format1/segment.lbseg`,
//! transaction 5 of generation 01a237338c086d2b, from the replica in
//! `tests/fixtures/format1-replica` at the repository root) still decodes and verifies, and
//! means the same frames in format 2.

use lifeboat_wal::any_segment::AnySegment;
use lifeboat_wal::segment::{Segment, VERSION, VERSION_1};
use lifeboat_wal::{Generation, TxId};

fn golden() -> Vec<u8> {
    std::fs::read(format!(
        "{}/testdata/format1/segment.lbseg",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn format1_segment_decodes_verifies_and_reencodes_byte_for_byte() {
    let bytes = golden();
    let seg = Segment::decode(&bytes).unwrap();
    let h = &seg.header;
    assert_eq!(h.version, VERSION_1);
    assert_eq!(
        h.generation,
        "01a237338c086d2b".parse::<Generation>().unwrap()
    );
    assert_eq!((h.first_txid, h.last_txid), (TxId(5), TxId(5)));
    assert_eq!(h.last_time_ms, 0x1a23733910a);
    assert_eq!(h.page_size, 1024);
    assert_eq!(seg.commits.len(), 1);
    assert!(h.frame_count >= 1 && h.db_size >= 2);
    assert!(AnySegment::open(&bytes).unwrap().base_pages().is_empty());
    // The format-1 writer kept for fixtures is the one that wrote this object.
    assert_eq!(seg.encode_format1(), bytes);
    // Format 2 of the same transactions rebuilds the same frames.
    let v2 = seg.encode();
    let d = Segment::decode(&v2).unwrap();
    assert_eq!(d.header.version, VERSION);
    assert_eq!(d.frames, seg.frames);
    assert_eq!(d.commits, seg.commits);
}

#[test]
fn format1_segment_with_any_flipped_byte_is_refused() {
    let bytes = golden();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x04;
        assert!(
            Segment::decode(&b).is_err(),
            "flip at byte {i} not detected"
        );
    }
}
