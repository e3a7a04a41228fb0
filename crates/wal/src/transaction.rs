//! Transactions as runs of WAL frames: walking their pages, and building segments from them.
//!
//! Every reader of frames walks the same thing: a transaction's frames, each a page number and a
//! page image, after which the database has a known size. The agent does it when it ships from
//! the live WAL, restore when it applies a segment, a drill when it replays the tail of a live
//! WAL. [`Frames`] is that walk and [`Frames::apply`] what a transaction does to the per-page
//! hashes, so no other crate parses a frame. [`SegmentBuilder`] turns transactions into a
//! [`Segment`], recording each commit's database checksum on the way (as `superfly/ltx` keeps its
//! encoder next to its decoder).

use crate::checksum::{DbChecksum, PageHashes};
use crate::segment::VERSION;
use crate::segment::{CommitRecord, Segment, SegmentHeader, WalPosition};
use crate::sqlite::FRAME_HEADER_SIZE;
use crate::{Generation, TxId};

/// The frames of one or more transactions, as SQLite wrote them (24-byte header and page each),
/// already verified by whoever read them (SQLite's checksum chain, or a segment's CRC).
#[derive(Clone, Copy, Debug)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    page_size: usize,
}

impl<'a> Frames<'a> {
    /// Frames of pages of `page_size` bytes. A trailing partial frame is ignored.
    pub fn new(bytes: &'a [u8], page_size: usize) -> Frames<'a> {
        Frames { bytes, page_size }
    }

    /// Each frame's page number and page image, in order.
    pub fn pages(&self) -> impl Iterator<Item = (u32, &'a [u8])> + 'a {
        self.bytes
            .chunks_exact(FRAME_HEADER_SIZE + self.page_size)
            .map(|f| {
                (
                    u32::from_be_bytes([f[0], f[1], f[2], f[3]]),
                    &f[FRAME_HEADER_SIZE..],
                )
            })
    }

    /// Applies the transaction to `hashes`: every page, then the database size after the commit.
    pub fn apply(&self, hashes: &mut PageHashes, commit_size: u32) {
        for (pgno, page) in self.pages() {
            hashes.set_page(pgno, page);
        }
        hashes.resize(commit_size);
    }
}

impl Segment {
    /// The transactions, each as its commit record and its frames.
    pub fn txns(&self) -> impl Iterator<Item = (&CommitRecord, Frames<'_>)> {
        let ps = self.header.page_size as usize;
        self.transactions()
            .map(move |(c, bytes)| (c, Frames::new(bytes, ps)))
    }
}

/// The commits of a segment being built, whichever way its pages are stored: each commit's id,
/// time, size and database checksum after it, and the header they give the segment.
#[derive(Debug)]
pub struct Commits {
    generation: Generation,
    first_txid: TxId,
    page_size: u32,
    checksum_before: DbChecksum,
    records: Vec<CommitRecord>,
}

impl Commits {
    /// None yet, in a segment of `generation` whose first transaction is `first_txid`,
    /// continuing a database whose checksum is `checksum_before`.
    pub fn new(
        generation: Generation,
        first_txid: TxId,
        page_size: u32,
        checksum_before: DbChecksum,
    ) -> Commits {
        Commits {
            generation,
            first_txid,
            page_size,
            checksum_before,
            records: Vec::new(),
        }
    }

    /// The id the next transaction gets.
    pub fn next_txid(&self) -> TxId {
        self.records
            .last()
            .map_or(self.first_txid, |c| c.txid.next())
    }

    /// Records the commit of a transaction of `frame_count` frames, seen at `time_ms`, that
    /// left the database at `commit_size` pages and `hashes` (already applied).
    pub fn record(
        &mut self,
        hashes: &PageHashes,
        frame_count: u32,
        commit_size: u32,
        time_ms: u64,
    ) -> CommitRecord {
        let c = CommitRecord {
            txid: self.next_txid(),
            time_ms,
            frames: frame_count,
            db_size: commit_size,
            checksum: hashes.checksum(),
        };
        self.records.push(c);
        c
    }

    /// The commits recorded.
    pub fn records(&self) -> &[CommitRecord] {
        &self.records
    }

    /// The header of a segment of these commits from `wal` (its frame and commit counts and
    /// lengths zero, for the encoder to fill in); `None` if none was recorded. Its times are
    /// the first and the last commit's.
    pub fn header(&self, wal: WalPosition) -> Option<SegmentHeader> {
        let first = self.records.first()?;
        let last = self.records.last()?;
        Some(SegmentHeader {
            version: VERSION,
            generation: self.generation,
            first_txid: self.first_txid,
            last_txid: last.txid,
            page_size: self.page_size,
            frame_count: 0,
            commit_count: 0,
            db_size: last.db_size,
            first_time_ms: first.time_ms,
            last_time_ms: last.time_ms,
            checksum_before: self.checksum_before,
            checksum_after: last.checksum,
            wal,
            body_len: 0,
            raw_len: 0,
        })
    }
}

/// One committed transaction as read from the WAL, for a segment builder or encoder.
#[derive(Clone, Copy, Debug)]
pub struct TxnFrames<'a> {
    /// Its frames (header and page each), the last one the commit frame.
    pub frames: &'a [u8],
    /// How many frames `frames` holds.
    pub count: u32,
    /// The database's size in pages after the commit.
    pub commit_size: u32,
    /// When it was seen, in ms since the Unix epoch.
    pub time_ms: u64,
}

/// Builds a segment transaction by transaction, keeping the database's page hashes up to date so
/// that every commit records the database checksum after it.
#[derive(Debug)]
pub struct SegmentBuilder {
    commits: Commits,
    frames: Vec<u8>,
}

impl SegmentBuilder {
    /// An empty segment of `generation` whose first transaction is `first_txid`, continuing a
    /// database whose checksum is `checksum_before`. `capacity` is the expected frame bytes.
    pub fn new(
        generation: Generation,
        first_txid: TxId,
        page_size: u32,
        checksum_before: DbChecksum,
        capacity: usize,
    ) -> SegmentBuilder {
        SegmentBuilder {
            commits: Commits::new(generation, first_txid, page_size, checksum_before),
            frames: Vec::with_capacity(capacity),
        }
    }

