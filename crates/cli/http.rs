//! The status endpoint: `GET /health` (JSON; 200 while every replica and backed-up folder is
//! healthy, 503 otherwise)
//! and `GET /metrics` (Prometheus text format), both read from the agents' [`Status`], and
//! `POST /sync` (durable acknowledgements: 200 once every transaction committed before the call
//! is in every replica, 503 at the deadline, `?timeout=10s` by default).
//!
//! It runs on a thread of its own with `tiny_http`, so a slow scraper never touches replication;
//! each `/sync` waits on a thread of its own, so it never holds up `/health`.

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
    /// Its sync requests.
    pub flush: Arc<lifeboat_agent::flush::Flush>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<lifeboat_agent::lease::LeaseInfo>,
    replicas: Vec<ReplicaHealth>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    folders: Vec<crate::http_folders::FolderHealth>,
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
            let folders = crate::http_folders::health(s.folders);
            all &= folders.iter().all(|f| f.healthy);
            DbHealth {
                db: w.path.display().to_string(),
                errors: s.errors,
                last_error: s.last_error,
                lease: s.lease,
                replicas,
                folders,
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
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the `# HELP` and `# TYPE` lines that start a metric family.
pub(crate) fn family_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric family: name, type, help, and `F`, which gives its value from a status.
pub(crate) type Metric<F> = (&'static str, &'static str, &'static str, F);

/// A metric with one value per replica: its value given the time now.
type PerReplica = Metric<fn(&ReplicaStatus, u64) -> f64>;

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

/// A metric with one value per database.
type PerDb = Metric<fn(&StatusInner) -> f64>;

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
        family_header(&mut out, name, kind, help);
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
    let leases: Vec<_> = snaps
        .iter()
        .filter_map(|(db, s)| s.lease.as_ref().map(|l| (format!("db=\"{db}\""), l)))
        .collect();
    let lease_rows = |f: &dyn Fn(&lifeboat_agent::lease::LeaseInfo) -> f64| -> Vec<(String, f64)> {
        leases.iter().map(|(l, x)| (l.clone(), f(x))).collect()
    };
    family(
        "lifeboat_lease_held",
        "gauge",
        "1 while this instance holds the replica's writer lease, else 0.",
        lease_rows(&|l| f64::from(u8::from(l.state == "held"))),
    );
    family(
        "lifeboat_lease_epoch",
        "gauge",
        "The epoch of the writer lease this instance took.",
        lease_rows(&|l| l.epoch as f64),
    );
    family(
        "lifeboat_lease_expiry_timestamp_seconds",
        "gauge",
        "When the writer lease expires unless renewed (Unix time, this host's clock).",
        lease_rows(&|l| l.expires_ms as f64 / 1000.0),
    );
    family(
        "lifeboat_lease_handoffs_total",
        "counter",
        "Handoffs of the writer lease this instance answered.",
        lease_rows(&|l| l.handoffs as f64),
    );
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
    crate::http_folders::metrics(&mut out, &snaps);
    out
}

/// Serves the status of running agents (see [`serve`]): the databases running at each request,
/// so those of a folder of databases come and go as they are created and removed.
pub fn serve_agents(addr: &str, registry: Arc<lifeboat_agent::agent::Registry>) -> Result<()> {
    serve(addr, move || {
        registry
            .snapshot()
            .into_iter()
            .map(|r| Watched {
                path: r.path,
                status: r.status,
                flush: r.flush,
            })
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
                if path == "/sync" {
                    let _ = std::thread::Builder::new()
                        .name("lifeboat sync".into())
                        .spawn(move || answer_sync(req, &dbs));
                    continue;
                }
                let (code, ctype, body) = match path.as_str() {
                    "/health" | "/healthz" => {
                        let (ok, body) = health(&dbs);
                        (if ok { 200 } else { 503 }, "application/json", body)
                    }
                    "/metrics" => (200, "text/plain; version=0.0.4", metrics(&dbs)),
                    _ => (
                        404,
                        "text/plain",
                        "try /health, /metrics or POST /sync\n".into(),
                    ),
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

/// The deadline of a `/sync` without `?timeout=`.
const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /sync[?timeout=10s]`: 200 with where every replica stands once every transaction
/// committed before the call is in every replica; 503 if the deadline passes first (or
/// replication stopped); 405 for another method.
fn answer_sync(req: tiny_http::Request, dbs: &[Watched]) {
    let (code, body) = sync_response(req.method(), req.url(), dbs);
    let header =
        tiny_http::Header::from_bytes("Content-Type", "application/json").expect("static header");
    let _ = req.respond(
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header),
    );
}

fn sync_response(method: &tiny_http::Method, url: &str, dbs: &[Watched]) -> (u16, String) {
    use lifeboat_agent::flush::NotSynced;
    if *method != tiny_http::Method::Post {
        return (405, r#"{"status":"use POST /sync"}"#.into());
    }
    let timeout = url
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("timeout=")))
        .map(humantime::parse_duration);
    let timeout = match timeout {
        None => SYNC_TIMEOUT,
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            let body =
                serde_json::json!({ "status": "bad request", "error": format!("timeout: {e}") });
            return (400, body.to_string());
        }
    };
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    let mut out = Vec::new();
    for w in dbs {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match w.flush.sync(left) {
            Ok(at) => {
                out.push(serde_json::json!({ "db": w.path.display().to_string(), "replicas": at }))
            }
            Err(e) => {
                let why = match e {
                    NotSynced::Timeout => "timeout",
                    NotSynced::Stopped => "stopped",
                };
                let body = serde_json::json!({
                    "status": why,
                    "db": w.path.display().to_string(),
                    "waited_ms": started.elapsed().as_millis() as u64,
                });
                return (503, body.to_string());
            }
        }
    }
    let body = serde_json::json!({
        "status": "synced",
        "waited_ms": started.elapsed().as_millis() as u64,
        "databases": out,
    });
    (200, body.to_string())
}

/// `lifeboat sync --addr HOST:PORT`: `POST /sync` to a running lifeboat and print its answer.
pub async fn sync_command(a: crate::args::SyncArgs) -> Result<std::process::ExitCode> {
    let (code, body) = tokio::task::spawn_blocking(move || post_sync(&a.addr, a.timeout))
        .await
        .context("the sync request")??;
    println!("{}", body.trim_end());
    if code == 200 {
        Ok(std::process::ExitCode::SUCCESS)
    } else {
        anyhow::bail!("not synced (HTTP {code}): {}", body.trim_end())
    }
}

/// One `POST /sync?timeout=...` over HTTP/1.1; the status code and body.
pub fn post_sync(addr: &str, timeout: std::time::Duration) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("cannot connect to lifeboat's health address {addr}"))?;
    s.set_read_timeout(Some(timeout + std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "POST /sync?timeout={}ms HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        timeout.as_millis()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .with_context(|| format!("no answer from {addr}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer from {addr}: {head:?}"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched() -> Vec<Watched> {
        vec![Watched {
            path: "app.db".into(),
            status: Arc::new(Status::default()),
            flush: Arc::new(lifeboat_agent::flush::Flush::default()),
        }]
    }

    #[test]
    fn sync_wants_post_and_a_valid_timeout() {
        let dbs = watched();
        assert_eq!(sync_response(&tiny_http::Method::Get, "/sync", &dbs).0, 405);
        let (code, body) = sync_response(&tiny_http::Method::Post, "/sync?timeout=soon", &dbs);
        assert_eq!(code, 400, "{body}");
    }

    #[test]
    fn sync_answers_503_at_its_deadline_when_nothing_settles_it() {
        // No replicator thread runs here: the ticket is never settled.
        let dbs = watched();
        let t = std::time::Instant::now();
        let (code, body) = sync_response(&tiny_http::Method::Post, "/sync?timeout=50ms", &dbs);
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("\"timeout\""), "{body}");
        assert!(t.elapsed() >= std::time::Duration::from_millis(50));
    }
}
