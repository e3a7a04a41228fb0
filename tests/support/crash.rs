//! Random-point crashes: where to kill the agent, and what must hold after every kill.
//!
//! The kill points are drawn from a seeded generator (`LIFEBOAT_CRASH_SEED` replays a run; the
//! seed is printed). What is checked after each kill uses only the writer's own record and
//! plain SQL on restored files (see `oracle`), never lifeboat's checksums.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::oracle::{assert_gap_free_prefix, markers};
use super::{run, Agent};

/// A generator seeded from `LIFEBOAT_CRASH_SEED`, or from the clock (printed, to replay).
pub fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("LIFEBOAT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (LIFEBOAT_CRASH_SEED={seed} replays these kill points)");
    StdRng::seed_from_u64(seed)
}

/// Where in the agent's work a kill lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillPoint {
    /// After this long (counted from the agent's "replicating" line).
    After(Duration),
    /// While a snapshot is being staged (its staging file exists).
    MidSnapshot,
    /// As soon as the WAL file is seen to shrink (the agent truncated it).
    AfterTruncation,
}

/// Kills `agent` with SIGKILL at `point`; returns whether the point was reached (false when it
/// did not come within `patience`, and the agent was killed then instead).
pub fn kill_at(
    agent: Agent,
    point: KillPoint,
    staging: &Path,
    wal: &Path,
    patience: Duration,
) -> bool {
    let pid = agent.child.id();
    let deadline = Instant::now() + patience;
    let reached = match point {
        KillPoint::After(d) => {
            // The chosen moment of the crash, not a wait for something to happen.
            std::thread::sleep(d);
            true
        }
        KillPoint::MidSnapshot => {
            let prefix = format!("lifeboat-snapshot-{pid}-");
            poll(deadline, || {
                std::fs::read_dir(staging).is_ok_and(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                })
            })
        }
        KillPoint::AfterTruncation => {
            let mut peak = 0;
            poll(deadline, || {
                let len = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
                peak = peak.max(len);
                len < peak / 2
            })
        }
    };
    let mut agent = agent;
    if let Some(s) = agent.child.try_wait().unwrap() {
        panic!(
            "the agent exited by itself ({s}) before its kill; log:\n{}",
            agent.log_text()
        );
    }
    agent.signal(Signal::SIGKILL);
    let _ = agent.child.wait();
    reached
}

/// Polls `cond` every millisecond until it holds (true) or `deadline` passes (false).
fn poll(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// What is checked after a kill: `verify` passes, and every generation restores (in full) to a
/// gap-free prefix of the writer's markers, no shorter than it was after the previous kill and
/// no longer than what the writer has committed. Returns the markers per generation.
pub fn check_replica(
    url: &str,
    scratch: &Path,
    committed: impl Fn() -> u64,
    before: &BTreeMap<String, u64>,
    what: &str,
) -> BTreeMap<String, u64> {
    let v = run(&["verify", url]);
    assert!(
        v.status.success(),
        "{what}: verify failed:\n{}\n{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let o = run(&["generations", url, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let gens: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut now = BTreeMap::new();
    for g in gens.as_array().unwrap() {
        let g = g["generation"].as_str().unwrap().to_string();
        let out = scratch.join(format!("{g}.db"));
        let o = run(&[
            "restore",
            url,
            "-o",
            out.to_str().unwrap(),
            "--generation",
            &g,
            "--force",
        ]);
        assert!(
            o.status.success(),
            "{what}: generation {g} does not restore: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = markers(&out);
        let n = assert_gap_free_prefix(&got, 0, committed(), &format!("{what}, generation {g}"));
        if let Some(&was) = before.get(&g) {
            assert!(
                n >= was,
                "{what}: generation {g} restored {was} markers before and {n} now"
            );
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", out.display()));
        }
        now.insert(g, n);
    }
    now
}
