//! Conditional writes in a local folder: the same atomic semantics as S3's `If-None-Match: *`
//! and `If-Match`, for the few objects that coordinate writers (a lease).
//!
//! Each conditionally written object `dir/name` has a lock file `dir/.lock-name`, held with
//! `flock(2)` (exclusive to write, shared to read) for the whole compare-and-write, so two
//! writers (threads or processes, on this host or over NFS where `flock` is emulated with
//! POSIX locks) never both see the same version and both write. The kernel drops the lock when a
//! holder dies, so a crash never leaves the key locked. The lock file also holds a counter, the
//! number of conditional writes the key has had; it is never deleted (it is a few bytes).
//!
//! The version ([`ETag`]) is `"<counter>-<crc32 of the bytes>"`, both in hex: the counter moves
//! on with every write, so a version never comes back even when the bytes do (unlike S3's
//! content-hash ETags); the hash makes a version from a lost counter (a copied folder) unlikely
//! to match by accident. The new content is written to a temporary file, fsynced, and renamed
//! over the object (or linked, for a create, which fails if the name exists even for a writer
//! that does not take the lock); the counter is fsynced before that, so it never goes back.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{create_dirs, fsync_dir, temp_name};
use crate::ETag;

/// Prefix of the lock files; listings skip them.
pub(super) const LOCK_PREFIX: &str = ".lock-";

/// What a conditional operation found, for the caller to turn into a [`crate::Error`].
pub(super) enum Found<T> {
    Done(T),
    /// The object is missing.
    Missing,
    /// The condition failed.
    Precondition,
}

/// The object at `path` with its lock held.
struct Locked {
    path: PathBuf,
    lock: Flock<File>,
    counter: u64,
}

fn lock_path(path: &Path) -> PathBuf {
    let name = path.file_name().expect("object path has a name");
    path.with_file_name(format!("{LOCK_PREFIX}{}", name.to_string_lossy()))
}

fn etag(counter: u64, data: &[u8]) -> ETag {
    ETag::new(format!("{counter:016x}-{:08x}", crc32fast::hash(data)))
}

fn to_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Locked {
    /// Takes the lock of the object at `path` (`exclusive` to write), creating the lock file and
    /// the folders if `create`.
    fn take(path: &Path, exclusive: bool, create: bool) -> io::Result<Locked> {
        if create {
            create_dirs(path.parent().expect("object path has a parent"))?;
        }
        let file = File::options()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(lock_path(path))?;
        let arg = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        let mut lock = Flock::lock(file, arg).map_err(|(_, e)| to_io(e))?;
        let mut text = String::new();
        lock.read_to_string(&mut text)?;
        let counter = text.trim().parse::<u64>().unwrap_or(0);
        Ok(Locked {
            path: path.to_path_buf(),
            lock,
            counter,
        })
    }

    /// The current bytes and version, or `None` if the object is missing.
    fn current(&self) -> io::Result<Option<(Vec<u8>, ETag)>> {
        match fs::read(&self.path) {
            Ok(data) => {
                let tag = etag(self.counter, &data);
                Ok(Some((data, tag)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves the counter on, durably, and returns the new version for `data`.
    fn bump(&mut self, data: &[u8]) -> io::Result<ETag> {
        self.counter += 1;
        let f: &mut File = &mut self.lock;
        f.seek(SeekFrom::Start(0))?;
        f.set_len(0)?;
        f.write_all(format!("{}\n", self.counter).as_bytes())?;
        f.sync_all()?;
        Ok(etag(self.counter, data))
    }

    /// Writes `data` to a fsynced temporary file beside the object.
    fn stage(&self, data: &[u8]) -> io::Result<PathBuf> {
        let tmp = temp_name(&self.path);
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        let written = f.write_all(data).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }
}

/// The object's bytes and version.
pub(super) fn get_versioned(path: &Path) -> io::Result<Found<(Vec<u8>, ETag)>> {
    if !path.parent().is_some_and(Path::is_dir) {
        return Ok(Found::Missing);
    }
    let locked = match Locked::take(path, false, true) {
        Ok(l) => l,
        // A folder this process may only read: nobody writes conditionally through it either.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            return match fs::read(path) {
                Ok(d) => {
                    let tag = etag(0, &d);
                    Ok(Found::Done((d, tag)))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Missing),
                Err(e) => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    Ok(match locked.current()? {
        Some(v) => Found::Done(v),
        None => Found::Missing,
    })
}

/// Creates the object if it is missing (or returns its version if it holds `data`).
pub(super) fn put_if_absent(path: &Path, data: &[u8]) -> io::Result<Found<ETag>> {
    let mut locked = Locked::take(path, true, true)?;
    if let Some((existing, tag)) = locked.current()? {
        return Ok(if existing == data {
            Found::Done(tag)
        } else {
            Found::Precondition
        });
    }
    let tmp = locked.stage(data)?;
    let result = (|| {
        let tag = locked.bump(data)?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(Found::Done(tag)),
            // A writer that does not take the lock (a plain create-only put) got there first.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Found::Precondition),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&tmp);
    let found = result?;
    fsync_dir(path.parent().expect("parent"))?;
    Ok(found)
}

/// Replaces the object if its version is `expected` (or returns its version if it already
/// holds `data`).
pub(super) fn put_if_match(path: &Path, data: &[u8], expected: &ETag) -> io::Result<Found<ETag>> {
    if !path.parent().is_some_and(Path::is_dir) {
        return Ok(Found::Missing);
    }
    let mut locked = Locked::take(path, true, true)?;
    match locked.current()? {
        None => return Ok(Found::Missing),
        Some((_, tag)) if tag == *expected => {}
        Some((existing, tag)) if existing == data => return Ok(Found::Done(tag)),
        Some(_) => return Ok(Found::Precondition),
    }
    let tmp = locked.stage(data)?;
    let result = locked
        .bump(data)
        .and_then(|tag| fs::rename(&tmp, path).map(|()| tag));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let tag = result?;
    fsync_dir(path.parent().expect("parent"))?;
    Ok(Found::Done(tag))
}

/// Deletes the object if its version is `expected`; a missing object is done.
pub(super) fn delete_if_match(path: &Path, expected: &ETag) -> io::Result<Found<()>> {
    if !path.parent().is_some_and(Path::is_dir) {
        return Ok(Found::Done(()));
    }
    let locked = Locked::take(path, true, true)?;
    match locked.current()? {
        None => return Ok(Found::Done(())),
        Some((_, tag)) if tag == *expected => {}
        Some(_) => return Ok(Found::Precondition),
    }
    fs::remove_file(path)?;
    fsync_dir(path.parent().expect("parent"))?;
    drop(locked);
    Ok(Found::Done(()))
}
