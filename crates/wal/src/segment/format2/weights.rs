//! SQLite's WAL checksum as an affine map, so that a frame's checksum follows a page's changes
//! instead of being computed again over the whole page.
//!
//! One step of the checksum over a pair of words `(a, b)` takes `(s0, s1)` to
//! `(s0 + s1 + a, s0 + 2·s1 + a + b)`, all modulo 2^32: `S' = M·S + N·p` with
//! `M = [[1, 1], [1, 2]]` and `N = [[1, 0], [1, 1]]`. Over a page of `P` pairs `p_0 … p_{P-1}`,
//! `S_P = M^P·S_0 + Σ_j M^(P-1-j)·N·p_j`. The sum, the page's *weight*, depends on the page alone
//! (it is the page's checksum started from `(0, 0)`), and when pair `j` changes it changes by
//! `M^(P-1-j)·N·(new - old)`. So a restore carries each page's weight through the byte runs of
//! its deltas, and a frame's running checksum is `M^P` times the state after the frame's first
//! 8 header bytes, plus the weight: the exact value SQLite computed, for the cost of the bytes
//! that changed.

use crate::sqlite::{wal_checksum, WalChecksum};

/// A 2×2 matrix over the integers modulo 2^32, `[a, b, c, d]` for `[[a, b], [c, d]]`.
type Mat = [u32; 4];

const M: Mat = [1, 1, 1, 2];
const N: Mat = [1, 0, 1, 1];

fn mul(x: Mat, y: Mat) -> Mat {
    let dot = |a: u32, b: u32, c: u32, d: u32| a.wrapping_mul(b).wrapping_add(c.wrapping_mul(d));
    [
        dot(x[0], y[0], x[1], y[2]),
        dot(x[0], y[1], x[1], y[3]),
        dot(x[2], y[0], x[3], y[2]),
        dot(x[2], y[1], x[3], y[3]),
    ]
}

fn times(m: &Mat, v: WalChecksum) -> WalChecksum {
    (
        m[0].wrapping_mul(v.0).wrapping_add(m[1].wrapping_mul(v.1)),
        m[2].wrapping_mul(v.0).wrapping_add(m[3].wrapping_mul(v.1)),
    )
}

fn add(x: WalChecksum, y: WalChecksum) -> WalChecksum {
    (x.0.wrapping_add(y.0), x.1.wrapping_add(y.1))
}

/// The weights of pages of one size, for a WAL of one byte order.
pub(crate) struct Weights {
    big_endian: bool,
    /// `M^(P-1-j)·N` for each pair `j` of a page.
    coef: Vec<Mat>,
    /// `M^P`.
    over_page: Mat,
}

impl Weights {
    pub(crate) fn new(page_size: usize, big_endian: bool) -> Weights {
        let pairs = page_size / 8;
        let mut coef = vec![[0; 4]; pairs];
        let mut m = N;
        let mut over_page = [1, 0, 0, 1];
        for c in coef.iter_mut().rev() {
            *c = m;
            m = mul(M, m);
            over_page = mul(M, over_page);
        }
        Weights {
            big_endian,
            coef,
            over_page,
        }
    }

    /// The weight of a whole page.
    pub(crate) fn of(&self, page: &[u8]) -> WalChecksum {
        wal_checksum(self.big_endian, (0, 0), page)
    }

    /// Writes `bytes` into `page` at `start`, and moves `weight`, the page's weight before, to
    /// the page's weight after: by `M^(P-1-j)·N·(new - old)` for each pair `j` written, in one
    /// pass over the pairs the bytes cover whole (read from `page` and `bytes` side by side),
    /// and at most two pairs they cover in part.
    pub(crate) fn write(
        &self,
        page: &mut [u8],
        weight: &mut WalChecksum,
        start: usize,
        bytes: &[u8],
    ) {
        let end = start + bytes.len();
        // The pairs covered whole, and the first and last pairs touched.
        let (a, b) = (start.div_ceil(8), end / 8);
        let (first, last) = (start / 8, end.div_ceil(8).saturating_sub(1));
        if a < b {
            let (old, new) = (&page[8 * a..8 * b], &bytes[8 * a - start..8 * b - start]);
            *weight = add(*weight, self.change(old, new, a));
        }
        for (n, j) in [first, last].into_iter().enumerate() {
            if (a..b).contains(&j) || (n == 1 && j == first) || bytes.is_empty() {
                continue;
            }
            let at = 8 * j;
            let old: [u8; 8] = page[at..at + 8].try_into().expect("8 bytes");
            let mut new = old;
            let (lo, hi) = (start.max(at), end.min(at + 8));
            new[lo - at..hi - at].copy_from_slice(&bytes[lo - start..hi - start]);
            *weight = add(*weight, self.change(&old, &new, j));
        }
        page[start..end].copy_from_slice(bytes);
    }

