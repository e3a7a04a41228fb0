//! Replica format 2 end to end: every commit of a generation written in format 2 restores to
//! exactly the writer's state at that commit, and a replica written in format 1 by an earlier
//! lifeboat (`tests/fixtures/format1-replica`) still restores at every transaction.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeboat_wal::any_segment::AnySegment;
use lifeboat_wal::segment::VERSION;
use rusqlite::Connection;

use crate::support::*;

pub(crate) fn restore_txid(url: &str, out: &Path, txid: u64) {
    let o = run(&[
        "restore",
        url,
        "-o",
        out.to_str().unwrap(),
        "--txid",
        &format!("{txid:016x}"),
        "--force",
    ]);
    assert!(
        o.status.success(),
        "restore of txid {txid} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every row of the mixed workload's tables, hashed in key order.
pub(crate) fn digest(c: &Connection) -> u64 {
    let mut h = DefaultHasher::new();
    for q in [
        "SELECT seq, t, pad FROM marks ORDER BY seq",
        "SELECT id, v, NULL FROM items ORDER BY id",
    ] {
        let mut s = c.prepare(q).unwrap();
        let rows = s
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, rusqlite::types::Value>(1)?,
                    r.get::<_, rusqlite::types::Value>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            format!("{:?}", row.unwrap()).hash(&mut h);
        }
    }
    let scratch: Option<Vec<u8>> = c.query_row("SELECT b FROM scratch", [], |r| r.get(0)).ok();
    scratch.hash(&mut h);
    h.finish()
}

/// Every segment stored under `replica`, as `(name, bytes)`: `.lbseg` objects, and the parts of
/// `.lbpack` objects (the agent packs small segments, see `replica::packing`).
fn segments(replica: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = files_with_suffix(replica, ".lbseg")
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    for p in files_with_suffix(replica, ".lbpack") {
        let b = bytes::Bytes::from(std::fs::read(&p).unwrap());
        for (i, (_, part)) in lifeboat_wal::pack::split(&b)
            .unwrap()
            .into_iter()
            .enumerate()
        {
            v.push((format!("{} (part {i})", p.display()), part.to_vec()));
        }
    }
    v.sort();
    v
}

/// A database with the mixed workload's schema and 40 commits, replicated to a folder by an
/// agent with a PUT budget of 40 a second (many small segments).
struct Scene {
    dir: tempfile::TempDir,
    replica: PathBuf,
    url: String,
    conn: Connection,
    agent: Agent,
}

impl Scene {
    /// Writes before the agent starts (so the snapshot is not empty and later updates hit old
    /// pages), starts it, and waits for its first snapshot: the n-th commit after it is txid n.
    fn start() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let replica = dir.path().join("replica");
        let url = format!("file://{}", replica.display());
        let conn = app_conn(&db, 4096);
        create_schema(&conn);
        for seq in 0..40 {
            mixed_txn(&conn, seq);
        }
        let agent = Agent::start(
            &[
                "replicate",
                db.to_str().unwrap(),
                &url,
                "--puts-per-second",
                "40",
            ],
            &dir.path().join("agent.log"),
        );
        wait_until("the first snapshot", Duration::from_secs(20), || {
            !files_with_suffix(&replica, ".lbsnap").is_empty()
        });
        Scene {
            dir,
            replica,
            url,
            conn,
            agent,
        }
    }

    /// Waits until a segment ending at txid `last` is shipped. Called with the writer paused
    /// after `last`, it also cuts the segments there: the tests cross many segment boundaries.
    /// (The newest txid shipped is then `last`, in a segment's key or a pack's.)
    fn wait_shipped(&self, last: u64) {
        wait_until(
            &format!("txid {last} shipped"),
            Duration::from_secs(30),
            || newest_shipped_txid(&self.replica) >= last,
        );
    }

    /// Waits until txid `last` is shipped, stops the agent, and returns the segments.
    fn finish(self, last: u64) -> (tempfile::TempDir, String, Vec<(String, Vec<u8>)>) {
        self.wait_shipped(last);
        self.agent.stop_ok();
        let segs = segments(&self.replica);
        (self.dir, self.url, segs)
    }
}

/// Restores every txid of `oracle` (txid n's digest at index n) and compares.
fn restore_every_txid(dir: &Path, url: &str, oracle: &[u64]) {
    let out = dir.join("out.db");
    for (txid, want) in oracle.iter().enumerate() {
        restore_txid(url, &out, txid as u64);
        let r = Connection::open(&out).unwrap();
        assert_eq!(
            digest(&r),
            *want,
            "txid {txid}: the restored rows differ from the writer's at that commit"
        );
    }
}

