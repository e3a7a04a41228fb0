//! Replica URLs: `file:///folder` and `s3://bucket/prefix?endpoint=...`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lifeboat_storage::local::LocalClient;
use lifeboat_storage::ReplicaClient;

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
        bail!("{url:?}: this build has no S3 backend yet");
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
