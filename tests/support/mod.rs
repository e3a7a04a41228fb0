//! Helpers shared by the end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rusqlite::Connection;

pub mod crash;
pub mod disk;
pub mod faults;
pub mod oracle;

/// The binary under test.
pub fn bin() -> &'static str {
    note_failures();
    env!("CARGO_BIN_EXE_lifeboat")
}

thread_local! {
    /// The start of this thread's (test's) panic message, for the logs printed after it.
    static FAILURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The first lines of a panic message: messages that carry a whole log would hide the reason.
fn first_lines(message: &str) -> String {
    message
        .lines()
        .take(3)
        .map(|l| l.chars().take(300).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n    ")
}

/// Installs (once) a panic hook that keeps the start of each failing test's message: printed
/// again after the logs a failing test prints, and appended to `$LIFEBOAT_TEST_FAILURES` when
/// set (`scripts/test.sh` prints that file last, where CI's excerpt of the output keeps it).
pub fn note_failures() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let at = info
                .location()
                .map(|l| format!(" ({}:{})", l.file(), l.line()));
            let line = format!(
                "{test}{}: {}",
                at.unwrap_or_default(),
                first_lines(&message)
            );
            if let Ok(path) = std::env::var("LIFEBOAT_TEST_FAILURES") {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                {
                    let _ = writeln!(f, "{line}");
                }
            }
            FAILURE.with(|f| *f.borrow_mut() = Some(line));
            previous(info);
        }));
    });
}

/// Prints the tail of a log a failing test leaves behind, then the failure again (after the
/// log, where a reader of the output's end finds it).
pub fn print_log_tail(log: &Path, lines: usize) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    eprintln!(
        "--- last {} lines of {} ---\n{}",
        all.len() - from,
        log.display(),
        all[from..].join("\n")
    );
    if let Some(f) = FAILURE.with(|f| f.borrow().clone()) {
        eprintln!("--- the failure: {f}");
    }
}

/// Polls `cond` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `lifeboat` process whose stderr goes to a log file.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(args: &[&str], log: &Path) -> Agent {
        Agent::start_env(args, log, &[])
    }

    pub fn start_env(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Agent {
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,lifeboat_agent=debug,lifeboat_dirs=debug")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .expect("start lifeboat");
        Agent {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Starts `lifeboat replicate` and waits until the replica's state is known: a new
    /// generation's snapshot is uploaded, or the generation is resumed. A commit made before
    /// that may land in the snapshot (txid 0) rather than ship as a transaction of its own, so
    /// a test that maps its writes to txids must not write earlier.
    pub fn replicate(db: &Path, url: &str, log: &Path) -> Agent {
        Agent::replicate_env(db, url, log, &[])
    }

    /// [`Agent::replicate`] with extra environment variables.
    pub fn replicate_env(db: &Path, url: &str, log: &Path, env: &[(&str, &str)]) -> Agent {
        let mut a = Agent::start_env(&["replicate", db.to_str().unwrap(), url], log, env);
        a.wait_for_log("replicating");
        a.wait_until_known();
        a
    }

    /// Waits until the log says the replica's state is known (see [`Agent::replicate`]).
    pub fn wait_until_known(&mut self) {
        wait_until(
            "the agent's first snapshot or resume",
            Duration::from_secs(30),
            || {
                if let Some(s) = self.child.try_wait().unwrap() {
                    panic!("agent exited with {s}: {}", self.log_text());
                }
                let log = self.log_text();
                log.contains("new generation: snapshot uploaded")
                    || log.contains("resuming generation")
            },
        );
    }

    /// Waits until the log contains `text` (the process must still be running).
    pub fn wait_for_log(&mut self, text: &str) {
        wait_until(
            &format!("agent log line {text:?}"),
            Duration::from_secs(30),
            || {
                if let Some(s) = self.child.try_wait().unwrap() {
                    panic!("agent exited with {s}: {}", self.log_text());
                }
                self.log_text().contains(text)
            },
        );
    }

    pub fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), s).unwrap();
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.wait(Duration::from_secs(60))
    }

    /// SIGTERM, and assert a clean exit (showing the agent's log if not).
    pub fn stop_ok(mut self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait(Duration::from_secs(60));
        assert!(
            status.success(),
            "agent exited with {status}; log:\n{}",
            self.log_text()
        );
    }

    pub fn kill(mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }

    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        wait_until("lifeboat to exit", timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// [`wait_until`], printing the agent's log on timeout.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; agent log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the agent was doing: the tail of its log goes into the
        // test's captured output (CI keeps no temporary directories).
        if std::thread::panicking() || std::env::var_os("LIFEBOAT_TEST_SHOW_LOGS").is_some() {
            print_log_tail(&self.log, 80);
        }
    }
}

