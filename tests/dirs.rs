//! Folders backed up with the database (`--dir`): the files a row refers to are there at every
//! restore point, against a real S3 server; `run` brings both back after kill -9 and a wiped
//! disk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lifeboat_dirs::entry::sha256_file;
use lifeboat_storage_s3::testing::S3TestServer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

use crate::support::*;

/// Every row `(path, sha256)` of `receipts` in the database.
fn rows(db: &Path) -> BTreeMap<i64, (String, String)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare("SELECT id, path, sha FROM receipts").unwrap();
    st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Asserts that every row's file is in `folder` with the content the row names.
fn assert_rows_have_files(db: &Path, folder: &Path, what: &str) -> usize {
    let rows = rows(db);
    for (id, (path, sha)) in &rows {
        let p = folder.join(path);
        let got = sha256_file(&p)
            .unwrap_or_else(|e| {
                panic!("{what}: row {id} refers to {path}, which is not restored: {e}")
            })
            .0;
        assert_eq!(&got, sha, "{what}: row {id}: {path} has other content");
    }
    rows.len()
}

/// The txid a restore's output line names (decimal).
fn restored_txid(stdout: &str) -> u64 {
    let t = stdout.split(" txid ").nth(1).expect("a txid in the output");
    let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no txid in {stdout:?}"))
}

