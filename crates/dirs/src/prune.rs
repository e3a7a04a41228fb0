//! Retention for folders: keep every manifest and blob that a kept database restore point
//! needs, delete the rest.
//!
//! Given the oldest database position still kept, the manifest that serves it (the first at or
//! after it) and the chain back to its base are kept, with everything after. Older manifests
//! go first. Then the manifests are listed again (a running agent may have written more) and a
//! blob goes if no manifest of that listing names it *and* it was created more than [`GRACE`]
//! before the prune started. That also removes blobs no manifest ever named (an agent that died
//! between uploading a file's content and writing the manifest that names it).
//!
//! Why a running agent never names a blob this deletes: an agent names a blob only if (a) its
//! content is in the folder's state after the last manifest, so the newest base or a manifest
//! after it names the blob, and retention never deletes those; or (b) it created the blob itself
//! less than [`DirOptions::reuse_within`](crate::DirOptions) (at most half of [`GRACE`]) ago.
//! A blob deleted here was in the first listing, so created before the prune started, and more
//! than [`GRACE`] before it; a manifest that names it was either listed by the second listing
//! (so the blob is kept) or written after it, hence after the prune started, so by rule (b) the
//! blob was created less than half of [`GRACE`] before that, and by rule (a) some manifest named
//! it before (and was listed): either way a contradiction. Content whose blob is too old to name
//! is uploaded again under a new key (blob keys carry their creation time). The argument takes
//! the agent's and the pruner's clocks to agree within half of [`GRACE`].

use std::collections::HashSet;
use std::time::Duration;

use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use serde::Serialize;
use tracing::info;

use crate::manifest;
use crate::{Error, Result};

/// How old a blob no manifest names must be before retention deletes it.
pub const GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a prune deletes (or would).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FolderPrune {
    /// Manifests deleted.
    pub manifests: Vec<String>,
    /// Blobs deleted.
    pub blobs: Vec<String>,
    /// Bytes of those blobs.
    pub bytes: u64,
}

impl FolderPrune {
    /// Whether it deletes nothing.
    pub fn is_empty(&self) -> bool {
        self.manifests.is_empty() && self.blobs.is_empty()
    }
}

/// Prunes every folder of the replica for database restore points from `keep_from` on, as of
/// `now_ms` (Unix ms, taken before the call: see the module docs).
pub async fn prune(
    client: &dyn ReplicaClient,
    keep_from: (Generation, TxId),
    now_ms: u64,
    dry_run: bool,
) -> Result<FolderPrune> {
    let mut p = FolderPrune::default();
    let manifest::Listing { folders, blobs } = manifest::list_all(client).await?;
    // What each folder's newest chain names stays whatever happens: read first, so that an
    // unchanged replica costs only those reads (not every kept manifest's) each time.
    let mut named_now = HashSet::new();
    for (folder, ks) in &folders {
        for (_, m) in manifest::chain_to(client, folder, ks, ks.len() - 1).await? {
            named_now.extend(m.blob_keys());
        }
    }
    for (folder, ks) in &folders {
        let k = ks
            .iter()
            .position(|k| (k.generation, k.txid) >= keep_from)
            .unwrap_or(ks.len() - 1);
        let chain = manifest::chain_to(client, folder, ks, k).await?;
        let base = ks
            .iter()
            .position(|x| *x == chain[0].0)
            .expect("from the list");
        p.manifests.extend(ks[..base].iter().map(|k| k.key(folder)));
    }
    let cut = now_ms.saturating_sub(GRACE.as_millis() as u64);
    let old: Vec<(&String, &manifest::BlobObject)> = blobs
        .iter()
        .filter(|(k, b)| b.created_ms < cut && !named_now.contains(*k))
        .collect();
    if p.manifests.is_empty() && old.is_empty() {
        return Ok(p);
    }
    if !dry_run {
        for key in &p.manifests {
            client.delete(key).await.map_err(|e| {
                Error::storage(format!("delete {key} from {}", client.describe()), e)
            })?;
        }
    }
    if !old.is_empty() {
        // Listed again: manifests written meanwhile keep their blobs.
        let folders = manifest::list_all(client).await?.folders;
        let gone: HashSet<&String> = p.manifests.iter().collect();
        let mut named = HashSet::new();
        for (folder, ks) in &folders {
            for k in ks.iter().filter(|k| !gone.contains(&k.key(folder))) {
                named.extend(manifest::fetch(client, folder, k).await?.blob_keys());
            }
        }
        for (key, b) in old {
            if !named.contains(key) {
                p.blobs.push(key.clone());
                p.bytes += b.size;
            }
        }
    }
    if !dry_run {
        for key in &p.blobs {
            client.delete(key).await.map_err(|e| {
                Error::storage(format!("delete {key} from {}", client.describe()), e)
            })?;
        }
        info!(replica = %client.describe(), manifests = p.manifests.len(), blobs = p.blobs.len(), bytes = p.bytes, "retention: pruned folder history");
    }
    Ok(p)
}
