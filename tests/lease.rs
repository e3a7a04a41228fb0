//! The writer lease: overlapping `lifeboat run` instances hand the replica over without losing
//! an acknowledged write; a holder paused past its lease cannot extend the history; a killed
//! holder's lease is taken over within its TTL; `POST /sync` answers only once a commit is in
//! the replica. The apps are separate processes writing in WAL mode with autocheckpoint on.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags};

use crate::support::*;

/// A writer app: commits one row at a time (autocommit, SQLite's busy timeout 5 s as in
/// better-sqlite3's default) and appends each acknowledged sequence number to `acked` once its
/// commit returned; the longest wait of an acknowledged write goes to `acked.maxwait` (ms).
const WRITER: &str = r#"
import sqlite3, sys, time, os
db, acked, seq = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(db, timeout=5, isolation_level=None)
c.execute('PRAGMA journal_mode=WAL')
c.execute('CREATE TABLE IF NOT EXISTS t(seq INTEGER PRIMARY KEY, pad TEXT)')
out = open(acked, 'a')
longest = 0.0
while True:
    t0 = time.monotonic()
    try:
        c.execute('INSERT INTO t VALUES (?, ?)', (seq, 'x' * 200))
    except sqlite3.OperationalError:
        continue
    waited = time.monotonic() - t0
    out.write(f'{seq}\n'); out.flush()
    if waited > longest:
        longest = waited
        with open(acked + '.maxwait', 'w') as m:
            m.write(str(int(waited * 1000)))
    seq += 1
    time.sleep(0.003)
"#;

/// `lifeboat run` with the writer app, in a process group of its own (a host of its own).
struct Instance {
    child: Child,
    log: PathBuf,
    db: PathBuf,
    acked: PathBuf,
}

