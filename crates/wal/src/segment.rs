//! Segments: runs of whole committed transactions, as the original WAL frames.
//!
//! A segment keeps SQLite's own frames (header and page) so that a restore re-checks SQLite's
//! cumulative frame checksum as well as lifeboat's CRC32, and it records, for every commit, the
//! transaction id, the time the agent saw it, and the database checksum after it. That makes every
//! commit an addressable, provable restore point.
//!
//! Layout (big-endian), documented byte by byte in `docs/format.md`: a 148-byte header with its
//! own CRC32, a compressed body holding the commit table and the frames, and a trailing CRC32
//! over everything before it. Format 1 (still read) stores the frames whole in one LZ4 block;
//! format 2 (written) stores page deltas grouped by page under zstd and rebuilds the exact
//! frames on decode (see [`format2`]). [`Segment::decode`] reads both.

pub mod any;
pub mod format2;

use crate::checksum::DbChecksum;
use crate::sqlite::{self, check_frame, FrameHeader, WalChecksum, WalHeader, FRAME_HEADER_SIZE};
use crate::{Error, Generation, Result, TxId};
use any::AnySegment;
use format2::BasePages;

/// The segment format this crate writes. Readers refuse newer versions.
pub const VERSION: u16 = 2;
/// The first segment format: whole frames in one LZ4 block. Still read.
pub const VERSION_1: u16 = 1;
/// Header flag: the source WAL's checksums use big-endian words.
const FLAG_BIG_ENDIAN: u16 = 1;

/// Magic bytes at the start of a segment.
pub const MAGIC: &[u8; 4] = b"LBSG";
/// Size of the fixed header, CRC included.
pub const HEADER_SIZE: usize = 148;
/// Size of one commit-table record.
pub const COMMIT_RECORD_SIZE: usize = 32;

/// Where the segment's frames sat in the source WAL file; the agent uses it to resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WalPosition {
    /// The WAL header's checkpoint sequence number.
    pub checkpoint_seq: u32,
    /// First salt of the WAL header.
    pub salt1: u32,
    /// Second salt of the WAL header.
    pub salt2: u32,
    /// Whether the WAL's checksums use big-endian words.
    pub big_endian: bool,
    /// Byte offset of the first frame.
    pub start_offset: u64,
    /// Byte offset just past the last frame.
    pub end_offset: u64,
    /// Running WAL checksum before the first frame.
    pub checksum_before: WalChecksum,
    /// Running WAL checksum after the last frame.
    pub checksum_after: WalChecksum,
}

/// The fixed header of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version that wrote the segment.
    pub version: u16,
    /// Generation the segment belongs to.
    pub generation: Generation,
    /// Id of the first transaction.
    pub first_txid: TxId,
    /// Id of the last transaction.
    pub last_txid: TxId,
    /// Page size in bytes.
    pub page_size: u32,
    /// Number of frames.
    pub frame_count: u32,
    /// Number of commits (`last_txid - first_txid + 1`).
    pub commit_count: u32,
    /// Database size in pages after the last commit.
    pub db_size: u32,
    /// When the agent saw the first commit (Unix ms).
    pub first_time_ms: u64,
    /// When the agent saw the last commit (Unix ms).
    pub last_time_ms: u64,
    /// Database checksum before the first commit.
    pub checksum_before: DbChecksum,
    /// Database checksum after the last commit.
    pub checksum_after: DbChecksum,
    /// Where the frames came from.
    pub wal: WalPosition,
    /// Length of the compressed body.
    pub body_len: u64,
    /// Length of the body once decompressed.
    pub raw_len: u64,
}

/// One committed transaction within a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    /// Transaction id.
    pub txid: TxId,
    /// When the agent saw the commit (Unix ms).
    pub time_ms: u64,
    /// Number of frames in the transaction.
    pub frames: u32,
    /// Database size in pages after the commit.
    pub db_size: u32,
    /// Database checksum after the commit.
    pub checksum: DbChecksum,
}

