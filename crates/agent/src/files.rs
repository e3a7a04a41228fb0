//! SQLite files on the local disk: names next to a database, folder fsync, hashing a file page by
//! page, `PRAGMA integrity_check`, reading every page through `sqlite_dbpage`, and the mode and
//! owner a restored file takes from the one it replaces.
//!
//! Restore, drill and the replicator each need these; one copy keeps their checks identical (a
//! drill that hashed a file differently from the restore would prove nothing).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use lifeboat_wal::checksum::PageHashes;
use rusqlite::{Connection, OpenFlags};

use crate::{Error, Result};

/// `path` with `suffix` appended to its name (`app.db` → `app.db-wal`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

/// The folder a file is in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Fsyncs a folder, so that renames and new files in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync folder {}", dir.display()), e))
}

/// The per-page hashes of a database file, read page by page, computed independently of any
/// replica. A file that ends inside a page is an error.
pub fn hash_file(path: &Path, page_size: u32) -> Result<PageHashes> {
    let f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let ps = page_size as usize;
    let mut h = PageHashes::new(ps);
    let mut page = vec![0u8; ps];
    let mut pgno = 0u32;
    loop {
        let mut got = 0;
        while got < ps {
            let n = r
                .read(&mut page[got..])
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        if got < ps {
            return Err(Error::Pages {
                path: path.to_path_buf(),
                problem: format!("the file ends inside page {}", pgno + 1),
            });
        }
        pgno += 1;
        h.set_page(pgno, &page);
    }
    Ok(h)
}

/// Opens a database file read-only as immutable: SQLite takes no lock, reads no `-wal`, writes
/// nothing.
pub fn open_immutable(path: &Path) -> Result<Connection> {
    let uri = format!("file:{}?immutable=1", path.display());
    Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| Error::sqlite(path, "open database read-only", e))
}

/// What `PRAGMA integrity_check` says: `["ok"]` for a sound database.
pub fn integrity_rows(c: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = c.prepare("PRAGMA integrity_check")?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Runs `PRAGMA integrity_check` on a database file without writing to it.
pub fn integrity_check(path: &Path) -> Result<()> {
    let c = open_immutable(path)?;
    let rows = integrity_rows(&c).map_err(|e| Error::sqlite(path, "integrity check", e))?;
    if rows != ["ok"] {
        return Err(Error::IntegrityCheck {
            path: path.to_path_buf(),
            problems: rows.join("; "),
        });
    }
    Ok(())
}

/// Hands every page of the database `c` sees (in its current read transaction) to `f`, in order,
/// through SQLite's `sqlite_dbpage`: `(page number, page)`. A page SQLite reports as absent is
/// all zeros. Checks that pages come one after the other, each `page_size` bytes, as many as
/// `PRAGMA page_count`. Returns the number of pages.
pub fn for_each_dbpage(
    c: &Connection,
    path: &Path,
    page_size: u32,
    mut f: impl FnMut(u32, &[u8]) -> Result<()>,
) -> Result<u32> {
    let count: u32 = c
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(|e| Error::sqlite(path, "page count", e))?;
    let mut stmt = c
        .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
        .map_err(|e| Error::sqlite(path, "read pages", e))?;
    let mut rows = stmt
        .query([])
        .map_err(|e| Error::sqlite(path, "read pages", e))?;
    let bad = |problem: String| Error::Pages {
        path: path.to_path_buf(),
        problem,
    };
    let zero = vec![0u8; page_size as usize];
    let mut n = 0u32;
    while let Some(row) = rows
        .next()
        .map_err(|e| Error::sqlite(path, "read pages", e))?
    {
        let pgno: u32 = row
            .get(0)
            .map_err(|e| Error::sqlite(path, "read pages", e))?;
        let data = row
            .get_ref(1)
            .map_err(|e| Error::sqlite(path, "read pages", e))?;
        let bytes = data.as_blob_or_null().ok().flatten().unwrap_or(&[]);
        let page = if bytes.is_empty() { &zero[..] } else { bytes };
        if pgno != n + 1 {
            return Err(bad(format!(
                "sqlite_dbpage returned page {pgno} after page {n}"
            )));
        }
        if page.len() != page_size as usize {
            return Err(bad(format!(
                "page {pgno} has {} bytes, expected {page_size}",
                page.len()
            )));
        }
        n = pgno;
        f(pgno, page)?;
    }
    if n != count {
        return Err(bad(format!("read {n} pages, the database has {count}")));
    }
    Ok(n)
}

/// The permission bits a new database gets when none is replaced: SQLite's own default (0644)
/// less the process's umask, as if the app had created it.
fn new_file_mode() -> u32 {
    // The umask can only be read by setting it (racy with other threads); Linux shows it here.
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022);
    0o644 & !umask
}

