//! The folders backed up with each database (`--dir`) in `/health` and `/metrics`.
//!
//! A folder is healthy while its last capture worked and no replica has failed to take it
//! [`FAILURES`](lifeboat_dirs::status::FAILURES) times in a row; an unhealthy folder makes
//! `/health` answer 503 and names its error.

use std::fmt::Write as _;

use lifeboat_agent::status::StatusInner;
use lifeboat_dirs::status::{FolderReplicaStatus, FolderStatus};
use serde::Serialize;

use crate::http::{family_header, label, Metric};

/// A folder in `/health`.
#[derive(Serialize)]
pub struct FolderHealth {
    #[serde(flatten)]
    status: FolderStatus,
    /// Whether it is captured and shipped (see the module docs).
    pub healthy: bool,
}

/// The folders of a database, for `/health`.
pub fn health(folders: Vec<FolderStatus>) -> Vec<FolderHealth> {
    folders
        .into_iter()
        .map(|status| FolderHealth {
            healthy: status.healthy(),
            status,
        })
        .collect()
}

/// A metric with one value per folder.
type PerFolder = Metric<fn(&FolderStatus) -> f64>;

const PER_FOLDER: &[PerFolder] = &[
    (
        "lifeboat_folder_files",
        "gauge",
        "Files in the backed-up folder (captured, stable).",
        |f| f.files as f64,
    ),
    (
        "lifeboat_folder_bytes",
        "gauge",
        "Bytes of those files.",
        |f| f.bytes as f64,
    ),
    (
        "lifeboat_folder_unsettled_files",
        "gauge",
        "Files still being written (taken once unchanged for a moment).",
        |f| f.unsettled as f64,
    ),
    (
        "lifeboat_folder_healthy",
        "gauge",
        "1 while the folder is captured and shipped (see /health), else 0.",
        |f| f64::from(u8::from(f.healthy())),
    ),
];

/// A metric with one value per folder and replica (`None`: no sample).
type PerFolderReplica = Metric<fn(&FolderReplicaStatus) -> Option<f64>>;

const PER_FOLDER_REPLICA: &[PerFolderReplica] = &[
    (
        "lifeboat_folder_blobs_uploaded_total",
        "counter",
        "File contents (blobs) uploaded to the replica.",
        |r| Some(r.blobs as f64),
    ),
    (
        "lifeboat_folder_blob_bytes_uploaded_total",
        "counter",
        "Bytes of blobs uploaded to the replica.",
        |r| Some(r.blob_bytes as f64),
    ),
    (
        "lifeboat_folder_manifests_total",
        "counter",
        "Manifests (the folder's state at a database commit) written to the replica.",
        |r| Some(r.manifests as f64),
    ),
    (
        "lifeboat_folder_last_manifest_timestamp_seconds",
        "gauge",
        "Unix time of the last manifest written to the replica.",
        |r| r.last_manifest_ms.map(|t| t as f64 / 1000.0),
    ),
    (
        "lifeboat_folder_pending_changes",
        "gauge",
        "Changes captured and not yet in a manifest (they go with the next database commit).",
        |r| Some(r.pending as f64),
    ),
    (
        "lifeboat_folder_consecutive_failures",
        "gauge",
        "Failed flushes or uploads of the folder to the replica in a row.",
        |r| Some(f64::from(r.failures)),
    ),
    (
        "lifeboat_folder_errors_total",
        "counter",
        "Failed flushes or uploads of the folder to the replica.",
        |r| Some(r.errors as f64),
    ),
];

/// Appends the folder metric families to `out` (`snaps`: each database's label and status).
pub fn metrics(out: &mut String, snaps: &[(String, StatusInner)]) {
    let folders: Vec<(String, &FolderStatus)> = snaps
        .iter()
        .flat_map(|(db, s)| {
            s.folders
                .iter()
                .map(move |f| (format!("db=\"{db}\",folder=\"{}\"", label(&f.name)), f))
        })
        .collect();
    if folders.is_empty() {
        return;
    }
    for &(name, kind, help, f) in PER_FOLDER {
        family_header(out, name, kind, help);
        for (labels, s) in &folders {
            let _ = writeln!(out, "{name}{{{labels}}} {}", f(s));
        }
    }
    for &(name, kind, help, f) in PER_FOLDER_REPLICA {
        family_header(out, name, kind, help);
        for (labels, s) in &folders {
            for r in &s.replicas {
                if let Some(v) = f(r) {
                    let _ = writeln!(
                        out,
                        "{name}{{{labels},replica=\"{}\"}} {v}",
                        label(&r.replica)
                    );
                }
            }
        }
    }
}