/// A decoded, verified segment.
#[derive(Clone, Debug)]
pub struct Segment {
    /// The header.
    pub header: SegmentHeader,
    /// One record per commit, in order.
    pub commits: Vec<CommitRecord>,
    /// The raw WAL frames, `frame_count * (24 + page_size)` bytes.
    pub frames: Vec<u8>,
}

fn put16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_be_bytes());
}
pub(crate) fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub(crate) fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Which of our objects a fixed header starts, for its errors.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Segment,
    Snapshot,
}

/// Ends a fixed header of `size` bytes with the CRC32 of the bytes before it.
pub(crate) fn seal_header(mut b: Vec<u8>, size: usize) -> Vec<u8> {
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(b.len(), size);
    b
}

/// Checks that the 4 bytes at `end` are the CRC32 (IEEE, big-endian) of `b[..end]`; `what` names
/// it in the error.
pub(crate) fn check_crc(b: &[u8], end: usize, what: &'static str) -> Result<()> {
    let stored = get32(b, end);
    let computed = crc32fast::hash(&b[..end]);
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            what,
            stored: stored.into(),
            computed: computed.into(),
        });
    }
    Ok(())
}

/// The checks every fixed header of ours starts with: `b` holds at least `size` bytes, starts
/// with `magic`, has a version from 1 to `newest` (returned), and ends with the CRC32 of the
/// bytes before it (see [`seal_header`]).
pub(crate) fn check_header(
    b: &[u8],
    size: usize,
    magic: &[u8; 4],
    newest: u16,
    kind: Kind,
) -> Result<u16> {
    if b.len() < size {
        return Err(Error::Incomplete {
            needed: size - b.len(),
        });
    }
    if &b[0..4] != magic {
        return Err(Error::corrupt(
            0,
            match kind {
                Kind::Segment => "not a lifeboat segment (bad magic)",
                Kind::Snapshot => "not a lifeboat snapshot (bad magic)",
            },
        ));
    }
    let version = get16(b, 4);
    if version > newest || version == 0 {
        return Err(Error::UnsupportedVersion(version));
    }
    check_crc(
        b,
        size - 4,
        match kind {
            Kind::Segment => "segment header CRC32",
            Kind::Snapshot => "snapshot header CRC32",
        },
    )?;
    Ok(version)
}

