//! Disaster-recovery drills: restore a replica into a scratch folder, check the result every way
//! we can, time it, and compare it with the live database.
//!
//! A drill
//! 1. restores the newest state as `lifeboat restore` does (verifying every CRC, SQLite's frame
//!    checksums, the database checksum recorded at each segment's end and at the target, and
//!    running `PRAGMA integrity_check`); its wall time is the RTO;
//! 2. runs `PRAGMA integrity_check` and `PRAGMA foreign_key_check` on the restored file and hashes
//!    the file again, independently of the restore, comparing with the checksum the replica
//!    recorded;
//! 3. optionally does the same for a random restore point of the same generation;
//! 4. optionally compares the live database with the replica (see [`LiveVerdict`]).
//!
//! Check failures are collected in [`DrillReport::problems`]; only a failure to run the drill at
//! all (no scratch folder, say) is an [`Error`].
//!
//! # Layout
//! This module coordinates the drill and holds its report; [`checks`] checks one restored state
//! (integrity, foreign keys, the checksum recomputed from the file); [`live`] compares the live
//! database with the replica.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use lifeboat_storage::keys;
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::TxId;
use rand::Rng;
use serde::Serialize;

use crate::catalog::Catalog;
use crate::clock::{fmt_time, now_ms};
use crate::restore::{self, RestoreOptions, Target, DEFAULT_PARALLELISM};
use crate::{Error, Result};

pub mod checks;
pub mod live;

pub use checks::{ChecksumCheck, PointCheck};
pub use live::{LiveCheck, LiveVerdict};