#[test]
fn every_restore_point_has_the_files_its_rows_refer_to_on_s3() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(S3TestServer::start());
    let env = server.env();
    let url = server.url("app");
    let dir = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("LIFEBOAT_TEST_KEEP").is_some())
        .tempdir()
        .unwrap();
    let db = dir.path().join("app.db");
    let up = dir.path().join("uploads");
    let c = app_conn(&db, 4096);
    c.execute_batch(
        "CREATE TABLE receipts(id INTEGER PRIMARY KEY, path TEXT NOT NULL, sha TEXT NOT NULL)",
    )
    .unwrap();
    let mut agent = Agent::start_env(
        &[
            "replicate",
            db.to_str().unwrap(),
            &url,
            "--dir",
            up.to_str().unwrap(),
        ],
        &dir.path().join("agent.log"),
        &env,
    );
    agent.wait_for_log("replicating");
    // The app: write a file, then commit a row that refers to it, at random moments; now and
    // then delete a receipt (row first, then file) or move one (link, commit, unlink).
    let mut rng = rand::rng();
    let mut written: BTreeMap<i64, (String, Instant)> = BTreeMap::new();
    for i in 0..160i64 {
        let data: Vec<u8> = (0..rng.random_range(0..40_000))
            .map(|_| rng.random())
            .collect();
        let rel = format!("r/{}/{i}.bin", i % 4);
        let p = up.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
        let sha = lifeboat_dirs::entry::sha256_of(&data[..], None).unwrap().0;
        c.execute(
            "INSERT INTO receipts VALUES (?1, ?2, ?3)",
            rusqlite::params![i, rel, sha],
        )
        .unwrap();
        written.insert(i, (rel.clone(), Instant::now()));
        // Deletions and moves touch receipts whose file has been there a second at least (the
        // documented time a file must stay for the agent to capture it).
        let old: Vec<(i64, String)> = written
            .iter()
            .filter(|(_, (_, t))| t.elapsed() > Duration::from_secs(1))
            .map(|(id, (p, _))| (*id, p.clone()))
            .collect();
        if i % 9 == 8 && !old.is_empty() {
            let (gone, path) = old[rng.random_range(0..old.len())].clone();
            c.execute("DELETE FROM receipts WHERE id = ?1", [gone])
                .unwrap();
            std::fs::remove_file(up.join(path)).unwrap();
            written.remove(&gone);
        } else if i % 13 == 12 && !old.is_empty() {
            let (id, path) = old[rng.random_range(0..old.len())].clone();
            let to = format!("moved/{id}-{i}.bin");
            std::fs::create_dir_all(up.join("moved")).unwrap();
            std::fs::hard_link(up.join(&path), up.join(&to)).unwrap();
            c.execute(
                "UPDATE receipts SET path = ?1 WHERE id = ?2",
                rusqlite::params![to, id],
            )
            .unwrap();
            std::fs::remove_file(up.join(path)).unwrap();
            written.insert(id, (to, Instant::now()));
        }
        // Pacing, not synchronisation: the app's writes come at uneven intervals.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..25)));
    }
    drop(c);
    agent.stop_ok();

    let latest = dir.path().join("latest.db");
    let out = run_env(&["restore", &url, "-o", latest.to_str().unwrap()], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = restored_txid(&String::from_utf8_lossy(&out.stdout));
    assert!(last >= 160, "only {last} transactions");
    // Every transaction is checked near the end of the run; a random sample elsewhere.
    let mut points: Vec<u64> = (1..=last)
        .filter(|t| *t + 3 > last || rng.random_ratio(1, 12))
        .collect();
    points.push(1);
    points.dedup();
    let mut brought_back = 0;
    for t in points {
        let p = dir.path().join(format!("p{t}.db"));
        let f = dir.path().join(format!("p{t}"));
        let out = run_env(
            &[
                "restore",
                &url,
                "-o",
                p.to_str().unwrap(),
                "--txid",
                &format!("{t:016x}"),
                "--dir",
                &format!("uploads={}", f.display()),
            ],
            &env,
        );
        assert!(
            out.status.success(),
            "txid {t}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_rows_have_files(&p, &f, &format!("txid {t}"));
        brought_back += rows(&p)
            .values()
            .filter(|(path, _)| !up.join(path).exists())
            .count();
        std::fs::remove_file(&p).unwrap();
        std::fs::remove_dir_all(&f).unwrap();
    }
    assert!(
        brought_back > 0,
        "no restore point brought back a file deleted since"
    );
    // verify reads every manifest and blob; a corrupt blob is named.
    let out = run_env(&["verify", &url], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A blob the newest restore point needs (a receipt still in the folder at the end).
    let needed: BTreeSet<String> = rows(&latest).into_values().map(|(_, sha)| sha).collect();
    let blob = rt.block_on(async {
        use lifeboat_storage::ReplicaClient;
        let c = server.client("app").await;
        let k = c
            .list("files/blobs/")
            .await
            .unwrap()
            .into_iter()
            .find(|o| {
                o.size > 0
                    && lifeboat_storage::keys::parse_blob(&o.key)
                        .is_some_and(|(h, _)| needed.contains(h))
            })
            .unwrap()
            .key;
        c.delete(&k).await.unwrap();
        c.put(&k, bytes::Bytes::from_static(b"not the content"))
            .await
            .unwrap();
        k
    });
    let out = run_env(&["verify", &url], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&blob));
    let out = run_env(&["drill", &url, "--no-store"], &env);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&blob),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run_env(
        &[
            "restore",
            &url,
            "-o",
            dir.path().join("x.db").to_str().unwrap(),
            "--dir",
            &format!("uploads={}", dir.path().join("x").display()),
        ],
        &env,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&blob),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const APP: &str = r#"
import hashlib, os, random, sqlite3, sys, time, urllib.request
db, up, ack, first, count, marker, sync = sys.argv[1:8]
open(marker + ".pid", "w").write(str(os.getpid()))
c = sqlite3.connect(db, isolation_level=None)
c.execute("PRAGMA busy_timeout=10000")
c.execute("CREATE TABLE IF NOT EXISTS receipts(id INTEGER PRIMARY KEY, path TEXT NOT NULL, sha TEXT NOT NULL)")
for i in range(int(first), int(first) + int(count)):
    data = os.urandom(random.randint(0, 30000))
    rel = "receipts/%d/%d.pdf" % (i % 3, i)
    p = os.path.join(up, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    sha = hashlib.sha256(data).hexdigest()
    c.execute("INSERT INTO receipts VALUES (?, ?, ?)", (i, rel, sha))
    # Acknowledged only once durable: POST /sync answers 200 once the commit (and so the file
    # shipped before it) is in the replica.
    r = urllib.request.urlopen(urllib.request.Request(sync, method="POST"), timeout=30)
    assert r.status == 200, r.status
    with open(ack, "a") as a:
        a.write("%d %s %s\n" % (i, rel, sha))
    time.sleep(random.random() * 0.02)
open(marker, "w").write("done")
time.sleep(3600)
"#;

/// `lifeboat run` of `app` with the status endpoint (and `POST /sync`) on 127.0.0.1:`port`.
fn boot(dir: &Path, replica: &str, log: &str, port: u16, app: &[&str]) -> Agent {
    let db = dir.join("app.db");
    let up = dir.join("uploads");
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec![
        "run",
        "--db",
        db.to_str().unwrap(),
        "--replica",
        replica,
        "--dir",
        up.to_str().unwrap(),
        "--health-addr",
        &addr,
        "--",
    ];
    args.extend_from_slice(app);
    Agent::start(&args, &dir.join(log))
}

fn app_args(dir: &Path, first: u32, count: u32, marker: &str, port: u16) -> Vec<String> {
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    vec![
        "python3".into(),
        s(dir.join("app.py")),
        s(dir.join("app.db")),
        s(dir.join("uploads")),
        s(dir.join("acks")),
        first.to_string(),
        count.to_string(),
        s(dir.join(marker)),
        format!("http://127.0.0.1:{port}/sync"),
    ]
}

fn kill_both(agent: Agent, dir: &Path, marker: &str) {
    let pid: i32 = std::fs::read_to_string(dir.join(format!("{marker}.pid")))
        .unwrap()
        .parse()
        .unwrap();
    agent.kill();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

#[test]
fn kill_9_and_a_wiped_disk_bring_back_every_acknowledged_receipt_with_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("app.py"), APP).unwrap();
    let replica = format!("file://{}", d.join("replica").display());
    // Boot 1: 40 receipts, each acknowledged once durable; then kill -9 lifeboat and the app.
    let port = free_port();
    let a = app_args(d, 0, 40, "m1", port);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let agent = boot(d, &replica, "a.log", port, &a);
    wait_until("40 receipts", Duration::from_secs(120), || {
        d.join("m1").exists()
    });
    let probe = d.join("probe.db");
    wait_until(
        "the replica to hold 40 receipts",
        Duration::from_secs(60),
        || {
            let _ = std::fs::remove_file(&probe);
            run(&["restore", &replica, "-o", probe.to_str().unwrap()])
                .status
                .success()
                && rows(&probe).len() == 40
        },
    );
    kill_both(agent, d, "m1");
    // Boot 2 on the same disk: more receipts, killed -9 in the middle of them.
    let port = free_port();
    let a = app_args(d, 40, 400, "m2", port);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let agent = boot(d, &replica, "b.log", port, &a);
    wait_until("20 more receipts", Duration::from_secs(120), || {
        std::fs::read_to_string(d.join("acks"))
            .unwrap_or_default()
            .lines()
            .count()
            >= 60
    });
    // The chosen moment of the crash (random), not a wait for something to happen.
    std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..500)));
    kill_both(agent, d, "m2");
    // The disk is wiped.
    for f in ["app.db", "app.db-wal", "app.db-shm"] {
        let _ = std::fs::remove_file(d.join(f));
    }
    std::fs::remove_dir_all(d.join("uploads")).unwrap();
    // Boot 3: both come back before the app starts.
    let check = format!("test -f {}", d.join("app.db").display());
    let mut agent = boot(d, &replica, "c.log", free_port(), &["sh", "-c", &check]);
    assert_eq!(
        agent.wait(Duration::from_secs(120)).code(),
        Some(0),
        "{}",
        agent.log_text()
    );
    let n = assert_rows_have_files(&d.join("app.db"), &d.join("uploads"), "after boot");
    let restored = rows(&d.join("app.db"));
    // Every acknowledged receipt, of both boots, is back with its row and its bytes.
    let acks = std::fs::read_to_string(d.join("acks")).unwrap();
    assert!(acks.lines().count() >= 60);
    for line in acks.lines() {
        let mut it = line.split(' ');
        let id: i64 = it.next().unwrap().parse().unwrap();
        let (path, sha) = (it.next().unwrap(), it.next().unwrap());
        assert_eq!(
            restored.get(&id),
            Some(&(path.to_string(), sha.to_string())),
            "receipt {id}"
        );
    }
    assert!(n >= acks.lines().count(), "{n} rows");
    // A second boot on the restored disk resumes without touching the folder.
    let mut agent = boot(d, &replica, "d.log", free_port(), &["sh", "-c", "exit 0"]);
    assert_eq!(
        agent.wait(Duration::from_secs(120)).code(),
        Some(0),
        "{}",
        agent.log_text()
    );
    assert_rows_have_files(&d.join("app.db"), &d.join("uploads"), "after a second boot");
}