/// Runs `lifeboat` to completion.
pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// Runs `lifeboat` to completion with extra environment variables.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run lifeboat")
}

/// Held by the test that writes a gigabyte to disk and by the tests whose app has a short busy
/// timeout, so that they never run at the same time: the disk's fsync latency under that load,
/// not the agent, would then decide whether the app waits past its timeout.
pub fn exclusive_disk() -> std::sync::MutexGuard<'static, ()> {
    static DISK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DISK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The app connection's busy timeout (short, so a write lock held long by the agent shows).
const APP_BUSY: Duration = Duration::from_millis(200);

/// Opens the app's connection: WAL mode, default autocheckpoint, short busy timeout.
pub fn app_conn(path: &Path, page_size: u32) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!(
        "PRAGMA page_size={page_size}; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    ))
    .unwrap();
    c.busy_timeout(APP_BUSY).unwrap();
    c
}

pub fn create_schema(c: &Connection) {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS marks(seq INTEGER PRIMARY KEY, t INTEGER, pad TEXT);
         CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX IF NOT EXISTS items_v ON items(v);",
    )
    .unwrap();
}

/// One transaction of the mixed workload: a marker row, inserts, updates, deletes, and now and
/// then a table dropped and recreated or a checkpoint of the app's own.
pub fn mixed_txn(c: &Connection, seq: u64) {
    mixed_txn_only(c, seq);
    if seq % 151 == 0 {
        let mode = ["PASSIVE", "RESTART", "TRUNCATE"][(seq / 151 % 3) as usize];
        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
            .unwrap();
    }
}

