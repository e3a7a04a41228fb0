//! One thing in a folder as a manifest records it (a file with its content's SHA-256, a
//! symbolic link with its target, a sub-folder), and the local facts used to tell whether it
//! changed ([`Stat`]).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Kind {
    /// A regular file; its content is a blob `files/blobs/<sha256>-<created>` (the manifest
    /// names which).
    File {
        /// SHA-256 of the content, 64 lower-case hex digits.
        sha256: String,
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link, recorded and restored as a link, never followed.
    Symlink {
        /// What it points to, as written.
        target: String,
    },
    /// A folder (recorded so that empty folders and their permissions come back).
    Dir,
}

/// A path in the folder and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the folder, `/`-separated, never empty, no `.` or `..` parts.
    pub path: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time of a file, nanoseconds since the Unix epoch (0 for folders and links).
    pub mtime_ns: i64,
}

impl Entry {
    /// A file's size (0 for anything else).
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File { size, .. } => *size,
            _ => 0,
        }
    }

    /// The blob a file needs.
    pub fn sha256(&self) -> Option<&str> {
        match &self.kind {
            Kind::File { sha256, .. } => Some(sha256),
            _ => None,
        }
    }
}

/// What `lstat` says, to notice a change without reading the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    mode: u32,
}

impl Stat {
    /// From metadata.
    pub fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            mode: m.mode(),
        }
    }

    /// Modification time, ns since the epoch.
    pub fn mtime_ns(&self) -> i64 {
        self.mtime_ns
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Whether a relative path is one a manifest may hold (and a restore may create): no empty,
/// `.` or `..` parts, not absolute.
pub fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// SHA-256 of a reader, streamed through a 64 KiB buffer; also copies it to `copy` if given.
pub fn sha256_of(
    mut r: impl Read,
    mut copy: Option<&mut dyn std::io::Write>,
) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        if let Some(w) = copy.as_mut() {
            w.write_all(&buf[..k])?;
        }
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    sha256_of(f, None).map_err(|e| Error::io("read", path, e))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_vector_and_copies() {
        let mut out = Vec::new();
        let (h, n) = sha256_of(&b"abc"[..], Some(&mut out)).unwrap();
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!((n, out.as_slice()), (3, &b"abc"[..]));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for p in ["", "/etc/passwd", "a/../b", "./a", "a//b", "..", "a/"] {
            assert!(!safe_path(p), "{p}");
        }
        assert!(safe_path("a/b.c") && safe_path("..x"));
    }

    #[test]
    fn entries_serialize_with_their_kind() {
        let e = Entry {
            path: "r/1.pdf".into(),
            kind: Kind::File {
                sha256: "00".repeat(32),
                size: 4,
            },
            mode: 0o644,
            mtime_ns: 5,
        };
        let j = serde_json::to_string(&e).unwrap();
        assert!(j.contains("\"kind\":\"file\""), "{j}");
        assert_eq!(serde_json::from_str::<Entry>(&j).unwrap(), e);
    }
}
