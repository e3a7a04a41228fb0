//! Shipping folders to replicas, in step with the database.
//!
//! The agent calls [`DirShipper::flush`] for a replica after it has read the next database
//! commits from the WAL and before it uploads them. The flush captures each folder (a file
//! written before those commits is on disk by then), uploads the blobs it lacks and a manifest
//! tagged with the last of those commits, and only then does the database upload go ahead. So a
//! file written before a commit is in every restore at or after that commit.
//!
//! Deletions wait: a path seen gone is removed from the chain only at a later flush whose
//! database read was *complete* (everything committed by then was read). A file deleted after
//! the commit that stopped referring to it is therefore still in every restore point before that
//! commit (the proof is in `docs/format.md`).
//!
//! Blob uploads are create-only and content-addressed: the file is copied to a staging file
//! while it is hashed, and uploaded only if the copy has the hash the capture saw (otherwise it
//! changed meanwhile and is captured again). Memory stays bounded: 64 KiB buffers, and S3's
//! multipart upload for large files (the storage backend's `put_file`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_storage::keys::{self, ManifestKey};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use tokio::runtime::Handle;
use tracing::{debug, info};

use crate::entry::{sha256_of, Entry};
use crate::folder::Folder;
use crate::manifest::{self, Manifest, State, FORMAT};
use crate::{Error, Result};

/// Tuning.
#[derive(Clone, Debug)]
pub struct DirOptions {
    /// How long a file must stay unchanged before it is taken (default 200 ms).
    pub settle: Duration,
    /// How long a flush waits for files still being written (default 2 s); what is still
    /// changing then goes in a later flush.
    pub wait: Duration,
    /// Full rescan of each folder this often, as a fallback to events (default 60 s).
    pub rescan_every: Duration,
    /// A base manifest (the whole state) after this many deltas (default 100).
    pub base_every: u64,
    /// Where blob copies are staged for upload.
    pub staging_dir: PathBuf,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions {
            settle: Duration::from_millis(200),
            wait: Duration::from_secs(2),
            rescan_every: Duration::from_secs(60),
            base_every: 100,
            staging_dir: std::env::temp_dir(),
        }
    }
}

/// A folder to back up: where it is, and its name in the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirSpec {
    /// The folder.
    pub path: PathBuf,
    /// Its name in the replica's keys.
    pub name: String,
}

impl DirSpec {
    /// `PATH` (named after its last component) or `NAME=PATH`.
    pub fn parse(s: &str) -> Result<DirSpec> {
        let (name, path) = match s.split_once('=') {
            Some((n, p)) if keys::valid_folder_name(n) => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(s);
                let n = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                (n, p)
            }
        };
        if !keys::valid_folder_name(&name) {
            return Err(Error::Config(format!(
                "folder {s:?}: its name {name:?} cannot be used in object keys (use NAME=PATH with NAME of A-Z a-z 0-9 . _ -)"
            )));
        }
        Ok(DirSpec { path, name })
    }

    /// Parses several, refusing two with one name.
    pub fn parse_all<'a>(v: impl IntoIterator<Item = &'a str>) -> Result<Vec<DirSpec>> {
        let mut out: Vec<DirSpec> = Vec::new();
        for s in v {
            let d = DirSpec::parse(s)?;
            if out.iter().any(|x| x.name == d.name) {
                return Err(Error::Config(format!(
                    "two folders are named {:?}; name one with NAME=PATH",
                    d.name
                )));
            }
            out.push(d);
        }
        Ok(out)
    }
}

/// What a flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Blobs uploaded.
    pub blobs: u64,
    /// Bytes of blobs uploaded.
    pub blob_bytes: u64,
    /// Manifests written.
    pub manifests: u64,
    /// Whether a file was still being written and was left for a later flush.
    pub unsettled: bool,
}

/// A chain in one replica, as this process knows it.
#[derive(Debug, Default)]
struct Chain {
    state: State,
    last: Option<ManifestKey>,
    deltas: u64,
    known: HashSet<String>,
    /// Paths seen gone, with the flush that first saw them.
    gone: BTreeMap<String, u64>,
    flushes: u64,
    synced: Option<u64>,
}

struct Shipping {
    folder: Folder,
    chains: Vec<Option<Chain>>,
}

