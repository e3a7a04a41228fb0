//! Damaged replicas: restore refuses, naming the object, and leaves no output behind.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

fn replicated(dir: &Path) -> (std::path::PathBuf, String) {
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let agent = Agent::replicate(&db, &url, &dir.join("a.log"));
    // Several segments: stop and start the agent between bursts of writes.
    for s in 0..30 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    for round in 1..4 {
        let agent = Agent::replicate(&db, &url, &dir.join(format!("a{round}.log")));
        for s in 0..30 {
            mixed_txn(&c, round * 100 + s);
        }
        agent.stop_ok();
    }
    let gens = std::fs::read_dir(replica.join("generations"))
        .unwrap()
        .count();
    if gens != 1 {
        let logs: Vec<String> = (0..4)
            .map(|i| {
                let name = if i == 0 {
                    "a.log".to_string()
                } else {
                    format!("a{i}.log")
                };
                std::fs::read_to_string(dir.join(name)).unwrap()
            })
            .collect();
        panic!(
            "restarts must resume the generation, got {gens}:\n{}",
            logs.join("\n---\n")
        );
    }
    (replica, url)
}

fn relative_key(replica: &Path, p: &Path) -> String {
    p.strip_prefix(replica)
        .unwrap()
        .to_string_lossy()
        .to_string()
}

#[test]
fn a_flipped_byte_in_a_segment_fails_restore_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, url) = replicated(dir.path());
    let segs = files_with_suffix(&replica, ".lbseg");
    assert!(segs.len() >= 3, "want several segments, got {}", segs.len());
    let victim = &segs[segs.len() / 2];
    let mut data = std::fs::read(victim).unwrap();
    let i = data.len() / 2;
    data[i] ^= 0x01;
    std::fs::write(victim, &data).unwrap();
    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "restore of a corrupt replica must fail: victim {}, {}",
        victim.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&relative_key(&replica, victim)),
        "the error must name the object: {err}"
    );
    assert!(!out.exists(), "no output may be left behind");
}

#[test]
fn a_segment_missing_from_the_middle_fails_restore_naming_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, url) = replicated(dir.path());
    let segs = files_with_suffix(&replica, ".lbseg");
    assert!(segs.len() >= 3);
    let victim = &segs[segs.len() / 2];
    let next = &segs[segs.len() / 2 + 1];
    std::fs::remove_file(victim).unwrap();
    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing transactions") && err.contains(&relative_key(&replica, next)),
        "the error must name the gap and the object after it: {err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_flipped_byte_in_a_snapshot_fails_restore_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, url) = replicated(dir.path());
    let snaps = files_with_suffix(&replica, ".lbsnap");
    let victim = snaps.last().unwrap();
    let mut data = std::fs::read(victim).unwrap();
    let i = data.len() / 3;
    data[i] ^= 0x40;
    std::fs::write(victim, &data).unwrap();
    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&relative_key(&replica, victim)), "{err}");
    assert!(!out.exists());
}

#[test]
fn two_hosts_resuming_one_generation_fork_it_and_restore_and_verify_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&a, 4096);
    create_schema(&c);
    let mut agent = Agent::replicate(&a, &url, &dir.path().join("a0.log"));
    // The five transactions below must come after the generation's snapshot (txids 1 to 5),
    // however slowly the agent takes it.
    agent.wait_for_log("snapshot uploaded");
    for s in 0..5 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    drop(c);
    // A second host boots from the backup while the first one keeps going (an overlapping
    // deploy): both resume the same generation at the same transaction.
    let o = run(&["restore", &url, "-o", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut agent_a = Agent::replicate(&a, &url, &dir.path().join("a1.log"));
    let mut agent_b = Agent::replicate(&b, &url, &dir.path().join("b1.log"));
    agent_a.wait_for_log("resuming generation");
    agent_b.wait_for_log("resuming generation");
    // One host writes, then the other: their segments get different keys (the key holds the
    // commit time), so create-only writes cannot catch the fork. (Had both hit the same key in
    // the same millisecond, the second writer would have been stopped by the conflict instead.)
    let (ca, cb) = (app_conn(&a, 4096), app_conn(&b, 4096));
    mixed_txn(&ca, 1000);
    agent_a.wait_for_log("segment uploaded");
    // B's commits must be seen at a later millisecond than A's was.
    let ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let t0 = ms();
    wait_until(
        "the clock to pass A's commit",
        Duration::from_secs(1),
        || ms() > t0 + 1,
    );
    for s in 0..3 {
        mixed_txn(&cb, 2000 + s);
    }
    agent_b.wait_for_log("segment uploaded");
    agent_a.stop_ok();
    agent_b.stop_ok();

    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "a forked generation must not restore silently"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("forked at txid 6:") && err.contains(".lbseg") && err.contains("--txid 5"),
        "{err}"
    );
    assert!(!out.exists());

    let o = run(&["verify", &url]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stdout).contains("forked"));

    // The common history before the fork still restores, exactly.
    let o = run(&["restore", &url, "-o", out.to_str().unwrap(), "--txid", "5"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n: i64 = rusqlite::Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM marks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5);
}