/// What a drill does.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// The live database to compare the replica with, if any.
    pub live: Option<PathBuf>,
    /// Also restore and check a random restore point of the newest generation.
    pub random_point: bool,
    /// Downloads in flight at once (0: [`DEFAULT_PARALLELISM`]).
    pub parallelism: usize,
    /// Where the scratch folder goes (default: the system temp folder).
    pub scratch_dir: Option<PathBuf>,
    /// Told the restores' progress (bytes downloaded of each restore).
    pub progress: Option<restore::Progress>,
}
impl Default for DrillOptions {
    fn default() -> Self {
        DrillOptions {
            live: None,
            random_point: false,
            parallelism: DEFAULT_PARALLELISM,
            scratch_dir: None,
            progress: None,
        }
    }
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
    /// Recovery point: how much data a disaster now would lose. With the live database
    /// (`--db`): 0 when it is exactly the replica's newest state; with commits the replica does
    /// not have ([`DrillReport::at_risk_commits`]), an upper bound on the age of the oldest of
    /// them (they all came after the newest restorable transaction). `None` without the live
    /// database, or when it does not continue the replica (the drill then fails).
    pub rpo_seconds: Option<f64>,
    /// Commits in the live database that the replica does not hold (with `--db`; `None` when not
    /// known).
    pub at_risk_commits: Option<u64>,
    /// Age of the newest restorable transaction when the restore finished (on an idle database
    /// this is the age of its last write, not data at risk).
    pub newest_restorable_age_seconds: Option<f64>,
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
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::join("a drill step", e))?
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
        at_risk_commits: None,
        newest_restorable_age_seconds: None,
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
        DEFAULT_PARALLELISM
    } else {
        opts.parallelism
    };

    // 1. The newest state, timed from the listing on (a restore after a disaster lists too).
    let latest_path = scratch.path().join("latest.db");
    let t0 = Instant::now();
    let cat = match Catalog::load(client).await {
        Ok(c) => c,
        Err(e) => {
            report.problem(format!("cannot list the replica: {}", e.chain()));
            return Ok(report);
        }
    };
    let plan = match restore::plan(&cat, None, Target::Latest) {
        Ok(p) => p,
        Err(e) => {
            report.problem(format!("restore of the newest state failed: {}", e.chain()));
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
        progress: opts.progress.clone(),
        mode: None,
        every_commit: false,
    };
    let restored = match restore::execute(client, &plan, &ropts).await {
        Ok(r) => r,
        Err(e) => {
            report.problem(format!("restore of the newest state failed: {}", e.chain()));
            return Ok(report);
        }
    };
    let rto = t0.elapsed().as_secs_f64();
    report.rto_seconds = Some(rto);
    report.txid = Some(restored.txid.to_string());
    report.txid_time = Some(fmt_time(restored.time_ms));
    let age = now_ms().saturating_sub(restored.time_ms) as f64 / 1000.0;
    report.newest_restorable_age_seconds = Some(age);

    // 2. Independent checks of the restored file.
    let (latest, latest_hashes) =
        checks::check_state(&latest_path, &restored, "latest".into(), rto).await?;
    report.integrity_check = Some(latest.integrity_check.clone());
    report.foreign_key_check = Some(latest.foreign_key_check.clone());
    report.checksum = Some(latest.checksum.clone());
    checks::point_problems(&mut report, &latest, "the newest state");

    // Folders backed up with the database: every manifest and every blob's SHA-256.
    match lifeboat_dirs::verify::verify(client, scratch.path()).await {
        Ok(f) => f
            .problems
            .into_iter()
            .for_each(|p| report.problem(format!("folders: {p}"))),
        Err(e) => report.problem(format!("cannot check the folders: {e}")),
    }

    let objs = cat
        .generations
        .get(&plan.generation)
        .expect("planned from this catalog");

    // 3. A random restore point of the same generation.
    if opts.random_point {
        let first = objs.snapshots.first().map(|s| s.txid).unwrap_or_default();
        let last: TxId = restored.txid;
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
                let (pc, _) = checks::check_state(&path, &r, target, secs).await?;
                let what = format!("restore point txid {}", txid.0);
                checks::point_problems(&mut report, &pc, &what);
                report.random_point = Some(pc);
                std::fs::remove_file(&path).ok();
            }
            Err(e) => report.problem(format!(
                "restore of the random point txid {} failed: {}",
                txid.0,
                e.chain()
            )),
        }
    }

    // 4. The live database.
    if let Some(live) = &opts.live {
        let mut check = live::compare_live(
            client,
            live,
            &latest_path,
            plan.generation,
            objs,
            &restored,
            latest_hashes,
        )
        .await;
        // An agent still shipping moves the replica on while the drill restores; once the app
        // checkpoints those commits out of its WAL, the live database no longer continues the
        // state restored above, though it continues the replica's newer one. So a live
        // database that fails is compared again with the newest state restored afresh, while
        // the replica has moved on in the same generation.
        let mut base_time = restored.time_ms;
        let mut base_txid = restored.txid;
        for attempt in 0..LIVE_RECHECKS {
            if check.ok {
                break;
            }
            let path = scratch.path().join(format!("recheck-{attempt}.db"));
            let Some((cat, r, hashes)) =
                restore_newer(client, plan.generation, base_txid, &path, &ropts).await
            else {
                break;
            };
            let objs = cat
                .generations
                .get(&plan.generation)
                .expect("planned from this catalog");
            check =
                live::compare_live(client, live, &path, plan.generation, objs, &r, hashes).await;
            (base_time, base_txid) = (r.time_ms, r.txid);
            std::fs::remove_file(&path).ok();
        }
        report.at_risk_commits = check.unshipped_commits.filter(|_| check.ok);
        report.rpo_seconds = match report.at_risk_commits {
            Some(0) => Some(0.0),
            Some(_) => Some(now_ms().saturating_sub(base_time) as f64 / 1000.0),
            None => None,
        };
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
/// How many times a live database that does not continue the restored state is compared again
/// with a newer state of the replica.
const LIVE_RECHECKS: usize = 3;

/// How long each recheck waits for the replica to move on (the agent ships what the app has
/// just checkpointed out of its WAL within its PUT budget, about a second).
const LIVE_RECHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Once the replica's newest state is in `generation` and past `txid` (polled for up to
/// [`LIVE_RECHECK_WAIT`]), that state restored into `path`: its catalog, the restore, and the
/// restored file's page hashes. `None` if the replica did not move on, or on any failure.
async fn restore_newer(
    client: &dyn ReplicaClient,
    generation: lifeboat_wal::Generation,
    txid: TxId,
    path: &std::path::Path,
    ropts: &RestoreOptions,
) -> Option<(
    Catalog,
    restore::RestoreReport,
    lifeboat_wal::checksum::PageHashes,
)> {
    // A recheck that fails is logged: the report then shows the earlier comparison.
    fn logged<T, E: std::fmt::Display>(r: std::result::Result<T, E>, step: &str) -> Option<T> {
        r.map_err(
            |e| tracing::warn!(error = %e, "drill: recheck against a newer state: {step} failed"),
        )
        .ok()
    }
    let deadline = Instant::now() + LIVE_RECHECK_WAIT;
    let cat = loop {
        let cat = logged(Catalog::load(client).await, "listing the replica")?;
        let objs = cat.generations.get(&generation)?;
        let newest = objs
            .last_segment()
            .map(|s| s.last)
            .into_iter()
            .chain(objs.snapshots.last().map(|s| s.txid))
            .max()
            .unwrap_or_default();
        if newest > txid {
            break cat;
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let plan = logged(
        restore::plan(&cat, None, Target::Latest),
        "planning the restore",
    )?;
    if plan.generation != generation {
        return None;
    }
    let o = RestoreOptions {
        output: path.to_path_buf(),
        progress: None,
        ..ropts.clone()
    };
    let r = logged(restore::execute(client, &plan, &o).await, "the restore")?;
    let (_, hashes) = logged(
        checks::check_state(path, &r, format!("txid {}", r.txid), 0.0).await,
        "checking the restored state",
    )?;
    Some((cat, r, hashes))
}

/// Stores `report` in the replica under [`keys::drill_report`] of its start time, create-only.
/// Returns the key.
pub async fn store(client: &dyn ReplicaClient, report: &DrillReport) -> Result<String> {
    let key = keys::drill_report(report.started_unix_ms);
    let mut r = report.clone();
    r.report_key = Some(key.clone());
    let body = serde_json::to_vec_pretty(&r).map_err(Error::Encode)?;
    client.put(&key, Bytes::from(body)).await?;
    Ok(key)
}
