//! `verify`: read every object of a replica, check it, and rebuild each generation's chain.

use std::io::BufReader;

use lifeboat_storage::ReplicaClient;
use lifeboat_wal::snapshot::SnapshotReader;
use serde::Serialize;

use crate::catalog::{Catalog, GenerationObjects};
use crate::clock::fmt_time;
use crate::restore::{execute, plan_generation, Progress, RestoreOptions, Target};
use crate::{Error, Result};

/// What a replica holds for one generation, and what is wrong with it.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationSummary {
    /// Generation id.
    pub generation: String,
    /// When it started.
    pub created: String,
    /// The writer-lease epoch that wrote it (0: written without a lease).
    pub epoch: u64,
    /// Its objects.
    #[serde(flatten)]
    pub objects: Objects,
    /// What it restores to.
    #[serde(flatten)]
    pub range: Restorable,
    /// Problems found (empty when sound; only filled by `verify`).
    pub problems: Vec<String>,
    /// Segments whose transactions the chain holds in other objects too, checked to agree
    /// (an upload that landed twice): not a problem; `prune` may delete them. Only filled by
    /// `verify`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redundant: Vec<String>,
    /// Retention is deleting it (an interrupted prune left its `pruning` marker): not
    /// restorable and not checked; the next prune removes it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pruning: bool,
}

/// The objects of a generation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Objects {
    /// Snapshots.
    pub snapshots: usize,
    /// Segments.
    pub segments: usize,
    /// Bytes stored.
    pub bytes: u64,
}

/// The restore points of a generation (none without a snapshot or segment).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Restorable {
    /// Last transaction in the chain.
    pub last_txid: Option<String>,
    /// Restorable time range: from the first snapshot to the last commit.
    pub from: Option<String>,
    /// End of the restorable range.
    pub to: Option<String>,
}

/// Summarises a generation from the listing alone (no object is read).
pub fn summarize(generation: lifeboat_wal::Generation, o: &GenerationObjects) -> GenerationSummary {
    let bytes = o.bytes();
    let from = o.snapshots.first().map(|s| fmt_time(s.time_ms));
    let last = o
        .last_segment()
        .map(|s| (s.last, s.time_ms))
        .or_else(|| o.snapshots.last().map(|s| (s.txid, s.time_ms)));
    let (last_txid, to) = match last {
        Some((txid, time_ms)) => (Some(txid.to_string()), Some(fmt_time(time_ms))),
        None => (None, None),
    };
    GenerationSummary {
        generation: generation.to_string(),
        created: fmt_time(generation.unix_ms()),
        epoch: crate::catalog::fences::epoch(o),
        objects: Objects {
            snapshots: o.snapshots.len(),
            segments: o.segments.len(),
            bytes,
        },
        range: Restorable {
            last_txid,
            from,
            to,
        },
        problems: Vec::new(),
        redundant: Vec::new(),
        pruning: o.pruning,
    }
}

/// Checks every object and every generation's chain. Problems are collected, not fatal.
pub async fn verify(client: &dyn ReplicaClient) -> Result<Vec<GenerationSummary>> {
    verify_with_progress(client, None).await
}

