//! The file a restore writes, and the pages of applied transactions not yet in it.
//!
//! Transactions are applied to the per-page hashes (see `chain`), but each page reaches the file
//! once, in its last version: [`Pages`] keeps, for the transactions applied so far, each page's
//! newest bytes and the smallest size the database had, across segments (the caller bounds
//! [`Pages::held`]); [`Output::flush`] then makes the file exactly the database after the last of
//! them. A segment's base pages (the state before it) are read through [`Output::base`]: from
//! memory (swapped out, or copied), as zeros, or from the file. Page buffers no longer needed
//! are kept for the next segment's pages to be patched in.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use lifeboat_wal::segment2::PageWeight;

use crate::{Error, Result};

/// Pages gathered into one write when their numbers follow each other (at most this many bytes).
const RUN_BYTES: usize = 1 << 20;

pub(super) struct Output {
    pub(super) file: File,
    pub(super) page_size: u64,
}

impl Output {
    /// Writes `bytes` (whole pages) from page `pgno` on.
    pub(super) fn write_pages(&self, pgno: u32, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, u64::from(pgno - 1) * self.page_size)
            .map_err(|e| Error::io("write restored page", e))
    }

    /// Reads page `pgno`; a page inside the size that was never written reads as zeros.
    pub(super) fn read_page(&self, pgno: u32, page: &mut [u8]) -> std::io::Result<()> {
        let at = u64::from(pgno - 1) * self.page_size;
        let mut done = 0;
        while done < page.len() {
            match self.file.read_at(&mut page[done..], at + done as u64)? {
                0 => {
                    page[done..].fill(0);
                    break;
                }
                n => done += n,
            }
        }
        Ok(())
    }

    pub(super) fn set_pages(&self, pages: u32) -> Result<()> {
        self.file
            .set_len(u64::from(pages) * self.page_size)
            .map_err(|e| Error::io("resize restored database", e))
    }

    /// Makes the file, which holds the database at `pending.start` pages, the database after the
    /// transactions `pending` gathered: cut to the smallest size they left (so that a page they
    /// dropped reads as zeros if the database grew back over it without writing it, as the
    /// hashes count it), each page's last version, then the size after the last of them.
    /// `pending` is then empty, on the file as it now stands.
    pub(super) fn flush(&self, pending: &mut Pages) -> Result<()> {
        if pending.low < pending.start {
            self.set_pages(pending.low)?;
        }
        let mut pages: Vec<(u32, Vec<u8>)> = std::mem::take(&mut pending.pages)
            .into_iter()
            .map(|(p, h)| (p, h.data))
            .collect();
        pages.sort_unstable_by_key(|&(p, _)| p);
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u32;
        let mut next = 0u32;
        for (pgno, data) in &pages {
            if *pgno != next || run.len() + data.len() > RUN_BYTES {
                if !run.is_empty() {
                    self.write_pages(run_start, &run)?;
                    run.clear();
                }
                run_start = *pgno;
            }
            run.extend_from_slice(data);
            next = pgno + 1;
        }
        if !run.is_empty() {
            self.write_pages(run_start, &run)?;
        }
        if pending.size != pending.low || pending.low != pending.start {
            self.set_pages(pending.size)?;
        }
        let spare = std::mem::take(&mut pending.spare);
        *pending = Pages::new(pending.size);
        pending.spare = spare;
        for (_, data) in pages {
            pending.recycle(data);
        }
        Ok(())
    }

    /// Puts page `pgno` of the database the file and `pending` make together into `page`, a
    /// buffer of the page size: a segment's base page, and its weight if a patch left it. A
    /// page held in `pending` is swapped in with `take` (its place then holds `page`'s old
    /// buffer, until the segment's version of the page replaces it or a commit drops it), and
    /// copied otherwise.
    pub(super) fn base(
        &self,
        pending: &Mutex<&mut Pages>,
        pgno: u32,
        page: &mut Vec<u8>,
        take: bool,
    ) -> std::io::Result<Option<PageWeight>> {
        let mut held = pending.lock().unwrap_or_else(|p| p.into_inner());
        match held.lookup(pgno) {
            Lookup::Held => {
                let h = held.pages.get_mut(&pgno).expect("looked up");
                let weight = h.weight;
                if take {
                    std::mem::swap(page, &mut h.data);
                    h.weight = None;
                } else {
                    page.copy_from_slice(&h.data);
                }
                return Ok(weight);
            }
            Lookup::Zeros => page.fill(0),
            Lookup::File => {
                drop(held);
                self.read_page(pgno, page)?;
            }
        }
        Ok(None)
    }
}

