//! [`Counting`] wraps any backend and counts the requests made through it, by kind, for metrics.
//! Like object_store's wrappers, it composes: `Counting::new(Arc::new(S3Client::new(..)))`.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{ETag, ObjectMeta, PutOutcome, ReplicaClient, Result};

/// Requests by kind (each call counts once, whatever retries the backend makes inside it).
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// `put`, `put_file`, `put_if_absent` and `put_if_match`.
    pub put: AtomicU64,
    /// `get`, `get_range`, `get_to_file` and `get_versioned`.
    pub get: AtomicU64,
    /// `list` and `abort_stale_uploads` (one call may be several paginated requests).
    pub list: AtomicU64,
    /// `delete`, `delete_many` and `delete_if_match`.
    pub delete: AtomicU64,
    /// Calls that returned an error (a `delete_many` that failed for any key counts once).
    pub failed: AtomicU64,
}

impl RequestCounts {
    /// `(kind, count)` for each kind, in a fixed order.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("put", l(&self.put)),
            ("get", l(&self.get)),
            ("list", l(&self.list)),
            ("delete", l(&self.delete)),
            ("failed", l(&self.failed)),
        ]
    }
}

/// A backend that counts the requests made through it.
#[derive(Debug)]
pub struct Counting {
    inner: Arc<dyn ReplicaClient>,
    counts: Arc<RequestCounts>,
}

impl Counting {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ReplicaClient>) -> Counting {
        Counting {
            inner,
            counts: Arc::default(),
        }
    }

    /// The counts, shared with whoever reports them.
    pub fn counts(&self) -> Arc<RequestCounts> {
        self.counts.clone()
    }

    fn count<T>(&self, which: &AtomicU64, r: Result<T>) -> Result<T> {
        which.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

#[async_trait]
impl ReplicaClient for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let r = self.inner.put(key, data).await;
        self.count(&self.counts.put, r)
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let r = self.inner.put_file(key, path).await;
        self.count(&self.counts.put, r)
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let r = self.inner.get(key).await;
        self.count(&self.counts.get, r)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let r = self.inner.get_range(key, range).await;
        self.count(&self.counts.get, r)
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        let r = self.inner.get_to_file(key, path).await;
        self.count(&self.counts.get, r)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let r = self.inner.list(prefix).await;
        self.count(&self.counts.list, r)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let r = self.inner.delete(key).await;
        self.count(&self.counts.delete, r)
    }

    async fn delete_many(&self, keys: &[String]) -> Vec<Result<()>> {
        let r = self.inner.delete_many(keys).await;
        self.counts.delete.fetch_add(1, Ordering::Relaxed);
        if r.iter().any(|r| r.is_err()) {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn abort_stale_uploads(&self, older_than: std::time::Duration) -> Result<usize> {
        let r = self.inner.abort_stale_uploads(older_than).await;
        self.count(&self.counts.list, r)
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)> {
        let r = self.inner.get_versioned(key).await;
        self.count(&self.counts.get, r)
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag> {
        let r = self.inner.put_if_absent(key, data).await;
        self.count(&self.counts.put, r)
    }

    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag> {
        let r = self.inner.put_if_match(key, data, expected).await;
        self.count(&self.counts.put, r)
    }

    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()> {
        let r = self.inner.delete_if_match(key, expected).await;
        self.count(&self.counts.delete, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryClient;

    #[tokio::test]
    async fn counts_each_kind_and_failures() {
        let c = Counting::new(Arc::new(MemoryClient::default()));
        c.put("a", "x".into()).await.unwrap();
        assert!(c.put("a", "y".into()).await.is_err());
        c.get("a").await.unwrap();
        assert!(c.get("missing").await.is_err());
        c.list("").await.unwrap();
        c.delete("a").await.unwrap();
        assert_eq!(
            c.counts().snapshot(),
            [
                ("put", 2),
                ("get", 2),
                ("list", 1),
                ("delete", 1),
                ("failed", 2)
            ]
        );
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        crate::conformance::check(&Counting::new(Arc::new(MemoryClient::default()))).await;
    }
}