    /// Adds one transaction: applies it to `hashes` and records its commit.
    pub fn push(&mut self, hashes: &mut PageHashes, t: TxnFrames<'_>) -> CommitRecord {
        Frames::new(t.frames, self.commits.page_size as usize).apply(hashes, t.commit_size);
        self.frames.extend_from_slice(t.frames);
        self.commits
            .record(hashes, t.count, t.commit_size, t.time_ms)
    }

    /// The segment, recording that its frames came from `wal`; `None` if no transaction was
    /// pushed. Its times are the first and the last commit's.
    pub fn finish(self, wal: WalPosition) -> Option<Segment> {
        Some(Segment {
            header: self.commits.header(wal)?,
            commits: self.commits.records,
            frames: self.frames,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqlite::{encode_frame, WalHeader};

    fn wal() -> WalHeader {
        WalHeader::new(false, 512, 0, (1, 2))
    }

    fn txn(frames: &[u8], count: u32, commit_size: u32, time_ms: u64) -> TxnFrames<'_> {
        TxnFrames {
            frames,
            count,
            commit_size,
            time_ms,
        }
    }

    /// Two transactions: pages 1 and 2 (size 2), then page 1 again with the database cut to 1.
    fn two_txns() -> (Vec<Vec<u8>>, WalPosition) {
        let h = wal();
        let mut c = h.checksum;
        let mut txns = vec![Vec::new(), Vec::new()];
        for (t, pgno, commit) in [(0, 1u32, 0u32), (0, 2, 2), (1, 1, 1)] {
            let (f, n) = encode_frame(&h, c, pgno, commit, &[pgno as u8 + t as u8; 512]);
            txns[t].extend_from_slice(&f);
            c = n;
        }
        let pos = WalPosition {
            salt1: 1,
            salt2: 2,
            start_offset: 32,
            end_offset: 32 + 3 * 536,
            checksum_before: h.checksum,
            checksum_after: c,
            ..WalPosition::default()
        };
        (txns, pos)
    }

    #[test]
    fn built_segment_decodes_and_each_commit_records_the_checksum_after_it() {
        let (txns, pos) = two_txns();
        let mut hashes = PageHashes::new(512);
        let mut b = SegmentBuilder::new(Generation(3), TxId(5), 512, hashes.checksum(), 0);
        let first = b.push(&mut hashes, txn(&txns[0], 2, 2, 100));
        let after_first = hashes.checksum();
        let second = b.push(&mut hashes, txn(&txns[1], 1, 1, 120));
        assert_eq!((first.txid, second.txid), (TxId(5), TxId(6)));
        assert_eq!(first.checksum, after_first);
        assert_eq!(hashes.page_count(), 1);
        let seg = b.finish(pos).unwrap();
        assert_eq!(seg.header.first_time_ms, 100);
        assert_eq!(seg.header.last_time_ms, 120);
        let d = Segment::decode(&seg.encode()).unwrap();
        assert_eq!(d.header.checksum_after, hashes.checksum());
        // Replaying the decoded transactions gives the same checksums.
        let mut replay = PageHashes::new(512);
        for (c, frames) in d.txns() {
            frames.apply(&mut replay, c.db_size);
            assert_eq!(replay.checksum(), c.checksum, "txid {}", c.txid);
        }
        let pages: Vec<u32> = d.txns().flat_map(|(_, f)| f.pages().map(|p| p.0)).collect();
        assert_eq!(pages, [1, 2, 1]);
    }

    #[test]
    fn an_empty_builder_makes_no_segment() {
        let c = Commits::new(Generation(1), TxId(1), 512, DbChecksum(0));
        assert_eq!(c.next_txid(), TxId(1));
        assert!(c.header(WalPosition::default()).is_none());
        let b = SegmentBuilder::new(Generation(1), TxId(1), 512, DbChecksum(0), 0);
        assert!(b.finish(WalPosition::default()).is_none());
    }
}