/// Where a page's current bytes are.
enum Lookup {
    Held,
    /// Past the database's size, or dropped since the file's state and not written again.
    Zeros,
    File,
}

/// A page held: its bytes, and its weight if a patch left it.
struct Held {
    data: Vec<u8>,
    weight: Option<PageWeight>,
}

/// The pages of applied transactions not yet in the file.
pub(super) struct Pages {
    /// Each page's last version.
    pages: HashMap<u32, Held>,
    /// The database's size in the file.
    start: u32,
    /// The smallest size since then.
    low: u32,
    /// The size now.
    size: u32,
    /// No page above this number is in `pages`.
    high: u32,
    /// Page buffers no longer held, for pages still to be patched (at most [`SPARE_BYTES`]).
    spare: Vec<Vec<u8>>,
}

/// The most bytes of spare page buffers [`Pages`] keeps: a segment's pages are patched into
/// them rather than into new allocations, which cost page faults and frees.
const SPARE_BYTES: usize = 16 << 20;

impl Pages {
    /// Nothing pending on a file that holds a database of `pages` pages.
    pub(super) fn new(pages: u32) -> Pages {
        Pages {
            pages: HashMap::new(),
            start: pages,
            low: pages,
            size: pages,
            high: 0,
            spare: Vec::new(),
        }
    }

    /// A transaction wrote `data` to page `pgno`.
    pub(super) fn page(&mut self, pgno: u32, data: &[u8]) {
        match self.pages.get_mut(&pgno) {
            Some(held) => {
                held.data.copy_from_slice(data);
                held.weight = None;
            }
            None => {
                let data = data.to_vec();
                self.pages.insert(pgno, Held { data, weight: None });
            }
        }
        self.high = self.high.max(pgno);
    }

    /// A transaction wrote `data`, a whole page of weight `weight`, to page `pgno`.
    pub(super) fn put(&mut self, pgno: u32, data: Vec<u8>, weight: PageWeight) {
        let weight = Some(weight);
        if let Some(old) = self.pages.insert(pgno, Held { data, weight }) {
            self.recycle(old.data);
        }
        self.high = self.high.max(pgno);
    }

    /// Keeps `buffer`, a page no longer needed, for [`take_spare`](Self::take_spare).
    fn recycle(&mut self, buffer: Vec<u8>) {
        if (self.spare.len() + 1) * buffer.len() <= SPARE_BYTES {
            self.spare.push(buffer);
        }
    }