impl SegmentHeader {
    /// Encodes the header, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_SIZE);
        b.extend_from_slice(MAGIC);
        put16(&mut b, self.version);
        put16(&mut b, u16::from(self.wal.big_endian));
        put64(&mut b, self.generation.0);
        put64(&mut b, self.first_txid.0);
        put64(&mut b, self.last_txid.0);
        put32(&mut b, self.page_size);
        put32(&mut b, self.frame_count);
        put32(&mut b, self.commit_count);
        put32(&mut b, self.db_size);
        put64(&mut b, self.first_time_ms);
        put64(&mut b, self.last_time_ms);
        put64(&mut b, self.checksum_before.0);
        put64(&mut b, self.checksum_after.0);
        put32(&mut b, self.wal.checkpoint_seq);
        put32(&mut b, self.wal.salt1);
        put32(&mut b, self.wal.salt2);
        put32(&mut b, 0);
        put64(&mut b, self.wal.start_offset);
        put64(&mut b, self.wal.end_offset);
        put64(&mut b, sqlite::pack(self.wal.checksum_before));
        put64(&mut b, sqlite::pack(self.wal.checksum_after));
        put64(&mut b, self.body_len);
        put64(&mut b, self.raw_len);
        seal_header(b, HEADER_SIZE)
    }

    /// Decodes and verifies a header from the first [`HEADER_SIZE`] bytes of a segment.
    pub fn decode(b: &[u8]) -> Result<SegmentHeader> {
        let version = check_header(b, HEADER_SIZE, MAGIC, VERSION, Kind::Segment)?;
        let h = SegmentHeader {
            version,
            generation: Generation(get64(b, 8)),
            first_txid: TxId(get64(b, 16)),
            last_txid: TxId(get64(b, 24)),
            page_size: get32(b, 32),
            frame_count: get32(b, 36),
            commit_count: get32(b, 40),
            db_size: get32(b, 44),
            first_time_ms: get64(b, 48),
            last_time_ms: get64(b, 56),
            checksum_before: DbChecksum(get64(b, 64)),
            checksum_after: DbChecksum(get64(b, 72)),
            wal: WalPosition {
                big_endian: get16(b, 6) & FLAG_BIG_ENDIAN != 0,
                checkpoint_seq: get32(b, 80),
                salt1: get32(b, 84),
                salt2: get32(b, 88),
                start_offset: get64(b, 96),
                end_offset: get64(b, 104),
                checksum_before: sqlite::unpack(get64(b, 112)),
                checksum_after: sqlite::unpack(get64(b, 120)),
            },
            body_len: get64(b, 128),
            raw_len: get64(b, 136),
        };
        if !(512..=65536).contains(&h.page_size) || !h.page_size.is_power_of_two() {
            return Err(Error::corrupt(32, format!("bad page size {}", h.page_size)));
        }
        if h.commit_count == 0 || h.last_txid.0 < h.first_txid.0 {
            return Err(Error::corrupt(16, "segment holds no commit"));
        }
        if h.last_txid.0 - h.first_txid.0 + 1 != u64::from(h.commit_count) {
            return Err(Error::corrupt(
                40,
                "commit count does not match the txid range",
            ));
        }
        if get16(b, 6) & !FLAG_BIG_ENDIAN != 0 {
            // Flags this reader does not know (a future encryption envelope sets one).
            return Err(Error::UnsupportedVersion(version));
        }
        let frame_size = (FRAME_HEADER_SIZE + h.page_size as usize) as u64;
        let expect_raw = u64::from(h.commit_count) * COMMIT_RECORD_SIZE as u64
            + u64::from(h.frame_count) * frame_size;
        let raw_ok = if version == VERSION_1 {
            h.raw_len == expect_raw
        } else {
            h.raw_len <= format2::max_raw_len(&h)
        };
        if !raw_ok {
            return Err(Error::corrupt(
                136,
                "body length does not match frame count",
            ));
        }
        Ok(h)
    }

    /// Size of one frame in this segment.
    pub fn frame_size(&self) -> usize {
        FRAME_HEADER_SIZE + self.page_size as usize
    }

    fn wal_header(&self) -> WalHeader {
        WalHeader {
            big_endian: self.wal.big_endian,
            page_size: self.page_size,
            checkpoint_seq: self.wal.checkpoint_seq,
            salt1: self.wal.salt1,
            salt2: self.wal.salt2,
            checksum: self.wal.checksum_before,
        }
    }
}

