//! Redundant copies: two segments of one generation that hold the same transaction.
//!
//! An agent never cuts two different segments over the same transactions on purpose, but a
//! copy can still land twice: a PUT whose answer was lost lands after all, or a PUT in flight
//! while an agent was replaced lands after the next agent shipped the same transactions cut
//! differently. Both copies were read from the same WAL, so they agree on every transaction
//! they share: same place in the WAL, same SQLite frame checksum, same database checksum after
//! it. Such copies are one history. Only copies that disagree on a shared transaction are a
//! fork, and the error says what differs.

use std::collections::BTreeMap;

use lifeboat_wal::segment::{CommitRecord, SegmentHeader};
use lifeboat_wal::sqlite::FrameHeader;
use lifeboat_wal::{DbChecksum, Generation, TxId};

use crate::{Error, Result};

/// What identifies one committed transaction in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Print {
    /// The WAL cycle's salts.
    salts: (u32, u32),
    /// Byte offset in the WAL just past the commit frame.
    end_offset: u64,
    /// SQLite's cumulative frame checksum in the commit frame, where known (a format-2
    /// segment read without its base pages knows only its last one, from its header).
    frame_checksum: Option<(u32, u32)>,
    /// Frames in the transaction.
    frames: u32,
    /// Database size after it, in pages.
    db_size: u32,
    /// Database checksum after it.
    checksum: DbChecksum,
}

impl Print {
    /// Whether two prints of one transaction agree (frame checksums where both know them).
    fn agrees(&self, o: &Print) -> bool {
        self.salts == o.salts
            && self.end_offset == o.end_offset
            && self.frames == o.frames
            && self.db_size == o.db_size
            && self.checksum == o.checksum
            && match (self.frame_checksum, o.frame_checksum) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// What differs between two prints of one transaction, in words.
    fn difference(&self, other: &Print) -> String {
        if self.checksum != other.checksum || self.db_size != other.db_size {
            format!(
                "database checksum after it {} ({} pages) in one, {} ({} pages) in the other",
                self.checksum, self.db_size, other.checksum, other.db_size
            )
        } else if self.salts != other.salts || self.end_offset != other.end_offset {
            format!(
                "WAL position: salts {:08x}/{:08x} offset {} in one, salts {:08x}/{:08x} offset {} \
                 in the other",
                self.salts.0,
                self.salts.1,
                self.end_offset,
                other.salts.0,
                other.salts.1,
                other.end_offset
            )
        } else {
            let c = |p: &Print| {
                p.frame_checksum
                    .map_or("?".into(), |c| format!("{:08x}{:08x}", c.0, c.1))
            };
            format!(
                "frames: {} with SQLite checksum {} in one, {} with {} in the other",
                self.frames,
                c(self),
                other.frames,
                c(other)
            )
        }
    }
}

/// Every commit of a segment with its print; `frames`: the segment's frames, if rebuilt.
fn prints<'a>(
    h: &'a SegmentHeader,
    commits: &'a [CommitRecord],
    frames: Option<&'a [u8]>,
) -> impl Iterator<Item = (TxId, Print)> + 'a {
    let fs = h.frame_size() as u64;
    let mut end = h.wal.start_offset;
    let last = commits.last().map(|c| c.txid);
    commits.iter().map(move |c| {
        end += u64::from(c.frames) * fs;
        let offset_in_body = end - h.wal.start_offset;
        let frame_checksum = frames
            .and_then(|f| {
                let at = (offset_in_body as usize).checked_sub(fs as usize)?;
                FrameHeader::parse(f.get(at..)?).ok()
            })
            .map(|f| f.checksum)
            .or_else(|| (Some(c.txid) == last).then_some(h.wal.checksum_after));
        (
            c.txid,
            Print {
                salts: (h.wal.salt1, h.wal.salt2),
                end_offset: end,
                frame_checksum,
                frames: c.frames,
                db_size: c.db_size,
                checksum: c.checksum,
            },
        )
    })
}

/// The transactions a restore has read in ranges that another object of the plan holds too,
/// to check that object against.
#[derive(Debug)]
pub(crate) struct Copies {
    generation: Generation,
    ranges: Vec<(TxId, TxId)>,
    keys: Vec<String>,
    seen: BTreeMap<TxId, (Print, usize)>,
}

impl Copies {
    /// Keeps what it is shown in `ranges` (inclusive) of `generation`.
    pub fn new(generation: Generation, ranges: Vec<(TxId, TxId)>) -> Copies {
        Copies {
            generation,
            ranges,
            keys: Vec::new(),
            seen: BTreeMap::new(),
        }
    }

    fn wanted(&self, txid: TxId) -> bool {
        self.ranges.iter().any(|&(a, b)| a <= txid && txid <= b)
    }