    /// How the weight moves when the pairs from `j` on change from `old` to `new`.
    fn change(&self, old: &[u8], new: &[u8], j: usize) -> WalChecksum {
        // One loop per byte order, with no branch or bounds check inside (it vectorizes).
        fn sum(coef: &[Mat], old: &[u8], new: &[u8], word: fn([u8; 4]) -> u32) -> WalChecksum {
            let (mut x, mut y) = (0u32, 0u32);
            for ((c, o), n) in coef
                .iter()
                .zip(old.chunks_exact(8))
                .zip(new.chunks_exact(8))
            {
                let a = word([n[0], n[1], n[2], n[3]]).wrapping_sub(word([o[0], o[1], o[2], o[3]]));
                let b = word([n[4], n[5], n[6], n[7]]).wrapping_sub(word([o[4], o[5], o[6], o[7]]));
                x = x
                    .wrapping_add(c[0].wrapping_mul(a))
                    .wrapping_add(c[1].wrapping_mul(b));
                y = y
                    .wrapping_add(c[2].wrapping_mul(a))
                    .wrapping_add(c[3].wrapping_mul(b));
            }
            (x, y)
        }
        let coef = &self.coef[j..j + old.len() / 8];
        if self.big_endian {
            sum(coef, old, new, u32::from_be_bytes)
        } else {
            sum(coef, old, new, u32::from_le_bytes)
        }
    }

    /// The running checksum after a frame whose first 8 header bytes are `header` and whose page
    /// weighs `weight`, from `running` before it.
    pub(crate) fn frame(
        &self,
        running: WalChecksum,
        header: &[u8; 8],
        weight: WalChecksum,
    ) -> WalChecksum {
        let s = wal_checksum(self.big_endian, running, header);
        add(times(&self.over_page, s), weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A page's weight carried through any writes equals the weight of the page they
        /// leave, and a frame's running checksum from a weight equals SQLite's over the bytes.
        #[test]
        fn weights_follow_writes_and_give_sqlites_checksum(
            shift in 9u32..13,
            be in any::<bool>(),
            seed in any::<u64>(),
            // Up to 1,500 bytes: short writes inside a pair or across two, and long ones.
            writes in prop::collection::vec((any::<prop::sample::Index>(), 1usize..1500, any::<u8>()), 0..20),
            running in any::<(u32, u32)>(),
            header in any::<[u8; 8]>(),
        ) {
            let ps = 1usize << shift;
            let mut x = seed | 1;
            let mut page: Vec<u8> = (0..ps).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
            let w = Weights::new(ps, be);
            let mut weight = w.of(&page);
            let mut want = page.clone();
            for (at, len, fill) in writes {
                let start = at.index(ps);
                let len = len.min(ps - start);
                let bytes: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                w.write(&mut page, &mut weight, start, &bytes);
                want[start..start + len].copy_from_slice(&bytes);
                prop_assert!(page == want, "the write left other bytes");
                prop_assert_eq!(weight, w.of(&page));
            }
            let mut frame = header.to_vec();
            frame.extend_from_slice(&page);
            prop_assert_eq!(w.frame(running, &header, weight), wal_checksum(be, running, &frame));
        }
    }

    #[test]
    fn a_zero_page_weighs_nothing_and_one_flipped_bit_changes_the_frame() {
        for be in [false, true] {
            let w = Weights::new(4096, be);
            let mut page = vec![0u8; 4096];
            assert_eq!(w.of(&page), (0, 0));
            let mut weight = (0, 0);
            let before = w.frame((1, 2), &[0; 8], weight);
            w.write(&mut page, &mut weight, 4095, &[0x80]);
            assert_ne!(w.frame((1, 2), &[0; 8], weight), before);
        }
    }
}
