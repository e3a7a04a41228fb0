//! Snapshots: a full database image, streamed in compressed chunks: one zstd stream across the
//! chunks, flushed at each chunk's end (version 2), or each chunk an LZ4 block (version 1, still
//! read).
//!
//! Neither the writer nor the reader holds more than one chunk in memory (and, in version 2, the
//! zstd window, which lets a chunk refer back into the one before: a database's pages compress
//! to about half of what chunks compressed alone do). The header records the
//! generation, the transaction the image is the state after, and where the source WAL stood; the
//! trailer records the page count, the database checksum, the total length and a CRC32 over every
//! byte before it. They sit in the trailer because the writer learns them only as pages stream
//! past. The reader recomputes the database checksum as pages stream past and refuses a mismatch.

use std::io::{Read, Write};

use crate::checksum::{DbChecksum, PageHashes};
use crate::segment::{check_header, get16, get32, get64, seal_header, Kind, WalPosition};
use crate::sqlite;
use crate::{Error, Generation, Result, TxId};

/// The newest snapshot format, the one this crate writes: 2, zstd. Version 1 (LZ4 chunks) is
/// still read, and written when a header asks for it (tests, fixtures).
pub const VERSION: u16 = 2;
/// zstd level of version 2's stream (as for segments: about 1.5 times LZ4's CPU, and a third
/// of its bytes on a typical app's pages).
pub const ZSTD_LEVEL: i32 = 3;

/// Magic bytes at the start of a snapshot.
pub const MAGIC: &[u8; 4] = b"LBSN";
/// Magic bytes at the start of the trailer.
pub const TRAILER_MAGIC: &[u8; 4] = b"LBEN";
/// Size of the fixed header, CRC included.
pub const HEADER_SIZE: usize = 76;
/// Size of the trailer.
pub const TRAILER_SIZE: usize = 28;
/// Raw bytes per chunk (a chunk holds whole pages; at least one).
pub const CHUNK_BYTES: usize = 1 << 20;

/// The fixed header of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Format version that wrote it.
    pub version: u16,
    /// Generation.
    pub generation: Generation,
    /// The image is the state after this transaction.
    pub txid: TxId,
    /// Page size in bytes.
    pub page_size: u32,
    /// When the image was taken (Unix ms).
    pub time_ms: u64,
    /// Where the source WAL stood when the image was taken (`start_offset == end_offset`;
    /// an offset of 0 means the WAL was empty).
    pub wal: WalPosition,
}

/// What the trailer of a snapshot says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotTrailer {
    /// Number of pages.
    pub page_count: u32,
    /// Database checksum of the image.
    pub checksum: DbChecksum,
    /// Total length of the object.
    pub total_len: u64,
}

impl SnapshotHeader {
    /// Pages per chunk.
    pub fn chunk_pages(&self) -> u32 {
        (CHUNK_BYTES / self.page_size as usize).max(1) as u32
    }

