//! Unsigned LEB128 integers: seven bits a byte, low bits first, high bit set on every byte but
//! the last. Used for the frame map and the page deltas of format-2 segments.

use crate::{Error, Result};

/// Appends `v` to `out`.
pub(crate) fn put(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads one integer from the front of `input` and advances it. A number that does not fit in 32
/// bits, or an input that ends inside a number, is corrupt (`at` names the place for the error).
pub(crate) fn get(input: &mut &[u8], at: &str) -> Result<u32> {
    let mut v: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(5) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *input = &input[i + 1..];
            return u32::try_from(v)
                .map_err(|_| Error::corrupt(0, format!("{at}: number out of range")));
        }
    }
    Err(Error::corrupt(
        0,
        format!("{at}: truncated or overlong number"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_edges() {
        for v in [0, 1, 127, 128, 16_383, 16_384, 65_536, u32::MAX] {
            let mut b = Vec::new();
            put(&mut b, v);
            let mut s = &b[..];
            assert_eq!(get(&mut s, "t").unwrap(), v);
            assert!(s.is_empty());
        }
    }

    #[test]
    fn truncated_and_overlong_are_corrupt() {
        assert!(get(&mut &[0x80u8][..], "t").is_err());
        assert!(get(&mut &[0xffu8, 0xff, 0xff, 0xff, 0x7f][..], "t").is_err());
        assert!(get(&mut &[0x80u8, 0x80, 0x80, 0x80, 0x80, 0x01][..], "t").is_err());
    }
}
