//! Retention over simulated time: `prune --now` evaluates the window at a chosen instant, so no
//! test waits for days to pass.

use crate::support::*;

/// `(generation, last txid, time of its newest restore point)` per generation, oldest first.
fn generations(url: &str) -> Vec<(String, String, String)> {
    let o = run(&["generations", url, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["generation"].as_str().unwrap().to_string(),
                g["last_txid"].as_str().unwrap().to_string(),
                g["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn prune_keeps_every_restore_point_in_the_window_and_drops_generations_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    // Three generations: between runs the app writes and truncates its WAL while the agent is
    // stopped, so each start proves no continuity and takes a new snapshot.
    let mut seq = 0;
    for round in 0..3 {
        let agent = Agent::replicate(&db, &url, &dir.path().join(format!("{round}.log")));
        for _ in 0..20 {
            mixed_txn(&c, seq);
            seq += 1;
        }
        agent.stop_ok();
        mixed_txn(&c, seq);
        seq += 1;
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let before = generations(&url);
    assert_eq!(before.len(), 3, "{before:?}");

    // Evaluate a 1-hour window one hour after the second generation's newest restore point: the
    // first generation lies wholly outside it, the second straddles its start.
    let t = humantime::parse_rfc3339(&before[1].2).unwrap() + std::time::Duration::from_secs(3600);
    let now = humantime::format_rfc3339_millis(t).to_string();
    let dry = run(&[
        "prune",
        &url,
        "--retention",
        "1h",
        "--now",
        &now,
        "--dry-run",
        "--json",
    ]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(plan["generations"], serde_json::json!([before[0].0]));
    assert_eq!(generations(&url).len(), 3, "a dry run deletes nothing");

    let o = run(&["prune", &url, "--retention", "1h", "--now", &now]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = generations(&url);
    assert_eq!(
        after.iter().map(|g| &g.0).collect::<Vec<_>>(),
        vec![&before[1].0, &before[2].0]
    );

    // Every restore point of the kept generations still restores and verifies.
    for (g, last, _) in &after {
        let last = u64::from_str_radix(last, 16).unwrap();
        for txid in [0, 1, last / 2, last] {
            let out = dir.path().join(format!("{g}-{txid}.db"));
            let o = run(&[
                "restore",
                &url,
                "-o",
                out.to_str().unwrap(),
                "--generation",
                g,
                "--txid",
                &format!("{txid:016x}"),
            ]);
            assert!(
                o.status.success(),
                "{g} {txid}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let o = run(&["verify", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // And the newest state is exactly the source.
    drop(c);
    let agent = Agent::replicate(&db, &url, &dir.path().join("last.log"));
    agent.stop_ok();
    restore_and_compare(&url, &dir.path().join("out.db"), &db);

    // However old the history, the newest restorable generation is never pruned.
    let far = humantime::format_rfc3339_millis(t + std::time::Duration::from_secs(86400 * 365));
    let o = run(&[
        "prune",
        &url,
        "--retention",
        "1h",
        "--now",
        &far.to_string(),
    ]);
    assert!(o.status.success());
    assert!(!generations(&url).is_empty());
    restore_and_compare(&url, &dir.path().join("out2.db"), &db);
}
