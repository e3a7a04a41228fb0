//! What leaves the host: only committed transactions. A large transaction spills its pages into
//! the WAL before it commits; if it rolls back, those frames stay in the file (until overwritten)
//! but must never reach the replica, nor any restore point.

use std::time::Duration;

use crate::support::oracle::{assert_gap_free_prefix, markers};
use crate::support::*;

const SECRET: &str = "ROLLED-BACK-NEVER-SHIPPED";

fn replica_bytes(dir: &std::path::Path) -> u64 {
    files_with_suffix(dir, "")
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn frames_of_an_open_or_rolled_back_transaction_never_leave_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let wal = dir.path().join("app.db-wal");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    c.execute_batch("CREATE TABLE big(b BLOB, s TEXT); PRAGMA cache_size = 16;")
        .unwrap();
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    for s in 0..5 {
        mixed_txn(&c, s);
    }
    wait_until("the first commits to ship", Duration::from_secs(30), || {
        !files_with_suffix(&replica, ".lbseg").is_empty()
    });

    // 4 MB of incompressible rows in one transaction, through a 16-page cache: it spills.
    let before = std::fs::metadata(&wal).unwrap().len();
    c.execute_batch("BEGIN").unwrap();
    for _ in 0..1000 {
        c.execute(
            "INSERT INTO big VALUES (randomblob(4000), ?1)",
            [SECRET.repeat(4)],
        )
        .unwrap();
    }
    let spilled = std::fs::metadata(&wal).unwrap().len();
    assert!(
        spilled >= before + (2 << 20),
        "the open transaction must have spilled into the WAL ({before} -> {spilled} bytes)"
    );
    // An observation window with the transaction open: the agent sees the WAL grow.
    std::thread::sleep(Duration::from_millis(1500));
    c.execute_batch("ROLLBACK").unwrap();
    for s in 5..10 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();

    // Shipped, those 4 MB of random bytes could not compress away.
    let stored = replica_bytes(&replica);
    assert!(
        stored < 1 << 20,
        "the replica holds {stored} bytes: rolled-back frames were shipped"
    );
    // No restore point holds them, and each is a gap-free prefix of the markers.
    let last = files_with_suffix(&replica, ".lbseg")
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            u64::from_str_radix(name.split('-').nth(1)?, 16).ok()
        })
        .max()
        .unwrap();
    assert_eq!(
        last, 10,
        "ten commits (the rolled-back one is not a transaction)"
    );
    for txid in 0..=last {
        let out = dir.path().join(format!("t{txid}.db"));
        let o = run(&[
            "restore",
            &url,
            "-o",
            out.to_str().unwrap(),
            "--txid",
            &format!("{txid:016x}"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(&out).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "txid {txid} holds rolled-back data"
        );
        assert_eq!(
            assert_gap_free_prefix(&markers(&out), 0, 10, &format!("txid {txid}")),
            txid
        );
    }
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

/// A temporary folder in memory (/dev/shm) when the machine has one with `need` bytes free,
/// else on disk: what the test below checks is the agent's handling of the file, and gigabytes
/// of writes and fsyncs on a shared disk tell nothing about it.
fn tempdir_in_memory_if_room(need: u64) -> tempfile::TempDir {
    let room = nix::sys::statvfs::statvfs("/dev/shm")
        .is_ok_and(|s| s.blocks_available() * s.fragment_size() >= need);
    let shm = room.then(|| {
        tempfile::Builder::new()
            .prefix("lifeboat-test-1gib-")
            .tempdir_in("/dev/shm")
            .ok()
    });
    shm.flatten()
        .unwrap_or_else(|| tempfile::tempdir().unwrap())
}

#[test]
#[ignore = "writes a 1.1 GiB database (about 4 GB of I/O, in /dev/shm when it has room; under a \
            minute or two): CI runs it on its own with --ignored (.ci/run)"]
fn a_database_past_1_gib_crosses_the_lock_byte_page_and_restores_exactly() {
    let _disk = exclusive_disk();
    // The database and its restore: 2.3 GiB, and headroom (the replica is small: zeroblobs).
    let dir = tempdir_in_memory_if_room(4 << 30);
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    // Built fast without a journal, then switched to WAL: 17,000 pages of 64 KiB, so the page
    // holding byte offset 1 GiB (SQLite's lock-byte page, never written) is inside the file.
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA page_size = 65536; PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
             CREATE TABLE big(n INTEGER PRIMARY KEY, b BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 17000)
             INSERT INTO big SELECT i, zeroblob(60000) FROM s;
             PRAGMA journal_mode = WAL;",
        )
        .unwrap();
    }
    assert!(std::fs::metadata(&db).unwrap().len() > (1 << 30) + 65536);
    let c = app_conn(&db, 65536);
    create_schema(&c);
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    // Changes on both sides of the lock-byte page, and growth past the end.
    for s in 0..10u64 {
        mixed_txn(&c, s);
        c.execute(
            "UPDATE big SET b = randomblob(1000) WHERE n IN (?1, ?2)",
            [(s * 1500 + 7) as i64, (16_000 + s * 50) as i64],
        )
        .unwrap();
    }
    c.execute("INSERT INTO big VALUES (17001, randomblob(50000))", [])
        .unwrap();
    agent.stop_ok();
    let want = crate::support::oracle::conn_digest(&c);
    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(crate::support::oracle::file_digest(&out), want);
    let v = run(&["verify", &url]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}
