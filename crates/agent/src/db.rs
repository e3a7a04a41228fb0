//! The agent's side of a live database: its own connections, the WAL pin, checkpoints, and
//! consistent page images.
//!
//! # The pin
//! The agent always holds a read transaction on one of two connections. While a reader holds a
//! WAL read mark greater than zero, SQLite cannot restart or truncate the log, so frames stay in
//! the file until the agent has shipped them. To move the mark forward the agent *hands off*: it
//! begins a read transaction on the other connection before ending the current one, so there is
//! never a moment without a reader. A reader that begins when the log is fully checkpointed takes
//! mark zero; that blocks every checkpoint from copying frames, so the log can then restart at
//! most once, and only from a state the agent has fully read. That is why a WAL restart seen by
//! [`WalFile::check`](crate::walfile::WalFile::check) is a clean continuation.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::sqlite::WalHeader;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::walfile::{Cursor, WalFile};
use crate::{Error, Result};

/// SQLite's checkpoint modes, as lifeboat uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Copy what can be copied without waiting for anyone.
    Passive,
    /// Wait for writers and readers, copy everything, then truncate the WAL to zero bytes.
    Truncate,
}

impl CheckpointMode {
    fn sql(self) -> &'static str {
        match self {
            CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            CheckpointMode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }
}

/// What a checkpoint reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointResult {
    /// Whether it was blocked before finishing.
    pub busy: bool,
    /// Frames in the WAL.
    pub log_frames: i64,
    /// Frames copied into the database so far.
    pub checkpointed: i64,
}

/// An exclusive advisory lock on `<db>-lifeboat.lock`: one agent per database.
#[derive(Debug)]
struct LockFile {
    _file: File,
}

impl LockFile {
    fn acquire(db: &Path) -> Result<LockFile> {
        let mut p = db.as_os_str().to_owned();
        p.push("-lifeboat.lock");
        let path = PathBuf::from(p);
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

/// A database the agent replicates.
pub struct Database {
    path: PathBuf,
    wal: WalFile,
    pins: [Connection; 2],
    active: Option<usize>,
    aux: Connection,
    page_size: u32,
    _lock: LockFile,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .finish()
    }
}

fn open_conn(path: &Path) -> Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(path, "open", e))?;
    // Closing the agent must not checkpoint or delete the WAL behind the app's back.
    c.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| Error::sqlite(path, "configure", e))?;
    c.busy_timeout(Duration::from_secs(5))
        .map_err(|e| Error::sqlite(path, "configure", e))?;
    c.execute_batch("PRAGMA wal_autocheckpoint=0;")
        .map_err(|e| Error::sqlite(path, "configure", e))?;
    Ok(c)
}

