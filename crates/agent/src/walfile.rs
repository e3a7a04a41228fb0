//! Reading the live WAL file that the application writes.
//!
//! The agent never trusts the file's length: it accepts a frame only if its salts match the header
//! and SQLite's running checksum continues, and it ships only whole transactions (up to the last
//! commit frame). A [`Cursor`] is the agent's place in the log: the header it belongs to, the byte
//! offset of the next frame, and the running checksum there.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat_wal::segment::WalPosition;
use lifeboat_wal::sqlite::{
    check_frame, FrameHeader, WalChecksum, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE,
};

/// A place in the WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The header of the log cycle the cursor is in; `None` while the WAL is empty.
    pub header: Option<WalHeader>,
    /// Byte offset of the next frame (0 while the WAL is empty).
    pub offset: u64,
    /// Running checksum at `offset`.
    pub checksum: WalChecksum,
    /// The salts of the log cycle this position directly follows, when known. With a `header`,
    /// the cycle before it (the one SQLite restarted from). Without one (the position is "the
    /// database file, fully checkpointed"), the cycle whose frames are all in the database file:
    /// a header on disk with these salts is a leftover, and any other header is the next cycle.
    pub prev: Option<(u32, u32)>,
}

impl Cursor {
    /// The position of an empty WAL.
    pub fn empty() -> Cursor {
        Cursor {
            header: None,
            offset: 0,
            checksum: (0, 0),
            prev: None,
        }
    }

    /// The first frame of a log cycle.
    pub fn at_start(h: WalHeader) -> Cursor {
        Cursor {
            header: Some(h),
            offset: WAL_HEADER_SIZE as u64,
            checksum: h.checksum,
            prev: None,
        }
    }

    /// The first frame of the log cycle `h`, which SQLite started right after this position.
    pub fn restarted(&self, h: WalHeader) -> Cursor {
        Cursor {
            prev: self.salts().or(self.prev),
            ..Cursor::at_start(h)
        }
    }

    /// The salts of this position's log cycle, if it is in one.
    pub fn salts(&self) -> Option<(u32, u32)> {
        self.header.map(|h| (h.salt1, h.salt2))
    }

    /// As recorded in a segment or snapshot (with `start_offset` as given).
    pub fn position(&self, start: &Cursor) -> WalPosition {
        let h = self.header.or(start.header);
        WalPosition {
            checkpoint_seq: h.map_or(0, |h| h.checkpoint_seq),
            salt1: h.map_or(0, |h| h.salt1),
            salt2: h.map_or(0, |h| h.salt2),
            big_endian: h.is_some_and(|h| h.big_endian),
            start_offset: start.offset,
            end_offset: self.offset,
            checksum_before: start.checksum,
            checksum_after: self.checksum,
        }
    }

    /// Whether this cursor (a replica's place) is at or past `pin` (where the WAL pin's read
    /// transaction stands): everything the pin protects has then been shipped. Conservative:
    /// `false` whenever it cannot tell.
    ///
    /// SQLite's salts are not ordered (a writer whose connection never restarted the log itself
    /// picks random ones), so a cursor in another cycle than the pin's is past it only when it is
    /// known to be in the cycle that directly followed the pin's.
    pub fn covers(&self, pin: &Cursor) -> bool {
        match (self.salts(), pin.salts()) {
            (Some(a), Some(b)) if a == b => self.offset >= pin.offset,
            (Some(_), Some(b)) => self.prev == Some(b),
            // The pin stands on the database file with every frame checkpointed: it protects no
            // frame. A cursor still in the cycle that was checkpointed may not have read all of
            // it; one in the next cycle (or at an empty start) has.
            (mine, None) => match (mine, pin.prev) {
                (None, _) | (_, None) => true,
                (Some(a), Some(p)) => a != p && self.prev == Some(p),
            },
            (None, Some(_)) => false,
        }
    }

