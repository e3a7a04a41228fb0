//! The sync engine for one database: a coordinator over the modules that do the work.
//!
//! A pass ([`Replicator::sync`]) notes new commit times (`commit_times`), reads the
//! state of replicas not read yet (`resume`), starts new generations where needed
//! (`snapshots`), ships to each replica (`shipping`), moves the pin and
//! checkpoints (`checkpoints`), takes scheduled snapshots, starts retention in the
//! background ([`crate::retention`]) and reports progress ([`crate::status`]).
//!
//! A [`Replicator`] is synchronous and owns its [`Database`]; [`crate::agent`] runs each one on
//! a thread of its own and wakes it on WAL changes. Uploads go through a Tokio runtime handle.

use std::sync::Arc;
use std::time::Instant;

use lifeboat_storage::ReplicaClient;
use lifeboat_wal::DbChecksum;
use tokio::runtime::Handle;

use crate::checkpoints::Checkpoints;
use crate::commit_times::CommitTimes;
use crate::context::Context;
use crate::db::Database;
use crate::replica::shipping::Ship;
use crate::replica::{Phase, Replica, ReplicaOverrides};
use crate::status::Status;
use crate::{resume, retention, snapshots, Error, OnDivergence, Options, Result};

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Objects written (segments and snapshots).
    pub puts: u32,
    /// Of `puts`, segments cut at the size bound, which the PUT budget does not pace: a full
    /// segment cannot grow by waiting, so holding it back would only delay the replica.
    pub at_bound: u32,
    /// Transactions shipped (summed over replicas).
    pub txns: u64,
    /// Whether some replica still has work (behind, or waiting to retry).
    pub pending: bool,
}

