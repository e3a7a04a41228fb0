//! [`Prefixed`] is one replica inside another: every key is put under `<name>/`. A folder of
//! databases is replicated this way, each database under its own name below one replica URL,
//! all of them sharing the one client (and so the one connection pool) of that URL.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{ETag, Error, ObjectMeta, PutOutcome, ReplicaClient, Result};

/// The replica `<inner>/<name>`, sharing `inner`'s client.
#[derive(Debug)]
pub struct Prefixed {
    inner: Arc<dyn ReplicaClient>,
    /// `<name>/`.
    prefix: String,
}

impl Prefixed {
    /// The replica of database `name` inside `inner`. A name is one path segment: not empty,
    /// no `/`, not `.` or `..`.
    pub fn new(inner: Arc<dyn ReplicaClient>, name: &str) -> Result<Prefixed> {
        if !valid_name(name) {
            return Err(Error::Config {
                message: format!(
                    "{name:?} cannot name a database inside a replica: use one path segment, \
                     without '/'"
                ),
                source: None,
            });
        }
        Ok(Prefixed {
            inner,
            prefix: format!("{name}/"),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Whether `name` can be a database's folder inside a replica.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// The database names inside a replica that holds a folder of databases: the first segment of
/// every key `<name>/generations/...`, sorted, each once.
pub fn names(objects: &[ObjectMeta]) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .filter_map(|o| o.key.split_once('/'))
        .filter(|(_, rest)| rest.starts_with(crate::keys::GENERATIONS))
        .map(|(n, _)| n.to_string())
        .filter(|n| valid_name(n))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[async_trait]
impl ReplicaClient for Prefixed {
    fn describe(&self) -> String {
        format!(
            "{}/{}",
            self.inner.describe().trim_end_matches('/'),
            self.prefix.trim_end_matches('/')
        )
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        self.inner.put(&self.key(key), data).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        self.inner.put_file(&self.key(key), path).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.inner.get(&self.key(key)).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(&self.key(key), range).await
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        self.inner.get_to_file(&self.key(key), path).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut v = self.inner.list(&self.key(prefix)).await?;
        for o in &mut v {
            o.key.drain(..self.prefix.len());
        }
        Ok(v)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(&self.key(key)).await
    }

    async fn delete_many(&self, keys: &[String]) -> Vec<Result<()>> {
        let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.inner.delete_many(&full).await
    }

    async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize> {
        // Interrupted uploads are found under the whole replica; cleaning them for one database
        // cleans them for all, which is harmless (only writes older than `older_than`).
        self.inner.abort_stale_uploads(older_than).await
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)> {
        self.inner.get_versioned(&self.key(key)).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag> {
        self.inner.put_if_absent(&self.key(key), data).await
    }

    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag> {
        self.inner
            .put_if_match(&self.key(key), data, expected)
            .await
    }

    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()> {
        self.inner.delete_if_match(&self.key(key), expected).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryClient;

    #[tokio::test]
    async fn keys_go_under_the_name_and_listings_come_back_without_it() {
        let root: Arc<dyn ReplicaClient> = Arc::new(MemoryClient::default());
        root.put("drills/1.json", "{}".into()).await.unwrap();
        let a = Prefixed::new(root.clone(), "a.db").unwrap();
        let b = Prefixed::new(root.clone(), "b.db").unwrap();
        a.put("generations/x", "1".into()).await.unwrap();
        b.put("generations/x", "2".into()).await.unwrap();
        assert_eq!(a.get("generations/x").await.unwrap(), Bytes::from("1"));
        assert_eq!(
            root.get("b.db/generations/x").await.unwrap(),
            Bytes::from("2")
        );
        let listed = a.list("generations/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, "generations/x");
        assert_eq!(names(&root.list("").await.unwrap()), vec!["a.db", "b.db"]);
        a.delete("generations/x").await.unwrap();
        assert!(a.list("").await.unwrap().is_empty());
        assert_eq!(b.list("").await.unwrap().len(), 1);
    }

    #[test]
    fn a_name_is_one_path_segment() {
        let root: Arc<dyn ReplicaClient> = Arc::new(MemoryClient::default());
        for bad in ["", ".", "..", "a/b"] {
            assert!(Prefixed::new(root.clone(), bad).is_err(), "{bad:?}");
        }
        assert!(Prefixed::new(root, "tenant-1.db").is_ok());
    }
}
