//! Retention of folder blobs against a running shipper (in-memory backend): a blob a manifest
//! written during a prune names is never deleted, content whose blob was pruned is uploaded
//! again, and blobs no manifest names (an agent that died) go once older than the grace period.

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat_dirs::{prune, restore, verify, DirOptions, DirShipper, DirSpec};
use lifeboat_storage::memory::MemoryClient;
use lifeboat_storage::{keys, ETag, ObjectMeta, PutOutcome, ReplicaClient, Result};
use lifeboat_wal::{Generation, TxId};

const G: Generation = Generation(0x200);

type Hook = Box<dyn FnOnce() + Send>;

/// The in-memory backend, running a hook just before the first blob deletion.
#[derive(Debug, Default)]
struct BeforeBlobDelete {
    inner: MemoryClient,
    hook: Mutex<Option<DebugHook>>,
}

struct DebugHook(Hook);

impl std::fmt::Debug for DebugHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hook")
    }
}

#[async_trait]
impl ReplicaClient for BeforeBlobDelete {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        self.inner.put(key, data).await
    }
    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        self.inner.put_file(key, path).await
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        self.inner.get_to_file(key, path).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        if key.starts_with(keys::BLOBS) {
            let hook = self.hook.lock().unwrap().take();
            if let Some(DebugHook(h)) = hook {
                h();
            }
        }
        self.inner.delete(key).await
    }
    async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize> {
        self.inner.abort_stale_uploads(older_than).await
    }
    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)> {
        self.inner.get_versioned(key).await
    }
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag> {
        self.inner.put_if_absent(key, data).await
    }
    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag> {
        self.inner.put_if_match(key, data, expected).await
    }
    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()> {
        self.inner.delete_if_match(key, expected).await
    }
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    client: Arc<BeforeBlobDelete>,
    ship: Arc<DirShipper>,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    fixture_on(
        rt,
        Arc::new(BeforeBlobDelete::default()),
        tempfile::tempdir().unwrap(),
    )
}

/// A shipper over `client` for the folder `uploads` in `dir` (as an agent starting there).
fn fixture_on(
    rt: tokio::runtime::Runtime,
    client: Arc<BeforeBlobDelete>,
    dir: tempfile::TempDir,
) -> Fixture {
    let opts = DirOptions {
        settle: Duration::from_millis(20),
        base_every: 2,
        staging_dir: dir.path().to_path_buf(),
        ..DirOptions::default()
    };
    let spec = DirSpec::parse(dir.path().join("uploads").to_str().unwrap()).unwrap();
    let c: Arc<dyn ReplicaClient> = client.clone();
    let ship = DirShipper::open(&[spec], vec![c], opts, rt.handle().clone()).unwrap();
    Fixture {
        rt,
        client,
        ship: Arc::new(ship),
        dir,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A prune's clock a grace period and an hour from now: every blob uploaded so far is old.
fn later() -> u64 {
    now_ms() + prune::GRACE.as_millis() as u64 + 3_600_000
}

fn sha(data: &[u8]) -> String {
    lifeboat_dirs::entry::sha256_of(data, None).unwrap().0
}

impl Fixture {
    fn up(&self) -> std::path::PathBuf {
        self.dir.path().join("uploads")
    }
    fn flush(&self, txid: u64) {
        self.ship.flush(0, G, TxId(txid), true).unwrap();
    }
    /// Keys of the blobs holding `content`.
    fn blobs_of(&self, content: &[u8]) -> Vec<String> {
        let prefix = format!("{}{}-", keys::BLOBS, sha(content));
        self.rt
            .block_on(self.client.list(&prefix))
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }
    fn prune(&self, from: u64, now: u64) -> prune::FolderPrune {
        self.rt
            .block_on(prune::prune(
                self.client.as_ref(),
                (G, TxId(from)),
                now,
                false,
            ))
            .unwrap()
    }
    /// Restores the newest state and checks `path` holds `content`; verify finds nothing wrong.
    fn assert_restores(&self, path: &str, content: &[u8], out: &str) {
        let out = self.dir.path().join(out);
        self.rt
            .block_on(restore::restore(
                self.client.as_ref(),
                "uploads",
                None,
                &out,
                false,
            ))
            .unwrap();
        assert_eq!(std::fs::read(out.join(path)).unwrap(), content);
        let v = self
            .rt
            .block_on(verify::verify(self.client.as_ref(), self.dir.path()))
            .unwrap();
        assert!(v.problems.is_empty(), "{:?}", v.problems);
    }
}

/// `old` shipped and then deleted from the folder, with enough manifests after it that a
/// prune from the last one drops every manifest naming it.
fn ship_then_delete(f: &Fixture, old: &[u8]) -> u64 {
    std::fs::write(f.up().join("old"), old).unwrap();
    f.flush(1);
    std::fs::remove_file(f.up().join("old")).unwrap();
    // Bases every second manifest: the third records the removal, the fifth is a base after it.
    for t in 2..=6 {
        std::fs::write(f.up().join(format!("n{t}")), format!("new {t}")).unwrap();
        f.flush(t);
    }
    6
}

#[test]
fn a_manifest_written_while_a_prune_deletes_a_blob_of_its_content_keeps_its_content() {
    let f = fixture();
    let old = b"a receipt uploaded long ago".as_slice();
    let last = ship_then_delete(&f, old);
    let condemned = f.blobs_of(old);
    assert_eq!(condemned.len(), 1);
    // Just before the prune deletes that blob (its second listing is done), the app stores the
    // same content again and a database commit ships: its manifest names the content.
    let (ship, up) = (f.ship.clone(), f.up());
    *f.client.hook.lock().unwrap() = Some(DebugHook(Box::new(move || {
        std::fs::write(up.join("again"), old).unwrap();
        std::thread::spawn(move || ship.flush(0, G, TxId(last + 1), true).unwrap())
            .join()
            .unwrap();
    })));
    let p = f.prune(last, later());
    assert!(f.client.hook.lock().unwrap().is_none(), "the hook ran");
    assert!(p.blobs.contains(&condemned[0]), "{p:?}");
    // The content was uploaded again under a new key, which the prune did not touch.
    let now = f.blobs_of(old);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], condemned[0]);
    f.assert_restores("again", old, "r1");
}

