//! Manifests: a folder's state over time, as a chain of objects.
//!
//! A manifest is either a *base* (every entry of the folder) or a *delta* on the manifest
//! before it (entries set, entries removed). Its key carries the database position it was
//! captured after ([`ManifestKey`]), so a restore picks its manifests from one listing. The
//! body is JSON followed by a line with the CRC32 of the JSON (8 hex digits); every field is
//! in `docs/format.md`.

use std::collections::BTreeMap;

use bytes::Bytes;
use lifeboat_storage::keys::{self, ManifestKey};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use serde::{Deserialize, Serialize};

use crate::entry::{safe_path, Entry};
use crate::{Error, Result};

/// The folder's entries by path.
pub type State = BTreeMap<String, Entry>;

/// Version written in every manifest.
pub const FORMAT: u32 = 1;

/// One manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The folder's name (as in the key).
    pub folder: String,
    /// Place in the chain (as in the key).
    pub seq: u64,
    /// Generation of the database position (16 hex digits, as in the key).
    pub generation: String,
    /// Transaction of the database position (16 hex digits, as in the key).
    pub txid: String,
    /// When it was captured (Unix ms).
    pub time_ms: u64,
    /// The `seq` of the manifest this one applies to (`None` for a base).
    pub prev: Option<u64>,
    /// Entries added or changed (for a base: every entry).
    pub set: Vec<Entry>,
    /// Entries removed, as they were (a restore to a point this manifest serves brings them
    /// back too: see `docs/format.md`).
    pub removed: Vec<Entry>,
    /// For every content `set` and `removed` name, the creation time of the blob that holds it
    /// (its key is `keys::blob(sha256, time)`).
    pub blobs: BTreeMap<String, u64>,
}

impl Manifest {
    /// Whether it holds the whole state.
    pub fn is_base(&self) -> bool {
        self.prev.is_none()
    }

    /// The bytes stored: JSON, a newline, the JSON's CRC32 in 8 hex digits, a newline.
    pub fn encode(&self) -> Bytes {
        let mut v = serde_json::to_vec(self).expect("a manifest always serializes");
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(format!("\n{crc:08x}\n").as_bytes());
        Bytes::from(v)
    }

    /// Parses and checks a stored manifest against its key.
    pub fn decode(
        folder: &str,
        key: &ManifestKey,
        data: &[u8],
    ) -> std::result::Result<Manifest, String> {
        let body = data.strip_suffix(b"\n").ok_or("no trailing newline")?;
        let split = body
            .iter()
            .rposition(|&b| b == b'\n')
            .ok_or("no checksum line")?;
        let (json, crc) = (&body[..split], &body[split + 1..]);
        let crc = std::str::from_utf8(crc)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
            .ok_or("unreadable checksum line")?;
        if crc32fast::hash(json) != crc {
            return Err("CRC32 mismatch".into());
        }
        let m: Manifest = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!(
                "format {} (this lifeboat reads {FORMAT})",
                m.format
            ));
        }
        if m.folder != folder
            || m.seq != key.seq
            || m.generation != key.generation.to_string()
            || m.txid != key.txid.to_string()
        {
            return Err("its fields do not match its key".into());
        }
        if let Some(e) = m.set.iter().chain(&m.removed).find(|e| !safe_path(&e.path)) {
            return Err(format!("unsafe path {:?}", e.path));
        }
        // A content name becomes part of a blob's key and is compared with the SHA-256 of
        // what is downloaded: anything but the lower-case hex lifeboat writes is refused.
        if let Some(e) = m
            .set
            .iter()
            .chain(&m.removed)
            .find(|e| e.sha256().is_some_and(|h| !is_sha256(h)))
        {
            return Err(format!(
                "{:?} has content name {:?}, not 64 lower-case hex digits",
                e.path,
                e.sha256().unwrap_or_default()
            ));
        }
        if let Some(h) = m.blobs.keys().find(|h| !is_sha256(h)) {
            return Err(format!("blob name {h:?} is not 64 lower-case hex digits"));
        }
        if let Some(e) = m
            .set
            .iter()
            .chain(&m.removed)
            .find(|e| e.sha256().is_some_and(|h| !m.blobs.contains_key(h)))
        {
            return Err(format!("no blob named for {:?}", e.path));
        }
        Ok(m)
    }

    /// The keys of the blobs it names.
    pub fn blob_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.blobs.iter().map(|(h, t)| keys::blob(h, *t))
    }

    /// Applies it to the state before it.
    pub fn apply(&self, state: &mut State) {
        if self.is_base() {
            state.clear();
        }
        for e in &self.removed {
            state.remove(&e.path);
        }
        for e in &self.set {
            state.insert(e.path.clone(), e.clone());
        }
    }
}