/// Gives `file` (a restored database, about to be renamed to `output`) its permission bits:
/// `mode` if given (`--mode`), else those of the file at `output` it replaces, so the app keeps
/// its access, else a new database's (0644 less the umask). Run as root, it also takes the
/// replaced file's owner and group. Returns the mode given.
pub fn take_place_of(file: &File, output: &Path, mode: Option<u32>) -> Result<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let old = std::fs::metadata(output).ok().filter(|m| m.is_file());
    let bits = mode
        .or_else(|| old.as_ref().map(|m| m.mode() & 0o7777))
        .unwrap_or_else(new_file_mode);
    file.set_permissions(std::fs::Permissions::from_mode(bits))
        .map_err(|e| {
            Error::io(
                format!(
                    "set mode {bits:o} on the database restored to {}",
                    output.display()
                ),
                e,
            )
        })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if let Some(m) = old.filter(|_| unsafe { libc::geteuid() } == 0) {
        std::os::unix::fs::fchown(file, Some(m.uid()), Some(m.gid())).map_err(|e| {
            Error::io(
                format!(
                    "give the database restored to {} its owner",
                    output.display()
                ),
                e,
            )
        })?;
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbpage_pages_hash_like_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let c = Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (randomblob(9000));")
            .unwrap();
        let mut h = PageHashes::new(4096);
        let n = for_each_dbpage(&c, &db, 4096, |pgno, p| {
            h.set_page(pgno, p);
            Ok(())
        })
        .unwrap();
        assert!(n >= 3);
        assert_eq!(hash_file(&db, 4096).unwrap().checksum(), h.checksum());
        integrity_check(&db).unwrap();
        assert_eq!(sibling(&db, "-wal"), dir.path().join("a.db-wal"));
        assert_eq!(parent_dir(Path::new("x.db")), Path::new("."));
    }

    /// Regression: restored databases were created 0600, so an app running as another user
    /// (or a group) lost access to the database it had before.
    #[test]
    fn a_restored_file_keeps_the_mode_of_the_one_it_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (out, tmp) = (dir.path().join("app.db"), dir.path().join("tmp"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let f = File::create(&tmp).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .unwrap();
        // Nothing replaced: a new database's mode, never more than 0644.
        let bits = take_place_of(&f, &out, None).unwrap();
        assert_eq!(bits, new_file_mode());
        assert_eq!(bits & !0o644, 0);
        assert_eq!(mode(&tmp), bits);
        std::fs::write(&out, b"old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(take_place_of(&f, &out, None).unwrap(), 0o664);
        assert_eq!(mode(&tmp), 0o664);
        assert_eq!(take_place_of(&f, &out, Some(0o640)).unwrap(), 0o640);
        assert_eq!(mode(&tmp), 0o640);
    }

    #[test]
    fn a_file_ending_inside_a_page_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short");
        std::fs::write(&p, vec![1u8; 4096 + 10]).unwrap();
        assert!(matches!(hash_file(&p, 4096), Err(Error::Pages { .. })));
    }
}
