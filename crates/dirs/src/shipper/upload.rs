//! Uploading a chain's pending entries: the blobs they need, then the manifest that names them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use lifeboat_storage::keys;
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use tokio::runtime::Handle;
use tracing::debug;

use super::{now_ms, Chain};
use crate::entry::{sha256_of, Entry};
use crate::folder::Folder;
use crate::manifest::{self, Manifest, FORMAT};
use crate::{DirOptions, Error, Result};

/// Uploads the blobs `pending` needs that the replica lacks. An entry whose file changed or
/// went before its content could be read is dropped (a newer capture replaces it).
pub(super) fn upload_pending(
    folder: &mut Folder,
    c: &mut Chain,
    client: &dyn ReplicaClient,
    opts: &DirOptions,
    rt: &Handle,
) -> Result<(u64, u64)> {
    let (mut n, mut bytes) = (0, 0);
    let mut lost = Vec::new();
    c.expire(reuse_within(opts), now_ms());
    let mut created = BTreeMap::new();
    for e in c.pending.values() {
        let Some(h) = e.sha256() else { continue };
        if c.holds(h) || created.contains_key(h) {
            continue;
        }
        let t = now_ms();
        match upload_blob(folder, e, t, client, opts, rt)? {
            Some(size) => {
                n += 1;
                bytes += size;
                created.insert(h.to_string(), t);
            }
            None => lost.push(e.path.clone()),
        }
    }
    c.fresh.extend(created);
    for p in lost {
        debug!(path = %p, "changed or removed before its content was stored; captured again");
        c.pending.remove(&p);
        folder.invalidate(&p);
        c.seen = None;
    }
    Ok((n, bytes))
}

/// Writes the next manifest if anything changed; returns how many were written (0 or 1).
pub(super) fn write_manifest(
    folder: &Folder,
    c: &mut Chain,
    client: &dyn ReplicaClient,
    rt: &Handle,
    opts: &DirOptions,
    (generation, txid, complete): (Generation, TxId, bool),
) -> Result<u64> {
    c.flushes += 1;
    let now = folder.state();
    let mut next = c.state.clone();
    for e in c.pending.values() {
        next.insert(e.path.clone(), e.clone());
    }
    for p in next.keys().filter(|p| !now.contains_key(*p)) {
        c.gone.entry(p.clone()).or_insert(c.flushes);
    }
    c.gone.retain(|p, _| !now.contains_key(p));
    let removed: Vec<Entry> = match complete {
        true => c
            .gone
            .iter()
            .filter(|(_, &seen)| seen < c.flushes)
            .filter_map(|(p, _)| next.get(p).cloned())
            .collect(),
        false => Vec::new(),
    };
    if c.pending.is_empty() && removed.is_empty() {
        return Ok(0);
    }
    for e in &removed {
        next.remove(&e.path);
    }
    let seq = c.last.map_or(1, |k| k.seq + 1);
    let k = manifest::key_at(generation, txid, seq);
    let key = k.key(folder.name());
    let base = c.last.is_none() || c.needs_base || c.deltas + 1 >= opts.base_every;
    let set: Vec<Entry> = if base {
        next.values().cloned().collect()
    } else {
        c.pending.values().cloned().collect()
    };
    // Every blob named is live, or created by this process recently enough that retention
    // cannot have chosen it for deletion (see `prune`); else the next flush uploads it again.
    let young = now_ms().saturating_sub(reuse_within(opts).as_millis() as u64);
    let mut blobs = BTreeMap::new();
    for e in set.iter().chain(&removed) {
        let Some(h) = e.sha256() else { continue };
        match (c.live.get(h), c.fresh.get(h)) {
            (Some(t), _) => blobs.insert(h.to_string(), *t),
            (None, Some(t)) if *t > young => blobs.insert(h.to_string(), *t),
            _ => {
                return Err(Error::Missing {
                    key: format!("{}{h}-...", keys::BLOBS),
                    replica: client.describe(),
                    needed_by: format!("{key} (for {}; uploaded again by the next flush)", e.path),
                })
            }
        };
    }
    let m = Manifest {
        format: FORMAT,
        folder: folder.name().to_string(),
        seq,
        generation: generation.to_string(),
        txid: txid.to_string(),
        time_ms: now_ms(),
        prev: if base { None } else { c.last.map(|k| k.seq) },
        set,
        removed,
        blobs,
    };
    let body = m.encode();
    rt.block_on(lifeboat_storage::retry::retry(
        policy(),
        "manifest upload",
        || client.put(&key, body.clone()),
    ))
    .map_err(|e| Error::storage(format!("put {key} to {}", client.describe()), e))?;
    debug!(key = %key, bytes = body.len(), set = m.set.len(), removed = m.removed.len(), "folder manifest uploaded");
    for e in &m.removed {
        c.gone.remove(&e.path);
    }
    c.pending.clear();
    c.live = next
        .values()
        .filter_map(|e| e.sha256())
        .filter_map(|h| c.blob_time(h).map(|t| (h.to_string(), t)))
        .collect();
    c.fresh.retain(|h, _| !c.live.contains_key(h));
    c.state = next;
    c.last = Some(k);
    c.deltas = if base { 0 } else { c.deltas + 1 };
    c.needs_base = false;
    Ok(1)
}

/// Copies the file to a staging file while hashing it and uploads the copy if it has the
/// captured hash; `None` if the file changed since it was captured.
fn upload_blob(
    folder: &Folder,
    e: &Entry,
    created_ms: u64,
    client: &dyn ReplicaClient,
    opts: &DirOptions,
    rt: &Handle,
) -> Result<Option<u64>> {
    let src = folder.root().join(&e.path);
    let want = e.sha256().expect("a file");
    if let Some(staged) = folder.staged(want) {
        put_blob(&src, staged, keys::blob(want, created_ms), client, rt)?;
        return Ok(Some(e.size()));
    }
    let mut staged = tempfile::Builder::new()
        .prefix(&crate::staged_name_prefix())
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
    put_blob(
        &src,
        staged.path(),
        keys::blob(want, created_ms),
        client,
        rt,
    )?;
    Ok(Some(copied.1))
}

/// Uploads the staged copy `staged` of the folder's file `src` as blob `key`.
fn put_blob(
    src: &Path,
    staged: &Path,
    key: String,
    client: &dyn ReplicaClient,
    rt: &Handle,
) -> Result<()> {
    rt.block_on(lifeboat_storage::retry::retry(
        policy(),
        "blob upload",
        || client.put_file(&key, staged),
    ))
    .map_err(|x| {
        Error::storage(
            format!("put {key} ({}) to {}", src.display(), client.describe()),
            x,
        )
    })?;
    Ok(())
}

fn policy() -> lifeboat_storage::retry::RetryPolicy {
    lifeboat_storage::retry::RetryPolicy {
        attempts: 3,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    }
}

/// [`DirOptions::reuse_within`], never more than half of [`crate::prune::GRACE`] (retention's
/// proof that it never deletes a blob a new manifest names rests on that bound).
fn reuse_within(opts: &DirOptions) -> std::time::Duration {
    opts.reuse_within.min(crate::prune::GRACE / 2)
}
