//! Replica URLs: `file:///folder` and `s3://bucket/prefix?endpoint=...`. Parsing and validation
//! live with each backend (`LocalClient::from_url`, `S3Config::from_url`); this module only
//! picks the backend.

use std::sync::Arc;

use anyhow::{bail, Result};
use lifeboat_storage::local::LocalClient;
use lifeboat_storage::ReplicaClient;
use lifeboat_storage_s3::{S3Client, S3Config};

/// Opens the replica a URL names. Errors never echo the URL's query, which may hold secrets.
pub async fn open(url: &str) -> Result<Arc<dyn ReplicaClient>> {
    if url.starts_with("file:") {
        return Ok(Arc::new(LocalClient::from_url(url)?));
    }
    if url.starts_with("s3://") {
        let cfg = S3Config::from_url(url).map_err(lifeboat_storage::Error::from)?;
        return Ok(Arc::new(S3Client::new(cfg).await?));
    }
    bail!(
        "unsupported replica URL {:?}: use file:///path/to/folder or s3://bucket/prefix",
        lifeboat_storage::url::redact(url)
    )
}
