//! Disaster-recovery drills: restore a replica into a scratch folder, check the result every way
//! we can, time it, and compare it with the live database.
//!
//! A drill
//! 1. restores the newest state (the restore itself verifies every CRC, SQLite's frame checksums,
//!    every recorded database checksum and runs `PRAGMA integrity_check`); its wall time is the
//!    RTO;
//! 2. runs `PRAGMA integrity_check` and `PRAGMA foreign_key_check` on the restored file and hashes
//!    the file again, independently of the restore, comparing with the checksum the replica
//!    recorded;
//! 3. optionally does the same for a random restore point of the same generation;
//! 4. optionally compares the live database with the replica (see [`LiveVerdict`]).
//!
//! Check failures are collected in [`DrillReport::problems`]; only a failure to run the drill at
//! all (no scratch folder, say) is an [`Error`].
//!
//! # Comparing with the live database
//!
//! The live database is read in one read transaction on a read-only connection of its own
//! (through `sqlite_dbpage`), so its state is consistent even while the app writes; the read-only
//! connection never checkpoints. Its database checksum is then compared with the replica:
//! - equal to the restored newest state: the replica is current ([`LiveVerdict::Current`]);
//! - equal to the restored state followed by the next *k* whole transactions of the live `-wal`
//!   file (verified with SQLite's frame checksums, either continuing from the replica's last
//!   frame or from the start of the current log cycle): the live database has *k* commits the
//!   replica does not have yet, which is replication lag, not a failure ([`LiveVerdict::Lagging`]);
//! - equal to an older commit (or snapshot) of the generation: the replica holds commits the live
//!   database does not, so the live database is a stale or rolled-back copy
//!   ([`LiveVerdict::ReplicaAhead`], a failure);
//! - anything else: the live database cannot be shown to descend from the replica's state
//!   ([`LiveVerdict::Diverged`], a failure). This includes a live database whose unshipped
//!   commits were already checkpointed out of its WAL, which a running agent never allows (its
//!   pin keeps every unshipped frame in the WAL), so it means no agent is keeping up.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lifeboat_storage::keys::{self, Key};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::segment::Segment;
use lifeboat_wal::snapshot::{SnapshotTrailer, TRAILER_SIZE};
use lifeboat_wal::{DbChecksum, Generation, TxId};
use rand::Rng;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::catalog::{self, Catalog, GenerationObjects};
use crate::restore::{self, fmt_time, RestoreOptions, RestoreReport, Target};
use crate::walfile::{position_in_cycle, Continuity, Cursor, WalFile};
use crate::{Error, Result};

/// What a drill does.
#[derive(Clone, Debug, Default)]
pub struct DrillOptions {
    /// The live database to compare the replica with, if any.
    pub live: Option<PathBuf>,
    /// Also restore and check a random restore point of the newest generation.
    pub random_point: bool,
    /// Downloads in flight at once (0 means 8).
    pub parallelism: usize,
    /// Where the scratch folder goes (default: the system temp folder).
    pub scratch_dir: Option<PathBuf>,
}

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

/// How the live database relates to the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveVerdict {
    /// The live database is exactly the replica's newest state.
    Current,
    /// The live database is the replica's newest state plus whole transactions still in its WAL
    /// that the replica does not have yet (replication lag).
    Lagging,
    /// The live database is an older state of the replica's history: the replica is ahead of it
    /// (a stale disk, a rolled-back copy, or a second writer).
    ReplicaAhead,
    /// The live database is not provably the replica's state nor a continuation of it.
    Diverged,
    /// The live database could not be read.
    Unreadable,
}

