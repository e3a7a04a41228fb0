//! Snapshots: a full database image, streamed in LZ4-compressed chunks.
//!
//! Neither the writer nor the reader holds more than one chunk in memory. The header records the
//! generation, the transaction the image is the state after, its page count and its database
//! checksum; the trailer records the total length and a CRC32 over every byte before it.
//! The reader recomputes the database checksum as pages stream past and refuses a mismatch.

use std::io::{Read, Write};

use crate::checksum::{DbChecksum, PageHashes};
use crate::segment::{get16, get32, get64};
use crate::{Error, Generation, Result, TxId, FORMAT_VERSION};

/// Magic bytes at the start of a snapshot.
pub const MAGIC: &[u8; 4] = b"LBSN";
/// Magic bytes at the start of the trailer.
pub const TRAILER_MAGIC: &[u8; 4] = b"LBEN";
/// Size of the fixed header, CRC included.
pub const HEADER_SIZE: usize = 60;
/// Size of the trailer.
pub const TRAILER_SIZE: usize = 16;
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
    /// Number of pages.
    pub page_count: u32,
    /// When the image was taken (Unix ms).
    pub time_ms: u64,
    /// Database checksum of the image.
    pub checksum: DbChecksum,
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
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&self.generation.0.to_be_bytes());
        b.extend_from_slice(&self.txid.0.to_be_bytes());
        b.extend_from_slice(&self.page_size.to_be_bytes());
        b.extend_from_slice(&self.page_count.to_be_bytes());
        b.extend_from_slice(&self.time_ms.to_be_bytes());
        b.extend_from_slice(&self.checksum.0.to_be_bytes());
        b.extend_from_slice(&self.chunk_pages().to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        debug_assert_eq!(b.len(), HEADER_SIZE);
        b
    }

    /// Decodes and verifies a header.
    pub fn decode(b: &[u8]) -> Result<SnapshotHeader> {
        if b.len() < HEADER_SIZE {
            return Err(Error::Incomplete {
                needed: HEADER_SIZE - b.len(),
            });
        }
        if &b[0..4] != MAGIC {
            return Err(Error::corrupt(0, "not a lifeboat snapshot (bad magic)"));
        }
        let version = get16(b, 4);
        if version > FORMAT_VERSION || version == 0 {
            return Err(Error::UnsupportedVersion(version));
        }
        let stored = get32(b, 56);
        let computed = crc32fast::hash(&b[..56]);
        if stored != computed {
            return Err(Error::ChecksumMismatch {
                what: "snapshot header CRC32",
                stored: stored.into(),
                computed: computed.into(),
            });
        }
        let h = SnapshotHeader {
            version,
            generation: Generation(get64(b, 8)),
            txid: TxId(get64(b, 16)),
            page_size: get32(b, 24),
            page_count: get32(b, 28),
            time_ms: get64(b, 32),
            checksum: DbChecksum(get64(b, 40)),
        };
        if !(512..=65536).contains(&h.page_size) || !h.page_size.is_power_of_two() {
            return Err(Error::corrupt(24, format!("bad page size {}", h.page_size)));
        }
        if get32(b, 48) != h.chunk_pages() {
            return Err(Error::corrupt(48, "unexpected chunk size"));
        }
        Ok(h)
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
    /// Starts a snapshot. `header.checksum` is checked against the pages at [`finish`].
    ///
    /// [`finish`]: SnapshotWriter::finish
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
        let c = lz4_flex::block::compress(&self.chunk);
        self.out.put(&(c.len() as u32).to_be_bytes())?;
        self.out.put(&c)?;
        self.chunk.clear();
        Ok(())
    }

    /// Writes the trailer and returns the inner writer and the checksum of the pages written.
    /// Fails if the page count or checksum differs from the header.
    pub fn finish(mut self) -> std::io::Result<(W, DbChecksum)> {
        self.flush_chunk()?;
        if self.pages != self.header.page_count {
            return Err(std::io::Error::other(format!(
                "snapshot has {} pages, header says {}",
                self.pages, self.header.page_count
            )));
        }
        let sum = self.hashes.checksum();
        if sum != self.header.checksum {
            return Err(std::io::Error::other(format!(
                "snapshot pages have checksum {sum}, header says {}",
                self.header.checksum
            )));
        }
        let total = self.out.len + TRAILER_SIZE as u64;
        self.out.put(TRAILER_MAGIC)?;
        self.out.put(&total.to_be_bytes())?;
        let crc = self.out.crc.clone().finalize();
        self.out.inner.write_all(&crc.to_be_bytes())?;
        Ok((self.out.inner, sum))
    }
}

