//! Deleting many objects at once: one DeleteObjects request per thousand keys, answered key by
//! key.
//!
//! Not every S3-compatible server takes DeleteObjects as the SDK sends it. The SDK checksums the
//! request body with CRC32, and a server that wants `Content-MD5` instead (older MinIO, some
//! gateways) or does not implement the call refuses it. So:
//! - a batch the server refuses with a permanent error is deleted one key at a time, and this
//!   client sends no more batches (each would be refused the same way);
//! - a batch refused for a reason that concerns the keys themselves (access denied, a missing
//!   bucket, bad credentials) is deleted one key at a time too, so that each key gets the
//!   server's own answer, typed as [`ReplicaClient::delete`] types it;
//! - a batch that fails on the network or with a server error is answered with that failure,
//!   transient, for every key: repeating it key by key would only add load to a struggling
//!   server, and the caller retries as it would a failed delete;
//! - keys that a batch reports as not deleted (its per-key errors) are deleted once more, alone.
//!
//! Deleting is idempotent, so a batch whose answer was lost and that is sent again (by the SDK,
//! or one key at a time) deletes nothing twice that matters.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use lifeboat_storage::{Error, ReplicaClient, Result};
use tracing::{debug, info};

use crate::S3Client;

/// The most keys one DeleteObjects request may name (S3's limit).
pub(crate) const BATCH: usize = 1000;

impl S3Client {
    /// `delete_many`: the keys in batches of [`BATCH`].
    pub(crate) async fn delete_batches(&self, keys: &[String]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            out.extend(self.delete_batch(chunk).await);
        }
        out
    }

    /// Deletes at most [`BATCH`] keys, with one request where the server takes it.
    async fn delete_batch(&self, keys: &[String]) -> Vec<Result<()>> {
        if keys.len() < 2 || self.batch_delete_refused.load(Ordering::Relaxed) {
            return self.delete_each(keys).await;
        }
        let not_deleted = match self.delete_objects(keys).await {
            Ok(not_deleted) => not_deleted,
            Err(Error::Backend {
                message,
                transient: true,
                ..
            }) => {
                debug!(keys = keys.len(), error = %message, "a batch delete failed");
                let message = format!("a batch delete of {} objects failed: {message}", keys.len());
                return keys
                    .iter()
                    .map(|k| Err(self.backend("delete", k, message.clone(), true)))
                    .collect();
            }
            Err(Error::Backend { message, .. }) => {
                self.batch_delete_refused.store(true, Ordering::Relaxed);
                info!(replica = %self.cfg.describe(), answer = %message, "the server refuses DeleteObjects (a batch delete): objects are deleted one request each from now on");
                return self.delete_each(keys).await;
            }
            Err(_) => return self.delete_each(keys).await,
        };
        if not_deleted.is_empty() {
            return keys.iter().map(|_| Ok(())).collect();
        }
        debug!(
            keys = not_deleted.len(),
            "keys a batch delete left: deleted one by one"
        );
        let left = |k: &String| not_deleted.contains(&self.cfg.full_key(k));
        let again: Vec<String> = keys.iter().filter(|k| left(k)).cloned().collect();
        let mut answers = self.delete_each(&again).await.into_iter();
        keys.iter()
            .map(|k| match left(k) {
                true => answers.next().expect("one answer per key deleted again"),
                false => Ok(()),
            })
            .collect()
    }

    /// One DeleteObjects request (quiet: the answer lists only the keys it did not delete).
    /// Returns the full keys it did not delete.
    async fn delete_objects(&self, keys: &[String]) -> Result<HashSet<String>> {
        let objects = keys
            .iter()
            .map(|k| {
                ObjectIdentifier::builder()
                    .key(self.cfg.full_key(k))
                    .build()
                    .expect("an object identifier with a key")
            })
            .collect();
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .expect("a delete with objects");
        let res = self
            .client
            .delete_objects()
            .bucket(&self.cfg.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| self.err("delete", &keys[0], e))?;
        Ok(res
            .errors()
            .iter()
            // A key reported missing is deleted all the same.
            .filter(|e| e.code() != Some("NoSuchKey"))
            .filter_map(|e| e.key().map(str::to_string))
            .collect())
    }

    async fn delete_each(&self, keys: &[String]) -> Vec<Result<()>> {
        futures::future::join_all(keys.iter().map(|k| self.delete(k))).await
    }
}
