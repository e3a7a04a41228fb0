//! `lifeboat run` when things fail: a replica that breaks while the app runs never stops it;
//! the exit status is 75 when the app succeeded but the final sync did not, 128+N when signal N
//! ended the app; a first sync that cannot complete refuses to start the app at
//! `--ready-timeout`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// `lifeboat run --db DB --replica file://REPLICA EXTRA... -- sh -c SCRIPT`.
fn run_app(dir: &Path, replica: &Path, log: &str, script: &str, extra: &[&str]) -> Agent {
    let db = dir.join("app.db");
    let url = format!("file://{}", replica.display());
    let mut args = vec!["run", "--db", db.to_str().unwrap(), "--replica", &url];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    Agent::start(&args, &dir.join(log))
}

/// Makes a local replica unwritable and unreadable (its folder replaced by a file); returns
/// where the folder went.
fn break_replica(replica: &Path) -> std::path::PathBuf {
    let moved = replica.with_extension("moved");
    std::fs::rename(replica, &moved).unwrap();
    std::fs::write(replica, b"not a folder").unwrap();
    moved
}

fn mend_replica(replica: &Path, moved: &Path) {
    std::fs::remove_file(replica).unwrap();
    std::fs::rename(moved, replica).unwrap();
}

/// An app that beats (touches `beat` every 50 ms) until `stop` exists, then exits 0.
fn beating_app(dir: &Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let (beat, stop) = (dir.join("beat"), dir.join("stop"));
    let script = format!(
        "while [ ! -e {stop} ]; do date +%s%N > {beat}; sleep 0.05; done; exit 0",
        stop = stop.display(),
        beat = beat.display()
    );
    (script, beat, stop)
}

#[test]
fn a_replica_failing_while_the_app_runs_never_stops_it_and_a_failed_final_sync_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_schema(&app_conn(&db, 4096));
    let (script, beat, stop) = beating_app(dir.path());
    let mut agent = run_app(
        dir.path(),
        &replica,
        "a.log",
        &script,
        &["--shutdown-timeout", "2s"],
    );
    wait_until("the app to start", Duration::from_secs(60), || {
        beat.exists()
    });
    // The replica breaks while the app runs; the app goes on writing through its own connection.
    let moved = break_replica(&replica);
    let c = app_conn(&db, 4096);
    for s in 0..50 {
        mixed_txn(&c, s);
    }
    agent.wait_for_log("failed");
    // For some seconds of failures, the app keeps running and beating.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(
            agent.child.try_wait().unwrap().is_none(),
            "lifeboat run exited while the replica failed: {}",
            agent.log_text()
        );
        let b1 = std::fs::read_to_string(&beat).unwrap_or_default();
        wait_until("the app to beat again", Duration::from_secs(10), || {
            std::fs::read_to_string(&beat).unwrap_or_default() != b1
        });
    }
    // The app exits 0 while the replica is still down: its newest writes are not in the
    // replica, and lifeboat says so with 75 (EX_TEMPFAIL), not 0.
    std::fs::write(&stop, b"").unwrap();
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(75), "{}", agent.log_text());
    // Mended, a new run (nothing to restore: the local database is newer) ships it all.
    mend_replica(&replica, &moved);
    std::fs::remove_file(&stop).ok();
    let mut agent = run_app(dir.path(), &replica, "b.log", "exit 0", &[]);
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", agent.log_text());
    drop(c);
    restore_and_compare(
        &format!("file://{}", replica.display()),
        &dir.path().join("out.db"),
        &db,
    );
}

#[test]
fn an_app_killed_by_a_signal_makes_run_exit_128_plus_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("replica");
    for (sig, n) in [("KILL", 9), ("TERM", 15), ("USR1", 10)] {
        let mut agent = run_app(
            dir.path(),
            &replica,
            &format!("{sig}.log"),
            &format!("kill -{sig} $$; sleep 30"),
            &[],
        );
        let status = agent.wait(Duration::from_secs(60));
        assert_eq!(
            status.code(),
            Some(128 + n),
            "SIG{sig}: {}",
            agent.log_text()
        );
    }
}

#[test]
fn a_first_sync_that_cannot_complete_refuses_to_start_the_app_at_the_ready_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_schema(&app_conn(&db, 4096));
    std::fs::write(&replica, b"not a folder").unwrap();
    let started = dir.path().join("started");
    let began = Instant::now();
    let mut agent = run_app(
        dir.path(),
        &replica,
        "a.log",
        &format!("touch {}", started.display()),
        &["--ready-timeout", "2s"],
    );
    let status = agent.wait(Duration::from_secs(60));
    let took = began.elapsed();
    let log = agent.log_text();
    assert!(!status.success(), "{log}");
    assert!(!started.exists(), "the app must not start: {log}");
    assert!(
        log.contains("did not complete within 2s") && log.contains("--ready-timeout"),
        "{log}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "gave up after {took:?}, before the timeout"
    );
}
