//! Packing: a slow writer's one-commit segments are stored again as packs (of 4 here, with
//! `--pack-segments 4`, to keep the tests short; 16 by default, which
//! `faults::packs_and_deletions_whose_answers_are_lost_lose_nothing` runs with), the originals
//! deleted, and every transaction still restores exactly; an agent resumes after a pack; a
//! restore planned before a pack replaced its segments lists again and succeeds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_agent::catalog::Catalog;
use lifeboat_agent::restore::{self, RestoreOptions, Target};
use lifeboat_storage::local::LocalClient;
use lifeboat_storage::ReplicaClient;
use rusqlite::Connection;

use crate::format2::{digest, restore_txid};
use crate::support::*;

/// `(first, last)` of every object with `suffix` under the replica.
fn ranges(replica: &Path, suffix: &str) -> Vec<(u64, u64)> {
    files_with_suffix(replica, suffix)
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            let mut it = name.split('-');
            let first = u64::from_str_radix(it.next().unwrap(), 16).unwrap();
            let last = u64::from_str_radix(it.next().unwrap(), 16).unwrap();
            (first, last)
        })
        .collect()
}

/// A database with the mixed workload's schema, replicated to a folder in packs of 4 segments.
/// Its first snapshot is txid 0.
struct Scene {
    dir: tempfile::TempDir,
    db: PathBuf,
    replica: PathBuf,
    url: String,
    conn: Connection,
    agent: Option<Agent>,
    /// The writer's digest after each txid (index = txid).
    oracle: Vec<u64>,
}

impl Scene {
    fn start() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let replica = dir.path().join("replica");
        let url = format!("file://{}", replica.display());
        let conn = app_conn(&db, 4096);
        create_schema(&conn);
        for seq in 0..20 {
            mixed_txn(&conn, seq);
        }
        let oracle = vec![digest(&conn)];
        let mut sc = Scene {
            dir,
            db,
            replica,
            url,
            conn,
            agent: None,
            oracle,
        };
        sc.start_agent("agent.log");
        wait_until("the first snapshot", Duration::from_secs(20), || {
            !files_with_suffix(&sc.replica, ".lbsnap").is_empty()
        });
        sc
    }

    fn start_agent(&mut self, log: &str) {
        self.agent = Some(Agent::start(
            &[
                "replicate",
                self.db.to_str().unwrap(),
                &self.url,
                "--pack-segments",
                "4",
            ],
            &self.dir.path().join(log),
        ));
    }

    /// Commits `n` transactions one at a time, each shipped (so each its own segment) before the
    /// next: what an app committing every few seconds does.
    fn commit_slowly(&mut self, n: usize) {
        for _ in 0..n {
            let txid = self.oracle.len() as u64;
            mixed_txn(&self.conn, 1000 + txid);
            self.oracle.push(digest(&self.conn));
            wait_until(
                &format!("txid {txid} shipped"),
                Duration::from_secs(30),
                || newest_shipped_txid(&self.replica) >= txid,
            );
        }
    }

    fn last_txid(&self) -> u64 {
        self.oracle.len() as u64 - 1
    }
}

/// Every pack's segments are gone, and packs and segments cover `1..=last` once, in order.
fn assert_packed_exactly(replica: &Path, last: u64) {
    let packs = ranges(replica, ".lbpack");
    let segs = ranges(replica, ".lbseg");
    let mut all: Vec<(u64, u64)> = packs.iter().chain(&segs).copied().collect();
    all.sort();
    let mut next = 1;
    for (first, l) in &all {
        assert_eq!(
            *first, next,
            "objects {all:?} (packs {packs:?}) do not follow each other"
        );
        next = l + 1;
    }
    assert_eq!(next, last + 1, "objects {all:?} do not reach txid {last}");
}

