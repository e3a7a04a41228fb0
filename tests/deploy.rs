//! Zero-downtime deploys as Render does them, with the Node example (`examples/node-backend`,
//! better-sqlite3) under `lifeboat run`, replicating to a real S3-compatible server: the new
//! instance starts while a client writes to the old one through its HTTP API, the new one
//! becomes ready, traffic moves to it, the old one gets SIGTERM. Ten times; after each deploy
//! every acknowledged write is in the new instance's database.
//!
//! Needs `node` (skipped, loudly, without it) and the example's `node_modules`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_storage_s3::testing::S3TestServer;
use serde_json::json;

use crate::node::{example_dir, get, node_available, post, App};

/// How many deploys the test makes (the number).
const DEPLOYS: usize = 10;

/// What the client saw.
#[derive(Default)]
struct Seen {
    /// Emails of the employees whose creation was acknowledged (201).
    acked: BTreeSet<String>,
    /// Requests that failed (the old instance's frozen writes, a connection refused).
    failed: u64,
    /// The longest wait of an acknowledged write, and of any write.
    longest_acked: Duration,
    longest_any: Duration,
}

/// Writes employees one after another to whichever port `port` holds, until `stop`.
fn client(port: Arc<AtomicU16>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let email = format!("w{n}@example.com");
        let body = json!({ "name": format!("writer {n}"), "email": email });
        let t0 = Instant::now();
        let res = post(port.load(Ordering::SeqCst), "/employees", &body);
        let took = t0.elapsed();
        let mut s = seen.lock().unwrap();
        s.longest_any = s.longest_any.max(took);
        match res {
            Ok((201, _)) => {
                s.acked.insert(email);
                s.longest_acked = s.longest_acked.max(took);
            }
            _ => s.failed += 1,
        }
        drop(s);
        // Pacing, not synchronisation: a client writing one request after another.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The employees' emails the app at `port` serves.
fn emails(port: u16) -> BTreeSet<String> {
    let (status, v) = get(port, "/employees");
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["email"].as_str().unwrap().to_string())
        .collect::<BTreeSet<_>>()
}

#[test]
fn ten_render_style_deploys_of_the_node_app_lose_no_acknowledged_write() {
    if !node_available() {
        eprintln!(
            "\n**** SKIPPED deploy::ten_render_style_deploys: `node` is not installed ****\n"
        );
        return;
    }
    assert!(
        example_dir()
            .join("node_modules/better-sqlite3/package.json")
            .exists(),
        "examples/node-backend/node_modules is missing: run `npm ci --prefix examples/node-backend` \
         (scripts/test.sh does)"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = rt.block_on(S3TestServer::start());
    let url = s3.url("deploys");
    let tmp = tempfile::tempdir().unwrap();
    let start = |i: usize| {
        // Each instance has a disk of its own, empty at boot (Render's ephemeral disk).
        let data = tmp.path().join(format!("data{i}"));
        let db = data.join("app.db").to_str().unwrap().to_string();
        let uploads = data.join("uploads").to_str().unwrap().to_string();
        // lifeboat's health address, which the app also reads: POST /expenses is acknowledged
        // only once lifeboat's POST /sync says the expense is in the replica.
        let health = format!("127.0.0.1:{}", crate::support::free_port());
        let mut env = s3.env();
        env.extend([
            ("DATABASE_PATH", db.as_str()),
            ("UPLOADS_DIR", uploads.as_str()),
            ("PORT", "0"),
            ("HOST", "127.0.0.1"),
            ("LIFEBOAT_HEALTH_ADDR", health.as_str()),
        ]);
        let flags = ["--db", &db, "--replica", &url, "--lease-ttl", "10s"];
        App::start(tmp.path(), &format!("i{i}"), &flags, &env)
    };

    let mut old = start(0);
    let port = Arc::new(AtomicU16::new(old.port));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writer = {
        let (port, stop, seen) = (port.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || client(port, stop, seen))
    };
    let mut handoffs = Vec::new();
    for i in 1..=DEPLOYS {
        let before = seen.lock().unwrap().acked.len();
        crate::support::wait_until(
            &format!("deploy {i}: writes acknowledged by the old instance"),
            Duration::from_secs(60),
            || seen.lock().unwrap().acked.len() >= before + 20,
        );
        let t0 = Instant::now();
        // The new instance boots while the old one serves and writes.
        let new = start(i);
        let ready = t0.elapsed();
        // Traffic moves to it; then the old one gets SIGTERM.
        port.store(new.port, Ordering::SeqCst);
        // The log as it stands once the old instance has exited: its line about the handoff
        // follows the lease's release, which the new instance may act on first.
        let log_path = old.log_path();
        let status = old.stop();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            log.contains("handed the writer lease over"),
            "deploy {i}: the old instance did not hand over; its log:\n{log}"
        );
        assert_eq!(
            status.code(),
            Some(0),
            "deploy {i}: the old instance's exit"
        );
        // Every write acknowledged so far (by the old instance, and the new one's since the
        // switch) is in the new instance's database.
        let acked = seen.lock().unwrap().acked.clone();
        let have = emails(new.port);
        let lost: Vec<_> = acked.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "deploy {i}: {} acknowledged writes lost, the first {:?}; new log:\n{}",
            lost.len(),
            &lost[..lost.len().min(5)],
            new.log_text()
        );
        handoffs.push(ready);
        old = new;
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    // A durable write (the example's POST /expenses waits for lifeboat's /sync), then the
    // whole host dies at once: that expense is in the replica.
    let body = json!({"employee_id": 1, "amount_cents": 4200, "description": "durable"});
    let (status, row) = post(old.port, "/expenses", &body).unwrap();
    assert_eq!(status, 201, "{row}");
    let durable_id = row["id"].as_i64().unwrap();
    old.hard_kill();
    let s = seen.lock().unwrap();
    // The replica's newest state, restored, holds every acknowledged write.
    let out = tmp.path().join("final.db");
    let env = s3.env();
    let o = std::process::Command::new(crate::support::bin())
        .args(["restore", &url, "-o", out.to_str().unwrap()])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = rusqlite::Connection::open(&out).unwrap();
    let restored: BTreeSet<String> = c
        .prepare("SELECT email FROM employees")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert!(
        s.acked.is_subset(&restored),
        "the final restore lacks acknowledged writes"
    );
    let durable: i64 = c
        .query_row(
            "SELECT count(*) FROM expenses WHERE id = ?1 AND description = 'durable'",
            [durable_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        durable, 1,
        "the expense acknowledged after /sync, then kill -9, is restored"
    );
    let slowest = handoffs.iter().max().unwrap();
    eprintln!(
        "{DEPLOYS} deploys: {} writes acknowledged, 0 lost; {} failed (refused while frozen or \
         switching); longest acknowledged write {:?}, longest write attempt {:?}; new instance \
         ready after at most {slowest:?}",
        s.acked.len(),
        s.failed,
        s.longest_acked,
        s.longest_any,
    );
}
