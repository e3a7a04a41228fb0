//! Checking what a replica holds for its folders: every manifest (checksum, fields, chain) and
//! every blob (its SHA-256 against its name), and that every blob a manifest names is stored.

use std::collections::BTreeMap;
use std::path::Path;

use lifeboat_storage::keys::ManifestKey;
use lifeboat_storage::ReplicaClient;
use serde::Serialize;

use crate::entry::sha256_file;
use crate::manifest;
use crate::{Error, Result};

/// What [`verify`] found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FolderCheck {
    /// Folder names with manifests.
    pub folders: Vec<String>,
    /// Manifests read.
    pub manifests: usize,
    /// Blobs read and hashed.
    pub blobs: usize,
    /// Bytes of blobs.
    pub bytes: u64,
    /// Every problem, each naming its object.
    pub problems: Vec<String>,
}

/// Reads every folder object of the replica; blobs are hashed through a file in `scratch`.
pub async fn verify(client: &dyn ReplicaClient, scratch: &Path) -> Result<FolderCheck> {
    let manifest::Listing {
        folders: by_folder,
        blobs,
    } = manifest::list_all(client).await?;
    let mut c = FolderCheck::default();
    let mut needed: BTreeMap<String, String> = BTreeMap::new();
    for (folder, ks) in by_folder {
        let mut prev: Option<(ManifestKey, u64)> = None;
        for k in &ks {
            c.manifests += 1;
            match manifest::fetch(client, &folder, k).await {
                Ok(m) => {
                    if let Some((pk, pseq)) = prev {
                        if m.seq != pseq + 1 || m.prev.is_some_and(|p| p != pseq) {
                            c.problems.push(format!(
                                "{}: does not follow {} (two writers on one replica, or a manifest lost)",
                                k.key(&folder),
                                pk.key(&folder)
                            ));
                        }
                    }
                    prev = Some((*k, m.seq));
                    for b in m.blob_keys() {
                        needed.entry(b).or_insert_with(|| k.key(&folder));
                    }
                }
                Err(e) => c.problems.push(e.to_string()),
            }
        }
        c.folders.push(folder);
    }
    for (key, by) in &needed {
        if !blobs.contains_key(key) {
            c.problems
                .push(format!("missing blob {key} (needed by {by})"));
        }
    }
    for (key, b) in &blobs {
        let tmp = tempfile::NamedTempFile::new_in(scratch)
            .map_err(|e| Error::io("create scratch file in", scratch, e))?;
        c.blobs += 1;
        match client.get_to_file(key, tmp.path()).await {
            Ok(n) => {
                c.bytes += n;
                let (got, _) = sha256_file(tmp.path())?;
                if got != b.sha256 {
                    c.problems.push(format!(
                        "corrupt blob {key} in {}: its content has SHA-256 {got}",
                        client.describe()
                    ));
                }
            }
            Err(e) => c.problems.push(format!("cannot read blob {key}: {e}")),
        }
    }
    Ok(c)
}
