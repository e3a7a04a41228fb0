//! Building a format-2 segment as its transactions arrive, without holding their frames.
//!
//! [`SegmentEncoder`] keeps, for each page the segment writes, the deltas encoded so far, the
//! hash of the page's latest version and, up to a bound ([`SegmentEncoder::hold_at_most`]), the
//! latest version itself: its memory grows with the bytes the segment's commits changed, not with
//! the frames read nor the pages touched (a hot page rewritten by a thousand commits costs one
//! page and a thousand small deltas). A latest version let go is read back when the page is
//! written again (the caller knows where its frame is, in the WAL), and used only if it hashes to
//! what it did; a read that does not fails the segment rather than encode against other bytes. The bytes it produces are exactly those of
//! [`SegmentBuilder`](crate::transaction::SegmentBuilder) followed by
//! [`Segment::encode_with_bases`](crate::segment::Segment::encode_with_bases) with the same
//! bases (a test checks it), so readers see no difference.
//!
//! Each page's base (its version before the segment's first commit) is asked for when the
//! page first appears, and used only if its bytes hash to what the per-page hashes said the
//! page was before the segment. The encoder checks that itself, and asks only for pages that
//! provably still have their hash from before the segment at that moment: pages the segment
//! has not written yet and that no commit since its start has cut off the database.

use std::collections::BTreeMap;

use super::{delta, encode_commits, varint, BASE_BEFORE, BASE_ZERO, ZSTD_LEVEL};
use crate::checksum::{page_hash, PageHashes};
use crate::segment::VERSION;
use crate::segment::{seal, CommitRecord, SegmentHeader, WalPosition, COMMIT_RECORD_SIZE};
use crate::transaction::{Commits, Frames, TxnFrames};
use crate::{Error, Generation, Result, TxId};

/// One page's versions so far.
#[derive(Debug)]
struct Versions {
    /// The latest version (the base, or zeros, before the first), or empty once let go.
    latest: Vec<u8>,
    /// The hash ([`page_hash`]) of the latest version, once there is one.
    latest_hash: u64,
    /// The first version is a delta against the page before the segment.
    based: bool,
    /// The deltas of its versions, in WAL order.
    deltas: Vec<u8>,
}

/// Where a page's base is read from (see the module docs): `read(pgno, expected_hash)` returns
/// the bytes of page `pgno` as it stood before the segment, or `None`. What it returns is
/// checked against the hash again before use.
pub type BaseReader<'a> = dyn FnMut(u32, u64) -> Option<Vec<u8>> + 'a;

/// Where a page's latest version in the segment is read back from once the encoder let it go:
/// `read(pgno, expected_hash)` returns the bytes of the page's latest frame the encoder was given,
/// or `None`. What it returns is checked against the hash before use.
pub type LatestReader<'a> = dyn FnMut(u32, u64) -> Option<Vec<u8>> + 'a;

/// Builds a format-2 segment transaction by transaction (see the module docs).
#[derive(Debug)]
pub struct SegmentEncoder {
    commits: Commits,
    page_size: u32,
    /// Every frame's page number, in WAL order.
    pgnos: Vec<u32>,
    pages: BTreeMap<u32, Versions>,
    /// The smallest database size since the segment's start: a page past it may have lost
    /// the hash it had before the segment.
    min_size: u32,
    /// The bytes of every page's deltas so far.
    delta_bytes: usize,
    /// Latest versions held, and the most the encoder holds before letting them go.
    held_pages: usize,
    hold_at_most: usize,
}

impl SegmentEncoder {
    /// An empty segment of `generation` whose first transaction is `first_txid`, continuing the
    /// database whose per-page hashes are `hashes` (the state before the segment).
    pub fn new(
        generation: Generation,
        first_txid: TxId,
        page_size: u32,
        hashes: &PageHashes,
    ) -> SegmentEncoder {
        SegmentEncoder {
            commits: Commits::new(generation, first_txid, page_size, hashes.checksum()),
            page_size,
            pgnos: Vec::new(),
            pages: BTreeMap::new(),
            min_size: hashes.page_count(),
            delta_bytes: 0,
            held_pages: 0,
            hold_at_most: usize::MAX,
        }
    }

    /// Holds at most about `bytes` of latest page versions: past it, after a transaction, every
    /// latest version is let go, and read back through [`push`](Self::push)'s `latest` reader
    /// when its page is written again. Without a bound (the default) the reader is never used.
    pub fn hold_at_most(&mut self, bytes: usize) {
        self.hold_at_most = bytes;
    }

