//! A replica in a local folder (another disk, a mounted network share, a test directory).
//!
//! Every write goes to a temporary file in the target folder, is fsynced, then linked into place
//! with `link(2)`, which fails if the name exists: that makes the write atomic and create-only at
//! once. The temporary name is then removed and the folder fsynced, so a crash leaves either no
//! object or the whole object, never a part. The conditional writes of a lease take a per-key
//! `flock(2)` and keep a version counter (see `conditional`).
//!
//! A replica folder is named by a URL ([`LocalClient::from_url`]): `file:///absolute/folder`
//! (or `file://localhost/absolute/folder`), or `file:relative/folder` for a folder relative to
//! the working directory, said explicitly. `file://name/...` is refused: `name` would be a host,
//! and reading it as a relative folder (as lifeboat once did) puts a replica where nobody looks.

mod conditional;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{ETag, Error, ObjectMeta, PutOutcome, ReplicaClient, Result};
use conditional::{Found, LOCK_PREFIX};

const TMP_PREFIX: &str = ".tmp-";

/// A temporary file older than this is the leftover of a writer that was killed mid-write (no
/// write of one object takes that long); a listing removes it.
const STALE_TMP: Duration = Duration::from_secs(6 * 3600);

/// A replica rooted at a local folder.
#[derive(Clone, Debug)]
pub struct LocalClient {
    root: PathBuf,
}

impl LocalClient {
    /// A client for the folder `root`, created on first write if missing.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalClient { root: root.into() }
    }

    /// The client for a `file:` URL: `file:///absolute/folder`, `file://localhost/absolute/folder`
    /// or `file:relative/folder`, with `%XX` escapes decoded. Anything else is an
    /// [`Error::Config`] that says how to write it.
    pub fn from_url(url: &str) -> Result<LocalClient> {
        Ok(LocalClient::new(file_url_path(url)?))
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|c| c == ".." || c == "." || c.is_empty())
        {
            return Err(Error::Backend {
                op: "resolve",
                key: key.into(),
                message: "invalid object key".into(),
                transient: false,
                source: None,
            });
        }
        Ok(self.root.join(key))
    }
}

/// The folder a `file:` URL names (see [`LocalClient::from_url`]).
pub fn file_url_path(url: &str) -> Result<PathBuf> {
    let bad = |why: &str| {
        Error::config(format!(
            "replica URL {:?} {why}: write file:///absolute/folder for a folder from the \
             root, or file:relative/folder for one relative to the working directory",
            crate::url::redact(url)
        ))
    };
    let Some(rest) = url.strip_prefix("file:") else {
        return Err(bad("is not a file: URL"));
    };
    if rest.contains(['?', '#']) {
        return Err(bad(
            "has a query or fragment (write %3F or %23 for those characters)",
        ));
    }
    let path = if let Some(authority_and_path) = rest.strip_prefix("//") {
        let (host, path) = match authority_and_path.find('/') {
            Some(i) => authority_and_path.split_at(i),
            None => (authority_and_path, ""),
        };
        if host.contains('@') {
            return Err(bad(
                "carries user information; a file: URL names a local folder",
            ));
        }
        if !(host.is_empty() || host == "localhost") {
            return Err(bad(&format!(
                "names host {host:?}; lifeboat reads local folders only (for the folder \
                 /{authority_and_path}, write file:///{authority_and_path})"
            )));
        }
        path
    } else {
        rest
    };
    let path = crate::url::percent_decode(path).map_err(|e| bad(&e))?;
    if path.is_empty() || path.trim_end_matches('/').is_empty() {
        return Err(bad("names no folder (or the root folder)"));
    }
    Ok(PathBuf::from(path))
}

/// A fresh temporary name beside `path`, which listings skip.
fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().expect("file name").to_string_lossy();
    path.with_file_name(format!("{TMP_PREFIX}{name}-{:016x}", rand::random::<u64>()))
}

enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

pub(super) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents, fsyncing each parent of a created folder.
pub(super) fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                fsync_dir(parent)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn same_content(existing: &Path, src: &Source<'_>) -> io::Result<bool> {
    let mut a = File::open(existing)?;
    match src {
        Source::Bytes(b) => {
            if a.metadata()?.len() != b.len() as u64 {
                return Ok(false);
            }
            let mut buf = Vec::with_capacity(b.len());
            a.read_to_end(&mut buf)?;
            Ok(buf == *b)
        }
        Source::File(p) => {
            let mut b = File::open(p)?;
            if a.metadata()?.len() != b.metadata()?.len() {
                return Ok(false);
            }
            let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
            loop {
                let n = a.read(&mut x)?;
                if n == 0 {
                    return Ok(true);
                }
                b.read_exact(&mut y[..n])?;
                if x[..n] != y[..n] {
                    return Ok(false);
                }
            }
        }
    }
}

