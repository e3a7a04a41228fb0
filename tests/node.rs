//! The Node example app (`examples/node-backend`, better-sqlite3) under `lifeboat run`,
//! replicating to a real S3-compatible server: a hard kill of the whole host (lifeboat and the app)
//! followed by a wiped disk loses at most the documented lag window; a clean stop followed by a
//! wiped disk loses nothing.
//!
//! Needs `node` (skipped, loudly, without it) and the example's `node_modules`
//! (`npm ci --prefix examples/node-backend`, which `scripts/test.sh` runs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_storage_s3::testing::S3TestServer;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};

use crate::support::*;

/// Records acknowledged longer ago than this before a hard kill must survive it.
///
/// lifeboat's default PUT budget is one a second with a burst of 4 (docs/design.md, "Pacing and
/// cost"). The writer below commits about a hundred transactions a second, so the burst is spent
/// within the first second; from then on each upload carries every commit seen since the previous
/// one, once a second. A commit therefore waits at most about 1 s for the next upload, plus that
/// upload's own time (tens of milliseconds against moto on 127.0.0.1). That is the documented
/// window: "about one second of writes plus the upload time". 2 s is that window plus 1 s for
/// the upload and for scheduling on a loaded two-core CI machine running other tests beside this
/// one. Anything acknowledged earlier than that must be in the replica.
const LAG_WINDOW: Duration = Duration::from_secs(2);

pub(crate) fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-backend")
}

pub(crate) fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns the status and the
/// JSON body. Any transport or parse failure is an error: the request was not acknowledged.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io_err(format!("truncated response: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io_err(format!("bad status line: {head:?}")))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| io_err(format!("no content-length: {head:?}")))?;
    if body.len() != len {
        return Err(io_err(format!("body {} bytes, want {len}", body.len())));
    }
    let v = serde_json::from_str(body).map_err(|e| io_err(format!("{e}: {body:?}")))?;
    Ok((status, v))
}

pub(crate) fn get(port: u16, path: &str) -> (u16, Value) {
    http(port, "GET", path, b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

pub(crate) fn post(port: u16, path: &str, body: &Value) -> std::io::Result<(u16, Value)> {
    http(port, "POST", path, body.to_string().as_bytes())
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// `lifeboat run ... -- node server.js` in its own process group, as on a host of its own.
pub(crate) struct App {
    child: Child,
    reaped: bool,
    log: PathBuf,
    pub(crate) port: u16,
    /// The Node process (lifeboat's child).
    node_pid: i32,
}

impl App {
    /// Starts it and waits until the app listens (after lifeboat's restore and first sync).
    pub(crate) fn start(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> App {
        let log = dir.join(format!("{name}.log"));
        let out = dir.join(format!("{name}.out"));
        let child = Command::new(bin())
            .arg("run")
            .args(args)
            .args(["--", "node", "server.js"])
            .current_dir(example_dir())
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,lifeboat_agent=debug")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .process_group(0)
            .spawn()
            .expect("start lifeboat run");
        let mut app = App {
            child,
            reaped: false,
            log,
            port: 0,
            node_pid: 0,
        };
        wait_until(
            &format!("{name}: the app to listen"),
            Duration::from_secs(120),
            || {
                if let Some(s) = app.child.try_wait().unwrap() {
                    app.reaped = true;
                    panic!(
                        "{name}: lifeboat run exited with {s}; log:\n{}",
                        app.log_text()
                    );
                }
                let text = std::fs::read_to_string(&out).unwrap_or_default();
                let port = text
                    .lines()
                    .find_map(|l| l.strip_prefix("listening on 127.0.0.1:")?.parse().ok());
                app.port = port.unwrap_or(0);
                port.is_some()
            },
        );
        let (status, health) = get(app.port, "/healthz");
        assert_eq!(status, 200, "{health}");
        app.node_pid = health["pid"].as_i64().expect("pid in /healthz") as i32;
        app
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where lifeboat's log goes (to read it after [`App::stop`]).
    pub(crate) fn log_path(&self) -> PathBuf {
        self.log.clone()
    }

    /// The whole host dies at once: SIGKILL to the process group, and to the app in case lifeboat
    /// put it in a group of its own.
    pub(crate) fn hard_kill(mut self) {
        killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).unwrap();
        let _ = kill(Pid::from_raw(self.node_pid), Signal::SIGKILL);
        self.child.wait().unwrap();
        self.reaped = true;
        let pid = self.node_pid;
        wait_until("the app to die", Duration::from_secs(30), || !alive(pid));
    }

    /// SIGTERM to lifeboat (which forwards it to the app), then its exit status.
    pub(crate) fn stop(mut self) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let mut status = None;
        wait_until("lifeboat run to exit", Duration::from_secs(90), || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        self.reaped = true;
        let pid = self.node_pid;
        assert!(
            !alive(pid),
            "lifeboat run exited but the app (pid {pid}) still runs; log:\n{}",
            self.log_text()
        );
        status.unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::support::print_log_tail(&self.log, 60);
        }
        if !self.reaped {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.node_pid)).unwrap_or_default();
        if self.node_pid > 0 && String::from_utf8_lossy(&cmdline).contains("server.js") {
            let _ = kill(Pid::from_raw(self.node_pid), Signal::SIGKILL);
        }
    }
}

/// A record whose creating request returned success, and when.
#[derive(Clone, Debug)]
struct Acked {
    at: Instant,
    /// `employees` or `expenses`.
    table: &'static str,
    row: Value,
}

impl Acked {
    fn id(&self) -> i64 {
        self.row["id"].as_i64().unwrap()
    }

    fn describe(&self) -> String {
        format!("{} {}", self.table, self.row)
    }
}

/// Request `n` of the workload: every fifth an employee, the others an expense of the newest
/// acknowledged employee. Returns the record if the app acknowledged it.
fn write_one(port: u16, tag: &str, n: u64, employee: Option<i64>) -> Option<Acked> {
    let (table, body) = match employee {
        Some(e) if n % 5 != 0 => (
            "expenses",
            json!({"employee_id": e, "amount_cents": n * 37 % 10_000, "description": format!("{tag} expense {n}")}),
        ),
        _ => (
            "employees",
            json!({"name": format!("{tag} employee {n}"), "email": format!("{tag}-{n}@example.com")}),
        ),
    };
    match post(port, &format!("/{table}"), &body) {
        Ok((201, row)) => Some(Acked {
            at: Instant::now(),
            table,
            row,
        }),
        Ok((status, v)) => panic!("POST /{table} {body}: {status} {v}"),
        Err(_) => None,
    }
}

/// Rows of both tables as the app serves them.
fn state(port: u16) -> (Value, Value) {
    let (s1, employees) = get(port, "/employees");
    let (s2, expenses) = get(port, "/expenses");
    assert_eq!((s1, s2), (200, 200));
    (employees, expenses)
}

fn check_integrity(db: &Path) {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "integrity_check of the restored {}", db.display());
    let fk: i64 = c
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk, 0, "foreign key violations in the restored database");
}

