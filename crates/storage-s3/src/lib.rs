//! The S3 backend of lifeboat: [`S3Config`] says where a replica lives (parsed from an
//! `s3://bucket/prefix?...` URL), [`S3Client`] implements [`lifeboat_storage::ReplicaClient`]
//! over it for AWS S3 and the S3-compatible stores, [`Timeouts`] bounds every wait on the
//! network, and (with the `testing` feature) `testing::S3TestServer` runs a real S3-compatible
//! server on 127.0.0.1 for tests.
//!
//! This is the only crate that depends on `aws-sdk-s3`. Writes are create-only
//! (`If-None-Match: *`, on PutObject and on CompleteMultipartUpload); a write refused because
//! the key exists is read back and compared, so a retried upload whose first response was lost
//! counts as success, and different bytes are a [`lifeboat_storage::Error::Conflict`]. The
//! conditional writes of a lease use `If-Match` on the ETag, resolved the same way. Downloads
//! resume after a cut. Uploads carry a CRC32 the server checks. Credentials come from the
//! standard AWS chain (environment, profile files, instance metadata) and are never logged; nor
//! are secrets in an endpoint.
//!
//! Layout: `config` parses URLs and holds the timeouts; `client` is the [`S3Client`] and its
//! create-only writes; `conditional` the lease's conditional writes; `download` the resumable
//! GETs; `multipart` large uploads and the clean-up of stale ones; `delete` batch deletes
//! (DeleteObjects, one key per request where a server refuses it); `error` maps S3 failures
//! onto the storage errors (what is transient, which set-up mistake, what to tell the user);
//! `testing` runs `moto_server`.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use lifeboat_storage::ReplicaClient;
//! use lifeboat_storage_s3::{S3Client, S3Config};
//! let cfg = S3Config::from_url("s3://my-bucket/app?region=eu-west-1")?;
//! let client = S3Client::new(cfg).await?;
//! client.put("hello", "world".into()).await?;
//! assert_eq!(&client.get("hello").await?[..], b"world");
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod client;
mod conditional;
mod config;
mod delete;
mod download;
mod error;
mod multipart;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::S3Client;
pub use config::{ConfigError, S3Config, Timeouts};
