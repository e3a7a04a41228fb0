//! How the agent schedules work around a replica that misbehaves: a prune that hangs on a slow
//! replica must not hold up shipping, and a conflicting object halts the replica on every path.
//!
//! The replica is a local folder behind a wrapper that delays or refuses some requests: these
//! tests check the agent's scheduling and failure rule, not storage.

mod common;

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use common::pages;
use lifeboat_agent::replicator::{Replicator, SyncReport};
use lifeboat_agent::restore::{restore, RestoreOptions};
use lifeboat_agent::status::Status;
use lifeboat_agent::Options;
use lifeboat_storage::local::LocalClient;
use lifeboat_storage::{ETag, ObjectMeta, PutOutcome, ReplicaClient, Result};
use rusqlite::Connection;
use tokio::sync::Semaphore;

/// A local folder whose listings and deletes wait, once armed, until the test opens the gate;
/// and which can refuse scheduled snapshots as conflicting.
#[derive(Debug)]
struct Wrapped {
    inner: LocalClient,
    armed: AtomicBool,
    gate: Semaphore,
    /// Listings and deletes that reached the gate, and that got past it.
    waiting: AtomicUsize,
    passed: AtomicUsize,
    conflict_on_scheduled_snapshots: bool,
}

impl Wrapped {
    fn new(dir: &Path, conflict_on_scheduled_snapshots: bool) -> Arc<Wrapped> {
        Arc::new(Wrapped {
            inner: LocalClient::new(dir),
            armed: AtomicBool::new(false),
            gate: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            passed: AtomicUsize::new(0),
            conflict_on_scheduled_snapshots,
        })
    }

    async fn slow(&self) {
        if self.armed.load(Ordering::SeqCst) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("gate open").forget();
            self.passed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn open(&self) {
        self.gate.add_permits(1_000);
    }
}

#[async_trait]
impl ReplicaClient for Wrapped {
    fn describe(&self) -> String {
        format!("wrapped {}", self.inner.describe())
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        self.inner.put(key, data).await
    }
    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let scheduled =
            key.contains("/snapshots/") && !key.contains("/snapshots/0000000000000000-");
        if self.conflict_on_scheduled_snapshots && scheduled {
            return Err(lifeboat_storage::Error::Conflict { key: key.into() });
        }
        self.inner.put_file(key, path).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        self.inner.get_to_file(key, path).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.slow().await;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.slow().await;
        self.inner.delete(key).await
    }
    async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize> {
        self.inner.abort_stale_uploads(older_than).await
    }
    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)> {
        self.inner.get_versioned(key).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag> {
        self.inner.put_if_absent(key, data).await
    }
    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag> {
        self.inner.put_if_match(key, data, expected).await
    }
    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()> {
        self.inner.delete_if_match(key, expected).await
    }
}

fn app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    c
}

fn write(c: &Connection, round: u32) {
    c.execute_batch("BEGIN").unwrap();
    for i in 0..20 {
        c.execute(
            "INSERT INTO t(v) VALUES (?1)",
            [format!("{round} {i} {}", "x".repeat(300))],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// Runs one pass on a thread of its own; `None` if it has not returned within `limit`.
fn pass(mut rep: Replicator, limit: Duration) -> Option<(Replicator, SyncReport)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = rep.sync();
        let _ = tx.send((rep, r));
    });
    rx.recv_timeout(limit).ok()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn shipping_goes_on_while_a_prune_hangs_on_a_slow_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let folder = dir.path().join("replica");
    let c = app(&db);
    let replica = Wrapped::new(&folder, false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = Options {
        retention: Some(Duration::from_secs(30 * 86400)),
        ..Options::default()
    };
    let clients: Vec<Arc<dyn ReplicaClient>> = vec![replica.clone()];
    let mut rep = Replicator::open(
        &db,
        clients,
        opts,
        rt.handle().clone(),
        Arc::new(Status::default()),
    )
    .unwrap();
    rep.resume().unwrap();
    // From here on every listing and delete hangs until the gate opens.
    replica.armed.store(true, Ordering::SeqCst);
    write(&c, 1);
    let limit = Duration::from_secs(20);
    let (rep, first) = pass(rep, limit).expect("the first pass stalled behind the prune");
    assert!(first.txns > 0 || first.puts > 0, "{first:?}");
    wait_for("the prune to reach the replica", || {
        replica.waiting.load(Ordering::SeqCst) >= 1
    });
    // The prune is stuck in its listing; the app writes and the agent ships regardless.
    write(&c, 2);
    write(&c, 3);
    let (rep, second) = pass(rep, limit).expect("shipping stalled behind a running prune");
    assert!(second.txns >= 2 && second.puts >= 1, "{second:?}");
    assert_eq!(
        replica.passed.load(Ordering::SeqCst),
        0,
        "the prune was still held"
    );
    assert_eq!(
        replica.waiting.load(Ordering::SeqCst),
        1,
        "one listing: one prune at a time"
    );
    // What was shipped meanwhile restores to the live database, page for page.
    let out = dir.path().join("restored.db");
    rt.block_on(restore(
        &LocalClient::new(&folder),
        &RestoreOptions::new(out.clone()),
    ))
    .unwrap();
    assert_eq!(pages(&out), pages(&db));
    // The prune finishes once the replica answers.
    replica.open();
    wait_for("the prune to finish its listing", || {
        replica.passed.load(Ordering::SeqCst) >= 1
    });
    drop(rep);
}

/// Regression: a conflict while uploading a scheduled snapshot was retried forever instead of
/// stopping replication to the replica, as it does on every other path.
#[test]
fn a_conflicting_scheduled_snapshot_halts_the_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let c = app(&db);
    let replica = Wrapped::new(&dir.path().join("replica"), true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opts = Options {
        snapshot_segments: 1,
        ..Options::default()
    };
    let status = Arc::new(Status::default());
    let clients: Vec<Arc<dyn ReplicaClient>> = vec![replica.clone()];
    let mut rep =
        Replicator::open(&db, clients, opts, rt.handle().clone(), status.clone()).unwrap();
    rep.resume().unwrap();
    write(&c, 1);
    for round in 2..5 {
        rep.sync();
        if rep.replicas()[0].halted().is_some() {
            break;
        }
        write(&c, round);
    }
    let why = rep.replicas()[0].halted().expect("halted by the conflict");
    assert!(why.contains("already exists"), "{why}");
    let st = status.snapshot();
    assert!(st.errors_by_kind.contains_key("conflict"), "{st:?}");
    assert!(st.replicas[0].halted.is_some());
    // A halted replica is not tried again.
    let report = rep.sync();
    assert!(!report.pending && report.puts == 0, "{report:?}");
}
