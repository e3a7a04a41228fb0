//! A replica in memory, for unit tests. It can be told to fail, to stand in for an outage.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Error, ObjectMeta, PutOutcome, ReplicaClient, Result};

/// An in-memory replica.
#[derive(Debug, Default)]
pub struct MemoryClient {
    objects: Mutex<BTreeMap<String, Bytes>>,
    down: AtomicBool,
}

impl MemoryClient {
    /// While `down` is true every operation fails with a transient error.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Replaces an object's bytes, bypassing create-only: for corruption tests.
    pub fn tamper(&self, key: &str, data: Bytes) {
        self.objects.lock().expect("lock").insert(key.into(), data);
    }

    fn check(&self, op: &'static str, key: &str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Backend {
                op,
                key: key.into(),
                message: "backend is down (test)".into(),
                transient: true,
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
        match m.get(key) {
            Some(existing) if *existing == data => Ok(PutOutcome::AlreadyExisted),
            Some(_) => Err(Error::Conflict { key: key.into() }),
            None => {
                m.insert(key.into(), data);
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
        self.objects
            .lock()
            .expect("lock")
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound { key: key.into() })
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
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectMeta {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.check("delete", key)?;
        self.objects.lock().expect("lock").remove(key);
        Ok(())
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
