//! Network faults between the agent and a real S3 server (moto behind the fault proxy), with a
//! writer committing throughout on its own connection (WAL mode, autocheckpoint on). Each test
//! ends with a restore compared page for page with the writer's database and a clean `verify`
//! (no problem, no fork). See docs/faults.md for what each fault is and what lifeboat does.

use std::time::{Duration, Instant};

use lifeboat_faultproxy::{Fault, Rule};

use crate::support::faults::*;
use crate::support::*;

/// The writer's pause between transactions (a few hundred commits a second).
const PACE: Duration = Duration::from_millis(4);

/// Writer, agent and proxy for one test: the agent replicates `app.db` through the proxy.
struct Scene {
    s3: FaultyS3,
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    prefix: String,
}

impl Scene {
    fn new(prefix: &str) -> Scene {
        let s3 = FaultyS3::start();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        create_schema(&app_conn(&db, 4096));
        Scene {
            s3,
            dir,
            db,
            prefix: prefix.into(),
        }
    }

    fn url(&self) -> String {
        self.s3.url(&self.prefix)
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let mut args = vec!["replicate", self.db.to_str().unwrap()];
        let url = self.url();
        args.push(&url);
        args.extend_from_slice(extra);
        let mut a = Agent::start_env(&args, &self.dir.path().join("agent.log"), &self.s3.env());
        a.wait_for_log("replicating");
        a
    }

    /// Waits until the proxy has given `n` more faults than `since`.
    fn wait_faults(&self, since: u64, n: u64, timeout: Duration) {
        wait_until(&format!("{n} faulted requests"), timeout, || {
            self.s3.counts().faulted >= since + n
        });
    }

    /// Restores straight from moto, compares with the writer's database, and verifies.
    fn restore_and_verify(&self) -> String {
        let direct = self.s3.direct_url(&self.prefix);
        let env = self.s3.env();
        restore_and_compare_env(&direct, &self.dir.path().join("out.db"), &self.db, &env);
        let out = self.dir.path().join("out.db");
        assert_eq!(last_mark(&out), last_mark(&self.db), "no commit lost");
        verify_clean(&direct, &env)
    }
}

/// The case: the server acts on every request but its answers are lost (the client
/// times out) for a while, then it answers again. A segment that timed out landed all the
/// same; the agent must retry that same object, not cut a longer one over the same txids.
#[test]
fn answers_lost_while_requests_land_then_back_no_fork_and_nothing_lost() {
    let sc = Scene::new("lost");
    let agent = sc.agent(&[]);
    let w = PacedWriter::start(&sc.db, PACE);
    wait_until("a first segment", Duration::from_secs(30), || {
        !sc.s3.objects("lost", ".lbseg").is_empty()
    });
    let before = sc.s3.counts();
    sc.s3.set(Rule::all(Fault::LoseResponse));
    // Long enough for a whole pass to fail (its quick retries included) and the next pass to
    // try again: the point where an agent could cut a different segment.
    let mut agent = agent;
    agent.wait_for_log("retry_in"); // a pass failed (record_failure logs the backoff)
    let failed = sc.s3.counts().faulted;
    sc.wait_faults(failed, 1, Duration::from_secs(40));
    let during = sc.s3.counts();
    sc.s3.set(Rule::all(Fault::Pass));
    let outage = during.total() - before.total();
    let n = w.halt();
    agent.stop_ok();
    let log = std::fs::read_to_string(sc.dir.path().join("agent.log")).unwrap();
    // The same generation throughout: the retried segment continued it (no new generation
    // dodged the question).
    assert!(!log.contains("releasing the WAL"), "{log}");
    assert_eq!(sc.s3.objects("lost", ".lbsnap").len(), 1);
    // Every retry sent the same object: no two segments hold the same transactions.
    let segs = sc.s3.objects("lost", ".lbseg");
    eprintln!("segments: {segs:#?}");
    assert!(overlapping(&segs).is_empty(), "{:?}", overlapping(&segs));
    eprintln!(
        "lost answers: {n} commits written, {} restored, {outage} requests during the outage",
        last_mark(&sc.db) + 1
    );
    let v = sc.restore_and_verify();
    eprintln!("{v}");
}

