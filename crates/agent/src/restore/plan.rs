//! Choosing what a restore reads: the snapshot at or before the target and the segments after
//! it, which must form an unbroken txid chain. From one listing, without reading any object.

use lifeboat_wal::{Generation, TxId};

use crate::catalog::{Catalog, GenerationObjects, Segment, Snapshot};
use crate::clock::fmt_time;
use crate::{Error, Result};

/// What to restore to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Target {
    /// The newest state.
    #[default]
    Latest,
    /// The state right after this transaction.
    TxId(TxId),
    /// The state after the last transaction the agent saw commit at or before this time (Unix
    /// ms). Precise to when the agent noticed the commit (file-event latency, milliseconds).
    Time(u64),
}

/// The objects a restore will read.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Generation.
    pub generation: Generation,
    /// The snapshot to start from.
    pub snapshot: Snapshot,
    /// Segments to apply, in order. One may start before the previous one ends (a
    /// redundant copy reaching further): its transactions already applied are skipped, after
    /// checking that they agree.
    pub segments: Vec<Segment>,
    /// Segments not in the chain whose transactions the chain holds too (redundant copies).
    /// Restore reads them and checks them against the chain; `prune` may delete them.
    pub redundant: Vec<Segment>,
    /// Where to stop.
    pub target: Target,
}

impl Plan {
    /// Bytes to download.
    pub fn bytes(&self) -> u64 {
        self.snapshot.size
            + self
                .segments
                .iter()
                .chain(&self.redundant)
                .map(|s| s.size)
                .sum::<u64>()
    }

    /// Ranges of transactions that two objects of the plan both hold: restore keeps what it
    /// applied there, to compare with the other copy.
    pub fn shared(&self) -> Vec<(TxId, TxId)> {
        let mut out: Vec<(TxId, TxId)> = self.redundant.iter().map(|s| (s.first, s.last)).collect();
        for w in self.segments.windows(2) {
            if w[1].first <= w[0].last {
                out.push((w[1].first, w[0].last));
            }
        }
        out
    }
}

/// Chooses the snapshot and segments for a target within one generation.
pub fn plan_generation(
    generation: Generation,
    objs: &GenerationObjects,
    target: Target,
) -> Result<Plan> {
    let snapshot = objs
        .snapshots
        .iter()
        .rev()
        .find(|s| match target {
            Target::Latest => true,
            Target::TxId(t) => s.txid <= t,
            Target::Time(t) => s.time_ms <= t,
        })
        .ok_or_else(|| {
            let (first, newest) = (objs.snapshots.first(), objs.newest_time());
            match (target, first, newest) {
                (Target::Time(t), Some(s), Some(n)) => Error::NoStateAtTarget(format!(
                    "generation {generation} holds no state at or before {}: it restores from {} \
                     to {}",
                    fmt_time(t),
                    fmt_time(s.time_ms),
                    fmt_time(n)
                )),
                (Target::TxId(t), Some(s), _) => Error::NoStateAtTarget(format!(
                    "generation {generation} holds no state at or before txid {}: its earliest \
                     restore point is txid {} (older ones were pruned or never shipped)",
                    t.0, s.txid.0
                )),
                _ => Error::NoSnapshot(generation),
            }
        })?
        .clone();
    let base = snapshot.txid;
    let mut next = base.next();
    let mut segments: Vec<Segment> = Vec::new();
    let mut redundant: Vec<Segment> = Vec::new();
    let all = &objs.segments;
    let mut i = 0;
    // Where a segment starts, and the furthest any reaches: a segment that starts exactly at
    // `next` and ends where another starts (or at the end) continues the chain without
    // skipping transactions, which a format-2 segment (page deltas against the state before
    // it) needs.
    let starts: std::collections::HashSet<TxId> = all.iter().map(|s| s.first).collect();
    let end = all.iter().map(|s| s.last).max().unwrap_or(base);
    // At each step the chain continues with the segment that holds `next` and reaches
    // furthest. Other segments holding transactions the chain holds too are redundant copies
    // (an upload retried after its answer was lost, or in flight while an agent was replaced,
    // that landed after all); restore reads them and checks they agree with the chain on every
    // shared commit: only a disagreement is a fork.
    loop {
        if let Target::TxId(t) = target {
            if next > t {
                break;
            }
        }
        let mut best: Option<&Segment> = None;
        while let Some(s) = all.get(i).filter(|s| s.first <= next) {
            i += 1;
            if s.last < next {
                // Wholly behind: before the snapshot (not needed), or a copy of chained txids.
                if s.first > base {
                    redundant.push(s.clone());
                }
                continue;
            }
            let continues =
                |s: &Segment| s.first == next && (s.last == end || starts.contains(&s.last.next()));
            match best {
                // Continuing without a skip beats reaching further.
                Some(b) if (continues(s), s.last) > (continues(b), b.last) => {
                    redundant.push(b.clone());
                    best = Some(s);
                }
                Some(_) => redundant.push(s.clone()),
                None => best = Some(s),
            }
        }
        let Some(s) = best else {
            if let Some(after) = all.get(i) {
                return Err(Error::Gap {
                    generation,
                    from: next,
                    to: TxId(after.first.0 - 1),
                    next: after.key.clone(),
                });
            }
            break;
        };
        segments.push(s.clone());
        next = s.last.next();
        // The first segment whose last commit is after the target time may hold commits at or
        // before it; later ones cannot.
        if let Target::Time(t) = target {
            if s.time_ms > t {
                break;
            }
        }
    }
    if let Target::TxId(t) = target {
        if TxId(next.0 - 1) < t {
            return Err(Error::TargetPastEnd {
                generation,
                last: TxId(next.0 - 1),
                target: t,
            });
        }
    }
    Ok(Plan {
        generation,
        snapshot,
        segments,
        redundant,
        target,
    })
}

