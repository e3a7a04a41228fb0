//! Disk faults under a live writer: a local-folder replica on a disk that fills up or turns
//! read-only for a while, and the same for the disk that holds the app's own database. The
//! agent must ride them out (never exit, never stop the app, never delete what a restore
//! needs), and once the disk is back the replica must restore to exactly the writer's database,
//! its last commit included, with a clean `verify`. See docs/faults.md.
//!
//! A full disk needs a small filesystem: a tmpfs this test mounts, which needs root (CI runs as
//! root). Without it the full-disk tests say so loudly and skip; the read-only tests fall back
//! to directory modes (which only binds users other than root).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::disk::SmallDisk;
use crate::support::faults::*;
use crate::support::*;

/// The writer's pause between transactions (a couple of hundred commits a second).
const PACE: Duration = Duration::from_millis(4);

/// A full disk of `what`, or a loud skip where no tmpfs can be mounted.
fn small_disk_or_skip(what: &str) -> Option<SmallDisk> {
    match SmallDisk::mount(64 << 20) {
        Ok(d) => Some(d),
        Err(why) => {
            eprintln!(
                "SKIPPED: {what} needs a small filesystem and this process may not mount a tmpfs \
                 ({why}); run the tests as root to cover it"
            );
            None
        }
    }
}

/// How many times the agent's log reports a failed attempt with one of `messages`.
fn failures(agent: &Agent, messages: &[&str]) -> usize {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") && messages.iter().any(|m| l.contains(m)))
        .count()
}

/// The app's database in a folder of its own and a writer on it.
struct App {
    dir: tempfile::TempDir,
    db: PathBuf,
}

impl App {
    fn new() -> App {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        create_schema(&app_conn(&db, 4096));
        App { dir, db }
    }

    /// Stops the agent cleanly, then restores `url`, compares it with the writer's database and
    /// verifies it; returns the commits restored.
    fn finish(&self, agent: Agent, url: &str) -> i64 {
        agent.stop_ok();
        let out = self.dir.path().join("out.db");
        restore_and_compare(url, &out, &self.db);
        assert_eq!(last_mark(&out), last_mark(&self.db), "no commit lost");
        verify_clean(url, &[]);
        last_mark(&out) + 1
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("agent.log"));
            let log = log.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- agent.log (last lines) ---");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
}

/// What a fault cost: how long it lasted, the agent's failed attempts, and the commits the app
/// made meanwhile and in all; and the commits restored afterwards.
struct Outage {
    lasted: Duration,
    failures: usize,
    commits_during: i64,
    written: u64,
    restored: i64,
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the fault lasted {:.1?} ({} failed attempts, {} commits meanwhile); {} commits \
             written, {} restored",
            self.lasted, self.failures, self.commits_during, self.written, self.restored
        )
    }
}

/// The agent replicates the app's database into `rep` while the app writes; then a fault
/// starts, and is kept up (calling `keep` while waiting) until the agent has failed at least
/// three times with one of `messages` and 3 s have passed; then it ends, uploads land again,
/// and the replica must restore to exactly the app's database and verify.
fn ride_out(
    rep: &std::path::Path,
    start: impl Fn(),
    keep: impl Fn(),
    end: impl Fn(),
    messages: &[&str],
) -> Outage {
    let app = App::new();
    let url = format!("file://{}", rep.display());
    let agent = Agent::replicate(&app.db, &url, &app.dir.path().join("agent.log"));
    let w = PacedWriter::start(&app.db, PACE);
    wait_until("a first segment", Duration::from_secs(30), || {
        !files_with_suffix(rep, ".lbseg").is_empty()
    });
    let first = last_mark(&app.db);
    start();
    let t0 = Instant::now();
    wait_until("three failed attempts", Duration::from_secs(40), || {
        keep();
        failures(&agent, messages) >= 3 && t0.elapsed() >= Duration::from_secs(3)
    });
    let segments = files_with_suffix(rep, ".lbseg").len();
    end();
    let (lasted, commits_during) = (t0.elapsed(), last_mark(&app.db) - first);
    wait_until(
        "uploads again after the fault",
        Duration::from_secs(30),
        || files_with_suffix(rep, ".lbseg").len() > segments,
    );
    let failures = failures(&agent, messages);
    // The app never stopped: a failed commit would have ended the writer with a panic.
    let written = w.halt();
    Outage {
        lasted,
        failures,
        commits_during,
        written,
        restored: app.finish(agent, &url),
    }
}

/// The replica's folder fills up while the app writes; then space comes back. Failed uploads
/// are retried (the same segment, once there is room), nothing is lost, the app never stops.
#[test]
fn a_full_replica_disk_then_space_back_loses_nothing() {
    let Some(disk) = small_disk_or_skip("a full replica disk") else {
        return;
    };
    // The filler takes back whatever a failed attempt frees as it cleans up.
    let o = ride_out(
        &disk.path().join("replica"),
        || {
            disk.fill();
        },
        || {
            disk.fill();
        },
        || disk.free(),
        &["no storage space"],
    );
    eprintln!("full replica disk: {o}");
}

/// The replica's folder turns read-only for a while (a read-only remount as root, directory
/// modes otherwise), then writable again.
#[test]
fn a_read_only_replica_folder_for_a_while_loses_nothing() {
    let disk = SmallDisk::mount_or_folder(64 << 20);
    let o = ride_out(
        &disk.path().join("replica"),
        || disk.set_read_only(true),
        || {},
        || disk.set_read_only(false),
        &["read-only filesystem", "permission denied"],
    );
    let how = if disk.is_mounted() {
        "remount"
    } else {
        "modes"
    };
    eprintln!("read-only replica folder ({how}): {o}");
}
