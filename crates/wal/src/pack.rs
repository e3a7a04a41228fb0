//! A *pack*: consecutive small segments of one generation, stored back to back in one object, so
//! that a restore reads one object where it would read many (an app committing every few seconds
//! ships one small segment per commit; a day of them is thousands of GETs).
//!
//! The parts are the segments' own bytes, unchanged: each keeps its header, its CRCs and its
//! format, and a reader opens each exactly as it opens a segment object. The pack adds an index
//! (the parts' lengths) under a CRC of its own, and a CRC over the whole object:
//!
//! ```text
//! magic "LBPK" | version u16 (1) | flags u16 (0) | part count u32 | part lengths u64 ... | CRC32
//! the parts, back to back
//! CRC32 of every byte before it
//! ```
//!
//! [`split`] checks what makes the parts one run: every length adds up, each part is a segment
//! whose header verifies, and the parts continue each other (same generation, each starting at
//! the transaction after the previous one's last). The parts' bodies are checked when opened.

use bytes::Bytes;

use crate::segment::{self, check_crc, get16, get32, get64, SegmentHeader};
use crate::{Error, Result};

/// Magic bytes at offset 0.
pub const MAGIC: &[u8; 4] = b"LBPK";
/// The pack format version this crate writes and reads.
pub const VERSION: u16 = 1;
/// Bytes of the fixed part of the header (magic, version, flags, part count).
const FIXED: usize = 12;
/// Most parts a reader accepts (a bound on the index it allocates for untrusted input).
pub const MAX_PARTS: usize = 65_536;

/// Encodes a pack of `parts`, each a whole segment object.
pub fn encode(parts: &[&[u8]]) -> Vec<u8> {
    let index = FIXED + 8 * parts.len();
    let total = index + 4 + parts.iter().map(|p| p.len()).sum::<usize>() + 4;
    let mut b = Vec::with_capacity(total);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(parts.len() as u32).to_be_bytes());
    for p in parts {
        b.extend_from_slice(&(p.len() as u64).to_be_bytes());
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    for p in parts {
        b.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_be_bytes());
    b
}

/// Whether `b` starts like a pack (not a check of anything else).
pub fn is_pack(b: &[u8]) -> bool {
    b.starts_with(MAGIC)
}

/// Verifies a pack's CRCs and structure and returns its parts (slices of `b`, no copy) with
/// their headers, in order.
pub fn split(b: &Bytes) -> Result<Vec<(SegmentHeader, Bytes)>> {
    if b.len() < FIXED + 8 {
        return Err(Error::Incomplete {
            needed: FIXED + 8 - b.len(),
        });
    }
    if !is_pack(b) {
        return Err(Error::corrupt(0, "not a pack (bad magic)"));
    }
    let version = get16(b, 4);
    if version > VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    if version == 0 {
        return Err(Error::corrupt(4, "pack version 0"));
    }
    let flags = get16(b, 6);
    if flags != 0 {
        return Err(Error::corrupt(
            6,
            format!("unknown pack flags {flags:#06x}: written by a newer lifeboat?"),
        ));
    }
    let count = get32(b, 8) as usize;
    if count == 0 || count > MAX_PARTS {
        return Err(Error::corrupt(8, format!("bad part count {count}")));
    }
    let index_end = FIXED + 8 * count;
    if b.len() < index_end + 4 + 4 {
        return Err(Error::Incomplete {
            needed: index_end + 8 - b.len(),
        });
    }
    check_crc(b, index_end, "pack header CRC32")?;
    let end = b.len() - 4;
    check_crc(b, end, "pack CRC32")?;
    let mut at = index_end + 4;
    let mut parts: Vec<(SegmentHeader, Bytes)> = Vec::with_capacity(count);
    for i in 0..count {
        let len = get64(b, FIXED + 8 * i);
        let fits = usize::try_from(len)
            .ok()
            .filter(|&l| l <= end - at && l >= segment::HEADER_SIZE + 4);
        let Some(len) = fits else {
            return Err(Error::corrupt(
                (FIXED + 8 * i) as u64,
                format!("part {i} of {len} bytes does not fit the pack"),
            ));
        };
        let part = b.slice(at..at + len);
        let h = SegmentHeader::decode(&part).map_err(|e| in_part(i, at, e))?;
        if h.body_len.checked_add((segment::HEADER_SIZE + 4) as u64) != Some(len as u64) {
            return Err(Error::corrupt(
                at as u64,
                format!(
                    "part {i} is {len} bytes, its header says {}",
                    h.body_len.saturating_add((segment::HEADER_SIZE + 4) as u64)
                ),
            ));
        }
        if let Some((prev, _)) = parts.last() {
            if h.generation != prev.generation || h.first_txid.0 != prev.last_txid.0 + 1 {
                return Err(Error::corrupt(
                    at as u64,
                    format!(
                        "part {i} (generation {}, txids {}..{}) does not continue part {} \
                         (generation {}, ending at txid {})",
                        h.generation,
                        h.first_txid.0,
                        h.last_txid.0,
                        i - 1,
                        prev.generation,
                        prev.last_txid.0
                    ),
                ));
            }
        }
        parts.push((h, part));
        at += len;
    }
    if at != end {
        return Err(Error::corrupt(
            at as u64,
            format!("{} bytes after the last part", end - at),
        ));
    }
    Ok(parts)
}

