//! `lifeboat run`: boot-time restore, readiness, signal forwarding, exit status, stale disks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::*;

fn run_agent(db: &Path, replica: &Path, log: &Path, script: &str, extra: &[&str]) -> Agent {
    let url = format!("file://{}", replica.display());
    let mut args = vec![
        "run",
        "--db",
        db.to_str().unwrap(),
        "--replica",
        url.as_str(),
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    Agent::start(&args, log)
}

/// A replica holding 20 transactions, and the database put back to an image taken before them
/// (a stale disk). Returns the folder, the database, the replica and the old image.
fn stale_disk() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let c = app_conn(&db, 4096);
    create_schema(&c);
    drop(c);
    let old = dir.path().join("old.db");
    std::fs::copy(&db, &old).unwrap();
    let url = format!("file://{}", replica.display());
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    let c = app_conn(&db, 4096);
    for s in 0..20 {
        mixed_txn(&c, s);
    }
    drop(c);
    agent.stop_ok();
    // An old image of the disk comes back.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::copy(&old, &db).unwrap();
    (dir, db, replica, old)
}

/// The one database `--on-stale restore` moved aside in `dir` (`app.db.stale-<ms>`).
fn moved_aside(dir: &Path) -> String {
    let aside: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("app.db.stale-") && !n.ends_with("-wal") && !n.ends_with("-shm"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    aside.into_iter().next().unwrap()
}

#[test]
fn signals_are_forwarded_and_the_apps_exit_status_is_returned() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let sigs = [
        (Signal::SIGINT, "INT"),
        (Signal::SIGTERM, "TERM"),
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGUSR2, "USR2"),
    ];
    for (i, (sig, name)) in sigs.iter().enumerate() {
        let ready = dir.path().join(format!("ready-{name}"));
        let code = 20 + i;
        let script = format!(
            "trap 'exit {code}' {name}; touch {}; while true; do sleep 0.05; done",
            ready.display()
        );
        let mut agent = run_agent(
            &db,
            &replica,
            &dir.path().join(format!("{name}.log")),
            &script,
            &[],
        );
        wait_until(
            &format!("the app to start ({name})"),
            Duration::from_secs(60),
            || ready.exists(),
        );
        agent.signal(*sig);
        let status = agent.wait(Duration::from_secs(60));
        assert_eq!(
            status.code(),
            Some(code as i32),
            "{name}: lifeboat must forward the signal and exit with the app's status; log:\n{}",
            agent.log_text()
        );
    }
}

#[test]
fn the_app_starts_only_after_the_first_sync() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    // The app checks, as its first act, that a snapshot is already in the replica.
    let script = format!(
        "ls {}/generations/*/snapshots/*.lbsnap >/dev/null 2>&1 && exit 0 || exit 3",
        replica.display()
    );
    let mut agent = run_agent(&db, &replica, &dir.path().join("a.log"), &script, &[]);
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", agent.log_text());
}

#[test]
fn a_wiped_disk_is_restored_on_boot_and_a_clean_stop_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    // First boot: empty disk, empty replica; the app writes and exits cleanly.
    let writer = format!(
        "python3 -c \"import sqlite3; c=sqlite3.connect('{}'); c.execute('CREATE TABLE t(x)'); [(c.execute('INSERT INTO t VALUES (?)', (i,)), c.commit()) for i in range(300)]\"",
        db.display()
    );
    let mut agent = run_agent(&db, &replica, &dir.path().join("a.log"), &writer, &[]);
    assert_eq!(
        agent.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        agent.log_text()
    );
    let before = pages(&db);
    let rows: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 300, "the app's writes are in the database");
    // The disk is wiped.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut agent = run_agent(&db, &replica, &dir.path().join("b.log"), "exit 0", &[]);
    assert_eq!(
        agent.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        agent.log_text()
    );
    assert_same_pages(&pages(&db), &before);
}

#[test]
fn a_stale_disk_is_refused_with_an_explanation() {
    let (dir, db, replica, old) = stale_disk();
    let mut agent = run_agent(&db, &replica, &dir.path().join("b.log"), "exit 0", &[]);
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", agent.log_text());
    let log = agent.log_text();
    assert!(
        log.contains("stale disk")
            && log.contains("--on-stale restore")
            && log.contains("--on-stale keep"),
        "{log}"
    );
    // The refusal left the old file alone.
    assert_same_pages(&file_pages(&db), &file_pages(&old));
    // --on-stale restore: the old file is moved aside, not deleted, and the backup comes back.
    let mut agent = run_agent(
        &db,
        &replica,
        &dir.path().join("c.log"),
        "exit 0",
        &["--on-stale", "restore"],
    );
    assert_eq!(
        agent.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        agent.log_text()
    );
    let aside = moved_aside(dir.path());
    assert_same_pages(&file_pages(&dir.path().join(&aside)), &file_pages(&old));
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM marks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        n, 20,
        "the restored database holds every transaction of the backup"
    );
    drop(c);
    // --on-stale keep: the local file stays and becomes a new generation.
    std::fs::copy(&old, &db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let mut agent = run_agent(
        &db,
        &replica,
        &dir.path().join("d.log"),
        "exit 0",
        &["--on-stale", "keep"],
    );
    assert_eq!(
        agent.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        agent.log_text()
    );
    let c = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM marks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "--on-stale keep keeps the local database");
}