    /// About the memory the segment holds so far: each page's latest version, the deltas, the
    /// frame map and the commit records (what [`finish`](Self::finish) also needs for the body
    /// it compresses). A caller bounds a segment by it.
    pub fn held(&self) -> usize {
        self.pages.len() * 64
            + self.held_pages * self.page_size as usize
            + self.delta_bytes
            + self.pgnos.len() * 4
            + self.commits.records().len() * COMMIT_RECORD_SIZE
    }

    /// The id the next transaction gets.
    pub fn next_txid(&self) -> TxId {
        self.commits.next_txid()
    }

    /// Adds one transaction: encodes its pages, applies it to `hashes` and records its commit.
    /// `base` is asked for the base of each page the segment had not written yet (see
    /// [`BaseReader`]), `latest` for the latest version of a page written before and let go
    /// (see [`LatestReader`]). A latest version that cannot be read back as it was is an error,
    /// after which the encoder is of no use: the caller drops it and rolls `hashes` back.
    pub fn push(
        &mut self,
        hashes: &mut PageHashes,
        t: TxnFrames<'_>,
        base: &mut BaseReader<'_>,
        latest: &mut LatestReader<'_>,
    ) -> Result<CommitRecord> {
        let ps = self.page_size as usize;
        let commit_size = t.commit_size;
        let txn = Frames::new(t.frames, ps);
        let mut written = Vec::with_capacity(t.count as usize);
        for (pgno, page) in txn.pages() {
            self.pgnos.push(pgno);
            let mut fresh = false;
            let v = self.pages.entry(pgno).or_insert_with(|| {
                fresh = true;
                // `hashes` still holds the state before this transaction, and the page was not
                // written since the segment started: its hash is the one from before the
                // segment if the database never shrank past it since.
                let expected = match pgno <= self.min_size {
                    true => hashes.page_hash_of(pgno),
                    false => None,
                };
                let found = expected.and_then(|h| {
                    base(pgno, h).filter(|b| b.len() == ps && page_hash(pgno, b) == h)
                });
                Versions {
                    based: found.is_some(),
                    latest: found.unwrap_or_else(|| vec![0; ps]),
                    latest_hash: 0,
                    deltas: Vec::new(),
                }
            });
            if fresh {
                self.held_pages += 1;
            } else if v.latest.is_empty() {
                v.latest = latest(pgno, v.latest_hash)
                    .filter(|b| b.len() == ps && page_hash(pgno, b) == v.latest_hash)
                    .ok_or_else(|| {
                        Error::corrupt(
                            0,
                            format!(
                                "page {pgno}'s latest version in the segment does not read back \
                                 as it was written"
                            ),
                        )
                    })?;
                self.held_pages += 1;
            }
            // What the deltas take in memory: a page's grow by doubling.
            let before = v.deltas.capacity();
            delta::encode(&v.latest, page, &mut v.deltas);
            self.delta_bytes += v.deltas.capacity() - before;
            v.latest.copy_from_slice(page);
            v.latest_hash = page_hash(pgno, page);
            written.push((pgno, v.latest_hash));
        }
        // As `Frames::apply` does, from the hashes just computed.
        for (pgno, h) in written {
            hashes.set_page_hash(pgno, h);
        }
        hashes.resize(commit_size);
        self.min_size = self.min_size.min(commit_size);
        if self.held_pages * ps > self.hold_at_most {
            for v in self.pages.values_mut() {
                v.latest = Vec::new();
            }
            self.held_pages = 0;
        }
        Ok(self.commits.record(hashes, t.count, commit_size, t.time_ms))
    }

