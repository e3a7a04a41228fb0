//! What the folder shipper has done, for the health endpoint and metrics.
//!
//! [`Board`] is shared between the shipper (which writes it after each capture, flush and
//! early upload) and readers (`/health`, `/metrics`), behind a lock of its own that is never held
//! across I/O, so a scrape never waits for an upload.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A folder counts as failing once shipping it to a replica has failed this many times in a
/// row (the same rule as a database's replica).
pub const FAILURES: u32 = 3;

/// One backed-up folder.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FolderStatus {
    /// Its name in the replica.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Files captured (stable) at the last look.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files seen still being written (taken once stable).
    pub unsettled: u64,
    /// Why the last capture failed (the folder or a file in it could not be read), if it did.
    pub capture_error: Option<String>,
    /// Per replica, in the database's order.
    pub replicas: Vec<FolderReplicaStatus>,
}

/// One folder in one replica.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FolderReplicaStatus {
    /// Where the replica lives.
    pub replica: String,
    /// Blobs (file contents) uploaded since start.
    pub blobs: u64,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Manifests written since start.
    pub manifests: u64,
    /// When the last manifest was written (Unix ms).
    pub last_manifest_ms: Option<u64>,
    /// Changes captured and not yet in a manifest of this replica (they go with the next
    /// database commit shipped there).
    pub pending: u64,
    /// Failed flushes or uploads in a row.
    pub failures: u32,
    /// The last failure, naming the object or file.
    pub last_error: Option<String>,
    /// Failures since start.
    pub errors: u64,
}

impl FolderStatus {
    /// Whether the folder is being shipped: its last capture worked and no replica has failed
    /// [`FAILURES`] times in a row.
    pub fn healthy(&self) -> bool {
        self.capture_error.is_none() && self.replicas.iter().all(|r| r.failures < FAILURES)
    }
}

/// The shared status of a shipper's folders.
#[derive(Clone, Debug, Default)]
pub struct Board(Arc<Mutex<Vec<FolderStatus>>>);

impl Board {
    pub(crate) fn new(folders: Vec<FolderStatus>) -> Board {
        Board(Arc::new(Mutex::new(folders)))
    }

    /// A copy of every folder's status.
    pub fn snapshot(&self) -> Vec<FolderStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn with<T>(&self, folder: usize, f: impl FnOnce(&mut FolderStatus) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner())[folder])
    }

    /// Records the outcome of a capture.
    pub(crate) fn captured(
        &self,
        folder: usize,
        f: &crate::folder::Folder,
        r: &crate::Result<bool>,
    ) {
        let (files, bytes, unsettled) = f.counts();
        self.with(folder, |s| {
            (s.files, s.bytes, s.unsettled) = (files, bytes, unsettled);
            s.capture_error = r.as_ref().err().map(ToString::to_string);
        });
    }

    /// Records how many changes wait for `replica`'s next manifest.
    pub(crate) fn pending(&self, folder: usize, replica: usize, pending: usize) {
        self.with(folder, |s| s.replicas[replica].pending = pending as u64);
    }

    /// Records blobs uploaded to `replica`: `(count, bytes)` (if any, a success: the failures
    /// in a row end).
    pub(crate) fn uploaded(&self, folder: usize, replica: usize, (n, bytes): (u64, u64)) {
        self.with(folder, |s| {
            let r = &mut s.replicas[replica];
            r.blobs += n;
            r.blob_bytes += bytes;
            if n > 0 {
                r.failures = 0;
            }
        });
    }

    /// Records a successful flush to `replica` that wrote `manifests` (0 or 1) and left
    /// `pending` changes for later.
    pub(crate) fn flushed(&self, folder: usize, replica: usize, manifests: u64, pending: usize) {
        self.with(folder, |s| {
            let r = &mut s.replicas[replica];
            r.manifests += manifests;
            if manifests > 0 {
                r.last_manifest_ms = Some(crate::shipper::now_ms());
            }
            r.pending = pending as u64;
            r.failures = 0;
        });
    }

    /// Records a failed flush or upload to `replica`.
    pub(crate) fn failed(&self, folder: usize, replica: usize, e: &crate::Error) {
        self.with(folder, |s| {
            let r = &mut s.replicas[replica];
            r.failures += 1;
            r.errors += 1;
            r.last_error = Some(e.to_string());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_failing_when_it_cannot_be_read_or_a_replica_keeps_failing() {
        let mut s = FolderStatus {
            replicas: vec![FolderReplicaStatus::default(); 2],
            ..FolderStatus::default()
        };
        assert!(s.healthy());
        s.replicas[1].failures = FAILURES - 1;
        assert!(s.healthy());
        s.replicas[1].failures = FAILURES;
        assert!(!s.healthy());
        s.replicas[1].failures = 0;
        s.capture_error = Some("list folder /x: permission denied".into());
        assert!(!s.healthy());
    }
}