/// The disk is wiped: everything under the mount point is gone, the mount point stays.
fn wipe(data: &Path) {
    std::fs::remove_dir_all(data).unwrap();
    std::fs::create_dir(data).unwrap();
    let db = data.join("expense_tracker.db");
    for suffix in ["", "-wal", "-shm"] {
        assert!(!Path::new(&format!("{}{suffix}", db.display())).exists());
    }
}

#[test]
fn node_app_under_lifeboat_run_survives_a_wiped_disk() {
    if !node_available() {
        // CI (`.ci/run` sets CI) installs Node through scripts/test.sh: missing there is a failure.
        assert!(
            std::env::var("CI").is_err(),
            "`node` is not installed in CI: the Node example test must run there"
        );
        eprintln!(
            "\n**** SKIPPED node::node_app_under_lifeboat_run_survives_a_wiped_disk: `node` is not \
             installed ****\n"
        );
        return;
    }
    assert!(
        example_dir()
            .join("node_modules/better-sqlite3/package.json")
            .exists(),
        "examples/node-backend/node_modules is missing: run `npm ci --prefix examples/node-backend` \
         (scripts/test.sh does)"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = rt.block_on(S3TestServer::start());
    let url = s3.url("expense-tracker");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("expense_tracker.db");
    let uploads = data.join("uploads");
    let db_s = db.to_str().unwrap().to_string();
    let uploads_s = uploads.to_str().unwrap().to_string();
    let mut env = s3.env();
    env.extend([
        ("DATABASE_PATH", db_s.as_str()),
        ("UPLOADS_DIR", uploads_s.as_str()),
        ("PORT", "0"),
        ("HOST", "127.0.0.1"),
    ]);
    let flags = [
        "--db",
        db_s.as_str(),
        "--replica",
        url.as_str(),
        "--dir",
        uploads_s.as_str(),
    ];

    // Boot 1: empty disk, empty replica.
    let app = App::start(tmp.path(), "boot1", &flags, &env);
    let port = app.port;
    let receipt = b"receipt bytes".to_vec();
    let (status, v) = http(port, "POST", "/uploads/receipt-1.txt", &receipt).unwrap();
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        std::fs::read(uploads.join("receipt-1.txt")).unwrap(),
        receipt
    );

    // Sustained writes (about a hundred a second) from another thread; the host dies mid-stream.
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut employee = None;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                if let Some(a) = write_one(port, "kill", n, employee) {
                    if a.table == "employees" {
                        employee = Some(a.id());
                    }
                    acked.lock().unwrap().push(a);
                }
                n += 1;
                // Pacing, not synchronisation: keeps this a few hundred requests.
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    wait_until("400 acknowledged writes", Duration::from_secs(120), || {
        acked.lock().unwrap().len() >= 400
    });
    let killed_at = Instant::now();
    app.hard_kill();
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let cutoff = killed_at - LAG_WINDOW;
    let must = acked.iter().filter(|a| a.at < cutoff).count();
    assert!(
        must >= 150,
        "only {must} of {} writes were acknowledged more than {LAG_WINDOW:?} before the kill: \
         the check below would prove little",
        acked.len()
    );

    // Boot 2: the disk is wiped; lifeboat restores from S3 before starting the app.
    wipe(&data);
    let app = App::start(tmp.path(), "boot2", &flags, &env);
    let port = app.port;
    check_integrity(&db);
    // Commits ship in order, whole: the restored state is the state after some commit, so the
    // acknowledged records present form a prefix of the acknowledged sequence.
    let mut present = 0;
    for (i, a) in acked.iter().enumerate() {
        let (status, row) = get(port, &format!("/{}/{}", a.table, a.id()));
        match status {
            200 => {
                assert_eq!(row, a.row, "restored {} differs", a.describe());
                assert_eq!(present, i, "{} restored but an earlier write is missing", a.describe());
                present += 1;
            }
            404 => assert!(
                a.at >= cutoff,
                "lost {}, acknowledged {:?} before the hard kill (allowed lag window {LAG_WINDOW:?}); \
                 boot1 log:\n{}",
                a.describe(),
                killed_at - a.at,
                std::fs::read_to_string(tmp.path().join("boot1.log")).unwrap_or_default()
            ),
            _ => panic!("GET {}: {status} {row}", a.describe()),
        }
    }
    let lost = &acked[present..];
    eprintln!(
        "hard kill: {} writes acknowledged, {present} restored, {} lost (the oldest lost one \
         acknowledged {:?} before the kill)",
        acked.len(),
        lost.len(),
        lost.first().map(|a| killed_at - a.at)
    );
    let (employees, expenses) = state(port);
    let rows = employees.as_array().unwrap().len() + expenses.as_array().unwrap().len();
    // At most one more: a request in flight at the kill may have committed without its answer.
    assert!(
        rows == present || rows == present + 1,
        "{rows} rows restored, {present} acknowledged ones among them"
    );
    // The upload's row is in the database, and its file is back with it (`--dir`).
    let bytes: i64 = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row(
            "SELECT bytes FROM uploads WHERE name = 'receipt-1.txt'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bytes, receipt.len() as i64);
    assert_eq!(
        std::fs::read(uploads.join("receipt-1.txt")).unwrap(),
        receipt
    );

    // More writes, then a clean stop: SIGTERM to lifeboat, forwarded to the app, final sync.
    let mut employee = None;
    let mut acked2 = Vec::new();
    for n in 0..150 {
        let a = write_one(port, "clean", n, employee).expect("write to a healthy app");
        if a.table == "employees" {
            employee = Some(a.id());
        }
        acked2.push(a);
    }
    let before = state(port);
    let status = app.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "lifeboat run must exit with the app's status 0 after a clean stop; log:\n{}",
        std::fs::read_to_string(tmp.path().join("boot2.log")).unwrap_or_default()
    );

    // Boot 3: wiped again, started as in a container: `lifeboat run -- node server.js` with the
    // database and replica from the environment.
    wipe(&data);
    let mut env3 = env.clone();
    env3.extend([
        ("LIFEBOAT_DB", db_s.as_str()),
        ("LIFEBOAT_REPLICA_URL", url.as_str()),
        ("LIFEBOAT_DIRS", uploads_s.as_str()),
    ]);
    let app = App::start(tmp.path(), "boot3", &[], &env3);
    let port = app.port;
    check_integrity(&db);
    assert_eq!(
        std::fs::read(uploads.join("receipt-1.txt")).unwrap(),
        receipt,
        "the receipt comes back with the database (LIFEBOAT_DIRS)"
    );
    for a in acked[..present].iter().chain(&acked2) {
        let (status, row) = get(port, &format!("/{}/{}", a.table, a.id()));
        assert_eq!(
            (status, &row),
            (200, &a.row),
            "after a clean stop, {} must be restored",
            a.describe()
        );
    }
    assert_eq!(
        state(port),
        before,
        "the restored state differs from the state at the clean stop"
    );
    let status = app.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(tmp.path().join("boot3.log")).unwrap_or_default()
    );
}
