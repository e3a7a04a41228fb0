//! Replication to a local folder, driven through the binary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::*;

fn file_url(p: &std::path::Path) -> String {
    format!("file://{}", p.display())
}

#[test]
fn continuous_mixed_writes_restore_page_for_page_at_each_page_size() {
    for ps in [1024u32, 4096, 65536] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let replica = dir.path().join("replica");
        create_schema(&app_conn(&db, ps));
        let agent = Agent::replicate(&db, &file_url(&replica), &dir.path().join("agent.log"));
        let w = Writer::start(&db, ps, 0, 600);
        assert_eq!(w.finish(), 600);
        agent.stop_ok();
        restore_and_compare(&file_url(&replica), &dir.path().join("out.db"), &db);
    }
}

#[test]
fn agent_killed_and_restarted_25_times_during_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_schema(&app_conn(&db, 4096));
    let url = file_url(&replica);
    let w = Writer::start(&db, 4096, 0, u64::MAX);
    for i in 0..25 {
        let before = count_files(&replica);
        let agent = Agent::replicate(&db, &url, &dir.path().join(format!("agent-{i}.log")));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while count_files(&replica) <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "agent {i} uploaded nothing in 30 s; log:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        agent.kill();
    }
    let n = w.halt();
    assert!(n > 0);
    let agent = Agent::replicate(&db, &url, &dir.path().join("agent-final.log"));
    agent.stop_ok();
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

#[test]
fn second_agent_on_the_same_database_is_refused_and_the_replica_stays_sound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_schema(&app_conn(&db, 4096));
    let url = file_url(&replica);
    let first = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    let w = Writer::start(&db, 4096, 0, 300);
    let mut second = Agent::start(
        &["replicate", db.to_str().unwrap(), &url],
        &dir.path().join("b.log"),
    );
    let status = second.wait(Duration::from_secs(30));
    assert!(!status.success(), "a second agent must refuse to run");
    let msg = second.log_text();
    assert!(
        msg.contains("already replicating") && msg.contains("app.db"),
        "the refusal must say why and name the database: {msg}"
    );
    w.finish();
    first.stop_ok();
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

#[test]
fn app_checkpoints_while_the_agent_is_stopped_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = file_url(&replica);
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let mut seq = 0;
    for mode in ["PASSIVE", "RESTART", "TRUNCATE", "FULL"] {
        let agent = Agent::replicate(&db, &url, &dir.path().join(format!("{mode}.log")));
        for _ in 0..50 {
            mixed_txn(&c, seq);
            seq += 1;
        }
        agent.stop_ok();
        for _ in 0..50 {
            mixed_txn(&c, seq);
            seq += 1;
        }
        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
            .unwrap();
        for _ in 0..20 {
            mixed_txn(&c, seq);
            seq += 1;
        }
    }
    let agent = Agent::replicate(&db, &url, &dir.path().join("last.log"));
    agent.stop_ok();
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

#[test]
fn sigint_also_syncs_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = file_url(&replica);
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let mut agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    for s in 0..100 {
        mixed_txn(&c, s);
    }
    agent.signal(Signal::SIGINT);
    assert!(agent.wait(Duration::from_secs(60)).success());
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

#[test]
fn restore_refuses_to_overwrite_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let url = file_url(&replica);
    create_schema(&app_conn(&db, 4096));
    Agent::replicate(&db, &url, &dir.path().join("a.log")).stop_ok();
    let out = dir.path().join("existing.db");
    std::fs::write(&out, b"precious").unwrap();
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap(), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_pages(&file_pages(&out), &pages(&db));
}