    /// Checks a segment (stored as `key`; its frames if rebuilt) against every transaction
    /// seen before, then keeps its own. A transaction that differs is a [`Error::Fork`].
    pub fn check_and_keep(
        &mut self,
        key: &str,
        h: &SegmentHeader,
        commits: &[CommitRecord],
        frames: Option<&[u8]>,
    ) -> Result<()> {
        if self.ranges.is_empty() {
            return Ok(());
        }
        let idx = self.keys.len();
        let mut kept = false;
        for (txid, p) in prints(h, commits, frames) {
            if !self.wanted(txid) {
                continue;
            }
            match self.seen.get(&txid) {
                Some((q, i)) if !q.agrees(&p) => {
                    return Err(Error::Fork {
                        generation: self.generation,
                        txid,
                        first: self.keys[*i].clone(),
                        second: key.to_string(),
                        difference: q.difference(&p),
                    })
                }
                Some(_) => {}
                None => {
                    self.seen.insert(txid, (p, idx));
                    kept = true;
                }
            }
        }
        if kept {
            self.keys.push(key.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_wal::checksum::PageHashes;
    use lifeboat_wal::segment::{Segment, WalPosition};
    use lifeboat_wal::sqlite::{encode_frame, WalHeader};
    use lifeboat_wal::transaction::{SegmentBuilder, TxnFrames};

    /// A segment of transactions `first..=last` of one WAL, each writing page 1 with `fill(txid)`.
    fn segment(first: u64, last: u64, fill: impl Fn(u64) -> u8) -> Segment {
        let wal = WalHeader::new(false, 512, 0, (1, 2));
        let fs = 24 + 512u64;
        let mut running = wal.checksum;
        let mut hashes = PageHashes::new(512);
        // The transactions before `first`, as a previous segment would hold them.
        let mut before = SegmentBuilder::new(Generation(1), TxId(1), 512, hashes.checksum(), 0);
        let mut b = None;
        let (mut start, mut checksum_before) = (32, running);
        for t in 1..=last {
            if t == first {
                start = 32 + (t - 1) * fs;
                checksum_before = running;
                b = Some(SegmentBuilder::new(
                    Generation(1),
                    TxId(first),
                    512,
                    hashes.checksum(),
                    0,
                ));
            }
            let (f, c) = encode_frame(&wal, running, 1, 1, &[fill(t); 512]);
            running = c;
            b.as_mut().unwrap_or(&mut before).push(
                &mut hashes,
                TxnFrames {
                    frames: &f,
                    count: 1,
                    commit_size: 1,
                    time_ms: t,
                },
            );
        }
        b.unwrap()
            .finish(WalPosition {
                checkpoint_seq: 0,
                salt1: 1,
                salt2: 2,
                big_endian: false,
                start_offset: start,
                end_offset: 32 + last * fs,
                checksum_before,
                checksum_after: running,
            })
            .unwrap()
    }

    #[test]
    fn copies_that_agree_on_shared_transactions_pass_and_a_disagreement_is_a_fork() {
        let same = |t: u64| t as u8;
        let a = segment(3, 4, same);
        let b = segment(3, 6, same);
        let mut c = Copies::new(Generation(1), vec![(TxId(3), TxId(4))]);
        c.check_and_keep("b", &b.header, &b.commits, Some(&b.frames))
            .unwrap();
        c.check_and_keep("a", &a.header, &a.commits, None).unwrap();

        // Another history from txid 4 on: other page contents, so other checksums.
        let other = segment(3, 4, |t| if t >= 4 { 0xee } else { t as u8 });
        let mut c = Copies::new(Generation(1), vec![(TxId(3), TxId(4))]);
        c.check_and_keep("b", &b.header, &b.commits, Some(&b.frames))
            .unwrap();
        let e = c
            .check_and_keep("other", &other.header, &other.commits, Some(&other.frames))
            .unwrap_err();
        assert!(
            matches!(&e, Error::Fork { txid: TxId(4), first, second, .. } if first == "b" && second == "other"),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("forked at txid 4:")
                && msg.contains("database checksum")
                && msg.contains("--txid 3")
                && !msg.contains("two agents"),
            "{msg}"
        );
    }

    #[test]
    fn only_the_shared_ranges_are_kept() {
        let b = segment(1, 6, |t| t as u8);
        let mut c = Copies::new(Generation(1), vec![(TxId(3), TxId(4))]);
        c.check_and_keep("b", &b.header, &b.commits, Some(&b.frames))
            .unwrap();
        assert_eq!(
            c.seen.keys().copied().collect::<Vec<_>>(),
            [TxId(3), TxId(4)]
        );
        let mut none = Copies::new(Generation(1), Vec::new());
        none.check_and_keep("b", &b.header, &b.commits, Some(&b.frames))
            .unwrap();
        assert!(none.seen.is_empty());
    }
}
