//! The database checksum: XOR over all pages of `xxh3_64(page, seed = page number)`.
//!
//! XOR makes the checksum *rolling*: when a transaction rewrites page `p`, the new checksum is the
//! old one XOR the page's old hash XOR its new hash, so the agent can record the checksum after
//! every commit without rereading the database. A page that was never written (a database grown
//! past pages SQLite did not touch, such as the lock-byte page) counts as all zeros.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A database checksum as recorded in snapshots and segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DbChecksum(pub u64);

impl std::fmt::Display for DbChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The hash of one page.
pub fn page_hash(pgno: u32, data: &[u8]) -> u64 {
    xxh3_64_with_seed(data, u64::from(pgno))
}

/// The per-page hashes of a whole database, kept up to date page by page.
///
/// Changes can be journaled ([`begin`](Self::begin)) and undone ([`rollback`](Self::rollback)), so
/// a caller can compute the checksums of a batch before knowing whether it will be shipped.
#[derive(Clone, Debug)]
pub struct PageHashes {
    page_size: usize,
    hashes: Vec<u64>,
    xor: u64,
    zero_page: Vec<u8>,
    journal: Option<Journal>,
}

#[derive(Clone, Debug)]
struct Journal {
    len: usize,
    xor: u64,
    old: Vec<(usize, u64)>,
}

impl PageHashes {
    /// An empty database (zero pages) with the given page size.
    pub fn new(page_size: usize) -> Self {
        PageHashes {
            page_size,
            hashes: Vec::new(),
            xor: 0,
            zero_page: vec![0; page_size],
            journal: None,
        }
    }

    /// Starts journaling changes, replacing any journal in progress.
    pub fn begin(&mut self) {
        self.journal = Some(Journal {
            len: self.hashes.len(),
            xor: self.xor,
            old: Vec::new(),
        });
    }

    /// Keeps the changes made since [`begin`](Self::begin).
    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes the changes made since [`begin`](Self::begin).
    pub fn rollback(&mut self) {
        if let Some(j) = self.journal.take() {
            for &(i, h) in j.old.iter().rev() {
                if i < self.hashes.len() {
                    self.hashes[i] = h;
                } else {
                    self.hashes.resize(i + 1, 0);
                    self.hashes[i] = h;
                }
            }
            self.hashes.truncate(j.len);
            self.xor = j.xor;
        }
    }

    fn record(&mut self, i: usize) {
        if let Some(j) = &mut self.journal {
            if i < j.len {
                j.old.push((i, self.hashes[i]));
            }
        }
    }

    /// The page size.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The number of pages.
    pub fn page_count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// The checksum of the database as it stands.
    pub fn checksum(&self) -> DbChecksum {
        DbChecksum(self.xor)
    }

    /// The hash of page `pgno` (1-based), or `None` past the end of the database.
    pub fn page_hash_of(&self, pgno: u32) -> Option<u64> {
        let i = (pgno as usize).checked_sub(1)?;
        self.hashes.get(i).copied()
    }

    /// Sets page `pgno` (1-based) to `data`, growing the database if needed.
    pub fn set_page(&mut self, pgno: u32, data: &[u8]) {
        debug_assert_eq!(data.len(), self.page_size);
        self.set_page_hash(pgno, page_hash(pgno, data));
    }

    /// Sets page `pgno` (1-based) to a page whose [`page_hash`] is `h`, growing the database if
    /// needed.
    pub fn set_page_hash(&mut self, pgno: u32, h: u64) {
        assert!(pgno >= 1, "page numbers start at 1");
        if pgno as usize > self.hashes.len() {
            self.resize(pgno);
        }
        self.record(pgno as usize - 1);
        let slot = &mut self.hashes[pgno as usize - 1];
        self.xor ^= *slot ^ h;
        *slot = h;
    }

    /// Sets the database size to `pages`, dropping pages past it or adding zero pages.
    pub fn resize(&mut self, pages: u32) {
        let pages = pages as usize;
        while self.hashes.len() > pages {
            self.record(self.hashes.len() - 1);
            let h = self.hashes.pop().expect("non-empty");
            self.xor ^= h;
        }
        while self.hashes.len() < pages {
            let pgno = self.hashes.len() as u32 + 1;
            let h = page_hash(pgno, &self.zero_page);
            self.xor ^= h;
            self.hashes.push(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> Vec<u8> {
        vec![b; 512]
    }

    /// A database of 512-byte pages with each `(pgno, b)` written in turn as `page(b)`.
    fn written(pages: &[(u32, u8)]) -> PageHashes {
        let mut h = PageHashes::new(512);
        for &(pgno, b) in pages {
            h.set_page(pgno, &page(b));
        }
        h
    }

    #[test]
    fn rolling_update_equals_recomputation() {
        let mut a = written(&[(1, 1), (2, 2), (3, 3), (2, 9)]);
        a.resize(2);

        let b = written(&[(1, 1), (2, 9)]);
        assert_eq!(a.checksum(), b.checksum());
        assert_eq!(a.page_count(), 2);
    }

    #[test]
    fn rollback_restores_everything() {
        let mut a = written(&[(1, 1), (2, 2)]);
        let before = a.clone();
        a.begin();
        a.set_page(2, &page(7));
        a.set_page(5, &page(5));
        a.resize(1);
        a.set_page(3, &page(3));
        a.rollback();
        assert_eq!(a.checksum(), before.checksum());
        assert_eq!(a.page_count(), 2);
        a.set_page(2, &page(2));
        assert_eq!(a.checksum(), before.checksum());
    }

    #[test]
    fn page_number_matters() {
        let a = written(&[(1, 1), (2, 2)]);
        let b = written(&[(1, 2), (2, 1)]);
        assert_ne!(a.checksum(), b.checksum());
    }

    #[test]
    fn unwritten_pages_are_zero_pages() {
        let a = written(&[(3, 3)]);
        let b = written(&[(1, 0), (2, 0), (3, 3)]);
        assert_eq!(a.checksum(), b.checksum());
    }
}