    /// Encodes the header, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_SIZE);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&u16::from(self.wal.big_endian).to_be_bytes());
        b.extend_from_slice(&self.generation.0.to_be_bytes());
        b.extend_from_slice(&self.txid.0.to_be_bytes());
        b.extend_from_slice(&self.page_size.to_be_bytes());
        b.extend_from_slice(&self.chunk_pages().to_be_bytes());
        b.extend_from_slice(&self.time_ms.to_be_bytes());
        b.extend_from_slice(&self.wal.checkpoint_seq.to_be_bytes());
        b.extend_from_slice(&self.wal.salt1.to_be_bytes());
        b.extend_from_slice(&self.wal.salt2.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&self.wal.end_offset.to_be_bytes());
        b.extend_from_slice(&sqlite::pack(self.wal.checksum_after).to_be_bytes());
        seal_header(b, HEADER_SIZE)
    }

    /// Decodes and verifies a header.
    pub fn decode(b: &[u8]) -> Result<SnapshotHeader> {
        let version = check_header(b, HEADER_SIZE, MAGIC, VERSION, Kind::Snapshot)?;
        let end = get64(b, 56);
        let sum = sqlite::unpack(get64(b, 64));
        let h = SnapshotHeader {
            version,
            generation: Generation(get64(b, 8)),
            txid: TxId(get64(b, 16)),
            page_size: get32(b, 24),
            time_ms: get64(b, 32),
            wal: WalPosition {
                big_endian: get16(b, 6) & 1 == 1,
                checkpoint_seq: get32(b, 40),
                salt1: get32(b, 44),
                salt2: get32(b, 48),
                start_offset: end,
                end_offset: end,
                checksum_before: sum,
                checksum_after: sum,
            },
        };
        if !(512..=65536).contains(&h.page_size) || !h.page_size.is_power_of_two() {
            return Err(Error::corrupt(24, format!("bad page size {}", h.page_size)));
        }
        if get32(b, 28) != h.chunk_pages() {
            return Err(Error::corrupt(28, "unexpected chunk size"));
        }
        Ok(h)
    }
}

impl SnapshotTrailer {
    /// Decodes the last [`TRAILER_SIZE`] bytes of a snapshot (without the CRC check, which needs
    /// the whole object).
    pub fn decode(b: &[u8]) -> Result<SnapshotTrailer> {
        if b.len() < TRAILER_SIZE {
            return Err(Error::Incomplete {
                needed: TRAILER_SIZE - b.len(),
            });
        }
        let t = &b[b.len() - TRAILER_SIZE..];
        if &t[0..4] != TRAILER_MAGIC {
            return Err(Error::corrupt(0, "bad snapshot trailer"));
        }
        Ok(SnapshotTrailer {
            page_count: get32(t, 4),
            checksum: DbChecksum(get64(t, 8)),
            total_len: get64(t, 16),
        })
    }
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.len += b.len() as u64;
        self.inner.write_all(b)
    }
}

/// Writes a snapshot, one page at a time.
pub struct SnapshotWriter<W: Write> {
    out: CrcWriter<W>,
    header: SnapshotHeader,
    chunk: Vec<u8>,
    pages: u32,
    hashes: PageHashes,
    /// Version 2's stream, from the first chunk on.
    zstd: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot in the format `header.version` names (1 or 2).
    pub fn new(inner: W, header: SnapshotHeader) -> std::io::Result<Self> {
        if !(1..=VERSION).contains(&header.version) {
            return Err(std::io::Error::other(format!(
                "cannot write snapshot version {}",
                header.version
            )));
        }
        let mut out = CrcWriter {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        out.put(&header.encode())?;
        Ok(SnapshotWriter {
            out,
            chunk: Vec::with_capacity(header.chunk_pages() as usize * header.page_size as usize),
            header,
            pages: 0,
            hashes: PageHashes::new(header.page_size as usize),
            zstd: None,
        })
    }

    /// Appends the next page.
    pub fn write_page(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.len() != self.header.page_size as usize {
            return Err(std::io::Error::other("page of the wrong size"));
        }
        // A full chunk is written when the next page comes, so that the last chunk (written by
        // `finish`) is known to be the last and can end version 2's zstd frame.
        if self.chunk.len() >= self.header.chunk_pages() as usize * self.header.page_size as usize {
            self.flush_chunk(false)?;
        }
        self.pages += 1;
        self.hashes.set_page(self.pages, data);
        self.chunk.extend_from_slice(data);
        Ok(())
    }

    fn flush_chunk(&mut self, last: bool) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        if self.header.version == 1 {
            let c = lz4_flex::block::compress_prepend_size(&self.chunk);
            self.out.put(&(c.len() as u32).to_be_bytes())?;
            self.out.put(&c)?;
        } else {
            let enc = match &mut self.zstd {
                Some(e) => e,
                None => self
                    .zstd
                    .insert(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?),
            };
            enc.write_all(&self.chunk)?;
            let body = if last {
                self.zstd.take().expect("just used").finish()?
            } else {
                // A flush ends a zstd block: what this chunk holds decodes from its own bytes.
                enc.flush()?;
                std::mem::take(enc.get_mut())
            };
            self.out.put(&(body.len() as u32 + 4).to_be_bytes())?;
            self.out.put(&(self.chunk.len() as u32).to_be_bytes())?;
            self.out.put(&body)?;
        }
        self.chunk.clear();
        Ok(())
    }

