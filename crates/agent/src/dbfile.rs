//! What the file at a database path must be before the agent opens it: a regular file that
//! begins with SQLite's header, in WAL mode.
//!
//! The checks read the file's first 100 bytes, without SQLite, so that a mistake is named
//! before anything is changed: a folder ("does not exist" said nothing useful), an empty file
//! or a rollback-journal database (which the agent used to switch to WAL mode silently, a
//! persistent change to how the app's connections use the file). Those two are switched only
//! with [`Options::switch_to_wal`](crate::Options::switch_to_wal).

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// SQLite's magic string, the first 16 bytes of every database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What the header says about a database file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// In WAL mode (file format bytes 18 and 19 are 2).
    Wal,
    /// In rollback-journal mode (bytes 18 and 19 are 1).
    Rollback,
    /// Zero bytes: no app has created the database yet.
    Empty,
}

/// The kind of the database file at `path`, or an error that names what is wrong with it and
/// what to do.
pub fn kind(path: &Path) -> Result<Kind> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NoDatabase(path.to_path_buf()))
        }
        Err(e) => return Err(Error::io(format!("stat database {}", path.display()), e)),
    };
    let refuse = |problem: String| Error::NotReplicable {
        path: path.to_path_buf(),
        problem,
    };
    if meta.is_dir() {
        return Err(refuse(
            "is a folder, not a database file: name the database file in it (such as \
             <folder>/app.db), or replicate every database in it with --dir-of-databases \
             ([[database-folders]] in the configuration file)"
                .into(),
        ));
    }
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    if meta.len() == 0 {
        return Ok(Kind::Empty);
    }
    let mut header = Vec::with_capacity(100);
    std::fs::File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut header))
        .map_err(|e| Error::io(format!("read the header of {}", path.display()), e))?;
    from_header(&header).map_err(refuse)
}

/// The kind a database header (the file's first bytes) says, or what is wrong with it.
pub fn from_header(header: &[u8]) -> std::result::Result<Kind, String> {
    if header.is_empty() {
        return Ok(Kind::Empty);
    }
    if header.len() < 20 || &header[..16] != MAGIC {
        return Err("is not a SQLite database (it does not begin with SQLite's header)".into());
    }
    match (header[18], header[19]) {
        (2, 2) => Ok(Kind::Wal),
        (1, 1) => Ok(Kind::Rollback),
        (w, r) => Err(format!(
            "has file format versions {w} and {r} in its header, which this SQLite does not know"
        )),
    }
}

/// Checks that the agent may open `path`: a WAL database, or (with `switch_to_wal`) one it may
/// switch to WAL mode.
pub fn check(path: &Path, switch_to_wal: bool) -> Result<Kind> {
    let kind = kind(path)?;
    let problem = match kind {
        Kind::Wal => return Ok(kind),
        _ if switch_to_wal => return Ok(kind),
        Kind::Empty => {
            "is empty (0 bytes): no app has created the database yet. Start lifeboat once the \
             app has created it (lifeboat run creates a missing database itself; remove the \
             empty file), or pass --switch-to-wal (switch-to-wal = true in the configuration \
             file) to make it an empty WAL database now"
        }
        Kind::Rollback => {
            "is in rollback-journal mode, and lifeboat replicates WAL-mode databases only. \
             Switching is persistent and changes how the app's connections use the file (a -wal \
             and a -shm file beside it, all connections on one host): pass --switch-to-wal \
             (switch-to-wal = true in the configuration file) to let lifeboat switch it, or \
             switch it yourself with PRAGMA journal_mode=WAL"
        }
    };
    Err(Error::NotReplicable {
        path: path.to_path_buf(),
        problem: problem.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, name: &str, sql: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        rusqlite::Connection::open(&p)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        p
    }

    /// A file `name` in `dir` holding `bytes`.
    fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Why [`check`] refuses `p`.
    fn refusal(p: &Path, switch: bool) -> String {
        check(p, switch).unwrap_err().to_string()
    }

    #[test]
    fn a_folder_is_named_as_a_folder_not_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let e = refusal(dir.path(), false);
        assert!(
            e.contains("is a folder") && e.contains("--dir-of-databases"),
            "{e}"
        );
        assert!(!e.contains("does not exist"), "{e}");
        let e = check(&dir.path().join("nope.db"), true).unwrap_err();
        assert!(matches!(e, Error::NoDatabase(_)), "{e:?}");
    }

    #[test]
    fn a_rollback_database_is_refused_unless_switching_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = db(dir.path(), "r.db", "CREATE TABLE t(x);");
        let e = refusal(&p, false);
        assert!(
            e.contains("rollback-journal") && e.contains("--switch-to-wal"),
            "{e}"
        );
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert_eq!(check(&p, true).unwrap(), Kind::Rollback);
        let w = db(
            dir.path(),
            "w.db",
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x);",
        );
        assert_eq!(check(&w, false).unwrap(), Kind::Wal);
    }

    #[test]
    fn an_empty_file_is_refused_unless_switching_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "e.db", b"");
        let e = refusal(&p, false);
        assert!(
            e.contains("is empty") && e.contains("--switch-to-wal"),
            "{e}"
        );
        assert_eq!(check(&p, true).unwrap(), Kind::Empty);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            dir.path(),
            "x.db",
            b"hello, this is a log file and not a database at all",
        );
        let e = refusal(&p, true);
        assert!(e.contains("is not a SQLite database"), "{e}");
        let mut h = MAGIC.to_vec();
        h.extend([0x10, 0, 7, 7]);
        assert!(from_header(&h).unwrap_err().contains("7 and 7"));
        assert!(from_header(&h[..17]).is_err());
    }
}
