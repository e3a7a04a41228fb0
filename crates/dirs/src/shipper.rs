//! Shipping folders to replicas, in step with the database.
//!
//! The agent calls [`DirShipper::flush`] for a replica after it has read the next database
//! commits from the WAL and before it uploads them. The flush captures each folder exactly (a
//! file written before those commits is on disk by then; every known file is stat'ed, so one
//! overwritten in place is seen even before its file-system event arrives, see
//! [`Folder::capture_exact`]), uploads the blobs it lacks and a manifest tagged with the last of
//! those commits, and only then does the database upload go ahead. So a file written before a
//! commit is in every restore at or after that commit. The captures between flushes (on each
//! batch of events, to stage new content early) skip that stat of every file: the events name
//! what changed, and a missed one is caught by the next flush.
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
//!
//! This module keeps each replica's chain and drives the flushes; `upload` (a submodule)
//! uploads a chain's pending blobs and writes its manifests.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_storage::keys::ManifestKey;
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::entry::Entry;
use crate::folder::Folder;
use crate::manifest::{self, State};
use crate::status::{Board, FolderReplicaStatus, FolderStatus};
use crate::{DirOptions, DirSpec, Error, Result};

mod upload;
use upload::{upload_pending, write_manifest};

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
    /// The state after the last manifest.
    state: State,
    last: Option<ManifestKey>,
    deltas: u64,
    /// The blob (its creation time) holding each content in `state`: named by a manifest that
    /// retention keeps (the newest base and what follows), so safe to name again.
    live: HashMap<String, u64>,
    /// Blobs this process created for contents not in `state` yet, with their creation time:
    /// named by a manifest only while younger than [`DirOptions::reuse_within`], because
    /// retention deletes a blob no manifest names once it is older than twice that.
    fresh: HashMap<String, u64>,
    /// Entries captured since the last manifest, kept even if the file is gone since: the
    /// next manifest records them (its deletion waits like any other).
    pending: BTreeMap<String, Entry>,
    /// The folder version `pending` reflects.
    seen: Option<u64>,
    /// Paths seen gone, with the flush that first saw them.
    gone: BTreeMap<String, u64>,
    flushes: u64,
    /// An operation on the replica failed: what landed is unknown, so the chain is read again
    /// before the next use (keeping `pending`, `gone` and `flushes`, which are local facts).
    stale: bool,
    /// The newest chain on the replica cannot be read (damaged, or written by an older
    /// lifeboat): the next manifest is a base, and no blob of the old chain is named again.
    needs_base: bool,
}

struct Shipping {
    folder: Folder,
    chains: Vec<Option<Chain>>,
}

struct Inner {
    folders: Vec<Mutex<Shipping>>,
    clients: Vec<Arc<dyn ReplicaClient>>,
    opts: DirOptions,
    rt: Handle,
    stop: AtomicBool,
    board: Board,
}

/// Ships a database's folders to its replicas (see the module docs).
pub struct DirShipper {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
    wake: SyncSender<()>,
}

impl std::fmt::Debug for DirShipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirShipper")
            .field("folders", &self.inner.folders.len())
            .finish()
    }
}

impl Drop for DirShipper {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl DirShipper {
    /// Starts watching the folders (created if missing) and a thread that captures what
    /// changes as it changes and uploads its content (blobs) ahead of the next flush, so that
    /// a file deleted soon after it was written still reaches the restore points that need it.
    /// Replicas are first read when a flush or that thread needs them.
    pub fn open(
        dirs: &[DirSpec],
        clients: Vec<Arc<dyn ReplicaClient>>,
        opts: DirOptions,
        rt: Handle,
    ) -> Result<DirShipper> {
        let (wake, events) = sync_channel(1);
        let mut folders = Vec::new();
        let mut statuses = Vec::new();
        for d in dirs {
            let mut folder = Folder::open(
                &d.path,
                &d.name,
                opts.settle,
                opts.rescan_every,
                Some(wake.clone()),
            )?;
            folder.set_staging(&opts.staging_dir, opts.staging_cap);
            info!(folder = %folder.root().display(), name = %d.name, "backing up folder with the database");
            statuses.push(FolderStatus {
                name: d.name.clone(),
                path: folder.root().to_path_buf(),
                replicas: clients
                    .iter()
                    .map(|c| FolderReplicaStatus {
                        replica: c.describe(),
                        ..FolderReplicaStatus::default()
                    })
                    .collect(),
                ..FolderStatus::default()
            });
            folders.push(Mutex::new(Shipping {
                folder,
                chains: clients.iter().map(|_| None).collect(),
            }));
        }
        let inner = Arc::new(Inner {
            folders,
            clients,
            opts,
            rt,
            stop: AtomicBool::new(false),
            board: Board::new(statuses),
        });
        let i = inner.clone();
        let thread = std::thread::Builder::new()
            .name("lifeboat folders".into())
            .spawn(move || background(&i, &events))
            .map_err(|e| Error::io("start the folder thread for", PathBuf::from("."), e))?;
        Ok(DirShipper {
            inner,
            thread: Some(thread),
            wake,
        })
    }