    /// Writes the end mark and trailer; returns the inner writer, the per-page hashes of the image
    /// and the trailer.
    pub fn finish(mut self) -> std::io::Result<(W, PageHashes, SnapshotTrailer)> {
        self.flush_chunk(true)?;
        self.out.put(&0u32.to_be_bytes())?;
        let trailer = SnapshotTrailer {
            page_count: self.pages,
            checksum: self.hashes.checksum(),
            total_len: self.out.len + TRAILER_SIZE as u64,
        };
        self.out.put(TRAILER_MAGIC)?;
        self.out.put(&trailer.page_count.to_be_bytes())?;
        self.out.put(&trailer.checksum.0.to_be_bytes())?;
        self.out.put(&trailer.total_len.to_be_bytes())?;
        let crc = self.out.crc.clone().finalize();
        self.out.inner.write_all(&crc.to_be_bytes())?;
        Ok((self.out.inner, self.hashes, trailer))
    }
}

/// Reads a snapshot, verifying it as it goes.
pub struct SnapshotReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
    len: u64,
    header: SnapshotHeader,
    hashes: PageHashes,
    trailer: Option<SnapshotTrailer>,
    /// Version 2's stream, from the first chunk on, and whether its frame has ended.
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
    frame_ended: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads and verifies the header.
    pub fn new(mut inner: R) -> Result<Self> {
        let mut h = [0u8; HEADER_SIZE];
        inner.read_exact(&mut h)?;
        let header = SnapshotHeader::decode(&h)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        Ok(SnapshotReader {
            inner,
            crc,
            len: HEADER_SIZE as u64,
            hashes: PageHashes::new(header.page_size as usize),
            header,
            trailer: None,
            zstd: None,
            frame_ended: false,
        })
    }

    /// The verified header.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The per-page hashes of the pages read so far.
    pub fn hashes(&self) -> &PageHashes {
        &self.hashes
    }

    /// The verified trailer, once [`next_chunk`](Self::next_chunk) has returned `None`.
    pub fn trailer(&self) -> Option<SnapshotTrailer> {
        self.trailer
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Returns the next chunk of whole pages (page numbers follow on from the previous chunk), or
    /// `None` after the last page once the trailer, the CRC and the database checksum have been
    /// verified.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let ps = self.header.page_size as usize;
        let mut lb = [0u8; 4];
        self.take(&mut lb)?;
        let clen = u32::from_be_bytes(lb) as usize;
        if clen == 0 {
            self.finish()?;
            return Ok(None);
        }
        let max_raw = self.header.chunk_pages() as usize * ps;
        let max_len = if self.header.version == 1 {
            lz4_flex::block::get_maximum_output_size(max_raw) + 4
        } else {
            // The stream's frame header and end, and the blocks' headers, fit in the bound's slack.
            zstd::zstd_safe::compress_bound(max_raw) + 4
        };
        if clen > max_len {
            return Err(Error::corrupt(self.len, "chunk length out of range"));
        }
        let mut c = vec![0u8; clen];
        self.take(&mut c)?;
        let raw_len = match self.header.version {
            1 if c.len() >= 4 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize,
            2 if c.len() >= 5 => get32(&c, 0) as usize,
            _ => usize::MAX,
        };
        if raw_len > max_raw {
            return Err(Error::corrupt(self.len, "chunk size out of range"));
        }
        let raw = if self.header.version == 1 {
            lz4_flex::block::decompress_size_prepended(&c)
                .map_err(|e| Error::corrupt(self.len, format!("LZ4: {e}")))?
        } else {
            self.unzstd(&c[4..], raw_len)?
        };
        if raw.is_empty() || raw.len() % ps != 0 {
            return Err(Error::corrupt(self.len, "chunk is not whole pages"));
        }
        let mut pgno = self.hashes.page_count();
        for p in raw.chunks_exact(ps) {
            pgno += 1;
            self.hashes.set_page(pgno, p);
        }
        Ok(Some(raw))
    }

    /// Decodes a version 2 chunk's part of the stream: exactly `raw_len` bytes, from exactly
    /// `c`.
    fn unzstd(&mut self, c: &[u8], raw_len: usize) -> Result<Vec<u8>> {
        use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
        let at = self.len;
        let zerr = |e: std::io::Error| Error::corrupt(at, format!("zstd: {e}"));
        if self.frame_ended {
            return Err(Error::corrupt(at, "chunk after the end of the zstd stream"));
        }
        let dec = match &mut self.zstd {
            Some(d) => d,
            None => self.zstd.insert(Decoder::new().map_err(zerr)?),
        };
        let mut raw = vec![0u8; raw_len];
        let mut input = InBuffer::around(c);
        let mut out = OutBuffer::around(&mut raw[..]);
        loop {
            let (i, o) = (input.pos(), out.pos());
            let hint = dec.run(&mut input, &mut out).map_err(zerr)?;
            self.frame_ended = hint == 0;
            if input.pos() == c.len() && (out.pos() == raw_len || self.frame_ended) {
                break;
            }
            if (i, o) == (input.pos(), out.pos()) {
                return Err(Error::corrupt(at, "chunk does not decode to its size"));
            }
        }
        if out.pos() != raw_len {
            return Err(Error::corrupt(at, "chunk decodes short of its size"));
        }
        // Nothing may be left over for the next chunk.
        let mut probe = [0u8; 1];
        let mut extra = OutBuffer::around(&mut probe[..]);
        if !self.frame_ended {
            dec.run(&mut InBuffer::around(&[]), &mut extra)
                .map_err(zerr)?;
        }
        if extra.pos() != 0 {
            return Err(Error::corrupt(at, "chunk decodes past its size"));
        }
        Ok(raw)
    }

    fn finish(&mut self) -> Result<()> {
        if self.zstd.is_some() && !self.frame_ended {
            return Err(Error::corrupt(self.len, "zstd stream not ended"));
        }
        let mut t = [0u8; TRAILER_SIZE];
        self.inner.read_exact(&mut t)?;
        self.crc.update(&t[..TRAILER_SIZE - 4]);
        let trailer = SnapshotTrailer::decode(&t)?;
        let total = self.len + TRAILER_SIZE as u64;
        if trailer.total_len != total {
            return Err(Error::corrupt(self.len, "snapshot length mismatch"));
        }
        let stored = get32(&t, TRAILER_SIZE - 4);
        let computed = self.crc.clone().finalize();
        if stored != computed {
            return Err(Error::ChecksumMismatch {
                what: "snapshot CRC32",
                stored: stored.into(),
                computed: computed.into(),
            });
        }
        let mut extra = [0u8; 1];
        if self.inner.read(&mut extra).unwrap_or(0) != 0 {
            return Err(Error::corrupt(total, "trailing bytes after snapshot"));
        }
        if trailer.page_count != self.hashes.page_count() {
            return Err(Error::corrupt(total, "snapshot page count mismatch"));
        }
        let sum = self.hashes.checksum();
        if sum != trailer.checksum {
            return Err(Error::ChecksumMismatch {
                what: "snapshot database checksum",
                stored: trailer.checksum.0,
                computed: sum.0,
            });
        }
        self.trailer = Some(trailer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u16, page_size: u32) -> SnapshotHeader {
        SnapshotHeader {
            version,
            generation: Generation(1),
            txid: TxId(0),
            page_size,
            time_ms: 5,
            wal: WalPosition {
                salt1: 3,
                end_offset: 32,
                start_offset: 32,
                checksum_after: (1, 2),
                checksum_before: (1, 2),
                ..WalPosition::default()
            },
        }
    }

    /// Page `p` of a test image: pseudo-random bytes that repeat every 300 pages (1.2 MB of
    /// 4 KiB pages, more than a chunk), so that a chunk repeats what the one before holds but
    /// compresses little on its own.
    fn page(p: u32, page_size: u32) -> Vec<u8> {
        let mut x = u64::from(p % 300 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (0..page_size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn build_v(version: u16, pages: u32, page_size: u32) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), header(version, page_size)).unwrap();
        for p in 1..=pages {
            w.write_page(&page(p, page_size)).unwrap();
        }
        let (out, hashes, trailer) = w.finish().unwrap();
        assert_eq!(trailer.checksum, hashes.checksum());
        assert_eq!(trailer.total_len, out.len() as u64);
        out
    }

    fn read_all(b: &[u8]) -> Result<Vec<u8>> {
        let mut r = SnapshotReader::new(b)?;
        assert_eq!(r.header().wal.salt1, 3);
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk()? {
            out.extend_from_slice(&c);
        }
        assert!(r.trailer().is_some());
        Ok(out)
    }

    #[test]
    fn round_trip_across_chunks_in_both_versions() {
        for v in [1, 2] {
            let b = build_v(v, 600, 4096);
            assert_eq!(get16(&b, 4), v);
            let out = read_all(&b).unwrap();
            assert_eq!(out.len(), 600 * 4096);
            for p in [1, 256, 257, 599, 600] {
                let at = (p as usize - 1) * 4096;
                assert_eq!(out[at..at + 4096], page(p, 4096), "v{v} page {p}");
            }
            let t = SnapshotTrailer::decode(&b).unwrap();
            assert_eq!(t.page_count, 600);
        }
    }

    /// Version 2 is one stream: a chunk refers back into the one before, which chunks
    /// compressed alone (version 1) cannot.
    #[test]
    fn version_2_compresses_across_chunks() {
        let (v1, v2) = (build_v(1, 600, 4096), build_v(2, 600, 4096));
        assert!(v1.len() > 600 * 4096, "v1: {} bytes", v1.len());
        assert!(v2.len() < 330 * 4096, "v2: {} bytes", v2.len());
    }

    #[test]
    fn empty_database() {
        for v in [1, 2] {
            assert!(read_all(&build_v(v, 0, 4096)).unwrap().is_empty());
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        for v in [1, 2] {
            // Two chunks of 512-byte pages.
            let b = build_v(v, 2100, 512);
            // Every byte of the headers and the second chunk's start, a spread over the rest.
            let second = HEADER_SIZE + 4 + get32(&b, HEADER_SIZE) as usize;
            let near = |i: usize| i < HEADER_SIZE + 16 || (second..second + 64).contains(&i);
            for i in (0..b.len()).filter(|&i| near(i) || i % 499 == 0 || i + 64 > b.len()) {
                let mut c = b.clone();
                c[i] ^= 0x04;
                assert!(read_all(&c).is_err(), "v{v}: flip at {i} not detected");
            }
            let b = build_v(v, 3, 512);
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x04;
                assert!(read_all(&c).is_err(), "v{v}: flip at {i} not detected");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        for v in [1, 2] {
            let b = build_v(v, 3, 512);
            for n in [0, 10, HEADER_SIZE, b.len() - 1] {
                assert!(
                    read_all(&b[..n]).is_err(),
                    "v{v}: truncation at {n} not detected"
                );
            }
        }
    }

    #[test]
    fn an_unknown_version_is_not_written() {
        assert!(SnapshotWriter::new(Vec::new(), header(3, 4096)).is_err());
    }
}
