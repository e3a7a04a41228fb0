//! Restoring a folder as of a database restore point.
//!
//! The manifest chosen for a database position `(generation, txid)` is the first whose tag is
//! at or after it (captured after that commit), or the newest if none is. The folder restored
//! is that manifest's state plus the entries it removed (see `docs/format.md` for why). It is
//! built in a temporary folder next to the output, every blob checked against its SHA-256,
//! modes, mtimes and links set, everything fsynced, and only then renamed into place. An
//! existing, non-empty output is refused unless `force`, which moves it aside (never deletes it).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use lifeboat_storage::keys::{self, ManifestKey};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use tracing::info;

use crate::entry::{sha256_file, Entry, Kind};
use crate::manifest::{self, State};
use crate::{Error, Result};

/// Blobs downloaded at once.
const PARALLELISM: usize = 8;

/// What a folder restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderRestore {
    /// The folder's name in the replica.
    pub name: String,
    /// The manifest restored.
    pub manifest: ManifestKey,
    /// Files written.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Where an existing folder was moved (with `force`).
    pub moved_aside: Option<PathBuf>,
    /// Wall time.
    pub elapsed: Duration,
}

/// What to restore for a database position: the manifest serving it, the state to restore,
/// and the creation time of the blob holding each content (see [`manifest::blob_times`]).
pub struct Plan {
    /// The manifest.
    pub manifest: ManifestKey,
    /// The entries to create.
    pub state: State,
    /// Blob creation times by SHA-256.
    pub blobs: std::collections::BTreeMap<String, u64>,
}

/// The manifest serving a database position, and the state to restore for it.
pub async fn plan(
    client: &dyn ReplicaClient,
    folder: &str,
    at: Option<(Generation, TxId)>,
) -> Result<Plan> {
    let keys = manifest::list(client, folder).await?;
    if keys.is_empty() {
        return Err(Error::NoBackup {
            folder: folder.to_string(),
            replica: client.describe(),
        });
    }
    let k = at
        .and_then(|(g, t)| keys.iter().position(|k| (k.generation, k.txid) >= (g, t)))
        .unwrap_or(keys.len() - 1);
    let chain = manifest::chain_to(client, folder, &keys, k).await?;
    let mut state = manifest::replay(chain.iter().map(|(_, m)| m));
    for e in &chain.last().expect("not empty").1.removed {
        state.entry(e.path.clone()).or_insert_with(|| e.clone());
    }
    // An entry below a path that is now a file or link cannot be created: drop it.
    let blocked: Vec<String> = state
        .keys()
        .filter(|p| {
            ancestors(p).any(|a| state.get(a).is_some_and(|x| !matches!(x.kind, Kind::Dir)))
        })
        .cloned()
        .collect();
    for p in blocked {
        state.remove(&p);
    }
    Ok(Plan {
        manifest: keys[k],
        state,
        blobs: manifest::blob_times(chain.iter().map(|(_, m)| m)),
    })
}

fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').map(move |(i, _)| &p[..i])
}

/// Where `force` moves an existing folder.
pub fn aside_path(out: &Path) -> PathBuf {
    let ms = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut s = out.as_os_str().to_owned();
    s.push(format!(".before-restore-{ms}"));
    PathBuf::from(s)
}

/// Refuses an existing non-empty `out` unless `force`.
pub fn check_output(out: &Path, force: bool) -> Result<()> {
    if !force && !is_empty_or_missing(out)? {
        return Err(Error::OutputExists {
            path: out.to_path_buf(),
            aside: aside_path(out),
        });
    }
    Ok(())
}