/// The server stops answering altogether (requests never land), then comes back.
#[test]
fn a_stalled_server_then_back_loses_nothing_and_backs_off() {
    let sc = Scene::new("stall");
    let agent = sc.agent(&[]);
    let w = PacedWriter::start(&sc.db, PACE);
    wait_until("a first segment", Duration::from_secs(30), || {
        !sc.s3.objects("stall", ".lbseg").is_empty()
    });
    let before = sc.s3.counts();
    let t0 = Instant::now();
    sc.s3.set(Rule::all(Fault::Stall));
    sc.wait_faults(before.faulted, 3, Duration::from_secs(40));
    let requests = sc.s3.counts().total() - before.total();
    let secs = t0.elapsed().as_secs_f64();
    sc.s3.set(Rule::all(Fault::Pass));
    // Backoff, not a busy loop: a handful of requests a second at most.
    assert!(
        (requests as f64) < 5.0 + 3.0 * secs,
        "{requests} requests in {secs:.1}s of outage"
    );
    let n = w.halt();
    agent.stop_ok();
    eprintln!("stall: {n} commits, {requests} requests in {secs:.1}s of outage");
    sc.restore_and_verify();
}

/// Resets before and after the request body and 5xx / 503 SlowDown on a share of requests,
/// one after the other, with writes throughout.
#[test]
fn resets_and_server_errors_on_a_share_of_requests_lose_nothing() {
    let sc = Scene::new("flaky");
    let agent = sc.agent(&[]);
    let w = PacedWriter::start(&sc.db, PACE);
    wait_until("a first segment", Duration::from_secs(30), || {
        !sc.s3.objects("flaky", ".lbseg").is_empty()
    });
    for fault in [
        Fault::ResetAfterBody,
        Fault::ResetBeforeBody,
        Fault::ServerError(500),
        Fault::ServerError(503),
    ] {
        let before = sc.s3.counts().faulted;
        sc.s3.set(Rule::methods(fault, &["PUT"]).share(0.5));
        sc.wait_faults(before, 2, Duration::from_secs(30));
    }
    sc.s3.set(Rule::all(Fault::Pass));
    let n = w.halt();
    agent.stop_ok();
    eprintln!("resets and 5xx: {n} commits");
    sc.restore_and_verify();
}

/// Packs (see `replica::packing`) while the server acts on every request but loses a share of
/// the answers: first to the batch deletes (DeleteObjects, a POST: the packed segments are
/// deleted, the agent cannot know), then to PUTs (a pack that landed may be taken for failed,
/// and its segments kept beside it). Whatever the agent concluded, nothing is lost and every
/// copy agrees with the pack.
#[test]
fn packs_and_deletions_whose_answers_are_lost_lose_nothing() {
    let sc = Scene::new("packs");
    let per_pack = 16;
    let agent = sc.agent(&["--pack-segments", &per_pack.to_string()]);
    // A slow writer: a few commits a second, so one small segment a second (the PUT budget),
    // packed in sixteens.
    let w = PacedWriter::start(&sc.db, Duration::from_millis(250));
    wait_until("a first pack", Duration::from_secs(60), || {
        !sc.s3.objects("packs", ".lbpack").is_empty()
    });
    for method in ["POST", "PUT"] {
        let before = sc.s3.counts().faulted;
        sc.s3
            .set(Rule::methods(Fault::LoseResponse, &[method]).share(0.5));
        sc.wait_faults(before, 2, Duration::from_secs(90));
    }
    sc.s3.set(Rule::all(Fault::Pass));
    let packs = sc.s3.objects("packs", ".lbpack").len();
    wait_until("a pack after the faults", Duration::from_secs(60), || {
        sc.s3.objects("packs", ".lbpack").len() > packs
    });
    let n = w.halt();
    agent.stop_ok();
    let counts = sc.s3.counts();
    let batches = counts.requests.get("POST").copied().unwrap_or(0);
    let packs = sc.s3.objects("packs", ".lbpack").len();
    let segments = sc.s3.objects("packs", ".lbseg").len();
    eprintln!(
        "packs through lost answers: {n} commits, {packs} packs, {segments} segments left, \
         {batches} batch deletes"
    );
    // Each pack replaced 16 segments unless its deletes were lost with the agent none the
    // wiser; had no delete landed, every pack would have its 16 segments beside it.
    assert!(
        segments < per_pack * packs,
        "{segments} segments beside {packs} packs of {per_pack}: no pack replaced its segments"
    );
    sc.restore_and_verify();
}