impl Database {
    /// Opens `path` for replication: takes the agent lock, switches the database to WAL mode if
    /// it is not already, and pins the WAL.
    pub fn open(path: &Path) -> Result<Database> {
        if !path.is_file() {
            return Err(Error::NoDatabase(path.to_path_buf()));
        }
        let lock = LockFile::acquire(path)?;
        let aux = open_conn(path)?;
        let mode: String = aux
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(path, "read journal mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(db = %path.display(), mode = %mode, "database is not in WAL mode; switching it to WAL");
            let m: String = aux
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(|e| Error::sqlite(path, "switch to WAL mode", e))?;
            if !m.eq_ignore_ascii_case("wal") {
                return Err(Error::NotWal(path.to_path_buf()));
            }
        }
        let page_size: u32 = aux
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(path, "read page size", e))?;
        let mut db = Database {
            path: path.to_path_buf(),
            wal: WalFile::for_db(path),
            pins: [open_conn(path)?, open_conn(path)?],
            active: None,
            aux,
            page_size,
            _lock: lock,
        };
        db.pin()?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The WAL file.
    pub fn wal(&self) -> &WalFile {
        &self.wal
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Moves the pin to the current end of the WAL: begins a read transaction on the idle
    /// connection, then ends the one on the active connection.
    pub fn pin(&mut self) -> Result<()> {
        let next = self.active.map_or(0, |a| 1 - a);
        let c = &self.pins[next];
        c.execute_batch("BEGIN DEFERRED")
            .map_err(|e| Error::sqlite(&self.path, "begin pin", e))?;
        if let Err(e) = c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        }) {
            let _ = c.execute_batch("ROLLBACK");
            return Err(Error::sqlite(&self.path, "pin WAL", e));
        }
        if let Some(a) = self.active {
            self.pins[a]
                .execute_batch("COMMIT")
                .map_err(|e| Error::sqlite(&self.path, "release pin", e))?;
        }
        self.active = Some(next);
        Ok(())
    }

    /// Runs a checkpoint on the auxiliary connection (never holding the pin's connection).
    pub fn checkpoint(&self, mode: CheckpointMode) -> Result<CheckpointResult> {
        self.aux
            .query_row(mode.sql(), [], |r| {
                Ok(CheckpointResult {
                    busy: r.get::<_, i64>(0)? != 0,
                    log_frames: r.get(1)?,
                    checkpointed: r.get(2)?,
                })
            })
            .map_err(|e| Error::sqlite(&self.path, "checkpoint", e))
    }

    /// Pins the database at exactly the current end of committed WAL frames and returns that
    /// position. Takes SQLite's write lock for as long as it takes to read the WAL tail (the
    /// WAL was scanned before taking the lock), never for whole-database work.
    pub fn pin_at_end(&mut self) -> Result<Cursor> {
        let pre = self.scan_to_end(Cursor::empty())?;
        self.aux
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| Error::sqlite(&self.path, "take write lock", e))?;
        let result = (|| -> Result<Cursor> {
            let end = self.scan_to_end(pre)?;
            self.pin()?;
            Ok(end)
        })();
        let rb = self.aux.execute_batch("ROLLBACK");
        let end = result?;
        rb.map_err(|e| Error::sqlite(&self.path, "release write lock", e))?;
        Ok(end)
    }

    /// The end of committed frames, scanning from `from` if it is still in the current cycle.
    fn scan_to_end(&self, from: Cursor) -> Result<Cursor> {
        let Some(h) = self.wal.header().map_err(|e| self.wal_err(e))? else {
            return Ok(Cursor::empty());
        };
        let mut c = if from.same_cycle(&h) {
            from
        } else {
            Cursor::at_start(h)
        };
        loop {
            let b = self
                .wal
                .read_batch(&c, 64 << 20)
                .map_err(|e| self.wal_err(e))?;
            if b.txns.is_empty() {
                return Ok(c);
            }
            c = b.end;
        }
    }

    fn wal_err(&self, e: io::Error) -> Error {
        Error::io(format!("read {}", self.wal.path().display()), e)
    }

    /// Streams every page of the pinned state, in order, through SQLite's `sqlite_dbpage`, which
    /// reads within the pin's read transaction and so sees exactly the pinned state.
    pub fn for_each_page(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> Result<u32> {
        let a = self.active.expect("pinned");
        let c = &self.pins[a];
        let count: u32 = c
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(&self.path, "page count", e))?;
        let mut stmt = c
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
            .map_err(|e| Error::sqlite(&self.path, "read pages", e))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| Error::sqlite(&self.path, "read pages", e))?;
        let mut n = 0u32;
        let zero = vec![0u8; self.page_size as usize];
        while let Some(row) = rows
            .next()
            .map_err(|e| Error::sqlite(&self.path, "read pages", e))?
        {
            let pgno: u32 = row
                .get(0)
                .map_err(|e| Error::sqlite(&self.path, "read pages", e))?;
            let data = row
                .get_ref(1)
                .map_err(|e| Error::sqlite(&self.path, "read pages", e))?;
            let bytes = data.as_blob_or_null().ok().flatten().unwrap_or(&[]);
            if pgno != n + 1 {
                return Err(Error::Inconsistent(format!(
                    "sqlite_dbpage returned page {pgno} after page {n}"
                )));
            }
            n = pgno;
            let page = if bytes.is_empty() { &zero[..] } else { bytes };
            if page.len() != self.page_size as usize {
                return Err(Error::Inconsistent(format!(
                    "page {pgno} has {} bytes, expected {}",
                    page.len(),
                    self.page_size
                )));
            }
            f(page).map_err(|e| Error::io("write snapshot", e))?;
        }
        if n != count {
            return Err(Error::Inconsistent(format!(
                "read {n} pages, the database has {count}"
            )));
        }
        Ok(n)
    }

    /// Hashes the database as it stood at a recorded position: the database file's pages,
    /// overlaid with this cycle's frames up to `overlay_end` when given. Used on start-up to
    /// prove that the local database is the replica's last state before resuming.
    pub fn hashes_at(
        &self,
        db_size: u32,
        overlay: Option<(&WalHeader, u64)>,
    ) -> Result<Option<PageHashes>> {
        let index: HashMap<u32, u64> = match overlay {
            Some((h, end)) => match self.wal.page_index(h, end).map_err(|e| self.wal_err(e))? {
                Some(m) => m,
                None => return Ok(None),
            },
            None => HashMap::new(),
        };
        let file = File::open(&self.path).map_err(|e| Error::io("open database", e))?;
        let ps = self.page_size as usize;
        let mut page = vec![0u8; ps];
        let mut hashes = PageHashes::new(ps);
        for pgno in 1..=db_size {
            if let Some(&off) = index.get(&pgno) {
                self.wal
                    .read_page(off, &mut page)
                    .map_err(|e| self.wal_err(e))?;
            } else {
                page.fill(0);
                let at = u64::from(pgno - 1) * ps as u64;
                let mut read = 0;
                while read < ps {
                    match file.read_at(&mut page[read..], at + read as u64) {
                        Ok(0) => break,
                        Ok(n) => read += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io("read database", e)),
                    }
                }
            }
            hashes.set_page(pgno, &page);
        }
        Ok(Some(hashes))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(a) = self.active.take() {
            let _ = self.pins[a].execute_batch("COMMIT");
        }
    }
}
