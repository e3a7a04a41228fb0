//! The sync engine for one database: resume or start generations, ship transactions, move the
//! pin, checkpoint.
//!
//! A [`Replicator`] is synchronous and owns its [`Database`]; [`crate::agent`] runs each one on
//! a thread of its own and wakes it on WAL changes. Uploads go through a Tokio runtime handle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::keys::Key;
use lifeboat_storage::retry::{retry, RetryPolicy};
use lifeboat_storage::{PutOutcome, ReplicaClient};
use lifeboat_wal::snapshot::{SnapshotHeader, SnapshotWriter};
use lifeboat_wal::sqlite::WAL_HEADER_SIZE;
use lifeboat_wal::transaction::SegmentBuilder;
use lifeboat_wal::{DbChecksum, Generation, TxId, FORMAT_VERSION};
use tokio::runtime::Handle;
use tracing::{debug, error, info, warn};

use crate::catalog::{self, Catalog};
use crate::clock::now_ms;
use crate::db::{CheckpointMode, CheckpointResult, Database};
use crate::replica::{Replica, ReplicaState};
use crate::status::Status;
use crate::walfile::{position_in_cycle, Continuity, Cursor};
use crate::{Error, Options, Result};

/// Transactions read ahead of shipping (see [`ReplicaState::carry`]).
type Carry = std::collections::VecDeque<crate::walfile::Batch>;

/// The most unshipped WAL the agent reads into memory to resume a generation; past it, a new
/// generation (a snapshot) is cheaper and bounded.
const MAX_CARRY_BYTES: usize = 64 << 20;

/// How often the agent applies retention.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Why a first generation starts.
const EMPTY_REPLICA: &str = "the replica is empty";

/// Why a generation starts without trying to resume (see [`Options::resume`]).
const FRESH_GENERATION: &str =
    "the database was just restored: a new generation, so an instance still writing the old one cannot fork it";

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Objects written (segments and snapshots).
    pub puts: u32,
    /// Transactions shipped (summed over replicas).
    pub txns: u64,
    /// Whether some replica still has work (behind, or waiting to retry).
    pub pending: bool,
}

/// What one upload shipped.
#[derive(Clone, Copy, Debug)]
struct Shipped {
    txns: u64,
    /// The batch was cut at the segment size limit: more is waiting.
    full: bool,
}

impl Shipped {
    const NOTHING: Shipped = Shipped {
        txns: 0,
        full: false,
    };
}

/// Replicates one database to its replicas.
pub struct Replicator {
    db: Database,
    replicas: Vec<Replica>,
    opts: Options,
    rt: Handle,
    status: Arc<Status>,
    last_restart_attempt: Option<Instant>,
    /// When retention last ran.
    last_retention: Option<Instant>,
    /// While a scheduled snapshot is being lined up: ship no transaction past this position.
    ship_limit: Option<Cursor>,
    /// When each commit was first seen, by (salt 1, salt 2, end offset): the agent looks at the
    /// WAL on every file event, even when the PUT budget holds uploads back, so commit times are
    /// accurate to the event latency rather than to the upload cadence.
    observed: std::collections::BTreeMap<(u32, u32, u64), u64>,
    /// Where observation continues: (salt 1, salt 2, offset).
    observe_at: Option<(u32, u32, u64)>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("db", &self.db.path())
            .finish()
    }
}

impl Replicator {
    /// Opens the database (taking the agent lock and pinning the WAL).
    pub fn open(
        path: &std::path::Path,
        clients: Vec<Arc<dyn ReplicaClient>>,
        opts: Options,
        rt: Handle,
        status: Arc<Status>,
    ) -> Result<Replicator> {
        let db = Database::open(path)?;
        Ok(Replicator {
            db,
            replicas: clients.into_iter().map(Replica::new).collect(),
            opts,
            rt,
            status,
            last_restart_attempt: None,
            last_retention: None,
            ship_limit: None,
            observed: Default::default(),
            observe_at: None,
        })
    }

    /// The database.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// For each replica, resumes its newest generation if the local database provably is its
    /// last state, or leaves it to start a new generation on the next pass.
    pub fn resume(&mut self) {
        for i in 0..self.replicas.len() {
            self.resume_or_retry(i);
        }
    }

    /// [`resume`](Self::resume) for replica `i`; on failure it is tried again on a later pass.
    fn resume_or_retry(&mut self, i: usize) {
        match self.resume_one(i) {
            Ok(()) => self.replicas[i].resumed = true,
            Err(e) => {
                let r = &mut self.replicas[i];
                let d = r.failed(Instant::now());
                warn!(replica = %r.client.describe(), error = %e, retry_in = ?d, "cannot read replica state; will try again before starting any generation");
                self.status.record_error(&e);
            }
        }
    }

