//! Retention over simulated time: `prune --now` evaluates the window at a chosen instant, so no
//! test waits for days to pass.

use crate::support::oracle::{conn_digest, file_digest, Digest};
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

/// `rounds` generations of `per_round` transactions each: between runs the app writes and
/// truncates its WAL while the agent is stopped, so each start proves no continuity and takes a
/// new snapshot. `start` starts the agent for a round. Returns, per round, the writer's own
/// record of the pages after each of its generation's transactions (index = txid).
fn generations_by_truncation(
    c: &rusqlite::Connection,
    rounds: u64,
    per_round: u64,
    mut start: impl FnMut(u64) -> Agent,
) -> Vec<Vec<Digest>> {
    let mut seq = 0;
    let mut states = Vec::new();
    for round in 0..rounds {
        let mut agent = start(round);
        // A commit made before the new generation's snapshot lands in it (txid 0), which would
        // shift the writer's record against the generation's txids (`start` may start the
        // agent from a configuration file, so this waits here too).
        agent.wait_until_known();
        let mut after = vec![conn_digest(c)];
        for _ in 0..per_round {
            mixed_txn(c, seq);
            seq += 1;
            after.push(conn_digest(c));
        }
        states.push(after);
        agent.stop_ok();
        mixed_txn(c, seq);
        seq += 1;
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    states
}

#[test]
fn prune_keeps_every_restore_point_in_the_window_and_drops_generations_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let states = generations_by_truncation(&c, 3, 20, |round| {
        Agent::replicate(&db, &url, &dir.path().join(format!("{round}.log")))
    });
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

    // Every restore point of the kept generations still restores, to exactly the pages the
    // writer had after that transaction, and verifies.
    for (g, last, _) in &after {
        let round = before.iter().position(|b| &b.0 == g).unwrap();
        let last = u64::from_str_radix(last, 16).unwrap();
        assert_eq!(last, 20, "{g}: 20 transactions were written in its round");
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
            assert_eq!(
                file_digest(&out),
                states[round][txid as usize],
                "{g} txid {txid}: not the writer's state after that transaction"
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

/// A damaged folder manifest keeps the folders' history whole, but the database's retention
/// goes on: the generation outside the window is deleted and the damaged object stays.
#[test]
fn a_damaged_folder_manifest_does_not_stop_the_databases_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let root = dir.path().join("replica");
    let url = format!("file://{}", root.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    generations_by_truncation(&c, 2, 5, |round| {
        Agent::replicate(&db, &url, &dir.path().join(format!("{round}.log")))
    });
    let before = generations(&url);
    assert_eq!(before.len(), 2, "{before:?}");
    let manifests = root.join("files/uploads/manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let damaged = manifests.join(format!(
        "{}-0000000000000001-0000000000000000.lbman",
        before[1].0
    ));
    std::fs::write(&damaged, b"not a manifest").unwrap();

    let t = humantime::parse_rfc3339(&before[1].2).unwrap() + std::time::Duration::from_secs(3600);
    let now = humantime::format_rfc3339_millis(t).to_string();
    let o = run(&["prune", &url, "--retention", "1h", "--now", &now]);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{log}");
    assert!(log.contains("folders' history cannot be read"), "{log}");
    let after = generations(&url);
    assert_eq!(
        after.iter().map(|g| &g.0).collect::<Vec<_>>(),
        vec![&before[1].0],
        "{log}"
    );
    assert!(damaged.exists(), "the damaged manifest was deleted");
}

/// The number in "N objects" of a restore's closing line.
fn objects_read(stdout: &str) -> usize {
    let at = stdout.find(" objects, ").expect("a restore summary");
    let digits: String = stdout[..at]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

#[test]
fn snapshots_within_a_generation_bound_what_restoring_the_newest_state_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let cfg = dir.path().join("lifeboat.toml");
    // Many small segments (a generous PUT budget), and a snapshot after every 40 of them.
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [\"{url}\"]\nputs-per-second = 2000.0\nput-burst = 50.0\nsnapshot-segments = 40\n",
            db.display()
        ),
    )
    .unwrap();
    let c = app_conn(&db, 4096);
    c.execute_batch("CREATE TABLE t(n INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    let mut agent = Agent::start(
        &["replicate", "--config", cfg.to_str().unwrap()],
        &dir.path().join("a.log"),
    );
    // Commits before the first snapshot would land in it and never ship as segments.
    agent.wait_until_known();
    // Bursts of 50 transactions, each shipped before the next starts, so history spreads over
    // many objects. (The newest shipped txid is in the segment keys.)
    let shipped = || newest_shipped_txid(&replica);
    for burst in 0..200u64 {
        for n in burst * 50..(burst + 1) * 50 {
            c.execute("INSERT INTO t VALUES (?1, 'x')", [n]).unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while shipped() < (burst + 1) * 50 {
            assert!(
                std::time::Instant::now() < deadline,
                "burst {burst} not shipped within 30 s; agent log:\n{}",
                agent.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    agent.wait_for_log("scheduled snapshot uploaded");
    agent.stop_ok();
    let segments = segments_stored(&replica);
    let snapshots = files_with_suffix(&replica, ".lbsnap").len();
    assert_eq!(
        std::fs::read_dir(replica.join("generations"))
            .unwrap()
            .count(),
        1,
        "one generation"
    );
    assert!(segments >= 150, "history spread over {segments} segments");
    assert!(snapshots >= 2, "{snapshots} snapshots");

    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = objects_read(&String::from_utf8_lossy(&o.stdout));
    eprintln!(
        "history: {segments} segments, {snapshots} snapshots; newest state read {read} objects"
    );
    assert!(
        read <= 1 + 40 + 1,
        "restoring the newest state read {read} objects of {segments} segments and {snapshots} snapshots"
    );
    assert_same_pages(&file_pages(&out), &pages(&db));
    // Older restore points still restore exactly, from the older snapshots.
    for txid in [1u64, 700, 2500] {
        let o = run(&[
            "restore",
            &url,
            "-o",
            dir.path().join(format!("t{txid}.db")).to_str().unwrap(),
            "--txid",
            &format!("{txid:016x}"),
        ]);
        assert!(
            o.status.success(),
            "{txid}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let n: i64 = rusqlite::Connection::open(dir.path().join(format!("t{txid}.db")))
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as u64, txid, "txid {txid} holds exactly its rows");
    }
    let o = run(&["verify", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // Retention inside the generation: with the window starting just after the third snapshot,
    // it becomes the base; what precedes it goes, every later restore point stays.
    let o = run(&["snapshots", &url, "--json"]);
    let snaps: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let snaps = snaps.as_array().unwrap();
    let base = &snaps[2];
    let base_txid = u64::from_str_radix(base["last_txid"].as_str().unwrap(), 16).unwrap();
    let t = humantime::parse_rfc3339(base["time"].as_str().unwrap()).unwrap()
        + std::time::Duration::from_secs(3600);
    let now = humantime::format_rfc3339_millis(t).to_string();
    let o = run(&["prune", &url, "--retention", "1h", "--now", &now]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left = files_with_suffix(&replica, ".lbsnap").len();
    assert_eq!(
        left,
        snapshots - 2,
        "the two snapshots before the base are gone"
    );
    for txid in [base_txid, base_txid + 1, (base_txid + 10_000) / 2, 10_000] {
        let out = dir.path().join(format!("p{txid}.db"));
        let o = run(&[
            "restore",
            &url,
            "-o",
            out.to_str().unwrap(),
            "--txid",
            &format!("{txid:016x}"),
        ]);
        assert!(
            o.status.success(),
            "{txid}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let n: i64 = rusqlite::Connection::open(&out)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as u64, txid);
    }
    // A point older than the window is gone, and restore says so rather than guessing.
    let o = run(&[
        "restore",
        &url,
        "-o",
        dir.path().join("old.db").to_str().unwrap(),
        "--txid",
        &format!("{:016x}", base_txid - 1),
    ]);
    assert!(!o.status.success());
    let o = run(&["verify", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = run(&[
        "restore",
        &url,
        "-o",
        dir.path().join("after.db").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_pages(&file_pages(&dir.path().join("after.db")), &pages(&db));
}

#[test]
fn the_agent_applies_each_replicas_own_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let (short, long) = (dir.path().join("short"), dir.path().join("long"));
    let (short_url, long_url) = (
        format!("file://{}", short.display()),
        format!("file://{}", long.display()),
    );
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [{{ url = \"{short_url}\", retention = \"1ms\" }}, \"{long_url}\"]\n",
            db.display()
        ),
    )
    .unwrap();
    let c = app_conn(&db, 4096);
    create_schema(&c);
    generations_by_truncation(&c, 2, 10, |round| {
        let mut agent = Agent::start(
            &["replicate", "--config", cfg.to_str().unwrap()],
            &dir.path().join(format!("{round}.log")),
        );
        agent.wait_for_log("replicating");
        agent
    });
    // A third start makes a third generation on both; the agent then prunes the short-retention
    // replica down to its newest generation, and leaves the other alone.
    let mut agent = Agent::start(
        &["replicate", "--config", cfg.to_str().unwrap()],
        &dir.path().join("last.log"),
    );
    agent.wait_for_log("retention: pruned");
    agent.stop_ok();
    assert_eq!(generations(&short_url).len(), 1);
    assert_eq!(generations(&long_url).len(), 3);
    restore_and_compare(&short_url, &dir.path().join("s.db"), &db);
    restore_and_compare(&long_url, &dir.path().join("l.db"), &db);
}

#[test]
fn a_prune_interrupted_after_any_deletion_cuts_no_chain_and_verify_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let states = generations_by_truncation(&c, 3, 8, |round| {
        Agent::replicate(&db, &url, &dir.path().join(format!("{round}.log")))
    });
    let gens = generations(&url);
    assert_eq!(gens.len(), 3, "{gens:?}");
    // A window that starts after the second generation's last restore point: the two older
    // generations go whole, the newest stays.
    let t = humantime::parse_rfc3339(&gens[1].2).unwrap() + std::time::Duration::from_secs(3601);
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
    assert_eq!(
        plan["generations"],
        serde_json::json!([gens[0].0, gens[1].0])
    );
    let keys = |field: &str| -> Vec<String> {
        plan[field]
            .as_array()
            .map(|a| a.iter().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let (markers, objects) = (keys("markers"), keys("objects"));
    assert_eq!(
        objects.len(),
        files_with_suffix(&replica.join("generations").join(&gens[0].0), "").len()
            + files_with_suffix(&replica.join("generations").join(&gens[1].0), "").len()
    );

    // Replay the prune one step at a time, exactly as documented (markers written first, then
    // the objects deleted in the plan's order): after every step, as if the prune were killed
    // there, `verify` passes and the kept generation restores, every point of it to the
    // writer's own state.
    let check = |step: &str| {
        let v = run(&["verify", &url]);
        assert!(
            v.status.success(),
            "after {step}: verify fails:\n{}",
            String::from_utf8_lossy(&v.stdout)
        );
        for txid in [0u64, 4, 8] {
            let out = dir.path().join("step.db");
            let o = run(&[
                "restore",
                &url,
                "-o",
                out.to_str().unwrap(),
                "--generation",
                &gens[2].0,
                "--txid",
                &format!("{txid:016x}"),
                "--force",
            ]);
            assert!(
                o.status.success(),
                "after {step}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(
                file_digest(&out),
                states[2][txid as usize],
                "after {step}: txid {txid}"
            );
        }
        let out = dir.path().join("newest.db");
        let o = run(&["restore", &url, "-o", out.to_str().unwrap(), "--force"]);
        assert!(
            o.status.success(),
            "after {step}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            file_digest(&out),
            states[2][8],
            "after {step}: the newest state"
        );
    };
    for m in &markers {
        let path = replica.join(m);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"").unwrap();
        check(&format!("writing {m}"));
    }
    for (i, key) in objects.iter().enumerate() {
        std::fs::remove_file(replica.join(key)).unwrap();
        check(&format!("deleting object {i} ({key})"));
    }
    // The real prune finishes what the interrupted one began.
    let o = run(&["prune", &url, "--retention", "1h", "--now", &now]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        generations(&url).iter().map(|g| &g.0).collect::<Vec<_>>(),
        vec![&gens[2].0]
    );
    assert!(files_with_suffix(&replica.join("generations"), "")
        .iter()
        .all(|p| p.starts_with(replica.join("generations").join(&gens[2].0))));
    check("the prune finished");
}