    /// The spare page buffers, for a segment's pages to be patched in (the bytes they hold are
    /// old pages'); those left are given back with [`give_spare`](Self::give_spare).
    pub(super) fn take_spare(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.spare)
    }

    /// Gives back spare page buffers taken with [`take_spare`](Self::take_spare).
    pub(super) fn give_spare(&mut self, spare: Vec<Vec<u8>>) {
        self.spare = spare;
    }

    /// The transaction committed, leaving the database at `pages` pages: pages past it are gone.
    pub(super) fn commit(&mut self, pages: u32) {
        if self.high > pages {
            self.pages.retain(|&p, _| p <= pages);
            self.high = pages;
        }
        self.low = self.low.min(pages);
        self.size = pages;
    }

    /// The bytes of the pages held (all pages are of one size).
    pub(super) fn held(&self) -> usize {
        self.pages.values().next().map_or(0, |h| h.data.len()) * self.pages.len()
    }

    fn lookup(&self, pgno: u32) -> Lookup {
        if pgno > self.size {
            return Lookup::Zeros;
        }
        match self.pages.get(&pgno) {
            Some(_) => Lookup::Held,
            None if pgno > self.low => Lookup::Zeros,
            None => Lookup::File,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_wal::checksum::PageHashes;

    const PS: usize = 512;

    /// A transaction: the pages it writes, and the database size after it.
    type Txn = (Vec<(u32, Vec<u8>)>, u32);

    fn page(b: u8) -> Vec<u8> {
        vec![b; PS]
    }

    /// Applies transactions (pages written, size after) both ways: to the hashes and a file
    /// written page by page with a resize after each, and through `Pages` once; every page read
    /// through `Output::base` before the flush, and the file after it, must come out the same,
    /// and match the hashes.
    fn check(start: &[Vec<u8>], txns: &[Txn]) {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| Output {
            file: std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.path().join(name))
                .unwrap(),
            page_size: PS as u64,
        };
        let (slow, fast) = (open("slow"), open("fast"));
        let mut hashes = PageHashes::new(PS);
        for (i, p) in start.iter().enumerate() {
            for o in [&slow, &fast] {
                o.write_pages(i as u32 + 1, p).unwrap();
            }
            hashes.set_page(i as u32 + 1, p);
        }
        let mut pending = Pages::new(start.len() as u32);
        for (pages, size) in txns {
            for (pgno, data) in pages {
                slow.write_pages(*pgno, data).unwrap();
                pending.page(*pgno, data);
                hashes.set_page(*pgno, data);
            }
            slow.set_pages(*size).unwrap();
            pending.commit(*size);
            hashes.resize(*size);
        }
        let size = txns.last().map_or(start.len() as u32, |t| t.1);
        let (mut want, mut got) = (vec![0u8; PS], vec![7u8; PS]);
        for pgno in 1..=size + 2 {
            slow.read_page(pgno, &mut want).unwrap();
            if pgno > size {
                want.fill(0);
            }
            fast.base(&Mutex::new(&mut pending), pgno, &mut got, false)
                .unwrap();
            assert_eq!(got, want, "page {pgno} read through the pending pages");
        }
        fast.flush(&mut pending).unwrap();
        assert_eq!(pending.held(), 0);
        let read = |n: &str| std::fs::read(dir.path().join(n)).unwrap();
        assert_eq!(read("fast"), read("slow"));
        let on_disk = crate::files::hash_file(&dir.path().join("fast"), PS as u32).unwrap();
        assert_eq!(on_disk.checksum(), hashes.checksum());
        assert_eq!(on_disk.page_count(), hashes.page_count());
    }

    #[test]
    fn last_version_of_each_page_is_written() {
        check(
            &[page(1), page(2)],
            &[
                (vec![(2, page(7)), (3, page(3))], 3),
                (vec![(2, page(8))], 3),
                (vec![(1, page(9)), (4, page(4))], 4),
            ],
        );
    }

    #[test]
    fn a_page_dropped_and_grown_back_unwritten_reads_as_zeros() {
        // Page 3 and 4 exist before; the database shrinks to 2 pages, then grows to 5 writing
        // only page 5: pages 3 and 4 must be zeros, not their old bytes.
        check(
            &[page(1), page(2), page(3), page(4)],
            &[(vec![(1, page(5))], 2), (vec![(5, page(6))], 5)],
        );
    }

    #[test]
    fn a_page_written_dropped_and_written_again_keeps_the_last_version() {
        check(
            &[page(1)],
            &[
                (vec![(3, page(3)), (2, page(2))], 3),
                (vec![], 1),
                (vec![(2, page(9))], 3),
            ],
        );
    }

    #[test]
    fn a_page_past_the_commit_size_is_not_written() {
        check(
            &[page(1), page(2)],
            &[(vec![(3, page(3)), (1, page(4))], 2)],
        );
    }

    #[test]
    fn a_database_that_only_shrinks_is_cut() {
        check(
            &[page(1), page(2), page(3)],
            &[(vec![], 2), (vec![(1, page(7))], 1)],
        );
    }

    #[test]
    fn long_runs_are_split() {
        let many: Vec<(u32, Vec<u8>)> = (1..=(2 * RUN_BYTES / PS) as u32 + 3)
            .map(|p| (p, page(p as u8)))
            .collect();
        let n = many.len() as u32;
        check(&[], &[(many, n)]);
    }
}
