//! Reading a segment of either format: [`AnySegment::open`] checks what an object proves on its
//! own (both CRCs, the body's structure, the commit table), [`AnySegment::rebuild`] produces the
//! exact WAL frames and runs SQLite's frame checks over them.
//!
//! The split exists for format 2: a page's first version in a segment may be a delta against the
//! page as it stood before the segment, which only a reader that holds that state (a restore,
//! applying segments in order) can supply. Format 1 segments and format-2 segments without such
//! pages rebuild on their own ([`crate::segment::Segment::decode`] does both steps).

use super::format2::{self, Parsed, Patch, Patching};
use crate::segment::{
    check_end, CommitRecord, Segment, SegmentHeader, COMMIT_RECORD_SIZE, HEADER_SIZE, VERSION_1,
};
use crate::transaction::Frames;
use crate::{Error, Result};
use std::io::Read;

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

/// Up to this many raw bytes per body byte, a zstd body is decompressed in one call into a buffer
/// of the declared length (segment bodies compress 3 to 30 times); beyond, it is streamed.
const ZSTD_UP_FRONT: u64 = 64;

/// Decompresses a zstd body that must hold exactly `raw_len` bytes. A header may declare up to
/// 32768 raw bytes per body byte, which a forged object would make a reader allocate up front:
/// beyond [`ZSTD_UP_FRONT`] times the body, memory grows with the bytes the body actually
/// produces, not with `raw_len`. (zstd's decoder itself buffers at most one window, 128 MiB at
/// most by its default limit, and writes that buffer only as it produces bytes.) Streaming costs
/// several times the one-call time (16 MiB from a 0.5 MiB body: 2.5 ms in one
/// call, 20 to 40 ms streamed, on a loaded machine), hence the fast path.
///
/// The bytes go into `raw`, whatever it held (a buffer the caller recycles: new memory costs a
/// page fault every 4 KiB).
fn zstd_exact(body: &[u8], raw_len: u64, mut raw: Vec<u8>) -> Result<Vec<u8>> {
    let zstd = |e: std::io::Error| Error::corrupt(HEADER_SIZE as u64, format!("zstd: {e}"));
    raw.clear();
    let raw = if raw_len <= ZSTD_UP_FRONT * body.len() as u64 {
        // Fails on a body holding more than `raw`'s capacity (checked against `raw_len` below).
        raw.reserve_exact(raw_len as usize);
        zstd::bulk::Decompressor::new()
            .map_err(zstd)?
            .decompress_to_buffer(body, &mut raw)
            .map_err(zstd)?;
        raw
    } else {
        let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(zstd)?;
        raw.reserve(body.len() * 4);
        // One byte more than declared, so that a body holding more is told from one holding
        // exactly `raw_len`.
        decoder
            .take(raw_len.saturating_add(1))
            .read_to_end(&mut raw)
            .map_err(zstd)?;
        raw
    };
    if raw.len() as u64 > raw_len {
        return Err(Error::corrupt(
            HEADER_SIZE as u64,
            format!("zstd body holds more than the {raw_len} bytes its header declares"),
        ));
    }
    if (raw.len() as u64) < raw_len {
        return Err(Error::corrupt(
            HEADER_SIZE as u64,
            format!(
                "zstd body holds {} bytes, header declares {raw_len}",
                raw.len()
            ),
        ));
    }
    Ok(raw)
}

/// The number of bytes an LZ4 block produces, counted from its sequences without decompressing
/// it, or `None` if the block ends inside a sequence. Each sequence is a token (literal count in
/// the high nibble, match length minus 4 in the low one, 15 meaning more bytes follow, each added
/// until one is below 255), the literals, then a 2-byte offset and the match length's extra bytes;
/// the last sequence stops after its literals.
fn lz4_block_len(block: &[u8]) -> Option<u64> {
    fn length(block: &[u8], at: &mut usize, nibble: u8) -> Option<u64> {
        let mut n = u64::from(nibble);
        if nibble == 15 {
            loop {
                let b = *block.get(*at)?;
                *at += 1;
                n += u64::from(b);
                if b != 255 {
                    break;
                }
            }
        }
        Some(n)
    }
    let mut at = 0usize;
    let mut produced = 0u64;
    while at < block.len() {
        let token = block[at];
        at += 1;
        let literals = length(block, &mut at, token >> 4)?;
        at = at.checked_add(usize::try_from(literals).ok()?)?;
        if at > block.len() {
            return None;
        }
        produced += literals;
        if at == block.len() {
            break;
        }
        at += 2; // the match offset
        if at > block.len() {
            return None;
        }
        produced += length(block, &mut at, token & 15)? + 4;
    }
    Some(produced)
}

