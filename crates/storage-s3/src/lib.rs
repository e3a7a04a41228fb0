//! The S3 backend of lifeboat: one [`S3Client`] for AWS S3 and the S3-compatible stores
//! (Cloudflare R2, Backblaze B2, MinIO, Ceph), configured from a URL by [`S3Config`].
//!
//! This is the only crate that depends on `aws-sdk-s3`. Writes are create-only
//! (`If-None-Match: *`); a write refused because the key exists is read back and compared, so a
//! retried upload whose first response was lost counts as success, and different bytes are a
//! [`lifeboat_storage::Error::Conflict`]. Credentials come from the standard AWS chain
//! (environment, profile files, instance metadata) and are never logged.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use lifeboat_storage_s3::{S3Client, S3Config};
//! let cfg = S3Config::from_url("s3://my-bucket/app?region=eu-west-1")?;
//! let client = S3Client::new(cfg).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod client;
mod config;
#[cfg(feature = "testing")]
pub mod testing;

pub use client::S3Client;
pub use config::{ConfigError, S3Config};
