//! Where replicas live.
//!
//! Roles: [`ReplicaClient`] is the one interface every backend implements (a handful of
//! create-only, whole-object operations); [`keys`] builds and parses every object key, in one
//! place; [`local::LocalClient`] keeps a replica in a folder; [`memory::MemoryClient`] keeps one in
//! memory for unit tests; [`conformance`] is the suite every backend must pass; [`retry`] wraps an
//! operation in bounded, jittered exponential backoff; [`counting::Counting`] counts the requests
//! made through any backend.
//!
//! Objects are immutable. A write never replaces an object: writing a key that exists with the
//! same bytes succeeds (a retried upload), writing it with other bytes is a
//! [`Error::Conflict`], the sign of two writers on one replica.
//!
//! ```
//! use lifeboat_storage::{memory::MemoryClient, ReplicaClient, PutOutcome};
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! rt.block_on(async {
//!     let c = MemoryClient::default();
//!     assert_eq!(c.put("a", "x".into()).await.unwrap(), PutOutcome::Created);
//!     assert_eq!(c.put("a", "x".into()).await.unwrap(), PutOutcome::AlreadyExisted);
//!     assert!(c.put("a", "y".into()).await.is_err());
//! });
//! ```
#![deny(missing_docs)]

pub mod conformance;
pub mod counting;
mod error;
pub mod keys;
pub mod local;
pub mod memory;
pub mod retry;

use std::fmt::Debug;
use std::ops::Range;
use std::path::Path;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{Error, Result};

/// What a create-only write found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object did not exist and now does.
    Created,
    /// The object already existed with exactly these bytes (a retried write).
    AlreadyExisted,
}

/// An object in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the replica root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// A replica backend: a flat namespace of immutable objects under one root.
///
/// Keys are `/`-separated paths relative to the root (a folder, or a bucket and prefix).
#[async_trait]
pub trait ReplicaClient: Send + Sync + Debug + 'static {
    /// Where this replica lives, for messages (`file:///backups/app`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Creates `key` holding `data`, atomically: no reader ever sees part of it. Create-only: if
    /// the key exists with the same bytes the result is [`PutOutcome::AlreadyExisted`], if it
    /// exists with other bytes the result is [`Error::Conflict`] and nothing is changed.
    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome>;

    /// Like [`put`](ReplicaClient::put), reading the content from a local file without holding it
    /// all in memory.
    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome>;

    /// The whole object. [`Error::NotFound`] if it does not exist.
    async fn get(&self, key: &str) -> Result<Bytes>;

    /// Bytes `range` of the object (shorter if the object ends first).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Copies the object into local file `path` (created or truncated), streaming; returns its size.
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes the object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
}