#[test]
fn a_slow_writers_segments_are_packed_and_every_txid_restores() {
    let mut sc = Scene::start();
    sc.commit_slowly(15);
    // Packs of 1..4, 5..8, 9..12; 13, 14 and 15 still on their own.
    // The pack lands before its segments' deletions do.
    wait_until(
        "three packs and their segments deleted",
        Duration::from_secs(30),
        || ranges(&sc.replica, ".lbpack").len() == 3 && ranges(&sc.replica, ".lbseg").len() == 3,
    );
    assert_eq!(
        ranges(&sc.replica, ".lbpack"),
        [(1, 4), (5, 8), (9, 12)],
        "packs"
    );
    assert_packed_exactly(&sc.replica, 15);
    assert_eq!(
        ranges(&sc.replica, ".lbseg"),
        [(13, 13), (14, 14), (15, 15)]
    );

    // Every transaction, from packs and segments alike, restores to the writer's state then.
    let out = sc.dir.path().join("out.db");
    for (txid, want) in sc.oracle.iter().enumerate() {
        restore_txid(&sc.url, &out, txid as u64);
        let r = Connection::open(&out).unwrap();
        assert_eq!(
            digest(&r),
            *want,
            "txid {txid}: the restored rows differ from the writer's at that commit"
        );
    }
    let o = run(&["verify", &sc.url]);
    assert!(
        o.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    sc.agent.take().unwrap().stop_ok();

    // A flipped byte in a part of a pack: restore and verify refuse, naming the pack.
    let pack = files_with_suffix(&sc.replica, ".lbpack")[1].clone();
    let mut b = std::fs::read(&pack).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x10;
    std::fs::write(&pack, b).unwrap();
    let name = pack.file_name().unwrap().to_str().unwrap();
    let o = run(&["restore", &sc.url, "-o", out.to_str().unwrap(), "--force"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(name), "restore: {err}");
    let o = run(&["verify", &sc.url]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success() && said.contains(name), "verify: {said}");
}

#[test]
fn an_agent_resumes_a_generation_whose_last_object_is_a_pack() {
    let mut sc = Scene::start();
    sc.commit_slowly(8);
    wait_until(
        "two packs and their segments deleted",
        Duration::from_secs(30),
        || ranges(&sc.replica, ".lbpack").len() == 2 && ranges(&sc.replica, ".lbseg").is_empty(),
    );
    sc.agent.take().unwrap().stop_ok();

    // The next agent finds its tip in the pack's last part: same generation, no new snapshot.
    sc.start_agent("agent2.log");
    sc.commit_slowly(3);
    let gens = std::fs::read_dir(sc.replica.join("generations"))
        .unwrap()
        .count();
    assert_eq!(gens, 1, "a new generation started instead of resuming");
    assert_eq!(files_with_suffix(&sc.replica, ".lbsnap").len(), 1);
    assert_packed_exactly(&sc.replica, sc.last_txid());
    sc.agent.take().unwrap().stop_ok();
    restore_and_compare(&sc.url, &sc.dir.path().join("out.db"), &sc.db);
}

/// Makes `client`'s `generations/` hold exactly what the folder replica at `replica` holds.
async fn mirror(client: &dyn ReplicaClient, replica: &Path) {
    let mut local = Vec::new();
    for suffix in [".lbsnap", ".lbseg", ".lbpack", ".lbfence"] {
        for p in files_with_suffix(replica, suffix) {
            let key = p
                .strip_prefix(replica)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            client
                .put(&key, std::fs::read(&p).unwrap().into())
                .await
                .unwrap();
            local.push(key);
        }
    }
    for o in client.list("generations/").await.unwrap() {
        if !local.contains(&o.key) {
            client.delete(&o.key).await.unwrap();
        }
    }
}

/// The restore is planned from a listing, then its segments are packed and deleted before it
/// reads them: it lists again and restores from the pack. On a folder, and on S3 (moto), whose
/// not-found error names the object by its URL.
#[test]
fn a_restore_planned_before_a_pack_replaced_its_segments_lists_again() {
    let mut sc = Scene::start();
    sc.commit_slowly(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = rt.block_on(lifeboat_storage_s3::testing::S3TestServer::start());
    let clients: [Arc<dyn ReplicaClient>; 2] = [
        Arc::new(LocalClient::new(&sc.replica)),
        Arc::new(rt.block_on(s3.client("race"))),
    ];
    rt.block_on(mirror(clients[1].as_ref(), &sc.replica));
    // Plan from a listing that holds segments 1..3, the way every restore starts.
    let plans: Vec<_> = clients
        .iter()
        .map(|c| {
            let cat = rt.block_on(Catalog::load(c.as_ref())).unwrap();
            let plan = restore::plan(&cat, None, Target::Latest).unwrap();
            assert_eq!(plan.segments.len(), 3, "{}: {plan:?}", c.describe());
            plan
        })
        .collect();
    // One more commit: the agent packs 1..4 and deletes the segments the plans name.
    sc.commit_slowly(1);
    wait_until("the pack of 1..4", Duration::from_secs(30), || {
        ranges(&sc.replica, ".lbseg").is_empty()
    });
    assert_eq!(ranges(&sc.replica, ".lbpack"), [(1, 4)]);
    sc.agent.take().unwrap().stop_ok();
    rt.block_on(mirror(clients[1].as_ref(), &sc.replica));

    for (i, (client, plan)) in clients.iter().zip(&plans).enumerate() {
        let out = sc.dir.path().join(format!("out{i}.db"));
        let report = rt
            .block_on(restore::execute(
                client.as_ref(),
                plan,
                &RestoreOptions::new(out.clone()),
            ))
            .unwrap_or_else(|e| panic!("{}: {e:#}", client.describe()));
        // It restored the newest state, from the new listing.
        assert_eq!(report.txid.0, 4, "{}", client.describe());
        assert_eq!(report.objects, 2, "the snapshot and the pack");
        let r = Connection::open(&out).unwrap();
        assert_eq!(digest(&r), sc.oracle[4], "{}", client.describe());
    }
}