/// Peak resident memory of a process (kB), from /proc.
fn peak_rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The objects under `dir` (recursively): its files but the local backend's temporary ones
/// (`.tmp-…`, an object being written, which the backend's own listings skip too). A set: the
/// test compares listings of 10,000 blobs, which as lists cost a quadratic minute each in a
/// debug build.
fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    let mut v = BTreeSet::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if !p
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(".tmp-")
            {
                v.insert(p);
            }
        }
    }
    v
}

#[test]
fn ten_thousand_files_of_1_gb_back_up_in_bounded_memory_and_one_change_ships_one_blob() {
    let _disk = exclusive_disk();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, up) = (d.join("app.db"), d.join("uploads"));
    // The replica in memory where the machine has /dev/shm: what is measured is the agent (its
    // memory, its requests), and 20,000 fsyncs of a local replica on a shared disk took most of
    // the test's time without telling anything about it.
    let shm = tempfile::Builder::new()
        .prefix("lifeboat-test-replica-")
        .tempdir_in("/dev/shm")
        .ok();
    let replica = shm
        .as_ref()
        .map_or(d.join("replica"), |t| t.path().join("replica"));
    let mut rng = rand::rng();
    let mut block = vec![0u8; 100_000];
    rng.fill(&mut block[..]);
    for i in 0..10_000u64 {
        // Distinct content per file, cheaply.
        block[..8].copy_from_slice(&i.to_le_bytes());
        let p = up.join(format!("{}/{i}.bin", i % 100));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &block).unwrap();
    }
    let c = app_conn(&db, 4096);
    c.execute_batch("CREATE TABLE t(x)").unwrap();
    let url = format!("file://{}", replica.display());
    let staging = d.join("staging");
    std::fs::create_dir(&staging).unwrap();
    let agent = Agent::start_env(
        &[
            "replicate",
            db.to_str().unwrap(),
            &url,
            "--dir",
            up.to_str().unwrap(),
        ],
        &d.join("agent.log"),
        &[("TMPDIR", staging.to_str().unwrap())],
    );
    // The first backup happens before the generation's snapshot goes up.
    wait_until("the first backup", Duration::from_secs(600), || {
        agent
            .log_text()
            .contains("new generation: snapshot uploaded")
    });
    // A file is taken once it has been stable for a moment: the last ones written may follow
    // the snapshot by a pass.
    let blobs = replica.join("files/blobs");
    let count = || {
        std::fs::read_dir(&blobs).map_or(0, |d| {
            d.filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                !name.to_str().unwrap().starts_with(".tmp-")
            })
            .count()
        })
    };
    wait_until("every file backed up", Duration::from_secs(120), || {
        count() == 10_000
    });
    assert_eq!(count(), 10_000);
    let peak = peak_rss_kb(agent.child.id());
    assert!(peak <= 64 * 1024, "agent peak RSS {peak} kB > 64 MiB");
    eprintln!("first backup of 10,000 files, 1 GB: agent peak RSS {peak} kB");

    // Files taken after the snapshot go into the manifest shipped with the next commit, before
    // its segment (the folder flush precedes the database upload): once the segment is listed,
    // all of that commit is in.
    c.execute("INSERT INTO t VALUES (0)", []).unwrap();
    wait_until("the first segment", Duration::from_secs(30), || {
        listing(&replica)
            .iter()
            .any(|p| p.to_str().unwrap().contains("/segments/"))
    });

    // Unchanged folder: a commit ships a segment and nothing of the folder.
    let before = listing(&replica);
    c.execute("INSERT INTO t VALUES (1)", []).unwrap();
    wait_until("the segment", Duration::from_secs(30), || {
        listing(&replica).len() == before.len() + 1
    });
    // An observation window, not a synchronisation: nothing more may ship during it.
    std::thread::sleep(Duration::from_millis(500));
    let after = listing(&replica);
    let new: Vec<_> = after.difference(&before).collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].to_str().unwrap().contains("/segments/"), "{new:?}");

    // One file changed: one blob and one small manifest, then the segment, promptly (on the
    // file's event, not the rescan a minute later).
    block[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(up.join("7/7.bin"), &block).unwrap();
    let committed = Instant::now();
    c.execute("INSERT INTO t VALUES (2)", []).unwrap();
    wait_until(
        "the change and the segment",
        Duration::from_secs(15),
        || listing(&replica).len() == after.len() + 3,
    );
    eprintln!(
        "a one-file change shipped with its commit in {:?}",
        committed.elapsed()
    );
    // An observation window, not a synchronisation: nothing more may ship during it.
    std::thread::sleep(Duration::from_millis(500));
    let new: Vec<_> = listing(&replica).difference(&after).cloned().collect();
    assert_eq!(new.len(), 3, "{new:?}");
    let manifest = new
        .iter()
        .find(|p| p.to_str().unwrap().ends_with(".lbman"))
        .unwrap();
    let size = std::fs::metadata(manifest).unwrap().len();
    assert!(
        size < 1024,
        "a one-file change wrote a {size}-byte manifest"
    );
    assert!(new.iter().any(|p| p.starts_with(&blobs)));
    drop(c);
    agent.stop_ok();
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staged copies left behind"
    );
}
