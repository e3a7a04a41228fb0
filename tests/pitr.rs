//! Point-in-time restore, restore flags, and `verify`.

use std::path::Path;
use std::time::Duration;

use rand::Rng;

use crate::support::oracle::{conn_digest, file_digest, markers, Commit, History};
use crate::support::*;

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

/// The newest txid shipped in the newest generation of a local replica (from segment keys).
fn shipped_txid(replica: &Path) -> u64 {
    let Some(newest) = std::fs::read_dir(replica.join("generations"))
        .ok()
        .and_then(|rd| rd.flatten().map(|e| e.path()).max())
    else {
        return 0;
    };
    newest_shipped_txid(&newest.join("segments"))
}

/// Two generations of marker commits, each recorded by the writer (oracle::History): which
/// generation and txid it is, a time at which it was shipped and the next had not begun, and
/// the database's pages right after it.
fn two_generations_of_markers(dir: &Path) -> (String, History, rusqlite::Connection) {
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let mut h = History::default();
    for period in 0..2 {
        let mut agent = Agent::start(
            &[
                "replicate",
                db.to_str().unwrap(),
                &url,
                "--puts-per-second",
                "1000",
            ],
            &dir.join(format!("a{period}.log")),
        );
        // "replicating" is logged before the generation's first snapshot: a marker written
        // before the snapshot would fold into its txid 0 and shift every txid the oracle expects.
        agent.wait_for_log("new generation: snapshot uploaded");
        h.generation_started();
        for _ in 0..25 {
            // Each marker is shipped before the time is taken and before the next begins, so
            // the agent's recorded commit time lies between the two whatever the machine's load
            // (no guess of how soon the agent sees a commit).
            h.commit(&c, 300, |txid| {
                let txid = txid.unwrap();
                wait_until(
                    &format!("txid {txid} to be shipped"),
                    Duration::from_secs(30),
                    || shipped_txid(&replica) >= txid,
                );
            });
        }
        agent.stop_ok();
        h.generation_stopped();
        // While no agent runs: more commits and a TRUNCATE checkpoint, so the next agent cannot
        // prove continuity and starts a second generation.
        for _ in 0..5 {
            h.commit(&c, 300, |_| {});
        }
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    (url, h, c)
}

#[test]
fn pitr_oracle_restores_exactly_what_the_writer_had_committed_at_each_target() {
    let dir = tempfile::tempdir().unwrap();
    let (url, h, _c) = two_generations_of_markers(dir.path());
    let gens = generations(&url);
    assert_eq!(gens.len(), 2, "two generations expected: {gens:?}");

    let mut rng = rand::rng();
    // Timestamp targets: the moment the writer knew marker i was shipped, before i+1 began.
    // Every marker written while an agent ran and followed by another one of the same run.
    let targets: Vec<&Commit> = h
        .commits
        .windows(2)
        .filter(|w| w[0].generation.is_some() && w[0].generation == w[1].generation)
        .map(|w| &w[0])
        .collect();
    assert_eq!(targets.len(), 48);
    for n in 0..12 {
        let at = targets[rng.random_range(0..targets.len())];
        let out = dir.path().join(format!("t{n}.db"));
        restore_to(&url, &out, &["--timestamp", &rfc3339(at.after_ms)]);
        let expected: Vec<u64> = (0..=at.seq).collect();
        assert_eq!(
            markers(&out),
            expected,
            "timestamp target {} (after marker {})",
            rfc3339(at.after_ms),
            at.seq
        );
        assert_eq!(file_digest(&out), at.digest, "pages at marker {}", at.seq);
    }
    // Transaction targets: every commit in a generation is a restore point, and holds what the
    // writer knew it held (not what another restore says).
    for n in 0..10 {
        let (gi, g) = (n % 2, &gens[n % 2]);
        let k = rng.random_range(1..=25u64);
        let out = dir.path().join(format!("x{n}.db"));
        restore_to(
            &url,
            &out,
            &["--generation", g, "--txid", &format!("{k:016x}")],
        );
        assert_eq!(
            markers(&out),
            h.markers_at_txid(gi, k),
            "generation {g} txid {k}"
        );
        let c = h
            .commits
            .iter()
            .find(|c| c.generation == Some(gi) && c.txid == Some(k))
            .unwrap();
        assert_eq!(
            file_digest(&out),
            c.digest,
            "generation {g} txid {k}: pages"
        );
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
    // The writer's own record of the pages after each commit (txid k = k commits).
    let mut after = vec![conn_digest(&c)];
    for s in 0..80 {
        mixed_txn(&c, s);
        after.push(conn_digest(&c));
    }
    agent.stop_ok();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let out = restore_to(&url, &a, &["--txid", "0000000000000028"]);
    restore_to(&url, &b, &["--txid", "0000000000000028"]);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    // Hashed by the test's own hasher, against what the writer saw after 40 commits.
    assert_eq!(file_digest(&a), after[0x28]);
    assert_ne!(after[0x28], after[0x29], "consecutive states differ");
    // The reported checksum is lifeboat's own over the restored file's pages.
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
    let segments = objects.len();
    objects.extend(files_with_suffix(&replica, ".lbsnap"));
    // The loop below must have something to corrupt: a snapshot and the three rounds' segments.
    assert!(
        segments >= 3 && objects.len() > segments,
        "want a snapshot and at least 3 segments, got {objects:?}"
    );
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