#[test]
fn a_clean_restart_on_a_persistent_disk_resumes_without_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let writer = format!(
        "python3 -c \"import sqlite3; c=sqlite3.connect('{}'); c.execute('CREATE TABLE IF NOT EXISTS t(x)'); [(c.execute('INSERT INTO t VALUES (?)', (i,)), c.commit()) for i in range(50)]\"",
        db.display()
    );
    for round in 0..3 {
        let mut agent = run_agent(
            &db,
            &replica,
            &dir.path().join(format!("{round}.log")),
            &writer,
            &[],
        );
        assert_eq!(
            agent.wait(Duration::from_secs(60)).code(),
            Some(0),
            "{}",
            agent.log_text()
        );
        if round > 0 {
            assert!(
                agent.log_text().contains("resuming generation"),
                "{}",
                agent.log_text()
            );
        }
    }
    let out = dir.path().join("out.db");
    restore_and_compare(&format!("file://{}", replica.display()), &out, &db);
    let rows: i64 = rusqlite::Connection::open(&out)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 150, "three rounds of 50 transactions");
}

#[test]
fn scheduled_drills_run_while_the_app_runs_and_show_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let stop = dir.path().join("stop");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let script = format!(
        "python3 -c \"import sqlite3; c=sqlite3.connect('{}'); c.execute('PRAGMA journal_mode=WAL'); c.execute('CREATE TABLE t(x)'); [(c.execute('INSERT INTO t VALUES (?)', (i,)), c.commit()) for i in range(20)]\" && while [ ! -f {} ]; do sleep 0.05; done",
        db.display(),
        stop.display()
    );
    let mut agent = run_agent(
        &db,
        &replica,
        &dir.path().join("a.log"),
        &script,
        &["--drill-interval", "1s", "--health-addr", &addr],
    );
    wait_until("a stored drill report", Duration::from_secs(60), || {
        !files_with_suffix(&replica.join("drills"), ".json").is_empty()
    });
    wait_until("the drill in /metrics", Duration::from_secs(30), || {
        http_get(port, "/metrics").is_some_and(|(_, m)| {
            m.lines()
                .any(|l| l.starts_with("lifeboat_last_drill_success{") && l.ends_with(" 1"))
                && m.contains("lifeboat_last_drill_rto_seconds{")
        })
    });
    std::fs::write(&stop, b"").unwrap();
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", agent.log_text());
    let report = &files_with_suffix(&replica.join("drills"), ".json")[0];
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert!(agent.log_text().contains("drill passed"));
}

#[test]
fn a_stale_disk_is_refused_even_when_the_replica_was_unreachable_at_boot() {
    let (dir, db, replica, old) = stale_disk();
    // The replica cannot be read at boot (its folder is a file for now).
    let moved = dir.path().join("replica.moved");
    std::fs::rename(&replica, &moved).unwrap();
    std::fs::write(&replica, b"not a folder").unwrap();
    // Without the lease (which needs the replica at boot, so would not start at all).
    let mut agent = run_agent(
        &db,
        &replica,
        &dir.path().join("b.log"),
        "exit 0",
        &["--no-lease"],
    );
    agent.wait_for_log("cannot read replica state");
    std::fs::remove_file(&replica).unwrap();
    std::fs::rename(&moved, &replica).unwrap();
    let status = agent.wait(Duration::from_secs(90));
    let log = agent.log_text();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("stale disk") && log.contains("--on-stale restore"),
        "{log}"
    );
    // Nothing of the stale disk reached the replica.
    assert_eq!(
        std::fs::read_dir(replica.join("generations"))
            .unwrap()
            .count(),
        1
    );
    assert_same_pages(&file_pages(&db), &file_pages(&old));
}