/// Reads a snapshot, verifying it as it goes.
pub struct SnapshotReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
    len: u64,
    header: SnapshotHeader,
    pages_read: u32,
    hashes: PageHashes,
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
            pages_read: 0,
        })
    }

    /// The verified header.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<()> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Returns the next chunk of whole pages (page numbers follow on from the previous chunk), or
    /// `None` after the last page once the trailer and the database checksum have been verified.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let ps = self.header.page_size as usize;
        if self.pages_read == self.header.page_count {
            self.finish()?;
            return Ok(None);
        }
        let mut lb = [0u8; 4];
        self.take(&mut lb)?;
        let clen = u32::from_be_bytes(lb) as usize;
        let pages = (self.header.page_count - self.pages_read).min(self.header.chunk_pages());
        let raw_len = pages as usize * ps;
        if clen > lz4_flex::block::get_maximum_output_size(raw_len) {
            return Err(Error::corrupt(self.len, "chunk length out of range"));
        }
        let mut c = vec![0u8; clen];
        self.take(&mut c)?;
        let raw = lz4_flex::block::decompress(&c, raw_len)
            .map_err(|e| Error::corrupt(self.len, format!("LZ4: {e}")))?;
        if raw.len() != raw_len {
            return Err(Error::corrupt(self.len, "short chunk"));
        }
        for p in raw.chunks_exact(ps) {
            self.pages_read += 1;
            self.hashes.set_page(self.pages_read, p);
        }
        Ok(Some(raw))
    }

    fn finish(&mut self) -> Result<()> {
        let mut t = [0u8; TRAILER_SIZE];
        self.inner.read_exact(&mut t)?;
        self.crc.update(&t[..12]);
        if &t[0..4] != TRAILER_MAGIC {
            return Err(Error::corrupt(self.len, "bad snapshot trailer"));
        }
        let total = u64::from_be_bytes(t[4..12].try_into().expect("8 bytes"));
        if total != self.len + TRAILER_SIZE as u64 {
            return Err(Error::corrupt(self.len, "snapshot length mismatch"));
        }
        let stored = u32::from_be_bytes(t[12..16].try_into().expect("4 bytes"));
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
        let sum = self.hashes.checksum();
        if sum != self.header.checksum {
            return Err(Error::ChecksumMismatch {
                what: "snapshot database checksum",
                stored: self.header.checksum.0,
                computed: sum.0,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(pages: u32, page_size: u32) -> Vec<u8> {
        let mut hashes = PageHashes::new(page_size as usize);
        let data: Vec<Vec<u8>> = (1..=pages)
            .map(|p| vec![(p % 251) as u8; page_size as usize])
            .collect();
        for (i, d) in data.iter().enumerate() {
            hashes.set_page(i as u32 + 1, d);
        }
        let header = SnapshotHeader {
            version: FORMAT_VERSION,
            generation: Generation(1),
            txid: TxId(0),
            page_size,
            page_count: pages,
            time_ms: 5,
            checksum: hashes.checksum(),
        };
        let mut w = SnapshotWriter::new(Vec::new(), header).unwrap();
        for d in &data {
            w.write_page(d).unwrap();
        }
        w.finish().unwrap().0
    }

    fn read_all(b: &[u8]) -> Result<Vec<u8>> {
        let mut r = SnapshotReader::new(b)?;
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk()? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_across_chunks() {
        let b = build(600, 4096);
        let out = read_all(&b).unwrap();
        assert_eq!(out.len(), 600 * 4096);
        assert_eq!(out[599 * 4096], (600 % 251) as u8);
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

    #[test]
    fn writer_refuses_wrong_checksum() {
        let header = SnapshotHeader {
            version: FORMAT_VERSION,
            generation: Generation(1),
            txid: TxId(0),
            page_size: 512,
            page_count: 1,
            time_ms: 0,
            checksum: DbChecksum(1),
        };
        let mut w = SnapshotWriter::new(Vec::new(), header).unwrap();
        w.write_page(&[0u8; 512]).unwrap();
        assert!(w.finish().is_err());
    }
}
