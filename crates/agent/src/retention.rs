//! Retention: deleting history older than a window without ever cutting a chain.
//!
//! A generation is deleted whole only when every restore point in it (its snapshot and each
//! commit after it) is older than the window, and a newer generation that can be restored exists;
//! the newest restorable generation and everything newer (a generation whose snapshot is still
//! uploading has none yet) are always kept. Within a kept generation, the newest snapshot taken
//! at or before the window's start becomes its base: older snapshots and the segments wholly
//! before it go (every commit they hold is older than the window). Every restore point inside
//! the window therefore restores and verifies exactly as before, and what is kept beyond the
//! window is at most one snapshot interval's worth of history.
//!
//! A generation's snapshot goes first, so an interrupted prune never leaves a generation that
//! restores to a silently shorter state: without its snapshot it is not restorable at all, and the
//! next prune removes the rest.
//!
//! The agent prunes each replica in the background (`Schedule`): listing and deleting a large
//! replica takes a while, and shipping must not wait for it.

use std::time::{Duration, Instant};

use lifeboat_storage::ReplicaClient;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::context::Context;
use crate::replica::Replica;
use crate::Result;

/// How often the agent applies retention.
const EVERY: Duration = Duration::from_secs(3600);

/// Applies retention to a database's replicas: at most once per [`EVERY`], to each healthy
/// replica in a generation that has a retention window, as a task of its own on the runtime, so
/// the replicator goes on shipping meanwhile. Never two prunes of one replica at once: a replica
/// whose last prune is still running is skipped. Failures are logged and counted; they never stop
/// replication.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    last: Option<Instant>,
}

impl Schedule {
    /// Starts the prunes that are due.
    pub fn tick(&mut self, replicas: &mut [Replica], ctx: &Context) {
        if ctx.opts.retention.is_none() && replicas.iter().all(|r| r.overrides.retention.is_none())
        {
            return;
        }
        if self.last.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        for r in replicas.iter_mut() {
            let Some(retention) = r.overrides.retention.or(ctx.opts.retention) else {
                continue;
            };
            if r.state().is_none() || !r.healthy() {
                continue;
            }
            if r.pruning.as_ref().is_some_and(|p| !p.is_finished()) {
                debug!(replica = %r.client.describe(), "retention: the last prune is still running");
                continue;
            }
            let (client, status) = (r.client.clone(), ctx.status.clone());
            r.pruning = Some(ctx.rt.spawn(async move {
                if let Err(e) = prune(client.as_ref(), retention, now_ms(), false).await {
                    warn!(replica = %client.describe(), error = %e.chain(), "retention: prune failed; will try again");
                    status.record_error(&e);
                }
            }));
        }
    }
}

/// What a prune removes (or would remove).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrunePlan {
    /// Generations deleted whole.
    pub generations: Vec<String>,
    /// Restore points older than this (Unix ms) may go.
    pub window_start_ms: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Every object it deletes (those generations' and the older parts of kept ones), in
    /// deletion order.
    pub objects: Vec<String>,
    /// What goes of the folders backed up with the database (`--dir`): what no kept restore
    /// point needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folders: Option<lifeboat_dirs::prune::FolderPrune>,
}

/// Plans a prune of `cat` for `retention` as of `now_ms`.
pub fn plan(cat: &Catalog, retention: Duration, now_ms: u64) -> PrunePlan {
    let window_start_ms = now_ms.saturating_sub(retention.as_millis() as u64);
    let mut p = PrunePlan {
        window_start_ms,
        ..Default::default()
    };
    let Some((newest_restorable, _)) = cat.latest() else {
        return p;
    };
    // The oldest generation that must stay: the first with a restore point inside the window,
    // or the newest restorable one, whichever comes first.
    let keep_from = cat
        .generations
        .iter()
        .find(|(g, o)| o.newest_time().unwrap_or(g.unix_ms()) >= window_start_ms)
        .map_or(newest_restorable, |(g, _)| (*g).min(newest_restorable));
    for (g, o) in cat.generations.range(..keep_from) {
        p.generations.push(g.to_string());
        let snapshots = o.snapshots.iter().map(|x| (&x.key, x.size));
        for (key, size) in snapshots.chain(o.segments.iter().map(|x| (&x.key, x.size))) {
            p.objects.push(key.clone());
            p.bytes += size;
        }
    }
    // Within a kept generation, a snapshot taken at or before the window's start makes
    // everything before it unnecessary: every commit it covers is older than the window.
    for o in cat.generations.range(keep_from..).map(|(_, o)| o) {
        let Some(base) = o
            .snapshots
            .iter()
            .rev()
            .find(|x| x.time_ms <= window_start_ms)
        else {
            continue;
        };
        let older_snapshots = o
            .snapshots
            .iter()
            .take_while(|x| x.key != base.key)
            .map(|x| (&x.key, x.size));
        let covered_segments = o
            .segments
            .iter()
            .filter(|x| x.last <= base.txid)
            .map(|x| (&x.key, x.size));
        for (key, size) in older_snapshots.chain(covered_segments) {
            p.objects.push(key.clone());
            p.bytes += size;
        }
    }
    p
}

/// The oldest database restore point a prune keeps: the first snapshot it keeps.
fn oldest_kept(
    cat: &Catalog,
    p: &PrunePlan,
) -> Option<(lifeboat_wal::Generation, lifeboat_wal::TxId)> {
    let gone: std::collections::HashSet<&str> = p.objects.iter().map(String::as_str).collect();
    cat.generations.iter().find_map(|(g, o)| {
        o.snapshots
            .iter()
            .find(|s| !gone.contains(s.key.as_str()))
            .map(|s| (*g, s.txid))
    })
}

