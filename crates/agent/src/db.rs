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
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::sqlite::WalHeader;
use rusqlite::Connection;

use crate::walfile::{Continuity, Cursor, WalFile};
use crate::{Error, Result};

mod conn;
use conn::{open_conn, Lazy, LockFile};

thread_local! {
    /// When the agent stops waiting for the write lock (read by the busy handler, which SQLite
    /// calls with no room for context).
    static WRITE_LOCK_DEADLINE: std::cell::Cell<std::time::Instant> =
        std::cell::Cell::new(std::time::Instant::now());
}

/// A busy handler that retries every ~20 µs until [`WRITE_LOCK_DEADLINE`].
fn poll_busy(_tries: i32) -> bool {
    if std::time::Instant::now() >= WRITE_LOCK_DEADLINE.with(|d| d.get()) {
        return false;
    }
    std::thread::sleep(Duration::from_micros(20));
    true
}

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

/// A database the agent replicates.
pub struct Database {
    path: PathBuf,
    wal: WalFile,
    /// The two connections that take turns holding the pin; the one not holding it is opened
    /// when needed and closed when the database goes idle ([`Database::release_idle`]).
    pins: [Lazy; 2],
    active: Option<usize>,
    /// Where the pin stands in the WAL, when known.
    pin_position: Option<Cursor>,
    /// For checkpoints and the write lock; opened when needed, closed when idle.
    aux: Lazy,
    page_size: u32,
    /// Our own descriptor on the database file, kept open for the agent's lifetime. POSIX
    /// advisory locks belong to the process and are released when *any* descriptor on the file
    /// closes, so opening and closing the file ourselves would silently drop SQLite's locks (and
    /// let the app's last connection checkpoint and delete the WAL under us).
    file: File,
    _lock: LockFile,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .finish()
    }
}

