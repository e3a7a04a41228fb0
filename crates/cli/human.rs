//! Output for people: sizes, durations and transaction ids as a person reads them, and the one
//! rule for reading a transaction id from the command line. `--json` output keeps raw numbers
//! (bytes, seconds) and the fixed-width hex of object keys; only what a person reads goes
//! through here.
//!
//! Transaction ids: people count in decimal, so human output shows `txid 1234`. Object keys keep
//! 16 hex digits so that a listing sorts. On the command line, a txid is read as
//! - hex when it has a `0x` prefix (`0x4d2`) or is exactly 16 hex digits (`00000000000004d2`,
//!   the key form, as `--json` and object keys print it);
//! - decimal otherwise (`1234`).
//!
//! So a 16-digit value is always hex, even when it has no letter in it.

use std::time::Duration;

use anyhow::{bail, Result};
use lifeboat_agent::clock::fmt_time;
use lifeboat_agent::drill::DrillReport;
use lifeboat_agent::restore::{RestoreReport, Target};
use lifeboat_wal::TxId;

/// Reads a transaction id as the module documentation says.
pub fn parse_txid(s: &str) -> Result<TxId> {
    let s = s.trim();
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
    let parsed = match hex {
        Some(h) if !h.is_empty() && h.len() <= 16 => u64::from_str_radix(h, 16).ok(),
        Some(_) => None,
        None if s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(s, 16).ok()
        }
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    };
    match parsed {
        Some(n) => Ok(TxId(n)),
        None => bail!(
            "{s:?} is not a transaction id: give it in decimal (1234), as 16 hex digits \
             (00000000000004d2, the form in object keys and --json) or with 0x (0x4d2)"
        ),
    }
}

/// A transaction id for people: decimal.
pub fn txid(t: TxId) -> String {
    t.0.to_string()
}

/// A transaction id given in key form (16 hex digits, as reports carry it), for people: decimal.
/// Anything else is shown as it is.
pub fn txid_key(s: &str) -> String {
    match s.parse::<TxId>() {
        Ok(t) => txid(t),
        Err(_) => s.to_string(),
    }
}

/// What a restore aims at, for people.
pub fn target(t: Target) -> String {
    match t {
        Target::Latest => "the newest state".into(),
        Target::TxId(t) => format!("txid {}", txid(t)),
        Target::Time(ms) => format!("the newest state at or before {}", fmt_time(ms)),
    }
}

/// The one-line summary of a restore.
pub fn restored(r: &RestoreReport) -> String {
    format!(
        "restored generation {}, txid {} ({}), {} pages of {} ({}), checksum {} verified, \
         integrity_check ok; read {} objects, {} in {}",
        r.generation,
        txid(r.txid),
        fmt_time(r.time_ms),
        r.pages,
        bytes(u64::from(r.page_size)),
        bytes(u64::from(r.pages) * u64::from(r.page_size)),
        r.checksum,
        r.objects,
        bytes(r.bytes),
        duration(r.elapsed)
    )
}

/// The recovery point of a drill, in words.
pub fn rpo(r: &DrillReport) -> String {
    match (r.at_risk_commits, r.rpo_seconds) {
        (Some(0), _) => "0: the live database is the replica's newest state".into(),
        (Some(k), Some(s)) => format!(
            "{k} commit(s) of the live database not in the replica yet, the oldest at most {} old",
            seconds(s)
        ),
        _ => match r.newest_restorable_age_seconds {
            Some(s) => format!(
                "unknown without --db (the newest restorable transaction is {} old)",
                seconds(s)
            ),
            None => "unknown".into(),
        },
    }
}

/// The one-line summary of a drill: the verdict, RTO, RPO and where the report is.
pub fn drill_summary(r: &DrillReport) -> String {
    let report = match &r.report_key {
        Some(k) => format!("report {k}"),
        None => "report not stored".into(),
    };
    if r.ok {
        format!(
            "drill passed: RTO {}, RPO {}; {report}",
            seconds(r.rto_seconds.unwrap_or_default()),
            rpo(r)
        )
    } else {
        format!(
            "DRILL FAILED, the backup may not restore: {}; {report}",
            r.problems.join("; ")
        )
    }
}

/// A size for people: `512 B`, `1.50 KiB`, `23.84 MiB`.
pub fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

/// A duration for people: `350 ms`, `2.35 s`, `3m 20s`.
pub fn duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// Seconds (as reports carry them) for people.
pub fn seconds(s: f64) -> String {
    duration(Duration::from_secs_f64(s.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_txids_in_decimal_hex_keys_and_0x() {
        assert_eq!(parse_txid("50").unwrap(), TxId(50));
        assert_eq!(parse_txid("0").unwrap(), TxId(0));
        assert_eq!(parse_txid("0000000000000050").unwrap(), TxId(0x50));
        assert_eq!(parse_txid("00000000000004d2").unwrap(), TxId(1234));
        assert_eq!(parse_txid("0x4d2").unwrap(), TxId(1234));
        assert_eq!(parse_txid("0X4D2").unwrap(), TxId(1234));
        // 15 or 17 digits are decimal (not key-shaped).
        assert_eq!(parse_txid("000000000000050").unwrap(), TxId(50));
        for bad in ["", "4d2", "0x", "-1", "1.5", "0x12345678901234567", "txid"] {
            let e = parse_txid(bad).unwrap_err().to_string();
            assert!(e.contains("decimal"), "{bad}: {e}");
        }
    }

    #[test]
    fn shows_txids_in_decimal() {
        assert_eq!(txid(TxId(1234)), "1234");
        assert_eq!(txid_key("00000000000004d2"), "1234");
        assert_eq!(txid_key("-"), "-");
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(duration(Duration::from_millis(350)), "350 ms");
        assert_eq!(duration(Duration::from_millis(2346)), "2.35 s");
        assert_eq!(duration(Duration::from_secs(200)), "3m 20s");
        assert_eq!(seconds(0.5), "500 ms");
    }
}
