//! Every object key, built and parsed here and nowhere else.
//!
//! ```text
//! generations/<generation>/snapshots/<txid>-<time_ms>.lbsnap
//! generations/<generation>/segments/<first_txid>-<last_txid>-<last_time_ms>.lbseg
//! generations/<generation>/pruning
//! drills/<unix_ms>.json
//! generations/<generation>/fence/<epoch>[-<parent_generation>-<parent_txid>].lbfence
//! lease.json, lease-handoff.json
//! files/blobs/<sha256>-<created_ms>
//! files/<folder>/manifests/<generation>-<txid>-<seq>.lbman
//! ```
//! All numbers are 16 lower-case hex digits, so a listing is in chronological order. The time in
//! the key is when the agent saw the last transaction, which lets a point-in-time restore choose
//! its objects from one listing, without reading any object header.

use std::fmt;

use lifeboat_wal::{Generation, TxId};

/// Prefix of all generations.
pub const GENERATIONS: &str = "generations/";

/// Prefix of one generation.
pub fn generation_prefix(g: Generation) -> String {
    format!("{GENERATIONS}{g}/")
}

/// Prefix of a generation's snapshots.
pub fn snapshots_prefix(g: Generation) -> String {
    format!("{GENERATIONS}{g}/snapshots/")
}

/// Prefix of a generation's segments.
pub fn segments_prefix(g: Generation) -> String {
    format!("{GENERATIONS}{g}/segments/")
}

/// Key of the marker retention writes before it deletes a generation, and removes last:
/// `generations/<generation>/pruning`. A generation that carries it is being deleted; restore
/// and `verify` pass over it (saying so), so a prune interrupted halfway leaves nothing that
/// looks damaged or restores to a shorter state.
pub fn pruning_marker(g: Generation) -> String {
    format!("{GENERATIONS}{g}/pruning")
}

/// The generation a [`pruning_marker`] key marks, if `key` is one.
pub fn parse_pruning_marker(key: &str) -> Option<Generation> {
    let g = key.strip_prefix(GENERATIONS)?.strip_suffix("/pruning")?;
    if g.contains('/') {
        return None;
    }
    parse_generation(g)
}

/// What a [`pruning_marker`] holds (always the same bytes, so writing it twice is harmless).
pub const PRUNING_MARKER_BODY: &[u8] =
    b"lifeboat retention is deleting this generation; run `lifeboat prune` to finish\n";

/// Prefix of the drill reports (`lifeboat drill`), outside [`GENERATIONS`] so that restore,
/// the catalog and `verify` never see them.
pub const DRILLS: &str = "drills/";

/// Key of the report of a drill started at `unix_ms`: `drills/<16 hex digits of unix ms>.json`.
pub fn drill_report(unix_ms: u64) -> String {
    format!("{DRILLS}{unix_ms:016x}.json")
}

/// Prefix of everything that backs up folders next to the database (`--dir`), outside
/// [`GENERATIONS`] so that restore, the catalog and `verify` of the database never see it.
pub const FILES: &str = "files/";

/// Prefix of the content-addressed file contents, shared by every folder of the replica.
pub const BLOBS: &str = "files/blobs/";

/// Key of a copy of the file content whose SHA-256 is `sha256` (64 lower-case hex digits),
/// first uploaded at `created_ms` (Unix ms, the uploader's clock). The time lets retention tell
/// a blob a running agent may be about to name from an old one (see `lifeboat_dirs::prune`).
pub fn blob(sha256: &str, created_ms: u64) -> String {
    format!("{BLOBS}{sha256}-{created_ms:016x}")
}

/// The SHA-256 and creation time named by a blob key, if `key` is one.
pub fn parse_blob(key: &str) -> Option<(&str, u64)> {
    let (h, t) = key.strip_prefix(BLOBS)?.split_once('-')?;
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (h.len() == 64 && hex(h) && t.len() == 16 && hex(t))
        .then(|| Some((h, u64::from_str_radix(t, 16).ok()?)))
        .flatten()
}

/// Whether `name` can name a folder in keys: 1 to 100 of `A-Z a-z 0-9 . _ -`, not `blobs`, not
/// starting with a dot.
pub fn valid_folder_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name != "blobs"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Prefix of one folder's manifests.
pub fn manifests_prefix(folder: &str) -> String {
    format!("{FILES}{folder}/manifests/")
}