/// Deletes what [`plan`] chooses (nothing when `dry_run`); returns the plan.
pub async fn prune(
    client: &dyn ReplicaClient,
    retention: Duration,
    now_ms: u64,
    dry_run: bool,
) -> Result<PrunePlan> {
    let cat = Catalog::load(client).await?;
    let mut p = plan(&cat, retention, now_ms);
    if let Some(keep) = oldest_kept(&cat, &p) {
        // Folders after the database objects, so their plan sees the same restore points.
        let folders = lifeboat_dirs::prune::prune(client, keep, true).await?;
        if !folders.manifests.is_empty() {
            p.folders = Some(folders);
        }
    }
    if dry_run {
        return Ok(p);
    }
    for key in &p.objects {
        client.delete(key).await?;
        info!(replica = %client.describe(), key = %key, "retention: deleted");
    }
    if p.folders.is_some() {
        let keep = oldest_kept(&cat, &p).expect("planned above");
        p.folders = Some(lifeboat_dirs::prune::prune(client, keep, false).await?);
    }
    if !p.generations.is_empty() {
        info!(
            replica = %client.describe(),
            generations = p.generations.len(),
            objects = p.objects.len(),
            bytes = p.bytes,
            "retention: pruned generations older than the window"
        );
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Segment, Snapshot};
    use lifeboat_storage::keys::Key;
    use lifeboat_wal::{Generation, TxId};

    const H: u64 = 3_600_000;

    /// A generation created at `t` hours with a snapshot then segments at the given hours.
    fn generation(cat: &mut Catalog, t: u64, segments: &[u64], snapshot: bool) -> Generation {
        let g = Generation::new(t * H, 7);
        let o = cat.generations.entry(g).or_default();
        if snapshot {
            let key = Key::Snapshot {
                generation: g,
                txid: TxId(0),
                time_ms: t * H,
            };
            o.snapshots.push(Snapshot {
                key: key.to_string(),
                txid: TxId(0),
                time_ms: t * H,
                size: 100,
            });
        }
        for (i, &h) in segments.iter().enumerate() {
            let key = Key::Segment {
                generation: g,
                first: TxId(i as u64 + 1),
                last: TxId(i as u64 + 1),
                time_ms: h * H,
            };
            o.segments.push(Segment {
                key: key.to_string(),
                first: TxId(i as u64 + 1),
                last: TxId(i as u64 + 1),
                time_ms: h * H,
                size: 10,
            });
        }
        g
    }

    #[test]
    fn keeps_every_generation_with_a_point_in_the_window_and_the_one_straddling_it() {
        let mut cat = Catalog::default();
        let old = generation(&mut cat, 0, &[1, 2], true);
        let straddling = generation(&mut cat, 3, &[4, 9], true);
        let recent = generation(&mut cat, 10, &[11], true);
        // Window: the last 8 hours at hour 12, so from hour 4.
        let p = plan(&cat, Duration::from_millis(8 * H), 12 * H);
        assert_eq!(p.generations, vec![old.to_string()]);
        assert_eq!(p.objects.len(), 3);
        assert!(
            p.objects[0].contains("snapshots"),
            "snapshot first: {:?}",
            p.objects
        );
        let _ = (straddling, recent);
    }

    #[test]
    fn never_deletes_the_newest_restorable_generation_however_old() {
        let mut cat = Catalog::default();
        generation(&mut cat, 0, &[1], true);
        let newest = generation(&mut cat, 2, &[3], true);
        // A newer generation whose snapshot is not uploaded yet is not restorable.
        generation(&mut cat, 4, &[], false);
        let p = plan(&cat, Duration::from_millis(H), 100 * H);
        assert_eq!(p.generations.len(), 1);
        assert!(!p.generations.contains(&newest.to_string()));
    }

    #[test]
    fn trims_a_kept_generation_before_its_newest_snapshot_at_the_window_start() {
        let mut cat = Catalog::default();
        let g = generation(&mut cat, 0, &[1, 2, 3, 4], true);
        // A second snapshot, after txid 2, taken at hour 2.
        let key = Key::Snapshot {
            generation: g,
            txid: TxId(2),
            time_ms: 2 * H,
        };
        let o = cat.generations.get_mut(&g).unwrap();
        o.snapshots.push(Snapshot {
            key: key.to_string(),
            txid: TxId(2),
            time_ms: 2 * H,
            size: 100,
        });
        // Window from hour 3: the hour-2 snapshot is the base; the first snapshot and the
        // segments of txids 1 and 2 go, those of 3 and 4 stay.
        let p = plan(&cat, Duration::from_millis(2 * H), 5 * H);
        assert!(p.generations.is_empty());
        assert_eq!(p.objects.len(), 3, "{:?}", p.objects);
        assert!(p.objects[0].contains("snapshots/0000000000000000-"));
        // A window reaching before the second snapshot keeps everything.
        assert!(plan(&cat, Duration::from_millis(4 * H), 5 * H)
            .objects
            .is_empty());
    }

    #[test]
    fn an_empty_replica_prunes_nothing() {
        assert!(plan(&Catalog::default(), Duration::ZERO, 5)
            .objects
            .is_empty());
    }
}