/// The comparison with the live database.
#[derive(Clone, Debug, Serialize)]
pub struct LiveCheck {
    /// The live database.
    pub path: String,
    /// Its database checksum, from one consistent read transaction.
    pub checksum: Option<String>,
    /// Its pages.
    pub pages: Option<u32>,
    /// How it relates to the replica.
    pub verdict: LiveVerdict,
    /// Transactions the live database has that the replica does not (0 when current; `None`
    /// when not known).
    pub unshipped_commits: Option<u64>,
    /// Pages that differ from the replica's newest state (page count differences included).
    pub differing_pages: Option<u64>,
    /// For [`LiveVerdict::ReplicaAhead`]: the replica's transaction the live database equals.
    pub matches_txid: Option<String>,
    /// In words.
    pub detail: String,
    /// Whether the live database is consistent with the replica (current or lagging).
    pub ok: bool,
}

/// What a drill found.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    /// Whether every check passed.
    pub ok: bool,
    /// When the drill started (RFC 3339).
    pub started_at: String,
    /// When the drill started (Unix ms); the report's key is derived from it.
    pub started_unix_ms: u64,
    /// The replica.
    pub replica: String,
    /// Generation restored (`None` if nothing could be restored).
    pub generation: Option<String>,
    /// Newest restorable transaction.
    pub txid: Option<String>,
    /// When the agent saw it (RFC 3339).
    pub txid_time: Option<String>,
    /// Recovery time: wall time of the restore of the newest state, listing included.
    pub rto_seconds: Option<f64>,
    /// Age of the newest restorable transaction when the restore finished.
    pub rpo_seconds: Option<f64>,
    /// `PRAGMA integrity_check` on the restored newest state.
    pub integrity_check: Option<String>,
    /// `PRAGMA foreign_key_check` on the restored newest state.
    pub foreign_key_check: Option<String>,
    /// Database checksum of the restored newest state.
    pub checksum: Option<ChecksumCheck>,
    /// The random restore point, with `--random-point`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_point: Option<PointCheck>,
    /// The comparison with the live database, with `--db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveCheck>,
    /// The key the report is stored under in the replica, if it is stored.
    pub report_key: Option<String>,
    /// Every failed check, in words (an object at fault is named).
    pub problems: Vec<String>,
}

impl DrillReport {
    /// Records a problem (the drill fails).
    pub fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
        self.ok = false;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Inconsistent(e.to_string()))?
}