/// A parsed manifest key: the folder's state, captured after transaction `txid` of
/// `generation` was committed and before anything after it was shipped; `seq` numbers the
/// manifests of one folder in order. Keys sort by (generation, txid, seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManifestKey {
    /// Generation of the database position.
    pub generation: Generation,
    /// Transaction of the database position.
    pub txid: TxId,
    /// Place in the folder's chain of manifests.
    pub seq: u64,
}

impl ManifestKey {
    /// The key of this manifest of `folder`.
    pub fn key(&self, folder: &str) -> String {
        format!(
            "{}{}-{}-{:016x}.lbman",
            manifests_prefix(folder),
            self.generation,
            self.txid,
            self.seq
        )
    }

    /// Parses a key under [`manifests_prefix`]`(folder)`.
    pub fn parse(folder: &str, key: &str) -> Option<ManifestKey> {
        let stem = key
            .strip_prefix(&manifests_prefix(folder))?
            .strip_suffix(".lbman")?;
        let mut it = stem.split('-');
        let generation = parse_generation(it.next()?)?;
        let txid = parse_txid(it.next()?)?;
        let seq = parse_hex(it.next()?)?;
        if it.next().is_some() {
            return None;
        }
        Some(ManifestKey {
            generation,
            txid,
            seq,
        })
    }
}

/// The folder named by a manifest key (`files/<folder>/manifests/...`), if `key` is one.
pub fn folder_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(FILES)?;
    let (name, rest) = rest.split_once('/')?;
    (valid_folder_name(name) && rest.starts_with("manifests/")).then_some(name)
}

/// The writer lease of the replica path (JSON, replaced with conditional writes; see the
/// agent's `lease` module). Outside [`GENERATIONS`]: never restored from nor pruned.
pub const LEASE: &str = "lease.json";

/// A request, by an instance that wants the lease, that its holder hand it over (JSON).
pub const HANDOFF: &str = "lease-handoff.json";

/// A generation's fence: written, before its first snapshot, by an agent holding the lease with
/// `epoch`; `parent` is the state the holder took over from (the newest generation and
/// transaction it found or restored when it took the lease), `None` for an empty replica.
/// Readers use fences to ignore what an older epoch wrote after a newer one took over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fence {
    /// The generation it belongs to.
    pub generation: Generation,
    /// The lease epoch that writes this generation.
    pub epoch: u64,
    /// Where the history stood when the lease was taken.
    pub parent: Option<(Generation, TxId)>,
}

impl Fence {
    /// Parses a fence key; `None` for anything else.
    pub fn parse(key: &str) -> Option<Fence> {
        let rest = key.strip_prefix(GENERATIONS)?;
        let (g, rest) = rest.split_once('/')?;
        let generation = parse_generation(g)?;
        let stem = rest.strip_prefix("fence/")?.strip_suffix(".lbfence")?;
        let mut it = stem.split('-');
        let epoch = parse_hex(it.next()?)?;
        let parent = match (it.next(), it.next()) {
            (None, _) => None,
            (Some(pg), Some(pt)) => Some((parse_generation(pg)?, parse_txid(pt)?)),
            (Some(_), None) => return None,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Fence {
            generation,
            epoch,
            parent,
        })
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}fence/{:016x}",
            generation_prefix(self.generation),
            self.epoch
        )?;
        if let Some((g, t)) = self.parent {
            write!(f, "-{g}-{t}")?;
        }
        f.write_str(".lbfence")
    }
}

/// A parsed object key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A snapshot: the database after transaction `txid`.
    Snapshot {
        /// Generation.
        generation: Generation,
        /// State after this transaction.
        txid: TxId,
        /// When the state was current (Unix ms).
        time_ms: u64,
    },
    /// A segment: transactions `first..=last`.
    Segment {
        /// Generation.
        generation: Generation,
        /// First transaction.
        first: TxId,
        /// Last transaction.
        last: TxId,
        /// When the agent saw the last transaction (Unix ms).
        time_ms: u64,
    },
    /// A pack: consecutive segments, back to back in one object, holding transactions
    /// `first..=last` (see `lifeboat_wal::pack`). Listed with the segments, which it replaces.
    Pack {
        /// Generation.
        generation: Generation,
        /// First transaction.
        first: TxId,
        /// Last transaction.
        last: TxId,
        /// When the agent saw the last transaction (Unix ms).
        time_ms: u64,
    },
}

