//! Reading a segment of either format: [`AnySegment::open`] checks what an object proves on its
//! own (both CRCs, the body's structure, the commit table), [`AnySegment::rebuild`] produces the
//! exact WAL frames and runs SQLite's frame checks over them.
//!
//! The split exists for format 2: a page's first version in a segment may be a delta against the
//! page as it stood before the segment, which only a reader that holds that state (a restore,
//! applying segments in order) can supply. Format 1 segments and format-2 segments without such
//! pages rebuild on their own ([`crate::segment::Segment::decode`] does both steps).

use super::format2::{self, Parsed};
use crate::segment::{
    CommitRecord, Segment, SegmentHeader, COMMIT_RECORD_SIZE, HEADER_SIZE, VERSION_1,
};
use crate::{Error, Result};

/// A segment object whose CRCs and structure are verified, before its frames are rebuilt.
#[derive(Clone, Debug)]
pub struct AnySegment {
    /// The header.
    pub header: SegmentHeader,
    /// One record per commit, in order.
    pub commits: Vec<CommitRecord>,
    body: Body,
}

#[derive(Clone, Debug)]
enum Body {
    /// Format 1: the frames as stored.
    Frames(Vec<u8>),
    /// Format 2: page deltas.
    Deltas(Parsed),
}

/// The most a compressed body of `body_len` bytes can decompress to: an LZ4 block writes at most
/// 255 bytes per input byte (a match-length byte), zstd at most one 128 KiB block per 4-byte RLE
/// block.
fn max_expansion(version: u16, body_len: u64) -> u64 {
    if version == VERSION_1 {
        body_len.saturating_mul(255).saturating_add(255)
    } else {
        body_len.saturating_mul(32 * 1024)
    }
}

impl AnySegment {
    /// Checks a whole segment object: the header and object CRCs, the lengths, the commit
    /// table's txids and, for format 2, that every part of the body is well formed.
    pub fn open(b: &[u8]) -> Result<AnySegment> {
        let h = SegmentHeader::decode(b)?;
        let total = HEADER_SIZE as u64 + h.body_len + 4;
        if (b.len() as u64) < total {
            return Err(Error::Incomplete {
                needed: (total - b.len() as u64) as usize,
            });
        }
        if (b.len() as u64) > total {
            return Err(Error::corrupt(total, "trailing bytes after segment"));
        }
        let end = b.len() - 4;
        let stored = crate::segment::get32(b, end);
        let computed = crc32fast::hash(&b[..end]);
        if stored != computed {
            return Err(Error::ChecksumMismatch {
                what: "segment CRC32",
                stored: stored.into(),
                computed: computed.into(),
            });
        }
        let body = &b[HEADER_SIZE..end];
        if h.raw_len > max_expansion(h.version, body.len() as u64) {
            // Refused before `raw_len` bytes are allocated for it (found by fuzzing: a header
            // with valid CRCs declaring 4 GB for a 113-byte body).
            return Err(Error::corrupt(
                136,
                format!(
                    "declares {} raw bytes, more than a {}-byte body can hold",
                    h.raw_len,
                    body.len()
                ),
            ));
        }
        if h.version == VERSION_1 {
            let raw = lz4_flex::block::decompress(body, h.raw_len as usize)
                .map_err(|e| Error::corrupt(HEADER_SIZE as u64, format!("LZ4: {e}")))?;
            if raw.len() as u64 != h.raw_len {
                return Err(Error::corrupt(HEADER_SIZE as u64, "short LZ4 body"));
            }
            let table_len = h.commit_count as usize * COMMIT_RECORD_SIZE;
            let commits = format2::decode_commits(&h, &raw[..table_len])?;
            let mut frames = raw;
            frames.drain(..table_len);
            return Ok(AnySegment {
                header: h,
                commits,
                body: Body::Frames(frames),
            });
        }
        let raw = zstd::bulk::decompress(body, h.raw_len as usize)
            .map_err(|e| Error::corrupt(HEADER_SIZE as u64, format!("zstd: {e}")))?;
        if raw.len() as u64 != h.raw_len {
            return Err(Error::corrupt(HEADER_SIZE as u64, "short zstd body"));
        }
        let (commits, parsed) = format2::parse(&h, raw)?;
        Ok(AnySegment {
            header: h,
            commits,
            body: Body::Deltas(parsed),
        })
    }

    /// The pages whose bytes before the segment [`rebuild`](Self::rebuild) asks for, in
    /// ascending order (none for format 1).
    pub fn base_pages(&self) -> Vec<u32> {
        match &self.body {
            Body::Frames(_) => Vec::new(),
            Body::Deltas(p) => p.base_pages().collect(),
        }
    }

    /// Rebuilds the exact frames and verifies them as a format-1 segment's stored frames are
    /// verified: SQLite's checksum chain from the header's start to its end, the salts, and the
    /// commit frames against the commit table. `base(pgno, page)` fills `page` with page `pgno`
    /// as it stood before the segment's first commit, for each page of
    /// [`base_pages`](Self::base_pages).
    pub fn rebuild(self, base: &mut dyn FnMut(u32, &mut [u8]) -> Result<()>) -> Result<Segment> {
        let frames = match self.body {
            Body::Frames(f) => f,
            Body::Deltas(p) => format2::rebuild(&self.header, &self.commits, &p, base)?,
        };
        let seg = Segment {
            header: self.header,
            commits: self.commits,
            frames,
        };
        seg.verify_frames()?;
        Ok(seg)
    }
}
