//! `lifeboat drill`: restore, check, time, compare with the live database, store the report.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::support::oracle::now_ms;
use crate::support::*;

struct Replicated {
    db: PathBuf,
    replica: PathBuf,
    url: String,
    /// The app's connection, still open (so its WAL stays as it is).
    conn: Connection,
    /// Unix ms just before the last transaction was committed, and just after its agent stopped
    /// (by then it was shipped): the newest restore point's time lies between the two.
    last_commit_ms: (u64, u64),
}

/// A replica with several segments: the agent is stopped and started between bursts of writes.
fn replicated(dir: &Path) -> Replicated {
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let url = format!("file://{}", replica.display());
    let conn = app_conn(&db, 4096);
    create_schema(&conn);
    let mut last_commit_ms = (0, 0);
    for round in 0..3u64 {
        let mut agent = Agent::replicate(&db, &url, &dir.join(format!("a{round}.log")));
        if round == 0 {
            // The first generation's snapshot is the state before the writes, so every one of
            // the 30 transactions is a segment's (not folded into the snapshot).
            agent.wait_for_log("snapshot uploaded");
        }
        for s in 0..10 {
            last_commit_ms.0 = now_ms();
            mixed_txn(&conn, round * 100 + s + 1);
        }
        agent.stop_ok();
        last_commit_ms.1 = now_ms();
    }
    Replicated {
        db,
        replica,
        url,
        conn,
        last_commit_ms,
    }
}

/// Runs `lifeboat drill URL --json ARGS...`: exit code and the parsed report.
fn drill(url: &str, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["drill", url, "--json"];
    all.extend_from_slice(args);
    let o = run(&all);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "drill must print a JSON report ({e}); stdout: {} stderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

fn problems(v: &serde_json::Value) -> String {
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn stored_reports(replica: &Path) -> Vec<serde_json::Value> {
    files_with_suffix(&replica.join("drills"), ".json")
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn relative_key(replica: &Path, p: &Path) -> String {
    p.strip_prefix(replica)
        .unwrap()
        .to_string_lossy()
        .to_string()
}

#[test]
fn a_healthy_replica_passes_the_drill_and_the_report_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicated(dir.path());
    // The newest restore point is at least 1.5 s old when the drill runs: its RPO must say so.
    while now_ms() < r.last_commit_ms.1 + 1500 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let started = now_ms();
    let (code, v) = drill(&r.url, &[]);
    let ended = now_ms();
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["ok"], true, "{v:#}");
    let rto = v["rto_seconds"].as_f64().unwrap();
    assert!(
        rto > 0.0 && rto <= (ended - started) as f64 / 1000.0,
        "the RTO is part of the drill's own time: {v:#}"
    );
    // Without the live database nothing says what is at risk: no RPO, only the newest
    // restorable transaction's age. That is at least the time from the agent's stop to the
    // drill's start, at most from the last commit to the drill's end.
    assert_eq!(v["rpo_seconds"], serde_json::Value::Null, "{v:#}");
    let age = v["newest_restorable_age_seconds"].as_f64().unwrap();
    let (commit, stopped) = r.last_commit_ms;
    let (low, high) = (
        started.saturating_sub(stopped) as f64 / 1000.0,
        (ended - commit) as f64 / 1000.0,
    );
    assert!(
        low - 0.001 <= age && age <= high + 0.001,
        "newest restorable age {age} s outside [{low}, {high}]: {v:#}"
    );
    assert_eq!(v["integrity_check"], "ok");
    assert_eq!(v["foreign_key_check"], "ok");
    assert_eq!(v["checksum"]["ok"], true);
    assert_eq!(v["checksum"]["recorded"], v["checksum"]["computed"]);
    assert_eq!(
        v["txid"], "000000000000001e",
        "30 transactions were replicated"
    );
    assert!(problems(&v).is_empty());

    // The report is in the replica, under drills/, and the replica's own tools ignore it.
    let key = v["report_key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("drills/") && key.ends_with(".json"),
        "{key}"
    );
    let stored = stored_reports(&r.replica);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["ok"], true);
    assert_eq!(stored[0]["report_key"], key.as_str());
    assert!(r.replica.join(&key).exists());
    let o = run(&["verify", &r.url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let out = dir.path().join("out.db");
    restore_and_compare(&r.url, &out, &r.db);

    // --no-store writes nothing; the human summary says OK.
    let o = run(&["drill", &r.url, "--no-store"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("OK") && text.contains("RTO"), "{text}");
    assert_eq!(stored_reports(&r.replica).len(), 1);
}

#[test]
fn a_flipped_byte_in_a_segment_fails_the_drill_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicated(dir.path());
    let segs = files_with_suffix(&r.replica, ".lbseg");
    assert!(segs.len() >= 3, "want several segments, got {}", segs.len());
    let victim = &segs[segs.len() / 2];
    let mut data = std::fs::read(victim).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0x01;
    std::fs::write(victim, &data).unwrap();
    let (code, v) = drill(&r.url, &[]);
    assert_eq!(code, Some(2), "{v:#}");
    assert_eq!(v["ok"], false);
    let key = relative_key(&r.replica, victim);
    assert!(problems(&v).contains(&key), "must name {key}: {v:#}");
    // A failing drill is stored too.
    let stored = stored_reports(&r.replica);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["ok"], false);
    assert!(problems(&stored[0]).contains(&key));
}

#[test]
fn a_segment_missing_from_the_middle_fails_the_drill() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicated(dir.path());
    let segs = files_with_suffix(&r.replica, ".lbseg");
    assert!(segs.len() >= 3);
    let victim = &segs[segs.len() / 2];
    let next = relative_key(&r.replica, &segs[segs.len() / 2 + 1]);
    std::fs::remove_file(victim).unwrap();
    let (code, v) = drill(&r.url, &["--no-store"]);
    assert_eq!(code, Some(2), "{v:#}");
    let p = problems(&v);
    assert!(
        p.contains("missing transactions") && p.contains(&next),
        "{v:#}"
    );
    assert!(stored_reports(&r.replica).is_empty(), "--no-store");
}

