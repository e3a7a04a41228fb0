//! Snapshots: a full database image, streamed in LZ4-compressed chunks.
//!
//! Neither the writer nor the reader holds more than one chunk in memory. The header records the
//! generation, the transaction the image is the state after, and where the source WAL stood; the
//! trailer records the page count, the database checksum, the total length and a CRC32 over every
//! byte before it. They sit in the trailer because the writer learns them only as pages stream
//! past. The reader recomputes the database checksum as pages stream past and refuses a mismatch.

use std::io::{Read, Write};

use crate::checksum::{DbChecksum, PageHashes};
use crate::segment::{check_header, get16, get32, get64, seal_header, Kind, WalPosition};
use crate::sqlite;
use crate::{Error, Generation, Result, TxId};

/// The snapshot format this crate writes and reads (unchanged by segment format 2).
pub const VERSION: u16 = 1;

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
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot.
    pub fn new(inner: W, header: SnapshotHeader) -> std::io::Result<Self> {
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
        })
    }

    /// Appends the next page.
    pub fn write_page(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.len() != self.header.page_size as usize {
            return Err(std::io::Error::other("page of the wrong size"));
        }
        self.pages += 1;
        self.hashes.set_page(self.pages, data);
        self.chunk.extend_from_slice(data);
        if self.chunk.len() >= self.header.chunk_pages() as usize * self.header.page_size as usize {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let c = lz4_flex::block::compress_prepend_size(&self.chunk);
        self.out.put(&(c.len() as u32).to_be_bytes())?;
        self.out.put(&c)?;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the end mark and trailer; returns the inner writer, the per-page hashes of the image
    /// and the trailer.
    pub fn finish(mut self) -> std::io::Result<(W, PageHashes, SnapshotTrailer)> {
        self.flush_chunk()?;
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
        if clen > lz4_flex::block::get_maximum_output_size(max_raw) + 4 {
            return Err(Error::corrupt(self.len, "chunk length out of range"));
        }
        let mut c = vec![0u8; clen];
        self.take(&mut c)?;
        if c.len() < 4 || u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize > max_raw {
            return Err(Error::corrupt(self.len, "chunk size out of range"));
        }
        let raw = lz4_flex::block::decompress_size_prepended(&c)
            .map_err(|e| Error::corrupt(self.len, format!("LZ4: {e}")))?;
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

    fn finish(&mut self) -> Result<()> {
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

    fn header(page_size: u32) -> SnapshotHeader {
        SnapshotHeader {
            version: VERSION,
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

    fn build(pages: u32, page_size: u32) -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), header(page_size)).unwrap();
        for p in 1..=pages {
            w.write_page(&vec![(p % 251) as u8; page_size as usize])
                .unwrap();
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
    fn round_trip_across_chunks() {
        let b = build(600, 4096);
        let out = read_all(&b).unwrap();
        assert_eq!(out.len(), 600 * 4096);
        assert_eq!(out[599 * 4096], (600 % 251) as u8);
        let t = SnapshotTrailer::decode(&b).unwrap();
        assert_eq!(t.page_count, 600);
    }

    #[test]
    fn empty_database() {
        let b = build(0, 4096);
        assert!(read_all(&b).unwrap().is_empty());
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let b = build(3, 512);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x04;
            assert!(read_all(&c).is_err(), "flip at {i} not detected");
        }
    }

    #[test]
    fn truncation_is_detected() {
        let b = build(3, 512);
        for n in [0, 10, HEADER_SIZE, b.len() - 1] {
            assert!(read_all(&b[..n]).is_err(), "truncation at {n} not detected");
        }
    }
}