impl Database {
    /// Opens `path` for replication: takes the agent lock, switches the database to WAL mode if
    /// it is not already, and pins the WAL.
    ///
    /// The path is made canonical first (symlinks resolved): SQLite resolves them itself and
    /// keeps its `-wal` beside the real file, and the agent lock must be the same file whatever
    /// name the database is given, or a second agent reached through a symlink would run.
    pub fn open(path: &Path) -> Result<Database> {
        if !path.is_file() {
            return Err(Error::NoDatabase(path.to_path_buf()));
        }
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("resolve {}", path.display()), e))?;
        let path = canonical.as_path();
        let lock = LockFile::acquire(path)?;
        let file =
            File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
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
            pins: [Lazy::new(None), Lazy::new(None)],
            active: None,
            pin_position: None,
            aux: Lazy::new(Some(aux)),
            page_size,
            file,
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

    /// The agent's own descriptor on the database file, for reading pages (never close a
    /// descriptor on it: see the field).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Moves the pin to the current end of the WAL: begins a read transaction on the idle
    /// connection, then ends the one on the active connection.
    pub fn pin(&mut self) -> Result<()> {
        self.repin(|_| true).map(|_| ())
    }

    /// Moves a pin that holds read mark zero onto the log cycle the app has started since, once
    /// that cycle has a committed frame. Returns whether the pin moved.
    ///
    /// After a complete checkpoint the pin reads the database file alone (read mark zero), which
    /// lets the app's next write restart the log. But SQLite copies frames back into the
    /// database only with read mark zero free, so from then on every autocheckpoint of the app
    /// (after each of its commits, once the log passes 1,000 pages) sorts the whole new cycle
    /// and gives up; with a replica still shipping a carried tail, that cost grows with the log
    /// and slowed a writer committing flat out to a tenth of its speed. A pin inside the new
    /// cycle (a read mark of one or more) lets those checkpoints finish and still keeps the log
    /// from restarting, so no frame the replicas have yet to ship can be overwritten; the
    /// database file may then move past what the old pin held, which costs at most some page
    /// bases (each is verified before use, see `bases`).
    ///
    /// The move is kept only if the new read transaction is in a cycle other than the old one,
    /// with frames: a cycle can only have started while the old pin held read mark zero, and
    /// while it did, no frame of the new cycle could be copied back, so the new read transaction
    /// necessarily took a mark of one or more.
    pub fn leave_mark_zero(&mut self) -> Result<bool> {
        let Some(old) = self.snapshot_header()?.map(|h| PinnedHeader::parse(&h)) else {
            return Ok(false);
        };
        let file = self.wal.header().map_err(|e| self.wal_err(e))?;
        if file.is_none_or(|h| (h.salt1, h.salt2) == old.salts) {
            return Ok(false);
        }
        self.repin(|new| {
            new.map(PinnedHeader::parse)
                .is_some_and(|n| n.salts != old.salts && n.mx_frame > 0)
        })
    }

    /// Begins a read transaction on the idle connection; if `keep` accepts its WAL-index header,
    /// ends the active one and makes it the pin, else ends the new one. Returns whether it moved.
    fn repin(&mut self, keep: impl FnOnce(Option<&[u8; 48]>) -> bool) -> Result<bool> {
        let next = self.active.map_or(0, |a| 1 - a);
        let c = self.pins[next].get(&self.path)?;
        c.execute_batch("BEGIN DEFERRED")
            .map_err(|e| Error::sqlite(&self.path, "begin pin", e))?;
        // Any read starts the read transaction; the header cookie is the cheapest (page 1
        // only, and unlike a query on a table it does not make a new connection read and
        // parse the schema).
        if let Err(e) = c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)) {
            let _ = c.execute_batch("ROLLBACK");
            return Err(Error::sqlite(&self.path, "pin WAL", e));
        }
        let header = match snapshot_header_of(&self.path, &c) {
            Ok(h) => h,
            Err(e) => {
                let _ = c.execute_batch("ROLLBACK");
                return Err(e);
            }
        };
        if !keep(header.as_ref()) {
            c.execute_batch("ROLLBACK")
                .map_err(|e| Error::sqlite(&self.path, "end a pin not taken", e))?;
            return Ok(false);
        }
        drop(c);
        if let Some(a) = self.active {
            self.pins[a]
                .get(&self.path)?
                .execute_batch("COMMIT")
                .map_err(|e| Error::sqlite(&self.path, "release pin", e))?;
        }
        self.active = Some(next);
        self.pin_position = self.pinned_cursor().ok().flatten();
        Ok(true)
    }

    /// Where the pin stands in the WAL, if it could be matched to the file.
    pub fn pin_position(&self) -> Option<Cursor> {
        self.pin_position
    }

    /// Tries again to match the pin to the WAL file, if that failed when it was taken (the WAL
    /// was changing under the look).
    pub fn refresh_pin_position(&mut self) {
        if self.pin_position.is_none() && self.active.is_some() {
            self.pin_position = self.pinned_cursor().ok().flatten();
        }
    }

    /// Takes SQLite's write lock on the auxiliary connection, waiting at most `timeout`.
    /// `Ok(false)` if the app held it all that time.
    pub fn try_write_lock(&self, timeout: Duration) -> Result<bool> {
        // SQLite's own busy handler sleeps 1 to 100 ms between tries; an app that commits back
        // to back frees the lock for only microseconds between transactions and would starve
        // us. Poll every few tens of microseconds instead, within the same time budget.
        WRITE_LOCK_DEADLINE.with(|d| d.set(std::time::Instant::now() + timeout));
        let aux = self.aux.get(&self.path)?;
        aux.busy_handler(Some(poll_busy))
            .map_err(|e| Error::sqlite(&self.path, "configure", e))?;
        let r = aux.execute_batch("BEGIN IMMEDIATE");
        let _ = aux.busy_timeout(Duration::from_secs(5));
        match r {
            Ok(()) => Ok(true),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    || e.code == rusqlite::ErrorCode::DatabaseLocked =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::sqlite(&self.path, "take write lock", e)),
        }
    }

    /// Releases the write lock taken by [`try_write_lock`](Self::try_write_lock).
    pub fn release_write_lock(&self) -> Result<()> {
        self.aux
            .get(&self.path)?
            .execute_batch("ROLLBACK")
            .map_err(|e| Error::sqlite(&self.path, "release write lock", e))
    }

    /// Ends the pin's read transaction. Only for use while the write lock is held (the write
    /// transaction's own read mark keeps the WAL in place), followed by [`pin`](Self::pin).
    pub fn unpin(&mut self) -> Result<()> {
        if let Some(a) = self.active.take() {
            self.pin_position = None;
            self.pins[a]
                .get(&self.path)?
                .execute_batch("COMMIT")
                .map_err(|e| Error::sqlite(&self.path, "release pin", e))?;
        }
        Ok(())
    }

    /// Runs a checkpoint on an idle pin connection (for use between [`unpin`](Self::unpin) and
    /// [`pin`](Self::pin), while the auxiliary connection holds the write lock).
    pub fn checkpoint_unpinned(&self, mode: CheckpointMode) -> Result<CheckpointResult> {
        assert!(self.active.is_none(), "checkpoint_unpinned while pinned");
        run_checkpoint(&*self.pins[0].get(&self.path)?, &self.path, mode)
    }

    /// Truncates the WAL file to zero bytes with a TRUNCATE checkpoint on the idle pin
    /// connection, waiting at most `timeout` for the app's writers and readers.
    ///
    /// Only call it right after a complete checkpoint taken under the write lock, when the pin
    /// holds mark zero: that mark blocks every checkpoint from copying a frame appended since,
    /// so the TRUNCATE can only succeed if the log holds nothing the agent has not read.
    pub fn truncate_wal(&self, timeout: Duration) -> Result<CheckpointResult> {
        let idle = self.pins[1 - self.active.expect("pinned")].get(&self.path)?;
        WRITE_LOCK_DEADLINE.with(|d| d.set(std::time::Instant::now() + timeout));
        idle.busy_handler(Some(poll_busy))
            .map_err(|e| Error::sqlite(&self.path, "configure", e))?;
        let r = run_checkpoint(&idle, &self.path, CheckpointMode::Truncate);
        let _ = idle.busy_timeout(Duration::from_secs(5));
        r
    }

    /// Runs a checkpoint on the auxiliary connection (never holding the pin's connection).
    pub fn checkpoint(&self, mode: CheckpointMode) -> Result<CheckpointResult> {
        run_checkpoint(&*self.aux.get(&self.path)?, &self.path, mode)
    }

    /// Closes the connections not holding the pin (they are opened again when needed): for a
    /// database that has gone idle, so that it holds one connection rather than three.
    pub fn release_idle(&mut self) {
        self.aux.close_if_idle();
        if let Some(a) = self.active {
            self.pins[1 - a].close_if_idle();
        }
    }

    /// Moves the pin forward and returns exactly where in the WAL its read transaction stands.
    ///
    /// SQLite's `sqlite3_snapshot_get` hands back a copy of the WAL-index header the read
    /// transaction uses (its layout is documented in SQLite's WAL-index file format): the number
    /// of frames it sees, their running checksum and the salts. The position is cross-checked
    /// against the frame in the WAL file before it is trusted. No write lock is taken, so a
    /// writer committing back to back cannot starve the agent.
    pub fn pin_snapshot(&mut self) -> Result<Cursor> {
        for _ in 0..100 {
            self.pin()?;
            if let Some(c) = self.pin_position {
                return Ok(c);
            }
        }
        Err(Error::PinPosition {
            path: self.path.clone(),
            problem: "could not match the pinned read transaction to the WAL file after 100 tries"
                .into(),
        })
    }

    /// The WAL-index header of the pinned read transaction; `None` when SQLite declines because
    /// the log has never held a frame since the WAL index was built (its running checksum is
    /// still zero), in which case the pinned state is the database file alone.
    fn snapshot_header(&self) -> Result<Option<[u8; 48]>> {
        let a = self.active.expect("pinned");
        let conn = self.pins[a].get(&self.path)?;
        snapshot_header_of(&self.path, &conn)
    }

    /// The cursor matching the pin, or `None` if the WAL moved under the check (try again).
    fn pinned_cursor(&self) -> Result<Option<Cursor>> {
        let Some(hdr) = self.snapshot_header()? else {
            // No frame has ever been written to this log: every valid frame that appears in
            // the file from now on is new.
            return Ok(Some(Cursor::empty()));
        };
        let PinnedHeader {
            page_size,
            mx_frame,
            frame_cksum,
            salts,
        } = PinnedHeader::parse(&hdr);
        if page_size != self.page_size {
            return Err(Error::PinPosition {
                path: self.path.clone(),
                problem: format!(
                    "WAL page size {page_size} differs from the database's {}",
                    self.page_size
                ),
            });
        }
        let file_header = self.wal.header().map_err(|e| self.wal_err(e))?;
        let cursor = match file_header {
            Some(h) if (h.salt1, h.salt2) == salts => {
                if mx_frame == 0 {
                    // A new cycle whose first transaction is still being written (or was rolled
                    // back): all its frames come after the pinned state.
                    Cursor::at_start(h)
                } else {
                    let c = Cursor {
                        header: Some(h),
                        offset: h.frame_offset(mx_frame),
                        checksum: frame_cksum,
                        prev: None,
                    };
                    let v = self.wal.check(&c).map_err(|e| self.wal_err(e))?;
                    if v != Continuity::Same {
                        tracing::trace!(
                            ?v,
                            mx_frame,
                            ?frame_cksum,
                            "pin position does not match the WAL file"
                        );
                        return Ok(None);
                    }
                    c
                }
            }
            // Restarted with nothing written yet, then truncated: the pinned state is the
            // database file, and whatever header appears next starts the next cycle.
            None if mx_frame == 0 => Cursor::empty(),
            // Restarted, and the file still shows an older header: either the previous cycle's
            // leftover or the next cycle's header written by a transaction that has not committed
            // yet (a writer may draw random salts). Which one is known only once that writer is
            // done: look again.
            Some(_) if mx_frame == 0 => {
                tracing::trace!(
                    ?salts,
                    ?file_header,
                    "WAL restart in progress; pin position not known yet"
                );
                return Ok(None);
            }
            // The pinned cycle is fully checkpointed and the log restarted (or was truncated)
            // right after the pin — possible only while the pin holds read mark zero, which then
            // also stops every checkpoint: the pinned state is the database file, and the next
            // cycle is whatever header is not the pinned one.
            Some(_) | None => Cursor {
                prev: Some(salts),
                ..Cursor::empty()
            },
        };
        // The header must not have changed while we looked.
        if self.wal.header().map_err(|e| self.wal_err(e))? != file_header {
            return Ok(None);
        }
        Ok(Some(cursor))
    }

    fn wal_err(&self, e: io::Error) -> Error {
        Error::io(format!("read {}", self.wal.path().display()), e)
    }

    /// Streams every page of the pinned state, in order, through SQLite's `sqlite_dbpage`, which
    /// reads within the pin's read transaction and so sees exactly the pinned state.
    pub fn for_each_page(&self, mut f: impl FnMut(&[u8]) -> io::Result<()>) -> Result<u32> {
        let c = self.pins[self.active.expect("pinned")].get(&self.path)?;
        conn::limit_cache(&c);
        crate::files::for_each_dbpage(&c, &self.path, self.page_size, |_, page| {
            f(page).map_err(|e| Error::io("write snapshot", e))
        })
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
        let file = &self.file;
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

fn run_checkpoint(c: &Connection, path: &Path, mode: CheckpointMode) -> Result<CheckpointResult> {
    // The checkpoint pragma reads the schema.
    conn::limit_cache(c);
    c.query_row(mode.sql(), [], |r| {
        Ok(CheckpointResult {
            busy: r.get::<_, i64>(0)? != 0,
            log_frames: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    })
    .map_err(|e| Error::sqlite(path, "checkpoint", e))
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(a) = self.active.take() {
            if let Some(c) = self.pins[a].conn.borrow().as_ref() {
                let _ = c.execute_batch("COMMIT");
            }
        }
    }
}

/// The WAL-index header of `conn`'s read transaction (see [`Database::snapshot_header`]).
fn snapshot_header_of(path: &Path, conn: &Connection) -> Result<Option<[u8; 48]>> {
    let mut snap: *mut rusqlite::ffi::sqlite3_snapshot = std::ptr::null_mut();
    // SAFETY: the handle is a live connection owned by the caller's `Database`; "main" is a
    // NUL-terminated string; on success SQLite allocates `snap`, which is copied and freed
    // right here.
    let rc =
        unsafe { rusqlite::ffi::sqlite3_snapshot_get(conn.handle(), c"main".as_ptr(), &mut snap) };
    if rc == rusqlite::ffi::SQLITE_ERROR {
        return Ok(None);
    }
    if rc != rusqlite::ffi::SQLITE_OK || snap.is_null() {
        return Err(Error::sqlite(
            path,
            "read the pinned WAL position",
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), None),
        ));
    }
    // SAFETY: `snap` is non-null and points at SQLite's 48-byte snapshot object.
    let bytes = unsafe { (*snap).hidden };
    unsafe { rusqlite::ffi::sqlite3_snapshot_free(snap) };
    Ok(Some(bytes))
}

/// The fields of a WAL-index header that place a read transaction in the log.
struct PinnedHeader {
    page_size: u32,
    mx_frame: u64,
    frame_cksum: (u32, u32),
    salts: (u32, u32),
}

impl PinnedHeader {
    fn parse(hdr: &[u8; 48]) -> PinnedHeader {
        let u32_at = |i: usize| u32::from_ne_bytes(hdr[i..i + 4].try_into().expect("4 bytes"));
        let sz = u16::from_ne_bytes([hdr[14], hdr[15]]);
        // The salts are the header's bytes copied verbatim (big-endian); the rest is native.
        let be_at = |i: usize| u32::from_be_bytes(hdr[i..i + 4].try_into().expect("4 bytes"));
        PinnedHeader {
            page_size: if sz == 1 { 65536 } else { u32::from(sz) },
            mx_frame: u64::from(u32_at(16)),
            frame_cksum: (u32_at(24), u32_at(28)),
            salts: (be_at(32), be_at(36)),
        }
    }
}
