//! Base pages for format-2 segments: each page of a batch as it stood before the batch's first
//! commit, so the segment can store the page's first version as a delta against it.
//!
//! Where the agent finds that version: the page's latest frame that this replica shipped in the
//! current WAL cycle (remembered by [`BaseIndex`], 12 bytes a page), or else the database file.
//! Neither read is trusted: a base is used only if its bytes hash to exactly what the replica's
//! per-page hashes say the page was (the state whose checksum the segment records as its
//! start); the segment encoder (`lifeboat_wal::segment2::SegmentEncoder`) asks for a page's base
//! when the page first appears in the batch and checks that hash again. A page rewritten by a
//! checkpoint or a WAL restart since, or torn by a concurrent write, fails that check and is
//! stored against an all-zero page instead, so a wrong base can cost bytes but never a restore.
//!
//! The same reads serve the encoder when it let a page's latest version in the batch go (to
//! bound its memory): [`Finder::latest`] reads the page's latest frame of the batch back from the
//! WAL, which the agent's pin keeps in place, and the encoder (alone) checks it against the hash
//! it computed when it was given the frame.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use lifeboat_wal::checksum::page_hash;
use lifeboat_wal::sqlite::FRAME_HEADER_SIZE;
use lifeboat_wal::transaction::Frames;

use crate::walfile::{Cursor, Txn, WalFile};

/// Where this replica's shipped pages last appeared in the current WAL cycle.
#[derive(Clone, Debug, Default)]
pub struct BaseIndex {
    /// The cycle the offsets belong to.
    salts: Option<(u32, u32)>,
    /// Page number to the byte offset of its latest shipped frame.
    latest: HashMap<u32, u64>,
}

/// Frames of a batch that will be in the index once it is shipped.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pending {
    salts: Option<(u32, u32)>,
    frames: Vec<(u32, u64)>,
}

/// What finding bases found, for the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Found {
    /// Pages with a verified base.
    pub used: usize,
    /// Pages that existed before the batch but whose reads did not verify.
    pub missed: usize,
    /// Latest versions in the batch read back for the encoder (which checks them).
    pub read_back: usize,
}

impl BaseIndex {
    /// Starts finding the bases of a batch that starts at `cursor` (`carried`: read before a
    /// WAL restart, so its offsets are gone) in a database of `page_size`-byte pages.
    pub(crate) fn finder<'a>(
        &'a mut self,
        cursor: &Cursor,
        carried: bool,
        page_size: usize,
        wal: &WalFile,
        db: &'a File,
    ) -> Finder<'a> {
        if self.salts != cursor.salts() || carried {
            self.latest.clear();
            self.salts = if carried { None } else { cursor.salts() };
        }
        // Read for bases, and for the batch's own frames (not for a carried batch: its frames
        // are in memory, and the WAL has restarted since).
        let wal_file = if carried {
            None
        } else {
            wal.open_file().ok().flatten()
        };
        Finder {
            pending: Pending {
                salts: self.salts,
                frames: Vec::new(),
            },
            in_batch: HashMap::new(),
            latest: &self.latest,
            wal_file,
            db,
            page_size,
            carried,
            found: Found::default(),
        }
    }

    /// Records the frames of a batch that was uploaded.
    pub(crate) fn shipped(&mut self, pending: Pending) {
        if pending.salts.is_some() && pending.salts == self.salts {
            self.latest.extend(pending.frames);
        }
    }
}

/// Finds the bases of one batch's pages, transaction by transaction.
pub(crate) struct Finder<'a> {
    latest: &'a HashMap<u32, u64>,
    /// Page number to the offset of its latest frame in the batch so far.
    in_batch: HashMap<u32, u64>,
    wal_file: Option<File>,
    db: &'a File,
    page_size: usize,
    carried: bool,
    pending: Pending,
    found: Found,
}

impl Finder<'_> {
    /// Notes the frames of transaction `t`, for the index once the batch is shipped.
    pub(crate) fn saw(&mut self, t: &Txn) {
        if self.carried {
            return;
        }
        let fs = (FRAME_HEADER_SIZE + self.page_size) as u64;
        let start = t.end_offset - u64::from(t.frame_count) * fs;
        let pages = Frames::new(&t.frames, self.page_size).pages();
        for (k, (pgno, _)) in pages.enumerate() {
            let at = start + k as u64 * fs;
            self.pending.frames.push((pgno, at));
            self.in_batch.insert(pgno, at);
        }
    }

    /// Whether [`latest`](Self::latest) can read the batch's frames back.
    pub(crate) fn reads_back(&self) -> bool {
        !self.carried && self.wal_file.is_some()
    }

    /// Page `pgno`'s latest frame among the transactions [`saw`](Self::saw) was given, read
    /// back from the WAL. Unchecked: the encoder hashes it against the version it had (hashing
    /// here too would hash every page read back twice).
    pub(crate) fn latest(&mut self, pgno: u32) -> Option<Vec<u8>> {
        let (&off, f) = self.in_batch.get(&pgno).zip(self.wal_file.as_ref())?;
        let mut buf = vec![0u8; self.page_size];
        f.read_exact_at(&mut buf, off + FRAME_HEADER_SIZE as u64)
            .ok()?;
        self.found.read_back += 1;
        Some(buf)
    }

    /// Page `pgno` as it stood before the batch, if a read of it hashes to `expected` (its hash
    /// then): from its latest shipped frame in the WAL, or else from the database file.
    pub(crate) fn base(&mut self, pgno: u32, expected: u64) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; self.page_size];
        let ok = |buf: &[u8]| page_hash(pgno, buf) == expected;
        let from_wal = self.latest.get(&pgno).zip(self.wal_file.as_ref());
        let hit = from_wal.is_some_and(|(&off, f)| {
            f.read_exact_at(&mut buf, off + FRAME_HEADER_SIZE as u64)
                .is_ok()
                && ok(&buf)
        }) || (self
            .db
            .read_exact_at(&mut buf, u64::from(pgno - 1) * self.page_size as u64)
            .is_ok()
            && ok(&buf));
        if hit {
            self.found.used += 1;
            Some(buf)
        } else {
            self.found.missed += 1;
            None
        }
    }

    /// The batch's frames for [`BaseIndex::shipped`], and what was found.
    pub(crate) fn finish(self) -> (Pending, Found) {
        (self.pending, self.found)
    }
}