/// Replicates one database to its replicas.
pub struct Replicator {
    db: Database,
    replicas: Vec<Replica>,
    ctx: Context,
    times: CommitTimes,
    checkpoints: Checkpoints,
    retention: retention::Schedule,
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
        // Named before anything changes: a folder, an empty file, a rollback-journal database.
        crate::dbfile::check(path, opts.switch_to_wal)?;
        let db = Database::open(path)?;
        let dirs = match opts.dirs.is_empty() {
            true => None,
            false => Some(lifeboat_dirs::DirShipper::open(
                &opts.dirs,
                clients.clone(),
                lifeboat_dirs::DirOptions {
                    staging_dir: opts.staging_dir.clone(),
                    ..Default::default()
                },
                rt.clone(),
            )?),
        };
        if let Some(d) = &dirs {
            status.watch_folders(d.board());
        }
        Ok(Replicator {
            db,
            replicas: clients
                .into_iter()
                .enumerate()
                .map(|(i, c)| Replica::new(c, i))
                .collect(),
            ctx: Context {
                path: path.to_path_buf(),
                opts,
                rt,
                status,
                stop: None,
                dirs,
            },
            times: CommitTimes::default(),
            checkpoints: Checkpoints::default(),
            retention: retention::Schedule::default(),
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

    /// Gives replica `i` settings of its own.
    pub fn set_overrides(&mut self, i: usize, o: ReplicaOverrides) {
        if let Some(r) = self.replicas.get_mut(i) {
            r.overrides = o;
        }
    }

    /// Closes the database's connections that do not hold the pin (for a database gone idle).
    pub fn release_idle(&mut self) {
        self.db.release_idle();
    }

    /// Checksum of the last shipped state of replica `i`, if it has one.
    pub fn checksum(&self, i: usize) -> Option<DbChecksum> {
        self.replicas.get(i).and_then(Replica::checksum)
    }

    /// For each replica, resumes its newest generation if the local database provably is its
    /// last state, or leaves it to start a new generation on the next pass. A replica that
    /// cannot be read is tried again on a later pass, unless the reason is a set-up mistake
    /// (credentials, bucket, permissions, region): that is returned, for the caller to stop on.
    pub fn resume(&mut self) -> Result<()> {
        for r in &mut self.replicas {
            match resume::resume(&mut self.db, r.client.as_ref(), &self.ctx) {
                Ok(phase) => {
                    r.succeeded();
                    r.phase = phase;
                    crate::upload::clean_up_interrupted(&r.client, &self.ctx);
                }
                Err(e) if e.is_setup() => {
                    // The caller reports it, once; the SDK's cause is for debugging.
                    tracing::debug!(error = %e.chain(), "set-up error, in full");
                    return Err(Error::Setup {
                        db: self.ctx.path.clone(),
                        message: e.to_string(),
                    });
                }
                Err(e) => {
                    r.record_failure(
                        &e,
                        "cannot read replica state; will try again before starting any generation",
                        &self.ctx,
                    );
                }
            }
        }
        Ok(())
    }

    /// Notes the time of every commit that appeared in the WAL since the last look.
    pub fn observe(&mut self) {
        self.times.observe(self.db.wal());
    }

    /// Once `stop` fires (at the instant `at` records), uploads give up when the shutdown
    /// timeout has passed since (see `upload`).
    pub fn watch_stop(
        &mut self,
        stop: tokio_util::sync::CancellationToken,
        at: Arc<std::sync::OnceLock<Instant>>,
    ) {
        self.ctx.stop = Some(crate::context::Stop { token: stop, at });
    }

    /// Lets every failing replica be tried again at once (on a stop: the final sync does not
    /// wait out a backoff).
    pub fn retry_now(&mut self) {
        for r in &mut self.replicas {
            r.retry_at = None;
        }
    }

    /// Between passes (on a wake-up while a pass waits for the PUT budget or a failing
    /// replica's backoff): keeps the WAL within `max-wal-bytes` (see `checkpoints`) and the
    /// status current, without any request to a replica.
    pub fn between_passes(&mut self) {
        self.checkpoints
            .between_passes(&mut self.db, &mut self.replicas, &self.ctx);
        self.report_status();
    }

    /// One pass: start generations where needed, then ship everything new (bounded by the
    /// segment size per PUT), then move the pin and checkpoint if every replica is caught up.
    pub fn sync(&mut self) -> SyncReport {
        self.observe();
        // Before any request: a pass that hangs on a replica must not leave the status saying
        // the commits seen since are shipped.
        self.report_status();
        let ctx = &self.ctx;
        let mut report = SyncReport::default();
        let now = Instant::now();
        for r in &mut self.replicas {
            if matches!(r.phase, Phase::Unknown) && r.ready(now) {
                resume_one(&mut self.db, r, ctx);
                if let Some(reason) = r.diverged() {
                    if ctx.opts.on_divergence == OnDivergence::Refuse {
                        let e = Error::Diverged {
                            db: ctx.path.clone(),
                            replica: r.client.describe(),
                            reason: reason.to_string(),
                        };
                        r.halt(e.to_string());
                    }
                }
            }
        }
        report.puts += snapshots::new_generations(&mut self.db, &mut self.replicas, ctx, now);
        let ship = Ship {
            ctx,
            wal: self.db.wal(),
            page_size: self.db.page_size(),
            db_file: self.db.file(),
            times: &self.times,
            limit: None,
        };
        for r in &mut self.replicas {
            if r.state().is_none() || !r.ready(Instant::now()) {
                continue;
            }
            let (shipped, failed) = r.ship(&ship);
            report.puts += shipped.puts;
            report.at_bound += shipped.at_bound;
            report.txns += shipped.txns;
            if let Some(e) = failed {
                r.record_failure(&e, "upload failed", ctx);
            }
        }
        // Before the pin moves on: a snapshot may be taken once every replica covers the pin,
        // and after `after_ship` the pin is at the newest commit, which a busy writer has
        // already passed again (the replicas would never cover it).
        let t_ship = now.elapsed();
        report.puts += snapshots::scheduled(&mut self.db, &mut self.replicas, ctx, &self.times);
        let t_snap = now.elapsed();
        self.checkpoints
            .after_ship(&mut self.db, &mut self.replicas, ctx);
        // Where a pass's time goes (shipping, a scheduled snapshot, the pin and checkpoint).
        tracing::debug!(
            ship = ?t_ship,
            snapshot = ?t_snap.saturating_sub(t_ship),
            total = ?now.elapsed(),
            puts = report.puts,
            "pass done"
        );
        self.times.forget_shipped(
            self.replicas
                .iter()
                .filter_map(|r| r.state().map(|s| &s.cursor)),
        );
        self.retention.tick(&mut self.replicas, ctx);
        report.pending = self.replicas.iter().any(|r| {
            r.halted().is_none() && (r.state().is_none_or(|s| !s.at_end) || r.retry_at.is_some())
        });
        self.report_status();
        report
    }

    fn report_status(&self) {
        let (replicas, times, ctx) = (&self.replicas, &self.times, &self.ctx);
        ctx.status.update(
            self.db.wal().size().unwrap_or(0),
            replicas.len(),
            |i, st| {
                let r = &replicas[i];
                let pending = r.state().map_or((0, None), |s| {
                    let carried = s.carry.iter().map(|b| b.txns.len() as u64).sum();
                    times.pending(&s.cursor, carried)
                });
                r.report(st, pending, ctx);
            },
        );
    }
}

/// Reads a replica's state (see [`resume`]); a failure is retried on a later pass.
fn resume_one(db: &mut Database, r: &mut Replica, ctx: &Context) {
    match resume::resume(db, r.client.as_ref(), ctx) {
        Ok(phase) => {
            r.succeeded();
            r.phase = phase;
            crate::upload::clean_up_interrupted(&r.client, ctx);
        }
        Err(e) => {
            r.record_failure(
                &e,
                "cannot read replica state; will try again before starting any generation",
                ctx,
            );
        }
    }
}
