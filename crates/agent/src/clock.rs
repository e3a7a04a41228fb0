//! Wall-clock time as lifeboat records it: Unix milliseconds, in keys, headers and reports.
//!
//! One place, so that no module imports another just for the time (the replicator and the
//! status module both need it; neither depends on the other).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// A time as Unix milliseconds (0 before 1970).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Formats Unix milliseconds as RFC 3339 (UTC), e.g. `2026-11-28T17:00:00.000Z`.
pub fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_converts() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(to_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