impl AnySegment {
    /// Checks a whole segment object: the header and object CRCs, the lengths, the commit
    /// table's txids and, for format 2, that every part of the body is well formed.
    pub fn open(b: &[u8]) -> Result<AnySegment> {
        AnySegment::open_in(b, Vec::new())
    }

    /// [`open`](Self::open), a format-2 body decompressed into `buffer` (a recycled one, see
    /// [`into_parts`](Self::into_parts); what it holds does not matter).
    pub fn open_in(b: &[u8], buffer: Vec<u8>) -> Result<AnySegment> {
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
        crate::segment::check_crc(b, end, "segment CRC32")?;
        let body = &b[HEADER_SIZE..end];
        if h.raw_len > max_expansion(h.version, body.len() as u64) {
            // Refused before decompressing (found by fuzzing: a header with valid CRCs declaring
            // 4 GB for a 113-byte body was allocated for). Within this bound a forged length is
            // still far beyond the body, so neither decoder below allocates by `raw_len`.
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
            // A forged body may produce far fewer bytes than the header declares (up to 255 per
            // body byte): count what its sequences produce before allocating for them.
            let produces = lz4_block_len(body).ok_or_else(|| {
                Error::corrupt(HEADER_SIZE as u64, "LZ4: body ends inside a sequence")
            })?;
            if produces != h.raw_len {
                return Err(Error::corrupt(
                    HEADER_SIZE as u64,
                    format!(
                        "LZ4 body holds {produces} bytes, header declares {}",
                        h.raw_len
                    ),
                ));
            }
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
        let raw = zstd_exact(body, h.raw_len, buffer)?;
        let (commits, parsed) = format2::parse(&h, raw)?;
        Ok(AnySegment {
            header: h,
            commits,
            body: Body::Deltas(parsed),
        })
    }

    /// The header, the commits, and the buffer that held the body, for
    /// [`open_in`](Self::open_in) to use again.
    pub fn into_parts(self) -> (SegmentHeader, Vec<CommitRecord>, Vec<u8>) {
        let buffer = match self.body {
            Body::Frames(frames) => frames,
            Body::Deltas(parsed) => parsed.raw,
        };
        (self.header, self.commits, buffer)
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
        self.rebuild_into(base, Vec::new())?.chain()
    }

    /// The first half of [`rebuild`](Self::rebuild), into `buffer`, whose allocation (say, the
    /// frames of a segment applied before) is reused: the pages of the frames, and their page
    /// numbers. [`Unchained::chain`] is the second half (SQLite's checksum chain and its
    /// checks), which can run on another thread while the next segment's pages are rebuilt.
    pub fn rebuild_into(
        self,
        base: &mut dyn FnMut(u32, &mut [u8]) -> Result<()>,
        buffer: Vec<u8>,
    ) -> Result<Unchained> {
        match self.body {
            Body::Frames(frames) => {
                let seg = Segment {
                    header: self.header,
                    commits: self.commits,
                    frames,
                };
                seg.verify_frames()?;
                Ok(Unchained { seg, chained: true })
            }
            Body::Deltas(p) => {
                let frames = format2::rebuild_pages(&self.header, &p, base, buffer)?;
                Ok(Unchained {
                    seg: Segment {
                        header: self.header,
                        commits: self.commits,
                        frames,
                    },
                    chained: false,
                })
            }
        }
    }
}

impl AnySegment {
    /// Whether the body holds page deltas (format 2), which [`patch`](Self::patch) applies.
    pub fn holds_deltas(&self) -> bool {
        matches!(self.body, Body::Deltas(_))
    }

