//! Domain values printed as fixed-width hex, so that object keys sort chronologically.

use std::fmt;
use std::str::FromStr;

use crate::Error;

macro_rules! hex_u64 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:016x}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::corrupt(
                        0,
                        format!("{} must be 16 hex digits, got {s:?}", stringify!($name)),
                    ));
                }
                u64::from_str_radix(s, 16)
                    .map($name)
                    .map_err(|e| Error::corrupt(0, e.to_string()))
            }
        }
    };
}

hex_u64!(
    /// One unbroken history of a database. A new generation starts, with a full snapshot, whenever
    /// the agent cannot prove that it saw every transaction since the last one it shipped.
    ///
    /// The high 48 bits are the creation time in Unix milliseconds, the low 16 bits are random, so
    /// generations sort by creation time.
    Generation
);

hex_u64!(
    /// The sequence number of a committed transaction within a generation. The generation's first
    /// snapshot holds the state at `TxId(0)`; the first transaction shipped after it is `TxId(1)`.
    TxId
);

impl Generation {
    /// A generation for a history that starts at `unix_ms`, with `random` as the tie-breaker.
    pub fn new(unix_ms: u64, random: u16) -> Self {
        Generation((unix_ms << 16) | u64::from(random))
    }

    /// The creation time, in Unix milliseconds.
    pub fn unix_ms(self) -> u64 {
        self.0 >> 16
    }
}

impl TxId {
    /// The next transaction id.
    pub fn next(self) -> TxId {
        TxId(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_sorts() {
        let a = Generation::new(1_700_000_000_000, 7);
        let b = Generation::new(1_700_000_000_001, 0);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().parse::<Generation>().unwrap(), a);
        assert_eq!(a.unix_ms(), 1_700_000_000_000);
        assert_eq!(TxId(255).to_string(), "00000000000000ff");
    }

    #[test]
    fn rejects_wrong_width() {
        assert!("ff".parse::<TxId>().is_err());
        assert!("zz00000000000000".parse::<TxId>().is_err());
    }
}