    /// The encoded segment and its header, recording that its frames came from `wal`; `None`
    /// if no transaction was pushed.
    pub fn finish(self, wal: WalPosition) -> Option<(SegmentHeader, Vec<u8>)> {
        let mut header = self.commits.header(wal)?;
        let commits = self.commits.records();
        let deltas: usize = self.pages.values().map(|v| v.deltas.len()).sum();
        let mut raw = Vec::with_capacity(
            commits.len() * COMMIT_RECORD_SIZE + self.pgnos.len() * 5 + self.pages.len() + deltas,
        );
        encode_commits(commits, &mut raw);
        for &p in &self.pgnos {
            varint::put(&mut raw, p);
        }
        for v in self.pages.values() {
            raw.push(if v.based { BASE_BEFORE } else { BASE_ZERO });
        }
        let mut pages = self.pages;
        for v in pages.values_mut() {
            raw.extend_from_slice(&v.deltas);
            // Freed as it goes: the raw body and the pages are not both held whole.
            *v = Versions {
                latest: Vec::new(),
                latest_hash: 0,
                based: v.based,
                deltas: Vec::new(),
            };
        }
        drop(pages);
        let body = zstd::bulk::compress(&raw, ZSTD_LEVEL)
            .expect("zstd compresses any input into a growable buffer");
        header.frame_count = self.pgnos.len() as u32;
        header.commit_count = commits.len() as u32;
        header.body_len = body.len() as u64;
        header.raw_len = raw.len() as u64;
        let bytes = seal(header, raw.len(), &body);
        header.version = VERSION;
        Some((header, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use crate::segment::any::AnySegment;
    use crate::segment2::BasePages;
    use crate::sqlite::{encode_frame, WalHeader};
    use crate::transaction::SegmentBuilder;
    use proptest::prelude::*;

    const PS: usize = 512;

    /// A transaction: (page number, byte edits) for each frame, and the size after it.
    type Txn = (Vec<(u32, Vec<(usize, u8)>)>, u32);

    fn before() -> Vec<Vec<u8>> {
        (0..9u8)
            .map(|p| (0..PS).map(|i| (i as u8).wrapping_mul(p | 3) ^ p).collect())
            .collect()
    }

    /// The WAL frames of `txns` on a database of pages 1..=8 as in `before`.
    fn frames(before: &[Vec<u8>], txns: &[Txn]) -> (Vec<Vec<u8>>, WalPosition) {
        let wal = WalHeader::new(false, PS as u32, 3, (0xdead, 0xbeef));
        let mut pages = before.to_vec();
        let mut running = wal.checksum;
        let mut out = Vec::new();
        for (writes, size) in txns {
            let mut bytes = Vec::new();
            for (k, (pgno, edits)) in writes.iter().enumerate() {
                let page = &mut pages[*pgno as usize];
                for &(at, v) in edits {
                    page[at] = v;
                }
                let commit = if k + 1 == writes.len() { *size } else { 0 };
                let (f, c) = encode_frame(&wal, running, *pgno, commit, page);
                bytes.extend_from_slice(&f);
                running = c;
            }
            out.push(bytes);
        }
        let pos = WalPosition {
            checkpoint_seq: 3,
            salt1: 0xdead,
            salt2: 0xbeef,
            start_offset: 32,
            end_offset: 32 + (txns.iter().map(|t| t.0.len()).sum::<usize>() * (PS + 24)) as u64,
            checksum_before: wal.checksum,
            checksum_after: running,
            ..WalPosition::default()
        };
        (out, pos)
    }

    fn hashes_of(before: &[Vec<u8>]) -> PageHashes {
        let mut h = PageHashes::new(PS);
        for (p, page) in before.iter().enumerate().skip(1) {
            h.set_page(p as u32, page);
        }
        h
    }

    fn txns() -> impl Strategy<Value = Vec<Txn>> {
        let edits = proptest::collection::vec((0usize..PS, any::<u8>()), 0..40);
        let writes = proptest::collection::vec((1u32..9, edits), 1..5);
        proptest::collection::vec((writes, Just(8u32)), 1..12)
    }

    proptest! {
        #[test]
        fn the_encoder_writes_exactly_what_the_builder_and_encode_with_bases_write(
            txns in txns(),
            based in proptest::collection::vec(any::<bool>(), 9),
            hold in prop_oneof![Just(None), Just(Some(0)), Just(Some(2 * PS))],
        ) {
            let before = before();
            let (txn_frames, pos) = frames(&before, &txns);
            // Some pages' bases are found, others are not.
            let bases: BasePages = (1..9u32)
                .filter(|&p| based[p as usize])
                .map(|p| (p, before[p as usize].clone()))
                .collect();
            let (mut h1, mut h2) = (hashes_of(&before), hashes_of(&before));
            let mut b = SegmentBuilder::new(Generation(4), TxId(7), PS as u32, h1.checksum(), 0);
            let mut e = SegmentEncoder::new(Generation(4), TxId(7), PS as u32, &h2);
            // Latest versions let go after every transaction, after some, or never; read back
            // from the frames given, as the agent reads them from the WAL.
            if let Some(bytes) = hold {
                e.hold_at_most(bytes);
            }
            let mut written: HashMap<u32, Vec<u8>> = HashMap::new();
            let mut asked = Vec::new();
            let mut read_back = 0;
            for (i, (f, (writes, size))) in txn_frames.iter().zip(&txns).enumerate() {
                let n = writes.len() as u32;
                let t = 1000 + i as u64;
                let tf = TxnFrames { frames: f, count: n, commit_size: *size, time_ms: t };
                let c1 = b.push(&mut h1, tf);
                let c2 = e.push(
                    &mut h2,
                    tf,
                    &mut |p, _| {
                        asked.push(p);
                        bases.get(&p).cloned()
                    },
                    &mut |p, _| {
                        read_back += 1;
                        written.get(&p).cloned()
                    },
                ).unwrap();
                prop_assert_eq!(c1, c2);
                for (p, page) in Frames::new(f, PS).pages() {
                    written.insert(p, page.to_vec());
                }
            }
            prop_assert!(hold.is_some() || read_back == 0);
            let expected = b.finish(pos).unwrap().encode_with_bases(&bases);
            let (header, bytes) = e.finish(pos).unwrap();
            prop_assert!(bytes == expected, "encodings differ");
            prop_assert_eq!(header, AnySegment::open(&bytes).unwrap().header);
            // Each page's base is asked for once.
            let mut distinct = asked.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), asked.len());
        }
    }

    #[test]
    fn a_base_that_does_not_hash_right_or_a_page_cut_off_since_the_start_is_not_used() {
        let before = before();
        // Page 3 is offered wrong bytes; the database shrinks to 2 pages, then page 5 comes back.
        let txns: Vec<Txn> = vec![
            (vec![(3, vec![(1, 9)])], 8),
            (vec![(2, vec![(1, 9)])], 2),
            (vec![(5, vec![(1, 9)])], 5),
        ];
        let (txn_frames, pos) = frames(&before, &txns);
        let mut h = hashes_of(&before);
        let mut e = SegmentEncoder::new(Generation(1), TxId(1), PS as u32, &h);
        let mut asked = Vec::new();
        for (f, (writes, size)) in txn_frames.iter().zip(&txns) {
            let tf = TxnFrames {
                frames: f,
                count: writes.len() as u32,
                commit_size: *size,
                time_ms: 1,
            };
            e.push(
                &mut h,
                tf,
                &mut |p, _| {
                    asked.push(p);
                    let mut b = before[p as usize].clone();
                    if p == 3 {
                        b[0] ^= 1;
                    }
                    Some(b)
                },
                &mut |_, _| None,
            )
            .unwrap();
        }
        assert_eq!(asked, [3, 2], "page 5 was cut off by the second commit");
        let (_, bytes) = e.finish(pos).unwrap();
        let opened = AnySegment::open(&bytes).unwrap();
        assert_eq!(opened.base_pages(), [2], "only page 2's base verified");
        let seg = opened
            .rebuild(&mut |p, page| {
                page.copy_from_slice(&before[p as usize]);
                Ok(())
            })
            .unwrap();
        assert_eq!(seg.header.checksum_after, h.checksum());
    }

    #[test]
    fn a_latest_version_that_reads_back_otherwise_fails_the_push() {
        let before = before();
        let txns: Vec<Txn> = vec![(vec![(3, vec![(1, 9)])], 8), (vec![(3, vec![(2, 9)])], 8)];
        let (txn_frames, _) = frames(&before, &txns);
        for offered in [None, Some(vec![0u8; PS])] {
            let mut h = hashes_of(&before);
            let mut e = SegmentEncoder::new(Generation(1), TxId(1), PS as u32, &h);
            e.hold_at_most(0);
            let mut results = txn_frames.iter().zip(&txns).map(|(f, (w, size))| {
                let tf = TxnFrames {
                    frames: f,
                    count: w.len() as u32,
                    commit_size: *size,
                    time_ms: 1,
                };
                e.push(&mut h, tf, &mut |_, _| None, &mut |_, _| offered.clone())
            });
            assert!(results.next().unwrap().is_ok());
            let e = results.next().unwrap().unwrap_err().to_string();
            assert!(e.contains("page 3's latest version"), "{e}");
        }
    }
}
