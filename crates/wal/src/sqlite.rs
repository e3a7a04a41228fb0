//! SQLite's write-ahead log: header, frames and the cumulative checksum.
//!
//! A WAL file is a 32-byte header followed by frames of a 24-byte header plus one page. Every frame
//! carries the header's two salts and a checksum that continues the checksum of the frame before it
//! (the first frame continues the header's). SQLite treats the first frame whose salts or checksum
//! do not match as the end of the log: what follows is left over from an earlier cycle of the file
//! or was torn by a crash. A frame whose "database size after commit" field is non-zero ends a
//! transaction; frames after the last such frame belong to a transaction not yet committed.
//!
//! See <https://www.sqlite.org/fileformat2.html#walformat>.

use crate::{Error, Result};

/// Size of the WAL file header.
pub const WAL_HEADER_SIZE: usize = 32;
/// Size of a frame header.
pub const FRAME_HEADER_SIZE: usize = 24;
/// Magic number of a WAL whose checksums use little-endian words.
pub const MAGIC_LE: u32 = 0x377f_0682;
/// Magic number of a WAL whose checksums use big-endian words.
pub const MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite has defined.
pub const WAL_VERSION: u32 = 3_007_000;

/// A running WAL checksum: the two 32-bit sums of SQLite's algorithm.
pub type WalChecksum = (u32, u32);

/// Computes SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from `init`.
pub fn wal_checksum(big_endian: bool, init: WalChecksum, data: &[u8]) -> WalChecksum {
    debug_assert_eq!(data.len() % 8, 0);
    let (mut s0, mut s1) = init;
    let word = |b: &[u8]| -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if big_endian {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    for chunk in data.chunks_exact(8) {
        s0 = s0.wrapping_add(word(&chunk[0..4])).wrapping_add(s1);
        s1 = s1.wrapping_add(word(&chunk[4..8])).wrapping_add(s0);
    }
    (s0, s1)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The 32-byte header at the start of a WAL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// Whether checksums use big-endian words (magic `0x377f0683`).
    pub big_endian: bool,
    /// Page size in bytes.
    pub page_size: u32,
    /// Checkpoint sequence number: SQLite adds one each time it restarts the log.
    pub checkpoint_seq: u32,
    /// First salt: SQLite adds one to it each time it restarts the log.
    pub salt1: u32,
    /// Second salt: random, new at each restart.
    pub salt2: u32,
    /// Checksum of the first 24 bytes of the header, the seed of the first frame's checksum.
    pub checksum: WalChecksum,
}

impl WalHeader {
    /// A header as SQLite writes it at the start of a log cycle, its checksum computed: for
    /// whoever writes a WAL of its own (tests, tools).
    pub fn new(big_endian: bool, page_size: u32, checkpoint_seq: u32, salts: (u32, u32)) -> Self {
        let mut h = WalHeader {
            big_endian,
            page_size,
            checkpoint_seq,
            salt1: salts.0,
            salt2: salts.1,
            checksum: (0, 0),
        };
        h.checksum = wal_checksum(big_endian, (0, 0), &h.encode()[..24]);
        h
    }

    /// Parses and verifies a header.
    pub fn parse(b: &[u8]) -> Result<WalHeader> {
        if b.len() < WAL_HEADER_SIZE {
            return Err(Error::Incomplete {
                needed: WAL_HEADER_SIZE - b.len(),
            });
        }
        let magic = be32(b, 0);
        let big_endian = match magic {
            MAGIC_BE => true,
            MAGIC_LE => false,
            _ => return Err(Error::corrupt(0, format!("bad WAL magic {magic:#x}"))),
        };
        let version = be32(b, 4);
        if version != WAL_VERSION {
            return Err(Error::corrupt(4, format!("unknown WAL version {version}")));
        }
        let page_size = be32(b, 8);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::corrupt(8, format!("bad WAL page size {page_size}")));
        }
        let checksum = (be32(b, 24), be32(b, 28));
        let computed = wal_checksum(big_endian, (0, 0), &b[..24]);
        if computed != checksum {
            return Err(Error::ChecksumMismatch {
                what: "WAL header",
                stored: pack(checksum),
                computed: pack(computed),
            });
        }
        Ok(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum,
        })
    }

    /// Encodes the header, computing its checksum (`self.checksum` is ignored and returned fresh).
    pub fn encode(&self) -> [u8; WAL_HEADER_SIZE] {
        let mut b = [0u8; WAL_HEADER_SIZE];
        let magic = if self.big_endian { MAGIC_BE } else { MAGIC_LE };
        b[0..4].copy_from_slice(&magic.to_be_bytes());
        b[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.checkpoint_seq.to_be_bytes());
        b[16..20].copy_from_slice(&self.salt1.to_be_bytes());
        b[20..24].copy_from_slice(&self.salt2.to_be_bytes());
        let c = wal_checksum(self.big_endian, (0, 0), &b[..24]);
        b[24..28].copy_from_slice(&c.0.to_be_bytes());
        b[28..32].copy_from_slice(&c.1.to_be_bytes());
        b
    }

    /// Size of one frame (header plus page).
    pub fn frame_size(&self) -> usize {
        FRAME_HEADER_SIZE + self.page_size as usize
    }

    /// Byte offset in the WAL file of frame `index` (0-based).
    pub fn frame_offset(&self, index: u64) -> u64 {
        WAL_HEADER_SIZE as u64 + index * self.frame_size() as u64
    }
}