/// Ships a database's folders to its replicas (see the module docs).
pub struct DirShipper {
    folders: Vec<Mutex<Shipping>>,
    clients: Vec<Arc<dyn ReplicaClient>>,
    opts: DirOptions,
    rt: Handle,
}

impl std::fmt::Debug for DirShipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirShipper")
            .field("folders", &self.folders.len())
            .finish()
    }
}

impl DirShipper {
    /// Starts watching the folders (created if missing); nothing is read from the replicas
    /// until the first flush.
    pub fn open(
        dirs: &[DirSpec],
        clients: Vec<Arc<dyn ReplicaClient>>,
        opts: DirOptions,
        rt: Handle,
    ) -> Result<DirShipper> {
        let mut folders = Vec::new();
        for d in dirs {
            let folder = Folder::open(&d.path, &d.name, opts.settle, opts.rescan_every)?;
            info!(folder = %folder.root().display(), name = %d.name, "backing up folder with the database");
            folders.push(Mutex::new(Shipping {
                folder,
                chains: clients.iter().map(|_| None).collect(),
            }));
        }
        Ok(DirShipper {
            folders,
            clients,
            opts,
            rt,
        })
    }

    /// Makes replica `replica` hold every folder as it is now, tagged with the database position
    /// `(generation, txid)` about to be shipped. `complete`: the database read that ended at that
    /// position took everything committed at the time (lets deletions seen earlier take effect).
    /// On an error nothing of the database may be shipped to that replica.
    pub fn flush(
        &self,
        replica: usize,
        generation: Generation,
        txid: TxId,
        complete: bool,
    ) -> Result<FlushReport> {
        let mut report = FlushReport::default();
        let client = self.clients[replica].clone();
        for f in &self.folders {
            let mut s = f.lock().unwrap();
            let s = &mut *s;
            if !s.folder.capture_settled(self.opts.wait)? {
                report.unsettled = true;
            }
            if s.chains[replica].is_none() {
                s.chains[replica] = Some(self.rt.block_on(load(client.as_ref(), s.folder.name()))?);
            }
            let r = flush_one(
                &mut s.folder,
                s.chains[replica].as_mut().expect("loaded above"),
                client.as_ref(),
                &self.opts,
                &self.rt,
                (generation, txid, complete),
            );
            match r {
                Ok(x) => {
                    report.blobs += x.blobs;
                    report.blob_bytes += x.blob_bytes;
                    report.manifests += x.manifests;
                }
                Err(e) => {
                    // What landed is unknown: read the chain again next time.
                    s.chains[replica] = None;
                    return Err(e);
                }
            }
        }
        Ok(report)
    }
}

/// Reads a folder's chain from a replica: its newest manifest, the state after it.
async fn load(client: &dyn ReplicaClient, folder: &str) -> Result<Chain> {
    let keys = manifest::list(client, folder).await?;
    let Some(last) = keys.len().checked_sub(1) else {
        return Ok(Chain::default());
    };
    let chain = manifest::chain_to(client, folder, &keys, last).await?;
    let state = manifest::replay(chain.iter().map(|(_, m)| m));
    let known = state
        .values()
        .chain(&chain.last().expect("not empty").1.removed)
        .filter_map(|e| e.sha256().map(str::to_string))
        .collect();
    Ok(Chain {
        state,
        last: Some(keys[last]),
        deltas: chain.len() as u64 - 1,
        known,
        ..Chain::default()
    })
}

