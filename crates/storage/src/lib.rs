//! Where replicas live.
//!
//! Roles: [`ReplicaClient`] is the one interface every backend implements (a handful of
//! create-only, whole-object operations, plus conditional writes for a lease); [`keys`] builds
//! and parses every object key, in one place; [`local::LocalClient`] keeps a replica in a folder;
//! [`memory::MemoryClient`] keeps one in memory for unit tests; `conformance` (feature
//! `conformance`, for tests) is the suite every backend must pass; [`retry`] wraps an operation in
//! jittered exponential backoff, bounded ([`retry::retry`]) or until it lands
//! ([`retry::retry_until`]); [`counting::Counting`] counts the requests made through any backend;
//! [`prefixed::Prefixed`] is one database's replica inside a folder-of-databases replica;
//! [`probe`] finds out whether a store really honours conditional writes; [`url`] decodes and
//! redacts replica URLs.
//!
//! Replica objects are immutable. A [`put`](ReplicaClient::put) never replaces an object: writing
//! a key that exists with the same bytes succeeds (a retried upload), writing it with other bytes
//! is a [`Error::Conflict`], the sign of two writers on one replica. The only objects that change
//! are the few that coordinate writers (a lease): they are read with their version
//! ([`ETag`]) and replaced or deleted only if that version is still current
//! ([`put_if_match`](ReplicaClient::put_if_match),
//! [`delete_if_match`](ReplicaClient::delete_if_match)).
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

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod counting;
mod error;
pub mod keys;
pub mod local;
pub mod memory;
pub mod prefixed;
pub mod probe;
pub mod retry;
pub mod url;

use std::fmt::Debug;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{AuthProblem, BoxError, Error, Result};

/// The version of an object, as its backend names it: S3's `ETag` header (quotes included),
/// a counter and content hash in a local folder, a counter in memory. Opaque: compare for
/// equality only.
///
/// On S3 an ETag is a hash of the content, so two writes of the same bytes have the same ETag:
/// callers of the conditional writes put something in each write that differs (a counter, an
/// expiry time, a nonce), so that a version never comes back.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ETag(String);

impl ETag {
    /// An ETag with the backend's text.
    pub fn new(s: impl Into<String>) -> ETag {
        ETag(s.into())
    }

    /// The backend's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ETag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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

    /// Deletes each of `keys` (a missing object succeeds) and answers for each, in the same
    /// order: one key's failure never hides another's outcome.
    ///
    /// The default sends the deletions together, one [`delete`](Self::delete) per key. S3 sends
    /// one request per thousand keys (DeleteObjects), and falls back to one per key on a server
    /// that refuses that request.
    async fn delete_many(&self, keys: &[String]) -> Vec<Result<()>> {
        futures::future::join_all(keys.iter().map(|k| self.delete(k))).await
    }

    /// Removes what interrupted writes left behind that was started more than `older_than`
    /// ago (S3: multipart uploads under the replica's prefix, aborted; a folder: temporary
    /// files), and returns how many. Never touches an object. Best effort, for the agent to call
    /// when it starts, with an age no write of its own reaches (a day).
    async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize>;

    /// The whole object and its version. [`Error::NotFound`] if it does not exist.
    ///
    /// Consistent: the bytes are exactly those of the version returned (no client observes a
    /// mix of two versions).
    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)>;

    /// Creates `key` holding `data` if no object has that key, and returns its version.
    ///
    /// Atomic: of several clients racing to create the key, exactly one succeeds; the others get
    /// [`Error::Precondition`], and no client observes a partly written object. If the object
    /// exists and holds exactly `data`, the result is its version: that is a retry whose earlier
    /// attempt landed and whose answer was lost. (Callers make `data` unique to the writer, so the
    /// same bytes prove authorship.)
    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag>;

    /// Replaces `key` with `data` only if its current version is `expected`, and returns the new
    /// version.
    ///
    /// Atomic compare-and-swap: of several clients replacing the same version, exactly one
    /// succeeds and the others get [`Error::Precondition`]; a missing object is also a
    /// [`Error::Precondition`]. After an attempt whose outcome is unknown (a timeout, a lost
    /// answer), a retry that finds the object already holding exactly `data` returns its version
    /// instead of failing (same uniqueness rule as [`put_if_absent`](Self::put_if_absent)).
    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag>;

    /// Deletes `key` only if its current version is `expected`.
    ///
    /// Atomic: a newer version is never deleted ([`Error::Precondition`]). A missing object
    /// succeeds (a retried delete whose first answer was lost, or a release that already
    /// happened).
    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()>;
}