    /// The folders' status, shared with readers (the health endpoint, metrics).
    pub fn board(&self) -> Board {
        self.inner.board.clone()
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
        let inner = &*self.inner;
        let mut report = FlushReport::default();
        let client = inner.clients[replica].clone();
        for (fi, f) in inner.folders.iter().enumerate() {
            let started = std::time::Instant::now();
            let mut s = f.lock().unwrap();
            let s = &mut *s;
            let locked = started.elapsed();
            let settled = s.folder.capture_settled(inner.opts.wait);
            inner.board.captured(fi, &s.folder, &settled);
            match settled {
                Ok(settled) => report.unsettled |= !settled,
                Err(e) => {
                    inner.board.failed(fi, replica, &e);
                    return Err(e);
                }
            }
            let captured = started.elapsed();
            let r = (|| {
                let c = chain(
                    &mut s.chains,
                    replica,
                    s.folder.name(),
                    client.as_ref(),
                    &inner.rt,
                )?;
                absorb(&s.folder, c);
                inner.board.pending(fi, replica, c.pending.len());
                let uploaded =
                    upload_pending(&mut s.folder, c, client.as_ref(), &inner.opts, &inner.rt);
                let (n, bytes) = uploaded.inspect(|u| inner.board.uploaded(fi, replica, *u))?;
                report.blobs += n;
                report.blob_bytes += bytes;
                let m = write_manifest(
                    &s.folder,
                    c,
                    client.as_ref(),
                    &inner.rt,
                    &inner.opts,
                    (generation, txid, complete),
                )?;
                inner.board.flushed(fi, replica, m, c.pending.len());
                Ok(m)
            })();
            release(s);
            debug!(folder = %s.folder.name(), lock_ms = locked.as_millis() as u64, capture_ms = (captured - locked).as_millis() as u64, total_ms = started.elapsed().as_millis() as u64, "folder flushed");
            match r {
                Ok(m) => report.manifests += m,
                Err(e) => {
                    inner.board.failed(fi, replica, &e);
                    mark_stale(&mut s.chains, replica);
                    return Err(e);
                }
            }
        }
        Ok(report)
    }
}

/// The chain of replica `i`, read from it if this process has not yet (or again, after a
/// failure).
fn chain<'a>(
    chains: &'a mut [Option<Chain>],
    i: usize,
    folder: &str,
    client: &dyn ReplicaClient,
    rt: &Handle,
) -> Result<&'a mut Chain> {
    if chains[i].as_ref().is_none_or(|c| c.stale) {
        let mut fresh = rt.block_on(load(client, folder))?;
        if let Some(old) = chains[i].take() {
            fresh.pending = old.pending;
            fresh.pending.retain(|p, e| fresh.state.get(p) != Some(e));
            fresh.gone = old.gone;
            fresh.flushes = old.flushes;
        }
        chains[i] = Some(fresh);
    }
    Ok(chains[i].as_mut().expect("loaded above"))
}

/// Marks a chain to be read again (see [`Chain::stale`]).
fn mark_stale(chains: &mut [Option<Chain>], i: usize) {
    if let Some(c) = chains[i].as_mut() {
        c.stale = true;
    }
}

/// Deletes the staged copies every replica has.
fn release(s: &mut Shipping) {
    let chains = &s.chains;
    s.folder.release(|h| {
        chains
            .iter()
            .all(|c| c.as_ref().is_some_and(|c| !c.stale && c.holds(h)))
    });
}