fn flush_one(
    folder: &mut Folder,
    c: &mut Chain,
    client: &dyn ReplicaClient,
    opts: &DirOptions,
    rt: &Handle,
    (generation, txid, complete): (Generation, TxId, bool),
) -> Result<FlushReport> {
    let mut report = FlushReport::default();
    c.flushes += 1;
    if c.synced == Some(folder.version()) && c.gone.is_empty() {
        return Ok(report);
    }
    let now = folder.state();
    for p in c.state.keys().filter(|p| !now.contains_key(*p)) {
        c.gone.entry(p.clone()).or_insert(c.flushes);
    }
    c.gone.retain(|p, _| !now.contains_key(p));
    let mut set: Vec<Entry> = now
        .values()
        .filter(|e| c.state.get(&e.path) != Some(e))
        .cloned()
        .collect();
    // Blobs first: a manifest never names a blob that is not stored.
    let mut changed_meanwhile = Vec::new();
    for e in &set {
        let Some(h) = e.sha256() else { continue };
        if c.known.contains(h) {
            continue;
        }
        match upload_blob(folder, e, client, opts, rt)? {
            Some(n) => {
                report.blobs += 1;
                report.blob_bytes += n;
                c.known.insert(h.to_string());
            }
            None => changed_meanwhile.push(e.path.clone()),
        }
    }
    for p in &changed_meanwhile {
        folder.invalidate(p);
    }
    set.retain(|e| !changed_meanwhile.contains(&e.path));
    let removed: Vec<Entry> = if complete {
        c.gone
            .iter()
            .filter(|(_, &seen)| seen < c.flushes)
            .filter_map(|(p, _)| c.state.get(p).cloned())
            .collect()
    } else {
        Vec::new()
    };
    if set.is_empty() && removed.is_empty() {
        if changed_meanwhile.is_empty() && c.gone.is_empty() {
            c.synced = Some(folder.version());
        }
        return Ok(report);
    }
    let seq = c.last.map_or(1, |k| k.seq + 1);
    let base = c.last.is_none() || c.deltas + 1 >= opts.base_every;
    let mut next = c.state.clone();
    for e in &removed {
        next.remove(&e.path);
    }
    for e in &set {
        next.insert(e.path.clone(), e.clone());
    }
    let m = Manifest {
        format: FORMAT,
        folder: folder.name().to_string(),
        seq,
        generation: generation.to_string(),
        txid: txid.to_string(),
        time_ms: now_ms(),
        prev: if base { None } else { c.last.map(|k| k.seq) },
        set: if base {
            next.values().cloned().collect()
        } else {
            set
        },
        removed,
    };
    let k = manifest::key_at(generation, txid, seq);
    let key = k.key(folder.name());
    let body = m.encode();
    let size = body.len();
    rt.block_on(lifeboat_storage::retry::retry(
        policy(),
        "manifest upload",
        || client.put(&key, body.clone()),
    ))
    .map_err(|e| Error::storage(format!("put {key} to {}", client.describe()), e))?;
    debug!(key = %key, bytes = size, set = m.set.len(), removed = m.removed.len(), "folder manifest uploaded");
    for e in &m.removed {
        c.gone.remove(&e.path);
    }
    c.state = next;
    c.last = Some(k);
    c.deltas = if base { 0 } else { c.deltas + 1 };
    report.manifests = 1;
    if changed_meanwhile.is_empty() && c.gone.is_empty() {
        c.synced = Some(folder.version());
    }
    Ok(report)
}

/// Copies the file to a staging file while hashing it and uploads the copy if it has the
/// captured hash; `None` if the file changed since it was captured.
fn upload_blob(
    folder: &Folder,
    e: &Entry,
    client: &dyn ReplicaClient,
    opts: &DirOptions,
    rt: &Handle,
) -> Result<Option<u64>> {
    let src = folder.root().join(&e.path);
    let want = e.sha256().expect("a file");
    let mut staged = tempfile::Builder::new()
        .prefix("lifeboat-blob-")
        .tempfile_in(&opts.staging_dir)
        .map_err(|x| Error::io("create staging file in", &opts.staging_dir, x))?;
    let copied = match std::fs::File::open(&src) {
        Ok(f) => sha256_of(f, Some(staged.as_file_mut()))
            .map_err(|x| Error::io("copy to staging", &src, x))?,
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(x) => return Err(Error::io("open", &src, x)),
    };
    if copied.0 != want {
        return Ok(None);
    }
    let key = keys::blob(want);
    rt.block_on(lifeboat_storage::retry::retry(
        policy(),
        "blob upload",
        || client.put_file(&key, staged.path()),
    ))
    .map_err(|x| {
        Error::storage(
            format!("put {key} ({}) to {}", src.display(), client.describe()),
            x,
        )
    })?;
    Ok(Some(copied.1))
}

fn policy() -> lifeboat_storage::retry::RetryPolicy {
    lifeboat_storage::retry::RetryPolicy {
        attempts: 3,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