    /// Whether `h` is the header of this cursor's log cycle (the salts identify a cycle; SQLite
    /// draws new ones on every restart).
    pub fn same_cycle(&self, h: &WalHeader) -> bool {
        self.header
            .is_some_and(|c| c.salt1 == h.salt1 && c.salt2 == h.salt2)
    }
}

/// Whether a recorded position is in the log cycle of header `h`.
pub fn position_in_cycle(p: &WalPosition, h: &WalHeader) -> bool {
    p.end_offset >= WAL_HEADER_SIZE as u64
        && p.salt1 == h.salt1
        && p.salt2 == h.salt2
        && p.checkpoint_seq == h.checkpoint_seq
}

/// One committed transaction, as raw WAL frames.
#[derive(Clone, Debug)]
pub struct Txn {
    /// The frames (header and page each).
    pub frames: Vec<u8>,
    /// Number of frames.
    pub frame_count: u32,
    /// Database size in pages after the commit.
    pub commit_size: u32,
    /// Byte offset just past the commit frame.
    pub end_offset: u64,
}

/// Whole transactions read from a cursor on.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The transactions, in order.
    pub txns: Vec<Txn>,
    /// The cursor after the last one.
    pub end: Cursor,
    /// Raw bytes of frames in the batch.
    pub bytes: usize,
}

/// What the WAL looks like compared with a cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Continuity {
    /// Same log cycle, and the frame before the cursor is still the one the cursor saw.
    Same,
    /// SQLite restarted the log exactly once since the cursor: a new cycle begins with this header.
    Restarted(WalHeader),
    /// The WAL holds no frames yet (missing, empty or without a valid header).
    Empty,
    /// Continuity cannot be proven.
    Broken(String),
}

/// The `-wal` file of a database. The file stays open between looks (one descriptor per
/// database, not an open and a close per pass); it is opened again only once the open one has
/// been unlinked (SQLite deletes the WAL when the last connection closes) or was never there.
#[derive(Debug)]
pub struct WalFile {
    path: PathBuf,
    file: std::sync::Mutex<Option<Arc<File>>>,
}

impl Clone for WalFile {
    fn clone(&self) -> WalFile {
        WalFile::at(self.path.clone())
    }
}

/// Largest read-ahead buffer for reading frames.
const READ_BUFFER: usize = 1 << 20;

impl WalFile {
    /// The WAL of database `db`.
    pub fn for_db(db: &Path) -> WalFile {
        WalFile::at(crate::files::sibling(db, "-wal"))
    }