/// Why a point-in-time restore to `t` finds nothing: what the replica can restore instead.
fn no_state_before(cat: &Catalog, t: u64) -> String {
    let restorable = cat.generations.values().filter(|o| !o.snapshots.is_empty());
    let earliest = restorable.clone().map(|o| o.snapshots[0].time_ms).min();
    let newest = restorable.filter_map(|o| o.newest_time()).max();
    match (earliest, newest) {
        (Some(e), Some(n)) => format!(
            "the replica holds no state at or before {}: its earliest restore point is {} and \
             its newest {}; pick a time in between (`lifeboat generations` lists each \
             generation's range)",
            fmt_time(t),
            fmt_time(e),
            fmt_time(n)
        ),
        _ => format!(
            "the replica holds no state at or before {}: it holds no snapshot at all, so \
             nothing to restore",
            fmt_time(t)
        ),
    }
}

/// Plans a restore from a replica's catalog.
pub fn plan(cat: &Catalog, generation: Option<Generation>, target: Target) -> Result<Plan> {
    let (g, objs) = match generation {
        Some(g) => (
            g,
            cat.generations
                .get(&g)
                .ok_or(Error::NoGeneration(g))
                .and_then(|o| {
                    if o.pruning {
                        return Err(Error::GenerationPruning(g));
                    }
                    Ok(o)
                })?,
        ),
        None => match target {
            // The newest generation that has a state at or before the time (a generation
            // being pruned has none any more: every restore point in it is outside the window).
            Target::Time(t) => cat
                .generations
                .iter()
                .rev()
                .filter(|(g, o)| {
                    if o.pruning {
                        tracing::warn!(generation = %g, "skipping a generation that retention is deleting (an interrupted prune)");
                    }
                    !o.pruning
                })
                .find(|(_, o)| o.snapshots.iter().any(|s| s.time_ms <= t))
                .map(|(g, o)| (*g, o))
                .ok_or_else(|| Error::NoStateAtTarget(no_state_before(cat, t)))?,
            _ => cat.latest().ok_or(Error::NothingToRestore)?,
        },
    };
    plan_generation(g, objs, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Generation = Generation(0x10);

    fn snap(txid: u64, time_ms: u64) -> Snapshot {
        Snapshot {
            key: format!("snap-{txid}"),
            txid: TxId(txid),
            time_ms,
            size: 100,
        }
    }

    fn seg(first: u64, last: u64, time_ms: u64) -> Segment {
        Segment {
            key: format!("seg-{first}-{last}-{time_ms}"),
            first: TxId(first),
            last: TxId(last),
            time_ms,
            size: 10,
        }
    }

    fn objs(snapshots: Vec<Snapshot>, segments: Vec<Segment>) -> GenerationObjects {
        GenerationObjects {
            snapshots,
            segments,
            fence: None,
            pruning: false,
        }
    }

    /// The error planning `target` gives, in words.
    fn refusal(o: &GenerationObjects, target: Target) -> String {
        plan_generation(G, o, target).unwrap_err().to_string()
    }

    /// The plan for the newest state of a generation with one snapshot (txid 0) and `segments`.
    fn latest(segments: Vec<Segment>) -> Plan {
        plan_generation(G, &objs(vec![snap(0, 1)], segments), Target::Latest).unwrap()
    }

    fn keys(p: &Plan) -> Vec<&str> {
        p.segments.iter().map(|s| s.key.as_str()).collect()
    }

    #[test]
    fn latest_starts_at_the_newest_snapshot_and_skips_what_it_covers() {
        let o = objs(
            vec![snap(0, 1), snap(4, 5)],
            vec![seg(1, 2, 2), seg(3, 4, 4), seg(5, 6, 6), seg(7, 7, 7)],
        );
        let p = plan_generation(G, &o, Target::Latest).unwrap();
        assert_eq!(p.snapshot.txid, TxId(4));
        assert_eq!(keys(&p), ["seg-5-6-6", "seg-7-7-7"]);
        assert_eq!(p.bytes(), 120);
    }

    #[test]
    fn a_txid_target_takes_the_snapshot_before_it_and_stops_at_the_segment_holding_it() {
        let o = objs(
            vec![snap(0, 1), snap(4, 5)],
            vec![seg(1, 2, 2), seg(3, 4, 4), seg(5, 6, 6), seg(7, 7, 7)],
        );
        let p = plan_generation(G, &o, Target::TxId(TxId(3))).unwrap();
        assert_eq!(p.snapshot.txid, TxId(0));
        assert_eq!(keys(&p), ["seg-1-2-2", "seg-3-4-4"]);
        let e = refusal(&o, Target::TxId(TxId(9)));
        assert!(e.contains("ends at txid 7,"), "{e}");
    }

    #[test]
    fn a_time_target_stops_after_the_first_segment_past_it() {
        let o = objs(
            vec![snap(0, 1)],
            vec![seg(1, 2, 2), seg(3, 4, 10), seg(5, 6, 20)],
        );
        let p = plan_generation(G, &o, Target::Time(5)).unwrap();
        assert_eq!(keys(&p), ["seg-1-2-2", "seg-3-4-10"]);
        assert!(plan_generation(G, &o, Target::Time(0)).is_err());
    }

    #[test]
    fn a_time_before_every_restore_point_names_the_earliest_and_newest() {
        let mut cat = Catalog::default();
        cat.generations
            .insert(G, objs(vec![snap(0, 5_000)], vec![seg(1, 2, 9_000)]));
        cat.generations.insert(
            Generation(0x20),
            objs(vec![snap(0, 20_000)], vec![seg(1, 1, 30_000)]),
        );
        let e = plan(&cat, None, Target::Time(1_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("earliest restore point is 1970-01-01T00:00:05.000Z")
                && e.contains("newest 1970-01-01T00:00:30.000Z"),
            "{e}"
        );
        let e = plan(&cat, Some(Generation(0x20)), Target::Time(10_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("restores from 1970-01-01T00:00:20.000Z to 1970-01-01T00:00:30.000Z"),
            "{e}"
        );
        let e = plan(&Catalog::default(), None, Target::Time(1_000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no snapshot at all"), "{e}");
    }

    #[test]
    fn a_gap_is_an_error_naming_the_missing_txids_and_the_object_after_it() {
        let o = objs(vec![snap(0, 1)], vec![seg(1, 2, 2), seg(5, 6, 6)]);
        assert!(matches!(
            plan_generation(G, &o, Target::Latest),
            Err(Error::Gap {
                from: TxId(3),
                to: TxId(4),
                ..
            })
        ));
        let e = refusal(&o, Target::Latest);
        assert!(
            e.contains("missing transactions 3..4:") && e.contains("seg-5-6-6"),
            "{e}"
        );
    }

    fn redundant(p: &Plan) -> Vec<&str> {
        p.redundant.iter().map(|s| s.key.as_str()).collect()
    }

    #[test]
    fn segments_sharing_transactions_chain_through_the_furthest_and_the_others_are_checked() {
        // The case: a PUT of 3..4 timed out but landed, and the agent cut 3..6.
        let p = latest(vec![seg(1, 2, 2), seg(3, 4, 4), seg(3, 6, 6), seg(7, 7, 7)]);
        assert_eq!(keys(&p), ["seg-1-2-2", "seg-3-6-6", "seg-7-7-7"]);
        assert_eq!(redundant(&p), ["seg-3-4-4"]);
        assert_eq!(p.shared(), [(TxId(3), TxId(4))]);
        // A copy in flight while an agent was replaced: 5..9 landed after 5..7 and 8..12.
        let o = objs(
            vec![snap(0, 1)],
            vec![seg(1, 4, 2), seg(5, 7, 5), seg(5, 9, 6), seg(8, 12, 8)],
        );
        // The chain continues exactly (5..7 then 8..12); 5..9 is the copy.
        let p = plan_generation(G, &o, Target::Latest).unwrap();
        assert_eq!(keys(&p), ["seg-1-4-2", "seg-5-7-5", "seg-8-12-8"]);
        assert_eq!(redundant(&p), ["seg-5-9-6"]);
        assert_eq!(p.shared(), [(TxId(5), TxId(9))]);
        // A target inside the shared range stops there.
        let p = plan_generation(G, &o, Target::TxId(TxId(6))).unwrap();
        assert_eq!(keys(&p), ["seg-1-4-2", "seg-5-7-5"]);
        // Without an exact continuation, the furthest copy, skipping what was applied.
        let p = latest(vec![seg(1, 4, 2), seg(5, 9, 6), seg(8, 12, 8)]);
        assert_eq!(keys(&p), ["seg-1-4-2", "seg-5-9-6", "seg-8-12-8"]);
        assert_eq!(p.shared(), [(TxId(8), TxId(9))]);
        // Nothing shared: nothing redundant.
        let p = latest(vec![seg(1, 2, 2), seg(3, 3, 3)]);
        assert!(p.redundant.is_empty() && p.shared().is_empty());
    }

    #[test]
    fn segments_a_later_snapshot_covers_are_no_fork() {
        // Segment 1-4 overlaps nothing after the snapshot at 2 that the plan uses.
        let o = objs(
            vec![snap(0, 1), snap(2, 3)],
            vec![seg(1, 4, 4), seg(5, 5, 5)],
        );
        let p = plan_generation(G, &o, Target::Latest).unwrap();
        assert_eq!(keys(&p), ["seg-1-4-4", "seg-5-5-5"]);
    }

    #[test]
    fn the_catalog_plan_picks_the_newest_generation_with_a_state_before_the_time() {
        let mut cat = Catalog::default();
        cat.generations
            .insert(Generation(1), objs(vec![snap(0, 10)], vec![seg(1, 1, 11)]));
        cat.generations
            .insert(Generation(2), objs(vec![snap(0, 20)], vec![]));
        assert_eq!(
            plan(&cat, None, Target::Time(15)).unwrap().generation,
            Generation(1)
        );
        assert_eq!(
            plan(&cat, None, Target::Latest).unwrap().generation,
            Generation(2)
        );
        assert!(plan(&cat, None, Target::Time(5)).is_err());
        assert!(plan(&cat, Some(Generation(9)), Target::Latest).is_err());
    }
}