/// Rewrites the segment at `path` (CRCs and SQLite's chain intact) with the database checksum
/// recorded after its commit `k` changed, and after its last one the header's too; `before` is
/// the database restored to the transaction before the segment, for its base pages. Returns the
/// txid of commit `k`.
fn record_a_wrong_checksum(path: &Path, before: &Path, k: usize) -> u64 {
    use lifeboat_wal::any_segment::AnySegment;
    let file = std::fs::read(before).unwrap();
    let any = AnySegment::open(&std::fs::read(path).unwrap()).unwrap();
    let ps = any.header.page_size as usize;
    let mut seg = any
        .rebuild(&mut |pgno, page| {
            let at = (pgno as usize - 1) * ps;
            match file.get(at..at + ps) {
                Some(b) => page.copy_from_slice(b),
                None => page.fill(0),
            }
            Ok(())
        })
        .unwrap();
    let k = k.min(seg.commits.len() - 1);
    seg.commits[k].checksum.0 ^= 1;
    if k + 1 == seg.commits.len() {
        seg.header.checksum_after = seg.commits[k].checksum;
    }
    std::fs::write(path, seg.encode()).unwrap();
    seg.commits[k].txid.0
}

#[test]
fn a_wrong_recorded_database_checksum_is_refused_naming_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, url) = replicated(dir.path());
    let segs = files_with_suffix(&replica, ".lbseg");
    assert!(segs.len() >= 3, "want several segments, got {}", segs.len());
    // A segment of several commits, past the first (whose state before is the snapshot's).
    let open =
        |p: &Path| lifeboat_wal::any_segment::AnySegment::open(&std::fs::read(p).unwrap()).unwrap();
    let victim = segs[1..]
        .iter()
        .find(|p| open(p).commits.len() >= 2)
        .unwrap_or_else(|| panic!("no segment of two commits or more among {segs:?}"));
    let key = relative_key(&replica, victim);
    let original = std::fs::read(victim).unwrap();
    let first = open(victim).header.first_txid.0;
    let before = dir.path().join("before.db");
    let o = run(&[
        "restore",
        &url,
        "-o",
        before.to_str().unwrap(),
        "--txid",
        &(first - 1).to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.path().join("out.db");
    let refused = |args: &[&str], what: &str| {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what} must fail: {err}");
        assert!(
            err.contains(&key) && err.contains("database checksum"),
            "{what}: the error must name the object and the checksum: {err}"
        );
        assert!(!out.exists(), "{what}: no output may be left behind");
    };
    // Wrong after the segment's last commit: restoring the newest state checks it.
    record_a_wrong_checksum(victim, &before, usize::MAX);
    refused(&["restore", &url, "-o", out.to_str().unwrap()], "restore");
    // Wrong after a commit inside the segment: a restore to that commit, and verify, check it.
    std::fs::write(victim, &original).unwrap();
    let txid = record_a_wrong_checksum(victim, &before, 0);
    let txid = txid.to_string();
    refused(
        &[
            "restore",
            &url,
            "-o",
            out.to_str().unwrap(),
            "--txid",
            &txid,
        ],
        "restore --txid",
    );
    let o = run(&["verify", &url]);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "verify must fail: {report}");
    assert!(
        report.contains(&key),
        "verify must name the object: {report}"
    );
}
