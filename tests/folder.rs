//! A folder of databases replicated by one agent: `--dir-of-databases`, databases created and
//! removed while it runs, `restore --database` / `--all-databases`, `databases`, and `run`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::*;

/// Databases in the folder at start.
const TENANTS: usize = 60;

fn tenant(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("t{i:03}.db"))
}

/// The app: one connection per database, transactions spread over them until stopped.
struct App {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

impl App {
    fn start(dbs: Vec<PathBuf>) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let conns: Vec<_> = dbs.iter().map(|p| app_conn(p, 4096)).collect();
            let mut seq = 0u64;
            while !s.load(Ordering::SeqCst) {
                // A spread that touches every database, some much more than others.
                let i = (seq as usize * 7 + (seq as usize / 5)) % conns.len();
                mixed_txn(&conns[i], seq);
                seq += 1;
                d.store(seq, Ordering::SeqCst);
                // Pacing, not synchronisation: a steady app rather than a flat-out one.
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        App { stop, done, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap();
        self.done.load(Ordering::SeqCst)
    }
}

fn replica_has(root: &Path, name: &str) -> bool {
    std::fs::read_dir(root.join(name).join("generations"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

#[test]
fn a_folder_of_databases_is_replicated_as_one_and_every_database_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    for i in 0..TENANTS {
        create_schema(&app_conn(&tenant(&tenants, i), 4096));
    }
    // Not databases: a text file matching the pattern, and a file that does not match it.
    std::fs::write(tenants.join("notes.db"), "not sqlite").unwrap();
    create_schema(&app_conn(&tenants.join("other.sqlite"), 4096));
    let rep = dir.path().join("rep");
    let url = format!("file://{}", rep.display());
    // The agent's own log lives inside the folder it watches: it must not feed itself.
    let log = tenants.join("agent.log");
    let mut agent = Agent::start(
        &[
            "replicate",
            "--dir-of-databases",
            tenants.to_str().unwrap(),
            &url,
        ],
        &log,
    );
    agent.wait_for_log("replicating a folder of databases");
    wait_until(
        "every database's first snapshot",
        Duration::from_secs(60),
        || (0..TENANTS).all(|i| replica_has(&rep, &format!("t{i:03}.db"))),
    );
    assert!(!replica_has(&rep, "notes.db") && !replica_has(&rep, "other.sqlite"));

    let app = App::start((0..TENANTS).map(|i| tenant(&tenants, i)).collect());
    // A database created while the agent runs is replicated soon after its first commit.
    let late = tenants.join("late.db");
    let c = app_conn(&late, 4096);
    create_schema(&c);
    let t0 = Instant::now();
    wait_until(
        "the new database in the replica",
        Duration::from_secs(10),
        || replica_has(&rep, "late.db"),
    );
    let picked_up = t0.elapsed();
    eprintln!("late.db replicated {picked_up:?} after its first commit");
    assert!(picked_up < Duration::from_secs(3), "{picked_up:?}");
    for s in 0..50 {
        mixed_txn(&c, 10_000 + s);
    }
    // A database removed while the agent runs is released without errors.
    let gone = tenant(&tenants, 0);
    wait_until(
        "a few hundred transactions",
        Duration::from_secs(60),
        || app.done.load(Ordering::SeqCst) >= 300,
    );
    let written = app.stop();
    drop(c);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", gone.display()));
    }
    wait_until(
        "the removed database released",
        Duration::from_secs(10),
        || {
            agent
                .log_text()
                .contains("database removed: stopped replicating it")
        },
    );
    wait_until("its lock file removed", Duration::from_secs(5), || {
        !tenants.join("t000.db-lifeboat.lock").exists()
    });
    agent.signal(Signal::SIGTERM);
    let status = agent.wait(Duration::from_secs(60));
    assert!(
        status.success(),
        "agent exited {status}: {}",
        agent.log_text()
    );
    let text = agent.log_text();
    assert!(
        !text.contains("ERROR") && !text.contains("WARN"),
        "warnings or errors in the log:\n{text}"
    );
    let log_bytes = std::fs::metadata(&log).unwrap().len();
    assert!(
        log_bytes < 200_000,
        "the log grew to {log_bytes} bytes: the agent fed on its own log"
    );
    eprintln!("{written} transactions over {TENANTS} databases; log {log_bytes} bytes");

    // One database by name.
    let one = dir.path().join("late.out.db");
    let o = run(&[
        "restore",
        &url,
        "--database",
        "late.db",
        "-o",
        one.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_pages(&file_pages(&one), &pages(&late));

    // All of them: every database still in the folder restores exactly; the removed one's
    // history stays in the replica and restores too (verified by restore itself).
    let all = dir.path().join("all");
    let o = run(&[
        "restore",
        &url,
        "--all-databases",
        "-o",
        all.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for i in 1..TENANTS {
        let name = format!("t{i:03}.db");
        assert_same_pages(&file_pages(&all.join(&name)), &pages(&tenants.join(&name)));
    }
    assert_same_pages(&file_pages(&all.join("late.db")), &pages(&late));
    assert!(all.join("t000.db").exists());

    // The listing: every database, its state, and whether the folder still has it.
    let o = run(&[
        "databases",
        &url,
        "--dir",
        tenants.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), TENANTS + 1, "{rows:?}");
    let row = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap().clone();
    assert_eq!(row("t000.db")["local"], false);
    assert_eq!(row("late.db")["local"], true);
    assert!(rows.iter().all(|r| r["state"] == "replicated"), "{rows:?}");
}

#[test]
fn run_restores_the_databases_a_folder_lacks_then_replicates_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    let names = ["a.db", "b.db", "c.db"];
    for (i, n) in names.iter().enumerate() {
        let c = app_conn(&tenants.join(n), 4096);
        create_schema(&c);
        for s in 0..20 {
            mixed_txn(&c, (i * 100 + s) as u64);
        }
    }
    let url = format!("file://{}", dir.path().join("rep").display());
    let mut agent = Agent::start(
        &[
            "replicate",
            "--dir-of-databases",
            tenants.to_str().unwrap(),
            &url,
        ],
        &dir.path().join("agent.log"),
    );
    agent.wait_for_log("replicating a folder of databases");
    agent.stop_ok();
    // Keep b.db's state, then lose it from the folder.
    let b_copy = dir.path().join("b.copy.db");
    let o = run(&[
        "restore",
        &url,
        "--database",
        "b.db",
        "-o",
        b_copy.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_pages(&file_pages(&b_copy), &pages(&tenants.join("b.db")));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", tenants.join("b.db").display()));
    }
    // The app sees every database, b.db restored before it starts, and writes to c.db.
    let script = format!(
        "test -f {0}/a.db && test -f {0}/b.db && sqlite3 {0}/c.db \"INSERT INTO marks(seq, t, pad) VALUES (99999, 0, 'app')\"",
        tenants.display()
    );
    let o = run(&[
        "run",
        "--dir-of-databases",
        tenants.to_str().unwrap(),
        "--replica",
        &url,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_pages(&pages(&tenants.join("b.db")), &file_pages(&b_copy));
    // The app's write to c.db was synced before `run` exited.
    let out = dir.path().join("c.out.db");
    let o = run(&[
        "restore",
        &url,
        "--database",
        "c.db",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_pages(&file_pages(&out), &pages(&tenants.join("c.db")));
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[test]
fn an_idle_folder_of_databases_costs_no_cpu_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    for i in 0..50 {
        let c = app_conn(&tenant(&tenants, i), 4096);
        create_schema(&c);
        mixed_txn(&c, i as u64);
    }
    let rep = dir.path().join("rep");
    let url = format!("file://{}", rep.display());
    let agent = Agent::start(
        &[
            "replicate",
            "--dir-of-databases",
            tenants.to_str().unwrap(),
            &url,
        ],
        &dir.path().join("agent.log"),
    );
    wait_until("every first snapshot", Duration::from_secs(60), || {
        (0..50).all(|i| replica_has(&rep, &format!("t{i:03}.db")))
    });
    // Let start-up work (threads winding down) finish: poll until two readings a second apart
    // agree within a tick, then observe.
    let pid = agent.child.id();
    wait_until("the agent to settle", Duration::from_secs(30), || {
        let a = cpu_seconds(pid);
        std::thread::sleep(Duration::from_secs(1));
        cpu_seconds(pid) - a < 0.02
    });
    let files = count_files(&rep);
    let before = cpu_seconds(pid);
    // An observation window, not a synchronisation: nothing changes during it.
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.1,
        "50 idle databases used {used:.2} CPU seconds in 3 s"
    );
    assert_eq!(
        count_files(&rep),
        files,
        "an idle folder wrote to its replica"
    );
    agent.stop_ok();
}

#[test]
fn a_folder_of_databases_shares_one_s3_replica_each_under_its_name() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(lifeboat_storage_s3::testing::S3TestServer::start());
    let env = server.env();
    let dir = tempfile::tempdir().unwrap();
    let tenants = dir.path().join("tenants");
    std::fs::create_dir(&tenants).unwrap();
    for i in 0..8 {
        create_schema(&app_conn(&tenant(&tenants, i), 4096));
    }
    let url = server.url("tenants");
    let mut agent = Agent::start_env(
        &[
            "replicate",
            "--dir-of-databases",
            tenants.to_str().unwrap(),
            &url,
        ],
        &dir.path().join("agent.log"),
        &env,
    );
    agent.wait_for_log("replicating a folder of databases");
    let app = App::start((0..8).map(|i| tenant(&tenants, i)).collect());
    wait_until("some transactions", Duration::from_secs(60), || {
        app.done.load(Ordering::SeqCst) >= 80
    });
    app.stop();
    agent.stop_ok();
    let all = dir.path().join("all");
    let o = run_env(
        &[
            "restore",
            &url,
            "--all-databases",
            "-o",
            all.to_str().unwrap(),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for i in 0..8 {
        let name = format!("t{i:03}.db");
        assert_same_pages(&file_pages(&all.join(&name)), &pages(&tenants.join(&name)));
    }
    // Each database is a replica of its own at URL/<name>.
    restore_and_compare_env(
        &server.url("tenants/t003.db"),
        &dir.path().join("one.db"),
        &tenants.join("t003.db"),
        &env,
    );
}
