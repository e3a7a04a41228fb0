//! Untrusted manifests never panic: a stored manifest of the uploads folder, mutated, truncated,
//! extended, or with its JSON changed and its CRC recomputed, decodes to an error or to a
//! manifest that matches its key and holds only safe relative paths.

use lifeboat_dirs::entry::{safe_path, Entry, Kind};
use lifeboat_dirs::manifest::{key_at, Manifest, FORMAT};
use lifeboat_wal::{Generation, TxId};
use proptest::prelude::*;

fn sample() -> Manifest {
    Manifest {
        format: FORMAT,
        folder: "uploads".into(),
        seq: 3,
        generation: Generation(1).to_string(),
        txid: TxId(7).to_string(),
        time_ms: 1000,
        prev: Some(2),
        set: vec![
            Entry {
                path: "a/b.png".into(),
                kind: Kind::File {
                    sha256: "ab".repeat(32),
                    size: 10,
                },
                mode: 0o644,
                mtime_ns: 5,
            },
            Entry {
                path: "a".into(),
                kind: Kind::Dir,
                mode: 0o755,
                mtime_ns: 0,
            },
            Entry {
                path: "l".into(),
                kind: Kind::Symlink {
                    target: "a/b.png".into(),
                },
                mode: 0o777,
                mtime_ns: 0,
            },
        ],
        removed: vec![],
        blobs: [("ab".repeat(32), 42)].into_iter().collect(),
    }
}

/// The stored form of `json` (any bytes), with a correct CRC line.
fn sealed(json: &[u8]) -> Vec<u8> {
    let mut v = json.to_vec();
    v.extend_from_slice(format!("\n{:08x}\n", crc32fast::hash(json)).as_bytes());
    v
}

fn decode(data: &[u8]) -> Result<(), TestCaseError> {
    let key = key_at(Generation(1), TxId(7), 3);
    if let Ok(m) = Manifest::decode("uploads", &key, data) {
        prop_assert_eq!(m.seq, 3);
        prop_assert_eq!(&m.folder, "uploads");
        prop_assert!(m.set.iter().chain(&m.removed).all(|e| safe_path(&e.path)));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn a_mutated_manifest_is_refused_unless_unchanged(
        writes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let valid = sample().encode().to_vec();
        let mut b = valid.clone();
        for (at, v) in writes {
            let i = at % b.len();
            b[i] = v;
        }
        if let Some(n) = cut {
            b.truncate(n % (b.len() + 1));
        }
        let key = key_at(Generation(1), TxId(7), 3);
        let r = Manifest::decode("uploads", &key, &b);
        if b == valid {
            prop_assert_eq!(r.unwrap(), sample());
        } else {
            prop_assert!(r.is_err(), "a changed manifest was accepted");
        }
    }

    /// JSON changed behind a correct CRC: what a buggy or hostile writer could store.
    #[test]
    fn changed_json_with_a_correct_crc_never_panics(
        writes in proptest::collection::vec((any::<usize>(), "[ -~]"), 0..6),
    ) {
        let mut json = serde_json::to_vec(&sample()).unwrap();
        for (at, c) in writes {
            let i = at % json.len();
            json[i] = c.as_bytes()[0];
        }
        decode(&sealed(&json))?;
    }

    #[test]
    fn any_json_paths_are_refused_unless_safe(
        path in prop_oneof![Just("../x".to_string()), Just("/etc/passwd".to_string()),
                            Just("a//b".to_string()), Just("./a".to_string()), "\\PC{0,12}"],
    ) {
        let mut m = sample();
        m.set[0].path = path.clone();
        let r = Manifest::decode("uploads", &key_at(Generation(1), TxId(7), 3), &m.encode());
        prop_assert_eq!(r.is_ok(), safe_path(&path));
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        decode(&b)?;
        decode(&sealed(&b))?;
    }
}
