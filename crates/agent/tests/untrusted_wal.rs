//! Untrusted bytes never panic in the agent's WAL reader: a `-wal` file mutated, cut short or
//! extended (a torn write, a damaged disk, another program's file) is read to an error, to
//! nothing, or to whole transactions that are a prefix of the valid log's.

use lifeboat_agent::walfile::{Cursor, WalFile};
use lifeboat_wal::untrusted::sample_wal;
use proptest::prelude::*;

/// The transactions (frames, end offset) the reader returns for the WAL bytes `b`.
fn read(dir: &std::path::Path, b: &[u8]) -> Vec<(Vec<u8>, u64)> {
    let db = dir.join("app.db");
    std::fs::write(dir.join("app.db-wal"), b).unwrap();
    let wal = WalFile::for_db(&db);
    let _ = wal.size();
    let _ = wal.check(&Cursor::empty());
    let Ok(Some(h)) = wal.header() else {
        return Vec::new();
    };
    let start = Cursor::at_start(h);
    let _ = wal.check(&start);
    let _ = wal.commit_offsets(&h, start.offset, 64);
    let _ = wal.page_index(&h, b.len() as u64);
    let _ = wal.read_tail(start, 1 << 10, 1 << 20);
    let batch = wal.read_batch(&start, 1 << 20).unwrap();
    let _ = wal.check(&batch.end);
    if let Some(t) = batch.txns.last() {
        let mut page = vec![0u8; h.page_size as usize];
        let _ = wal.read_page(t.end_offset - h.frame_size() as u64, &mut page);
    }
    batch
        .txns
        .into_iter()
        .map(|t| (t.frames, t.end_offset))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_mutated_wal_reads_to_a_prefix_of_its_transactions(
        writes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
        extend in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let valid = sample_wal();
        let good = read(dir.path(), &valid);
        prop_assert_eq!(good.len(), 3);
        let mut b = valid.clone();
        let mut changed_header = false;
        for (at, v) in writes {
            let i = at % b.len();
            changed_header |= i < 32 && b[i] != v;
            b[i] = v;
        }
        if let Some(n) = cut {
            b.truncate(n % (b.len() + 1));
        }
        b.extend_from_slice(&extend);
        let got = read(dir.path(), &b);
        // A header changed (and still valid) starts another chain; otherwise the checksum chain
        // stops at the first damaged frame, so what is read is a prefix of the valid log.
        if !changed_header {
            prop_assert!(got.len() <= good.len());
            prop_assert_eq!(&got[..], &good[..got.len()]);
        }
    }

    #[test]
    fn arbitrary_wal_files_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let dir = tempfile::tempdir().unwrap();
        let _ = read(dir.path(), &b);
    }
}
