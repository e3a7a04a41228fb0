//! Replication to a real S3-compatible server (moto on 127.0.0.1, started by the test).

use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::ReplicaClient;
use lifeboat_storage_s3::testing::S3TestServer;

use crate::support::*;

struct S3 {
    rt: tokio::runtime::Runtime,
    server: S3TestServer,
}

impl S3 {
    fn start() -> S3 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt.block_on(S3TestServer::start());
        S3 { rt, server }
    }

    fn env(&self) -> Vec<(&'static str, &'static str)> {
        self.server.env()
    }

    fn objects(&self, prefix: &str, suffix: &str) -> Vec<String> {
        self.rt.block_on(async {
            let c = self.server.client(prefix).await;
            c.list("generations/")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .filter(|k| k.ends_with(suffix))
                .collect()
        })
    }
}

#[test]
fn continuous_mixed_writes_restore_page_for_page_at_each_page_size() {
    let s3 = S3::start();
    let env = s3.env();
    for ps in [1024u32, 4096, 65536] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let url = s3.server.url(&format!("ps{ps}"));
        create_schema(&app_conn(&db, ps));
        let agent = Agent::replicate_env(&db, &url, &dir.path().join("agent.log"), &env);
        let w = Writer::start(&db, ps, 0, 500);
        assert_eq!(w.finish(), 500);
        agent.stop_ok();
        restore_and_compare_env(&url, &dir.path().join("out.db"), &db, &env);
    }
}

#[test]
fn agent_killed_and_restarted_20_times_during_writes_loses_nothing() {
    let s3 = S3::start();
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = s3.server.url("kills");
    create_schema(&app_conn(&db, 4096));
    let w = Writer::start(&db, 4096, 0, u64::MAX);
    for i in 0..20 {
        let before = s3.objects("kills", "").len();
        let agent = Agent::replicate_env(&db, &url, &dir.path().join(format!("a{i}.log")), &env);
        let deadline = Instant::now() + Duration::from_secs(30);
        while s3.objects("kills", "").len() <= before {
            assert!(
                Instant::now() < deadline,
                "agent {i} uploaded nothing: {}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        agent.kill();
    }
    assert!(w.halt() > 0);
    Agent::replicate_env(&db, &url, &dir.path().join("final.log"), &env).stop_ok();
    restore_and_compare_env(&url, &dir.path().join("out.db"), &db, &env);
}

#[test]
fn server_down_during_writes_then_back_the_agent_catches_up() {
    let s3 = S3::start();
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = s3.server.url("outage");
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let mut agent = Agent::replicate_env(&db, &url, &dir.path().join("a.log"), &env);
    for s in 0..100 {
        mixed_txn(&c, s);
    }
    s3.server.pause();
    // The app keeps writing while the server is down: nothing blocks it.
    let started = Instant::now();
    for s in 100..600 {
        mixed_txn(&c, s);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "writes must not stall while the replica is down"
    );
    agent.wait_for_log("upload failed");
    s3.server.resume();
    for s in 600..700 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    restore_and_compare_env(&url, &dir.path().join("out.db"), &db, &env);
}

#[test]
fn corrupt_or_missing_objects_fail_restore_naming_them() {
    let s3 = S3::start();
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = s3.server.url("bad");
    let c = app_conn(&db, 4096);
    create_schema(&c);
    for round in 0..4u64 {
        let agent =
            Agent::replicate_env(&db, &url, &dir.path().join(format!("a{round}.log")), &env);
        for s in 0..30 {
            mixed_txn(&c, round * 100 + s);
        }
        agent.stop_ok();
    }
    let segs = s3.objects("bad", ".lbseg");
    assert!(segs.len() >= 3, "want several segments, got {segs:?}");
    let victim = segs[segs.len() / 2].clone();
    let client = s3.rt.block_on(s3.server.client("bad"));
    let original = s3.rt.block_on(client.get(&victim)).unwrap();
    let mut flipped = original.to_vec();
    let i = flipped.len() / 2;
    flipped[i] ^= 0x01;
    s3.rt.block_on(async {
        client.delete(&victim).await.unwrap();
        client.put(&victim, Bytes::from(flipped)).await.unwrap();
    });
    let out = dir.path().join("out.db");
    let o = run_env(&["restore", &url, "-o", out.to_str().unwrap()], &env);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&victim), "the error must name {victim}: {err}");
    assert!(!out.exists());

    // Deleted from the middle instead.
    s3.rt.block_on(client.delete(&victim)).unwrap();
    let next = &segs[segs.len() / 2 + 1];
    let o = run_env(&["restore", &url, "-o", out.to_str().unwrap()], &env);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing transactions") && err.contains(next.as_str()),
        "{err}"
    );
    assert!(!out.exists());

    // Put back, it restores again.
    s3.rt.block_on(client.put(&victim, original)).unwrap();
    restore_and_compare_env(&url, &out, &db, &env);
}

#[test]
fn second_agent_on_the_same_database_and_replica_is_refused() {
    let s3 = S3::start();
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = s3.server.url("two");
    create_schema(&app_conn(&db, 4096));
    let first = Agent::replicate_env(&db, &url, &dir.path().join("a.log"), &env);
    let w = Writer::start(&db, 4096, 0, 300);
    let mut second = Agent::start_env(
        &["replicate", db.to_str().unwrap(), &url],
        &dir.path().join("b.log"),
        &env,
    );
    assert!(!second.wait(Duration::from_secs(30)).success());
    assert!(second.log_text().contains("already replicating"));
    w.finish();
    first.stop_ok();
    restore_and_compare_env(&url, &dir.path().join("out.db"), &db, &env);
}

#[test]
fn listings_of_more_than_1000_keys_are_read_to_the_end() {
    // S3 answers a listing 1,000 keys at a time. 1,100 other objects that sort before the
    // replica's own put its generation on the second page: a catalog that read only the first
    // would find no backup at all.
    let s3 = S3::start();
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = s3.server.url("many");
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let client = std::sync::Arc::new(s3.rt.block_on(s3.server.client("many")));
    s3.rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..32 {
            let client = client.clone();
            tasks.spawn(async move {
                for i in (lane..1100).step_by(32) {
                    let key = format!("generations/0000000000000000/junk-{i:05}");
                    client
                        .put(&key, Bytes::from_static(b"not lifeboat's"))
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
    let agent = Agent::replicate_env(&db, &url, &dir.path().join("a.log"), &env);
    for s in 0..20 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    restore_and_compare_env(&url, &dir.path().join("out.db"), &db, &env);
    // `verify` saw every page too: all 1,100 foreign objects are reported.
    let o = run_env(&["verify", &url, "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let foreign = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["problems"].as_array().unwrap())
        .filter(|p| p.as_str().unwrap().contains("junk-"))
        .count();
    assert_eq!(foreign, 1100, "{v:#}");
}

#[test]
fn a_mistyped_prefix_in_a_bucket_with_replicas_is_a_loud_warning() {
    let s3 = S3::start();
    let env = s3.env();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create_schema(&app_conn(&db, 4096));
    let url = s3.server.url("team/app");
    let agent = Agent::replicate_env(&db, &url, &dir.path().join("agent.log"), &env);
    agent.stop_ok();
    for typo in [s3.server.url("team/ap"), s3.server.url("team")] {
        let o = run_env(&["generations", &typo], &env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("WARNING") && err.contains("/team/app"),
            "{typo}: {err}"
        );
        assert!(!err.contains("endpoint="), "no query in messages: {err}");
    }
    let o = run_env(&["generations", &url], &env);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("WARNING"));
}
