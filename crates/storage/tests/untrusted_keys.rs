//! Untrusted keys never panic and have one spelling: whatever a listing returns, parsing gives
//! `None` or a key that formats back to exactly the same string (so no foreign object is taken
//! for one of ours under another spelling, such as upper-case hex or a `+` sign, which a
//! restore would then fetch under its canonical name and not find).

use lifeboat_storage::keys::{self, Fence, Key, ManifestKey};
use proptest::prelude::*;

/// Strings near real keys: pieces of them, hex digits of any case and length, separators.
fn near_key() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("generations/".to_string()),
        Just("snapshots/".to_string()),
        Just("segments/".to_string()),
        Just("fence/".to_string()),
        Just("files/".to_string()),
        Just("manifests/".to_string()),
        Just(".lbsnap".to_string()),
        Just(".lbseg".to_string()),
        Just(".lbfence".to_string()),
        Just(".lbman".to_string()),
        Just("-".to_string()),
        Just("/".to_string()),
        Just("+".to_string()),
        "[0-9a-fA-F]{16}",
        "[0-9a-f]{1,17}",
        "[ -~]{0,3}",
        "\\PC{0,2}",
    ];
    proptest::collection::vec(piece, 0..9).prop_map(|v| v.concat())
}

fn check(s: &str) -> Result<(), TestCaseError> {
    if let Some(k) = Key::parse(s) {
        prop_assert_eq!(k.to_string(), s);
        prop_assert_eq!(keys::generation_of(s), Some(k.generation()));
    }
    if let Some(f) = Fence::parse(s) {
        prop_assert_eq!(f.to_string(), s);
    }
    if let Some(folder) = keys::folder_of(s) {
        prop_assert!(keys::valid_folder_name(folder));
        if let Some(m) = ManifestKey::parse(folder, s) {
            prop_assert_eq!(m.key(folder), s);
        }
    }
    if let Some(g) = keys::parse_pruning_marker(s) {
        prop_assert_eq!(keys::pruning_marker(g), s);
    }
    if let Some((h, created_ms)) = keys::parse_blob(s) {
        prop_assert_eq!(keys::blob(h, created_ms), s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn a_key_parses_to_none_or_to_itself(s in near_key()) {
        check(&s)?;
    }

    /// Real keys with characters changed (case, a sign, a separator, any character).
    #[test]
    fn a_changed_real_key_parses_to_none_or_to_itself(
        g in any::<u64>(),
        t in any::<u64>(),
        seg in any::<bool>(),
        edits in proptest::collection::vec((any::<usize>(), prop_oneof![
            Just('+'), Just('-'), Just('/'), Just('A'), Just('F'), Just('0'), any::<char>()
        ]), 1..3),
    ) {
        use lifeboat_wal::{Generation, TxId};
        let k = if seg {
            Key::Segment { generation: Generation(g), first: TxId(t / 2), last: TxId(t), time_ms: t }
        } else {
            Key::Snapshot { generation: Generation(g), txid: TxId(t), time_ms: t }
        };
        let mut chars: Vec<char> = k.to_string().chars().collect();
        for (at, c) in edits {
            let i = at % chars.len();
            chars[i] = if c == 'A' { chars[i].to_ascii_uppercase() } else { c };
        }
        check(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn any_string_parses_without_panicking(s in "\\PC{0,80}") {
        check(&s)?;
    }

    #[test]
    fn real_keys_round_trip(g in any::<u64>(), a in any::<u64>(), b in any::<u64>(), ms in any::<u64>()) {
        use lifeboat_wal::{Generation, TxId};
        let (first, last) = (a.min(b), a.max(b));
        for k in [
            Key::Snapshot { generation: Generation(g), txid: TxId(a), time_ms: ms },
            Key::Segment { generation: Generation(g), first: TxId(first), last: TxId(last), time_ms: ms },
        ] {
            prop_assert_eq!(Key::parse(&k.to_string()), Some(k));
        }
    }
}

/// Regression: upper-case hex and a `+` sign parsed as keys that format differently.
#[test]
fn other_spellings_of_a_key_are_not_keys() {
    let g = "generations/01a237e50fa56242/";
    let ok = format!("{g}snapshots/0000000000000000-000001a237e50fa5.lbsnap");
    assert!(Key::parse(&ok).is_some());
    for bad in [
        format!("{g}snapshots/0000000000000000-000001A237E50FA5.lbsnap"),
        format!("{g}snapshots/+000000000000000-000001a237e50fa5.lbsnap"),
        "generations/01A237E50FA56242/snapshots/0000000000000000-000001a237e50fa5.lbsnap".into(),
    ] {
        assert_eq!(Key::parse(&bad), None, "{bad}");
    }
}
