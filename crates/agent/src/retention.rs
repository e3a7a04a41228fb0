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
//! Before it deletes anything of a generation, a prune writes the generation's `pruning` marker
//! (`keys::pruning_marker`), and it removes the marker last. Restore, the catalog's newest
//! generation and `verify` pass over a marked generation (saying so), so a prune interrupted
//! after any deletion leaves neither a generation that `verify` reports as damaged nor one that
//! restores to a shorter state; the next prune deletes whatever a marked generation still holds.
//! Its snapshots still go first, so even a reader that ignores the marker finds such a generation
//! unrestorable rather than short.
//!
//! The agent prunes each replica in the background (`Schedule`): listing and deleting a large
//! replica takes a while, and shipping must not wait for it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::{keys, ReplicaClient};
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
    /// The `pruning` markers of the generations deleted whole: written before the first
    /// deletion, removed after the last.
    pub markers: Vec<String>,
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
        .filter(|(_, o)| !o.pruning)
        .find(|(g, o)| o.newest_time().unwrap_or(g.unix_ms()) >= window_start_ms)
        .map_or(newest_restorable, |(g, _)| (*g).min(newest_restorable));
    // Those older than the window, and any an interrupted prune already began to delete (its
    // marker is present; no restore reads it any more). Never the newest restorable one, which
    // is unmarked by definition.
    let doomed = cat
        .generations
        .iter()
        .filter(|(g, o)| **g < keep_from || (o.pruning && **g != newest_restorable));
    for (g, o) in doomed {
        p.generations.push(g.to_string());
        p.markers.push(keys::pruning_marker(*g));
        let snapshots = o.snapshots.iter().map(|x| (&x.key, x.size));
        for (key, size) in snapshots.chain(o.segments.iter().map(|x| (&x.key, x.size))) {
            p.objects.push(key.clone());
            p.bytes += size;
        }
    }
    // Within a kept generation, a snapshot taken at or before the window's start makes
    // everything before it unnecessary: every commit it covers is older than the window.
    for o in cat
        .generations
        .range(keep_from..)
        .map(|(_, o)| o)
        .filter(|o| !o.pruning)
    {
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
    prune_with_progress(client, retention, now_ms, dry_run, None).await
}

/// [`prune`], reporting `(objects deleted, objects to delete)` to `progress`.
pub async fn prune_with_progress(
    client: &dyn ReplicaClient,
    retention: Duration,
    now_ms: u64,
    dry_run: bool,
    progress: Option<crate::restore::Progress>,
) -> Result<PrunePlan> {
    let cat = Catalog::load(client).await?;
    let mut p = plan(&cat, retention, now_ms);
    // Blob ages are judged by the clock (never a later time than now: see lifeboat_dirs::prune).
    let folders_now = now_ms.min(crate::clock::now_ms());
    if let Some(keep) = oldest_kept(&cat, &p) {
        // Folders after the database objects, so their plan sees the same restore points.
        // A folder history that cannot be read (a damaged manifest, a broken chain) is kept
        // whole; it must not stop the database's own retention, or the bucket grows forever.
        match lifeboat_dirs::prune::prune(client, keep, folders_now, true).await {
            Ok(folders) if !folders.is_empty() => p.folders = Some(folders),
            Ok(_) => {}
            Err(e) => warn!(
                replica = %client.describe(),
                error = %e,
                "retention: the backed-up folders' history cannot be read, so none of it is \
                 deleted this time (the database's history is pruned as usual); run `lifeboat \
                 verify` on this replica to find the damaged object"
            ),
        }
    }
    if dry_run {
        return Ok(p);
    }
    for key in &p.markers {
        match client
            .put(key, Bytes::from_static(keys::PRUNING_MARKER_BODY))
            .await
        {
            // Other bytes under the marker's key: still a marker (an older prune's).
            Ok(_) | Err(lifeboat_storage::Error::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let total = p.objects.len() as u64;
    for (i, key) in p.objects.iter().enumerate() {
        if let Some(pr) = &progress {
            (pr.0)(i as u64, total);
        }
        client.delete(key).await?;
        info!(replica = %client.describe(), key = %key, "retention: deleted");
    }
    for key in &p.markers {
        client.delete(key).await?;
    }
    if p.folders.is_some() {
        let keep = oldest_kept(&cat, &p).expect("planned above");
        p.folders = Some(lifeboat_dirs::prune::prune(client, keep, folders_now, false).await?);
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
    if let Some(pr) = &progress {
        (pr.0)(total, total);
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
        let oldest = generation(&mut cat, 0, &[1], true);
        let newest = generation(&mut cat, 2, &[3], true);
        // A newer generation whose snapshot is not uploaded yet is not restorable.
        generation(&mut cat, 4, &[], false);
        let p = plan(&cat, Duration::from_millis(H), 100 * H);
        // Exactly the oldest goes: the newest restorable one and the one still uploading stay.
        assert_eq!(p.generations, vec![oldest.to_string()]);
        let prefix = format!("generations/{oldest}/");
        assert!(
            p.objects.len() == 2 && p.objects.iter().all(|k| k.starts_with(&prefix)),
            "{:?}",
            p.objects
        );
        assert!(!p.objects.iter().any(|k| k.contains(&newest.to_string())));
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
    fn a_generation_an_interrupted_prune_marked_goes_whatever_the_window() {
        let mut cat = Catalog::default();
        // Its snapshot is already gone; one segment is left.
        let marked = generation(&mut cat, 0, &[1], false);
        cat.generations.get_mut(&marked).unwrap().pruning = true;
        let kept = generation(&mut cat, 2, &[3], true);
        // A window reaching back before both: only the marked one goes, marker and all.
        let p = plan(&cat, Duration::from_millis(100 * H), 5 * H);
        assert_eq!(p.generations, vec![marked.to_string()]);
        assert_eq!(p.markers, vec![keys::pruning_marker(marked)]);
        assert_eq!(p.objects.len(), 1, "{:?}", p.objects);
        assert!(p.objects[0].starts_with(&format!("generations/{marked}/segments/")));
        assert!(!p.objects.iter().any(|k| k.contains(&kept.to_string())));
        // Generations deleted whole are marked first.
        let q = plan(&cat, Duration::from_millis(H), 100 * H);
        assert_eq!(q.generations, vec![marked.to_string()]);
        assert_eq!(q.markers.len(), 1);
    }

    #[test]
    fn an_empty_replica_prunes_nothing() {
        assert!(plan(&Catalog::default(), Duration::ZERO, 5)
            .objects
            .is_empty());
    }
}
