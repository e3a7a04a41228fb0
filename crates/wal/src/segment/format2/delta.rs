//! Page deltas: a page version stored as the byte runs that differ from the page's previous
//! version (or from an all-zero page, for the first version a segment holds).
//!
//! Encoding: a run count, then for each run the number of unchanged bytes to skip and the
//! number of literal bytes that follow, then those bytes (counts are LEB128, see `varint`).
//! Bytes after the last run are unchanged. Runs separated by fewer than [`MIN_GAP`] equal bytes
//! are merged, so a run never costs more than the bytes it skips: an encoded page is at most
//! [`max_encoded_len`] bytes, whatever the input.

use super::varint;
use crate::{Error, Result};

/// Unchanged stretches shorter than this are copied as literals rather than skipped.
pub(crate) const MIN_GAP: usize = 8;

/// The largest encoding of one page of `page_size` bytes.
pub(crate) fn max_encoded_len(page_size: usize) -> usize {
    // Run count (3 bytes for up to 65536), first run's skip and length (3 each), the literal
    // bytes; every later run skips at least MIN_GAP bytes and spends at most 6 on its counts.
    page_size + 9
}

/// Length of the equal prefix of `a` and `b` (same length), compared a word at a time.
fn equal_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut i = 0;
    while i + 8 <= a.len() {
        let x = u64::from_ne_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            break;
        }
        i += 8;
    }
    while i < a.len() && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Appends the delta turning `prev` into `cur` (both one page) to `out`.
pub(crate) fn encode(prev: &[u8], cur: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(prev.len(), cur.len());
    let n = cur.len();
    // (skip, start, end) of each literal run.
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    let mut pos = 0; // first byte not yet covered by a run or a skip
    let mut i = 0;
    while i < n {
        i += equal_prefix(&prev[i..], &cur[i..]);
        if i >= n {
            break;
        }
        // A difference at i: extend the literal until MIN_GAP equal bytes in a row (or the end).
        let start = i;
        let mut end = i + 1;
        loop {
            let same = equal_prefix(&prev[end..], &cur[end..]);
            if end + same >= n || same >= MIN_GAP {
                break;
            }
            end += same + 1;
        }
        runs.push((start - pos, start, end));
        pos = end;
        i = end;
    }
    varint::put(out, runs.len() as u32);
    for (skip, start, end) in runs {
        varint::put(out, skip as u32);
        varint::put(out, (end - start) as u32);
        out.extend_from_slice(&cur[start..end]);
    }
}

/// Reads one delta from the front of `input` (advancing it) and writes the page it describes
/// into `out`, which holds the previous version on entry. Any run that would leave the page, an
/// empty run, or an input that ends early is corrupt.
pub(crate) fn decode(input: &mut &[u8], out: &mut [u8]) -> Result<()> {
    walk(input, out.len(), |start, bytes| {
        out[start..start + bytes.len()].copy_from_slice(bytes)
    })
}

/// Checks one delta for a page of `page_size` bytes, as [`decode`] would, and skips it.
pub(crate) fn check(input: &mut &[u8], page_size: usize) -> Result<()> {
    walk(input, page_size, |_, _| {})
}

/// Walks the runs of one delta, handing each run's start and bytes to `run`.
pub(super) fn walk(input: &mut &[u8], n: usize, mut run: impl FnMut(usize, &[u8])) -> Result<()> {
    let runs = varint::get(input, "page delta run count")? as usize;
    if runs > n / 2 + 1 {
        return Err(Error::corrupt(0, "page delta has more runs than a page"));
    }
    let mut pos = 0usize;
    for _ in 0..runs {
        let skip = varint::get(input, "page delta skip")? as usize;
        let len = varint::get(input, "page delta length")? as usize;
        let start = pos + skip;
        if len == 0 || start + len > n {
            return Err(Error::corrupt(0, "page delta run outside the page"));
        }
        if input.len() < len {
            return Err(Error::corrupt(0, "page delta ends inside a run"));
        }
        run(start, &input[..len]);
        *input = &input[len..];
        pos = start + len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(prev: &[u8], cur: &[u8]) -> usize {
        let mut enc = Vec::new();
        encode(prev, cur, &mut enc);
        assert!(
            enc.len() <= max_encoded_len(cur.len()),
            "{} bytes",
            enc.len()
        );
        let mut out = prev.to_vec();
        let mut s = &enc[..];
        decode(&mut s, &mut out).unwrap();
        assert!(s.is_empty(), "delta left {} bytes", s.len());
        assert_eq!(out, cur);
        enc.len()
    }

    #[test]
    fn unchanged_page_is_one_byte_and_small_change_is_small() {
        let a = vec![7u8; 4096];
        assert_eq!(round_trip(&a, &a), 1);
        let mut b = a.clone();
        b[100] = 1;
        b[103] = 2; // merged with the change at 100 (gap < MIN_GAP)
        b[4000] = 3;
        assert_eq!(round_trip(&a, &b), 1 + (1 + 1 + 4) + (2 + 1 + 1));
    }

    #[test]
    fn worst_case_alternation_stays_within_bound() {
        let a = vec![0u8; 4096];
        for gap in 1..20 {
            let b: Vec<u8> = (0..4096).map(|i| u8::from(i % (gap + 1) == 0)).collect();
            round_trip(&a, &b);
        }
        let all: Vec<u8> = (0..65536).map(|i| (i % 251) as u8 + 1).collect();
        round_trip(&vec![0u8; 65536], &all);
    }

    proptest! {
        #[test]
        fn any_pair_round_trips(
            prev in proptest::collection::vec(0u8..4, 512),
            edits in proptest::collection::vec((0usize..512, any::<u8>()), 0..64),
        ) {
            let mut cur = prev.clone();
            for (at, v) in edits {
                cur[at] = v;
            }
            round_trip(&prev, &cur);
        }
    }
}
