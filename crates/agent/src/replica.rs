//! One replica of one database: where it stands ([`Phase`]), its place in the WAL and its
//! rolling checksum ([`ReplicaState`]), and how it fails (one rule, `Replica::record_failure`).
//!
//! Shipping to it is in `shipping`; the proof that lets it resume is in
//! `resume`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeboat_storage::counting::{Counting, RequestCounts};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::checksum::PageHashes;

use crate::bases::BaseIndex;
use lifeboat_wal::{DbChecksum, Generation, TxId};
use tracing::{error, warn};

use crate::context::Context;
use crate::status::ReplicaStatus;
use crate::walfile::{Batch, Cursor};
use crate::Error;

pub(crate) mod packing;
pub(crate) mod shipping;

/// Where a replica's history stands while it ships in a generation.
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
    /// the agent let happen (see `checkpoints`).
    pub carry: VecDeque<Batch>,
    /// Segments shipped since the generation's last snapshot.
    pub since_snapshot: u32,
    /// When the generation's last snapshot was taken (Unix ms).
    pub snapshot_ms: u64,
    /// The bytes of the generation's last snapshot (0: not known).
    pub snapshot_bytes: u64,
    /// The bytes of the segments shipped since it.
    pub bytes_since_snapshot: u64,
    /// A segment whose upload failed with an unknown outcome: the next attempt sends exactly
    /// it again (same key, same bytes), never a different cut of its transactions.
    pub(crate) unsent: Option<Box<crate::replica::shipping::Unsent>>,
    /// Where shipped pages sit in the WAL, for the page deltas of the next segment.
    pub bases: Box<BaseIndex>,
    /// The small segments stored last, to be packed (see `packing`).
    pub(crate) packer: crate::replica::packing::Packer,
}

impl ReplicaState {
    /// The first state of a generation: its snapshot, of the pinned state at `cursor`.
    pub fn new(
        generation: Generation,
        last_txid: TxId,
        cursor: Cursor,
        hashes: PageHashes,
        snapshot_ms: u64,
    ) -> ReplicaState {
        ReplicaState {
            generation,
            next_txid: last_txid.next(),
            cursor,
            hashes,
            at_end: false,
            carry: VecDeque::new(),
            since_snapshot: 0,
            snapshot_ms,
            snapshot_bytes: 0,
            bytes_since_snapshot: 0,
            unsent: None,
            bases: Box::default(),
            packer: Default::default(),
        }
    }

    /// The last transaction shipped (the snapshot's, before any segment).
    pub fn last_txid(&self) -> TxId {
        TxId(self.next_txid.0 - 1)
    }
}

/// Why a replica needs a new generation (a snapshot of the local database).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The replica holds no generation yet.
    EmptyReplica,
    /// The database was just restored from the replica: it starts a new generation rather than
    /// resuming (see [`Options::resume`](crate::Options::resume)).
    Restored,
    /// On start-up, the local database is not provably the replica's newest state nor a
    /// continuation of it: why. With [`OnDivergence::Refuse`](crate::OnDivergence::Refuse) the
    /// replica halts instead.
    Diverged(String),
    /// While running, the WAL stopped continuing from the replica's place: why.
    WalBroken(String),
    /// The replica kept failing while the WAL grew past `max-wal-bytes`, so the agent released
    /// the WAL for the app's checkpoints.
    TooFarBehind,
    /// The agent took the writer lease: it writes a generation fenced with its own epoch.
    NewEpoch,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::EmptyReplica => f.write_str("the replica is empty"),
            Reason::Restored => f.write_str(
                "the database was just restored: a new generation, so an instance still writing \
                 the old one cannot fork it",
            ),
            Reason::Diverged(why) | Reason::WalBroken(why) => f.write_str(why),
            Reason::NewEpoch => f.write_str(
                "this instance took the writer lease: a generation fenced with its epoch",
            ),
            Reason::TooFarBehind => {
                f.write_str("the WAL grew past max-wal-bytes while the replica was unreachable")
            }
        }
    }
}

