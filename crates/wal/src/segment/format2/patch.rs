//! Applying a format-2 body to pages in place, proving SQLite's checksum chain without writing
//! the frames out.
//!
//! [`super::rebuild_pages`] writes every version of every page as a whole frame, then
//! [`super::chain`] reads them all again: a segment whose transactions each change a few hundred
//! bytes of 4 KiB pages costs the restore its full WAL size, twice. Here each page is loaded once
//! (its base or zeros), each of its versions is applied to it in place, and the page's checksum
//! weight ([`Weights`]) follows the changed bytes. The running checksum is then computed in WAL
//! order from each frame's weight: the same values SQLite wrote, proven against the chain end the
//! agent read from the live WAL exactly as a rebuilt segment's are. Each page's last version kept
//! is hashed, for the database checksum after the last commit kept; `verify` has every version
//! hashed, to check every commit's. A segment's pages do not depend on each other, so a large
//! segment's are split between threads, and the pages handed over are buffers the caller
//! recycles rather than copies.

use super::weights::Weights;
use super::{by_page, delta, Parsed};
use crate::checksum::page_hash;
use crate::segment::{CommitRecord, SegmentHeader};
use crate::sqlite::WalChecksum;
use crate::Result;

/// See [`Patching::base`].
pub type BaseFn<'a> = dyn Fn(u32, &mut Vec<u8>) -> Result<Option<PageWeight>> + Sync + 'a;

/// How [`crate::segment::any::AnySegment::patch`] patches a segment.
pub struct Patching<'a> {
    /// The most threads to split the segment's pages between.
    pub parts: usize,
    /// Hash every version of every page (for every commit's database checksum), not only each
    /// page's last kept version (for the checksum after the last commit kept).
    pub every_version: bool,
    /// Puts page `pgno` as it was before the segment into `page`, for each page of
    /// [`Parsed::base_pages`]: fills it, or swaps in a buffer that holds it; and gives its
    /// weight if a patch handed the page over with one ([`Kept::weight`]). Called from any of
    /// the threads.
    pub base: &'a BaseFn<'a>,
    /// A buffer of the page size, whose bytes do not matter, for a page to be patched in and
    /// handed over: one the caller recycles, or a new one.
    pub buffer: &'a (dyn Fn() -> Vec<u8> + Sync),
}

/// A page's contribution to SQLite's checksum of a frame that holds it (see `weights`), as a
/// patch leaves it: given back with the page as the next segment's base, it spares reading the
/// whole page again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageWeight {
    big_endian: bool,
    weight: WalChecksum,
}

/// A page's last version among the frames kept.
#[derive(Debug, PartialEq, Eq)]
pub struct Kept {
    /// Its page number.
    pub pgno: u32,
    /// The index of its frame in the segment.
    pub frame: usize,
    /// The page.
    pub page: Vec<u8>,
    /// Its [`page_hash`].
    pub hash: u64,
    /// Its weight.
    pub weight: PageWeight,
}

/// A segment applied to its pages.
#[derive(Debug)]
pub struct Patch {
    /// With [`Patching::every_version`], each frame's page number and [`page_hash`], in WAL
    /// order; else empty.
    pub hashes: Vec<(u32, u64)>,
    /// Each page's last version among the frames kept, by page number.
    pub pages: Vec<Kept>,
}

/// What patching some of a segment's pages gave: each of their versions' `(frame index,
/// weight)`, and with [`Patching::every_version`] its page hash, and their kept versions.
struct Done {
    weights: Vec<(u32, WalChecksum)>,
    hashes: Vec<u64>,
    kept: Vec<Kept>,
}