    fn resume_one(&mut self, i: usize) -> Result<()> {
        self.try_resume(i)?;
        let r = &mut self.replicas[i];
        if r.state.is_none()
            && r.new_generation_reason != EMPTY_REPLICA
            && r.new_generation_reason != FRESH_GENERATION
        {
            warn!(
                db = %self.db.path().display(),
                replica = %r.client.describe(),
                reason = %r.new_generation_reason,
                "the local database does not continue the replica's newest state"
            );
            r.diverged = Some(r.new_generation_reason.clone());
        }
        Ok(())
    }

    fn try_resume(&mut self, i: usize) -> Result<()> {
        let client = self.replicas[i].client.clone();
        let cat = self.rt.block_on(Catalog::load(client.as_ref()))?;
        let Some((generation, objs)) = cat.latest() else {
            self.replicas[i].lose_continuity(EMPTY_REPLICA.into());
            self.replicas[i].succeeded();
            return Ok(());
        };
        if !self.opts.resume {
            self.replicas[i].lose_continuity(FRESH_GENERATION.into());
            self.replicas[i].succeeded();
            return Ok(());
        }
        let tip = self
            .rt
            .block_on(catalog::tip(client.as_ref(), generation, objs))?;
        let (since_snapshot, snapshot_ms) = match objs.snapshots.last() {
            Some(s) => (objs.segments_since_snapshot() as u32, s.time_ms),
            None => (0, now_ms()),
        };
        self.replicas[i].succeeded();
        if tip.page_size != self.db.page_size() {
            self.replicas[i].lose_continuity(format!(
                "page size changed from {} to {}",
                tip.page_size,
                self.db.page_size()
            ));
            return Ok(());
        }
        // The pin is held: nothing the app does from here on can break the WAL under us.
        self.db.pin()?;
        let header = self
            .db
            .wal()
            .header()
            .map_err(|e| Error::io("read WAL header", e))?;
        let in_cycle = header.filter(|h| position_in_cycle(&tip.wal, h));
        let (hashes, cursor) = match in_cycle {
            Some(h) => {
                let c = Cursor {
                    header: Some(h),
                    offset: tip.wal.end_offset,
                    checksum: tip.wal.checksum_after,
                    prev: None,
                };
                if self
                    .db
                    .wal()
                    .check(&c)
                    .map_err(|e| Error::io("read WAL", e))?
                    != Continuity::Same
                {
                    self.replicas[i]
                        .lose_continuity("the WAL no longer holds the replica's last frame".into());
                    return Ok(());
                }
                (
                    self.db
                        .hashes_at(tip.db_size, Some((&h, tip.wal.end_offset)))?,
                    c,
                )
            }
            None => {
                // The log restarted (or was removed) since: the replica's last state must be
                // exactly the database file, and the whole current WAL comes after it.
                if header.is_some_and(|h| h.salt1 == tip.wal.salt1 && h.salt2 == tip.wal.salt2) {
                    self.replicas[i]
                        .lose_continuity("the WAL changed in a way lifeboat cannot follow".into());
                    return Ok(());
                }
                let c = header.map_or(Cursor::empty(), |h| Cursor {
                    prev: Some((tip.wal.salt1, tip.wal.salt2)),
                    ..Cursor::at_start(h)
                });
                (self.db.hashes_at(tip.db_size, None)?, c)
            }
        };
        match hashes {
            Some(h) if h.checksum() == tip.checksum => {
                // The proof ran without a lock. Before resuming, make sure the log has not moved
                // on since, and read everything after the replica's last frame: if the app
                // checkpointed it all while the agent was stopped, the pin may hold read mark
                // zero, which lets the app's next write restart the log over those frames.
                let Some((cursor, carry)) = self.read_tail_locked(cursor)? else {
                    self.replicas[i].lose_continuity(
                        "the WAL moved on while lifeboat checked it, or its unshipped tail is too large to carry"
                            .into(),
                    );
                    return Ok(());
                };
                info!(
                    db = %self.db.path().display(),
                    replica = %client.describe(),
                    generation = %generation,
                    txid = %tip.txid,
                    "resuming generation: the local database matches the replica's last state"
                );
                self.replicas[i].state = Some(ReplicaState {
                    generation,
                    next_txid: tip.txid.next(),
                    cursor,
                    hashes: h,
                    at_end: false,
                    carry,
                    since_snapshot,
                    snapshot_ms,
                });
            }
            Some(h) => self.replicas[i].lose_continuity(format!(
                "the local database (checksum {}) is not the replica's last state (generation {generation}, txid {}, checksum {})",
                h.checksum(),
                tip.txid,
                tip.checksum
            )),
            None => self.replicas[i]
                .lose_continuity("the WAL no longer holds the replica's last frames".into()),
        }
        Ok(())
    }