/// A store that refuses DeleteObjects (as MinIO before 2025 does without `Content-MD5`): the
/// first pack's batch delete is refused, its segments are deleted one DELETE each, and no batch
/// is sent again; with a live writer, every pack still replaces its segments and nothing is lost.
#[test]
fn a_store_that_refuses_batch_deletes_gets_one_delete_per_packed_segment() {
    let sc = Scene::new("no-batch");
    sc.s3.set(Rule::methods(Fault::ServerError(400), &["POST"]));
    let per_pack: u64 = 4;
    let agent = sc.agent(&["--pack-segments", &per_pack.to_string()]);
    let w = PacedWriter::start(&sc.db, Duration::from_millis(250));
    wait_until(
        "three packs' segments deleted",
        Duration::from_secs(90),
        || sc.s3.counts().requests.get("DELETE").copied().unwrap_or(0) >= 3 * per_pack,
    );
    let n = w.halt();
    agent.stop_ok();
    let counts = sc.s3.counts();
    let packs = sc.s3.objects("no-batch", ".lbpack").len() as u64;
    let segments = sc.s3.objects("no-batch", ".lbseg").len() as u64;
    eprintln!(
        "batch deletes refused: {n} commits, {packs} packs, {segments} segments left, requests {:?}",
        counts.requests
    );
    assert_eq!(
        counts.requests.get("POST").copied().unwrap_or(0),
        1,
        "one refused batch, then no more"
    );
    assert!(
        segments < per_pack * packs,
        "{segments} segments beside {packs} packs of {per_pack}: the packs' segments were not deleted"
    );
    let log = std::fs::read_to_string(sc.dir.path().join("agent.log")).unwrap();
    assert!(
        log.contains("refuses DeleteObjects"),
        "the agent's log says why it deletes one by one:\n{log}"
    );
    sc.restore_and_verify();
}

/// Answers delayed past the client's timeout while the server completes each request (late
/// landing), then on time again.
#[test]
fn answers_delayed_past_the_timeout_land_late_and_nothing_forks() {
    let sc = Scene::new("late");
    let agent = sc.agent(&[]);
    let w = PacedWriter::start(&sc.db, PACE);
    wait_until("a first segment", Duration::from_secs(30), || {
        !sc.s3.objects("late", ".lbseg").is_empty()
    });
    let before = sc.s3.counts().faulted;
    sc.s3.set(Rule::methods(
        Fault::Delay(Duration::from_secs(3)),
        &["PUT"],
    ));
    sc.wait_faults(before, 3, Duration::from_secs(40));
    sc.s3.set(Rule::all(Fault::Pass));
    let n = w.halt();
    agent.stop_ok();
    eprintln!("late answers: {n} commits");
    sc.restore_and_verify();
}

/// A segment upload held in the network while its agent is killed lands after the next
/// agent resumed the generation and shipped the same transactions cut differently: a
/// redundant copy, which restore and verify accept (verify names it), not a fork.
#[test]
fn a_segment_landing_after_the_next_agent_resumed_is_a_redundant_copy_not_a_fork() {
    let sc = Scene::new("late-copy");
    let first = sc.agent(&[]);
    let w = PacedWriter::start(&sc.db, PACE);
    wait_until("a first segment", Duration::from_secs(30), || {
        !sc.s3.objects("late-copy", ".lbseg").is_empty()
    });
    let before = sc.s3.counts();
    sc.s3.set(Rule::methods(
        Fault::LateForward(Duration::from_secs(6)),
        &["PUT"],
    ));
    wait_until("a PUT held in the network", Duration::from_secs(20), || {
        sc.s3.counts().faulted > before.faulted
    });
    let held_at = Instant::now();
    // The writer pauses while the agents change over: with no agent holding the WAL, the
    // app's checkpoints would move the database past the replica's last state, and the next
    // agent would (rightly) start a new generation instead of resuming this one.
    let n = w.halt();
    first.kill();
    let segments_before = sc.s3.objects("late-copy", ".lbseg").len();
    // The next agent talks to the server directly and resumes the same generation.
    let direct = sc.s3.direct_url("late-copy");
    let mut second = Agent::start_env(
        &["replicate", sc.db.to_str().unwrap(), &direct],
        &sc.dir.path().join("second.log"),
        &sc.s3.env(),
    );
    second.wait_for_log("resuming generation");
    let w = PacedWriter::start_at(&sc.db, n, PACE);
    wait_until("the held PUT to land", Duration::from_secs(30), || {
        held_at.elapsed() > Duration::from_secs(6)
            && sc.s3.objects("late-copy", ".lbseg").len() > segments_before + 1
    });
    let m = w.halt();
    second.stop_ok();
    eprintln!("late copy: {} commits", n + m);
    let v = sc.restore_and_verify();
    assert!(v.contains("redundant copy"), "verify names the copy:\n{v}");
}

