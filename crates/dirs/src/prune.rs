//! Retention for folders: keep every manifest and blob that a kept database restore point
//! needs, delete the rest.
//!
//! Given the oldest database position still kept, the manifest that serves it (the first at or
//! after it) and the chain back to its base are kept, with everything after. Older manifests
//! go first; then the manifests are listed again (a running agent may have written more) and
//! every blob that no kept manifest names (as an entry or a removed entry) goes.

use std::collections::HashSet;

use lifeboat_storage::keys;
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use serde::Serialize;
use tracing::info;

use crate::manifest;
use crate::{Error, Result};

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

/// Prunes every folder of the replica for database restore points from `keep_from` on.
///
/// Only blobs named by a deleted manifest are candidates: a blob uploaded by a running agent
/// for a manifest not written yet is never one (unless a deleted manifest named the same
/// content, in the moment between this prune's second listing and its delete).
pub async fn prune(
    client: &dyn ReplicaClient,
    keep_from: (Generation, TxId),
    dry_run: bool,
) -> Result<FolderPrune> {
    let mut p = FolderPrune::default();
    let manifest::Listing { folders, blobs } = manifest::list_all(client).await?;
    let mut dropped = HashSet::new();
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
        for k in &ks[..base] {
            let m = manifest::fetch(client, folder, k).await?;
            dropped.extend(m.blobs().map(str::to_string));
            p.manifests.push(k.key(folder));
        }
    }
    if p.manifests.is_empty() {
        return Ok(p);
    }
    if !dry_run {
        for key in &p.manifests {
            client.delete(key).await.map_err(|e| {
                Error::storage(format!("delete {key} from {}", client.describe()), e)
            })?;
        }
    }
    // Listed again: manifests written meanwhile keep their blobs.
    let folders = manifest::list_all(client).await?.folders;
    let gone: HashSet<&String> = p.manifests.iter().collect();
    let mut referenced = HashSet::new();
    for (folder, ks) in &folders {
        for k in ks.iter().filter(|k| !gone.contains(&k.key(folder))) {
            let m = manifest::fetch(client, folder, k).await?;
            referenced.extend(m.blobs().map(str::to_string));
        }
    }
    for (h, size) in &blobs {
        if dropped.contains(h) && !referenced.contains(h) {
            p.blobs.push(keys::blob(h));
            p.bytes += size;
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
