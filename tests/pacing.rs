//! Cost and latency claims: no requests while the database is idle, a commit after a quiet
//! spell ships at once, and sustained writes coalesce to about one PUT a second.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// The request counters of `/metrics` (one line per kind), and their sum.
fn requests(port: u16) -> (Vec<String>, f64) {
    let lines: Vec<String> = scrape(port)
        .lines()
        .filter(|l| l.starts_with("lifeboat_replica_requests_total{"))
        .map(str::to_string)
        .collect();
    let sum = lines
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (lines, sum)
}

/// PUT requests the agent made, from `/metrics`.
fn puts(port: u16) -> f64 {
    metric_sample(
        &scrape(port),
        "lifeboat_replica_requests_total",
        "kind=\"put\"",
    )
    .unwrap_or(0.0)
}

/// The number of segment objects in a local replica (counted on disk, not by the agent).
fn segments(replica: &Path) -> usize {
    files_with_suffix(replica, ".lbseg").len()
}

/// Starts `replicate` from a config file with `extra` settings and a metrics port.
fn agent(dir: &Path, db: &Path, replica: &Path, extra: &str) -> (Agent, u16) {
    let cfg = dir.join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [\"file://{}\"]\n{extra}",
            db.display(),
            replica.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut a = Agent::start(
        &[
            "replicate",
            "--config",
            cfg.to_str().unwrap(),
            "--metrics-addr",
            &addr,
        ],
        &dir.join("a.log"),
    );
    a.wait_for_log("replicating");
    wait_until("the metrics endpoint", Duration::from_secs(30), || {
        http_get(port, "/metrics").is_some()
    });
    (a, port)
}

#[test]
fn an_idle_database_makes_no_requests_and_a_commit_after_a_quiet_spell_ships_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    let c = app_conn(&db, 4096);
    create_schema(&c);
    // A budget of one PUT every 10 s (a burst of 4) and a 60 s poll: a commit that waited for
    // either the budget or the poll would take seconds, one woken by the WAL's file-system event
    // with a token saved up ships within milliseconds.
    let (agent, port) = agent(
        dir.path(),
        &db,
        &replica,
        "puts-per-second = 0.1\nput-burst = 4.0\npoll-interval = \"60s\"\n",
    );
    mixed_txn(&c, 0);
    wait_until("the first commit to ship", Duration::from_secs(30), || {
        segments(&replica) == 1
    });
    wait_until(
        "the metrics to count both PUTs",
        Duration::from_secs(30),
        || puts(port) == 2.0,
    );
    // An observation window, not a synchronisation: nothing is written during it.
    let before = requests(port);
    std::thread::sleep(Duration::from_secs(3));
    let after = requests(port);
    assert_eq!(
        after.1 - before.1,
        0.0,
        "an idle database cost requests in 3 s: before {:#?}, after {:#?}\nagent log:\n{}",
        before.0,
        after.0,
        agent.log_text()
    );

    let committed = Instant::now();
    mixed_txn(&c, 1);
    wait_until("the commit to ship", Duration::from_secs(30), || {
        segments(&replica) == 2
    });
    let took = committed.elapsed();
    eprintln!("a commit after 3 s of quiet shipped in {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "a commit after a quiet spell took {took:?} to ship (the budget would allow one PUT \
         per 10 s, the poll is 60 s: it waited for one of them)"
    );
    agent.stop_ok();
    restore_and_compare(
        &format!("file://{}", replica.display()),
        &dir.path().join("out.db"),
        &db,
    );
}

#[test]
fn sustained_writes_coalesce_to_about_one_put_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    create_schema(&app_conn(&db, 4096));
    // The defaults: one PUT a second, a burst of 4.
    let (agent, port) = agent(dir.path(), &db, &replica, "");
    wait_until("the snapshot", Duration::from_secs(30), || {
        puts(port) >= 1.0
    });
    let (puts_before, started) = (puts(port), Instant::now());
    // 400 commits, 10 ms apart: about 6 s of steady writes (the load is a count, not a wait).
    let n = Writer::start_paced(&db, 4096, 0, 400, Duration::from_millis(10)).finish();
    let (put, secs) = (puts(port) - puts_before, started.elapsed().as_secs_f64());
    eprintln!("{n} commits in {secs:.1} s: {put} PUTs");
    // At most the burst plus one a second (and one in flight); at least one every other second
    // (shipping goes on during the writes, not only at the end).
    assert!(
        put <= 4.0 + secs.ceil() + 1.0,
        "{put} PUTs for {n} commits in {secs:.1} s: more than the budget of one a second"
    );
    assert!(
        put >= (secs / 2.0).floor(),
        "{put} PUTs in {secs:.1} s of writes"
    );
    assert!(
        n >= 100 && (n as f64) > 10.0 * put,
        "{n} commits, {put} PUTs"
    );
    agent.stop_ok();
    restore_and_compare(
        &format!("file://{}", replica.display()),
        &dir.path().join("out.db"),
        &db,
    );
}