    /// Under the write lock (nothing can be appended or restarted meanwhile): checks that the
    /// WAL still continues from `cursor`, reads every whole transaction after it, and re-pins.
    /// `None` if the log moved on, the tail is larger than [`MAX_CARRY_BYTES`], or the app held
    /// the write lock for two seconds.
    fn read_tail_locked(&mut self, cursor: Cursor) -> Result<Option<(Cursor, Carry)>> {
        if !self.db.try_write_lock(Duration::from_secs(2))? {
            return Ok(None);
        }
        let wal = self.db.wal().clone();
        let read = (|| -> Result<Option<(Cursor, Carry)>> {
            let start = match wal.check(&cursor).map_err(|e| Error::io("read WAL", e))? {
                Continuity::Same | Continuity::Empty => cursor,
                // A log that appeared since the proof, which was of the database file alone.
                Continuity::Restarted(h) if cursor.header.is_none() => cursor.restarted(h),
                Continuity::Restarted(_) | Continuity::Broken(_) => return Ok(None),
            };
            Ok(
                read_tail(&wal, start, self.opts.max_segment_bytes, MAX_CARRY_BYTES)?
                    .map(|carry| (start, carry)),
            )
        })();
        let pinned = self.db.pin();
        let released = self.db.release_write_lock();
        let r = read?;
        pinned?;
        released?;
        Ok(r)
    }

    /// Notes the time of every commit that appeared in the WAL since the last look.
    pub fn observe(&mut self) {
        let wal = self.db.wal();
        let Ok(Some(h)) = wal.header() else { return };
        let from = match self.observe_at {
            Some((s1, s2, off)) if (s1, s2) == (h.salt1, h.salt2) => off,
            _ => WAL_HEADER_SIZE as u64,
        };
        let Ok(ends) = wal.commit_offsets(&h, from, 100_000) else {
            return;
        };
        let now = now_ms();
        for &end in &ends {
            self.observed.entry((h.salt1, h.salt2, end)).or_insert(now);
        }
        let next = ends.last().copied().unwrap_or(from);
        self.observe_at = Some((h.salt1, h.salt2, next));
        if self.observed.len() > 10_000 {
            self.observed
                .retain(|_, t| now.saturating_sub(*t) < 600_000);
        }
    }

    /// Drops commit times that every replica has shipped.
    fn forget_shipped_observations(&mut self) {
        let mut cycle = None;
        let mut min_offset = u64::MAX;
        for st in self.replicas.iter().filter_map(|r| r.state.as_ref()) {
            let Some(h) = st.cursor.header else { return };
            if *cycle.get_or_insert((h.salt1, h.salt2)) != (h.salt1, h.salt2) {
                return;
            }
            min_offset = min_offset.min(st.cursor.offset);
        }
        let watching = self.observe_at.map(|(s1, s2, _)| (s1, s2));
        if let Some(c) = cycle {
            self.observed.retain(|&(s1, s2, off), _| {
                ((s1, s2) == c && off > min_offset) || (Some((s1, s2)) == watching && (s1, s2) != c)
            });
        }
    }