#[test]
fn the_live_database_is_current_lagging_stale_or_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicated(dir.path());

    // After the agent's final sync the live database is the replica's newest state.
    let db = r.db.to_str().unwrap();
    let (code, v) = drill(&r.url, &["--db", db, "--no-store"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["live"]["verdict"], "current", "{v:#}");
    assert_eq!(v["live"]["unshipped_commits"], 0);
    assert_eq!(v["live"]["differing_pages"], 0);
    assert_eq!(v["live"]["ok"], true);
    // Nothing at risk: RPO 0, however long ago the last write was.
    assert_eq!(v["at_risk_commits"], 0, "{v:#}");
    assert_eq!(v["rpo_seconds"], 0.0, "{v:#}");

    // A copy restored at an older transaction: the replica is ahead of it.
    let stale = dir.path().join("stale.db");
    let o = run(&[
        "restore",
        &r.url,
        "-o",
        stale.to_str().unwrap(),
        "--txid",
        "000000000000000a",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, v) = drill(&r.url, &["--db", stale.to_str().unwrap(), "--no-store"]);
    assert_eq!(code, Some(2), "{v:#}");
    assert_eq!(v["live"]["verdict"], "replica_ahead", "{v:#}");
    assert_eq!(v["live"]["matches_txid"], "000000000000000a");
    assert!(problems(&v).contains("the replica is ahead"), "{v:#}");

    // That copy, written to: a different history from txid 10 on. It diverged.
    let sc = app_conn(&stale, 4096);
    for s in 0..5 {
        mixed_txn(&sc, 5000 + s);
    }
    let (code, v) = drill(&r.url, &["--db", stale.to_str().unwrap(), "--no-store"]);
    assert_eq!(code, Some(2), "{v:#}");
    assert_eq!(v["live"]["verdict"], "diverged", "{v:#}");
    assert!(v["live"]["differing_pages"].as_u64().unwrap() > 0);
    assert!(problems(&v).contains("diverged from the replica"), "{v:#}");
    drop(sc);

    // The real database with three commits no agent has shipped: lag, not divergence.
    for s in 0..3 {
        mixed_txn(&r.conn, 900 + s);
    }
    let (code, v) = drill(&r.url, &["--db", db, "--no-store"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["live"]["verdict"], "lagging", "{v:#}");
    assert_eq!(v["live"]["unshipped_commits"], 3, "{v:#}");
    assert_eq!(v["at_risk_commits"], 3, "{v:#}");
    assert!(v["rpo_seconds"].as_f64().unwrap() > 0.0, "{v:#}");
    let o = run(&["drill", &r.url, "--db", db, "--no-store"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("RPO       3 commit(s) of the live database not in the replica yet"),
        "{text}"
    );

    // Once an agent ships them, current again.
    let agent = Agent::replicate(&r.db, &r.url, &dir.path().join("b.log"));
    wait_until(
        "the agent to ship the three commits",
        std::time::Duration::from_secs(30),
        || {
            let o = run(&["generations", &r.url, "--json"]);
            let g: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            g.as_array()
                .unwrap()
                .iter()
                .any(|x| x["last_txid"] == "0000000000000021")
        },
    );
    agent.stop_ok();
    let (code, v) = drill(&r.url, &["--db", db, "--no-store"]);
    assert_eq!(code, Some(0), "{v:#}");
    assert_eq!(v["live"]["verdict"], "current", "{v:#}");
}

#[test]
fn random_point_passes_on_a_healthy_replica() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicated(dir.path());
    let (code, v) = drill(&r.url, &["--random-point", "--no-store"]);
    assert_eq!(code, Some(0), "{v:#}");
    let p = &v["random_point"];
    assert_eq!(p["ok"], true, "{v:#}");
    assert_eq!(p["integrity_check"], "ok");
    assert_eq!(p["checksum"]["recorded"], p["checksum"]["computed"]);
    let txid = u64::from_str_radix(p["txid"].as_str().unwrap(), 16).unwrap();
    assert!(txid <= 30, "{p:#}");
    assert_eq!(p["target"], format!("txid {txid:016x}"));
    // The point restored really is that transaction: its marker count is the txid's.
    let out = dir.path().join("point.db");
    let o = run(&[
        "restore",
        &r.url,
        "-o",
        out.to_str().unwrap(),
        "--txid",
        p["txid"].as_str().unwrap(),
    ]);
    assert!(o.status.success());
    let n: i64 = Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM marks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as u64, txid);
}

#[test]
fn stored_reports_are_listed_and_a_report_not_stored_is_not_pointed_to() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicated(dir.path());
    let o = run(&["drills", &r.url]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("holds no drill reports"));
    let (code, first) = drill(&r.url, &[]);
    assert_eq!(code, Some(0), "{first:#}");
    // Report keys are unique by start time (milliseconds): the second drill starts once the
    // clock has passed the millisecond the first one ended in.
    let first_ended = now_ms();
    wait_until(
        "the clock to move on",
        std::time::Duration::from_secs(5),
        || now_ms() > first_ended,
    );
    let (_, second) = drill(&r.url, &[]);

    let o = run(&["drills", &r.url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["report_key"].clone())
        .collect();
    assert_eq!(
        keys,
        [first["report_key"].clone(), second["report_key"].clone()]
    );
    let o = run(&["drills", &r.url, "--last", "1"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let k2 = second["report_key"].as_str().unwrap();
    assert!(
        text.contains(k2) && text.contains(" ok ") && text.contains(" 30 "),
        "{text}"
    );
    assert!(
        !text.contains(first["report_key"].as_str().unwrap()),
        "{text}"
    );
    assert!(text.contains("1 older report(s) not shown"), "{text}");

    // A replica that cannot take the report (its drills/ folder is a file): the drill says so
    // and names no report.
    let drills = r.replica.join("drills");
    std::fs::remove_dir_all(&drills).unwrap();
    std::fs::write(&drills, b"in the way").unwrap();
    let o = run(&["drill", &r.url]);
    assert_eq!(o.status.code(), Some(2));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("cannot store the drill report") && text.contains("report not stored"),
        "{text}"
    );
    assert!(!text.contains("report drills/"), "{text}");
}

/// Drills of a database that an agent keeps replicating while a steady app writes (its own
/// autocheckpoints only): the replica moves on while a drill restores, and the app's
/// checkpoints move those commits out of its WAL, so the live database may continue the
/// replica's newer state rather than the one restored. That is lag, never "diverged" (the soak
/// run found drills failing so).
#[test]
fn drills_while_the_agent_ships_pass() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    // 24 MB, so that each restore takes a while and the replica moves on meanwhile.
    c.execute_batch(
        "CREATE TABLE bulk(b BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 \
         FROM n WHERE i < 6000) INSERT INTO bulk SELECT randomblob(4000) FROM n;",
    )
    .unwrap();
    drop(c);
    let mut agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    agent.wait_for_log("snapshot uploaded");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let app = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            let c = app_conn(&db, 4096);
            c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                mixed_txn_only(&c, n);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            n
        })
    };
    let db_arg = db.to_str().unwrap();
    let mut lagging = 0;
    for i in 0..8 {
        let (code, v) = drill(&url, &["--db", db_arg, "--no-store", "--random-point"]);
        assert_eq!(code, Some(0), "drill {i}: {v:#}");
        match v["live"]["verdict"].as_str() {
            Some("lagging") => lagging += 1,
            Some("current") => {}
            _ => panic!("drill {i}: {v:#}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let n = app.join().unwrap();
    agent.stop_ok();
    assert!(lagging > 0, "the app wrote during the drills ({n} commits)");
}