/// [`mixed_txn`] without the app's own explicit checkpoints (its autocheckpoint still runs).
pub fn mixed_txn_only(c: &Connection, seq: u64) {
    c.execute_batch("BEGIN").unwrap();
    c.execute(
        "INSERT INTO marks(seq, t, pad) VALUES (?1, strftime('%s','now'), ?2)",
        rusqlite::params![seq as i64, "m".repeat(100)],
    )
    .unwrap();
    for i in 0..3 {
        c.execute(
            "INSERT INTO items(v) VALUES (?1)",
            [format!("{seq}-{i}-{}", "v".repeat(200))],
        )
        .unwrap();
    }
    c.execute(
        "UPDATE items SET v = v || 'u' WHERE id % 13 = ?1",
        [(seq % 13) as i64],
    )
    .unwrap();
    c.execute("DELETE FROM items WHERE id % 17 = ?1", [(seq % 17) as i64])
        .unwrap();
    if seq % 97 == 0 {
        c.execute_batch(
            "DROP TABLE IF EXISTS scratch; CREATE TABLE scratch(a, b); INSERT INTO scratch VALUES (1, randomblob(3000));",
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
}

/// A writer thread running the mixed workload until stopped or `limit` transactions are done.
pub struct Writer {
    pub stop: Arc<AtomicBool>,
    /// Transactions whose `txn` call returned.
    pub done: Arc<AtomicU64>,
    /// Transactions whose `txn` call began: at least as many as SQLite committed (a commit is
    /// counted in `done` only once the whole call returns, which can be much later: the mixed
    /// workload runs the app's own checkpoint after some commits, and it may wait).
    pub started: Arc<AtomicU64>,
    handle: Option<JoinHandle<u64>>,
}

impl Writer {
    pub fn start(path: &Path, page_size: u32, first: u64, limit: u64) -> Writer {
        Writer::start_paced(path, page_size, first, limit, Duration::ZERO)
    }

    /// [`Writer::start_paced`] with a 5 s busy timeout, as a real app would set: for tests whose
    /// claim is not how briefly the agent holds the write lock (on a loaded machine it can hold
    /// it past the 200 ms of [`app_conn`] while its checkpoint's fsync waits for the disk).
    pub fn start_patient(path: &Path, page_size: u32, pause: Duration) -> Writer {
        Writer::spawn(
            path,
            page_size,
            0,
            u64::MAX,
            pause,
            mixed_txn,
            Duration::from_secs(5),
        )
    }

    /// [`Writer::start`] with the app's busy timeout set to `busy`.
    pub fn start_with_busy_timeout(path: &Path, page_size: u32, busy: Duration) -> Writer {
        Writer::spawn(
            path,
            page_size,
            0,
            u64::MAX,
            Duration::ZERO,
            mixed_txn,
            busy,
        )
    }

    /// Whether the writer thread is still running (it ends early only by panicking, for
    /// example on a busy timeout).
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// [`Writer::start_patient`], flat out, running [`mixed_txn_only`]: no explicit checkpoints
    /// of the app's own (so a WAL that shrinks was truncated by the agent).
    pub fn start_without_checkpoints(path: &Path, page_size: u32) -> Writer {
        Writer::spawn(
            path,
            page_size,
            0,
            u64::MAX,
            Duration::ZERO,
            mixed_txn_only,
            Duration::from_secs(5),
        )
    }

    /// [`Writer::start`] with a pause after each transaction (a steady rather than flat-out app).
    pub fn start_paced(
        path: &Path,
        page_size: u32,
        first: u64,
        limit: u64,
        pause: Duration,
    ) -> Writer {
        Writer::spawn(path, page_size, first, limit, pause, mixed_txn, APP_BUSY)
    }

    fn spawn(
        path: &Path,
        page_size: u32,
        first: u64,
        limit: u64,
        pause: Duration,
        txn: fn(&Connection, u64),
        busy: Duration,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let started = Arc::new(AtomicU64::new(0));
        let (s, d, st) = (stop.clone(), done.clone(), started.clone());
        let path = path.to_path_buf();
        let handle = std::thread::spawn(move || {
            let c = app_conn(&path, page_size);
            c.busy_timeout(busy).unwrap();
            create_schema(&c);
            let mut n = 0;
            while n < limit && !s.load(Ordering::SeqCst) {
                st.store(n + 1, Ordering::SeqCst);
                txn(&c, first + n);
                n += 1;
                d.store(n, Ordering::SeqCst);
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            n
        });
        Writer {
            stop,
            done,
            started,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> u64 {
        self.handle.take().unwrap().join().unwrap()
    }

    pub fn halt(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.finish()
    }
}

/// The database's pages as SQLite sees them now (WAL included).
pub fn pages(path: &Path) -> Vec<Vec<u8>> {
    let c = Connection::open(path).unwrap();
    let mut s = c
        .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
        .unwrap();
    s.query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// A database file's pages, read raw.
pub fn file_pages(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    let ps = u16::from_be_bytes([data[16], data[17]]);
    let ps = if ps == 1 { 65536 } else { ps as usize };
    data.chunks(ps).map(|c| c.to_vec()).collect()
}

/// Asserts two page lists are equal, reporting the first differing page rather than megabytes.
pub fn assert_same_pages(restored: &[Vec<u8>], source: &[Vec<u8>]) {
    assert_eq!(restored.len(), source.len(), "page counts differ");
    for (i, (a, b)) in restored.iter().zip(source).enumerate() {
        assert!(a == b, "page {} differs", i + 1);
    }
}

/// Restores `url` into `out` with the binary and checks it equals `source` page for page.
pub fn restore_and_compare(url: &str, out: &Path, source: &Path) {
    restore_and_compare_env(url, out, source, &[])
}

/// [`restore_and_compare`] with extra environment variables.
pub fn restore_and_compare_env(url: &str, out: &Path, source: &Path, env: &[(&str, &str)]) {
    let o = run_env(&["restore", url, "-o", out.to_str().unwrap()], env);
    assert!(
        o.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_same_pages(&file_pages(out), &pages(source));
    let c = Connection::open(out).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// Files under a folder, recursively (a local replica's objects).
pub fn count_files(dir: &Path) -> usize {
    fn walk(d: &Path, n: &mut usize) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, n);
                } else {
                    *n += 1;
                }
            }
        }
    }
    let mut n = 0;
    walk(dir, &mut n);
    n
}

/// The newest txid in the segments and packs under `dir` (from their keys,
/// `<first>-<last>-<time>.lbseg` or `.lbpack`, in hex); 0 if none.
pub fn newest_shipped_txid(dir: &Path) -> u64 {
    let mut objects = files_with_suffix(dir, ".lbseg");
    objects.extend(files_with_suffix(dir, ".lbpack"));
    objects
        .iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            u64::from_str_radix(name.split('-').nth(1)?, 16).ok()
        })
        .max()
        .unwrap_or(0)
}

/// Segments stored under `dir`: `.lbseg` objects, and the parts of `.lbpack` objects (small
/// segments the agent packed).
pub fn segments_stored(dir: &Path) -> usize {
    let packed: usize = files_with_suffix(dir, ".lbpack")
        .iter()
        .map(|p| {
            let b = bytes::Bytes::from(std::fs::read(p).unwrap());
            lifeboat_wal::pack::split(&b).unwrap().len()
        })
        .sum();
    files_with_suffix(dir, ".lbseg").len() + packed
}

/// All files under a folder whose names end with `suffix`, sorted.
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, suffix, out);
                } else if p.to_string_lossy().ends_with(suffix) {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, suffix, &mut out);
    out.sort();
    out
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for a test's own server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The value of the first sample of `name` whose labels contain `labels` (e.g. `kind="put"`)
/// in a Prometheus text exposition, or `None` if there is none.
pub fn metric_sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `/metrics` on 127.0.0.1:`port` (empty when nothing answers).
pub fn scrape(port: u16) -> String {
    http_get(port, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}
