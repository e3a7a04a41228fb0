//! Replica URLs: `file:///folder` and `s3://bucket/prefix?endpoint=...`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lifeboat_storage::local::LocalClient;
use lifeboat_storage::ReplicaClient;
use lifeboat_storage_s3::{S3Client, S3Config};

/// The local folder a `file://` URL names.
pub fn file_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("file://")?;
    if rest.is_empty() {
        return None;
    }
    Some(PathBuf::from(rest))
}

/// Opens the replica a URL names.
pub async fn open(url: &str) -> Result<Arc<dyn ReplicaClient>> {
    if url.starts_with("file://") {
        let path = file_path(url).with_context(|| {
            format!("{url:?}: a file URL needs a folder, as in file:///var/backups/app")
        })?;
        return Ok(Arc::new(LocalClient::new(path)));
    }
    if url.starts_with("s3://") {
        let cfg =
            S3Config::from_url(url).with_context(|| format!("invalid replica URL {url:?}"))?;
        let client = S3Client::new(cfg)
            .await
            .with_context(|| format!("cannot set up S3 client for {url:?}"))?;
        return Ok(Arc::new(client));
    }
    bail!("unsupported replica URL {url:?}: use file:///path/to/folder or s3://bucket/prefix")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls() {
        assert_eq!(file_path("file:///a/b"), Some(PathBuf::from("/a/b")));
        assert_eq!(file_path("file://./rel"), Some(PathBuf::from("./rel")));
        assert_eq!(file_path("file://"), None);
        assert_eq!(file_path("s3://x"), None);
    }
}