    fn at(path: PathBuf) -> WalFile {
        WalFile {
            path,
            file: std::sync::Mutex::new(None),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file for reading, a descriptor of the caller's own (`None` if it does not
    /// exist).
    pub fn open_file(&self) -> io::Result<Option<File>> {
        match File::open(&self.path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open(&self) -> io::Result<Option<Arc<File>>> {
        use std::os::unix::fs::MetadataExt;
        let mut cached = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = cached.as_ref() {
            if f.metadata().is_ok_and(|m| m.nlink() > 0) {
                return Ok(Some(f.clone()));
            }
            *cached = None;
        }
        match File::open(&self.path) {
            Ok(f) => {
                let f = Arc::new(f);
                *cached = Some(f.clone());
                Ok(Some(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A read-ahead buffer for reading `file` from `from` (no bigger than what is there),
    /// with positioned reads: the shared descriptor's offset is never moved.
    fn reader(file: &File, from: u64) -> io::Result<BufReader<ReadAt<'_>>> {
        let len = file.metadata()?.len().saturating_sub(from);
        let cap = usize::try_from(len)
            .unwrap_or(READ_BUFFER)
            .clamp(4096, READ_BUFFER);
        Ok(BufReader::with_capacity(cap, ReadAt { file, offset: from }))
    }

    /// Current size in bytes (0 if missing).
    pub fn size(&self) -> io::Result<u64> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The header, if the file holds a valid one.
    pub fn header(&self) -> io::Result<Option<WalHeader>> {
        let Some(f) = self.open()? else {
            return Ok(None);
        };
        let mut b = [0u8; WAL_HEADER_SIZE];
        match f.read_exact_at(&mut b, 0) {
            Ok(()) => Ok(WalHeader::parse(&b).ok()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Compares the file with `cursor`. The header and the frame before the cursor are read
    /// separately, so a check that sees them disagree is repeated after re-reading the header:
    /// a log restarted or truncated between the two reads is not mistaken for an overwrite.
    pub fn check(&self, cursor: &Cursor) -> io::Result<Continuity> {
        let mut attempts = 0;
        loop {
            let now = self.header()?;
            let verdict = self.check_against(cursor, now)?;
            attempts += 1;
            if matches!(verdict, Continuity::Broken(_)) && attempts < 3 && self.header()? != now {
                continue;
            }
            return Ok(verdict);
        }
    }

    fn check_against(&self, cursor: &Cursor, now: Option<WalHeader>) -> io::Result<Continuity> {
        let (c, h) = match (cursor.header, now) {
            (None, None) => return Ok(Continuity::Empty),
            (None, Some(h)) => {
                return Ok(if cursor.prev == Some((h.salt1, h.salt2)) {
                    // The checkpointed cycle's leftover: its frames are in the database file.
                    Continuity::Empty
                } else {
                    Continuity::Restarted(h)
                });
            }
            // Truncated (by a TRUNCATE checkpoint) or not yet rewritten: SQLite can only have
            // done that from a fully checkpointed log that the pin shows we had read to the end;
            // the next header must then be exactly one restart on, which the arm below checks.
            (Some(_), None) => return Ok(Continuity::Empty),
            (Some(c), Some(h)) => (c, h),
        };
        if cursor.same_cycle(&h) {
            if cursor.offset > WAL_HEADER_SIZE as u64 {
                let Some(f) = self.open()? else {
                    return Ok(Continuity::Empty);
                };
                let mut fh = [0u8; FRAME_HEADER_SIZE];
                let at = cursor.offset - h.frame_size() as u64;
                let ok = match f.read_exact_at(&mut fh, at) {
                    Ok(()) => {
                        let fh = FrameHeader::parse(&fh).expect("24 bytes");
                        fh.salt1 == h.salt1 && fh.salt2 == h.salt2 && fh.checksum == cursor.checksum
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
                    Err(e) => return Err(e),
                };
                if !ok {
                    return Ok(Continuity::Broken(format!(
                        "the WAL frame before offset {} was overwritten by another process",
                        cursor.offset
                    )));
                }
            }
            return Ok(Continuity::Same);
        }
        // New salts: SQLite restarted the log. While the agent runs, that can happen only once
        // past what the agent has read (see `db.rs`: a restart needs the pin at read mark 0,
        // which blocks every checkpoint from copying a newer frame), so this is the next cycle.
        // Neither the salts nor the header's checkpoint sequence tell more: the sequence counts
        // the restarts made by the connection that writes the header, and a connection that
        // never restarted the log itself draws random salts.
        if h.page_size == c.page_size {
            return Ok(Continuity::Restarted(h));
        }
        Ok(Continuity::Broken(format!(
            "the WAL was replaced: its page size changed from {} to {}",
            c.page_size, h.page_size
        )))
    }

    /// Reads whole committed transactions from `cursor` on, stopping after the transaction that
    /// brings the batch to `max_bytes` or more, at the first invalid frame, or at the end.
    pub fn read_batch(&self, cursor: &Cursor, max_bytes: usize) -> io::Result<Batch> {
        let mut txns = Vec::new();
        let (end, bytes) = self.read_txns(cursor, max_bytes, u64::MAX, &mut |mut t| {
            // Held until shipped (a carried tail): without the slack a growing buffer leaves.
            t.frames.shrink_to_fit();
            txns.push(t);
            true
        })?;
        Ok(Batch { txns, end, bytes })
    }

    /// [`read_batch`](Self::read_batch), taking no transaction that ends past byte offset
    /// `until` of the cursor's cycle, and handing each to `each` as soon as its commit frame is
    /// verified instead of holding them (`each` returns whether to go on): returns the cursor
    /// after the last one and the bytes of their frames.
    pub fn read_txns(
        &self,
        cursor: &Cursor,
        max_bytes: usize,
        until: u64,
        each: &mut dyn FnMut(Txn) -> bool,
    ) -> io::Result<(Cursor, usize)> {
        let (mut end, mut bytes) = (*cursor, 0usize);
        let Some(h) = cursor.header else {
            return Ok((end, bytes));
        };
        let Some(f) = self.open()? else {
            return Ok((end, bytes));
        };
        let mut r = Self::reader(&f, cursor.offset)?;
        let fs = h.frame_size();
        let mut frame = vec![0u8; fs];
        let mut running = cursor.checksum;
        let mut offset = cursor.offset;
        let mut pending = Vec::new();
        let mut pending_count = 0u32;
        loop {
            match r.read_exact(&mut frame) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let Ok(Ok((fh, c))) = check_frame(&h, running, &frame) else {
                break;
            };
            running = c;
            offset += fs as u64;
            if offset > until {
                break;
            }
            pending.extend_from_slice(&frame);
            pending_count += 1;
            if fh.is_commit() {
                bytes += pending.len();
                let more = each(Txn {
                    frames: std::mem::take(&mut pending),
                    frame_count: pending_count,
                    commit_size: fh.commit_size,
                    end_offset: offset,
                });
                pending_count = 0;
                end = Cursor {
                    header: Some(h),
                    offset,
                    checksum: c,
                    prev: cursor.prev,
                };
                if bytes >= max_bytes || !more {
                    break;
                }
            }
        }
        Ok((end, bytes))
    }

    /// Every whole transaction from `from` to the end of the WAL, batch by batch (each of at
    /// most about `segment_bytes`); `None` once they pass `max_bytes`.
    pub fn read_tail(
        &self,
        from: Cursor,
        segment_bytes: usize,
        max_bytes: usize,
    ) -> io::Result<Option<VecDeque<Batch>>> {
        let mut tail = VecDeque::new();
        let (mut c, mut bytes) = (from, 0usize);
        loop {
            let b = self.read_batch(&c, segment_bytes)?;
            if b.txns.is_empty() {
                return Ok(Some(tail));
            }
            bytes += b.bytes;
            if bytes > max_bytes {
                return Ok(None);
            }
            c = b.end;
            tail.push_back(b);
        }
    }

    /// Maps each page to its latest frame in the current cycle up to byte offset `end`
    /// (exclusive), verifying the checksum chain. `None` if the chain does not reach `end`.
    pub fn page_index(&self, h: &WalHeader, end: u64) -> io::Result<Option<HashMap<u32, u64>>> {
        let Some(f) = self.open()? else {
            return Ok(None);
        };
        let mut r = Self::reader(&f, WAL_HEADER_SIZE as u64)?;
        let fs = h.frame_size();
        let mut frame = vec![0u8; fs];
        let mut running = h.checksum;
        let mut offset = WAL_HEADER_SIZE as u64;
        let mut map = HashMap::new();
        while offset < end {
            if r.read_exact(&mut frame).is_err() {
                return Ok(None);
            }
            let Ok(Ok((fh, c))) = check_frame(h, running, &frame) else {
                return Ok(None);
            };
            running = c;
            map.insert(fh.pgno, offset);
            offset += fs as u64;
        }
        Ok((offset == end).then_some(map))
    }

    /// Lists the commit frames of the current cycle from byte offset `from` on, reading frame
    /// headers only (at most `max_frames`): `(end offset of the commit, header)`. For timestamps
    /// only: the frames are not verified here (shipping verifies them).
    pub fn commit_offsets(
        &self,
        h: &WalHeader,
        from: u64,
        max_frames: usize,
    ) -> io::Result<Vec<u64>> {
        let Some(f) = self.open()? else {
            return Ok(Vec::new());
        };
        let fs = h.frame_size() as u64;
        let mut out = Vec::new();
        let mut at = from;
        let mut fh = [0u8; FRAME_HEADER_SIZE];
        for _ in 0..max_frames {
            match f.read_exact_at(&mut fh, at) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let fr = FrameHeader::parse(&fh).expect("24 bytes");
            if fr.salt1 != h.salt1 || fr.salt2 != h.salt2 {
                break;
            }
            at += fs;
            if fr.is_commit() {
                out.push(at);
            }
        }
        Ok(out)
    }

    /// Reads the page of the frame at `offset`.
    pub fn read_page(&self, offset: u64, page: &mut [u8]) -> io::Result<()> {
        let f = self
            .open()?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "WAL vanished"))?;
        f.read_exact_at(page, offset + FRAME_HEADER_SIZE as u64)
    }
}

/// Sequential reads of a file through `pread`, from an offset.
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Positions in made-up log cycles, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The header of cycle `salt1` (second salt 9), pages of 4 KiB.
    pub fn header(salt1: u32) -> WalHeader {
        WalHeader {
            big_endian: false,
            page_size: 4096,
            checkpoint_seq: 0,
            salt1,
            salt2: 9,
            checksum: (0, 0),
        }
    }

    /// Byte `offset` of cycle `salt1`.
    pub fn at(salt1: u32, offset: u64) -> Cursor {
        Cursor {
            offset,
            ..Cursor::at_start(header(salt1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{at, header};
    use super::*;

    #[test]
    fn in_the_pins_cycle_a_cursor_covers_it_at_or_past_its_offset() {
        let pin = at(1, 1000);
        assert!(at(1, 1000).covers(&pin));
        assert!(at(1, 5000).covers(&pin));
        assert!(!at(1, 999).covers(&pin));
    }

    #[test]
    fn another_cycle_covers_the_pin_only_when_it_is_known_to_follow_it() {
        let pin = at(1, 1000);
        // SQLite's salts are not ordered: a bigger salt says nothing.
        assert!(!at(2, 32).covers(&pin));
        let next = at(1, 4000).restarted(header(2));
        assert_eq!(next.prev, Some((1, 9)));
        assert!(next.covers(&pin));
        // A cycle that followed some other cycle does not cover this one.
        assert!(!at(3, 32).restarted(header(2)).covers(&pin));
    }

    #[test]
    fn a_pin_on_the_checkpointed_database_file_protects_no_frame() {
        // A pin taken with every frame checkpointed and nothing known of the next cycle.
        assert!(at(1, 32).covers(&Cursor::empty()));
        assert!(Cursor::empty().covers(&Cursor::empty()));
        // A pin on the file after cycle 1: a cursor still in cycle 1 may not have read all of
        // it; one in the next cycle (which followed cycle 1) has.
        let pin = Cursor {
            prev: Some((1, 9)),
            ..Cursor::empty()
        };
        assert!(!at(1, 5000).covers(&pin));
        assert!(at(1, 5000).restarted(header(2)).covers(&pin));
        assert!(
            !at(2, 32).covers(&pin),
            "a cycle not known to follow cycle 1"
        );
        assert!(Cursor::empty().covers(&pin));
    }

    #[test]
    fn a_cursor_before_any_wal_does_not_cover_a_pin_in_a_cycle() {
        assert!(!Cursor::empty().covers(&at(1, 32)));
    }

    #[test]
    fn recorded_positions_belong_to_the_cycle_of_their_salts_and_sequence() {
        let h = header(1);
        let p = at(1, 5000).position(&at(1, 32));
        assert_eq!((p.start_offset, p.end_offset), (32, 5000));
        assert!(position_in_cycle(&p, &h));
        assert!(!position_in_cycle(&p, &header(2)));
        let before_any_frame = WalPosition { end_offset: 0, ..p };
        assert!(!position_in_cycle(&before_any_frame, &h));
    }
}
