//! Point-in-time restore, restore flags, and `verify`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use rusqlite::Connection;

use crate::support::*;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn rfc3339(ms: u64) -> String {
    humantime_rfc3339(ms)
}

fn humantime_rfc3339(ms: u64) -> String {
    // Formatting by hand keeps this test independent of lifeboat's own time formatting.
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        ms % 1000
    )
}

/// A marker transaction: one commit, carrying its sequence number.
fn marker(c: &Connection, seq: u64) -> u64 {
    c.execute(
        "INSERT INTO marks(seq, t, pad) VALUES (?1, 0, ?2)",
        rusqlite::params![seq as i64, "p".repeat(300)],
    )
    .unwrap();
    now_ms()
}

fn markers_in(db: &Path) -> Vec<u64> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT seq FROM marks ORDER BY seq").unwrap();
    s.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|r| r.unwrap() as u64)
        .collect()
}

fn restore_to(url: &str, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["restore", url, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(
        o.status.success(),
        "restore {extra:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn generations(url: &str) -> Vec<String> {
    let o = run(&["generations", url, "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|g| g["generation"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn pitr_oracle_restores_exactly_the_markers_committed_by_each_target() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    // (seq, commit time, generation period) for markers written while an agent ran.
    let mut seen: Vec<(u64, u64, usize)> = Vec::new();
    let mut seq = 0;
    for period in 0..2 {
        let agent = Agent::replicate(&db, &url, &dir.path().join(format!("a{period}.log")));
        for _ in 0..25 {
            seen.push((seq, marker(&c, seq), period));
            seq += 1;
            // The app's pace: a commit every 60 ms, like a lightly used web backend.
            std::thread::sleep(Duration::from_millis(60));
        }
        agent.stop_ok();
        // While no agent runs: more commits and a TRUNCATE checkpoint, so the next agent cannot
        // prove continuity and starts a second generation.
        for _ in 0..5 {
            marker(&c, seq);
            seq += 1;
        }
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    let gens = generations(&url);
    assert_eq!(gens.len(), 2, "two generations expected: {gens:?}");

    let mut rng = rand::rng();
    // Timestamp targets: halfway between two consecutive markers of one period.
    for n in 0..12 {
        let i = loop {
            let i = rng.random_range(0..seen.len() - 1);
            if seen[i].2 == seen[i + 1].2 {
                break i;
            }
        };
        let target = (seen[i].1 + seen[i + 1].1) / 2;
        let out = dir.path().join(format!("t{n}.db"));
        restore_to(&url, &out, &["--timestamp", &rfc3339(target)]);
        let got = markers_in(&out);
        let expected: Vec<u64> = (0..=seen[i].0).collect();
        assert_eq!(
            got,
            expected,
            "timestamp target {} (after marker {})",
            rfc3339(target),
            seen[i].0
        );
    }
    // Transaction targets: every commit in a generation is a restore point.
    for n in 0..10 {
        let g = &gens[n % 2];
        let base_out = dir.path().join(format!("base{n}.db"));
        restore_to(
            &url,
            &base_out,
            &["--generation", g, "--txid", "0000000000000000"],
        );
        let base = markers_in(&base_out).len() as u64;
        let k = rng.random_range(1..=25u64);
        let out = dir.path().join(format!("x{n}.db"));
        restore_to(
            &url,
            &out,
            &["--generation", g, "--txid", &format!("{k:016x}")],
        );
        let got = markers_in(&out);
        let expected: Vec<u64> = (0..base + k).collect();
        assert_eq!(got, expected, "generation {g} txid {k}");
    }
}

#[test]
fn same_target_twice_is_byte_identical_and_the_checksum_is_independent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    for s in 0..80 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let out = restore_to(&url, &a, &["--txid", "0000000000000028"]);
    restore_to(&url, &b, &["--txid", "0000000000000028"]);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    let reported = out
        .split("checksum ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("restore reports the checksum")
        .to_string();
    let data = std::fs::read(&a).unwrap();
    let mut h = lifeboat_wal::checksum::PageHashes::new(4096);
    for (i, p) in data.chunks(4096).enumerate() {
        h.set_page(i as u32 + 1, p);
    }
    assert_eq!(h.checksum().to_string(), reported);
}

#[test]
fn restore_flags_behave_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let empty = format!("file://{}", dir.path().join("empty").display());
    let out = dir.path().join("out.db");
    // No backup yet.
    let o = run(&[
        "restore",
        &empty,
        "-o",
        out.to_str().unwrap(),
        "--if-replica-exists",
    ]);
    assert!(o.status.success());
    assert!(!out.exists());
    let o = run(&["restore", &empty, "-o", out.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "restoring from an empty replica is an error"
    );

    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    for s in 0..20 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();

    // Dry run: a plan on stdout, nothing written.
    let o = run(&["restore", &url, "-o", out.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success());
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(
        plan.contains(".lbsnap") && plan.contains("to download"),
        "{plan}"
    );
    // Words, not Rust debug text (it printed `target Latest`).
    assert!(plan.contains("target     the newest state"), "{plan}");
    assert!(!out.exists());

    // An existing database is left alone with --if-db-not-exists.
    std::fs::write(&out, b"keep me").unwrap();
    let o = run(&[
        "restore",
        &url,
        "-o",
        out.to_str().unwrap(),
        "--if-db-not-exists",
    ]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    // ... refused without --force, replaced with it.
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    restore_to(&url, &out, &["--force"]);
    assert_same_pages(&file_pages(&out), &pages(&db));
}

#[test]
fn any_flipped_byte_in_any_object_is_caught_by_restore_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    for round in 0..3u64 {
        let agent = Agent::replicate(&db, &url, &dir.path().join(format!("a{round}.log")));
        for s in 0..10 {
            mixed_txn(&c, round * 100 + s);
        }
        agent.stop_ok();
    }
    let o = run(&["verify", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let mut objects = files_with_suffix(&replica, ".lbseg");
    objects.extend(files_with_suffix(&replica, ".lbsnap"));
    let mut rng = rand::rng();
    for obj in &objects {
        let original = std::fs::read(obj).unwrap();
        let mut bad = original.clone();
        let i = rng.random_range(0..bad.len());
        bad[i] ^= 1 << rng.random_range(0..8);
        std::fs::write(obj, &bad).unwrap();
        let key = obj
            .strip_prefix(&replica)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let out = dir.path().join("out.db");
        let r = run(&["restore", &url, "-o", out.to_str().unwrap()]);
        assert!(
            !r.status.success(),
            "restore missed a flip at byte {i} of {key}"
        );
        assert!(
            String::from_utf8_lossy(&r.stderr).contains(&key),
            "restore must name {key}"
        );
        assert!(!out.exists());
        let v = run(&["verify", &url]);
        assert!(
            !v.status.success(),
            "verify missed a flip at byte {i} of {key}"
        );
        assert!(
            String::from_utf8_lossy(&v.stdout).contains(&key),
            "verify must name {key}"
        );
        std::fs::write(obj, &original).unwrap();
    }
}

#[test]
fn snapshots_and_segments_list_what_the_replica_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    for s in 0..30 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    for (cmd, suffix) in [("snapshots", ".lbsnap"), ("segments", ".lbseg")] {
        let o = run(&[cmd, &url, "--json"]);
        assert!(o.status.success());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let listed: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].as_str().unwrap().to_string())
            .collect();
        let on_disk: Vec<String> = files_with_suffix(&replica, suffix)
            .iter()
            .map(|p| {
                p.strip_prefix(&replica)
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
        assert_eq!(listed, on_disk, "{cmd}");
        assert!(!listed.is_empty());
    }
}
