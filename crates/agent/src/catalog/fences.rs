//! Fencing: how readers ignore what a lease holder wrote after a newer holder took over.
//!
//! An agent that holds the writer lease (see [`crate::lease`]) starts a new generation for its
//! epoch and, before the generation's first snapshot, writes the generation's *fence*
//! ([`Fence`]): its epoch, and the state it took over from (the newest generation and
//! transaction it found, or restored, when it took the lease). So every object an agent writes
//! carries its epoch: the generation it belongs to has one fence, of one epoch.
//!
//! An agent that took the lease from a holder that released it (and so writes nothing more) may
//! instead resume the newest generation, when the local database provably is its last state:
//! the generation keeps its fence, and the rules below still cut it where a later takeover
//! happens.
//!
//! A holder paused past its lease (SIGSTOP, a long GC, a frozen VM) cannot know it lost the
//! lease until it wakes, and may upload before it finds out. Readers therefore apply, for every
//! fence of epoch `E` taking over from `(G, N)`:
//!
//! - generation `G`, if its epoch is below `E`, ends at transaction `N`: its later segments and
//!   snapshots are the old holder's late writes;
//! - a generation of an epoch below `E`, other than `G`, that comes after `G` (ordered by
//!   epoch, then creation) or was created after the fence's own generation was started by an
//!   old holder (or an instance without a lease) after the takeover; a fence with no parent (the
//!   replica was empty) makes every generation of a lower epoch stale. A new holder's generation
//!   id is always later than its parent's, whatever its clock says.
//!
//! The objects so ignored are listed in [`Catalog::stale`], and logged loudly, by every reader
//! that loads a catalog (restore, point-in-time restore, verify, drill, resume, retention), so
//! an older epoch never extends the history. Generations written without a lease have epoch 0.

use std::collections::BTreeMap;

use lifeboat_storage::keys::Fence;
use lifeboat_wal::{Generation, TxId};

use crate::catalog::{Catalog, GenerationObjects};

/// An object a reader ignores, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StaleObject {
    /// Its key.
    pub key: String,
    /// Why it is ignored.
    pub reason: String,
}

/// The lease epoch a generation was written under (0: no lease).
pub fn epoch(o: &GenerationObjects) -> u64 {
    o.fence.map_or(0, |f| f.epoch)
}