/// `/health` while the replica is blackholed: lag grows from the oldest unshipped commit,
/// pending is counted, caught_up is false, and the status turns unhealthy past
/// `--health-max-lag`; after the outage it recovers.
#[test]
fn health_tells_the_truth_while_the_replica_is_blackholed() {
    let sc = Scene::new("health");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = sc.agent(&["--health-addr", &addr, "--health-max-lag", "4s"]);
    let c = app_conn(&sc.db, 4096);
    mixed_txn(&c, 0);
    // Caught up with that commit shipped: "caught up" alone may still be the state before the
    // agent saw it (then it would count among the pending ones below).
    wait_until("healthy and caught up", Duration::from_secs(30), || {
        http_get(port, "/health").is_some_and(|(code, b)| {
            code == 200
                && b.contains("\"caught_up\": true")
                && b.contains("\"pending_txns\": 0")
                && b.contains("\"txns\": 1,")
        })
    });
    sc.s3.set(Rule::all(Fault::Blackhole));
    for i in 1..=3 {
        mixed_txn(&c, i);
    }
    let committed = Instant::now();
    // Soon after the commits: behind, with the commits counted, though not yet unhealthy.
    wait_until(
        "pending commits in /health",
        Duration::from_secs(10),
        || {
            http_get(port, "/health").is_some_and(|(_, b)| {
                b.contains("\"pending_txns\": 3") && b.contains("\"caught_up\": false")
            })
        },
    );
    let lag = |b: &str| -> f64 {
        let at = b.find("\"lag_seconds\": ").unwrap() + 15;
        b[at..]
            .split([',', '\n'])
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    wait_until(
        "unhealthy past the max lag",
        Duration::from_secs(15),
        || http_get(port, "/health").is_some_and(|(code, b)| code == 503 && lag(&b) >= 4.0),
    );
    let (_, b) = http_get(port, "/health").unwrap();
    let elapsed = committed.elapsed().as_secs_f64();
    assert!(
        lag(&b) <= elapsed + 0.5,
        "lag counts from the commit: {} > {elapsed}",
        lag(&b)
    );
    sc.s3.set(Rule::all(Fault::Pass));
    wait_until("healthy again", Duration::from_secs(45), || {
        http_get(port, "/health")
            .is_some_and(|(code, b)| code == 200 && b.contains("\"pending_txns\": 0"))
    });
    agent.stop_ok();
    sc.restore_and_verify();
}

/// `max-wal-bytes` holds while the replica is down: the agent releases the WAL so the app's
/// checkpoints go on, and starts a new generation when the replica is back. The writer appends
/// several times the bound to the WAL during the outage; the file stays within a small multiple
/// of it (the bound is checked on every wake-up and during uploads, not only after a pass).
#[test]
fn max_wal_bytes_holds_while_the_replica_is_blackholed() {
    let sc = Scene::new("walcap");
    const CAP: u64 = 8 << 20;
    let cfg = config(
        sc.dir.path(),
        &sc.db,
        &sc.url(),
        &format!("max-wal-bytes = {CAP}\ntruncate-wal-bytes = {CAP}"),
    );
    let mut agent = Agent::start_env(
        &["replicate", "--config", cfg.to_str().unwrap()],
        &sc.dir.path().join("agent.log"),
        &sc.s3.env(),
    );
    agent.wait_for_log("replicating");
    let w = PacedWriter::start(&sc.db, Duration::from_micros(500));
    wait_until("a first segment", Duration::from_secs(30), || {
        !sc.s3.objects("walcap", ".lbseg").is_empty()
    });
    sc.s3.set(Rule::all(Fault::Blackhole));
    let wal = sc.dir.path().join("app.db-wal");
    let size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    let (mut largest, mut appended, mut last) = (0, 0, size());
    let t0 = Instant::now();
    // Until the app has appended several times the bound (or 30 s have passed).
    while t0.elapsed() < Duration::from_secs(30) && appended < 5 * CAP {
        let s = size();
        appended += s.saturating_sub(last);
        largest = largest.max(s);
        last = s;
        // Sampling the WAL's size every 5 ms, within the loop's deadline.
        std::thread::sleep(Duration::from_millis(5));
    }
    agent.wait_for_log("releasing the WAL");
    sc.s3.set(Rule::all(Fault::Pass));
    let n = w.halt();
    agent.wait_for_log("new generation");
    agent.stop_ok();
    eprintln!(
        "max-wal-bytes {CAP}: at least {appended} bytes appended to the WAL during the outage, \
         largest WAL {largest} bytes, {n} commits in all"
    );
    assert!(
        appended >= 5 * CAP,
        "the writer appended only {appended} bytes"
    );
    assert!(
        largest < 5 * CAP / 2,
        "the WAL grew to {largest} bytes with max-wal-bytes = {CAP}"
    );
    sc.restore_and_verify();
}

/// On a stop, the final sync retries a failing replica at once instead of waiting out its
/// backoff (8 s here, up to 30 s), so a stop signal is not held up by an endpoint that is back.
#[test]
fn a_stop_retries_at_once_when_the_endpoint_is_back() {
    let sc = Scene::new("stop");
    let mut agent = sc.agent(&[]);
    // A commit made before the first snapshot lands in it, and no segment would follow.
    agent.wait_until_known();
    let c = app_conn(&sc.db, 4096);
    mixed_txn(&c, 0);
    wait_until("a first segment", Duration::from_secs(30), || {
        !sc.s3.objects("stop", ".lbseg").is_empty()
    });
    sc.s3.set(Rule::all(Fault::Stall));
    for i in 1..=3 {
        mixed_txn(&c, i);
    }
    // Four failed passes: the next try is 8 s away.
    wait_until("four failed passes", Duration::from_secs(40), || {
        agent.log_text().matches("retry_in").count() >= 4
    });
    sc.s3.set(Rule::all(Fault::Pass));
    let t = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait(Duration::from_secs(30));
    let took = t.elapsed();
    assert!(status.success(), "{}", agent.log_text());
    assert!(took < Duration::from_secs(4), "the stop took {took:?}");
    eprintln!("stop with the endpoint back: {took:?}");
    sc.restore_and_verify();
    assert_eq!(last_mark(&sc.dir.path().join("out.db")), 3);
}

/// With the replica still down, `lifeboat run` ends its final sync at `--shutdown-timeout` and
/// exits 75 (the app succeeded, its newest writes may not be in the replica).
#[test]
fn with_the_replica_down_the_final_sync_ends_at_the_shutdown_timeout() {
    let sc = Scene::new("down");
    let url = sc.url();
    let mut run = Agent::start_env(
        &[
            "run",
            "--db",
            sc.db.to_str().unwrap(),
            "--replica",
            &url,
            "--shutdown-timeout",
            "2s",
            "--",
            "sleep",
            "3",
        ],
        &sc.dir.path().join("agent.log"),
        &sc.s3.env(),
    );
    run.wait_for_log("starting the app");
    sc.s3.set(Rule::all(Fault::Stall));
    let c = app_conn(&sc.db, 4096);
    for i in 0..3 {
        mixed_txn(&c, i);
    }
    run.wait_for_log("the app exited");
    let t = Instant::now();
    let status = run.wait(Duration::from_secs(30));
    let took = t.elapsed();
    assert_eq!(status.code(), Some(75), "{}", run.log_text());
    // The timeout counts from the stop, even for an upload that was hanging when it came.
    assert!(
        took < Duration::from_millis(3500),
        "the final sync took {took:?}: {}",
        run.log_text()
    );
    eprintln!("final sync with the replica down: {took:?}");
}

/// A restore through 20 % of GETs answered 500, then 20 % cut short, completes and verifies.
#[test]
fn a_restore_through_server_errors_and_truncated_bodies_completes() {
    let sc = Scene::new("restore");
    let agent = sc.agent(&[]);
    let w = Writer::start(&sc.db, 4096, 0, 400);
    assert_eq!(w.finish(), 400);
    agent.stop_ok();
    let env = sc.s3.env();
    for (i, fault) in [Fault::ServerError(500), Fault::TruncateBody]
        .into_iter()
        .enumerate()
    {
        let before = sc.s3.counts().faulted;
        sc.s3.set(Rule::methods(fault, &["GET"]).share(0.2));
        let out = sc.dir.path().join(format!("r{i}.db"));
        restore_and_compare_env(&sc.url(), &out, &sc.db, &env);
        assert!(
            sc.s3.counts().faulted > before,
            "{fault:?} was injected at least once"
        );
    }
    sc.s3.set(Rule::all(Fault::Pass));
    sc.restore_and_verify();
}

/// A multipart upload left by an agent killed mid-way (its parts cost storage for ever) is
/// aborted by the next agent once it has read the replica; one outside its prefix is left
/// alone. (moto dates every upload 2010, so both look older than the day the agent waits.)
#[test]
fn the_next_agent_aborts_the_multipart_upload_a_killed_one_left() {
    let sc = Scene::new("parts");
    let s = &sc.s3;
    let uploads = || {
        s.rt.block_on(async {
            let c = s.server.client("").await;
            let out = c.sdk().list_multipart_uploads().bucket(s.server.bucket());
            let out = out.send().await.unwrap();
            let mut keys: Vec<String> = out
                .uploads()
                .iter()
                .filter_map(|u| u.key())
                .map(String::from)
                .collect();
            keys.sort();
            keys
        })
    };
    let left = [
        "elsewhere/big",
        "parts/generations/0000000000000001/snapshots/big.lbsnap",
    ];
    s.rt.block_on(async {
        let c = s.server.client("").await;
        for key in left {
            let up = c
                .sdk()
                .create_multipart_upload()
                .bucket(s.server.bucket())
                .key(key);
            up.send().await.unwrap();
        }
    });
    assert_eq!(uploads(), left);
    let mut agent = sc.agent(&[]);
    agent.wait_for_log("removed uploads interrupted over a day ago");
    assert_eq!(uploads(), ["elsewhere/big"]);
    agent.stop_ok();
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["agent.log", "second.log"] {
                if let Ok(log) = std::fs::read_to_string(self.dir.path().join(name)) {
                    let tail: Vec<&str> = log.lines().rev().take(60).collect();
                    eprintln!(
                        "--- {name} (last lines) ---\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    }
}

/// Set-up mistakes stop `replicate` at start with one line that says what to fix (no retry
/// loop, no IMDS or network talk): a bucket that does not exist, and no credentials at all.
#[test]
fn set_up_mistakes_stop_at_start_with_one_line_naming_the_fix() {
    let s3 = FaultyS3::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create_schema(&app_conn(&db, 4096));
    let home = dir.path().to_str().unwrap();
    let wrong_bucket = format!(
        "s3://no-such-bucket-here/p?endpoint={}&region=us-east-1",
        s3.server.endpoint()
    );
    let no_creds_env = [
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("HOME", home),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ];
    let with_creds: Vec<(&str, &str)> = s3.env();
    for (url, env, expect) in [
        (
            wrong_bucket.as_str(),
            &with_creds[..],
            &["no-such-bucket-here", "create it"][..],
        ),
        (
            &s3.direct_url("p")[..],
            &no_creds_env[..],
            &["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"][..],
        ),
    ] {
        let t = Instant::now();
        let o = std::process::Command::new(bin())
            .args(["replicate", db.to_str().unwrap(), url])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .envs(env.iter().copied())
            .env("LIFEBOAT_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "took {:?}",
            t.elapsed()
        );
        let line = err
            .lines()
            .find(|l| l.starts_with("lifeboat: "))
            .unwrap_or_else(|| panic!("no error line: {err}"));
        for e in expect {
            assert!(line.contains(e), "{e:?} not in {line}");
        }
        assert!(
            !err.contains("IMDS") && !err.contains("dispatch failure"),
            "{err}"
        );
        assert!(!err.contains("will try again"), "no retry loop: {err}");
        eprintln!("{line}");
    }
}