/// Packs a WAL checksum into one `u64` for error messages and storage.
pub fn pack(c: WalChecksum) -> u64 {
    (u64::from(c.0) << 32) | u64::from(c.1)
}

/// Unpacks a WAL checksum stored with [`pack`].
pub fn unpack(v: u64) -> WalChecksum {
    ((v >> 32) as u32, v as u32)
}

/// The 24-byte header of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Page number (1-based).
    pub pgno: u32,
    /// For a commit frame, the database size in pages after the commit; 0 otherwise.
    pub commit_size: u32,
    /// Salts copied from the WAL header.
    pub salt1: u32,
    /// Second salt.
    pub salt2: u32,
    /// Cumulative checksum through this frame.
    pub checksum: WalChecksum,
}

impl FrameHeader {
    /// Parses a frame header without checking it.
    pub fn parse(b: &[u8]) -> Result<FrameHeader> {
        if b.len() < FRAME_HEADER_SIZE {
            return Err(Error::Incomplete {
                needed: FRAME_HEADER_SIZE - b.len(),
            });
        }
        Ok(FrameHeader {
            pgno: be32(b, 0),
            commit_size: be32(b, 4),
            salt1: be32(b, 8),
            salt2: be32(b, 12),
            checksum: (be32(b, 16), be32(b, 20)),
        })
    }

    /// Whether this frame ends a transaction.
    pub fn is_commit(&self) -> bool {
        self.commit_size != 0
    }
}

/// Why a frame was not accepted as the next frame of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFault {
    /// The frame's salts are not the header's: a leftover from an earlier cycle of the file.
    SaltMismatch,
    /// The frame's checksum does not continue the running checksum.
    ChecksumMismatch,
    /// Page number zero.
    BadPageNumber,
}

/// Checks `frame` (header plus page) as the successor of running checksum `prev` and returns its
/// header and the new running checksum.
pub fn check_frame(
    hdr: &WalHeader,
    prev: WalChecksum,
    frame: &[u8],
) -> Result<std::result::Result<(FrameHeader, WalChecksum), FrameFault>> {
    if frame.len() < hdr.frame_size() {
        return Err(Error::Incomplete {
            needed: hdr.frame_size() - frame.len(),
        });
    }
    let fh = FrameHeader::parse(frame)?;
    if fh.salt1 != hdr.salt1 || fh.salt2 != hdr.salt2 {
        return Ok(Err(FrameFault::SaltMismatch));
    }
    if fh.pgno == 0 {
        return Ok(Err(FrameFault::BadPageNumber));
    }
    let c = wal_checksum(hdr.big_endian, prev, &frame[..8]);
    let c = wal_checksum(
        hdr.big_endian,
        c,
        &frame[FRAME_HEADER_SIZE..hdr.frame_size()],
    );
    if c != fh.checksum {
        return Ok(Err(FrameFault::ChecksumMismatch));
    }
    Ok(Ok((fh, c)))
}