/// Where a replica stands.
// One per replica, mostly `Active`: boxing that variant would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Phase {
    /// Its state has not been read yet (it was unreachable at start-up). No generation starts
    /// until it is: a local database that would resume, or a stale disk to refuse, must not
    /// become the newest history because of a network blip.
    Unknown,
    /// It needs a new generation (a snapshot), for this reason.
    NeedsGeneration(Reason),
    /// It ships transactions in a generation.
    Active(ReplicaState),
    /// Replication to it stopped for good (another writer's object, or a refused divergence):
    /// why. It no longer holds the WAL for the app.
    Halted(String),
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
    /// Where it stands.
    pub phase: Phase,
    /// Consecutive failures.
    pub failures: u32,
    /// Do not try again before this.
    pub retry_at: Option<Instant>,
    /// Requests made to the backend, by kind.
    pub requests: Arc<RequestCounts>,
    /// Its own settings, where they differ from the database's.
    pub overrides: ReplicaOverrides,
    /// Its place among the database's replicas (for status).
    pub(crate) index: usize,
    /// The retention run in progress in the background, if any (see [`crate::retention`]).
    pub(crate) pruning: Option<tokio::task::JoinHandle<()>>,
}

impl Replica {
    /// Replica number `index` of its database, whose state is not known yet.
    pub fn new(client: Arc<dyn ReplicaClient>, index: usize) -> Replica {
        let counting = Counting::new(client);
        let requests = counting.counts();
        Replica {
            client: Arc::new(counting),
            requests,
            phase: Phase::Unknown,
            failures: 0,
            retry_at: None,
            overrides: ReplicaOverrides::default(),
            index,
            pruning: None,
        }
    }

    /// Its generation's state, while it ships in one.
    pub fn state(&self) -> Option<&ReplicaState> {
        match &self.phase {
            Phase::Active(st) => Some(st),
            _ => None,
        }
    }

    /// See [`state`](Self::state).
    pub fn state_mut(&mut self) -> Option<&mut ReplicaState> {
        match &mut self.phase {
            Phase::Active(st) => Some(st),
            _ => None,
        }
    }

    /// Why it stopped for good, if it did.
    pub fn halted(&self) -> Option<&str> {
        match &self.phase {
            Phase::Halted(why) => Some(why),
            _ => None,
        }
    }

    /// Why the local database does not continue its history, if start-up found that.
    pub fn diverged(&self) -> Option<&str> {
        match &self.phase {
            Phase::NeedsGeneration(Reason::Diverged(why)) => Some(why),
            _ => None,
        }
    }

    /// Checksum of its last shipped state, if it ships in a generation.
    pub fn checksum(&self) -> Option<DbChecksum> {
        self.state().map(|s| s.hashes.checksum())
    }

    /// Where it stands, in a few words, for a log line saying why it is not caught up.
    pub fn progress(&self) -> String {
        match &self.phase {
            Phase::Unknown => "not read yet".into(),
            Phase::NeedsGeneration(why) => format!("waiting for a new generation ({why})"),
            Phase::Halted(why) => format!("halted: {why}"),
            Phase::Active(s) => format!(
                "shipping: next txid {}, {}, {} carried batches, {}",
                s.next_txid.0,
                if s.at_end {
                    "at the end"
                } else {
                    "not at the end"
                },
                s.carry.len(),
                if s.unsent.is_some() {
                    "a segment to resend"
                } else {
                    "nothing to resend"
                },
            ),
        }
    }

    /// Whether it may be tried now.
    pub fn ready(&self, now: Instant) -> bool {
        self.halted().is_none() && self.retry_at.is_none_or(|t| now >= t)
    }

    /// Whether it is healthy enough to be given more work than shipping (a WAL restart, a
    /// snapshot, retention): not halted and not waiting to retry.
    pub fn healthy(&self) -> bool {
        self.halted().is_none() && self.retry_at.is_none()
    }

    /// Records a failure: logs it (`what` failed), counts it, and schedules the next attempt
    /// with exponential backoff (max 30 s). The one rule for every path: a conflict (another
    /// writer's object under our key) halts the replica. Returns the backoff.
    pub(crate) fn record_failure(&mut self, e: &Error, what: &str, ctx: &Context) -> Duration {
        self.failures += 1;
        let d = Duration::from_millis(250u64 << self.failures.min(7)).min(Duration::from_secs(30));
        self.retry_at = Some(Instant::now() + d);
        if e.is_setup() {
            // Its one line says what to fix; the SDK's cause (IMDS, sockets) only confuses.
            warn!(db = %ctx.path.display(), error = %e, retry_in_ms = d.as_millis() as u64, "{what}");
            tracing::debug!(error = %e.chain(), "set-up error, in full");
        } else {
            warn!(db = %ctx.path.display(), replica = %self.client.describe(), error = %e.chain(), retry_in_ms = d.as_millis() as u64, "{what}");
        }
        ctx.status.record_error(e);
        if e.is_conflict() {
            self.halt(e.chain().to_string());
        }
        d
    }

