//! Applying a format-2 body to pages in place, proving SQLite's checksum chain without writing
//! the frames out.
//!
//! [`super::rebuild_pages`] writes every version of every page as a whole frame, then
//! [`super::chain`] reads them all again: a segment whose transactions each change a few hundred
//! bytes of 4 KiB pages costs the restore its full WAL size, twice. Here each page is loaded once
//! (its base or zeros), each of its versions is applied to it in place, and the page's checksum
//! weight ([`Weights`]) follows the changed bytes. The running checksum is then computed in WAL
//! order from each frame's weight: the same values SQLite wrote, proven against the chain end the
//! agent read from the live WAL exactly as a rebuilt segment's are. Each version is hashed as it
//! is made, so that the reader can check every commit's database checksum as well.

use super::weights::Weights;
use super::{by_page, delta, Parsed};
use crate::checksum::page_hash;
use crate::segment::{CommitRecord, SegmentHeader};
use crate::sqlite::WalChecksum;
use crate::Result;

/// Applies the page versions of `body` one page at a time: `base(pgno, page)` fills `page` with
/// the page before the segment for each page of [`Parsed::base_pages`], and `keep(pgno, frame,
/// page)` is handed each page's last version among the first `kept` frames (`frame` is its
/// index). Returns the end of SQLite's checksum chain over all the frames, from the header's
/// start (the caller compares it with the header's end), and each frame's page number and
/// [`page_hash`], in WAL order.
pub(crate) fn patch(
    h: &SegmentHeader,
    commits: &[CommitRecord],
    body: &Parsed,
    kept: usize,
    base: &mut dyn FnMut(u32, &mut [u8]) -> Result<()>,
    keep: &mut dyn FnMut(u32, usize, &[u8]),
) -> Result<(WalChecksum, Vec<(u32, u64)>)> {
    let ps = h.page_size as usize;
    let pgnos = &body.pgnos;
    let weights = Weights::new(ps, h.wal.big_endian);
    let mut frame_weights = vec![(0u32, 0u32); pgnos.len()];
    let mut frame_hashes = vec![(0u32, 0u64); pgnos.len()];
    let mut page = vec![0u8; ps];
    let mut weight = (0, 0);
    let mut input = &body.raw[body.versions_at..];
    let mut group = body.pages.iter();
    let order = by_page(pgnos);
    for (k, &i) in order.iter().enumerate() {
        let i = i as usize;
        let pgno = pgnos[i];
        if k == 0 || pgnos[order[k - 1] as usize] != pgno {
            let &(p, needs) = group.next().expect("one base-map entry per page");
            debug_assert_eq!(p, pgno);
            if needs {
                base(p, &mut page)?;
                weight = weights.of(&page);
            } else {
                page.fill(0);
                weight = (0, 0);
            }
        }
        delta::walk(&mut input, ps, |start, bytes| {
            weights.write(&mut page, &mut weight, start, bytes)
        })?;
        frame_weights[i] = weight;
        frame_hashes[i] = (pgno, page_hash(pgno, &page));
        // The versions of a page come in WAL order: the last kept one is followed by another
        // page's, by one past `kept`, or by nothing.
        let next_kept = order
            .get(k + 1)
            .is_some_and(|&n| pgnos[n as usize] == pgno && (n as usize) < kept);
        if i < kept && !next_kept {
            keep(pgno, i, &page);
        }
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
    Ok((running, frame_hashes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::{before, build, build_on, txns, PS};
    use super::super::BasePages;
    use crate::checksum::page_hash;
    use crate::segment::any::AnySegment;
    use crate::segment::get32;
    use crate::sqlite::FRAME_HEADER_SIZE;
    use proptest::prelude::*;
    use proptest::sample::Index;

    proptest! {
        /// For any number of frames kept, patching hands over each page's last version among
        /// them exactly as the rebuilt frames hold it, and proves the chain; a reader holding
        /// another state before the segment fails the chain.
        #[test]
        fn patching_keeps_what_rebuilding_writes(
            txns in txns(),
            be in any::<bool>(),
            with_bases in any::<bool>(),
            cut in any::<Index>(),
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
            let mut got = BTreeMap::new();
            let mut twice = false;
            let hashes = opened
                .patch(
                    kept,
                    &mut |p, page| {
                        page.copy_from_slice(&before[p as usize]);
                        Ok(())
                    },
                    &mut |p, i, page| twice |= got.insert(p, (i, page.to_vec())).is_some(),
                )
                .unwrap();
            prop_assert!(!twice, "a page was handed over twice");
            prop_assert_eq!(got, want);
            prop_assert_eq!(hashes, want_hashes);
            if with_bases {
                let wrong = opened.patch(
                    n,
                    &mut |p, page| {
                        for (o, b) in page.iter_mut().zip(&before[p as usize]) {
                            *o = b ^ 0x55;
                        }
                        Ok(())
                    },
                    &mut |_, _, _| {},
                );
                prop_assert!(wrong.is_err());
            }
        }
    }

    #[test]
    fn a_format1_segment_is_not_patched() {
        let seg = build(&[vec![(1, vec![(3, 7)])]], false);
        let opened = AnySegment::open(&seg.encode_format1()).unwrap();
        assert!(!opened.holds_deltas());
        assert!(opened
            .patch(1, &mut |_, _| Ok(()), &mut |_, _, _| {})
            .is_err());
    }
}