/// Runs a drill against `client`. Failed checks are in the report; the error is for a drill that
/// could not run at all.
pub async fn drill(client: &dyn ReplicaClient, opts: &DrillOptions) -> Result<DrillReport> {
    let started = now_ms();
    let mut report = DrillReport {
        ok: true,
        started_at: fmt_time(started),
        started_unix_ms: started,
        replica: client.describe(),
        generation: None,
        txid: None,
        txid_time: None,
        rto_seconds: None,
        rpo_seconds: None,
        integrity_check: None,
        foreign_key_check: None,
        checksum: None,
        random_point: None,
        live: None,
        report_key: None,
        problems: Vec::new(),
    };
    let scratch = match &opts.scratch_dir {
        Some(d) => tempfile::Builder::new()
            .prefix("lifeboat-drill-")
            .tempdir_in(d),
        None => tempfile::Builder::new().prefix("lifeboat-drill-").tempdir(),
    }
    .map_err(|e| Error::io("create the drill's scratch folder", e))?;
    let parallelism = if opts.parallelism == 0 {
        8
    } else {
        opts.parallelism
    };

    // 1. The newest state, timed from the listing on (a restore after a disaster lists too).
    let latest_path = scratch.path().join("latest.db");
    let t0 = Instant::now();
    let cat = match Catalog::load(client).await {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!("cannot list the replica: {e}"));
            return Ok(report);
        }
    };
    let plan = match restore::plan(&cat, None, Target::Latest) {
        Ok(p) => p,
        Err(e) => {
            report.problem(format!("restore of the newest state failed: {e}"));
            return Ok(report);
        }
    };
    report.generation = Some(plan.generation.to_string());
    let ropts = RestoreOptions {
        output: latest_path.clone(),
        generation: Some(plan.generation),
        target: Target::Latest,
        parallelism,
        force: false,
        progress: None,
    };
    let restored = match restore::execute(client, &plan, &ropts).await {
        Ok(r) => r,
        Err(e) => {
            report.problem(format!("restore of the newest state failed: {e}"));
            return Ok(report);
        }
    };
    let rto = t0.elapsed().as_secs_f64();
    report.rto_seconds = Some(rto);
    report.txid = Some(restored.txid.clone());
    report.txid_time = Some(fmt_time(restored.time_ms));
    report.rpo_seconds = Some(now_ms().saturating_sub(restored.time_ms) as f64 / 1000.0);

    // 2. Independent checks of the restored file.
    let (latest, latest_hashes) =
        check_state(&latest_path, &restored, "latest".into(), rto).await?;
    report.integrity_check = Some(latest.integrity_check.clone());
    report.foreign_key_check = Some(latest.foreign_key_check.clone());
    report.checksum = Some(latest.checksum.clone());
    point_problems(&mut report, &latest, "the newest state");

    let objs = cat
        .generations
        .get(&plan.generation)
        .expect("planned from this catalog");

    // 3. A random restore point of the same generation.
    if opts.random_point {
        let first = objs
            .snapshots
            .first()
            .and_then(|s| match s.key {
                Key::Snapshot { txid, .. } => Some(txid),
                Key::Segment { .. } => None,
            })
            .unwrap_or_default();
        let last: TxId = restored.txid.parse().unwrap_or_default();
        let txid = TxId(rand::rng().random_range(first.0..=last.0.max(first.0)));
        let target = format!("txid {txid}");
        let path = scratch.path().join("point.db");
        let t = Instant::now();
        let res = async {
            let p = restore::plan_generation(plan.generation, objs, Target::TxId(txid))?;
            let o = RestoreOptions {
                output: path.clone(),
                target: Target::TxId(txid),
                ..ropts.clone()
            };
            restore::execute(client, &p, &o).await
        }
        .await;
        match res {
            Ok(r) => {
                let secs = t.elapsed().as_secs_f64();
                let (pc, _) = check_state(&path, &r, target, secs).await?;
                let what = format!("restore point txid {txid}");
                point_problems(&mut report, &pc, &what);
                report.random_point = Some(pc);
                std::fs::remove_file(&path).ok();
            }
            Err(e) => report.problem(format!("restore of the random point {target} failed: {e}")),
        }
    }

    // 4. The live database.
    if let Some(live) = &opts.live {
        let check = compare_live(
            client,
            live,
            &latest_path,
            plan.generation,
            objs,
            &restored,
            latest_hashes,
        )
        .await;
        if !check.ok {
            report.problem(format!(
                "live database {}: {}",
                live.display(),
                check.detail
            ));
        }
        report.live = Some(check);
    }
    Ok(report)
}

