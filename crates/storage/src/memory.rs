//! A replica in memory, for unit tests. It can be told to fail, to stand in for an outage.
//!
//! Every write gives the object a new version number from one counter, so an [`ETag`] here is
//! never reused, even for the same bytes.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{ETag, Error, ObjectMeta, PutOutcome, ReplicaClient, Result};

/// An in-memory replica.
#[derive(Debug, Default)]
pub struct MemoryClient {
    objects: Mutex<Objects>,
    down: AtomicBool,
}

#[derive(Debug, Default)]
struct Objects {
    map: BTreeMap<String, (Bytes, u64)>,
    /// The last version number handed out.
    version: u64,
}

impl Objects {
    fn insert(&mut self, key: &str, data: Bytes) -> ETag {
        self.version += 1;
        self.map.insert(key.into(), (data, self.version));
        etag(self.version)
    }
}

fn etag(version: u64) -> ETag {
    ETag::new(format!("v{version}"))
}

impl MemoryClient {
    /// While `down` is true every operation fails with a transient error.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Replaces an object's bytes, bypassing create-only: for corruption tests.
    pub fn tamper(&self, key: &str, data: Bytes) {
        self.objects.lock().expect("lock").insert(key, data);
    }

    fn check(&self, op: &'static str, key: &str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Backend {
                op,
                key: key.into(),
                message: "backend is down (test)".into(),
                transient: true,
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ReplicaClient for MemoryClient {
    fn describe(&self) -> String {
        "memory://".into()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        self.check("put", key)?;
        let mut m = self.objects.lock().expect("lock");
        match m.map.get(key) {
            Some((existing, _)) if *existing == data => Ok(PutOutcome::AlreadyExisted),
            Some(_) => Err(Error::Conflict { key: key.into() }),
            None => {
                m.insert(key, data);
                Ok(PutOutcome::Created)
            }
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let data = std::fs::read(path).map_err(|e| Error::io("put", key, e))?;
        self.put(key, data.into()).await
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.check("get", key)?;
        Ok(self.get_versioned(key).await?.0)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let b = self.get(key).await?;
        let end = (range.end as usize).min(b.len());
        let start = (range.start as usize).min(end);
        Ok(b.slice(start..end))
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        let b = self.get(key).await?;
        std::fs::write(path, &b).map_err(|e| Error::io("get", key, e))?;
        Ok(b.len() as u64)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.check("list", prefix)?;
        Ok(self
            .objects
            .lock()
            .expect("lock")
            .map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check("delete", key)?;
        self.objects.lock().expect("lock").map.remove(key);
        Ok(())
    }

    async fn abort_stale_uploads(&self, _older_than: std::time::Duration) -> Result<usize> {
        // Every write here is whole at once: nothing is ever left half-written.
        Ok(0)
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)> {
        self.check("get", key)?;
        let m = self.objects.lock().expect("lock");
        match m.map.get(key) {
            Some((data, v)) => Ok((data.clone(), etag(*v))),
            None => Err(Error::NotFound { key: key.into() }),
        }
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag> {
        self.check("put", key)?;
        let mut m = self.objects.lock().expect("lock");
        match m.map.get(key) {
            Some((existing, v)) if *existing == data => Ok(etag(*v)),
            Some(_) => Err(Error::Precondition { key: key.into() }),
            None => Ok(m.insert(key, data)),
        }
    }

    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag> {
        self.check("put", key)?;
        let mut m = self.objects.lock().expect("lock");
        match m.map.get(key) {
            Some((_, v)) if etag(*v) == *expected => Ok(m.insert(key, data)),
            Some((existing, v)) if *existing == data => Ok(etag(*v)),
            _ => Err(Error::Precondition { key: key.into() }),
        }
    }

    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()> {
        self.check("delete", key)?;
        let mut m = self.objects.lock().expect("lock");
        match m.map.get(key) {
            None => Ok(()),
            Some((_, v)) if etag(*v) == *expected => {
                m.map.remove(key);
                Ok(())
            }
            Some(_) => Err(Error::Precondition { key: key.into() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_conformance() {
        crate::conformance::check(&MemoryClient::default()).await;
    }
}
