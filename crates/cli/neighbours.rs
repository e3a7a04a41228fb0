//! Replicas next to an empty one: a replica URL with a mistyped prefix (`s3://bucket/ap` for
//! `s3://bucket/app`) looks like a fresh, empty replica, and `run` would start a new history
//! there as if nothing had been backed up before. When a replica holds nothing, the folder or
//! prefix around it is listed once (only then), and lifeboat replicas found there are named in a
//! loud warning.

use std::collections::BTreeSet;

use anyhow::Result;
use lifeboat_agent::catalog::Catalog;
use lifeboat_storage::keys;

use crate::config::{self, Source};
use crate::replica_url;

/// The URL of the folder or prefix that holds `url`'s (its last path component removed, the
/// query kept), or `None` at a bucket's or file system's root.
pub fn parent_url(url: &str) -> Option<String> {
    let (main, query) = match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let (scheme, path) = main.split_at(main.find("://")? + 3);
    let path = path.trim_end_matches('/');
    let cut = path.rfind('/')?;
    // file:///a → the root folder: too wide to list; s3://bucket/a → the bucket.
    if path[..cut].split('/').all(|c| c.is_empty()) {
        return None;
    }
    Some(format!("{scheme}{}{query}", &path[..cut]))
}

/// The lifeboat replicas under the folder or prefix around the replica at `url` (next to it, or
/// inside it), when it holds none itself: a warning to show, or `None`.
pub async fn mistyped(url: &str) -> Result<Option<String>> {
    let client = replica_url::open(url).await?;
    let cat = Catalog::load(client.as_ref()).await?;
    if !cat.generations.is_empty() {
        return Ok(None);
    }
    let around = match parent_url(url) {
        Some(p) => p,
        None => url.to_string(),
    };
    let parent = replica_url::open(&around).await?;
    let mut found = BTreeSet::new();
    if let Ok(folder) = lifeboat_storage::local::file_url_path(&around) {
        // A folder is searched read-only (the backend's listing also tidies temporary files,
        // which is its own replica's business, not its neighbours').
        let folder = folder.canonicalize().unwrap_or(folder);
        replica_folders(&folder, 4, &mut found);
    } else {
        let marker = format!("/{}", keys::GENERATIONS);
        for o in parent.list("").await? {
            if let Some(i) = o.key.find(&marker) {
                found.insert(format!("{}/{}", parent.describe(), &o.key[..i]));
            }
        }
    }
    let me = client.describe();
    found.remove(&me);
    if found.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "{me} holds no backup, but {} holds lifeboat replicas: {}. Is the replica URL \
         mistyped? Fix it before a new history starts in the wrong place",
        parent.describe(),
        found.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

/// Logs the warning of [`mistyped`] for every replica of `src`, loudly; a replica that cannot
/// be listed is left to the agent to report.
pub async fn warn_all(src: &Source) {
    let urls = match src {
        Source::Args { urls, .. } => urls.clone(),
        // A folder of databases' replica holds `<name>/generations/`, never `generations/`.
        Source::Dir { .. } => return,
        Source::File(path) => match config::entries(path) {
            Ok(e) => e.into_iter().flat_map(|e| e.replicas).collect(),
            Err(_) => return,
        },
    };
    for url in urls {
        match mistyped(&url).await {
            Ok(Some(w)) => tracing::warn!("WARNING: {w}"),
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot look for replicas nearby"),
        }
    }
}

/// Folders under `dir` (to `depth` levels) that hold a `generations` folder, as `file://` URLs.
fn replica_folders(dir: &std::path::Path, depth: usize, found: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        if path.join(keys::GENERATIONS.trim_end_matches('/')).is_dir() {
            found.insert(format!("file://{}", path.display()));
        } else if depth > 1 {
            replica_folders(&path, depth - 1, found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_of_a_replica_url() {
        assert_eq!(
            parent_url("s3://b/team/app?region=x").as_deref(),
            Some("s3://b/team?region=x")
        );
        assert_eq!(
            parent_url("s3://b/app?region=x").as_deref(),
            Some("s3://b?region=x")
        );
        assert_eq!(parent_url("s3://b?region=x"), None);
        assert_eq!(
            parent_url("file:///mnt/backup/app").as_deref(),
            Some("file:///mnt/backup")
        );
        assert_eq!(parent_url("file:///mnt/app/"), Some("file:///mnt".into()));
        assert_eq!(parent_url("s3://b/"), None);
        assert_eq!(parent_url("file:///app"), None);
    }
}
