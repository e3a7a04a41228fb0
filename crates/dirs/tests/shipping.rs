//! The shipper against the in-memory backend: restore points, delayed deletions, dedup, no
//! requests when idle, verify and restore naming a corrupt blob, prune keeping what is needed.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_dirs::{prune, restore, verify, DirOptions, DirShipper, DirSpec};
use lifeboat_storage::counting::Counting;
use lifeboat_storage::memory::MemoryClient;
use lifeboat_storage::{keys, ReplicaClient};
use lifeboat_wal::{Generation, TxId};

struct Fixture {
    rt: tokio::runtime::Runtime,
    mem: Arc<MemoryClient>,
    counting: Arc<Counting>,
    ship: DirShipper,
    dir: tempfile::TempDir,
}

const G: Generation = Generation(0x100);

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mem = Arc::new(MemoryClient::default());
    let counting = Arc::new(Counting::new(mem.clone()));
    let dir = tempfile::tempdir().unwrap();
    let ship = open_shipper(&rt, &counting, dir.path());
    Fixture {
        rt,
        mem,
        counting,
        ship,
        dir,
    }
}

/// A shipper of `dir`/uploads, as a process starting over the replica would open it.
fn open_shipper(rt: &tokio::runtime::Runtime, counting: &Arc<Counting>, dir: &Path) -> DirShipper {
    let opts = DirOptions {
        settle: Duration::from_millis(20),
        base_every: 3,
        staging_dir: dir.to_path_buf(),
        ..DirOptions::default()
    };
    let spec = DirSpec::parse(dir.join("uploads").to_str().unwrap()).unwrap();
    let client: Arc<dyn ReplicaClient> = counting.clone();
    DirShipper::open(&[spec], vec![client], opts, rt.handle().clone()).unwrap()
}