/// An error inside part `i` (at byte `at` of the pack), located in the pack.
fn in_part(i: usize, at: usize, e: Error) -> Error {
    match e {
        Error::Corrupt { offset, reason } => Error::Corrupt {
            offset: at as u64 + offset,
            reason: format!("part {i}: {reason}"),
        },
        e => Error::corrupt(at as u64, format!("part {i}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::Segment;
    use crate::TxId;
    use proptest::prelude::*;

    /// `n` consecutive segments, starting at txid 1, as stored.
    fn segments(n: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = crate::segment::tests::sample();
        let span = s.header.last_txid.0 - s.header.first_txid.0;
        let mut first = 1;
        for _ in 0..n {
            s.header.first_txid = TxId(first);
            s.header.last_txid = TxId(first + span);
            for (k, c) in s.commits.iter_mut().enumerate() {
                c.txid = TxId(first + k as u64);
            }
            out.push(s.encode_format1());
            first += span + 1;
        }
        out
    }

    fn pack_of(n: u64) -> (Vec<Vec<u8>>, Bytes) {
        let segs = segments(n);
        let refs: Vec<&[u8]> = segs.iter().map(|s| s.as_slice()).collect();
        let b = Bytes::from(encode(&refs));
        (segs, b)
    }

    #[test]
    fn parts_come_back_as_written_and_open_as_segments() {
        let (segs, b) = pack_of(5);
        let parts = split(&b).unwrap();
        assert_eq!(parts.len(), 5);
        for ((h, p), s) in parts.iter().zip(&segs) {
            assert_eq!(&p[..], &s[..]);
            let d = Segment::decode(p).unwrap();
            assert_eq!(d.header.first_txid, h.first_txid);
        }
    }

    #[test]
    fn parts_that_do_not_continue_each_other_are_refused() {
        let segs = segments(3);
        let refs = [segs[0].as_slice(), segs[2].as_slice()];
        let e = split(&Bytes::from(encode(&refs))).unwrap_err().to_string();
        assert!(e.contains("does not continue part 0"), "{e}");
        let refs = [segs[1].as_slice(), segs[0].as_slice()];
        assert!(split(&Bytes::from(encode(&refs))).is_err());
    }

    #[test]
    fn an_empty_or_truncated_pack_is_refused() {
        assert!(split(&Bytes::from(encode(&[]))).is_err());
        let (_, b) = pack_of(3);
        for n in 0..b.len() {
            assert!(
                split(&b.slice(..n)).is_err(),
                "accepted {n} of {} bytes",
                b.len()
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any flipped byte is detected (by a CRC, or as a structure the pack cannot have).
        #[test]
        fn every_flipped_byte_is_detected(n in 1u64..4, at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (_, b) = pack_of(n);
            let mut v = b.to_vec();
            let i = at.index(v.len());
            v[i] ^= 1 << bit;
            prop_assert!(split(&Bytes::from(v)).is_err());
        }
    }
}