/// [`verify`], reporting `(bytes read, bytes to read)` to `progress`: every object once, then
/// each generation's chain again as its rebuild reads it.
pub async fn verify_with_progress(
    client: &dyn ReplicaClient,
    progress: Option<Progress>,
) -> Result<Vec<GenerationSummary>> {
    let cat = Catalog::load(client).await?;
    let rebuilds: u64 = cat
        .generations
        .iter()
        .filter_map(|(g, o)| plan_generation(*g, o, Target::Latest).ok())
        .map(|p| p.bytes())
        .sum();
    let total = cat.generations.values().map(|o| o.bytes()).sum::<u64>() + rebuilds;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let advance = |n: u64| {
        let d = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        if let Some(p) = &progress {
            (p.0)(d.min(total), total);
        }
    };
    advance(0);
    let mut out = Vec::new();
    let scratch = tempfile::tempdir().map_err(|e| Error::io("create a scratch folder", e))?;
    for (g, objs) in &cat.generations {
        let mut sum = summarize(*g, objs);
        if objs.pruning {
            tracing::warn!(generation = %g, "not checked: retention is deleting this generation (an interrupted prune; the next prune finishes it)");
            out.push(sum);
            continue;
        }
        // A fence alone is a lease holder that stopped before its first snapshot landed.
        if objs.snapshots.is_empty() && !objs.segments.is_empty() {
            sum.problems.push(format!(
                "generation {g} has no snapshot: its {} segments cannot be restored",
                objs.segments.len()
            ));
        }
        for s in &objs.snapshots {
            let path = scratch.path().join("snapshot");
            let res = async {
                client.get_to_file(&s.key, &path).await?;
                let f = std::fs::File::open(&path).map_err(|e| Error::io("open snapshot", e))?;
                let mut r = SnapshotReader::new(BufReader::new(f)).map_err(|e| Error::Corrupt {
                    key: s.key.clone(),
                    cause: e,
                })?;
                while r
                    .next_chunk()
                    .map_err(|e| Error::Corrupt {
                        key: s.key.clone(),
                        cause: e,
                    })?
                    .is_some()
                {}
                Ok::<_, Error>(())
            }
            .await;
            advance(s.size);
            if let Err(e) = res {
                sum.problems.push(e.chain().to_string());
            }
        }
        let mut gone: Vec<(&crate::catalog::Segment, Error)> = Vec::new();
        for s in &objs.segments {
            let res = async {
                let b = client.get(&s.key).await?;
                // The object on its own: CRCs and structure, and the frame checks when it
                // rebuilds on its own (format 1, or format 2 without deltas against the state
                // before it; the restore below rebuilds those against that state). A pack: each
                // of its parts so.
                for (part, any) in crate::catalog::open_parts(s, b)? {
                    if any.base_pages().is_empty() {
                        any.rebuild(&mut |_, _| Ok(()))
                            .map_err(|e| Error::Corrupt {
                                key: part.key,
                                cause: e,
                            })?;
                    }
                }
                Ok::<_, Error>(())
            }
            .await;
            advance(s.size);
            match res {
                Err(e @ Error::Storage(lifeboat_storage::Error::NotFound { .. })) => {
                    gone.push((s, e))
                }
                Err(e) => sum.problems.push(e.chain().to_string()),
                Ok(()) => {}
            }
        }
        // Segments gone since the listing were packed while this ran (see `replica::packing`)
        // if a new listing (one for them all) shows a pack holding them, which the chain below
        // checks; otherwise they are missing.
        if !gone.is_empty() {
            let now = Catalog::load(client).await.ok();
            let packs = now.as_ref().and_then(|c| c.generations.get(g));
            for (s, e) in gone {
                let packed = packs.is_some_and(|o| {
                    o.segments
                        .iter()
                        .any(|p| p.is_pack() && p.first <= s.first && p.last >= s.last)
                });
                if packed {
                    tracing::info!(key = %s.key, "packed while verifying; checked in its pack");
                } else {
                    sum.problems.push(e.chain().to_string());
                }
            }
        }
        if !objs.snapshots.is_empty() && sum.problems.is_empty() {
            // Rebuild the chain: contiguity and every recorded checksum.
            let res = async {
                let plan = plan_generation(*g, objs, Target::Latest)?;
                let opts = RestoreOptions {
                    output: scratch.path().join(format!("{g}.db")),
                    generation: Some(*g),
                    target: Target::Latest,
                    parallelism: 4,
                    force: true,
                    progress: progress.as_ref().map(|p| {
                        let (p, base) =
                            (p.clone(), done.load(std::sync::atomic::Ordering::Relaxed));
                        Progress(std::sync::Arc::new(move |d, _| {
                            (p.0)((base + d).min(total), total)
                        }))
                    }),
                    mode: None,
                    every_commit: true,
                };
                execute(client, &plan, &opts).await?;
                advance(plan.bytes());
                std::fs::remove_file(&opts.output).ok();
                Ok::<_, Error>(plan.redundant.into_iter().map(|s| s.key).collect())
            }
            .await;
            match res {
                Ok(redundant) => sum.redundant = redundant,
                Err(e) => sum.problems.push(e.chain().to_string()),
            }
        }
        out.push(sum);
    }
    if !cat.foreign.is_empty() {
        let mut sum = GenerationSummary {
            generation: "-".into(),
            created: String::new(),
            epoch: 0,
            objects: Objects::default(),
            range: Restorable::default(),
            problems: Vec::new(),
            redundant: Vec::new(),
            pruning: false,
        };
        for k in &cat.foreign {
            sum.problems.push(format!(
                "object {k} is not a lifeboat object (orphaned or foreign)"
            ));
        }
        out.push(sum);
    }
    Ok(out)
}