/// Whether `h` is a SHA-256 as manifests name contents: 64 lower-case hex digits.
fn is_sha256(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The manifest key for a database position.
pub fn key_at(generation: Generation, txid: TxId, seq: u64) -> ManifestKey {
    ManifestKey {
        generation,
        txid,
        seq,
    }
}

/// One folder's manifests in a replica, in order.
pub async fn list(client: &dyn ReplicaClient, folder: &str) -> Result<Vec<ManifestKey>> {
    let prefix = keys::manifests_prefix(folder);
    let objs = client
        .list(&prefix)
        .await
        .map_err(|e| Error::storage(format!("list {prefix} in {}", client.describe()), e))?;
    let mut v: Vec<ManifestKey> = objs
        .iter()
        .filter_map(|o| ManifestKey::parse(folder, &o.key))
        .collect();
    v.sort();
    Ok(v)
}

/// A blob object in a listing.
pub(crate) struct BlobObject {
    /// The SHA-256 its content must have.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// When its uploader created it (Unix ms, from its key).
    pub created_ms: u64,
}

/// Every folder object of a replica, from one listing of `files/`.
pub(crate) struct Listing {
    /// Each folder's manifests, in order.
    pub folders: BTreeMap<String, Vec<ManifestKey>>,
    /// Every blob, by key.
    pub blobs: BTreeMap<String, BlobObject>,
}

/// Lists every folder's manifests and every blob of a replica (one LIST).
pub(crate) async fn list_all(client: &dyn ReplicaClient) -> Result<Listing> {
    let objs = client
        .list(keys::FILES)
        .await
        .map_err(|e| Error::storage(format!("list {} in {}", keys::FILES, client.describe()), e))?;
    let mut folders: BTreeMap<String, Vec<ManifestKey>> = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    for o in objs {
        if let Some((h, created_ms)) = keys::parse_blob(&o.key) {
            let b = BlobObject {
                sha256: h.to_string(),
                size: o.size,
                created_ms,
            };
            blobs.insert(o.key, b);
        } else if let Some(f) = keys::folder_of(&o.key) {
            if let Some(k) = ManifestKey::parse(f, &o.key) {
                folders.entry(f.to_string()).or_default().push(k);
            }
        }
    }
    for v in folders.values_mut() {
        v.sort();
    }
    Ok(Listing { folders, blobs })
}

/// Downloads and checks one manifest.
pub async fn fetch(client: &dyn ReplicaClient, folder: &str, k: &ManifestKey) -> Result<Manifest> {
    let key = k.key(folder);
    let data = client.get(&key).await.map_err(|e| match e {
        lifeboat_storage::Error::NotFound { .. } => Error::Missing {
            key: key.clone(),
            replica: client.describe(),
            needed_by: format!("the chain of folder {folder:?}"),
        },
        e => Error::storage(format!("get {key} from {}", client.describe()), e),
    })?;
    Manifest::decode(folder, k, &data).map_err(|reason| Error::Corrupt {
        key,
        replica: client.describe(),
        reason,
    })
}

/// Index of the newest base at or before `upto` in `keys` (by fetching backwards).
/// Returns the manifests from it to `upto`, in order, checked as a chain.
pub async fn chain_to(
    client: &dyn ReplicaClient,
    folder: &str,
    keys: &[ManifestKey],
    upto: usize,
) -> Result<Vec<(ManifestKey, Manifest)>> {
    let mut out = Vec::new();
    let mut i = upto;
    loop {
        let m = fetch(client, folder, &keys[i]).await?;
        let base = m.is_base();
        out.push((keys[i], m));
        if base {
            break;
        }
        if i == 0 {
            return Err(Error::Missing {
                key: format!("{}<base>", keys::manifests_prefix(folder)),
                replica: client.describe(),
                needed_by: keys[upto].key(folder),
            });
        }
        i -= 1;
    }
    out.reverse();
    for w in out.windows(2) {
        if w[1].1.prev != Some(w[0].1.seq) || w[1].1.seq != w[0].1.seq + 1 {
            return Err(Error::Corrupt {
                key: w[1].0.key(folder),
                replica: client.describe(),
                reason: format!(
                    "does not follow {} (two writers on one replica, or a manifest lost)",
                    w[0].0.key(folder)
                ),
            });
        }
    }
    Ok(out)
}

/// The state after a chain.
pub fn replay<'a>(chain: impl IntoIterator<Item = &'a Manifest>) -> State {
    let mut s = State::new();
    for m in chain {
        m.apply(&mut s);
    }
    s
}

