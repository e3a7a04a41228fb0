//! The staging folder, where snapshots are written before upload (a whole database image each),
//! and the temporary files a restore writes next to its output.
//!
//! Staged files are named `lifeboat-snapshot-<pid>-…` (copies of a backed-up folder's files,
//! `lifeboat-blob-<pid>-…`; a restore's `.lifeboat-restore-<pid>-…`
//! and `.lifeboat-snapshot-<pid>-…`), so that a later process can tell the leftovers of a
//! killed one from a live one's: each agent on start, and each restore in its output folder,
//! removes those whose process is gone, and never anything else.

use std::path::Path;

use tempfile::NamedTempFile;
use tracing::info;

use crate::{Error, Result};

const PREFIX: &str = "lifeboat-snapshot-";

/// A restore's temporary files next to its output: the database being built, and the
/// downloaded snapshot.
pub(crate) const RESTORE_PREFIXES: [&str; 2] = [".lifeboat-restore-", ".lifeboat-snapshot-"];

/// The name prefix of files staged by process `pid`.
fn prefix(pid: u32) -> String {
    format!("{PREFIX}{pid}-")
}

/// A new temporary file of this process in `dir` named `<base><pid>-…`, removed when dropped.
pub(crate) fn temp_named(dir: &Path, base: &str) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!("{base}{}-", std::process::id()))
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("create temp file in {}", dir.display()), e))
}

/// Deletes a killed restore's temporary files in `dir` (see [`RESTORE_PREFIXES`]); returns how
/// many. A restore killed mid-way cannot remove them, and they can be as large as the database.
pub fn clean_restore_leftovers(dir: &Path) -> usize {
    RESTORE_PREFIXES
        .iter()
        .map(|p| {
            clean_named(
                dir,
                p,
                "removed a temporary file left by a restore that is gone",
            )
        })
        .sum()
}

/// A new staging file of this process in `dir`, removed when dropped.
pub(crate) fn stage(dir: &Path) -> Result<NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&prefix(std::process::id()))
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("create temp file in {}", dir.display()), e))
}

/// Deletes staged snapshots and file copies left in `dir` by agents that are no longer running (killed before
/// they could remove them); returns how many.
pub fn clean_staging(dir: &Path) -> usize {
    clean_named(
        dir,
        PREFIX,
        "removed a snapshot staged by an agent that is gone",
    ) + clean_named(
        dir,
        lifeboat_dirs::STAGED_PREFIX,
        "removed a file copy staged by an agent that is gone",
    )
}

/// Deletes the files in `dir` named `<base><pid>-…` whose process is gone.
fn clean_named(dir: &Path, base: &str, what: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(base)) else {
            continue;
        };
        // `<pid>-…` exactly: another tool's random suffix made only of digits is not a pid.
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(p, _)| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && std::fs::remove_file(e.path()).is_ok() {
            info!(file = %e.path().display(), "{what}");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dead_agents_snapshots_and_file_copies_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mine = stage(dir.path()).unwrap();
        // No process has pid 2^22 + 1 (above Linux's pid_max default of 2^22).
        let dead = dir.path().join(format!("{}x", prefix(4_194_305)));
        let other = dir.path().join("lifeboat-snapshot-notapid");
        std::fs::write(&dead, b"image").unwrap();
        std::fs::write(&other, b"keep").unwrap();
        // And the copies of a backed-up folder's files.
        let blob = |pid: u32| {
            let p = dir
                .path()
                .join(format!("{}{pid}-x", lifeboat_dirs::STAGED_PREFIX));
            std::fs::write(&p, b"a receipt").unwrap();
            p
        };
        let (dead_copy, live_copy) = (blob(4_194_305), blob(std::process::id()));
        assert_eq!(clean_staging(dir.path()), 2);
        assert!(!dead.exists() && other.exists() && mine.path().exists());
        assert!(!dead_copy.exists() && live_copy.exists());
    }

    #[test]
    fn a_killed_restores_temporary_files_are_removed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let live = temp_named(dir.path(), RESTORE_PREFIXES[0]).unwrap();
        let dead: Vec<_> = RESTORE_PREFIXES
            .iter()
            .map(|p| dir.path().join(format!("{p}4194305-x")))
            .collect();
        for d in &dead {
            std::fs::write(d, b"half a database").unwrap();
        }
        let app = dir.path().join("app.db");
        std::fs::write(&app, b"keep").unwrap();
        assert_eq!(clean_restore_leftovers(dir.path()), 2);
        assert!(dead.iter().all(|d| !d.exists()));
        assert!(live.path().exists() && app.exists());
    }
}
