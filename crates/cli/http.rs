//! The status endpoint: `GET /health` (JSON; 200 while every replica is healthy, 503 otherwise)
//! and `GET /metrics` (Prometheus text format), both read from the agents' [`Status`].
//!
//! It runs on a thread of its own with `tiny_http`, so a slow scraper never touches replication.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_agent::clock::now_ms;
use lifeboat_agent::status::{DrillOutcome, ReplicaStatus, Status, StatusInner};
use serde::Serialize;

/// One database whose status is served.
#[derive(Clone)]
pub struct Watched {
    /// The database file.
    pub path: PathBuf,
    /// Its agent's progress.
    pub status: Arc<Status>,
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    databases: Vec<DbHealth>,
}

#[derive(Serialize)]
struct DbHealth {
    db: String,
    errors: u64,
    last_error: Option<String>,
    replicas: Vec<ReplicaHealth>,
}

#[derive(Serialize)]
struct ReplicaHealth {
    #[serde(flatten)]
    status: ReplicaStatus,
    /// Seconds since the oldest commit not yet in the replica (0 when caught up).
    lag_seconds: f64,
    healthy: bool,
}

fn health(dbs: &[Watched]) -> (bool, String) {
    let now = now_ms();
    let mut all = true;
    let databases = dbs
        .iter()
        .map(|w| {
            let s = w.status.snapshot();
            let replicas: Vec<ReplicaHealth> = s
                .replicas
                .iter()
                .map(|r| {
                    let ok = r.healthy(now);
                    all &= ok;
                    ReplicaHealth {
                        status: r.clone(),
                        lag_seconds: r.lag_seconds(now),
                        healthy: ok,
                    }
                })
                .collect();
            DbHealth {
                db: w.path.display().to_string(),
                errors: s.errors,
                last_error: s.last_error,
                replicas,
            }
        })
        .collect();
    let h = Health {
        status: if all { "ok" } else { "failing" },
        databases,
    };
    (
        all,
        serde_json::to_string_pretty(&h).unwrap_or_else(|_| "{}".into()),
    )
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A metric with one value per replica: name, type, help, value (given the time now).
type PerReplica = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ReplicaStatus, u64) -> f64,
);

const PER_REPLICA: &[PerReplica] = &[
    (
        "lifeboat_replication_lag_seconds",
        "gauge",
        "Seconds since the oldest commit not yet in the replica (0 when caught up).",
        |r, now| r.lag_seconds(now),
    ),
    (
        "lifeboat_replication_lag_transactions",
        "gauge",
        "Committed transactions read from the WAL but not yet in the replica.",
        |r, _| r.lag.pending_txns as f64,
    ),
    (
        "lifeboat_last_sync_timestamp_seconds",
        "gauge",
        "Unix time of the last successful upload to the replica.",
        |r, _| r.written.last_sync_ms.map_or(0.0, |t| t as f64 / 1000.0),
    ),
    (
        "lifeboat_replica_healthy",
        "gauge",
        "1 while the replica is healthy (see /health), else 0.",
        |r, now| f64::from(u8::from(r.healthy(now))),
    ),
    (
        "lifeboat_transactions_shipped_total",
        "counter",
        "Transactions shipped to the replica.",
        |r, _| r.written.txns as f64,
    ),
    (
        "lifeboat_bytes_written_total",
        "counter",
        "Bytes of objects written to the replica.",
        |r, _| r.written.bytes as f64,
    ),
    (
        "lifeboat_objects_written_total",
        "counter",
        "Objects (snapshots and segments) written to the replica.",
        |r, _| r.written.objects as f64,
    ),
    (
        "lifeboat_replica_consecutive_failures",
        "gauge",
        "Failed attempts in a row.",
        |r, _| f64::from(r.failures),
    ),
];

/// A metric with one value per database: name, type, help, value.
type PerDb = (
    &'static str,
    &'static str,
    &'static str,
    fn(&StatusInner) -> f64,
);

const PER_DB: &[PerDb] = &[
    (
        "lifeboat_checkpoints_total",
        "counter",
        "Checkpoints run by the agent.",
        |s| s.checkpoints as f64,
    ),
    (
        "lifeboat_checkpoint_seconds_total",
        "counter",
        "Time spent in the agent's checkpoints.",
        |s| s.checkpoint_seconds,
    ),
    (
        "lifeboat_snapshots_total",
        "counter",
        "Snapshots taken (new generations).",
        |s| s.snapshots as f64,
    ),
    (
        "lifeboat_snapshot_seconds_total",
        "counter",
        "Time spent taking and uploading snapshots.",
        |s| s.snapshot_seconds,
    ),
    (
        "lifeboat_wal_bytes",
        "gauge",
        "Size of the database's -wal file.",
        |s| s.wal_bytes as f64,
    ),
];