fn point_problems(report: &mut DrillReport, p: &PointCheck, what: &str) {
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
async fn check_state(
    path: &Path,
    r: &RestoreReport,
    target: String,
    seconds: f64,
) -> Result<(PointCheck, PageHashes)> {
    let p = path.to_path_buf();
    let page_size = r.page_size;
    let (integrity, fk, hashes) = blocking(move || {
        let (integrity, fk) = pragma_checks(&p);
        let hashes = hash_pages(&p, page_size)?;
        Ok((integrity, fk, hashes))
    })
    .await?;
    let computed = hashes.checksum().to_string();
    let checksum = ChecksumCheck {
        ok: computed == r.checksum,
        recorded: r.checksum.clone(),
        computed,
    };
    let ok = integrity == "ok" && fk == "ok" && checksum.ok;
    Ok((
        PointCheck {
            target,
            generation: r.generation.clone(),
            txid: r.txid.clone(),
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
    let uri = format!("file:{}?immutable=1", path.display());
    let c = match Connection::open_with_flags(
        &uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    ) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot open the restored database: {e}");
            return (msg.clone(), msg);
        }
    };
    let integrity = (|| -> rusqlite::Result<String> {
        let mut s = c.prepare("PRAGMA integrity_check")?;
        let rows: Vec<String> = s
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows.join("; "))
    })()
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

/// The database checksum of a file, page by page, computed here rather than by the restore.
fn hash_pages(path: &Path, page_size: u32) -> Result<PageHashes> {
    let f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let ps = page_size as usize;
    let mut h = PageHashes::new(ps);
    let mut page = vec![0u8; ps];
    let mut pgno = 0u32;
    loop {
        let mut got = 0;
        while got < ps {
            let n = r
                .read(&mut page[got..])
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        if got < ps {
            return Err(Error::Inconsistent(format!(
                "{} ends inside a page",
                path.display()
            )));
        }
        pgno += 1;
        h.set_page(pgno, &page);
    }
    Ok(h)
}

/// The live database as one read transaction saw it.
struct LiveState {
    page_size: u32,
    hashes: PageHashes,
    differing: u64,
}

/// Reads every page of the live database in one read transaction of a read-only connection,
/// hashing it and counting the pages that differ from the restored file.
fn read_live(live: &Path, restored: &Path, restored_page_size: u32) -> Result<LiveState> {
    if !live.exists() {
        return Err(Error::NoDatabase(live.to_path_buf()));
    }
    let c = Connection::open_with_flags(
        live,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(live, "open the live database read-only", e))?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| Error::sqlite(live, "set busy timeout", e))?;
    c.execute_batch("BEGIN")
        .map_err(|e| Error::sqlite(live, "begin a read transaction", e))?;
    let res = (|| -> Result<LiveState> {
        let page_size: u32 = c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(live, "read the page size", e))?;
        let count: u32 = c
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(live, "read the page count", e))?;
        let ps = page_size as usize;
        let other = File::open(restored)
            .map_err(|e| Error::io(format!("open {}", restored.display()), e))?;
        let other_pages = other
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", restored.display()), e))?
            .len()
            / u64::from(restored_page_size.max(1));
        let mut other = BufReader::with_capacity(1 << 20, other);
        let mut theirs = vec![0u8; restored_page_size as usize];
        let zero = vec![0u8; ps];
        let mut hashes = PageHashes::new(ps);
        let mut differing = 0u64;
        let mut stmt = c
            .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
            .map_err(|e| Error::sqlite(live, "read pages", e))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| Error::sqlite(live, "read pages", e))?;
        let mut n = 0u32;
        while let Some(row) = rows
            .next()
            .map_err(|e| Error::sqlite(live, "read pages", e))?
        {
            let pgno: u32 = row
                .get(0)
                .map_err(|e| Error::sqlite(live, "read pages", e))?;
            let data = row
                .get_ref(1)
                .map_err(|e| Error::sqlite(live, "read pages", e))?;
            let bytes = data.as_blob_or_null().ok().flatten().unwrap_or(&[]);
            let page = if bytes.is_empty() { &zero[..] } else { bytes };
            if pgno != n + 1 || page.len() != ps {
                return Err(Error::Inconsistent(format!(
                    "sqlite_dbpage on {} returned page {pgno} ({} bytes) after page {n}",
                    live.display(),
                    page.len()
                )));
            }
            n = pgno;
            hashes.set_page(pgno, page);
            if page_size != restored_page_size || u64::from(pgno) > other_pages {
                differing += 1;
            } else {
                other
                    .read_exact(&mut theirs)
                    .map_err(|e| Error::io(format!("read {}", restored.display()), e))?;
                if theirs != page {
                    differing += 1;
                }
            }
        }
        if n != count {
            return Err(Error::Inconsistent(format!(
                "read {n} pages of {}, it has {count}",
                live.display()
            )));
        }
        if page_size == restored_page_size && other_pages > u64::from(n) {
            differing += other_pages - u64::from(n);
        }
        Ok(LiveState {
            page_size,
            hashes,
            differing,
        })
    })();
    let _ = c.execute_batch("COMMIT");
    res
}

