//! Retention for folders: keep every manifest and blob that a kept database restore point
//! needs, delete the rest.
//!
//! Given the oldest database position still kept, the manifest that serves it (the first at or
//! after it) and the chain back to its base are kept, with everything after. Older manifests
//! go first; then the manifests are listed again (a running agent may have written more) and
//! every blob that no kept manifest names (as an entry or a removed entry) goes.

use std::collections::{BTreeMap, HashSet};

use lifeboat_storage::keys::{self, ManifestKey};
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

async fn listing(
    client: &dyn ReplicaClient,
) -> Result<(BTreeMap<String, Vec<ManifestKey>>, BTreeMap<String, u64>)> {
    let objs = client
        .list(keys::FILES)
        .await
        .map_err(|e| Error::storage(format!("list {} in {}", keys::FILES, client.describe()), e))?;
    let mut folders: BTreeMap<String, Vec<ManifestKey>> = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    for o in &objs {
        if let Some(h) = keys::parse_blob(&o.key) {
            blobs.insert(h.to_string(), o.size);
        } else if let Some(f) = keys::folder_of(&o.key) {
            if let Some(k) = ManifestKey::parse(f, &o.key) {
                folders.entry(f.to_string()).or_default().push(k);
            }
        }
    }
    for v in folders.values_mut() {
        v.sort();
    }
    Ok((folders, blobs))
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
    let (folders, blobs) = listing(client).await?;
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
            dropped.extend(hashes(&m));
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
    let (folders, _) = listing(client).await?;
    let gone: HashSet<&String> = p.manifests.iter().collect();
    let mut referenced = HashSet::new();
    for (folder, ks) in &folders {
        for k in ks.iter().filter(|k| !gone.contains(&k.key(folder))) {
            referenced.extend(hashes(&manifest::fetch(client, folder, k).await?));
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

fn hashes(m: &manifest::Manifest) -> impl Iterator<Item = String> + '_ {
    m.set
        .iter()
        .chain(&m.removed)
        .filter_map(|e| e.sha256().map(str::to_string))
}