/// The WAL's salts (bytes 16..24 of its header): new salts mean the log restarted.
fn wal_salts(wal: &std::path::Path) -> Option<Vec<u8>> {
    let mut b = [0u8; 24];
    let f = std::fs::File::open(wal).ok()?;
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0).ok()?;
    Some(b[16..24].to_vec())
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The number of frames in the WAL's current cycle, from the WAL-index header at the start of
/// the `-shm` file (SQLite's `mxFrame`, native-endian at offset 16), read without SQLite.
fn shm_frames(shm: &std::path::Path) -> u64 {
    let mut b = [0u8; 20];
    std::fs::File::open(shm)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0))
        .map_or(0, |()| {
            u64::from(u32::from_ne_bytes([b[16], b[17], b[18], b[19]]))
        })
}

/// Creates `app.db` in `dir` with the test schema and starts `replicate` on it, to a folder
/// replica `dir/replica`, with a configuration file holding `options` as well.
fn start_configured(dir: &std::path::Path, options: &str) -> (PathBuf, PathBuf, Agent) {
    let db = dir.join("app.db");
    let replica = dir.join("replica");
    create_schema(&app_conn(&db, 4096));
    let cfg = dir.join("lifeboat.toml");
    let url = file_url(&replica);
    let head = format!(
        "[[databases]]\npath = \"{}\"\nreplicas = [\"{url}\"]\n",
        db.display()
    );
    std::fs::write(&cfg, head + options).unwrap();
    let mut agent = Agent::start(
        &["replicate", "--config", cfg.to_str().unwrap()],
        &dir.join("a.log"),
    );
    agent.wait_for_log("replicating");
    (db, replica, agent)
}