/// Applies the page versions of `body` one page at a time, the pages split between threads as
/// `how` says, and hands over each page's last version among the first `kept` frames. Returns
/// the end of SQLite's checksum chain over all the frames, from the header's start (the caller
/// compares it with the header's end), and the [`Patch`].
pub(crate) fn patch(
    h: &SegmentHeader,
    commits: &[CommitRecord],
    body: &Parsed,
    kept: usize,
    how: &Patching<'_>,
) -> Result<(WalChecksum, Patch)> {
    let ps = h.page_size as usize;
    let pgnos = &body.pgnos;
    let n = pgnos.len();
    let weights = Weights::new(ps, h.wal.big_endian);
    let order = by_page(pgnos);
    // Where each page's versions start in `order` (pages in ascending order, as in the body).
    let firsts: Vec<usize> = (0..n)
        .filter(|&k| k == 0 || pgnos[order[k - 1] as usize] != pgnos[order[k] as usize])
        .collect();
    debug_assert_eq!(firsts.len(), body.pages.len());
    let cuts = split(&firsts, n, how.parts.max(1));
    let versions = &body.raw[body.versions_at..];
    let run = |g0: usize, g1: usize| {
        let (k0, k1) = (firsts[g0], firsts.get(g1).copied().unwrap_or(n));
        let run = Run {
            ps,
            big_endian: h.wal.big_endian,
            weights: &weights,
            pgnos,
            kept,
            how,
        };
        run.patch_pages(
            &order[k0..k1],
            &body.pages[g0..g1],
            &versions[body.starts[g0]..],
        )
    };
    let done: Vec<Result<Done>> = if cuts.len() <= 2 {
        cuts.windows(2).map(|w| run(w[0], w[1])).collect()
    } else {
        let run = &run;
        std::thread::scope(|s| {
            let others: Vec<_> = cuts
                .windows(2)
                .skip(1)
                .map(|w| {
                    let (g0, g1) = (w[0], w[1]);
                    s.spawn(move || run(g0, g1))
                })
                .collect();
            let first = run(cuts[0], cuts[1]);
            std::iter::once(first)
                .chain(
                    others
                        .into_iter()
                        .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
                )
                .collect()
        })
    };
    let mut frame_weights = vec![(0u32, 0u32); n];
    let mut hashes = if how.every_version {
        vec![(0u32, 0u64); n]
    } else {
        Vec::new()
    };
    let mut pages = Vec::new();
    for d in done {
        let d = d?;
        for &(i, weight) in &d.weights {
            frame_weights[i as usize] = weight;
        }
        for (&(i, _), &hash) in d.weights.iter().zip(&d.hashes) {
            hashes[i as usize] = (pgnos[i as usize], hash);
        }
        pages.extend(d.kept);
    }
    let mut running = h.wal.checksum_before;
    let mut frame = 0;
    for c in commits {
        for k in 0..c.frames {
            let commit_size = if k + 1 == c.frames { c.db_size } else { 0 };
            let mut header = [0u8; 8];
            header[..4].copy_from_slice(&pgnos[frame].to_be_bytes());
            header[4..].copy_from_slice(&commit_size.to_be_bytes());
            running = weights.frame(running, &header, frame_weights[frame]);
            frame += 1;
        }
    }
    Ok((running, Patch { hashes, pages }))
}

/// Cuts the pages (each starting at `firsts[g]` among `n` versions) into at most `parts` runs
/// of about equal work, a version costing one and a page two more (its base and its kept
/// copy): the page indices where runs start, and the page count at the end.
fn split(firsts: &[usize], n: usize, parts: usize) -> Vec<usize> {
    let pages = firsts.len();
    let cost = |g: usize| firsts.get(g).copied().unwrap_or(n) + 2 * g;
    let total = cost(pages);
    let mut cuts = vec![0];
    for j in 1..parts {
        let want = total * j / parts;
        let g = (0..=pages).find(|&g| cost(g) >= want).unwrap_or(pages);
        if g > *cuts.last().expect("starts with 0") && g < pages {
            cuts.push(g);
        }
    }
    cuts.push(pages);
    cuts
}

/// What every thread of a patch shares.
struct Run<'a> {
    ps: usize,
    big_endian: bool,
    weights: &'a Weights,
    pgnos: &'a [u32],
    kept: usize,
    how: &'a Patching<'a>,
}