impl Instance {
    fn start(dir: &Path, name: &str, url: &str, first_seq: u64, extra: &[&str]) -> Instance {
        let writer = dir.join("writer.py");
        if !writer.exists() {
            std::fs::write(&writer, WRITER).unwrap();
        }
        let db = dir.join(format!("{name}.db"));
        let acked = dir.join(format!("{name}.acked"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin())
            .args(["run", "--db", db.to_str().unwrap(), "--replica", url])
            .args(["--lease-ttl", "3s", "--handoff-timeout", "30s"])
            .args(extra)
            .args(["--", "python3", writer.to_str().unwrap()])
            .args([db.to_str().unwrap(), acked.to_str().unwrap()])
            .arg(first_seq.to_string())
            .env("RUST_LOG", "info,lifeboat_agent=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .expect("start lifeboat run");
        Instance {
            child,
            log,
            db,
            acked,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sequence numbers its app acknowledged.
    fn acked(&self) -> BTreeSet<u64> {
        std::fs::read_to_string(&self.acked)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    fn longest_wait_ms(&self) -> u64 {
        std::fs::read_to_string(self.acked.with_extension("acked.maxwait"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until its app has acknowledged `n` writes.
    fn wait_acked(&mut self, n: usize, what: &str) {
        wait_until(what, Duration::from_secs(120), || {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!(
                    "{what}: lifeboat run exited with {s}; log:\n{}",
                    self.log_text()
                );
            }
            self.acked().len() >= n
        });
    }

    fn group(&self, sig: Signal) {
        killpg(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGTERM to lifeboat (forwarded to the app), then wait for it to exit.
    fn stop(&mut self) {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let mut done = false;
        wait_until("lifeboat run to exit", Duration::from_secs(90), || {
            done = self.child.try_wait().unwrap().is_some();
            done
        });
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The sequence numbers in a database (opened read-only, beside its running app).
fn rows(db: &Path) -> BTreeSet<u64> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut st = c.prepare("SELECT seq FROM t").unwrap();
    st.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|r| r.unwrap() as u64)
        .collect()
}

/// Overlapping deploys of `lifeboat run` over `url`: each new instance starts while the old
/// one's app is writing, takes the lease by handoff, and only then is the old one stopped.
/// After every deploy, every write any instance acknowledged is in the new instance's database.
/// Returns the longest acknowledged write wait seen.
fn deploys(dir: &Path, url: &str, n: usize) -> Duration {
    let mut acked = BTreeSet::new();
    let mut old = Instance::start(dir, "i0", url, 0, &[]);
    old.wait_acked(50, "the first instance's writes");
    let mut longest = 0;
    for i in 1..=n {
        let t0 = Instant::now();
        let mut new = Instance::start(dir, &format!("i{i}"), url, i as u64 * 1_000_000, &[]);
        // The new instance's app writes as soon as it runs: traffic has moved to it.
        new.wait_acked(20, &format!("deploy {i}: the new instance's app"));
        let boot = t0.elapsed();
        old.stop();
        let log = old.log_text();
        assert!(
            log.contains("handed the writer lease over"),
            "deploy {i}:\n{log}"
        );
        acked.extend(old.acked());
        longest = longest.max(old.longest_wait_ms());
        let have = rows(&new.db);
        let lost: Vec<_> = acked.difference(&have).collect();
        assert!(
            lost.is_empty(),
            "deploy {i}: {} acknowledged writes are not in the new instance's database, the \
             first {:?}; old log:\n{log}\nnew log:\n{}",
            lost.len(),
            &lost[..lost.len().min(10)],
            new.log_text()
        );
        eprintln!(
            "deploy {i}: new instance serving {boot:?} after it started; {} acknowledged writes \
             so far, all present",
            acked.len()
        );
        old = new;
    }
    old.stop();
    acked.extend(old.acked());
    longest = longest.max(old.longest_wait_ms());
    // The replica's newest state holds every acknowledged write, and verifies.
    let out = dir.join("final.db");
    let o = run(&["restore", url, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let have = rows(&out);
    assert!(
        acked.is_subset(&have),
        "the final restore lacks acknowledged writes"
    );
    let o = run(&["verify", url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    Duration::from_millis(longest)
}

#[test]
fn overlapping_deploys_hand_the_replica_over_without_losing_an_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("replica").display());
    let longest = deploys(dir.path(), &url, 3);
    eprintln!("longest acknowledged write wait: {longest:?}");
}

#[test]
fn a_paused_holder_cannot_extend_the_history_after_a_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("replica").display());
    let mut old = Instance::start(dir.path(), "old", &url, 0, &[]);
    old.wait_acked(50, "the old instance's writes");
    wait_until("a shipped segment", Duration::from_secs(60), || {
        old.log_text().contains("segment uploaded")
    });
    // The whole old host freezes (a VM pause, a stop-the-world GC): lifeboat and its app.
    old.group(Signal::SIGSTOP);
    let frozen_at = rows(&old.db).len();
    let t0 = Instant::now();
    let mut new = Instance::start(dir.path(), "new", &url, 1_000_000, &[]);
    new.wait_acked(20, "the new instance's app");
    let took = t0.elapsed();
    let nlog = new.log_text();
    assert!(nlog.contains("taking the lease over"), "{nlog}");
    // Its TTL is 3 s: the takeover waits it out (observed without trusting clocks), no more
    // than the TTL plus the restore, the new generation and the app's start.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    // The old host wakes: its lease is gone, it refuses to upload, and freezes its app.
    old.group(Signal::SIGCONT);
    wait_until(
        "the old instance to learn it lost the lease",
        Duration::from_secs(30),
        || old.log_text().contains("took the writer lease"),
    );
    assert!(rows(&old.db).len() >= frozen_at);
    old.stop();
    // And an instance without a lease on the old disk (an old lifeboat, `--no-lease`) writes a
    // generation of its own after the takeover.
    let stale = Agent::replicate(&old.db, &url, &dir.path().join("stale.log"));
    {
        let c = app_conn(&old.db, 4096);
        c.execute("INSERT INTO t VALUES (-1, 'late')", []).unwrap();
    }
    let mut stale = stale;
    stale.wait_for_log("new generation");
    stale.stop_ok();
    new.stop();

    // Readers ignore both, loudly; the history is the new holder's.
    let o = run(&["generations", &url]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("ignored:"), "{text}");
    let o = run(&["verify", &url]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("no problems") && text.contains("ignored:"),
        "{text}"
    );
    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let restored = rows(&out);
    assert!(
        !restored.contains(&u64::MAX),
        "the stale writer's row is not restored"
    );
    assert_eq!(
        restored,
        rows(&new.db),
        "the restore is the new holder's state"
    );
    assert!(
        restored.iter().any(|&s| s >= 1_000_000),
        "with the new app's writes"
    );
}

/// `POST /sync` on a running instance's health address: the status code and JSON body.
fn sync(addr: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /sync?timeout=20s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(body).unwrap())
}

#[test]
fn a_killed_holder_is_taken_over_within_its_ttl_and_every_synced_write_survives() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("replica").display());
    let addr = format!("127.0.0.1:{}", free_port());
    let db = dir.path().join("old.db");
    {
        let c = app_conn(&db, 4096);
        c.execute_batch("CREATE TABLE t(seq INTEGER PRIMARY KEY, pad TEXT)")
            .unwrap();
    }
    let ready = dir.path().join("ready");
    let script = format!("touch {}; exec sleep 600", ready.display());
    let log = dir.path().join("old.log");
    let mut old = Command::new(bin())
        .args(["run", "--db", db.to_str().unwrap(), "--replica", &url])
        .args(["--lease-ttl", "3s", "--health-addr", &addr])
        .args(["--", "sh", "-c", &script])
        .env("RUST_LOG", "info,lifeboat_agent=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_until("the app to start", Duration::from_secs(60), || {
        ready.exists()
    });
    // The app writes on its own connection; after each burst it asks for a durable
    // acknowledgement. The PUT budget (a burst of 4, then one a second) would hold most of
    // these bursts back: /sync ships past it.
    let c = app_conn(&db, 4096);
    let mut synced = 0u64;
    let mut seq = 0u64;
    let mut waits = Vec::new();
    for burst in 0..12 {
        for _ in 0..25 {
            seq += 1;
            c.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                rusqlite::params![seq as i64, "x".repeat(300)],
            )
            .unwrap();
        }
        let t0 = Instant::now();
        let (code, body) = sync(&addr);
        assert_eq!(code, 200, "burst {burst}: {body}");
        assert_eq!(body["status"], "synced", "{body}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        waits.push(t0.elapsed());
        synced = seq;
    }
    // More commits, never synced, then the whole host dies right after the last /sync.
    for _ in 0..10 {
        seq += 1;
        c.execute("INSERT INTO t VALUES (?1, 'late')", [seq as i64])
            .unwrap();
    }
    killpg(Pid::from_raw(old.id() as i32), Signal::SIGKILL).unwrap();
    old.wait().unwrap();
    drop(c);

    // A new instance on an empty disk takes the dead holder's lease within its TTL (3 s)
    // plus a margin, and restores every write that /sync acknowledged.
    let t0 = Instant::now();
    let new_db = dir.path().join("new.db");
    let ready = dir.path().join("ready-new");
    let script = format!("touch {}; exec sleep 600", ready.display());
    let mut new = Agent::start(
        &[
            "run",
            "--db",
            new_db.to_str().unwrap(),
            "--replica",
            &url,
            "--lease-ttl",
            "3s",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &dir.path().join("new.log"),
    );
    wait_until("the new instance's app", Duration::from_secs(60), || {
        if let Some(s) = new.child.try_wait().unwrap() {
            panic!("exited {s}: {}", new.log_text());
        }
        ready.exists()
    });
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(3 + 10),
        "took over after {took:?}; log:\n{}",
        new.log_text()
    );
    assert!(
        new.log_text().contains("taking the lease over"),
        "{}",
        new.log_text()
    );
    let have = rows(&new_db);
    let missing: Vec<_> = (1..=synced).filter(|s| !have.contains(s)).collect();
    assert!(missing.is_empty(), "synced writes lost: {missing:?}");
    waits.sort();
    eprintln!(
        "taken over {took:?} after the kill; {synced} synced writes all restored, {} of the 10 \
         unsynced ones too; /sync after 25 commits took {:?} (median), {:?} (max)",
        have.len() as u64 - synced,
        waits[waits.len() / 2],
        waits.last().unwrap()
    );
    // The app (sleep) ends on the forwarded SIGTERM: 143.
    let log = new.log_text();
    assert_eq!(new.stop().code(), Some(143), "{log}");
}

#[test]
fn replicate_with_the_lease_does_not_hand_over_and_releases_it_at_its_last_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("replica").display());
    let db = dir.path().join("a.db");
    let c = app_conn(&db, 4096);
    c.execute_batch("CREATE TABLE t(seq INTEGER PRIMARY KEY, pad TEXT)")
        .unwrap();
    let mut holder = Agent::start(
        &[
            "replicate",
            "--lease",
            "--lease-ttl",
            "2s",
            db.to_str().unwrap(),
            &url,
        ],
        &dir.path().join("holder.log"),
    );
    holder.wait_for_log("replicating");
    for seq in 1..=40 {
        c.execute("INSERT INTO t VALUES (?1, 'x')", [seq]).unwrap();
    }
    // A `run` asks for a handoff; `replicate` does not answer, and keeps renewing: the new
    // instance gives up at its handoff timeout (at least two TTLs), without starting its app.
    let b = dir.path().join("b.db");
    let started = dir.path().join("started");
    let app = format!("touch {}", started.display());
    let args = [
        "run",
        "--db",
        b.to_str().unwrap(),
        "--replica",
        &url,
        "--lease-ttl",
        "2s",
        "--handoff-timeout",
        "3s",
        "--",
        "sh",
        "-c",
        &app,
    ];
    let t0 = Instant::now();
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("did not hand over"), "{err}");
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert!(!started.exists() && !b.exists());
    holder.wait_for_log("does not hand over");
    // Stopped, it releases the lease at its last transaction: the next instance takes it at
    // once and restores exactly that state.
    holder.stop_ok();
    let t0 = Instant::now();
    let mut next = Agent::start(&args, &dir.path().join("next.log"));
    assert_eq!(
        next.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        next.log_text()
    );
    let log = next.log_text();
    assert!(log.contains("released by its previous holder"), "{log}");
    assert!(
        t0.elapsed() < Duration::from_secs(2 * 2),
        "no waiting for an expiry: {:?}",
        t0.elapsed()
    );
    assert!(started.exists());
    assert_eq!(rows(&b), (1..=40).collect());
}
