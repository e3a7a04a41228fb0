//! The status endpoint: `/health` and `/metrics` follow a replica that fails and recovers.

use std::time::Duration;

use crate::support::*;

/// The value of the first sample of `name` in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in:\n{text}"))
}

/// Like [`metric`], for a counter by kind: it has no sample until it is first incremented, so
/// no sample means zero.
fn count(text: &str, name: &str) -> f64 {
    if text.lines().any(|l| l.starts_with(&format!("{name}{{"))) {
        metric(text, name)
    } else {
        0.0
    }
}

#[test]
fn health_and_lag_metrics_follow_a_failing_then_recovering_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::start(
        &[
            "replicate",
            db.to_str().unwrap(),
            &url,
            "--metrics-addr",
            &addr,
        ],
        &dir.path().join("a.log"),
    );
    let scrape = || {
        http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    };
    wait_until("a healthy first sync", Duration::from_secs(30), || {
        http_get(port, "/health").is_some_and(|(code, body)| code == 200 && body.contains("\"ok\""))
    });
    for s in 0..5 {
        mixed_txn(&c, s);
    }
    wait_until("the replica to catch up", Duration::from_secs(30), || {
        let m = scrape();
        m.contains("lifeboat_replication_lag_transactions{")
            && metric(&m, "lifeboat_replication_lag_transactions") == 0.0
            && metric(&m, "lifeboat_transactions_shipped_total") >= 5.0
    });
    // Requests are counted by kind: the snapshot and segments were PUTs.
    let m = scrape();
    let puts: f64 = m
        .lines()
        .find(|l| l.starts_with("lifeboat_replica_requests_total{") && l.contains("kind=\"put\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no put count in:\n{m}"));
    assert!(puts >= 2.0, "{m}");

    // The replica becomes unwritable (its folder replaced by a file): commits pile up.
    let moved = dir.path().join("replica.moved");
    std::fs::rename(&replica, &moved).unwrap();
    std::fs::write(&replica, b"not a folder").unwrap();
    for s in 5..15 {
        mixed_txn(&c, s);
    }
    wait_until(
        "lag to show and health to fail",
        Duration::from_secs(60),
        || {
            let m = scrape();
            metric(&m, "lifeboat_replication_lag_transactions") >= 10.0
                && metric(&m, "lifeboat_replication_lag_seconds") > 0.0
                && count(&m, "lifeboat_errors_total") > 0.0
                && http_get(port, "/health")
                    .is_some_and(|(code, body)| code == 503 && body.contains("\"failing\""))
        },
    );

    // Back: the agent catches up, the lag returns to zero and health to 200.
    std::fs::remove_file(&replica).unwrap();
    std::fs::rename(&moved, &replica).unwrap();
    wait_until("recovery", Duration::from_secs(90), || {
        let m = scrape();
        metric(&m, "lifeboat_replication_lag_transactions") == 0.0
            && metric(&m, "lifeboat_replication_lag_seconds") == 0.0
            && http_get(port, "/health").is_some_and(|(code, _)| code == 200)
    });
    agent.stop_ok();
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

#[test]
fn a_conflicting_object_halts_the_replica_and_health_turns_503() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(
        &[
            "replicate",
            db.to_str().unwrap(),
            &url,
            "--metrics-addr",
            &addr,
        ],
        &dir.path().join("a.log"),
    );
    // A commit before the first snapshot is taken lands in the snapshot, not in a segment.
    agent.wait_for_log("snapshot uploaded");
    mixed_txn(&c, 0);
    agent.wait_until("txid 1 to ship", Duration::from_secs(30), || {
        files_with_suffix(&replica, ".lbseg").len() == 1
    });
    wait_until("a healthy replica", Duration::from_secs(30), || {
        http_get(port, "/health").is_some_and(|(code, _)| code == 200)
    });
    // Another writer got there first: an object of other bytes at every key the next segment
    // (txid 2 alone) can take if the agent sees it committed within 5 s of a moment `at` a
    // little ahead (far enough ahead to create them all before it; more if that was too short).
    let gens: Vec<_> = std::fs::read_dir(replica.join("generations"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(gens.len(), 1);
    let segments = gens[0].join("segments");
    let now_ms = crate::support::oracle::now_ms;
    let mut lead = 2_000;
    let at = loop {
        let at = now_ms() + lead;
        for t in at..at + 5_000 {
            std::fs::write(
                segments.join(format!("{:016x}-{:016x}-{t:016x}.lbseg", 2, 2)),
                b"another writer's segment",
            )
            .unwrap();
        }
        if now_ms() < at {
            break at;
        }
        lead *= 2;
        assert!(lead < 60_000, "cannot create 5,000 files in a minute");
    };
    while now_ms() < at {
        std::thread::sleep(Duration::from_millis(1));
    }
    mixed_txn(&c, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/health")
        .is_some_and(|(code, body)| code == 503 && body.contains("already exists"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "health did not turn 503 (objects for times {at:x} + 5 s); log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.wait_for_log("replication to this replica stopped");
    assert!(
        agent
            .log_text()
            .contains("already exists with different content"),
        "{}",
        agent.log_text()
    );
    // Halted for good: later commits are not shipped, and the agent itself goes on running.
    for s in 2..5 {
        mixed_txn(&c, s);
    }
    std::thread::sleep(Duration::from_secs(2)); // an observation window: nothing must ship
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "{}",
        agent.log_text()
    );
    let shipped: Vec<_> = files_with_suffix(&replica, ".lbseg")
        .into_iter()
        .filter(|p| std::fs::read(p).unwrap() != b"another writer's segment")
        .collect();
    assert_eq!(shipped.len(), 1, "nothing after the conflict: {shipped:?}");
    assert_eq!(
        http_get(port, "/health").map(|(code, _)| code),
        Some(503),
        "still unhealthy"
    );
    agent.kill();
}