impl Key {
    /// The generation the object belongs to.
    pub fn generation(&self) -> Generation {
        match *self {
            Key::Snapshot { generation, .. }
            | Key::Segment { generation, .. }
            | Key::Pack { generation, .. } => generation,
        }
    }

    /// Parses a key; `None` for anything that is not a snapshot or segment key.
    pub fn parse(key: &str) -> Option<Key> {
        let rest = key.strip_prefix(GENERATIONS)?;
        let (g, rest) = rest.split_once('/')?;
        let generation = parse_generation(g)?;
        if let Some(name) = rest.strip_prefix("snapshots/") {
            let stem = name.strip_suffix(".lbsnap")?;
            let (t, ms) = stem.split_once('-')?;
            return Some(Key::Snapshot {
                generation,
                txid: parse_txid(t)?,
                time_ms: parse_hex(ms)?,
            });
        }
        if let Some(name) = rest.strip_prefix("segments/") {
            let (stem, pack) = match name.strip_suffix(".lbseg") {
                Some(stem) => (stem, false),
                None => (name.strip_suffix(".lbpack")?, true),
            };
            let mut it = stem.split('-');
            let first = parse_txid(it.next()?)?;
            let last = parse_txid(it.next()?)?;
            let time_ms = parse_hex(it.next()?)?;
            if it.next().is_some() || last < first {
                return None;
            }
            return Some(if pack {
                Key::Pack {
                    generation,
                    first,
                    last,
                    time_ms,
                }
            } else {
                Key::Segment {
                    generation,
                    first,
                    last,
                    time_ms,
                }
            });
        }
        None
    }
}

/// 16 lower-case hex digits, as keys are written: the one spelling (`u64::from_str_radix` alone
/// would also take upper case and a `+` sign, so a foreign object could pass for one of ours
/// under a name that is not the one a reader asks for).
fn parse_hex(s: &str) -> Option<u64> {
    if s.len() != 16
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn parse_generation(s: &str) -> Option<Generation> {
    parse_hex(s).map(Generation)
}

fn parse_txid(s: &str) -> Option<TxId> {
    parse_hex(s).map(TxId)
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Key::Snapshot {
                generation,
                txid,
                time_ms,
            } => write!(
                f,
                "{}{txid}-{time_ms:016x}.lbsnap",
                snapshots_prefix(generation)
            ),
            Key::Segment {
                generation,
                first,
                last,
                time_ms,
            } => write!(
                f,
                "{}{first}-{last}-{time_ms:016x}.lbseg",
                segments_prefix(generation)
            ),
            Key::Pack {
                generation,
                first,
                last,
                time_ms,
            } => write!(
                f,
                "{}{first}-{last}-{time_ms:016x}.lbpack",
                segments_prefix(generation)
            ),
        }
    }
}

