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
                && metric(&m, "lifeboat_errors_total") > 0.0
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
