//! The agent's own connections to a database and its one-agent lock file: opened small (a
//! thousand databases share one agent's memory), opened lazily, closed when idle.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::{Error, Result};

/// An exclusive advisory lock on `<db>-lifeboat.lock`: one agent per database.
#[derive(Debug)]
pub(super) struct LockFile {
    _file: File,
}

impl LockFile {
    pub(super) fn acquire(db: &Path) -> Result<LockFile> {
        let path = crate::files::sibling(db, "-lifeboat.lock");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("open lock file {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            if holder.trim() == format!("pid {}", std::process::id()) {
                // Not another lifeboat: this one, given the database twice.
                return Err(Error::NotReplicable {
                    path: db.to_path_buf(),
                    problem: "is named twice: this lifeboat process is already replicating it \
                              (list it once, not under two paths nor both on its own and in a \
                              folder of databases)"
                        .into(),
                });
            }
            return Err(Error::AlreadyReplicating {
                db: db.to_path_buf(),
                lock: path,
                holder: holder.trim().to_string(),
            });
        }
        file.set_len(0).ok();
        let _ = file.write_at(format!("pid {}\n", std::process::id()).as_bytes(), 0);
        Ok(LockFile { _file: file })
    }
}

/// Keeps a connection's own memory small: the agent holds three per database, and a thousand
/// databases in one agent must fit in tens of megabytes. No lookaside buffer (SQLite's default
/// gives every connection 48 KiB, all of it touched when the connection opens) and no page
/// memory set aside up front; the page cache's bound is [`limit_cache`], set where pages are
/// read.
fn small_memory(c: &Connection) {
    static NO_BULK_PAGE_CACHE: std::sync::Once = std::sync::Once::new();
    NO_BULK_PAGE_CACHE.call_once(|| {
        // SAFETY: a process-wide setting made once, before this process's first connection of
        // the agent; SQLite answers SQLITE_MISUSE (ignored: the default stays) if it is already
        // initialised. (NULL, 0, 0) asks for no page-cache memory set aside up front, so a
        // connection holds only the pages it has read rather than a bulk of twenty.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<std::ffi::c_void>(),
                0 as std::ffi::c_int,
                0 as std::ffi::c_int,
            );
        }
    });
    // SAFETY: `handle` is this open connection's pointer, used on this thread, before any
    // statement runs (SQLite refuses to change lookaside while any of it is in use, and returns
    // SQLITE_BUSY rather than misbehave). The variadic arguments are the documented
    // (void*, int, int) triple.
    unsafe {
        rusqlite::ffi::sqlite3_db_config(
            c.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        );
    }
}

/// Bounds `c`'s page cache to 64 KiB (the agent reads pages once, in order, or not at all).
/// Called before a statement that reads the schema or the database's pages (a checkpoint, a
/// snapshot), not when a connection opens: the pragma itself makes SQLite read and parse the
/// schema, which the pin (the most often opened connection: once per pass after an idle
/// spell) never needs.
pub(super) fn limit_cache(c: &Connection) {
    let _ = c.execute_batch("PRAGMA cache_size=-64;");
}

pub(super) fn open_conn(path: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(path, "open", e))?;
    small_memory(&c);
    // Closing the agent must not checkpoint or delete the WAL behind the app's back.
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| Error::sqlite(path, "configure", e))?;
    c.busy_timeout(Duration::from_secs(5))
        .map_err(|e| Error::sqlite(path, "configure", e))?;
    c.execute_batch("PRAGMA wal_autocheckpoint=0;")
        .map_err(|e| Error::sqlite(path, "configure", e))?;
    Ok(c)
}

/// A connection opened on first use and closed on request, so that an idle database holds one
/// connection (the pin) instead of three: each costs about 20 KiB, which a thousand databases
/// multiply. SQLite shares one set of file locks per file among a process's connections, so
/// closing one never drops the locks another holds.
pub(super) struct Lazy {
    pub(super) conn: std::cell::RefCell<Option<Connection>>,
}

impl Lazy {
    pub(super) fn new(conn: Option<Connection>) -> Lazy {
        Lazy {
            conn: std::cell::RefCell::new(conn),
        }
    }

    /// The connection, opened now if it is not open.
    pub(super) fn get(&self, path: &Path) -> Result<std::cell::Ref<'_, Connection>> {
        if self.conn.borrow().is_none() {
            let c = open_conn(path)?;
            *self.conn.borrow_mut() = Some(c);
        }
        Ok(std::cell::Ref::map(self.conn.borrow(), |c| {
            c.as_ref().expect("opened above")
        }))
    }

    /// Closes the connection if it is open and outside any transaction.
    pub(super) fn close_if_idle(&self) {
        let mut c = self.conn.borrow_mut();
        if c.as_ref().is_some_and(|c| c.is_autocommit()) {
            *c = None;
        }
    }
}
