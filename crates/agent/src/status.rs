//! What the agent has done, for logs, the health endpoint and metrics.

use std::sync::Mutex;
use std::time::Duration;

use lifeboat_wal::TxId;
use serde::Serialize;

/// The lease as `/health`, `/metrics` and the logs show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LeaseInfo {
    /// Who holds it (this process).
    pub holder: String,
    /// Its epoch.
    pub epoch: u64,
    /// `held`, `handing_over`, `released` or `lost`.
    pub state: String,
    /// When it was last renewed (Unix ms).
    pub renewed_ms: u64,
    /// When it expires unless renewed (Unix ms, this host's clock).
    pub expires_ms: u64,
    /// Handoffs this process answered.
    pub handoffs: u64,
}

/// One replica's progress.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaStatus {
    /// Where it lives.
    pub replica: String,
    /// Current generation, if any.
    pub generation: Option<String>,
    /// Last shipped transaction.
    pub last_txid: Option<String>,
    /// Whether everything read from the WAL has been shipped.
    pub caught_up: bool,
    /// Consecutive failures.
    pub failures: u32,
    /// Why replication to it stopped, if it did.
    pub halted: Option<String>,
    /// What was written to it since start.
    #[serde(flatten)]
    pub written: Written,
    /// How far behind it is.
    #[serde(flatten)]
    pub lag: Lag,
    /// The lag past which it is unhealthy, in seconds (`health-max-lag`, default 60).
    pub max_lag_seconds: f64,
    /// Requests made to the replica since start, by kind (`put`, `get`, `list`, `delete`, and
    /// `failed` for those that returned an error).
    pub requests: std::collections::BTreeMap<String, u64>,
}

/// What was written to a replica since start.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Written {
    /// When the last upload succeeded (Unix ms).
    pub last_sync_ms: Option<u64>,
    /// Transactions shipped.
    pub txns: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Objects written.
    pub objects: u64,
}

/// How far behind a replica is: what the WAL holds that it does not.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Lag {
    /// Commits seen in the WAL and not yet in the replica.
    pub pending_txns: u64,
    /// When the oldest of them was first seen (Unix ms).
    pub oldest_pending_ms: Option<u64>,
    /// When the agent started on this replica (Unix ms).
    pub started_ms: Option<u64>,
}

/// A replica counts as failing once it has failed this many times in a row ...
pub const FAILURES: u32 = 3;
/// ... or is this far behind (see [`ReplicaStatus::lag_seconds`]), unless `health-max-lag`
/// says otherwise.
pub const STALL: Duration = Duration::from_secs(60);

impl ReplicaStatus {
    /// Seconds the replica is behind: the age of the oldest commit seen in the WAL and not yet
    /// in the replica (0 when there is none); before its first generation, the time since start.
    pub fn lag_seconds(&self, now_ms: u64) -> f64 {
        let since = match (self.generation.as_ref(), self.lag.oldest_pending_ms) {
            (None, _) => self.lag.started_ms.unwrap_or(now_ms),
            (Some(_), Some(t)) => t,
            (Some(_), None) => now_ms,
        };
        now_ms.saturating_sub(since) as f64 / 1000.0
    }

    /// The health rule (`/health` answers 200 only while every replica is healthy, else 503):
    /// not halted, fewer than [`FAILURES`] failures in a row, in a generation, and less than
    /// `max_lag_seconds` behind ([`STALL`] if not set).
    pub fn healthy(&self, now_ms: u64) -> bool {
        let max_lag = if self.max_lag_seconds > 0.0 {
            self.max_lag_seconds
        } else {
            STALL.as_secs_f64()
        };
        self.halted.is_none()
            && self.failures < FAILURES
            && self.generation.is_some()
            && self.lag_seconds(now_ms) < max_lag
    }
}

/// Progress of one database, shared between the replicator thread and readers.
#[derive(Debug, Default)]
pub struct Status {
    inner: Mutex<StatusInner>,
    /// The folders backed up with the database, if any (`--dir`).
    folders: std::sync::OnceLock<lifeboat_dirs::status::Board>,
}

/// A copy of a database's progress.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusInner {
    /// Per replica.
    pub replicas: Vec<ReplicaStatus>,
    /// Errors since start.
    pub errors: u64,
    /// Errors since start, by kind.
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// The last error.
    pub last_error: Option<String>,
    /// Checkpoints run by the agent.
    pub checkpoints: u64,
    /// Time spent in them.
    pub checkpoint_seconds: f64,
    /// Snapshots taken.
    pub snapshots: u64,
    /// Time spent taking and uploading them.
    pub snapshot_seconds: f64,
    /// Size of the -wal file at the last pass.
    pub wal_bytes: u64,
    /// The last scheduled drill: whether it passed, its restore time, when it ran (Unix ms).
    pub last_drill: Option<DrillOutcome>,
    /// The writer lease, if the agent holds one (see [`crate::lease`]).
    pub lease: Option<LeaseInfo>,
    /// The folders backed up with the database (`--dir`).
    pub folders: Vec<lifeboat_dirs::status::FolderStatus>,
}