#[test]
fn content_whose_blob_was_pruned_is_uploaded_again_when_it_comes_back() {
    let f = fixture();
    let old = b"deleted, pruned, then uploaded again".as_slice();
    let last = ship_then_delete(&f, old);
    let condemned = f.blobs_of(old);
    let p = f.prune(last, later());
    assert_eq!(p.blobs, condemned);
    assert!(f.blobs_of(old).is_empty(), "pruned: {p:?}");
    std::fs::write(f.up().join("back"), old).unwrap();
    f.flush(last + 1);
    assert_eq!(f.blobs_of(old).len(), 1);
    f.assert_restores("back", old, "r2");
}

#[test]
fn blobs_no_manifest_names_go_once_older_than_the_grace_period() {
    let f = fixture();
    std::fs::write(f.up().join("kept"), b"kept").unwrap();
    f.flush(1);
    // An agent that died after uploading a content and before the manifest naming it.
    let orphan = b"uploaded, never named".as_slice();
    std::fs::write(f.up().join("orphan"), orphan).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while f.blobs_of(orphan).is_empty() {
        assert!(std::time::Instant::now() < deadline, "never uploaded early");
        std::thread::sleep(Duration::from_millis(10));
    }
    let Fixture {
        rt,
        client,
        ship,
        dir,
    } = f;
    drop(Arc::into_inner(ship).expect("one owner"));
    std::fs::remove_file(dir.path().join("uploads/orphan")).unwrap();
    let f = fixture_on(rt, client, dir);
    let key = f.blobs_of(orphan);
    // Younger than the grace period: a running agent may be about to name it.
    assert!(f.prune(1, now_ms()).blobs.is_empty());
    assert_eq!(f.blobs_of(orphan), key);
    // Older: it goes; what a manifest names stays.
    let p = f.prune(1, later());
    assert_eq!(p.blobs, key);
    assert!(p.manifests.is_empty(), "{p:?}");
    assert!(f.blobs_of(orphan).is_empty());
    assert_eq!(f.blobs_of(b"kept").len(), 1);
    f.assert_restores("kept", b"kept", "r3");
}