/// Which blob holds each content a chain names: the creation time the latest manifest naming it
/// gives (a content is held by one blob while it stays in the folder; see `DirShipper`).
pub fn blob_times<'a>(chain: impl IntoIterator<Item = &'a Manifest>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in chain {
        out.extend(m.blobs.iter().map(|(h, t)| (h.clone(), *t)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Kind;

    fn file(p: &str, h: u8) -> Entry {
        Entry {
            path: p.into(),
            kind: Kind::File {
                sha256: format!("{h:02x}").repeat(32),
                size: 1,
            },
            mode: 0o644,
            mtime_ns: 0,
        }
    }

    fn m(seq: u64, prev: Option<u64>, set: Vec<Entry>, removed: Vec<Entry>) -> Manifest {
        Manifest {
            format: FORMAT,
            folder: "up".into(),
            seq,
            generation: Generation(1).to_string(),
            txid: TxId(seq).to_string(),
            time_ms: 0,
            prev,
            blobs: set
                .iter()
                .chain(&removed)
                .filter_map(|e| e.sha256().map(|h| (h.to_string(), 7)))
                .collect(),
            set,
            removed,
        }
    }

    #[test]
    fn encode_decode_checks_crc_and_key() {
        let x = m(3, Some(2), vec![file("a", 1)], vec![]);
        let k = key_at(Generation(1), TxId(3), 3);
        let b = x.encode();
        assert_eq!(Manifest::decode("up", &k, &b).unwrap(), x);
        let mut bad = b.to_vec();
        let i = bad.iter().position(|&c| c == b'a').unwrap();
        bad[i] = b'b';
        assert!(Manifest::decode("up", &k, &bad)
            .unwrap_err()
            .contains("CRC32"));
        let other = key_at(Generation(1), TxId(4), 3);
        assert!(Manifest::decode("up", &other, &b).is_err());
        let evil = m(3, Some(2), vec![file("../x", 1)], vec![]);
        assert!(Manifest::decode("up", &k, &evil.encode())
            .unwrap_err()
            .contains("unsafe"));
        let mut unnamed = m(3, Some(2), vec![file("a", 1)], vec![]);
        unnamed.blobs.clear();
        assert!(Manifest::decode("up", &k, &unnamed.encode())
            .unwrap_err()
            .contains("no blob named"));
    }

    #[test]
    fn content_names_must_be_lower_case_sha256_hex() {
        let k = key_at(Generation(1), TxId(3), 3);
        let good = "0123456789abcdef".repeat(4);
        for bad in [
            "0123456789ABCDEF".repeat(4),
            "0".repeat(63),
            "0".repeat(65),
            format!("{}g", "0".repeat(63)),
            format!("../{}", "0".repeat(61)),
            String::new(),
        ] {
            // Named by an entry (set or removed), with its blob named too.
            for removed in [false, true] {
                let mut e = file("a", 1);
                e.kind = Kind::File {
                    sha256: bad.clone(),
                    size: 1,
                };
                let (set, rm) = if removed {
                    (vec![], vec![e])
                } else {
                    (vec![e], vec![])
                };
                let x = m(3, Some(2), set, rm);
                assert!(x.blobs.contains_key(&bad));
                let err = Manifest::decode("up", &k, &x.encode()).unwrap_err();
                assert!(err.contains("not 64 lower-case hex digits"), "{err}");
                assert!(err.contains(&format!("{bad:?}")), "{err}");
            }
            // Only in `blobs`.
            let mut x = m(3, Some(2), vec![file("a", 1)], vec![]);
            x.blobs.insert(bad.clone(), 9);
            let err = Manifest::decode("up", &k, &x.encode()).unwrap_err();
            assert!(err.contains(&format!("blob name {bad:?}")), "{err}");
        }
        let mut x = m(3, Some(2), vec![file("a", 1)], vec![]);
        x.blobs.insert(good, 9);
        assert!(Manifest::decode("up", &k, &x.encode()).is_ok());
    }

    #[tokio::test]
    async fn a_bad_content_name_is_reported_naming_the_manifest() {
        let client = lifeboat_storage::memory::MemoryClient::default();
        let mut x = m(3, Some(2), vec![file("a", 1)], vec![]);
        x.blobs.insert("AB".repeat(32), 9);
        let k = key_at(Generation(1), TxId(3), 3);
        client.put(&k.key("up"), x.encode()).await.unwrap();
        let err = fetch(&client, "up", &k).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains(&k.key("up")), "{err}");
        assert!(err.contains("not 64 lower-case hex digits"), "{err}");
    }

    #[test]
    fn replay_applies_bases_and_deltas() {
        let chain = [
            m(1, None, vec![file("a", 1), file("b", 2)], vec![]),
            m(
                2,
                Some(1),
                vec![file("c", 3), file("a", 4)],
                vec![file("b", 2)],
            ),
        ];
        let s = replay(&chain);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(s["a"], file("a", 4));
        let s = replay([
            &chain[0],
            &chain[1],
            &m(3, None, vec![file("z", 9)], vec![]),
        ]);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["z"]);
    }
}