    /// Applies a format-2 segment's page versions to pages in place, and proves every frame as
    /// [`rebuild`](Self::rebuild) does (SQLite's checksum chain from the header's start to its
    /// end, computed from each page's changed bytes; see `format2::weights`) without writing the
    /// frames. The segment's pages are independent of each other: up to `how.parts` threads
    /// patch them, each calling `how.base` as [`rebuild`](Self::rebuild) calls `base` for the
    /// pages it has. Returns each page's last version among the first `kept` frames, with that
    /// frame's index and the version's [`page_hash`](crate::checksum::page_hash), and with
    /// `how.every_version` each frame's page number and page hash in WAL order, for every
    /// commit's database checksum. A format-1 segment is refused: its frames are stored whole,
    /// [`rebuild`](Self::rebuild) verifies them.
    pub fn patch(&self, kept: usize, how: &Patching<'_>) -> Result<Patch> {
        let Body::Deltas(body) = &self.body else {
            return Err(Error::corrupt(0, "a format-1 segment has no page deltas"));
        };
        let (end, patch) = format2::patch::patch(&self.header, &self.commits, body, kept, how)?;
        check_end(&self.header, &self.commits, end)?;
        Ok(patch)
    }
}

/// A segment whose pages are rebuilt but whose frames are not yet chained and verified (see
/// [`AnySegment::rebuild_into`]).
#[derive(Debug)]
pub struct Unchained {
    seg: Segment,
    chained: bool,
}

impl Unchained {
    /// A segment already verified.
    pub fn verified(seg: Segment) -> Unchained {
        Unchained { seg, chained: true }
    }

    /// The segment's header.
    pub fn header(&self) -> &SegmentHeader {
        &self.seg.header
    }

    /// The commit records.
    pub fn commits(&self) -> &[CommitRecord] {
        &self.seg.commits
    }

    /// The transactions' pages, as [`Segment::txns`] gives them: the bytes the chain will be
    /// computed over, not yet proven (only [`chain`](Self::chain) proves them).
    pub fn txns_unproven(&self) -> impl Iterator<Item = (&CommitRecord, Frames<'_>)> {
        self.seg.txns()
    }

    /// Completes the frames and verifies them as a format-1 segment's stored frames are
    /// verified: SQLite's checksum chain from the header's start to its end, the salts, and the
    /// commit frames against the commit table.
    pub fn chain(self) -> Result<Segment> {
        let mut seg = self.seg;
        if !self.chained {
            let end = format2::chain(&seg.header, &seg.commits, &mut seg.frames);
            // Salts, page numbers and commit sizes were written from the checked header,
            // frame map and commit table, and the chain computed over the rebuilt bytes:
            // checking each frame again would only recompute it.
            seg.verify_end(end)?;
        }
        Ok(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `len` bytes of which about one in `every` is random, the rest repeat.
    fn compressible(len: usize, every: u64) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x < u64::MAX / every {
                    x as u8
                } else {
                    (i % 251) as u8
                }
            })
            .collect()
    }

    #[test]
    fn zstd_bodies_decode_to_exactly_the_declared_length_either_way() {
        // Ratio about 2 (one call) and above ZSTD_UP_FRONT (streamed).
        for every in [2, 1 << 40] {
            let raw = compressible(1 << 20, every);
            let body = zstd::bulk::compress(&raw, format2::ZSTD_LEVEL).unwrap();
            let len = raw.len() as u64;
            assert_eq!(
                len > ZSTD_UP_FRONT * body.len() as u64,
                every > 2,
                "{} body bytes",
                body.len()
            );
            assert!(zstd_exact(&body, len, Vec::new()).unwrap() == raw);
            // A recycled buffer, larger and full of other bytes, changes nothing.
            assert!(zstd_exact(&body, len, vec![7; 2 * len as usize]).unwrap() == raw);
            assert!(zstd_exact(&body, len - 1, Vec::new()).is_err());
            assert!(zstd_exact(&body, len - 1, vec![7; 2 * len as usize]).is_err());
            let e = zstd_exact(&body, len + 1, Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("holds {len} bytes")), "{e}");
            assert!(zstd_exact(&body[..body.len() - 1], len, Vec::new()).is_err());
        }
    }

    proptest! {
        #[test]
        fn lz4_block_len_counts_what_the_block_decodes_to(
            len in 1usize..20_000,
            every in 1u64..64,
            cut in any::<proptest::sample::Index>(),
        ) {
            let raw = compressible(len, every);
            let block = lz4_flex::block::compress(&raw);
            prop_assert_eq!(lz4_block_len(&block), Some(len as u64));
            // A block cut short counts as broken or as fewer bytes, never as the whole.
            let short = &block[..cut.index(block.len())];
            prop_assert!(lz4_block_len(short).is_none_or(|n| n < len as u64));
        }
    }
}