    /// Stops replication to it for good.
    pub(crate) fn halt(&mut self, why: String) {
        error!(replica = %self.client.describe(), error = %why, "replication to this replica stopped");
        self.phase = Phase::Halted(why);
    }

    /// Records a success.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Forgets the generation: the next pass starts a new one.
    pub fn lose_continuity(&mut self, reason: Reason) {
        if self.halted().is_none() {
            self.phase = Phase::NeedsGeneration(reason);
        }
    }

    /// Writes what the agent knows about it into its status; `pending` is the commits it does
    /// not have yet and when the oldest was seen.
    pub(crate) fn report(
        &self,
        st: &mut ReplicaStatus,
        pending: (u64, Option<u64>),
        ctx: &Context,
    ) {
        st.lag.started_ms.get_or_insert_with(crate::clock::now_ms);
        st.requests = self
            .requests
            .snapshot()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        (st.lag.pending_txns, st.lag.oldest_pending_ms) = pending;
        st.replica = self.client.describe();
        st.max_lag_seconds = ctx.opts.health_max_lag.as_secs_f64();
        st.generation = self.state().map(|x| x.generation.to_string());
        st.caught_up = self
            .state()
            .is_some_and(|x| x.at_end && x.unsent.is_none() && x.carry.is_empty())
            && st.lag.pending_txns == 0;
        st.failures = self.failures;
        st.halted = self.halted().map(str::to_string);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_storage::memory::MemoryClient;

    fn replica() -> Replica {
        Replica::new(Arc::new(MemoryClient::default()), 0)
    }

    fn ctx() -> Context {
        Context {
            path: "app.db".into(),
            opts: crate::Options::default(),
            rt: tokio::runtime::Runtime::new().unwrap().handle().clone(),
            status: Default::default(),
            stop: None,
            dirs: None,
        }
    }

    #[test]
    fn failures_back_off_exponentially_up_to_30_s_and_success_resets() {
        let (mut r, ctx) = (replica(), ctx());
        let e = Error::io("upload", std::io::Error::other("down"));
        let waits: Vec<_> = (0..9).map(|_| r.record_failure(&e, "x", &ctx)).collect();
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], Duration::from_millis(1000));
        assert_eq!(waits[8], Duration::from_secs(30));
        assert!(!r.ready(Instant::now()));
        assert!(r.ready(Instant::now() + Duration::from_secs(31)));
        r.succeeded();
        assert!(r.ready(Instant::now()) && r.failures == 0);
        assert_eq!(ctx.status.snapshot().errors, 9);
    }

    #[test]
    fn a_conflict_halts_the_replica_and_other_failures_do_not() {
        let (mut r, ctx) = (replica(), ctx());
        r.phase = Phase::NeedsGeneration(Reason::EmptyReplica);
        r.record_failure(
            &Error::io("upload", std::io::Error::other("down")),
            "x",
            &ctx,
        );
        assert!(r.halted().is_none());
        let conflict = Error::Storage(lifeboat_storage::Error::Conflict { key: "k".into() });
        r.record_failure(&conflict, "x", &ctx);
        assert!(r.halted().is_some_and(|w| w.contains("already exists")));
        assert!(!r.ready(Instant::now() + Duration::from_secs(60)));
        // Halted is for good: losing continuity does not bring it back.
        r.lose_continuity(Reason::TooFarBehind);
        assert!(matches!(r.phase, Phase::Halted(_)));
    }

    #[test]
    fn reasons_read_as_before() {
        assert_eq!(Reason::EmptyReplica.to_string(), "the replica is empty");
        assert_eq!(Reason::Diverged("why".into()).to_string(), "why");
        let r = Replica {
            phase: Phase::NeedsGeneration(Reason::Diverged("stale".into())),
            ..replica()
        };
        assert_eq!(r.diverged(), Some("stale"));
        assert!(r.state().is_none() && r.checksum().is_none());
    }
}