/// Captures on events (and rescans on schedule) between flushes, uploading new content at
/// once. Failures are left for the next flush, which reports them.
fn background(inner: &Inner, events: &Receiver<()>) {
    let mut busy = false;
    loop {
        let wait = if busy {
            inner.opts.settle / 2
        } else {
            inner.opts.rescan_every
        };
        match events.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        busy = false;
        for (fi, f) in inner.folders.iter().enumerate() {
            let mut s = f.lock().unwrap();
            let s = &mut *s;
            let r = s.folder.capture();
            inner.board.captured(fi, &s.folder, &r);
            match r {
                Ok(settled) => busy |= !settled,
                Err(e) => {
                    warn!(folder = %s.folder.root().display(), error = %e, "capture failed; will try again");
                    continue;
                }
            }
            for (i, client) in inner.clients.iter().enumerate() {
                let r = chain(
                    &mut s.chains,
                    i,
                    s.folder.name(),
                    client.as_ref(),
                    &inner.rt,
                )
                .and_then(|c| {
                    absorb(&s.folder, c);
                    inner.board.pending(fi, i, c.pending.len());
                    let u =
                        upload_pending(&mut s.folder, c, client.as_ref(), &inner.opts, &inner.rt)?;
                    inner.board.uploaded(fi, i, u);
                    Ok(())
                });
                if let Err(e) = r {
                    debug!(folder = %s.folder.root().display(), replica = %client.describe(), error = %e, "early upload failed; the next flush tries again");
                    inner.board.failed(fi, i, &e);
                    mark_stale(&mut s.chains, i);
                }
                release(s);
            }
        }
    }
}

/// Reads a folder's chain from a replica: its newest manifest, the state after it.
async fn load(client: &dyn ReplicaClient, folder: &str) -> Result<Chain> {
    let keys = manifest::list(client, folder).await?;
    let Some(last) = keys.len().checked_sub(1) else {
        return Ok(Chain::default());
    };
    let chain = match manifest::chain_to(client, folder, &keys, last).await {
        Ok(chain) => chain,
        // Shipping must not stop on a damaged history (the database's commits wait for the
        // folder's flush): a new chain starts from a base holding the whole folder, with its
        // content uploaded again. Restore points the damaged chain serves stay refused, naming
        // the object.
        Err(e @ (Error::Corrupt { .. } | Error::Missing { .. })) => {
            warn!(
                folder,
                replica = %client.describe(),
                error = %e,
                "the folder's newest manifest chain cannot be read; starting a new chain with a \
                 base (restore points before it that need the damaged chain will be refused; \
                 run `lifeboat verify`)"
            );
            return Ok(Chain {
                last: Some(keys[last]),
                needs_base: true,
                ..Chain::default()
            });
        }
        Err(e) => return Err(e),
    };
    let state = manifest::replay(chain.iter().map(|(_, m)| m));
    let times = manifest::blob_times(chain.iter().map(|(_, m)| m));
    let live = state
        .values()
        .filter_map(|e| e.sha256())
        .filter_map(|h| times.get(h).map(|t| (h.to_string(), *t)))
        .collect();
    Ok(Chain {
        state,
        last: Some(keys[last]),
        deltas: chain.len() as u64 - 1,
        live,
        ..Chain::default()
    })
}

impl Chain {
    /// Whether the replica holds a blob of this content that a manifest may name.
    fn holds(&self, sha256: &str) -> bool {
        self.live.contains_key(sha256) || self.fresh.contains_key(sha256)
    }

    /// The creation time of the blob a manifest names for this content.
    fn blob_time(&self, sha256: &str) -> Option<u64> {
        self.live
            .get(sha256)
            .or_else(|| self.fresh.get(sha256))
            .copied()
    }

    /// Forgets the blobs this process created that are too old to be named now (they are
    /// uploaded again, under a new key, if still needed).
    fn expire(&mut self, within: Duration, now_ms: u64) {
        let cut = now_ms.saturating_sub(within.as_millis() as u64);
        self.fresh.retain(|_, t| *t > cut);
    }
}

/// Adds to `pending` what the folder holds that the chain does not.
fn absorb(folder: &Folder, c: &mut Chain) {
    if c.seen == Some(folder.version()) {
        return;
    }
    for e in folder.state().into_values() {
        if c.state.get(&e.path) != Some(&e) && c.pending.get(&e.path) != Some(&e) {
            c.pending.insert(e.path.clone(), e);
        }
    }
    c.seen = Some(folder.version());
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