/// What the last drill found.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DrillOutcome {
    /// Whether every check passed.
    pub ok: bool,
    /// Restore wall time, if the restore ran.
    pub rto_seconds: Option<f64>,
    /// When it started (Unix ms).
    pub at_ms: u64,
}

impl Status {
    fn with<T>(&self, f: impl FnOnce(&mut StatusInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> StatusInner {
        let mut s = self.with(|s| s.clone());
        if let Some(b) = self.folders.get() {
            s.folders = b.snapshot();
        }
        s
    }

    /// Reports the status of the folders backed up with the database from `board`.
    pub fn watch_folders(&self, board: lifeboat_dirs::status::Board) {
        let _ = self.folders.set(board);
    }

    fn replica(s: &mut StatusInner, i: usize) -> &mut ReplicaStatus {
        if s.replicas.len() <= i {
            s.replicas.resize(i + 1, ReplicaStatus::default());
        }
        &mut s.replicas[i]
    }

    /// Records the outcome of a drill (run by the caller, e.g. `lifeboat run --drill-interval`).
    pub fn record_drill(&self, d: DrillOutcome) {
        self.with(|s| s.last_drill = Some(d));
    }

    /// Records the state of the writer lease.
    pub fn update_lease(&self, f: impl FnOnce(&mut LeaseInfo)) {
        self.with(|s| f(s.lease.get_or_insert_with(Default::default)));
    }

    pub(crate) fn record_error(&self, e: &crate::Error) {
        self.with(|s| {
            s.errors += 1;
            *s.errors_by_kind.entry(e.kind().to_string()).or_default() += 1;
            s.last_error = Some(e.chain().to_string());
        });
    }

    pub(crate) fn shipped(&self, i: usize, txns: u64, bytes: u64, at_ms: u64, last: TxId) {
        self.with(|s| {
            let r = Self::replica(s, i);
            r.written.txns += txns;
            r.written.bytes += bytes;
            r.written.objects += 1;
            r.written.last_sync_ms = Some(at_ms);
            r.last_txid = Some(last.to_string());
        });
    }

    pub(crate) fn snapshotted(&self, i: usize, took: Duration) {
        self.with(|s| {
            s.snapshots += 1;
            s.snapshot_seconds += took.as_secs_f64();
            let r = Self::replica(s, i);
            r.written.objects += 1;
            r.written.last_sync_ms = Some(crate::clock::now_ms());
        });
    }

    pub(crate) fn checkpointed(&self, took: Duration) {
        self.with(|s| {
            s.checkpoints += 1;
            s.checkpoint_seconds += took.as_secs_f64();
        });
    }

    /// Records the size of the WAL, and lets `f` write each of `replicas` replicas' status.
    pub(crate) fn update(
        &self,
        wal_bytes: u64,
        replicas: usize,
        mut f: impl FnMut(usize, &mut ReplicaStatus),
    ) {
        self.with(|s| {
            s.wal_bytes = wal_bytes;
            for i in 0..replicas {
                f(i, Self::replica(s, i));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> ReplicaStatus {
        ReplicaStatus {
            generation: Some("g".into()),
            lag: Lag {
                started_ms: Some(1_000),
                ..Lag::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_caught_up_replica_is_healthy() {
        let r = replica();
        assert_eq!(r.lag_seconds(500_000), 0.0);
        assert!(r.healthy(500_000));
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_pending_commit_or_the_time_since_start() {
        let mut r = replica();
        r.lag.oldest_pending_ms = Some(10_000);
        assert_eq!(r.lag_seconds(69_000), 59.0);
        assert!(r.healthy(69_000));
        assert!(!r.healthy(70_000), "60 s behind is failing");
        let starting = ReplicaStatus {
            lag: Lag {
                started_ms: Some(1_000),
                ..Lag::default()
            },
            ..Default::default()
        };
        assert_eq!(starting.lag_seconds(3_000), 2.0);
        assert!(!starting.healthy(3_000), "no generation yet");
    }

    #[test]
    fn halted_or_repeatedly_failing_replicas_are_unhealthy() {
        let mut r = replica();
        r.failures = FAILURES - 1;
        assert!(r.healthy(0));
        r.failures = FAILURES;
        assert!(!r.healthy(0));
        let mut r = replica();
        r.halted = Some("conflict".into());
        assert!(!r.healthy(0));
    }
}