/// Encodes one frame, as SQLite would, continuing checksum `prev`. Returns the frame and the new
/// running checksum. Used by tests and by tools that write WAL files.
pub fn encode_frame(
    hdr: &WalHeader,
    prev: WalChecksum,
    pgno: u32,
    commit_size: u32,
    page: &[u8],
) -> (Vec<u8>, WalChecksum) {
    assert_eq!(page.len(), hdr.page_size as usize);
    let mut f = Vec::with_capacity(hdr.frame_size());
    f.extend_from_slice(&pgno.to_be_bytes());
    f.extend_from_slice(&commit_size.to_be_bytes());
    f.extend_from_slice(&hdr.salt1.to_be_bytes());
    f.extend_from_slice(&hdr.salt2.to_be_bytes());
    let c = wal_checksum(hdr.big_endian, prev, &f[..8]);
    let c = wal_checksum(hdr.big_endian, c, page);
    f.extend_from_slice(&c.0.to_be_bytes());
    f.extend_from_slice(&c.1.to_be_bytes());
    f.extend_from_slice(page);
    (f, c)
}

/// The committed transactions found in a run of WAL bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Number of whole frames, up to and including the last commit frame.
    pub frames: u64,
    /// Number of commit frames among them.
    pub commits: u64,
    /// Running checksum after the last commit frame.
    pub checksum_after: WalChecksum,
    /// Database size (pages) after the last commit, if any commit was found.
    pub db_size: Option<u32>,
    /// Why scanning stopped before the end of the input, if it did.
    pub stopped_by: Option<FrameFault>,
}

/// Scans whole frames in `buf`, which starts at a frame boundary whose running checksum is
/// `prev`, and reports how far the committed prefix reaches. Frames after the last commit, a
/// trailing partial frame, and everything from the first invalid frame on are not counted.
pub fn scan_frames(hdr: &WalHeader, prev: WalChecksum, buf: &[u8]) -> Scan {
    let fs = hdr.frame_size();
    let mut scan = Scan {
        checksum_after: prev,
        ..Scan::default()
    };
    let mut running = prev;
    let mut n = 0u64;
    for frame in buf.chunks_exact(fs) {
        match check_frame(hdr, running, frame) {
            Ok(Ok((fh, c))) => {
                n += 1;
                running = c;
                if fh.is_commit() {
                    scan.frames = n;
                    scan.commits += 1;
                    scan.checksum_after = c;
                    scan.db_size = Some(fh.commit_size);
                }
            }
            Ok(Err(fault)) => {
                scan.stopped_by = Some(fault);
                break;
            }
            Err(_) => break,
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> WalHeader {
        WalHeader::new(false, 512, 3, (0x1111, 0x2222))
    }

    #[test]
    fn header_round_trip() {
        let h = header();
        let b = h.encode();
        let p = WalHeader::parse(&b).unwrap();
        assert_eq!(p.salt1, 0x1111);
        assert_eq!(p.checksum, wal_checksum(false, (0, 0), &b[..24]));
        assert_eq!(p, h, "a new header carries the checksum it is parsed with");
    }

    #[test]
    fn header_checksum_is_checked() {
        let mut b = header().encode();
        b[13] ^= 1;
        assert!(matches!(
            WalHeader::parse(&b),
            Err(Error::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn scan_counts_only_committed_prefix() {
        let h = header();
        let mut wal = Vec::new();
        let mut c = h.checksum;
        for (pgno, commit) in [(1, 0), (2, 2), (3, 0)] {
            let (f, n) = encode_frame(&h, c, pgno, commit, &[pgno as u8; 512]);
            wal.extend_from_slice(&f);
            c = n;
        }
        let s = scan_frames(&h, h.checksum, &wal);
        assert_eq!(s.frames, 2);
        assert_eq!(s.commits, 1);
        assert_eq!(s.db_size, Some(2));
        assert_eq!(s.stopped_by, None);
    }
}
