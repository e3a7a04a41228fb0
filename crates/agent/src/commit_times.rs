//! When each commit was first seen, and how many commits a replica does not have yet.
//!
//! The agent looks at the WAL on file events, even while the PUT budget holds uploads back (then
//! at most every `scheduler::HELD_BACK_LOOKS`), so a commit's recorded time is within the event
//! latency plus that of the moment SQLite wrote its commit frame, not the upload cadence. Commits are known by (salt 1, salt 2, end offset): the salts
//! name the log cycle, the offset the commit frame's end within it.

use std::collections::BTreeMap;

use lifeboat_wal::sqlite::WAL_HEADER_SIZE;

use crate::clock::now_ms;
use crate::walfile::{Cursor, WalFile};

/// A commit: the salts of its log cycle and the byte offset just past its commit frame.
type CommitAt = (u32, u32, u64);

/// The most commit frames one look reads.
const MAX_FRAMES_PER_LOOK: usize = 100_000;
/// Past this many remembered commits, those older than [`FORGET_AFTER_MS`] are dropped.
const MAX_REMEMBERED: usize = 10_000;
const FORGET_AFTER_MS: u64 = 600_000;

/// When each commit was first seen.
#[derive(Debug, Default)]
pub(crate) struct CommitTimes {
    observed: BTreeMap<CommitAt, u64>,
    /// Where observation continues: (salt 1, salt 2, offset).
    observe_at: Option<CommitAt>,
}

impl CommitTimes {
    /// Notes the time of every commit that appeared in the WAL since the last look.
    pub fn observe(&mut self, wal: &WalFile) {
        let Ok(Some(h)) = wal.header() else { return };
        let from = match self.observe_at {
            Some((s1, s2, off)) if (s1, s2) == (h.salt1, h.salt2) => off,
            _ => WAL_HEADER_SIZE as u64,
        };
        let Ok(ends) = wal.commit_offsets(&h, from, MAX_FRAMES_PER_LOOK) else {
            return;
        };
        self.saw(h.salt1, h.salt2, from, &ends, now_ms());
    }

    /// Records commits ending at `ends` in the cycle `(s1, s2)`, looked at from `from` at `now`.
    fn saw(&mut self, s1: u32, s2: u32, from: u64, ends: &[u64], now: u64) {
        for &end in ends {
            self.observed.entry((s1, s2, end)).or_insert(now);
        }
        let next = ends.last().copied().unwrap_or(from);
        self.observe_at = Some((s1, s2, next));
        if self.observed.len() > MAX_REMEMBERED {
            self.observed
                .retain(|_, t| now.saturating_sub(*t) < FORGET_AFTER_MS);
        }
    }

    /// The time of the commit ending at `end` in the cycle of `salts` (when it was seen, or
    /// `now`), never earlier than `last`, the time of the transaction before it (updated).
    pub fn next_time(&self, last: &mut u64, salts: Option<(u32, u32)>, end: u64, now: u64) -> u64 {
        let (s1, s2) = salts.unwrap_or((0, 0));
        let seen = self.observed.get(&(s1, s2, end)).copied().unwrap_or(now);
        *last = (*last).max(seen);
        *last
    }

    /// Drops the times of commits that every replica (at `cursors`) has shipped.
    pub fn forget_shipped<'a>(&mut self, cursors: impl IntoIterator<Item = &'a Cursor>) {
        let mut cycle = None;
        let mut min_offset = u64::MAX;
        for c in cursors {
            let Some(salts) = c.salts() else { return };
            if *cycle.get_or_insert(salts) != salts {
                return;
            }
            min_offset = min_offset.min(c.offset);
        }
        let watching = self.observe_at.map(|(s1, s2, _)| (s1, s2));
        if let Some(c) = cycle {
            self.observed.retain(|&(s1, s2, off), _| {
                ((s1, s2) == c && off > min_offset) || (Some((s1, s2)) == watching && (s1, s2) != c)
            });
        }
    }

    /// Commits seen that a replica at `cursor` (with `carried` transactions read but not
    /// shipped) does not have yet, and when the oldest of them was seen.
    pub fn pending(&self, cursor: &Cursor, carried: u64) -> (u64, Option<u64>) {
        let (mut n, mut oldest) = (carried, None::<u64>);
        for (&(s1, s2, end), &t) in &self.observed {
            let unshipped = match cursor.salts() {
                Some(c) if c == (s1, s2) => end > cursor.offset,
                // A newer cycle than the cursor's (older ones are forgotten once shipped).
                _ => {
                    Some((s1, s2)) != cursor.salts()
                        && self.observe_at.is_some_and(|(a, b, _)| (a, b) == (s1, s2))
                }
            };
            if unshipped {
                n += 1;
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        (n, oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walfile::testing::at as cursor;

    #[test]
    fn pending_counts_the_commits_past_the_cursor_and_the_carried_ones() {
        let mut t = CommitTimes::default();
        t.saw(1, 9, 32, &[100, 200, 300], 1_000);
        t.saw(1, 9, 300, &[400], 2_000);
        assert_eq!(t.pending(&cursor(1, 200), 0), (2, Some(1_000)));
        assert_eq!(t.pending(&cursor(1, 300), 0), (1, Some(2_000)));
        assert_eq!(t.pending(&cursor(1, 400), 0), (0, None));
        // Transactions carried over a restart count too.
        assert_eq!(t.pending(&cursor(1, 400), 3), (3, None));
    }

    #[test]
    fn pending_counts_a_newer_cycle_being_watched_but_not_an_older_one() {
        let mut t = CommitTimes::default();
        t.saw(1, 9, 32, &[100, 200], 1_000);
        t.saw(2, 9, 32, &[100], 3_000);
        // A replica still in cycle 1 at 100: one commit left there, and the new cycle's one.
        assert_eq!(t.pending(&cursor(1, 100), 0), (2, Some(1_000)));
        // A replica already in cycle 2 does not count cycle 1's leftovers.
        assert_eq!(t.pending(&cursor(2, 32), 0), (1, Some(3_000)));
        // Before any WAL: everything in the watched cycle.
        assert_eq!(t.pending(&Cursor::empty(), 0), (1, Some(3_000)));
    }

    #[test]
    fn shipped_commits_are_forgotten_once_every_replica_has_them() {
        let mut t = CommitTimes::default();
        t.saw(1, 9, 32, &[100, 200, 300], 1_000);
        t.forget_shipped([&cursor(1, 200), &cursor(1, 100)]);
        assert_eq!(
            t.observed.len(),
            2,
            "only what the slowest replica shipped goes"
        );
        // Replicas in different cycles: nothing is forgotten.
        t.forget_shipped([&cursor(1, 300), &cursor(2, 32)]);
        assert_eq!(t.observed.len(), 2);
        t.forget_shipped([&cursor(1, 300)]);
        assert!(t.observed.is_empty());
    }

    #[test]
    fn batch_times_are_when_each_commit_was_seen_and_never_go_back() {
        let mut t = CommitTimes::default();
        t.saw(1, 9, 32, &[100, 300], 5_000);
        t.observed.insert((1, 9, 300), 4_000);
        let mut last = 0;
        let times: Vec<u64> = [100, 200, 300]
            .into_iter()
            .map(|end| t.next_time(&mut last, Some((1, 9)), end, 9_000))
            .collect();
        // 200 was never seen: now; 300 was seen earlier than 100 but may not go back.
        assert_eq!(times, [5_000, 9_000, 9_000]);
        // Another cycle's commit at the same offset was not seen.
        assert_eq!(t.next_time(&mut 0, Some((2, 9)), 100, 7_000), 7_000);
    }
}