/// The generation named by a key under [`GENERATIONS`], if any.
pub fn generation_of(key: &str) -> Option<Generation> {
    parse_generation(key.strip_prefix(GENERATIONS)?.split_once('/')?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let keys = [
            Key::Snapshot {
                generation: Generation(0xabc),
                txid: TxId(5),
                time_ms: 1_700_000_000_000,
            },
            Key::Segment {
                generation: Generation(0xabc),
                first: TxId(6),
                last: TxId(9),
                time_ms: 1_700_000_000_123,
            },
            Key::Pack {
                generation: Generation(0xabc),
                first: TxId(6),
                last: TxId(30),
                time_ms: 1_700_000_000_456,
            },
        ];
        for k in keys {
            let s = k.to_string();
            assert_eq!(Key::parse(&s), Some(k), "{s}");
            assert_eq!(generation_of(&s), Some(Generation(0xabc)));
        }
    }

    #[test]
    fn pruning_markers_round_trip_and_are_no_object_key() {
        let k = pruning_marker(Generation(0xabc));
        assert_eq!(k, "generations/0000000000000abc/pruning");
        assert_eq!(parse_pruning_marker(&k), Some(Generation(0xabc)));
        assert_eq!(Key::parse(&k), None);
        assert_eq!(
            parse_pruning_marker("generations/0000000000000abc/segments/pruning"),
            None
        );
    }

    #[test]
    fn listing_order_is_txid_order() {
        let a = Key::Segment {
            generation: Generation(1),
            first: TxId(9),
            last: TxId(15),
            time_ms: 2,
        }
        .to_string();
        let b = Key::Segment {
            generation: Generation(1),
            first: TxId(16),
            last: TxId(16),
            time_ms: 1,
        }
        .to_string();
        assert!(a < b);
        // A pack of 9..12 lists after the segment 9..9 it holds and before 13..13.
        let seg = |first, last| {
            Key::Segment {
                generation: Generation(1),
                first: TxId(first),
                last: TxId(last),
                time_ms: 5,
            }
            .to_string()
        };
        let pack = Key::Pack {
            generation: Generation(1),
            first: TxId(9),
            last: TxId(12),
            time_ms: 5,
        }
        .to_string();
        assert!(pack.ends_with(".lbpack"));
        assert!(seg(9, 9) < pack && pack < seg(13, 13));
    }

    #[test]
    fn drill_reports_live_outside_generations() {
        let k = drill_report(0x18f_0000_0001);
        assert_eq!(k, "drills/0000018f00000001.json");
        assert!(!k.starts_with(GENERATIONS));
        assert_eq!(Key::parse(&k), None);
    }

    #[test]
    fn folder_keys_round_trip_and_sort_by_position() {
        let a = ManifestKey {
            generation: Generation(0xabc),
            txid: TxId(9),
            seq: 3,
        };
        let b = ManifestKey { seq: 4, ..a };
        let c = ManifestKey {
            txid: TxId(16),
            seq: 1,
            ..a
        };
        for m in [a, b, c] {
            let k = m.key("uploads");
            assert_eq!(ManifestKey::parse("uploads", &k), Some(m), "{k}");
            assert_eq!(folder_of(&k), Some("uploads"));
            assert_eq!(Key::parse(&k), None);
            assert_eq!(generation_of(&k), None);
        }
        assert!(a.key("u") < b.key("u") && b.key("u") < c.key("u"));
        assert_eq!(ManifestKey::parse("other", &a.key("uploads")), None);
        let h = "ab".repeat(32);
        assert_eq!(parse_blob(&blob(&h, 42)), Some((h.as_str(), 42)));
        assert_eq!(parse_blob(&format!("files/blobs/{h}")), None);
        assert_eq!(parse_blob("files/blobs/xyz-000000000000002a"), None);
        assert!(valid_folder_name("uploads-2.x") && !valid_folder_name("blobs"));
        assert!(
            !valid_folder_name("a/b") && !valid_folder_name(".hidden") && !valid_folder_name("")
        );
    }

    #[test]
    fn fences_round_trip_and_are_not_data_keys() {
        for parent in [None, Some((Generation(7), TxId(42)))] {
            let f = Fence {
                generation: Generation(0xabc),
                epoch: 3,
                parent,
            };
            let s = f.to_string();
            assert_eq!(Fence::parse(&s), Some(f), "{s}");
            assert_eq!(Key::parse(&s), None);
            assert_eq!(generation_of(&s), Some(Generation(0xabc)));
        }
        assert_eq!(
            Fence::parse(
                "generations/0000000000000abc/fence/0000000000000003-0000000000000007.lbfence"
            ),
            None
        );
        assert!(!LEASE.starts_with(GENERATIONS) && !HANDOFF.starts_with(GENERATIONS));
    }

    #[test]
    fn rejects_foreign_keys() {
        for k in [
            "generations/xyz/segments/a.lbseg",
            "other/file",
            "generations/0000000000000001/segments/0000000000000002-0000000000000001-0000000000000000.lbseg",
            "generations/0000000000000001/snapshots/0000000000000002.lbsnap",
        ] {
            assert_eq!(Key::parse(k), None, "{k}");
        }
    }
}