/// If the live database is `base` followed by whole transactions of its WAL, how many.
///
/// Two places the transactions after `base` can start: right after the replica's last frame,
/// when the live WAL is still in that log cycle and the frame there is the one the replica
/// recorded; or at the start of the current cycle, when the log restarted since. Either way the
/// frames are verified with SQLite's checksum chain, applied to `base`'s page hashes, and the
/// result compared with the live checksum after each commit.
fn unshipped_commits(
    live: &Path,
    base: &PageHashes,
    tip: &catalog::Tip,
    target: DbChecksum,
    target_pages: u32,
) -> std::io::Result<Option<u64>> {
    let wal = WalFile::for_db(live);
    let Some(h) = wal.header()? else {
        return Ok(None);
    };
    if h.page_size as usize != base.page_size() {
        return Ok(None);
    }
    let mut starts = Vec::new();
    if position_in_cycle(&tip.wal, &h) {
        let c = Cursor {
            header: Some(h),
            offset: tip.wal.end_offset,
            checksum: tip.wal.checksum_after,
            prev: None,
        };
        if wal.check(&c)? == Continuity::Same {
            starts.push(c);
        }
    }
    starts.push(Cursor::at_start(h));
    let fs = h.frame_size();
    for start in starts {
        let batch = wal.read_batch(&start, usize::MAX)?;
        let mut hs = base.clone();
        for (k, txn) in batch.txns.iter().enumerate() {
            for f in txn.frames.chunks_exact(fs) {
                let pgno = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
                if pgno == 0 {
                    return Ok(None);
                }
                hs.set_page(pgno, &f[24..]);
            }
            hs.resize(txn.commit_size);
            if hs.checksum() == target && hs.page_count() == target_pages {
                return Ok(Some(k as u64 + 1));
            }
        }
    }
    Ok(None)
}

/// The transaction of generation `g` whose recorded checksum is `target`, if any (newest first).
async fn find_commit(
    client: &dyn ReplicaClient,
    objs: &GenerationObjects,
    target: DbChecksum,
) -> Result<Option<TxId>> {
    for s in objs.segments.iter().rev() {
        let b = client.get(&s.name).await?;
        let name = s.name.clone();
        let seg = blocking(move || {
            Segment::decode(&b).map_err(|e| Error::Corrupt {
                key: name,
                cause: e,
            })
        })
        .await?;
        if let Some(c) = seg.commits.iter().rev().find(|c| c.checksum == target) {
            return Ok(Some(c.txid));
        }
    }
    for s in objs.snapshots.iter().rev() {
        let Key::Snapshot { txid, .. } = s.key else {
            continue;
        };
        let b: Bytes = client
            .get_range(&s.name, s.size.saturating_sub(TRAILER_SIZE as u64)..s.size)
            .await?;
        let t = SnapshotTrailer::decode(&b).map_err(|e| Error::Corrupt {
            key: s.name.clone(),
            cause: e,
        })?;
        if t.checksum == target {
            return Ok(Some(txid));
        }
    }
    Ok(None)
}