impl Segment {
    /// Encodes the segment in the current format (2). `header.body_len`, `raw_len`,
    /// `frame_count` and `commit_count` are filled in from the content; the rest of the header is
    /// taken as given.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with_bases(&BasePages::new())
    }

    /// Encodes the segment in format 2, storing the first version of each page found in
    /// `bases` as a delta against that page as it stood before the segment (see
    /// [`format2`]; a reader then needs that state to rebuild the frames).
    pub fn encode_with_bases(&self, bases: &BasePages) -> Vec<u8> {
        let raw = format2::encode_body(self, bases);
        let body = zstd::bulk::compress(&raw, format2::ZSTD_LEVEL)
            .expect("zstd compresses any input into a growable buffer");
        self.seal(VERSION, raw.len(), &body)
    }

    /// Encodes the segment in format 1 (whole frames, LZ4), as lifeboat wrote before format 2.
    /// Kept so tests can build format-1 replicas; the agent never writes it.
    pub fn encode_format1(&self) -> Vec<u8> {
        let mut raw =
            Vec::with_capacity(self.commits.len() * COMMIT_RECORD_SIZE + self.frames.len());
        format2::encode_commits(&self.commits, &mut raw);
        raw.extend_from_slice(&self.frames);
        let body = lz4_flex::block::compress(&raw);
        self.seal(VERSION_1, raw.len(), &body)
    }

    /// Header, body and object CRC.
    fn seal(&self, version: u16, raw_len: usize, body: &[u8]) -> Vec<u8> {
        let mut h = self.header;
        h.version = version;
        h.frame_count = (self.frames.len() / h.frame_size()) as u32;
        h.commit_count = self.commits.len() as u32;
        seal(h, raw_len, body)
    }

    /// Decodes a whole segment (either format) and verifies everything it can prove on its own:
    /// both CRCs, the commit table, SQLite's frame checksum chain, and the frame-to-commit
    /// correspondence. A format-2 segment whose pages are deltas against the state before it
    /// needs that state: use [`AnySegment`] (this refuses such a segment).
    pub fn decode(b: &[u8]) -> Result<Segment> {
        AnySegment::open(b)?.rebuild(&mut |pgno, _| {
            Err(Error::corrupt(
                0,
                format!("page {pgno} is a delta against the database before the segment"),
            ))
        })
    }

    pub(crate) fn verify_frames(&self) -> Result<()> {
        let h = &self.header;
        let wal = h.wal_header();
        let fs = h.frame_size();
        let mut running = h.wal.checksum_before;
        let mut commit_iter = self.commits.iter();
        let mut in_txn = 0u32;
        for (i, frame) in self.frames.chunks_exact(fs).enumerate() {
            let (fh, c) = match check_frame(&wal, running, frame)? {
                Ok(v) => v,
                Err(fault) => {
                    return Err(Error::corrupt(
                        i as u64,
                        format!("frame {i} fails SQLite's check: {fault:?}"),
                    ))
                }
            };
            running = c;
            in_txn += 1;
            if fh.is_commit() {
                let rec = commit_iter
                    .next()
                    .ok_or_else(|| Error::corrupt(i as u64, "more commit frames than commits"))?;
                if rec.frames != in_txn || rec.db_size != fh.commit_size {
                    return Err(Error::corrupt(
                        i as u64,
                        format!("commit table disagrees with frames at txid {}", rec.txid),
                    ));
                }
                in_txn = 0;
            }
        }
        if in_txn != 0 || commit_iter.next().is_some() {
            return Err(Error::corrupt(0, "frames do not end on the last commit"));
        }
        self.verify_end(running)
    }

    /// Checks that SQLite's checksum chain over the frames, ending at `running`, ends where the
    /// header says, and that the last commit agrees with the header.
    pub(crate) fn verify_end(&self, running: WalChecksum) -> Result<()> {
        check_end(&self.header, &self.commits, running)
    }

    /// The frames as `(frame header, page)` pairs.
    pub fn frames(&self) -> impl Iterator<Item = (FrameHeader, &[u8])> {
        self.frames.chunks_exact(self.header.frame_size()).map(|f| {
            (
                FrameHeader::parse(f).expect("verified frame"),
                &f[FRAME_HEADER_SIZE..],
            )
        })
    }

    /// The frames grouped by transaction: `(commit record, frames of that transaction)`.
    pub fn transactions(&self) -> impl Iterator<Item = (&CommitRecord, &[u8])> {
        let fs = self.header.frame_size();
        let mut at = 0usize;
        self.commits.iter().map(move |c| {
            let len = c.frames as usize * fs;
            let s = &self.frames[at..at + len];
            at += len;
            (c, s)
        })
    }
}

/// Header `h` (its version, frame and commit counts set), body and object CRC.
pub(crate) fn seal(mut h: SegmentHeader, raw_len: usize, body: &[u8]) -> Vec<u8> {
    h.body_len = body.len() as u64;
    h.raw_len = raw_len as u64;
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len() + 4);
    out.extend_from_slice(&h.encode());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    put32(&mut out, crc);
    out
}