    /// One pass: start generations where needed, then ship everything new (bounded by the
    /// segment size per PUT), then move the pin and checkpoint if every replica is caught up.
    pub fn sync(&mut self) -> SyncReport {
        self.observe();
        let mut report = SyncReport::default();
        let now = Instant::now();
        for i in 0..self.replicas.len() {
            if !self.replicas[i].resumed && self.replicas[i].ready(now) {
                self.resume_or_retry(i);
                let r = &mut self.replicas[i];
                if let Some(reason) = r.diverged.clone() {
                    if self.opts.on_divergence == crate::OnDivergence::Refuse {
                        let e = Error::Diverged {
                            db: self.db.path().to_path_buf(),
                            replica: r.client.describe(),
                            reason,
                        };
                        error!(error = %e, "replication to this replica stopped");
                        r.halted = Some(e.to_string());
                    }
                }
            }
        }
        let need: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| {
                let r = &self.replicas[i];
                r.state.is_none() && r.resumed && r.ready(now)
            })
            .collect();
        if !need.is_empty() {
            match self.new_generation(&need) {
                Ok(n) => report.puts += n,
                Err(e) => {
                    error!(db = %self.db.path().display(), error = %e, "cannot start a new generation");
                    self.status.record_error(&e);
                    for &i in &need {
                        self.replicas[i].failed(now);
                    }
                }
            }
        }
        for i in 0..self.replicas.len() {
            if self.replicas[i].state.is_none() || !self.replicas[i].ready(Instant::now()) {
                continue;
            }
            // One segment per pass, so the PUT budget paces uploads; more only while a backlog
            // fills whole segments (catching up after an outage or a restart).
            loop {
                match self.ship_one(i) {
                    Ok(Shipped { txns: 0, .. }) => break,
                    Ok(Shipped { txns, full }) => {
                        report.puts += 1;
                        report.txns += txns;
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        let r = &mut self.replicas[i];
                        let d = r.failed(Instant::now());
                        warn!(db = %self.db.path().display(), replica = %r.client.describe(), error = %e, retry_in = ?d, "upload failed");
                        self.status.record_error(&e);
                        if let Error::Storage(lifeboat_storage::Error::Conflict { .. }) = e {
                            error!(replica = %r.client.describe(), error = %e, "replication to this replica stopped");
                            r.halted = Some(e.to_string());
                        }
                        break;
                    }
                }
            }
        }
        self.after_ship();
        self.forget_shipped_observations();
        report.puts += self.scheduled_snapshots();
        self.apply_retention();
        report.pending = self.replicas.iter().any(|r| {
            r.halted.is_none()
                && (r.state.as_ref().is_none_or(|s| !s.at_end) || r.retry_at.is_some())
        });
        let pending: Vec<_> = (0..self.replicas.len()).map(|i| self.pending(i)).collect();
        self.status
            .update(&self.replicas, &pending, self.db.wal().size().unwrap_or(0));
        report
    }

    /// Whether replica `i`'s generation is due a fresh snapshot.
    fn snapshot_due(&self, i: usize) -> bool {
        let r = &self.replicas[i];
        let Some(st) = r.state.as_ref() else {
            return false;
        };
        if r.halted.is_some()
            || r.retry_at.is_some()
            || !st.carry.is_empty()
            || st.since_snapshot == 0
        {
            return false;
        }
        let o = r.overrides;
        st.since_snapshot >= o.snapshot_segments.unwrap_or(self.opts.snapshot_segments)
            || o.snapshot_interval
                .or(self.opts.snapshot_interval)
                .is_some_and(|d| now_ms().saturating_sub(st.snapshot_ms) >= d.as_millis() as u64)
    }

    /// Gives replica `i` settings of its own.
    pub fn set_overrides(&mut self, i: usize, o: crate::replica::ReplicaOverrides) {
        self.replicas[i].overrides = o;
    }

    /// Takes the snapshots that are due, within each replica's current generation: pins the
    /// newest state, streams it to a file, ships the replica exactly up to that state (no
    /// further), checks that the replica's rolling checksum equals the file's, and uploads it as
    /// the snapshot after that transaction. Returns objects written.
    fn scheduled_snapshots(&mut self) -> u32 {
        let due: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.snapshot_due(i))
            .collect();
        // The pin may only move once every replica has shipped what it protects.
        if due.is_empty() || !self.caught_up() {
            return 0;
        }
        let mut puts = 0;
        for i in due {
            // Each snapshot moves the pin; the next may only once every replica covers it.
            if !self.caught_up() {
                break;
            }
            let r = self.scheduled_snapshot(i);
            // Shipping stopped at the pinned state, which need not be the end of the WAL.
            if let Some(st) = self.replicas[i].state.as_mut() {
                st.at_end = false;
            }
            match r {
                Ok(n) => puts += n,
                Err(e) => {
                    let r = &mut self.replicas[i];
                    let d = r.failed(Instant::now());
                    warn!(db = %self.db.path().display(), replica = %r.client.describe(), error = %e, retry_in = ?d, "scheduled snapshot failed");
                    self.status.record_error(&e);
                }
            }
        }
        self.ship_limit = None;
        puts
    }

    fn scheduled_snapshot(&mut self, i: usize) -> Result<u32> {
        let started = Instant::now();
        let pin = self.db.pin_snapshot()?;
        if pin.header.is_none() {
            // The log just restarted from a fully checkpointed state: try again next pass.
            return Ok(0);
        }
        // Ship up to the pinned state and no further.
        self.ship_limit = Some(pin);
        let mut puts = 0;
        loop {
            let st = self.replicas[i]
                .state
                .as_ref()
                .expect("due replicas have state");
            if st.carry.is_empty()
                && st.cursor.salts() == pin.salts()
                && st.cursor.offset == pin.offset
            {
                break;
            }
            let shipped = self.ship_one(i)?;
            if shipped.txns == 0 {
                self.ship_limit = None;
                return Ok(puts);
            }
            puts += 1;
        }
        self.ship_limit = None;
        let st = self.replicas[i]
            .state
            .as_ref()
            .expect("due replicas have state");
        let (generation, txid, expect) = (
            st.generation,
            TxId(st.next_txid.0 - 1),
            st.hashes.checksum(),
        );
        let time_ms = now_ms();
        let (tmp, hashes, trailer) = self.write_snapshot(generation, txid, time_ms, &pin)?;
        if hashes.checksum() != expect {
            return Err(Error::ChecksumMismatch {
                what: format!(
                    "the pinned state of {} (the replica's state after txid {txid})",
                    self.db.path().display()
                ),
                expected: expect,
                found: hashes.checksum(),
                consequence: "snapshot not uploaded",
            });
        }
        let key = Key::Snapshot {
            generation,
            txid,
            time_ms,
        }
        .to_string();
        let client = self.replicas[i].client.clone();
        self.rt
            .block_on(retry(RetryPolicy::default(), "snapshot upload", || {
                client.put_file(&key, tmp.path())
            }))?;
        let st = self.replicas[i]
            .state
            .as_mut()
            .expect("due replicas have state");
        st.since_snapshot = 0;
        st.snapshot_ms = time_ms;
        self.status.snapshotted(i, started.elapsed());
        info!(
            db = %self.db.path().display(),
            replica = %client.describe(),
            generation = %generation,
            txid = %txid,
            pages = trailer.page_count,
            bytes = trailer.total_len,
            elapsed = ?started.elapsed(),
            "scheduled snapshot uploaded"
        );
        Ok(puts + 1)
    }

    /// At most once per [`RETENTION_EVERY`], deletes generations outside the retention window
    /// from every healthy replica (failures are logged; they never stop replication).
    fn apply_retention(&mut self) {
        if self.opts.retention.is_none()
            && self
                .replicas
                .iter()
                .all(|r| r.overrides.retention.is_none())
        {
            return;
        }
        if self
            .last_retention
            .is_some_and(|t| t.elapsed() < RETENTION_EVERY)
        {
            return;
        }
        self.last_retention = Some(Instant::now());
        for r in &self.replicas {
            let Some(retention) = r.overrides.retention.or(self.opts.retention) else {
                continue;
            };
            if r.state.is_none() || r.halted.is_some() || r.retry_at.is_some() {
                continue;
            }
            let res = self.rt.block_on(crate::retention::prune(
                r.client.as_ref(),
                retention,
                now_ms(),
                false,
            ));
            if let Err(e) = res {
                warn!(replica = %r.client.describe(), error = %e, "retention: prune failed; will try again");
                self.status.record_error(&e);
            }
        }
    }

    /// Commits seen in the WAL that replica `i` does not have yet, and when the oldest was seen.
    fn pending(&self, i: usize) -> (u64, Option<u64>) {
        let Some(st) = self.replicas[i].state.as_ref() else {
            return (0, None);
        };
        let carried: u64 = st.carry.iter().map(|b| b.txns.len() as u64).sum();
        let (mut n, mut oldest) = (carried, None::<u64>);
        for (&(s1, s2, end), &t) in &self.observed {
            let unshipped = match st.cursor.salts() {
                Some(c) if c == (s1, s2) => end > st.cursor.offset,
                // A newer cycle than the cursor's (older ones are forgotten once shipped).
                _ => {
                    Some((s1, s2)) != st.cursor.salts()
                        && self.observe_at.is_some_and(|(a, b, _)| (a, b) == (s1, s2))
                }
            };
            if unshipped {
                n += 1;
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        (n, oldest)
    }

    /// Ships the next batch to replica `i`.
    fn ship_one(&mut self, i: usize) -> Result<Shipped> {
        let wal = self.db.wal().clone();
        let client = self.replicas[i].client.clone();
        let st = self.replicas[i].state.as_mut().expect("replica has state");
        let carried = !st.carry.is_empty();
        let batch = if let Some(b) = st.carry.front() {
            // Read under the write lock before the WAL restarted; it starts at the cursor.
            b.clone()
        } else {
            match wal
                .check(&st.cursor)
                .map_err(|e| Error::io("read WAL", e))?
            {
                Continuity::Same => {}
                Continuity::Empty => {
                    st.at_end = true;
                    return Ok(Shipped::NOTHING);
                }
                Continuity::Restarted(h) => {
                    debug!(
                        salt1 = h.salt1,
                        checkpoint_seq = h.checkpoint_seq,
                        "WAL restarted"
                    );
                    st.cursor = st.cursor.restarted(h);
                }
                Continuity::Broken(reason) => {
                    warn!(db = %self.db.path().display(), reason = %reason, "lost WAL continuity; a new generation will start");
                    self.replicas[i].lose_continuity(reason);
                    return Ok(Shipped::NOTHING);
                }
            }
            let until = self
                .ship_limit
                .filter(|p| p.salts().is_some() && p.salts() == st.cursor.salts())
                .map_or(u64::MAX, |p| p.offset);
            wal.read_batch_until(&st.cursor, self.opts.max_segment_bytes, until)
                .map_err(|e| Error::io(format!("read {}", wal.path().display()), e))?
        };
        if batch.txns.is_empty() {
            st.at_end = true;
            return Ok(Shipped::NOTHING);
        }
        let full = carried || batch.bytes >= self.opts.max_segment_bytes;
        let now = now_ms();
        let salts = batch.end.header.map_or((0, 0), |h| (h.salt1, h.salt2));
        let observed = &self.observed;
        let mut last_time = 0u64;
        let times: Vec<u64> = batch
            .txns
            .iter()
            .map(|t| {
                let seen = observed
                    .get(&(salts.0, salts.1, t.end_offset))
                    .copied()
                    .unwrap_or(now);
                last_time = last_time.max(seen);
                last_time
            })
            .collect();
        let ps = self.db.page_size();
        st.hashes.begin();
        let n = batch.txns.len() as u64;
        let end = batch.end;
        let mut builder = SegmentBuilder::new(
            st.generation,
            st.next_txid,
            ps,
            st.hashes.checksum(),
            batch.bytes,
        );
        // Each transaction's frames are dropped once copied: memory holds one copy of the batch.
        for (t, &commit_time) in batch.txns.into_iter().zip(&times) {
            builder.push(
                &mut st.hashes,
                &t.frames,
                t.frame_count,
                t.commit_size,
                commit_time,
            );
        }
        let txid = builder.next_txid();
        let seg = builder
            .finish(end.position(&st.cursor))
            .expect("non-empty batch");
        let last = *seg.commits.last().expect("non-empty batch");
        let time_ms = seg.header.last_time_ms;
        let key = Key::Segment {
            generation: st.generation,
            first: st.next_txid,
            last: last.txid,
            time_ms,
        }
        .to_string();
        let body = Bytes::from(seg.encode());
        // Only the encoded segment stays in memory during the upload.
        drop(seg);
        let size = body.len();
        let result = self
            .rt
            .block_on(put_with_retry(client.as_ref(), &key, body));
        let st = self.replicas[i].state.as_mut().expect("replica has state");
        match result {
            Ok(_) => {
                st.hashes.commit();
                if carried {
                    st.carry.pop_front();
                }
                st.cursor = end;
                st.next_txid = txid;
                st.at_end = false;
                st.since_snapshot += 1;
                self.replicas[i].succeeded();
                self.status.shipped(i, n, size as u64, time_ms, last.txid);
                debug!(key = %key, txns = n, bytes = size, "segment uploaded");
                Ok(Shipped { txns: n, full })
            }
            Err(e) => {
                st.hashes.rollback();
                Err(e)
            }
        }
    }

    /// After shipping: if every replica with a generation is caught up, move the pin forward;
    /// checkpoint when the WAL has grown past the threshold. If the WAL has grown past the bound
    /// because a replica is failing, give up on that replica's continuity so the app's WAL can
    /// be checkpointed.
    fn after_ship(&mut self) {
        self.db.refresh_pin_position();
        if !self.caught_up() {
            let size = self.db.wal().size().unwrap_or(0);
            if size > self.opts.max_wal_bytes {
                // Only a replica that keeps failing is given up on: under heavy writes a healthy
                // replica may be a pass behind while the file (which never shrinks on a restart)
                // is large.
                for r in &mut self.replicas {
                    if r.failures >= 3 && r.state.as_ref().is_some_and(|s| !s.at_end) {
                        error!(
                            db = %self.db.path().display(),
                            replica = %r.client.describe(),
                            wal_bytes = size,
                            bound = self.opts.max_wal_bytes,
                            "replica is too far behind; releasing the WAL so the app can checkpoint — a new generation will start when it is reachable"
                        );
                        r.lose_continuity(
                            "the WAL grew past max-wal-bytes while the replica was unreachable"
                                .into(),
                        );
                    }
                }
            }
            if !self.caught_up() {
                return;
            }
        }
        if let Err(e) = self.db.pin() {
            warn!(error = %e, "cannot move the WAL pin");
            return;
        }
        let frames = self.db.pin_position().map_or(0, |p| {
            p.offset.saturating_sub(WAL_HEADER_SIZE as u64) / (24 + u64::from(self.db.page_size()))
        });
        let healthy = self
            .replicas
            .iter()
            .all(|r| r.halted.is_none() && r.retry_at.is_none());
        let due = self
            .last_restart_attempt
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if frames >= u64::from(self.opts.checkpoint_pages) && healthy && due {
            match self.restart_wal(frames) {
                Ok(true) => self.last_restart_attempt = Some(Instant::now()),
                Ok(false) => {}
                Err(e) => {
                    self.last_restart_attempt = Some(Instant::now());
                    warn!(error = %e, "checkpoint failed");
                }
            }
        }
    }

    /// Whether every replica with a generation has shipped what the current pin protects.
    fn caught_up(&self) -> bool {
        let pin = self.db.pin_position();
        self.replicas.iter().all(|r| {
            r.state
                .as_ref()
                .is_none_or(|s| s.at_end || pin.is_some_and(|p| s.cursor.covers(&p)))
        })
    }

    /// Lets SQLite restart the WAL from the top, which it can only do once every frame is
    /// checkpointed and no reader holds a frame mark — never the case while the app writes
    /// steadily and the pin sits on the newest frames. So, briefly holding the write lock
    /// (nothing can be appended), the agent reads every replica's unshipped tail into memory,
    /// releases its pin, checkpoints everything (PASSIVE: it waits for no one), takes a fresh
    /// pin (mark zero when the checkpoint was complete) and lets go of the lock. The app's next
    /// write then restarts the log. The carried tails are shipped on the next passes.
    /// Returns whether the checkpoint ran to the end of the WAL.
    fn restart_wal(&mut self, frames: u64) -> Result<bool> {
        let wait = if frames >= 4 * u64::from(self.opts.checkpoint_pages) {
            Duration::from_millis(1000)
        } else {
            Duration::from_millis(100)
        };
        // First copy, without any lock, everything up to the pin (which stands where every
        // replica has shipped): the app keeps writing meanwhile, and what is left for the locked
        // step below is only what it appended since — so the app waits on the agent for a short
        // read and a small checkpoint, never for the bulk of the copying and its fsync.
        if let Err(e) = self.db.checkpoint(CheckpointMode::Passive) {
            debug!(error = %e, "checkpoint before the locked step failed");
        }
        if !self.db.try_write_lock(wait)? {
            debug!(frames, "write lock busy; checkpoint deferred");
            return Ok(false);
        }
        let locked = Instant::now();
        let result = self.carry_tails_and_checkpoint();
        // Re-pin while the write lock is still held, so there is never a moment without a reader.
        let pinned = self.db.pin();
        let released = self.db.release_write_lock();
        let held = locked.elapsed();
        let r = result?;
        pinned?;
        released?;
        debug!(?r, frames, ?held, "checkpoint under the agent's write lock");
        let complete = r.is_some_and(|r| !r.busy && r.log_frames == r.checkpointed);
        // The file keeps its largest size across restarts; past the bound, give the space back.
        if complete && self.db.wal().size().unwrap_or(0) > self.opts.truncate_wal_bytes {
            match self.db.truncate_wal(Duration::from_millis(50)) {
                Ok(t) => info!(db = %self.db.path().display(), result = ?t, "WAL truncated"),
                Err(e) => warn!(error = %e, "WAL truncation failed"),
            }
        }
        Ok(complete)
    }

    fn carry_tails_and_checkpoint(&mut self) -> Result<Option<CheckpointResult>> {
        let wal = self.db.wal().clone();
        for r in self.replicas.iter() {
            let Some(st) = r.state.as_ref() else { continue };
            if !st.carry.is_empty()
                || wal
                    .check(&st.cursor)
                    .map_err(|e| Error::io("read WAL", e))?
                    != Continuity::Same
            {
                return Ok(None);
            }
        }
        for r in self.replicas.iter_mut() {
            let Some(st) = r.state.as_mut() else { continue };
            st.carry = read_tail(&wal, st.cursor, self.opts.max_segment_bytes, usize::MAX)?
                .unwrap_or_default();
            st.at_end = st.carry.is_empty();
        }
        let started = Instant::now();
        self.db.unpin()?;
        // The app's own autocheckpoint may be running (it finishes quickly: with the write lock
        // held nothing new can arrive), in which case ours reports busy at once; try again.
        let mut r = self.db.checkpoint_unpinned(CheckpointMode::Passive)?;
        for _ in 0..50 {
            if !(r.busy && r.log_frames < 0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
            r = self.db.checkpoint_unpinned(CheckpointMode::Passive)?;
        }
        self.status.checkpointed(started.elapsed());
        Ok(Some(r))
    }

    /// Streams the pinned state into a compressed snapshot file in the staging folder, fsynced.
    fn write_snapshot(
        &self,
        generation: Generation,
        txid: TxId,
        time_ms: u64,
        cursor: &Cursor,
    ) -> Result<(
        tempfile::NamedTempFile,
        lifeboat_wal::checksum::PageHashes,
        lifeboat_wal::snapshot::SnapshotTrailer,
    )> {
        let header = SnapshotHeader {
            version: FORMAT_VERSION,
            generation,
            txid,
            page_size: self.db.page_size(),
            time_ms,
            wal: cursor.position(cursor),
        };
        let tmp = tempfile::Builder::new()
            .prefix(&staging_prefix(std::process::id()))
            .tempfile_in(&self.opts.staging_dir)
            .map_err(|e| {
                Error::io(
                    format!("create temp file in {}", self.opts.staging_dir.display()),
                    e,
                )
            })?;
        let file = tmp
            .reopen()
            .map_err(|e| Error::io("open snapshot temp file", e))?;
        let mut w = SnapshotWriter::new(std::io::BufWriter::with_capacity(1 << 20, file), header)
            .map_err(|e| Error::io("write snapshot", e))?;
        self.db.for_each_page(|p| w.write_page(p))?;
        let (out, hashes, trailer) = w.finish().map_err(|e| Error::io("write snapshot", e))?;
        out.into_inner()
            .map_err(|e| Error::io("write snapshot", e.into_error()))?
            .sync_all()
            .map_err(|e| Error::io("write snapshot", e))?;
        Ok((tmp, hashes, trailer))
    }

    /// Takes a snapshot and starts a new generation on replicas `which`; returns objects written.
    fn new_generation(&mut self, which: &[usize]) -> Result<u32> {
        let started = Instant::now();
        let cursor = self.db.pin_snapshot()?;
        let generation = Generation::new(now_ms(), rand::random());
        let time_ms = now_ms();
        let (tmp, hashes, trailer) = self.write_snapshot(generation, TxId(0), time_ms, &cursor)?;
        let key = Key::Snapshot {
            generation,
            txid: TxId(0),
            time_ms,
        }
        .to_string();
        let mut puts = 0;
        for &i in which {
            let client = self.replicas[i].client.clone();
            let reason = self.replicas[i].new_generation_reason.clone();
            let res = self
                .rt
                .block_on(retry(RetryPolicy::default(), "snapshot upload", || {
                    client.put_file(&key, tmp.path())
                }));
            match res {
                Ok(_) => {
                    puts += 1;
                    info!(
                        db = %self.db.path().display(),
                        replica = %client.describe(),
                        generation = %generation,
                        pages = trailer.page_count,
                        bytes = trailer.total_len,
                        elapsed = ?started.elapsed(),
                        reason = %reason,
                        "new generation: snapshot uploaded"
                    );
                    let r = &mut self.replicas[i];
                    r.succeeded();
                    r.state = Some(ReplicaState {
                        generation,
                        next_txid: TxId(1),
                        cursor,
                        hashes: hashes.clone(),
                        at_end: false,
                        carry: Default::default(),
                        since_snapshot: 0,
                        snapshot_ms: time_ms,
                    });
                    self.status.snapshotted(i, started.elapsed());
                }
                Err(e) => {
                    let e = Error::from(e);
                    let r = &mut self.replicas[i];
                    let d = r.failed(Instant::now());
                    warn!(replica = %client.describe(), error = %e, retry_in = ?d, "snapshot upload failed");
                    self.status.record_error(&e);
                    if matches!(e, Error::Storage(lifeboat_storage::Error::Conflict { .. })) {
                        r.halted = Some(e.to_string());
                    }
                }
            }
        }
        Ok(puts)
    }

    /// Checksum of the last shipped state of replica `i`, if it has one.
    pub fn checksum(&self, i: usize) -> Option<DbChecksum> {
        self.replicas[i].state.as_ref().map(|s| s.hashes.checksum())
    }
}

/// Staged snapshots are named `lifeboat-snapshot-<pid>-...`, so that a later agent can tell the
/// leftovers of a killed one (a whole database image each) from a live agent's.
fn staging_prefix(pid: u32) -> String {
    format!("lifeboat-snapshot-{pid}-")
}

/// Deletes staged snapshots left in `dir` by agents that are no longer running (killed before
/// they could remove them); returns how many.
pub fn clean_staging(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("lifeboat-snapshot-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && std::fs::remove_file(e.path()).is_ok() {
            info!(file = %e.path().display(), "removed a snapshot staged by an agent that is gone");
            removed += 1;
        }
    }
    removed
}

/// Every whole transaction from `from` to the end of the WAL, batch by batch; `None` once they
/// pass `max_bytes`.
fn read_tail(
    wal: &crate::walfile::WalFile,
    from: Cursor,
    segment_bytes: usize,
    max_bytes: usize,
) -> Result<Option<Carry>> {
    let mut carry = Carry::new();
    let (mut c, mut bytes) = (from, 0usize);
    loop {
        let b = wal
            .read_batch(&c, segment_bytes)
            .map_err(|e| Error::io(format!("read {}", wal.path().display()), e))?;
        if b.txns.is_empty() {
            return Ok(Some(carry));
        }
        bytes += b.bytes;
        if bytes > max_bytes {
            return Ok(None);
        }
        c = b.end;
        carry.push_back(b);
    }
}

async fn put_with_retry(
    client: &dyn ReplicaClient,
    key: &str,
    body: Bytes,
) -> std::result::Result<PutOutcome, Error> {
    let policy = RetryPolicy {
        attempts: 3,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    Ok(retry(policy, "segment upload", || client.put(key, body.clone())).await?)
}
