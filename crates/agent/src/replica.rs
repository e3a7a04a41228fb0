//! One replica of one database: its generation, its place in the WAL, and the rolling checksum.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_storage::ReplicaClient;
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::{Generation, TxId};

use crate::walfile::Cursor;

/// Where a replica's history stands.
#[derive(Clone, Debug)]
pub struct ReplicaState {
    /// Current generation.
    pub generation: Generation,
    /// Id the next shipped transaction gets.
    pub next_txid: TxId,
    /// Place in the WAL after the last shipped transaction.
    pub cursor: Cursor,
    /// Per-page hashes of the database after the last shipped transaction.
    pub hashes: PageHashes,
    /// Whether the last pass found nothing more to ship.
    pub at_end: bool,
    /// Transactions read from the WAL but not yet shipped, carried over a WAL restart that
    /// the agent let happen (see `Replicator::restart_wal`).
    pub carry: std::collections::VecDeque<crate::walfile::Batch>,
    /// Segments shipped since the generation's last snapshot.
    pub since_snapshot: u32,
    /// When the generation's last snapshot was taken (Unix ms).
    pub snapshot_ms: u64,
}

/// Settings of one replica that override its database's [`Options`](crate::Options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaOverrides {
    /// See [`Options::retention`](crate::Options::retention).
    pub retention: Option<Duration>,
    /// See [`Options::snapshot_interval`](crate::Options::snapshot_interval).
    pub snapshot_interval: Option<Duration>,
    /// See [`Options::snapshot_segments`](crate::Options::snapshot_segments).
    pub snapshot_segments: Option<u32>,
}

/// A replica and what the agent knows about it.
#[derive(Debug)]
pub struct Replica {
    /// The backend.
    pub client: Arc<dyn ReplicaClient>,
    /// `None` until a generation is resumed or started, and again after continuity is lost.
    pub state: Option<ReplicaState>,
    /// A permanent failure (such as a conflicting object): replication to this replica stopped.
    pub halted: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
    /// Do not try again before this.
    pub retry_at: Option<Instant>,
    /// Why the next generation starts (for the log).
    pub new_generation_reason: String,
    /// Set on start-up when the replica holds history that the local database does not
    /// provably continue: why.
    pub diverged: Option<String>,
    /// Whether the replica's state was read on start-up. Until it is (the replica was
    /// unreachable), no new generation starts: a local database that would resume, or that is a
    /// stale disk to refuse, must not become the newest history because of a network blip.
    pub resumed: bool,
    /// Requests made to the backend, by kind.
    pub requests: Arc<lifeboat_storage::counting::RequestCounts>,
    /// Its own settings, where they differ from the database's.
    pub overrides: ReplicaOverrides,
}

impl Replica {
    /// A replica whose state is not known yet.
    pub fn new(client: Arc<dyn ReplicaClient>) -> Replica {
        let counting = lifeboat_storage::counting::Counting::new(client);
        let requests = counting.counts();
        Replica {
            client: Arc::new(counting),
            requests,
            state: None,
            halted: None,
            failures: 0,
            retry_at: None,
            new_generation_reason: "no generation yet".into(),
            diverged: None,
            resumed: false,
            overrides: ReplicaOverrides::default(),
        }
    }

    /// Whether it may be tried now.
    pub fn ready(&self, now: Instant) -> bool {
        self.halted.is_none() && self.retry_at.is_none_or(|t| now >= t)
    }

    /// Records a failure and schedules the next attempt with exponential backoff (max 30 s).
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.failures += 1;
        let d = Duration::from_millis(250u64 << self.failures.min(7)).min(Duration::from_secs(30));
        self.retry_at = Some(now + d);
        d
    }

    /// Records a success.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Forgets the generation: the next pass starts a new one.
    pub fn lose_continuity(&mut self, reason: String) {
        self.state = None;
        self.new_generation_reason = reason;
    }
}