/// Checks that SQLite's checksum chain over a segment's frames, ending at `running`, ends where
/// the header says, and that the last commit agrees with the header.
pub(crate) fn check_end(
    h: &SegmentHeader,
    commits: &[CommitRecord],
    running: WalChecksum,
) -> Result<()> {
    if running != h.wal.checksum_after {
        return Err(Error::ChecksumMismatch {
            what: "WAL frame checksum chain",
            stored: sqlite::pack(h.wal.checksum_after),
            computed: sqlite::pack(running),
        });
    }
    let last = commits.last().expect("at least one commit");
    if last.db_size != h.db_size || last.checksum != h.checksum_after {
        return Err(Error::corrupt(0, "last commit disagrees with the header"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sqlite::encode_frame;

    pub(crate) fn sample() -> Segment {
        let wal = WalHeader::new(true, 512, 1, (5, 6));
        let mut frames = Vec::new();
        let mut c = wal.checksum;
        for (pgno, commit) in [(1u32, 0u32), (2, 2), (1, 2)] {
            let (f, n) = encode_frame(&wal, c, pgno, commit, &[pgno as u8 + commit as u8; 512]);
            frames.extend_from_slice(&f);
            c = n;
        }
        let commits = vec![
            CommitRecord {
                txid: TxId(1),
                time_ms: 10,
                frames: 2,
                db_size: 2,
                checksum: DbChecksum(77),
            },
            CommitRecord {
                txid: TxId(2),
                time_ms: 11,
                frames: 1,
                db_size: 2,
                checksum: DbChecksum(78),
            },
        ];
        Segment {
            header: SegmentHeader {
                version: VERSION,
                generation: Generation(9),
                first_txid: TxId(1),
                last_txid: TxId(2),
                page_size: 512,
                frame_count: 3,
                commit_count: 2,
                db_size: 2,
                first_time_ms: 10,
                last_time_ms: 11,
                checksum_before: DbChecksum(0),
                checksum_after: DbChecksum(78),
                wal: WalPosition {
                    checkpoint_seq: 1,
                    salt1: 5,
                    salt2: 6,
                    big_endian: true,
                    start_offset: 32,
                    end_offset: 32 + 3 * 536,
                    checksum_before: wal.checksum,
                    checksum_after: c,
                },
                body_len: 0,
                raw_len: 0,
            },
            commits,
            frames,
        }
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = s.encode();
        let d = Segment::decode(&bytes).unwrap();
        assert_eq!(d.commits, s.commits);
        assert_eq!(d.frames, s.frames);
        assert_eq!(d.transactions().count(), 2);
        assert_eq!(
            d.frames().map(|(h, _)| h.pgno).collect::<Vec<_>>(),
            [1, 2, 1]
        );
    }

    /// Flips `mask`'s bits in each byte of an encoded segment in turn: every flip must fail
    /// to decode.
    pub(crate) fn assert_every_flip_detected(bytes: &[u8], mask: u8) {
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= mask;
            assert!(
                Segment::decode(&b).is_err(),
                "flip at byte {i} not detected"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        assert_every_flip_detected(&sample().encode(), 0x10);
    }

    #[test]
    fn truncation_is_incomplete() {
        let bytes = sample().encode();
        assert!(matches!(
            Segment::decode(&bytes[..bytes.len() - 1]),
            Err(Error::Incomplete { .. })
        ));
        assert!(matches!(
            Segment::decode(&bytes[..100]),
            Err(Error::Incomplete { .. })
        ));
    }

    #[test]
    fn wrong_chain_start_is_rejected() {
        let mut s = sample();
        s.header.wal.checksum_before.0 ^= 1;
        let bytes = s.encode();
        assert!(Segment::decode(&bytes).is_err());
    }
}