#[test]
fn an_overlapping_deploy_gets_its_own_generation_instead_of_forking_the_old_one() {
    // Render's zero-downtime deploy: the new instance boots from the backup while the old one
    // still runs and may still take writes.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let replica = dir.path().join("replica");
    let url = format!("file://{}", replica.display());
    let stop_a = dir.path().join("stop-a");
    let insert = |db: &Path, from: u32, n: u32| {
        format!(
            "python3 -c \"import sqlite3; c=sqlite3.connect('{}'); c.execute('CREATE TABLE IF NOT EXISTS t(x)'); [(c.execute('INSERT INTO t VALUES (?)', (i,)), c.commit()) for i in range({from}, {})]\"",
            db.display(),
            from + n
        )
    };
    let script_a = format!(
        "{} && touch {}/a-wrote && while [ ! -f {} ]; do sleep 0.05; done && {}",
        insert(&a, 0, 30),
        dir.path().display(),
        stop_a.display(),
        insert(&a, 1000, 5)
    );
    // Without the writer lease (tests/lease.rs has the overlapping deploy with it).
    let mut old = run_agent(
        &a,
        &replica,
        &dir.path().join("a.log"),
        &script_a,
        &["--no-lease"],
    );
    wait_until("the old instance's writes", Duration::from_secs(60), || {
        dir.path().join("a-wrote").exists()
    });
    old.wait_for_log("segment uploaded");
    // The new instance: an empty disk, restored from the backup; it writes and stops.
    let mut new = run_agent(
        &b,
        &replica,
        &dir.path().join("b.log"),
        &insert(&b, 2000, 7),
        &["--no-lease"],
    );
    assert_eq!(
        new.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        new.log_text()
    );
    assert!(
        new.log_text().contains("new generation"),
        "{}",
        new.log_text()
    );
    // The old instance takes a few more writes before it is stopped.
    std::fs::write(&stop_a, b"").unwrap();
    assert_eq!(
        old.wait(Duration::from_secs(60)).code(),
        Some(0),
        "{}",
        old.log_text()
    );

    // No fork: verify is clean, the newest state is the new instance's, and the old
    // instance's late writes are kept in its own generation.
    let o = run(&["verify", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let out = dir.path().join("out.db");
    restore_and_compare(&url, &out, &b);
    let o = run(&["generations", &url, "--json"]);
    let gens: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(gens.as_array().unwrap().len(), 2, "{gens}");
    let first = gens[0]["generation"].as_str().unwrap().to_string();
    let old_out = dir.path().join("old.db");
    let o = run(&[
        "restore",
        &url,
        "-o",
        old_out.to_str().unwrap(),
        "--generation",
        &first,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n: i64 = rusqlite::Connection::open(&old_out)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        n,
        35,
        "the old generation holds every write of the old instance: {gens} {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// `--on-stale restore` moves a stale database aside *with* its `-wal` and `-shm` (a disk image
/// taken while the app ran, a transaction still only in its WAL): the set moves together,
/// unaltered, and still opens with that transaction; the restored database holds the replica's
/// state and nothing of the stale WAL.
#[test]
fn on_stale_restore_moves_a_database_with_its_wal_and_shm_aside_together() {
    let (dir, db, replica, _old) = stale_disk();
    // The stale image gets a transaction that lives only in its WAL: the files are copied while
    // a connection holds them (closing the last connection would checkpoint and delete the WAL).
    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    let c = app_conn(&db, 4096);
    c.execute_batch(
        "PRAGMA wal_autocheckpoint=0; INSERT INTO marks(seq, t, pad) VALUES (999, 0, 'stale');",
    )
    .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        std::fs::copy(
            format!("{}{suffix}", db.display()),
            image.join(format!("app.db{suffix}")),
        )
        .unwrap();
    }
    drop(c);
    for suffix in ["", "-wal", "-shm"] {
        std::fs::copy(
            image.join(format!("app.db{suffix}")),
            format!("{}{suffix}", db.display()),
        )
        .unwrap();
    }
    let wal_len = std::fs::metadata(image.join("app.db-wal")).unwrap().len();
    assert!(wal_len > 0, "the stale image has a WAL");

    let mut agent = run_agent(
        &db,
        &replica,
        &dir.path().join("b.log"),
        "exit 0",
        &["--on-stale", "restore"],
    );
    let status = agent.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", agent.log_text());

    // The three files moved aside under one name; the database and its WAL byte for byte (the
    // -shm is an index that any reader rewrites: its presence is what counts).
    let aside = moved_aside(dir.path());
    for suffix in ["", "-wal", "-shm"] {
        let moved = dir.path().join(format!("{aside}{suffix}"));
        let bytes = std::fs::read(&moved).unwrap_or_else(|e| panic!("{}: {e}", moved.display()));
        if suffix != "-shm" {
            assert!(
                bytes == std::fs::read(image.join(format!("app.db{suffix}"))).unwrap(),
                "{} is not the stale image's app.db{suffix}",
                moved.display()
            );
        }
    }
    // The set aside still opens with the transaction that was only in its WAL.
    let scratch = dir.path().join("aside-copy");
    std::fs::create_dir(&scratch).unwrap();
    for suffix in ["", "-wal"] {
        std::fs::copy(
            dir.path().join(format!("{aside}{suffix}")),
            scratch.join(format!("a.db{suffix}")),
        )
        .unwrap();
    }
    let stale = rusqlite::Connection::open(scratch.join("a.db")).unwrap();
    let n: i64 = stale
        .query_row("SELECT count(*) FROM marks WHERE seq = 999", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 1, "the stale WAL's transaction is kept aside");
    // The restored database is the replica's state, with nothing of the stale WAL.
    let c = rusqlite::Connection::open(&db).unwrap();
    let (n, stale_rows): (i64, i64) = c
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE seq = 999) FROM marks",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((n, stale_rows), (20, 0), "{}", agent.log_text());
}