#[test]
fn every_txid_of_a_format2_generation_restores_the_writers_state_at_that_commit() {
    let sc = Scene::start();
    let c = &sc.conn;
    // The oracle is the writer's own view right after each commit. Seq 97 and 194 recreate a
    // table, 151 checkpoints.
    let mut oracle = vec![digest(c)];
    for seq in 90..230 {
        mixed_txn(c, seq);
        oracle.push(digest(c));
        if seq % 4 == 0 {
            sc.wait_shipped(oracle.len() as u64 - 1);
        }
    }
    let (dir, url, segs) = sc.finish(oracle.len() as u64 - 1);

    // Every segment is format 2, several of them, and page deltas against the state before a
    // segment were used (the restores below are what proves them right).
    assert!(segs.len() >= 5, "only {} segments", segs.len());
    let mut with_bases = 0;
    for (name, b) in &segs {
        let any = AnySegment::open(b).unwrap();
        assert_eq!(any.header.version, VERSION, "{name}");
        with_bases += usize::from(!any.base_pages().is_empty());
    }
    assert!(with_bases >= 2, "{with_bases} segments used base pages");

    restore_every_txid(dir.path(), &url, &oracle);
    let o = run(&["verify", &url]);
    assert!(
        o.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn a_format1_replica_from_an_earlier_lifeboat_restores_at_every_txid() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1-replica");
    let expect = std::fs::read_to_string(fixture.join("expect.txt")).unwrap();
    let url = format!("file://{}", fixture.join("replica").display());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let mut checked = 0;
    for line in expect.lines() {
        let (txid, rows) = line.split_once(' ').unwrap_or((line, ""));
        let txid: u64 = txid.parse().unwrap();
        restore_txid(&url, &out, txid);
        let r = Connection::open(&out).unwrap();
        let got: String = r
            .query_row(
                "SELECT coalesce(group_concat(id || '=' || v, ';'), '') FROM (SELECT * FROM t ORDER BY id)",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(got, rows, "txid {txid}");
        checked += 1;
    }
    assert_eq!(checked, 25);
    let o = run(&["verify", &url]);
    assert!(
        o.status.success(),
        "verify: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// A database that shrinks (rows deleted, then `VACUUM`) and grows back, again and again, over
/// many segments: every txid restores to the writer's state at that commit. A restore keeps
/// each page's newest version in memory across segments and reads a segment's base pages
/// through it, so a page dropped by a shrink must read as zeros, not as its old bytes, when the
/// database grows back over it in a later segment.
#[test]
fn a_database_that_shrinks_and_grows_back_restores_at_every_txid() {
    let sc = Scene::start();
    let c = &sc.conn;
    let pages =
        |c: &Connection| -> i64 { c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap() };
    let mut oracle = vec![digest(c)];
    let mut shrinks = 0;
    for seq in 40..160u64 {
        if seq % 20 == 0 {
            let before = pages(c);
            c.execute_batch(
                "BEGIN; DELETE FROM items WHERE id % 4 != 0; DELETE FROM marks WHERE seq % 3 != 0; COMMIT",
            )
            .unwrap();
            oracle.push(digest(c));
            c.execute_batch("VACUUM").unwrap();
            oracle.push(digest(c));
            shrinks += usize::from(pages(c) < before);
        } else {
            mixed_txn_only(c, seq);
            oracle.push(digest(c));
        }
        if seq % 4 == 0 {
            sc.wait_shipped(oracle.len() as u64 - 1);
        }
    }
    assert!(shrinks >= 4, "the database shrank only {shrinks} times");
    let (dir, url, segs) = sc.finish(oracle.len() as u64 - 1);
    assert!(segs.len() >= 10, "only {} segments", segs.len());
    restore_every_txid(dir.path(), &url, &oracle);
}

/// A backlog whose commits touch more pages than the segment encoder holds (512 KiB of pages'
/// latest versions; past that it lets them go and reads a page's back from the WAL, checked by
/// hash, when the page is written again): pages were read back, and every txid restores to the
/// writer's state at that commit.
#[test]
fn pages_the_encoder_read_back_from_the_wal_restore_at_every_txid() {
    const ROWS: usize = 2000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    // Row `id`'s bytes after commit `k` (0: as loaded).
    let value = |k: usize, id: usize| -> Vec<u8> {
        (0..900)
            .map(|i| (i * 7 + id * 13 + k * 101 + (i / 64) * k) as u8)
            .collect()
    };
    let c = app_conn(&db, 4096);
    c.execute_batch("BEGIN; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    for id in 1..=ROWS {
        c.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![id, value(0, id)],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    // A PUT budget that holds the backlog back: the first snapshot and one segment, then one
    // PUT every 50 s, so the commits below go out as one segment when the agent stops.
    let cfg = crate::support::faults::config(
        dir.path(),
        &db,
        &url,
        "puts-per-second = 0.02\nput-burst = 2.0\ncheckpoint-pages = 1000000",
    );
    let log = dir.path().join("agent.log");
    let agent = Agent::start(&["replicate", "--config", cfg.to_str().unwrap()], &log);
    wait_until("the first snapshot", Duration::from_secs(20), || {
        !files_with_suffix(&replica, ".lbsnap").is_empty()
    });
    // Commit k rewrites row 1 (a hot page) and 8 rows spread over the table: about 500 pages,
    // more than the 128 the encoder holds.
    let mut changed: Vec<Vec<usize>> = vec![Vec::new()];
    for k in 1..=80usize {
        let ids: Vec<usize> = std::iter::once(1)
            .chain((0..8).map(|j| 1 + (k * 997 + j * 251) % ROWS))
            .collect();
        c.execute_batch("BEGIN").unwrap();
        for &id in &ids {
            c.execute(
                "UPDATE t SET v = ?1 WHERE id = ?2",
                rusqlite::params![value(k, id), id],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
        changed.push(ids);
    }
    agent.stop_ok();
    let read_back: usize = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("segment uploaded"))
        .filter_map(|l| {
            l.split("read_back=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(read_back > 0, "no page was read back from the WAL");

    let out = dir.path().join("out.db");
    let mut model: Vec<Vec<u8>> = (0..=ROWS).map(|id| value(0, id)).collect();
    for (txid, ids) in changed.iter().enumerate() {
        for &id in ids {
            model[id] = value(txid, id);
        }
        restore_txid(&url, &out, txid as u64);
        let r = Connection::open(&out).unwrap();
        let mut s = r.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
        let rows: Vec<(usize, Vec<u8>)> = s
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), ROWS, "txid {txid}");
        for (id, v) in rows {
            assert!(
                v == model[id],
                "txid {txid}: row {id} differs from the writer's"
            );
        }
    }
}
