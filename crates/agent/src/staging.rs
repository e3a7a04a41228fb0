//! The staging folder, where snapshots are written before upload (a whole database image each).
//!
//! Staged files are named `lifeboat-snapshot-<pid>-…`, so that a later agent can tell the
//! leftovers of a killed one from a live agent's: each agent, on start, removes those whose
//! process is gone, and never anything else.

use std::path::Path;

use tempfile::NamedTempFile;
use tracing::info;

use crate::{Error, Result};

const PREFIX: &str = "lifeboat-snapshot-";

/// The name prefix of files staged by process `pid`.
fn prefix(pid: u32) -> String {
    format!("{PREFIX}{pid}-")
}

/// A new staging file of this process in `dir`, removed when dropped.
pub(crate) fn stage(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&prefix(std::process::id()))
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("create temp file in {}", dir.display()), e))
}

/// Deletes staged snapshots left in `dir` by agents that are no longer running (killed before
/// they could remove them); returns how many.
pub fn clean_staging(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && std::fs::remove_file(e.path()).is_ok() {
            info!(file = %e.path().display(), "removed a snapshot staged by an agent that is gone");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_agents_snapshots_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mine = stage(dir.path()).unwrap();
        // No process has pid 2^22 + 1 (above Linux's pid_max default of 2^22).
        let dead = dir.path().join(format!("{}x", prefix(4_194_305)));
        let other = dir.path().join("lifeboat-snapshot-notapid");
        std::fs::write(&dead, b"image").unwrap();
        std::fs::write(&other, b"keep").unwrap();
        assert_eq!(clean_staging(dir.path()), 1);
        assert!(!dead.exists() && other.exists() && mine.path().exists());
    }
}
