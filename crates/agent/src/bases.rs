//! Base pages for format-2 segments: each page of a batch as it stood before the batch's first
//! commit, so the segment can store the page's first version as a delta against it.
//!
//! Where the agent finds that version: the page's latest frame that this replica shipped in the
//! current WAL cycle (remembered by [`BaseIndex`], 12 bytes a page), or else the database file.
//! Neither read is trusted: a base is used only if its bytes hash to exactly what the replica's
//! per-page hashes say the page was (the state whose checksum the segment records as its
//! start). A page rewritten by a checkpoint or a WAL restart since, or torn by a concurrent
//! write, fails that check and is stored against an all-zero page instead, so a wrong base can
//! cost bytes but never a restore.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use lifeboat_wal::checksum::{page_hash, PageHashes};
use lifeboat_wal::segment2::BasePages;
use lifeboat_wal::sqlite::FRAME_HEADER_SIZE;
use lifeboat_wal::transaction::Frames;

use crate::walfile::{Batch, Cursor, WalFile};

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
}

impl BaseIndex {
    /// The verified bases of the pages `batch` writes, starting at `cursor` (`carried`: read
    /// before a WAL restart, so its offsets are gone), given the per-page hashes of the state
    /// before it. Also returns the batch's frame offsets, for [`shipped`](Self::shipped).
    pub(crate) fn bases(
        &mut self,
        batch: &Batch,
        cursor: &Cursor,
        carried: bool,
        hashes: &PageHashes,
        wal: &WalFile,
        db: &File,
    ) -> (BasePages, Pending, Found) {
        let ps = hashes.page_size();
        if self.salts != cursor.salts() || carried {
            self.latest.clear();
            self.salts = if carried { None } else { cursor.salts() };
        }
        let mut pending = Pending {
            salts: self.salts,
            frames: Vec::new(),
        };
        let mut bases = BasePages::new();
        let mut found = Found::default();
        let wal_file = if self.latest.is_empty() {
            None
        } else {
            wal.open_file().ok().flatten()
        };
        let fs = (FRAME_HEADER_SIZE + ps) as u64;
        let mut buf = vec![0u8; ps];
        for t in &batch.txns {
            let start = t.end_offset - u64::from(t.frame_count) * fs;
            for (k, (pgno, _)) in Frames::new(&t.frames, ps).pages().enumerate() {
                if !carried {
                    pending.frames.push((pgno, start + k as u64 * fs));
                }
                if bases.contains_key(&pgno) {
                    continue;
                }
                let Some(expected) = hashes.page_hash_of(pgno) else {
                    // A page past the end of the database before the batch: its base is zeros.
                    bases.insert(pgno, Vec::new());
                    continue;
                };
                let from_wal = self.latest.get(&pgno).zip(wal_file.as_ref());
                let ok = |buf: &[u8]| page_hash(pgno, buf) == expected;
                let hit = from_wal.is_some_and(|(&off, f)| {
                    f.read_exact_at(&mut buf, off + FRAME_HEADER_SIZE as u64)
                        .is_ok()
                        && ok(&buf)
                }) || (db
                    .read_exact_at(&mut buf, u64::from(pgno - 1) * ps as u64)
                    .is_ok()
                    && ok(&buf));
                if hit {
                    found.used += 1;
                    bases.insert(pgno, buf.clone());
                } else {
                    found.missed += 1;
                    bases.insert(pgno, Vec::new());
                }
            }
        }
        // Pages without a verified base were marked with an empty entry only to be looked up
        // once; the encoder treats those as "no base".
        bases.retain(|_, b| !b.is_empty());
        (bases, pending, found)
    }

    /// Records the frames of a batch that was uploaded.
    pub(crate) fn shipped(&mut self, pending: Pending) {
        if pending.salts.is_some() && pending.salts == self.salts {
            self.latest.extend(pending.frames);
        }
    }
}