impl Run<'_> {
    fn buffer(&self) -> Vec<u8> {
        let mut b = (self.how.buffer)();
        b.resize(self.ps, 0);
        b
    }

    /// Patches the pages `pages`, whose versions are the frames `order` lists (page by page,
    /// each page's in WAL order) and are encoded from the start of `input`.
    fn patch_pages(&self, order: &[u32], pages: &[(u32, bool)], mut input: &[u8]) -> Result<Done> {
        let (weights, pgnos, every) = (self.weights, self.pgnos, self.how.every_version);
        let mut done = Done {
            weights: Vec::with_capacity(order.len()),
            hashes: Vec::with_capacity(if every { order.len() } else { 0 }),
            kept: Vec::new(),
        };
        let mut page = self.buffer();
        let mut weight = (0, 0);
        let mut group = pages.iter();
        for (k, &i) in order.iter().enumerate() {
            let pgno = pgnos[i as usize];
            if k == 0 || pgnos[order[k - 1] as usize] != pgno {
                let &(p, needs) = group.next().expect("one base-map entry per page");
                debug_assert_eq!(p, pgno);
                if needs {
                    let known = (self.how.base)(p, &mut page)?;
                    if page.len() != self.ps {
                        return Err(crate::Error::corrupt(0, format!("base page {p} is short")));
                    }
                    weight = match known {
                        Some(w) if w.big_endian == self.big_endian => w.weight,
                        _ => weights.of(&page),
                    };
                } else {
                    page.fill(0);
                    weight = (0, 0);
                }
            }
            delta::walk(&mut input, self.ps, |start, bytes| {
                weights.write(&mut page, &mut weight, start, bytes)
            })?;
            done.weights.push((i, weight));
            let hash = every.then(|| page_hash(pgno, &page));
            done.hashes.extend(hash);
            // The versions of a page come in WAL order: the last kept one is followed by another
            // page's, by one past `kept`, or by nothing.
            let next_same = order
                .get(k + 1)
                .map(|&n| n as usize)
                .filter(|&n| pgnos[n] == pgno);
            if (i as usize) < self.kept && next_same.is_none_or(|n| n >= self.kept) {
                let hash = hash.unwrap_or_else(|| page_hash(pgno, &page));
                // Handed over whole unless versions past `kept` are still to be applied to it;
                // the next page is loaded into a fresh buffer.
                let page = if next_same.is_some() {
                    let mut copy = self.buffer();
                    copy.copy_from_slice(&page);
                    copy
                } else {
                    std::mem::replace(&mut page, self.buffer())
                };
                done.kept.push(Kept {
                    pgno,
                    frame: i as usize,
                    page,
                    hash,
                    weight: PageWeight {
                        big_endian: self.big_endian,
                        weight,
                    },
                });
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::{before, build, build_on, txns, PS};
    use super::super::weights::Weights;
    use super::super::BasePages;
    use super::{PageWeight, Patching};
    use crate::checksum::page_hash;
    use crate::segment::any::AnySegment;
    use crate::segment::get32;
    use crate::sqlite::FRAME_HEADER_SIZE;
    use proptest::prelude::*;
    use proptest::sample::Index;

    proptest! {
        /// For any number of frames kept, and on one thread or several, patching hands over
        /// each page's last version among them exactly as the rebuilt frames hold it, and
        /// proves the chain; a reader holding another state before the segment fails the chain.
        #[test]
        fn patching_keeps_what_rebuilding_writes(
            txns in txns(),
            be in any::<bool>(),
            with_bases in any::<bool>(),
            cut in any::<Index>(),
            parts in 1usize..4,
            every_version in any::<bool>(),
            swap in any::<bool>(),
            with_weights in any::<bool>(),
        ) {
            let before = before();
            let (seg, bytes) = if with_bases {
                let seg = build_on(&before, &txns, be);
                let bases: BasePages =
                    (1..9u32).map(|p| (p, before[p as usize].clone())).collect();
                let bytes = seg.encode_with_bases(&bases);
                (seg, bytes)
            } else {
                let seg = build(&txns, be);
                let bytes = seg.encode();
                (seg, bytes)
            };
            let opened = AnySegment::open(&bytes).unwrap();
            prop_assert!(opened.holds_deltas());
            let fs = FRAME_HEADER_SIZE + PS;
            let n = seg.frames.len() / fs;
            let kept = cut.index(n + 1);
            let mut want = BTreeMap::new();
            for (i, f) in seg.frames.chunks_exact(fs).take(kept).enumerate() {
                want.insert(get32(f, 0), (i, f[FRAME_HEADER_SIZE..].to_vec()));
            }
            let want_hashes: Vec<(u32, u64)> = seg
                .frames
                .chunks_exact(fs)
                .map(|f| (get32(f, 0), page_hash(get32(f, 0), &f[FRAME_HEADER_SIZE..])))
                .collect();
            let weights = Weights::new(PS, be);
            let weight_of = |page: &[u8]| PageWeight { big_endian: be, weight: weights.of(page) };
            // A base is copied in or swapped in, with or without its weight.
            let base = |p: u32, page: &mut Vec<u8>| {
                let b = &before[p as usize];
                if swap {
                    *page = b.clone();
                } else {
                    page.copy_from_slice(b);
                }
                Ok(with_weights.then(|| weight_of(b)))
            };
            // Recycled buffers hold old bytes: none of them may show.
            let buffer = || vec![0xa5; PS];
            let how = Patching { parts, every_version, base: &base, buffer: &buffer };
            let patch = opened.patch(kept, &how).unwrap();
            let mut got = BTreeMap::new();
            let mut twice = false;
            for k in patch.pages {
                prop_assert_eq!(k.hash, page_hash(k.pgno, &k.page));
                prop_assert_eq!(k.weight, weight_of(&k.page));
                twice |= got.insert(k.pgno, (k.frame, k.page)).is_some();
            }
            prop_assert!(!twice, "a page was handed over twice");
            prop_assert_eq!(got, want);
            if every_version {
                prop_assert_eq!(patch.hashes, want_hashes);
            } else {
                prop_assert!(patch.hashes.is_empty());
            }
            if with_bases {
                // A wrong base, or the right one with a wrong weight, fails the chain.
                let wrong = |p: u32, page: &mut Vec<u8>| {
                    for (o, b) in page.iter_mut().zip(&before[p as usize]) {
                        *o = b ^ 0x55;
                    }
                    Ok(None)
                };
                let wrong_how = Patching { base: &wrong, ..how };
                prop_assert!(opened.patch(n, &wrong_how).is_err());
                let wrong_weight = |p: u32, page: &mut Vec<u8>| {
                    page.copy_from_slice(&before[p as usize]);
                    let other: Vec<u8> = page.iter().map(|b| b ^ 0x55).collect();
                    Ok(Some(weight_of(&other)))
                };
                let how = Patching { base: &wrong_weight, ..how };
                prop_assert!(opened.patch(n, &how).is_err());
            }
        }
    }

    /// Eight pages of 600 versions, split between threads at every count: the same pages and hashes as on one.
    #[test]
    fn a_split_patch_equals_one_thread() {
        let txns: Vec<_> = (0..300u32)
            .map(|t| {
                vec![
                    (1 + t % 5, vec![((t * 7) as usize % PS, t as u8)]),
                    (6 + t % 3, vec![(3, t as u8), (PS - 1, 1)]),
                ]
            })
            .collect();
        let seg = build(&txns, false);
        let opened = AnySegment::open(&seg.encode()).unwrap();
        let n = seg.frames.len() / (FRAME_HEADER_SIZE + PS);
        let how = |parts| Patching {
            parts,
            every_version: true,
            base: &|_, _| Ok(None),
            buffer: &|| vec![0; PS],
        };
        let one = opened.patch(n, &how(1)).unwrap();
        assert_eq!(one.hashes.len(), n);
        for parts in 2..6 {
            let split = opened.patch(n, &how(parts)).unwrap();
            assert_eq!(split.hashes, one.hashes);
            assert_eq!(split.pages, one.pages);
        }
        // Four pages of 5, 1, 1 and 3 versions: costs 7, 3, 3 and 5 of 18.
        assert_eq!(super::split(&[0, 5, 6, 7], 10, 2), vec![0, 2, 4]);
        assert_eq!(super::split(&[0, 5, 6, 7], 10, 9), vec![0, 1, 2, 3, 4]);
        assert_eq!(super::split(&[0], 10, 3), vec![0, 1]);
    }

    #[test]
    fn a_format1_segment_is_not_patched() {
        let seg = build(&[vec![(1, vec![(3, 7)])]], false);
        let opened = AnySegment::open(&seg.encode_format1()).unwrap();
        assert!(!opened.holds_deltas());
        let how = Patching {
            parts: 2,
            every_version: true,
            base: &|_, _| Ok(None),
            buffer: &|| vec![0; PS],
        };
        assert!(opened.patch(1, &how).is_err());
    }
}
