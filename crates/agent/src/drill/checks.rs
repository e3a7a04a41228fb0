//! The checks of one restored state: `PRAGMA integrity_check`, `PRAGMA foreign_key_check`, and
//! the database checksum recomputed from the file, independently of the restore that wrote it.

use std::path::Path;

use lifeboat_wal::checksum::PageHashes;
use serde::Serialize;

use super::{blocking, DrillReport};
use crate::clock::fmt_time;
use crate::files;
use crate::restore::RestoreReport;
use crate::Result;

/// The database checksum recorded by the replica, and the one recomputed from the restored file.
#[derive(Clone, Debug, Serialize)]
pub struct ChecksumCheck {
    /// What the replica recorded (and the restore verified) for the state.
    pub recorded: String,
    /// Recomputed over the restored file's pages by the drill.
    pub computed: String,
    /// Whether they are equal.
    pub ok: bool,
}

/// The checks of one restored state.
#[derive(Clone, Debug, Serialize)]
pub struct PointCheck {
    /// What was asked for (`latest`, `txid <16 hex>`).
    pub target: String,
    /// Generation restored.
    pub generation: String,
    /// Transaction the state is after.
    pub txid: String,
    /// When the agent saw that transaction (RFC 3339).
    pub time: String,
    /// Restore wall time.
    pub restore_seconds: f64,
    /// Pages in the restored database.
    pub pages: u32,
    /// `PRAGMA integrity_check`: `ok`, or what it found.
    pub integrity_check: String,
    /// `PRAGMA foreign_key_check`: `ok`, or the violations.
    pub foreign_key_check: String,
    /// The recorded and recomputed database checksum.
    pub checksum: ChecksumCheck,
    /// Whether every check of this state passed.
    pub ok: bool,
}

pub(crate) fn point_problems(report: &mut DrillReport, p: &PointCheck, what: &str) {
    if p.integrity_check != "ok" {
        report.problem(format!(
            "{what} fails PRAGMA integrity_check: {}",
            p.integrity_check
        ));
    }
    if p.foreign_key_check != "ok" {
        report.problem(format!(
            "{what} fails PRAGMA foreign_key_check: {}",
            p.foreign_key_check
        ));
    }
    if !p.checksum.ok {
        report.problem(format!(
            "{what}: the restored file hashes to {}, the replica recorded {}",
            p.checksum.computed, p.checksum.recorded
        ));
    }
}

/// Checks a restored file: integrity, foreign keys, and its checksum recomputed from the file.
pub(crate) async fn check_state(
    path: &Path,
    r: &RestoreReport,
    target: String,
    seconds: f64,
) -> Result<(PointCheck, PageHashes)> {
    let p = path.to_path_buf();
    let page_size = r.page_size;
    let (integrity, fk, hashes) = blocking(move || {
        let (integrity, fk) = pragma_checks(&p);
        let hashes = files::hash_file(&p, page_size)?;
        Ok((integrity, fk, hashes))
    })
    .await?;
    let checksum = ChecksumCheck {
        ok: hashes.checksum() == r.checksum,
        recorded: r.checksum.to_string(),
        computed: hashes.checksum().to_string(),
    };
    let ok = integrity == "ok" && fk == "ok" && checksum.ok;
    Ok((
        PointCheck {
            target,
            generation: r.generation.to_string(),
            txid: r.txid.to_string(),
            time: fmt_time(r.time_ms),
            restore_seconds: seconds,
            pages: hashes.page_count(),
            integrity_check: integrity,
            foreign_key_check: fk,
            checksum,
            ok,
        },
        hashes,
    ))
}

/// `PRAGMA integrity_check` and `PRAGMA foreign_key_check`, each as `ok` or what it found.
fn pragma_checks(path: &Path) -> (String, String) {
    let c = match files::open_immutable(path) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot open the restored database: {}", e.chain());
            return (msg.clone(), msg);
        }
    };
    let integrity = files::integrity_rows(&c)
        .map(|rows| rows.join("; "))
        .unwrap_or_else(|e| format!("error: {e}"));
    let fk = (|| -> rusqlite::Result<String> {
        let mut s = c.prepare("PRAGMA foreign_key_check")?;
        let rows: Vec<String> = s
            .query_map([], |r| {
                let table: String = r.get(0)?;
                let rowid: Option<i64> = r.get(1)?;
                let parent: String = r.get(2)?;
                Ok(format!(
                    "{table} row {} refers to a missing {parent} row",
                    rowid.map_or("-".into(), |x| x.to_string())
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(if rows.is_empty() {
            "ok".into()
        } else {
            let n = rows.len();
            let mut shown: Vec<String> = rows.into_iter().take(10).collect();
            if n > 10 {
                shown.push(format!("... {n} violations in all"));
            }
            shown.join("; ")
        })
    })()
    .unwrap_or_else(|e| format!("error: {e}"));
    (integrity, fk)
}