/// Moves what older epochs wrote after a takeover out of the catalog into `cat.stale`.
pub(crate) fn apply(cat: &mut Catalog) {
    let epochs: BTreeMap<Generation, u64> = cat
        .generations
        .iter()
        .map(|(g, o)| (*g, epoch(o)))
        .collect();
    let order = |g: Generation| (epochs.get(&g).copied().unwrap_or(0), g);
    let fences: Vec<Fence> = cat.generations.values().filter_map(|o| o.fence).collect();
    let mut stale_gens: BTreeMap<Generation, String> = BTreeMap::new();
    let mut cuts: BTreeMap<Generation, (TxId, Fence)> = BTreeMap::new();
    for f in &fences {
        for (&g, &e) in &epochs {
            if e >= f.epoch || stale_gens.contains_key(&g) {
                continue;
            }
            let after_takeover = match f.parent {
                None => true,
                Some((pg, _)) => g != pg && (order(g) > order(pg) || g > f.generation),
            };
            if after_takeover {
                stale_gens.insert(
                    g,
                    format!(
                        "generation {g} (lease epoch {e}) was started after epoch {} took over \
                         (fence {f})",
                        f.epoch
                    ),
                );
            }
        }
        if let Some((pg, n)) = f.parent {
            if order(pg).0 < f.epoch && cuts.get(&pg).is_none_or(|(m, _)| n < *m) {
                cuts.insert(pg, (n, *f));
            }
        }
    }
    for (g, reason) in stale_gens {
        let Some(o) = cat.generations.remove(&g) else {
            continue;
        };
        let keys = o
            .fence
            .map(|f| f.to_string())
            .into_iter()
            .chain(o.snapshots.into_iter().map(|s| s.key))
            .chain(o.segments.into_iter().map(|s| s.key));
        cat.stale.extend(keys.map(|key| StaleObject {
            key,
            reason: reason.clone(),
        }));
    }
    for (g, (n, f)) in cuts {
        let Some(o) = cat.generations.get_mut(&g) else {
            continue;
        };
        let reason = format!(
            "written to generation {g} after transaction {n}, where lease epoch {} took over \
             (fence {f})",
            f.epoch
        );
        let (mut keep, late): (Vec<_>, Vec<_>) = std::mem::take(&mut o.segments)
            .into_iter()
            .partition(|s| s.last <= n || (s.is_pack() && s.first <= n));
        // A pack that the old holder made of segments on both sides of the takeover holds
        // transactions of the history up to `n` (whose segments it deleted): it is kept, cut
        // at `n` (a reader takes its parts up to there, and refuses it if none ends there).
        for s in keep.iter_mut().filter(|s| s.last > n) {
            s.last = n;
        }
        o.segments = keep;
        let (keep_s, late_s): (Vec<_>, Vec<_>) = std::mem::take(&mut o.snapshots)
            .into_iter()
            .partition(|s| s.txid <= n);
        o.snapshots = keep_s;
        cat.stale.extend(
            late.into_iter()
                .map(|s| s.key)
                .chain(late_s.into_iter().map(|s| s.key))
                .map(|key| StaleObject {
                    key,
                    reason: reason.clone(),
                }),
        );
    }
    cat.stale.sort_by(|a, b| a.key.cmp(&b.key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Segment, Snapshot};

    /// A fence: its epoch, and the generation and txid it took over from.
    type Fenced = Option<(u64, Option<(u64, u64)>)>;

    /// A catalog of generations `(id, fence, last txid)`, each a snapshot at txid 0 and one
    /// segment per transaction, with the fences applied.
    fn applied(gens: &[(u64, Fenced, u64)]) -> Catalog {
        let mut cat = Catalog::default();
        for &(g, fence, last) in gens {
            gen(&mut cat, g, fence, last);
        }
        apply(&mut cat);
        cat
    }

    fn gen(cat: &mut Catalog, g: u64, fence: Fenced, last: u64) {
        let generation = Generation(g);
        let o = cat.generations.entry(generation).or_default();
        o.fence = fence.map(|(epoch, parent)| Fence {
            generation,
            epoch,
            parent: parent.map(|(pg, t)| (Generation(pg), TxId(t))),
        });
        o.snapshots.push(Snapshot {
            key: format!("g{g}/snap0"),
            txid: TxId(0),
            time_ms: g,
            size: 1,
        });
        for t in 1..=last {
            o.segments.push(Segment {
                key: format!("g{g}/seg{t}"),
                first: TxId(t),
                last: TxId(t),
                time_ms: g + t,
                size: 1,
            });
        }
    }

    #[test]
    fn a_pack_across_the_takeover_is_kept_up_to_it() {
        let mut cat = Catalog::default();
        gen(&mut cat, 100, Some((1, None)), 0);
        gen(&mut cat, 200, Some((2, Some((100, 5)))), 1);
        let o = cat.generations.get_mut(&Generation(100)).unwrap();
        let pack = |first, last| Segment {
            key: format!("g100/{first}-{last}.lbpack"),
            first: TxId(first),
            last: TxId(last),
            time_ms: last,
            size: 1,
        };
        o.segments = vec![pack(1, 3), pack(4, 7), pack(8, 9)];
        apply(&mut cat);
        let o = &cat.generations[&Generation(100)];
        let kept: Vec<(u64, u64)> = o.segments.iter().map(|s| (s.first.0, s.last.0)).collect();
        assert_eq!(kept, [(1, 3), (4, 5)]);
        assert_eq!(
            cat.stale.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(),
            ["g100/8-9.lbpack"]
        );
    }

    #[test]
    fn a_takeover_cuts_the_old_generation_where_it_took_over() {
        let cat = applied(&[
            (100, Some((1, None)), 7),
            (200, Some((2, Some((100, 5)))), 3),
        ]);
        let old = &cat.generations[&Generation(100)];
        assert_eq!(old.segments.last().unwrap().last, TxId(5));
        let stale: Vec<_> = cat.stale.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(stale, ["g100/seg6", "g100/seg7"]);
        assert!(cat.stale[0].reason.contains("epoch 2 took over"));
        assert_eq!(cat.latest().unwrap().0, Generation(200));
    }

    #[test]
    fn an_old_epoch_cannot_start_a_newer_generation() {
        let cat = applied(&[
            (100, Some((1, None)), 5),
            (200, Some((2, Some((100, 5)))), 3),
            // The paused epoch-1 holder wakes, finds its WAL moved on and starts a generation,
            // with a later creation time than the new holder's.
            (300, Some((1, None)), 2),
            // An agent without a lease does the same.
            (400, None, 1),
        ]);
        assert_eq!(
            cat.generations.keys().copied().collect::<Vec<_>>(),
            [Generation(100), Generation(200)]
        );
        assert_eq!(cat.latest().unwrap().0, Generation(200));
        // Generation 300: its fence, snapshot and 2 segments; 400: its snapshot and segment.
        assert_eq!(cat.stale.len(), 4 + 2);
    }

    #[test]
    fn an_instance_without_a_lease_cannot_add_history_after_a_takeover() {
        let cat = applied(&[
            (100, Some((1, None)), 5),
            (200, Some((2, Some((100, 5)))), 3),
            // `replicate` without --lease on the old disk, after the takeover: epoch 0, which
            // sorts below every leased generation but was created after the new holder's.
            (300, None, 2),
        ]);
        assert_eq!(
            cat.generations.keys().copied().collect::<Vec<_>>(),
            [Generation(100), Generation(200)]
        );
        assert!(cat.stale.iter().all(|s| s.key.starts_with("g300/")));
        assert!(
            cat.stale[0].reason.contains("lease epoch 0"),
            "{:?}",
            cat.stale
        );
    }

    #[test]
    fn history_before_the_takeover_and_without_leases_stays() {
        let cat = applied(&[
            (50, None, 4),
            (100, None, 9),
            (200, Some((1, Some((100, 9)))), 3),
            // The same epoch starting another generation (its WAL broke) is its own history.
            (300, Some((1, Some((100, 9)))), 2),
        ]);
        assert!(cat.stale.is_empty(), "{:?}", cat.stale);
        assert_eq!(cat.generations.len(), 4);
        assert_eq!(cat.latest().unwrap().0, Generation(300));
    }

    #[test]
    fn the_newest_is_chosen_by_epoch_before_creation_time() {
        // A new holder whose clock is behind the old one's: its generation sorts first by
        // creation time, and is still the newest history.
        let cat = applied(&[
            (500, Some((1, None)), 4),
            (400, Some((2, Some((500, 4)))), 1),
        ]);
        assert!(cat.stale.is_empty());
        assert_eq!(cat.latest().unwrap().0, Generation(400));
    }
}