async fn compare_live(
    client: &dyn ReplicaClient,
    live: &Path,
    restored_path: &Path,
    generation: Generation,
    objs: &GenerationObjects,
    restored: &RestoreReport,
    base: PageHashes,
) -> LiveCheck {
    let mut check = LiveCheck {
        path: live.display().to_string(),
        checksum: None,
        pages: None,
        verdict: LiveVerdict::Unreadable,
        unshipped_commits: None,
        differing_pages: None,
        matches_txid: None,
        detail: String::new(),
        ok: false,
    };
    let (lp, rp, ps) = (
        live.to_path_buf(),
        restored_path.to_path_buf(),
        restored.page_size,
    );
    let state = match blocking(move || read_live(&lp, &rp, ps)).await {
        Ok(s) => s,
        Err(e) => {
            check.detail = format!("cannot be read: {e}");
            return check;
        }
    };
    let sum = state.hashes.checksum();
    let pages = state.hashes.page_count();
    check.checksum = Some(sum.to_string());
    check.pages = Some(pages);
    check.differing_pages = Some(state.differing);
    let newest = format!("generation {generation} txid {}", restored.txid);
    if state.page_size == restored.page_size
        && sum == base.checksum()
        && pages == base.page_count()
        && state.differing == 0
    {
        check.verdict = LiveVerdict::Current;
        check.unshipped_commits = Some(0);
        check.ok = true;
        check.detail = format!(
            "equals the replica's newest state ({newest}) page for page: 0 transactions behind"
        );
        return check;
    }
    if state.page_size != restored.page_size {
        check.verdict = LiveVerdict::Diverged;
        check.detail = format!(
            "has page size {}, the replica's newest state ({newest}) has {}: it is another \
             database",
            state.page_size, restored.page_size
        );
        return check;
    }
    // Lag: the restored state plus whole transactions still in the live WAL.
    let tip = catalog::tip(client, generation, objs).await;
    if let Ok(tip) = &tip {
        if tip.txid.to_string() == restored.txid {
            let (lp, b) = (live.to_path_buf(), base.clone());
            let tip = *tip;
            let found = blocking(move || {
                unshipped_commits(&lp, &b, &tip, sum, pages)
                    .map_err(|e| Error::io("read the live WAL", e))
            })
            .await;
            if let Ok(Some(k)) = found {
                check.verdict = LiveVerdict::Lagging;
                check.unshipped_commits = Some(k);
                check.ok = true;
                check.detail = format!(
                    "is the replica's newest state ({newest}) followed by {k} transaction(s) \
                     still in its WAL that the replica does not have yet (replication lag)"
                );
                return check;
            }
        }
    }
    // An older state of the replica's history: the replica is ahead.
    match find_commit(client, objs, sum).await {
        Ok(Some(t)) => {
            check.verdict = LiveVerdict::ReplicaAhead;
            check.matches_txid = Some(t.to_string());
            check.detail = format!(
                "equals txid {t} of generation {generation}, but the replica's newest state is \
                 txid {}: the replica is ahead of the live database (diverged: a stale disk, a \
                 rolled-back copy, or another writer on this replica)",
                restored.txid
            );
        }
        Ok(None) => {
            check.verdict = LiveVerdict::Diverged;
            check.detail = format!(
                "differs from the replica's newest state ({newest}) in {} page(s), matches no \
                 recorded commit of generation {generation}, and is not that state followed by \
                 transactions in its WAL: it diverged from the replica (a different history), or \
                 commits the replica never got were checkpointed out of its WAL (is an agent \
                 replicating it?)",
                state.differing
            );
        }
        Err(e) => {
            check.verdict = LiveVerdict::Diverged;
            check.detail = format!(
                "differs from the replica's newest state ({newest}) and is not that state \
                 followed by transactions in its WAL; looking for it among older commits failed: \
                 {e}"
            );
        }
    }
    check
}

/// Stores `report` in the replica under [`keys::drill_report`] of its start time, create-only.
/// Returns the key.
pub async fn store(client: &dyn ReplicaClient, report: &DrillReport) -> Result<String> {
    let key = keys::drill_report(report.started_unix_ms);
    let mut r = report.clone();
    r.report_key = Some(key.clone());
    let body = serde_json::to_vec_pretty(&r)
        .map_err(|e| Error::Inconsistent(format!("encode the drill report: {e}")))?;
    client.put(&key, Bytes::from(body)).await?;
    Ok(key)
}
