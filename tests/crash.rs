//! The agent killed (SIGKILL) at random points while the app writes: mid-snapshot, right after a
//! WAL truncation, or after a random delay. After every kill `verify` passes and every
//! generation restores to a gap-free prefix of the writer's sequence; at the end the newest
//! state is exactly the writer's, and an agent killed while idle resumes its generation.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::support::crash::{check_replica, kill_at, seeded_rng, KillPoint};
use crate::support::oracle;
use crate::support::*;

#[test]
fn agent_killed_at_random_points_under_a_live_writer_leaves_every_generation_sound() {
    let mut rng = seeded_rng("crash");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let wal = dir.path().join("app.db-wal");
    let replica = dir.path().join("replica");
    let staging = dir.path().join("staging");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&staging).unwrap();
    std::fs::create_dir(&scratch).unwrap();
    let url = format!("file://{}", replica.display());
    // Small bounds so every short run does what a long one does: many segments, snapshots on a
    // schedule, checkpoints and truncations of the WAL.
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [\"{url}\"]\nputs-per-second = 20.0\n\
             snapshot-segments = 15\ncheckpoint-pages = 100\ntruncate-wal-bytes = 600000\n\
             staging-dir = \"{}\"\n",
            db.display(),
            staging.display()
        ),
    )
    .unwrap();
    let c = app_conn(&db, 4096);
    create_schema(&c);
    // The test's own TRUNCATE checkpoints must not wait while holding the write lock: the
    // writer (busy timeout 200 ms) would give up. They try, and try again.
    c.busy_timeout(Duration::ZERO).unwrap();
    let w = Writer::start_patient(&db, 4096, Duration::from_millis(2));
    // An upper bound on the markers SQLite committed while the writer runs (see
    // `Writer::started`: a commit can ship before the writer counts it done).
    let started = w.started.clone();
    let committed = move || started.load(Ordering::SeqCst);

    let mut points = vec![
        KillPoint::MidSnapshot,
        KillPoint::MidSnapshot,
        KillPoint::AfterTruncation,
        KillPoint::AfterTruncation,
    ];
    for _ in 0..3 {
        points.push(KillPoint::After(Duration::from_millis(
            rng.random_range(0..1500),
        )));
    }
    points.shuffle(&mut rng);
    let mut seen = BTreeMap::new();
    let mut reached = Vec::new();
    for (round, point) in points.iter().enumerate() {
        if *point == KillPoint::MidSnapshot {
            // Make the next start take a new generation's snapshot: with no agent running, the
            // app's own TRUNCATE checkpoint restarts the log, so continuity cannot be proven.
            wait_until(
                "the app's TRUNCATE checkpoint",
                Duration::from_secs(30),
                || {
                    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .is_ok_and(|busy| busy == 0)
                },
            );
        }
        let mut agent = Agent::start(
            &["replicate", "--config", cfg.to_str().unwrap()],
            &dir.path().join(format!("a{round}.log")),
        );
        agent.wait_for_log("replicating");
        let hit = kill_at(agent, *point, &staging, &wal, Duration::from_secs(20));
        eprintln!("round {round}: killed at {point:?} (reached: {hit})");
        reached.push((*point, hit));
        seen = check_replica(
            &url,
            &scratch,
            &committed,
            &seen,
            &format!("after kill {round} ({point:?})"),
        );
    }
    // Each kind of point was actually hit at least once (not only "killed at some time").
    for kind in [KillPoint::MidSnapshot, KillPoint::AfterTruncation] {
        assert!(
            reached.iter().any(|(p, hit)| *p == kind && *hit),
            "no kill landed at {kind:?}: {reached:?}"
        );
    }
    assert!(
        seen.len() >= 2,
        "kills mid-snapshot make new generations: {seen:?}"
    );

    // The writer stops. An agent that has shipped everything and is then killed resumes its
    // generation (no new snapshot) when started again.
    let n = w.halt();
    let start = |name: &str| {
        let mut a = Agent::start(
            &["replicate", "--config", cfg.to_str().unwrap()],
            &dir.path().join(name),
        );
        a.wait_for_log("replicating");
        a
    };
    let agent = start("caught-up.log");
    let newest = scratch.join("newest.db");
    wait_until(
        "the agent to ship everything",
        Duration::from_secs(60),
        || {
            let o = run(&["restore", &url, "-o", newest.to_str().unwrap(), "--force"]);
            o.status.success() && oracle::markers(&newest).len() as u64 == n
        },
    );
    let before = check_replica(&url, &scratch, &committed, &seen, "caught up");
    kill_at(
        agent,
        KillPoint::After(Duration::ZERO),
        &staging,
        &wal,
        Duration::ZERO,
    );
    let mut agent = start("resumed.log");
    agent.wait_for_log("resuming generation");
    agent.stop_ok();
    let after = check_replica(&url, &scratch, &committed, &before, "resumed");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "resuming after a kill starts no generation"
    );
    assert_eq!(
        after.values().max().copied(),
        Some(n),
        "the newest generation holds every marker the writer committed"
    );
    restore_and_compare(&url, &dir.path().join("final.db"), &db);
}