fn is_empty_or_missing(p: &Path) -> Result<bool> {
    match std::fs::read_dir(p) {
        Ok(mut rd) => Ok(rd.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
        Err(e) => Err(Error::io("read folder", p, e)),
    }
}

/// Restores folder `name` into `out` as of database position `at` (`None`: the newest).
pub async fn restore(
    client: &dyn ReplicaClient,
    name: &str,
    at: Option<(Generation, TxId)>,
    out: &Path,
    force: bool,
) -> Result<FolderRestore> {
    let started = Instant::now();
    check_output(out, force)?;
    let Plan {
        manifest: mk,
        state,
        blobs,
    } = plan(client, name, at).await?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io("create folder", parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".lifeboat-restore-")
        .tempdir_in(parent)
        .map_err(|e| Error::io("create temporary folder in", parent, e))?;
    let (mut files, mut bytes) = (0, 0);
    let needed_by = mk.key(name);
    let mut downloads = Vec::new();
    for e in state.values() {
        let p = tmp.path().join(&e.path);
        match &e.kind {
            Kind::Dir => {
                std::fs::create_dir_all(&p).map_err(|x| Error::io("create folder", &p, x))?
            }
            Kind::Symlink { target } => {
                make_parent(&p)?;
                std::os::unix::fs::symlink(target, &p)
                    .map_err(|x| Error::io("create link", &p, x))?;
            }
            Kind::File { sha256, size } => {
                make_parent(&p)?;
                files += 1;
                bytes += size;
                let needed_by = &needed_by;
                // Every manifest of the chain names its blobs (decode refuses one that does
                // not), so a content with no blob here is a broken chain, not a default time.
                let created = *blobs.get(sha256).ok_or_else(|| Error::Corrupt {
                    key: needed_by.clone(),
                    replica: client.describe(),
                    reason: format!(
                        "no blob is named for the content of {:?} in its chain; run `lifeboat \
                         verify`, or restore to another point",
                        e.path
                    ),
                })?;
                downloads.push(async move {
                    fetch_blob(client, sha256, created, *size, &p, needed_by).await?;
                    set_mtime(&p, e)
                });
            }
        }
    }
    // Downloads in parallel, a bounded number at a time (each streams to its file).
    futures::stream::iter(downloads)
        .buffer_unordered(PARALLELISM)
        .try_collect::<Vec<()>>()
        .await?;
    // Modes last (a read-only folder would refuse its children), deepest first.
    for e in state.values().rev() {
        if !matches!(e.kind, Kind::Symlink { .. }) {
            let p = tmp.path().join(&e.path);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))
                .map_err(|x| Error::io("set mode of", &p, x))?;
        }
    }
    sync_tree(tmp.path(), &state)?;
    let moved_aside = match is_empty_or_missing(out)? {
        true => {
            if out.exists() {
                std::fs::remove_dir(out).map_err(|e| Error::io("remove empty folder", out, e))?;
            }
            None
        }
        false => {
            let aside = aside_path(out);
            std::fs::rename(out, &aside).map_err(|e| Error::io("move aside", out, e))?;
            Some(aside)
        }
    };
    let tmp = tmp.keep();
    std::fs::rename(&tmp, out).map_err(|e| Error::io("rename restored folder to", out, e))?;
    fsync(parent)?;
    info!(folder = %out.display(), name, manifest = %mk.key(name), files, bytes, "folder restored");
    Ok(FolderRestore {
        name: name.to_string(),
        manifest: mk,
        files,
        bytes,
        moved_aside,
        elapsed: started.elapsed(),
    })
}

fn make_parent(p: &Path) -> Result<()> {
    let d = p.parent().expect("inside the folder");
    std::fs::create_dir_all(d).map_err(|x| Error::io("create folder", d, x))
}

/// Downloads a blob to `dest` and checks its size and SHA-256.
pub(crate) async fn fetch_blob(
    client: &dyn ReplicaClient,
    sha256: &str,
    created_ms: u64,
    size: u64,
    dest: &Path,
    needed_by: &str,
) -> Result<()> {
    let key = keys::blob(sha256, created_ms);
    let n = client.get_to_file(&key, dest).await.map_err(|e| match e {
        lifeboat_storage::Error::NotFound { .. } => Error::Missing {
            key: key.clone(),
            replica: client.describe(),
            needed_by: needed_by.to_string(),
        },
        e => Error::storage(format!("get {key} from {}", client.describe()), e),
    })?;
    let (h, _) = sha256_file(dest)?;
    if h != sha256 || n != size {
        return Err(Error::Corrupt {
            key,
            replica: client.describe(),
            reason: format!(
                "{n} bytes with SHA-256 {h}; {size} bytes with the SHA-256 in its name were stored"
            ),
        });
    }
    Ok(())
}

fn set_mtime(p: &Path, e: &Entry) -> Result<()> {
    let t = UNIX_EPOCH + Duration::from_nanos(e.mtime_ns.max(0) as u64);
    let f = std::fs::File::options()
        .write(true)
        .open(p)
        .map_err(|x| Error::io("open", p, x))?;
    f.set_modified(t)
        .map_err(|x| Error::io("set mtime of", p, x))
}

fn fsync(p: &Path) -> Result<()> {
    std::fs::File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", p, e))
}

fn sync_tree(root: &Path, state: &State) -> Result<()> {
    for e in state.values() {
        if !matches!(e.kind, Kind::Symlink { .. }) {
            let p = root.join(&e.path);
            // A file or folder whose mode forbids reading cannot be opened to fsync; its data
            // was written by us and is flushed with the file system's next sync.
            if e.mode & 0o400 != 0 {
                fsync(&p)?;
            }
        }
    }
    fsync(root)
}