fn put_blocking(path: &Path, src: Source<'_>) -> io::Result<PutOutcome> {
    let dir = path.parent().expect("object path has a parent");
    create_dirs(dir)?;
    let tmp = temp_name(path);
    let result = (|| {
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        match &src {
            Source::Bytes(b) => f.write_all(b)?,
            Source::File(p) => {
                io::copy(&mut File::open(p)?, &mut f)?;
            }
        }
        f.sync_all()?;
        drop(f);
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(PutOutcome::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if same_content(path, &src)? {
                    Ok(PutOutcome::AlreadyExisted)
                } else {
                    Err(io::Error::new(io::ErrorKind::AlreadyExists, "conflict"))
                }
            }
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    let outcome = result?;
    fsync_dir(dir)?;
    Ok(outcome)
}

/// Lists the objects under `dir` into `out`, and removes the temporary files older than
/// `stale_after` (counted in `removed`).
fn walk(
    root: &Path,
    dir: &Path,
    stale_after: Duration,
    out: &mut Vec<ObjectMeta>,
    removed: &mut usize,
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(LOCK_PREFIX) {
            continue;
        }
        if name.to_string_lossy().starts_with(TMP_PREFIX) {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= stale_after);
            if stale && fs::remove_file(entry.path()).is_ok() {
                *removed += 1;
            }
            continue;
        }
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() {
            walk(root, &path, stale_after, out, removed)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).expect("under root");
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectMeta {
                key,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    op: &'static str,
    key: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T> {
    let key_owned = key.to_string();
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            Err(Error::NotFound { key: key_owned })
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::AlreadyExists && op == "put" => {
            Err(Error::Conflict { key: key_owned })
        }
        Ok(Err(e)) => Err(Error::io(op, key_owned, e)),
        Err(e) => Err(Error::Backend {
            op,
            key: key_owned,
            message: "the worker thread failed".into(),
            transient: false,
            source: Some(Box::new(e)),
        }),
    }
}

#[async_trait]
impl ReplicaClient for LocalClient {
    fn describe(&self) -> String {
        if self.root.is_absolute() {
            format!("file://{}", self.root.display())
        } else {
            format!("file:{}", self.root.display())
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let path = self.path(key)?;
        blocking("put", key, move || {
            put_blocking(&path, Source::Bytes(&data))
        })
        .await
    }

    async fn put_file(&self, key: &str, src: &Path) -> Result<PutOutcome> {
        let path = self.path(key)?;
        let src = src.to_path_buf();
        blocking("put", key, move || put_blocking(&path, Source::File(&src))).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        blocking("get", key, move || fs::read(path).map(Bytes::from)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        blocking("get", key, move || {
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(range.start))?;
            let mut buf = Vec::new();
            f.take(range.end.saturating_sub(range.start))
                .read_to_end(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<u64> {
        let path = self.path(key)?;
        let dest = dest.to_path_buf();
        blocking("get", key, move || {
            let mut src = File::open(path)?;
            let mut out = File::create(dest)?;
            let n = io::copy(&mut src, &mut out)?;
            out.sync_all()?;
            Ok(n)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix_owned = prefix.to_string();
        // Walk only the deepest folder that the prefix names in full.
        let start = match prefix.rfind('/') {
            Some(i) => root.join(&prefix[..i]),
            None => root.clone(),
        };
        blocking("list", prefix, move || {
            let mut out = Vec::new();
            walk(&root, &start, STALE_TMP, &mut out, &mut 0)?;
            out.retain(|o| o.key.starts_with(&prefix_owned));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        blocking("delete", key, move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            fsync_dir(path.parent().expect("parent"))
        })
        .await
    }

    async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize> {
        let root = self.root.clone();
        blocking("clean up", "", move || {
            let mut removed = 0;
            walk(&root, &root, older_than, &mut Vec::new(), &mut removed)?;
            Ok(removed)
        })
        .await
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)> {
        let path = self.path(key)?;
        let found = blocking("get", key, move || conditional::get_versioned(&path)).await?;
        found_or(key, found).map(|(d, t)| (Bytes::from(d), t))
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag> {
        let path = self.path(key)?;
        let found = blocking("put", key, move || conditional::put_if_absent(&path, &data)).await?;
        found_or(key, found)
    }

    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag> {
        let path = self.path(key)?;
        let expected = expected.clone();
        let found = blocking("put", key, move || {
            conditional::put_if_match(&path, &data, &expected)
        })
        .await?;
        match found {
            Found::Missing => Err(Error::Precondition { key: key.into() }),
            f => found_or(key, f),
        }
    }

    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()> {
        let path = self.path(key)?;
        let expected = expected.clone();
        let found = blocking("delete", key, move || {
            conditional::delete_if_match(&path, &expected)
        })
        .await?;
        found_or(key, found)
    }
}

/// A conditional operation's finding as a result.
fn found_or<T>(key: &str, found: Found<T>) -> Result<T> {
    match found {
        Found::Done(v) => Ok(v),
        Found::Missing => Err(Error::NotFound { key: key.into() }),
        Found::Precondition => Err(Error::Precondition { key: key.into() }),
    }
}

#[cfg(test)]
mod tests;