impl Fixture {
    fn up(&self) -> std::path::PathBuf {
        self.dir.path().join("uploads")
    }
    fn flush(&self, txid: u64, complete: bool) -> lifeboat_dirs::FlushReport {
        self.ship.flush(0, G, TxId(txid), complete).unwrap()
    }
    fn restore(&self, txid: u64, out: &str) -> std::path::PathBuf {
        let out = self.dir.path().join(out);
        self.rt
            .block_on(restore::restore(
                self.mem.as_ref(),
                "uploads",
                Some((G, TxId(txid))),
                &out,
                false,
            ))
            .unwrap();
        out
    }
    fn puts(&self) -> u64 {
        self.counting.counts().put.load(Ordering::Relaxed)
    }
    fn requests(&self) -> u64 {
        self.counting
            .counts()
            .snapshot()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A prune's clock a grace period and an hour from now.
fn later() -> u64 {
    now_ms() + prune::GRACE.as_millis() as u64 + 3_600_000
}

/// The key of the (one) blob holding this content.
fn blob_key(f: &Fixture, sha256: &str) -> String {
    let v =
        f.rt.block_on(f.mem.list(&format!("{}{sha256}-", keys::BLOBS)))
            .unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    v[0].key.clone()
}

fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    fn walk(root: &Path, d: &Path, v: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if m.is_dir() {
                walk(root, &p, v);
            } else if m.is_file() {
                v.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    walk(root, root, &mut v);
    v.sort();
    v
}

#[test]
fn restore_points_follow_the_database_and_deletions_wait() {
    let f = fixture();
    std::fs::write(f.up().join("a.txt"), b"first").unwrap();
    std::fs::create_dir(f.up().join("sub")).unwrap();
    std::fs::write(f.up().join("sub/b.bin"), vec![7u8; 100_000]).unwrap();
    let r = f.flush(1, true);
    assert_eq!((r.blobs, r.manifests), (2, 1));

    // Idle: no request at all.
    let before = f.requests();
    for t in 2..5 {
        assert_eq!(f.flush(t, true).manifests, 0);
    }
    assert_eq!(f.requests(), before, "an unchanged folder made requests");

    // A copy dedups: one small manifest, no blob.
    std::fs::copy(f.up().join("a.txt"), f.up().join("copy.txt")).unwrap();
    let p0 = f.puts();
    let r = f.flush(5, true);
    assert_eq!((r.blobs, r.manifests, f.puts() - p0), (0, 1, 1));

    // A deletion is recorded only at a later complete flush.
    std::fs::remove_file(f.up().join("a.txt")).unwrap();
    assert_eq!(f.flush(6, true).manifests, 0);
    assert_eq!(f.flush(7, false).manifests, 0);
    assert_eq!(f.flush(8, true).manifests, 1);

    let at1 = f.restore(1, "r1");
    assert_eq!(
        files(&at1).iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["a.txt", "sub/b.bin"]
    );
    assert_eq!(
        std::fs::read(at1.join("sub/b.bin")).unwrap(),
        vec![7u8; 100_000]
    );
    // At 6 the file is still there; at 9 (served by the manifest that removed it, which
    // restores what it removed too) as well; a later change makes it go.
    assert!(f.restore(6, "r6").join("a.txt").exists());
    std::fs::write(f.up().join("c.txt"), b"c").unwrap();
    assert_eq!(f.flush(10, true).manifests, 1);
    let at10 = f.restore(10, "r10");
    assert_eq!(
        files(&at10)
            .iter()
            .map(|x| x.0.as_str())
            .collect::<Vec<_>>(),
        ["c.txt", "copy.txt", "sub/b.bin"]
    );
    // Refuses to overwrite.
    let e =
        f.rt.block_on(restore::restore(
            f.mem.as_ref(),
            "uploads",
            None,
            &at10,
            false,
        ))
        .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
}

/// A damaged newest manifest (bit rot, or a manifest an older lifeboat wrote) must not stop
/// shipping, which the database's uploads wait for: a process that cannot read the chain starts
/// a new one from a base, uploading the content again; the damaged restore point is refused.
#[test]
fn a_damaged_newest_manifest_starts_a_new_chain_instead_of_stopping_shipping() {
    let mut f = fixture();
    std::fs::write(f.up().join("a"), b"first").unwrap();
    assert_eq!(f.flush(1, true).manifests, 1);
    let listed =
        f.rt.block_on(f.mem.list(&keys::manifests_prefix("uploads")))
            .unwrap();
    let damaged = listed.last().unwrap().key.clone();
    f.rt.block_on(f.mem.delete(&damaged)).unwrap();
    f.rt.block_on(
        f.mem
            .put(&damaged, bytes::Bytes::from_static(b"{}\n00000000\n")),
    )
    .unwrap();

    drop(std::mem::replace(
        &mut f.ship,
        open_shipper(&f.rt, &f.counting, f.dir.path()),
    ));
    std::fs::write(f.up().join("b"), b"second").unwrap();
    // (Its blobs may go up ahead of the flush, from the background capture: the restore below
    // shows the base names both contents and both are there.)
    assert_eq!(f.flush(2, true).manifests, 1);
    let at2 = f.restore(2, "r2");
    assert_eq!(
        files(&at2),
        [
            ("a".into(), b"first".to_vec()),
            ("b".into(), b"second".to_vec())
        ]
    );
    let e =
        f.rt.block_on(restore::restore(
            f.mem.as_ref(),
            "uploads",
            Some((G, TxId(1))),
            &f.dir.path().join("r1"),
            false,
        ))
        .unwrap_err();
    assert!(e.to_string().contains(&damaged), "{e}");
}

#[test]
fn verify_and_restore_name_a_corrupt_blob_and_prune_keeps_what_is_needed() {
    let f = fixture();
    for i in 0..8u8 {
        std::fs::write(f.up().join(format!("f{i}")), vec![i; 10]).unwrap();
        f.flush(u64::from(i) + 1, true);
        if i >= 1 {
            std::fs::remove_file(f.up().join(format!("f{}", i - 1))).unwrap();
        }
    }
    f.flush(9, true);
    f.flush(10, true);
    let scratch = f.dir.path();
    let ok =
        f.rt.block_on(verify::verify(f.mem.as_ref(), scratch))
            .unwrap();
    assert!(ok.problems.is_empty(), "{:?}", ok.problems);
    assert_eq!(ok.blobs, 8);
    // Keep from txid 9: the oldest files are only in history before it; the chain back to a
    // base stays. Today, the blobs only the deleted manifests named are too young to go.
    let p =
        f.rt.block_on(prune::prune(f.mem.as_ref(), (G, TxId(9)), now_ms(), false))
            .unwrap();
    assert!(!p.manifests.is_empty());
    assert!(p.blobs.is_empty(), "{p:?}");
    // A day later they go.
    let p =
        f.rt.block_on(prune::prune(f.mem.as_ref(), (G, TxId(9)), later(), false))
            .unwrap();
    assert!(!p.blobs.is_empty(), "{p:?}");
    let after =
        f.rt.block_on(verify::verify(f.mem.as_ref(), scratch))
            .unwrap();
    assert!(after.problems.is_empty(), "{:?}", after.problems);
    assert!(after.blobs < 8, "nothing pruned: {p:?}");
    // Every restore point kept still restores.
    for t in 9..=10 {
        let out = f.restore(t, &format!("k{t}"));
        assert!(out.join("f7").exists(), "txid {t}");
    }
    // Tamper with a blob: both name it.
    let h = lifeboat_dirs::entry::sha256_of(&[7u8; 10][..], None)
        .unwrap()
        .0;
    let key = blob_key(&f, &h);
    f.mem.tamper(&key, bytes::Bytes::from_static(b"evil"));
    let bad =
        f.rt.block_on(verify::verify(f.mem.as_ref(), scratch))
            .unwrap();
    assert!(
        bad.problems.iter().any(|p| p.contains(&key)),
        "{:?}",
        bad.problems
    );
    let e =
        f.rt.block_on(restore::restore(
            f.mem.as_ref(),
            "uploads",
            None,
            &scratch.join("bad"),
            false,
        ))
        .unwrap_err();
    assert!(e.to_string().contains(&key), "{e}");
    assert!(!scratch.join("bad").exists());
}

#[test]
fn a_file_deleted_between_flushes_still_reaches_the_restore_points_before() {
    let f = fixture();
    std::fs::write(f.up().join("keep"), b"k").unwrap();
    f.flush(1, true);
    let p0 = f.puts();
    std::fs::write(f.up().join("brief"), b"short-lived").unwrap();
    // Captured and stored between flushes, while it exists.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while f.puts() == p0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the content was never stored"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(f.up().join("brief")).unwrap();
    assert_eq!(f.flush(5, true).manifests, 1);
    assert_eq!(
        std::fs::read(f.restore(3, "r3").join("brief")).unwrap(),
        b"short-lived"
    );
}

/// A file overwritten in place leaves its folder's mtime alone, and its event may not have
/// reached the shipper yet when the flush right after the write captures: the flush must still
/// see the new content (the write came before the commit the manifest is tagged with).
#[test]
fn an_overwrite_right_before_a_flush_is_in_its_manifest() {
    let f = fixture();
    let x = f.up().join("x");
    std::fs::write(&x, b"0000").unwrap();
    f.flush(1, true);
    let mut missed = vec![];
    for i in 1..100u64 {
        std::fs::write(&x, format!("{i:04}")).unwrap();
        let want = lifeboat_dirs::entry::sha256_file(&x).unwrap().0;
        let r = f.flush(i + 1, true);
        let plan =
            f.rt.block_on(restore::plan(
                f.mem.as_ref(),
                "uploads",
                Some((G, TxId(i + 1))),
            ))
            .unwrap();
        let got = match &plan.state["x"].kind {
            lifeboat_dirs::entry::Kind::File { sha256, .. } => sha256.clone(),
            k => panic!("x is {k:?}"),
        };
        if r.manifests != 1 || got != want {
            missed.push((i, r.manifests, got == want));
        }
    }
    assert!(
        missed.is_empty(),
        "flushes whose manifest lacks the overwrite just before them (iteration, manifests written, content right): {missed:?}"
    );
}