#[test]
fn sustained_writes_let_the_wal_restart_so_it_stays_bounded() {
    let _disk = exclusive_disk();
    let dir = tempfile::tempdir().unwrap();
    // Four PUTs a second rather than one: the log restarts once a pass has shipped up to the pin,
    // so the file's size scales with the time between passes; this keeps the run short on a
    // slow machine without changing what is checked. No truncation (the file only shrinks by a
    // truncation, checked below): what is measured is the restart.
    let (db, replica, agent) = start_configured(
        dir.path(),
        "puts-per-second = 4.0\ntruncate-wal-bytes = 1099511627776\n",
    );
    let url = file_url(&replica);
    let (wal, shm) = (dir.path().join("app.db-wal"), dir.path().join("app.db-shm"));
    // A restart shows as new salts in the header. (Not as the header's checkpoint sequence:
    // SQLite writes the writing connection's own count of restarts there, which stays put when
    // another connection, such as the agent's TRUNCATE, restarted the log.) The first header
    // seen is the log's start, not a restart.
    let mut last_salts = None;
    let mut restarts = 0;
    // Frames appended through the log (the longest each cycle was seen to be, summed), and
    // the largest the file was seen: without restarts the two would be the same.
    let (mut frames_before, mut cycle_frames, mut max_wal) = (0u64, 0u64, 0u64);
    let frame = 4096 + 24;
    // The writer never pauses between transactions: the hardest case for letting SQLite
    // restart the log, since that needs a moment with every frame checkpointed. Without the
    // agent's help the log would never restart while it runs. Its busy timeout is the second
    // that design.md asks apps to allow: the agent's locked step must stay well inside it.
    let w = Writer::start_with_busy_timeout(&db, 4096, Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let now = wal_salts(&wal);
        if now.is_some() && now != last_salts {
            if last_salts.is_some() {
                restarts += 1;
                frames_before += cycle_frames;
                cycle_frames = 0;
            }
            last_salts = now;
        }
        cycle_frames = cycle_frames.max(shm_frames(&shm));
        max_wal = max_wal.max(file_len(&wal));
        let appended = (frames_before + cycle_frames) * frame;
        // Done once the log restarted 3 times and holds at most a quarter of what went through.
        if restarts >= 3 && max_wal * 4 <= appended {
            break;
        }
        assert!(
            w.is_running(),
            "the app's writer stopped (see its panic above); agent log:\n{}",
            agent.log_text()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "after 300 s: {restarts} WAL restarts, {appended} bytes appended, the file at most \
             {max_wal} bytes; agent log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let n = w.halt();
    agent.stop_ok();
    let appended = (frames_before + cycle_frames) * frame;
    eprintln!(
        "{n} transactions, {appended} bytes through the WAL, {restarts} restarts, the file at most {max_wal} bytes"
    );
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

#[test]
fn config_file_replicates_several_databases_to_several_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    for db in [&a, &b] {
        create_schema(&app_conn(db, 4096));
    }
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [\"file://${{BACKUP_ROOT}}/a1\", \"file://${{BACKUP_ROOT}}/a2\"]\n\n\
             [[databases]]\npath = \"{}\"\nreplicas = [\"file://${{BACKUP_ROOT}}/b1\"]\nputs-per-second = 5.0\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let root = dir.path().display().to_string();
    let mut agent = Agent::start_env(
        &["replicate", "--config", cfg.to_str().unwrap()],
        &dir.path().join("agent.log"),
        &[("BACKUP_ROOT", root.as_str())],
    );
    agent.wait_for_log("replicating");
    let (ca, cb) = (app_conn(&a, 4096), app_conn(&b, 4096));
    for s in 0..60 {
        mixed_txn(&ca, s);
        mixed_txn(&cb, s + 1000);
    }
    agent.stop_ok();
    for (db, r) in [(&a, "a1"), (&a, "a2"), (&b, "b1")] {
        let url = format!("file://{}", dir.path().join(r).display());
        restore_and_compare(&url, &dir.path().join(format!("{r}.out.db")), db);
    }
}

#[test]
fn a_config_naming_an_unset_variable_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        "[[databases]]\npath = \"/x.db\"\nreplicas = [\"s3://b/${LIFEBOAT_TEST_UNSET_VAR}\"]\n",
    )
    .unwrap();
    let o = run(&["replicate", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("LIFEBOAT_TEST_UNSET_VAR") && err.contains("lifeboat.toml"),
        "{err}"
    );
}

#[test]
fn restored_database_opens_in_the_stock_sqlite3_shell() {
    let Ok(out) = std::process::Command::new("sqlite3")
        .arg("-version")
        .output()
    else {
        // scripts/test.sh installs the shell; CI must not silently skip this check.
        assert!(std::env::var("CI").is_err(), "sqlite3 shell missing in CI");
        eprintln!("sqlite3 shell not installed; skipping");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = file_url(&dir.path().join("replica"));
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    for s in 0..50 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    let restored = dir.path().join("restored.db");
    restore_and_compare(&url, &restored, &db);
    let o = std::process::Command::new("sqlite3")
        .arg(&restored)
        .arg("PRAGMA integrity_check; SELECT count(*) FROM marks;")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n50\n");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "--log-format",
        "json",
        "restore",
        &file_url(&dir.path().join("empty")),
        "-o",
        dir.path().join("x.db").to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "restoring an empty replica must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    let logs: Vec<&str> = err.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!logs.is_empty(), "no JSON log line in {err}");
    for l in logs {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
}

#[test]
fn a_wal_grown_past_the_bound_is_truncated_and_nothing_is_lost() {
    // Within max-wal-bytes (4 GiB here: this writer fills hundreds of MB between two restarts).
    truncated_at_most_every_10_s(4 << 30);
}

#[test]
fn past_max_wal_bytes_with_every_replica_shipping_the_wal_is_cut_as_rarely() {
    // Regression: past max-wal-bytes every restart cut the file although the replica shipped;
    // under a writer that never pauses that was a cut every second or so, each holding the
    // app's writes (the unpaced benchmark lost a sixth of its throughput). max-wal-bytes is
    // what a failing replica may hold: `faults::max_wal_bytes_holds_while_the_replica_is_…`.
    truncated_at_most_every_10_s(2_000_000);
}

/// A writer that never pauses, a healthy replica and a WAL past `truncate-wal-bytes` (2 MB):
/// the file is cut back, no more than once per 10 s, and the replica restores to the database.
fn truncated_at_most_every_10_s(max_wal_bytes: u64) {
    let _disk = exclusive_disk();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_schema(&app_conn(&db, 4096));
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [\"file://{}\"]\ncheckpoint-pages = 200\ntruncate-wal-bytes = 2000000\nmax-wal-bytes = {max_wal_bytes}\n",
            db.display(),
            replica.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut agent = Agent::start(
        &["replicate", "--config", cfg.to_str().unwrap()],
        &dir.path().join("a.log"),
    );
    agent.wait_for_log("replicating");
    let wal = dir.path().join("app.db-wal");
    // No TRUNCATE checkpoints of the app's own: only the agent's can shrink the file. The app
    // has a real app's busy timeout: the cut of a large file waits for the disk, under SQLite's
    // write lock (see design.md).
    let w = Writer::start_without_checkpoints(&db, 4096);
    // The file keeps its largest size when the log restarts; only a truncation makes it shrink.
    // So: seen past the bound, then seen smaller than it was.
    let mut peak = 0;
    wait_until(
        "the WAL file to pass 2 MB and shrink",
        Duration::from_secs(120),
        || {
            let len = file_len(&wal);
            peak = peak.max(len);
            peak > 2_000_000 && len < peak / 2
        },
    );
    // With every replica shipping, the file is cut at most once every 10 s (`TRUNCATE_EVERY`):
    // under this writer it grows back within a second, and every cut holds the app's writes.
    // So, three restarts later (each one a cut before), at most one cut per 10 s since the
    // agent started, and the first. (The agent logs its restarts at debug level, on in these
    // tests.)
    let count = |text: &str| agent.log_text().matches(text).count();
    let restarts = count("checkpoint under the agent's write lock");
    wait_until("three more restarts", Duration::from_secs(120), || {
        count("checkpoint under the agent's write lock") >= restarts + 3
    });
    let (cuts, allowed) = (
        count("WAL truncated"),
        1 + (started.elapsed().as_secs() / 10) as usize,
    );
    assert!(
        cuts <= allowed,
        "{cuts} cuts of the WAL in {:?}:\n{}",
        started.elapsed(),
        agent
            .log_text()
            .lines()
            .filter(|l| l.contains("WAL truncated") || l.contains("write lock"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every replica shipped throughout (the claim is about a healthy one).
    let log = agent.log_text();
    assert!(
        !log.contains("upload failed") && !log.contains("too far behind"),
        "the replica failed:\n{log}"
    );
    let n = w.halt();
    assert!(n > 0);
    agent.stop_ok();
    restore_and_compare(
        &format!("file://{}", replica.display()),
        &dir.path().join("out.db"),
        &db,
    );
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn an_idle_database_costs_the_agent_no_cpu() {
    // Regression: the agent woke on the file-system events of its own reads of the WAL, so an
    // idle database kept it busy on a whole core.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let c = app_conn(&db, 4096);
    create_schema(&c);
    for s in 0..3 {
        mixed_txn(&c, s);
    }
    let url = format!("file://{}", dir.path().join("replica").display());
    let mut agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    agent.wait_for_log("snapshot uploaded");
    mixed_txn(&c, 3);
    agent.wait_for_log("segment uploaded");
    let pid = agent.child.id();
    let before = cpu_seconds(pid);
    // An observation window, not a synchronisation: the database stays idle throughout.
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.3,
        "an idle agent used {used:.2} CPU seconds in 3 s"
    );
    agent.stop_ok();
}

#[test]
fn snapshots_staged_by_a_killed_agent_are_cleaned_up_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    create_schema(&app_conn(&db, 4096));
    // A process that has exited, and one that is alive (this test).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let left = staging.join(format!("lifeboat-snapshot-{gone_pid}-abc"));
    let live = staging.join(format!("lifeboat-snapshot-{}-def", std::process::id()));
    let other = staging.join("someone-elses-file");
    for f in [&left, &live, &other] {
        std::fs::write(f, b"a database image").unwrap();
    }
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [\"file://{}\"]\nstaging-dir = \"{}\"\n",
            db.display(),
            dir.path().join("replica").display(),
            staging.display()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(
        &["replicate", "--config", cfg.to_str().unwrap()],
        &dir.path().join("a.log"),
    );
    agent.wait_for_log("snapshot uploaded");
    assert!(!left.exists(), "a dead agent's staged snapshot is removed");
    assert!(live.exists() && other.exists(), "nothing else is touched");
    agent.stop_ok();
}

/// A snapshot falls due while the WAL is empty (the app checkpointed it away while the agent
/// was stopped): the agent takes it after the next commit, and a stop meanwhile is a clean,
/// complete final sync rather than a wait for a snapshot no commit will bring.
#[test]
fn a_snapshot_due_on_an_empty_wal_waits_for_the_next_commit_and_never_blocks_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = file_url(&dir.path().join("replica"));
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let rare = [("LIFEBOAT_SNAPSHOT_SEGMENTS", "1000")];
    let agent = Agent::replicate_env(&db, &url, &dir.path().join("a.log"), &rare);
    for s in 0..20 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    // Every segment is shipped and none is covered by a snapshot; the app empties the log.
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    assert_eq!(file_len(&dir.path().join("app.db-wal")), 0);

    let due = [("LIFEBOAT_SNAPSHOT_SEGMENTS", "1")];
    let mut agent = Agent::replicate_env(&db, &url, &dir.path().join("b.log"), &due);
    assert!(
        agent.log_text().contains("resuming generation"),
        "the agent resumes its generation: {}",
        agent.log_text()
    );
    let stopping = std::time::Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent.wait(Duration::from_secs(60));
    assert!(
        status.success() && agent.log_text().contains("final sync complete"),
        "a stop with a snapshot due on an empty log exits cleanly ({status} after {:?}): {}",
        stopping.elapsed(),
        agent.log_text()
    );

    let mut agent = Agent::replicate_env(&db, &url, &dir.path().join("c.log"), &due);
    assert!(!agent.log_text().contains("scheduled snapshot uploaded"));
    mixed_txn(&c, 20);
    agent.wait_for_log("scheduled snapshot uploaded");
    agent.stop_ok();
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

/// After the agent lets the log restart, its pin reads the database file alone (read mark zero),
/// and SQLite copies no frame back into the database while a reader holds that mark. The tail
/// the agent carried over the restart may then wait seconds for the PUT budget; meanwhile the
/// pin must move into the new cycle, or every autocheckpoint of the app sorts the whole growing
/// log and gives up (a writer committing flat out fell to a tenth of its speed in the
/// benchmark). Seen from the app: its own PASSIVE checkpoint copies frames of the new cycle
/// before the carried tail is shipped.
#[test]
fn the_apps_checkpoints_copy_the_new_log_while_a_carried_tail_waits_for_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    // One PUT every 10 s, and a burst of two: the first snapshot and the first segment. The log
    // restarts after that first segment's pass (from one frame on), and the next PUT, which
    // ships the carried tail, is then 10 s away.
    let (db, replica, mut agent) = start_configured(
        dir.path(),
        "puts-per-second = 0.1\nput-burst = 2.0\ncheckpoint-pages = 1\n",
    );
    let url = file_url(&replica);
    agent.wait_until_known();
    // The first segment ships before the writer starts, so the restart comes after its pass: a
    // restart before it put the carried tail in that first pass, which shipped it at once.
    mixed_txn_only(&app_conn(&db, 4096), 1 << 40);
    agent.wait_for_log("segment uploaded");
    // A web app's writer: commits flat out, its autocheckpoint on, no checkpoint of its own (a
    // RESTART or TRUNCATE one waits for every reader, the agent's pin included).
    let w = Writer::start_without_checkpoints(&db, 4096);
    // A restart: the agent's checkpoint under its write lock copied every frame.
    let complete = |line: &str| {
        let n = |key: &str| {
            line.split(key)
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .map(str::to_owned)
        };
        line.contains("checkpoint under the agent's write lock")
            && line.contains("busy: false")
            && n("log_frames: ").is_some()
            && n("log_frames: ") == n("checkpointed: ")
    };
    agent.wait_until(
        "a complete checkpoint under the agent's lock",
        Duration::from_secs(60),
        || agent.log_text().lines().any(complete),
    );
    let shipped = count_files(&replica);
    // In the new cycle, frames copied back (0 < nBackfill) while more remain (< mxFrame): the
    // old cycle, fully copied, shows nBackfill == mxFrame; a stalled new one shows 0. Both from
    // the `-shm` file: SQLite's WalCkptInfo (nBackfill at offset 96) and the WAL-index header.
    let shm = dir.path().join("app.db-shm");
    let backfilled = || {
        let mut b = [0u8; 100];
        std::fs::File::open(&shm)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0))
            .map_or(0, |()| {
                u64::from(u32::from_ne_bytes([b[96], b[97], b[98], b[99]]))
            })
    };
    let mut seen = (0, 0);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let (done, log) = (backfilled(), shm_frames(&shm));
        seen = (log, done);
        if 0 < done && done < log {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let carried_still_waiting = count_files(&replica) == shipped;
    let n = w.halt();
    assert!(
        0 < seen.1 && seen.1 < seen.0,
        "the app's checkpoints copied nothing of the new log cycle in 4 s (frames {}, copied \
         {}); agent log:\n{}",
        seen.0,
        seen.1,
        agent.log_text()
    );
    assert!(
        carried_still_waiting,
        "the carried tail was shipped meanwhile, so this run did not test the pin's move; \
         agent log:\n{}",
        agent.log_text()
    );
    agent.stop_ok();
    assert!(n > 0);
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

/// Starts an agent whose PUT budget its first snapshot and first segment spend (the next pass is
/// then 50 s away), has `write` commit a backlog meanwhile, then stops the agent, whose final
/// sync ships the backlog whatever the budget. Checks the restore, and returns the backlog's
/// segments (first and last txid, in order) and the size the WAL had reached.
fn ship_a_backlog(
    dir: &std::path::Path,
    write: impl FnOnce(&rusqlite::Connection),
) -> (Vec<(u64, u64)>, u64) {
    let (db, replica, mut agent) = start_configured(
        dir,
        // No restart of the log meanwhile: its carried tail would ship as a segment of its own.
        "puts-per-second = 0.02\nput-burst = 2.0\ncheckpoint-pages = 1000000\n",
    );
    let url = file_url(&replica);
    agent.wait_until_known();
    let c = app_conn(&db, 4096);
    mixed_txn(&c, 0);
    agent.wait_for_log("segment uploaded");
    let before = count_files(&replica);
    write(&c);
    let wal = file_len(&dir.join("app.db-wal"));
    assert_eq!(
        count_files(&replica),
        before,
        "the budget was to hold the backlog back"
    );
    agent.stop_ok();
    restore_and_compare(&url, &dir.join("out.db"), &db);
    let o = run(&["segments", &url, "--json"]);
    assert!(o.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut segs: Vec<(u64, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| u64::from_str_radix(r[k].as_str().unwrap(), 16).unwrap();
            (n("first_txid"), n("last_txid"))
        })
        .collect();
    segs.sort();
    // The first holds the commit shipped before the backlog.
    (segs.split_off(1), wal)
}

#[test]
fn a_backlog_of_a_hot_page_ships_as_one_segment_past_the_old_16_mib_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (segs, wal) = ship_a_backlog(dir.path(), |c| {
        c.execute_batch(
            "CREATE TABLE hot(id INTEGER PRIMARY KEY, n INTEGER, pad TEXT);
             WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 8)
             INSERT INTO hot SELECT x, 0, printf('%.300c', 'x') FROM s;",
        )
        .unwrap();
        // One page rewritten by 6,000 commits: about 24 MB of WAL, a few hundred KB to hold.
        for i in 0..6000 {
            c.execute("UPDATE hot SET n = n + 1 WHERE id = ?1", [i % 8 + 1])
                .unwrap();
        }
    });
    assert!(
        wal > 17 << 20,
        "the backlog was to pass 16 MiB of WAL: {wal} bytes"
    );
    // Each segment costs a PUT of the budget: a backlog that is cheap to hold ships in one.
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(segs[0].1 - segs[0].0 + 1, 6002, "{segs:?}");
}

/// Creates table `wide` (one commit), then `commits` commits of ten rows of 3,000 random bytes
/// each, one row to a page.
fn wide_rows(c: &rusqlite::Connection, commits: usize) {
    c.execute_batch("CREATE TABLE wide(id INTEGER PRIMARY KEY, b BLOB)")
        .unwrap();
    for _ in 0..commits {
        c.execute(
            "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < 10)
             INSERT INTO wide(b) SELECT randomblob(3000) FROM s",
            [],
        )
        .unwrap();
    }
}

#[test]
fn a_backlog_of_many_distinct_pages_is_cut_at_the_segment_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (segs, wal) = ship_a_backlog(dir.path(), |c| {
        // 2,600 rows: over 10 MB of distinct pages for the encoder to hold (past its 4 MiB
        // bound), in under 16 MiB of WAL.
        wide_rows(c, 260);
    });
    assert!(wal < 16 << 20, "{wal} bytes of WAL");
    assert!(segs.len() >= 2, "one segment held every page: {segs:?}");
    // Cut at commits, contiguous, every commit of the backlog shipped.
    for w in segs.windows(2) {
        assert_eq!(w[0].1 + 1, w[1].0, "{segs:?}");
    }
    assert_eq!(segs.last().unwrap().1 - segs[0].0 + 1, 261, "{segs:?}");
}

#[test]
fn full_segments_of_a_backlog_do_not_draw_on_the_put_budget() {
    let dir = tempfile::tempdir().unwrap();
    // A PUT every 10 s, and a burst of two: the first snapshot and the first segment.
    let (db, replica, mut agent) = start_configured(
        dir.path(),
        "puts-per-second = 0.1\nput-burst = 2.0\ncheckpoint-pages = 1000000\n",
    );
    agent.wait_until_known();
    let c = app_conn(&db, 4096);
    mixed_txn(&c, 0);
    agent.wait_for_log("segment uploaded");
    // A backlog of some 60 MB of distinct pages: segments cut at the encoder's memory bound.
    wide_rows(&c, 1500);
    let backlog = 1 + 1 + 1500;
    agent.wait_until("the backlog to ship", Duration::from_secs(60), || {
        newest_shipped_txid(&replica) >= backlog
    });
    let full = files_with_suffix(&replica, ".lbseg").len() - 2;
    assert!(full >= 5, "{full} segments held the backlog");
    // The pass that drained the backlog drew nothing on the budget, so the next commit ships
    // at once. Had each of its segments spent a token, it would wait 10 s for each; had only
    // the last (partial) one, 10 s.
    let shipped = std::time::Instant::now();
    mixed_txn(&c, 1);
    agent.wait_until(
        "the commit after the backlog to ship at once",
        Duration::from_secs(4),
        || newest_shipped_txid(&replica) > backlog,
    );
    eprintln!("shipped {:?} after the backlog", shipped.elapsed());
    agent.stop_ok();
    restore_and_compare(&file_url(&replica), &dir.path().join("out.db"), &db);
}
