//! What to back up: a folder and its name in the replica ([`DirSpec`]), and how
//! ([`DirOptions`]).

use std::path::PathBuf;
use std::time::Duration;

use lifeboat_storage::keys;

use crate::{Error, Result};

/// Tuning.
#[derive(Clone, Debug)]
pub struct DirOptions {
    /// How long a file must stay unchanged before it is taken (default 200 ms).
    pub settle: Duration,
    /// How long a flush waits for files still being written (default 2 s); what is still
    /// changing then goes in a later flush.
    pub wait: Duration,
    /// Full rescan of each folder this often, as a fallback to events (default 60 s).
    pub rescan_every: Duration,
    /// A base manifest (the whole state) after this many deltas (default 100).
    pub base_every: u64,
    /// Where blob copies are staged for upload.
    pub staging_dir: PathBuf,
    /// Most bytes of new content kept staged until every replica has it (default 256 MiB).
    pub staging_cap: u64,
    /// A blob this process uploaded is named by a manifest only this long after its upload
    /// (default 12 h, half of [`crate::prune::GRACE`]; never more): older, it is uploaded again
    /// under a new key, because retention may be deleting it.
    pub reuse_within: Duration,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions {
            settle: Duration::from_millis(200),
            wait: Duration::from_secs(2),
            rescan_every: Duration::from_secs(60),
            base_every: 100,
            staging_dir: std::env::temp_dir(),
            staging_cap: 256 << 20,
            reuse_within: crate::prune::GRACE / 2,
        }
    }
}

/// A folder to back up: where it is, and its name in the replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirSpec {
    /// The folder.
    pub path: PathBuf,
    /// Its name in the replica's keys.
    pub name: String,
}

impl DirSpec {
    /// `PATH` (named after its last component) or `NAME=PATH`.
    pub fn parse(s: &str) -> Result<DirSpec> {
        let (name, path) = match s.split_once('=') {
            Some((n, p)) if keys::valid_folder_name(n) => (n.to_string(), PathBuf::from(p)),
            _ => {
                let p = PathBuf::from(s);
                let n = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                (n, p)
            }
        };
        if !keys::valid_folder_name(&name) {
            return Err(Error::Config(format!(
                "folder {s:?}: its name {name:?} cannot be used in object keys (use NAME=PATH with NAME of A-Z a-z 0-9 . _ -)"
            )));
        }
        Ok(DirSpec { path, name })
    }

    /// Parses several, refusing two with one name.
    pub fn parse_all<'a>(v: impl IntoIterator<Item = &'a str>) -> Result<Vec<DirSpec>> {
        let mut out: Vec<DirSpec> = Vec::new();
        for s in v {
            let d = DirSpec::parse(s)?;
            if out.iter().any(|x| x.name == d.name) {
                return Err(Error::Config(format!(
                    "two folders are named {:?}; name one with NAME=PATH",
                    d.name
                )));
            }
            out.push(d);
        }
        Ok(out)
    }
}