fn metrics(dbs: &[Watched]) -> String {
    let now = now_ms();
    let snaps: Vec<(String, StatusInner)> = dbs
        .iter()
        .map(|w| (label(&w.path.display().to_string()), w.status.snapshot()))
        .collect();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    for &(name, kind, help, f) in PER_REPLICA {
        let rows = snaps
            .iter()
            .flat_map(|(db, s)| {
                s.replicas.iter().map(move |r| {
                    let labels = format!("db=\"{db}\",replica=\"{}\"", label(&r.replica));
                    (labels, f(r, now))
                })
            })
            .collect();
        family(name, kind, help, rows);
    }
    family(
        "lifeboat_errors_total",
        "counter",
        "Errors (failed uploads, reads, checkpoints), by kind.",
        snaps
            .iter()
            .flat_map(|(db, s)| {
                s.errors_by_kind
                    .iter()
                    .map(move |(k, v)| (format!("db=\"{db}\",kind=\"{}\"", label(k)), *v as f64))
            })
            .collect(),
    );
    family(
        "lifeboat_replica_requests_total",
        "counter",
        "Requests made to the replica's backend, by kind (failed: those that returned an error).",
        snaps
            .iter()
            .flat_map(|(db, s)| {
                s.replicas.iter().flat_map(move |r| {
                    r.requests.iter().map(move |(k, v)| {
                        (
                            format!("db=\"{db}\",replica=\"{}\",kind=\"{k}\"", label(&r.replica)),
                            *v as f64,
                        )
                    })
                })
            })
            .collect(),
    );
    for &(name, kind, help, f) in PER_DB {
        let rows = snaps
            .iter()
            .map(|(db, s)| (format!("db=\"{db}\""), f(s)))
            .collect();
        family(name, kind, help, rows);
    }
    // The last scheduled drill of each database that ran one.
    let drills: Vec<_> = snaps
        .iter()
        .filter_map(|(db, s)| s.last_drill.map(|d| (format!("db=\"{db}\""), d)))
        .collect();
    let drill_rows = |f: &dyn Fn(&DrillOutcome) -> Option<f64>| -> Vec<(String, f64)> {
        drills
            .iter()
            .filter_map(|(l, d)| f(d).map(|v| (l.clone(), v)))
            .collect()
    };
    family(
        "lifeboat_last_drill_success",
        "gauge",
        "1 if the last scheduled drill passed, else 0.",
        drill_rows(&|d| Some(f64::from(u8::from(d.ok)))),
    );
    family(
        "lifeboat_last_drill_rto_seconds",
        "gauge",
        "Restore wall time of the last scheduled drill.",
        drill_rows(&|d| d.rto_seconds),
    );
    family(
        "lifeboat_last_drill_timestamp_seconds",
        "gauge",
        "Unix time the last scheduled drill started.",
        drill_rows(&|d| Some(d.at_ms as f64 / 1000.0)),
    );
    out
}

/// Serves the status of running agents (see [`serve`]): the databases running at each request,
/// so those of a folder of databases come and go as they are created and removed.
pub fn serve_agents(addr: &str, registry: Arc<lifeboat_agent::agent::Registry>) -> Result<()> {
    serve(addr, move || {
        registry
            .snapshot()
            .into_iter()
            .map(|(path, status)| Watched { path, status })
            .collect()
    })
}

/// Serves `/health` and `/metrics` on `addr` until the process exits, for the databases
/// `dbs` lists at each request.
pub fn serve(addr: &str, dbs: impl Fn() -> Vec<Watched> + Send + 'static) -> Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot listen on {addr} for the status endpoint"))?;
    tracing::info!(addr = %addr, "status endpoint: /health and /metrics");
    std::thread::Builder::new()
        .name("lifeboat http".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("").to_string();
                let dbs = dbs();
                let (code, ctype, body) = match path.as_str() {
                    "/health" | "/healthz" => {
                        let (ok, body) = health(&dbs);
                        (if ok { 200 } else { 503 }, "application/json", body)
                    }
                    "/metrics" => (200, "text/plain; version=0.0.4", metrics(&dbs)),
                    _ => (404, "text/plain", "try /health or /metrics\n".into()),
                };
                let header =
                    tiny_http::Header::from_bytes("Content-Type", ctype).expect("static header");
                let _ = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(code)
                        .with_header(header),
                );
            }
        })
        .context("start the status endpoint thread")?;
    Ok(())
}
