//! `lifeboat generations`, `snapshots`, `segments` (from one listing) and `verify` (reads every
//! object): what a replica holds, for people and for machines (`--json`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use lifeboat_agent::catalog::Catalog;
use lifeboat_agent::clock::fmt_time;
use lifeboat_agent::verify::{self, GenerationSummary};
use lifeboat_wal::TxId;

use crate::args::{InspectArgs, ListArgs};
use crate::{human, progress, replica_url};

/// Which objects `list_objects` shows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Objects {
    Snapshots,
    Segments,
}

/// `lifeboat generations`.
pub async fn generations(a: InspectArgs) -> Result<ExitCode> {
    let client = replica_url::open(&a.url).await?;
    let cat = Catalog::load(client.as_ref()).await?;
    if cat.generations.is_empty() {
        if let Ok(Some(w)) = crate::neighbours::mistyped(&a.url).await {
            eprintln!("lifeboat: WARNING: {w}");
        }
    }
    let rows: Vec<_> = cat
        .generations
        .iter()
        .map(|(g, o)| verify::summarize(*g, o))
        .collect();
    print_generations(&rows, a.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `lifeboat verify`: exit 2 on any problem.
pub async fn verify(a: InspectArgs) -> Result<ExitCode> {
    let client = replica_url::open(&a.url).await?;
    let started = std::time::Instant::now();
    let bar = progress::bar("verifying", progress::Unit::Bytes);
    let rows = verify::verify_with_progress(client.as_ref(), bar).await?;
    print_generations(&rows, a.json)?;
    let folders = lifeboat_dirs::verify::verify(client.as_ref(), &std::env::temp_dir()).await?;
    if !a.json && !folders.folders.is_empty() {
        println!(
            "folders {}: {} manifests, {} blobs ({} bytes) read",
            folders.folders.join(", "),
            folders.manifests,
            folders.blobs,
            folders.bytes
        );
    }
    for p in &folders.problems {
        match a.json {
            true => eprintln!("PROBLEM folders: {p}"),
            false => println!("PROBLEM folders: {p}"),
        }
    }
    let problems = rows.iter().map(|r| r.problems.len()).sum::<usize>() + folders.problems.len();
    if !a.json {
        for r in &rows {
            for k in &r.redundant {
                println!(
                    "note: generation {}: {k} is a redundant copy (its transactions are in other \
                     objects too, and agree with them); prune may delete it",
                    r.generation
                );
            }
            for p in &r.problems {
                println!("PROBLEM generation {}: {p}", r.generation);
            }
        }
        let objects: usize = rows
            .iter()
            .map(|r| r.objects.snapshots + r.objects.segments)
            .sum();
        let bytes: u64 = rows.iter().map(|r| r.objects.bytes).sum();
        println!(
            "verify: {} generation(s), {objects} objects ({}) read and checked in {}, {}",
            rows.len(),
            human::bytes(bytes),
            human::duration(started.elapsed()),
            match problems {
                0 => "no problems".to_string(),
                n => format!("{n} PROBLEM(S)"),
            }
        );
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// One row of `snapshots` or `segments`.
#[derive(serde::Serialize)]
struct ObjectRow {
    generation: String,
    key: String,
    first_txid: String,
    last_txid: String,
    time: String,
    bytes: u64,
}

/// `lifeboat snapshots` and `lifeboat segments`.
pub async fn list_objects(a: ListArgs, which: Objects) -> Result<ExitCode> {
    let client = replica_url::open(&a.url).await?;
    let cat = Catalog::load(client.as_ref()).await?;
    let only: Option<lifeboat_wal::Generation> = match &a.generation {
        Some(g) => Some(g.parse().context("--generation takes 16 hex digits")?),
        None => None,
    };
    let mut rows = Vec::new();
    for (g, o) in &cat.generations {
        if only.is_some_and(|x| x != *g) {
            continue;
        }
        let row = |key: &str, first: TxId, last: TxId, time_ms: u64, bytes: u64| ObjectRow {
            generation: g.to_string(),
            key: key.to_string(),
            first_txid: first.to_string(),
            last_txid: last.to_string(),
            time: fmt_time(time_ms),
            bytes,
        };
        match which {
            Objects::Snapshots => rows.extend(
                o.snapshots
                    .iter()
                    .map(|s| row(&s.key, s.txid, s.txid, s.time_ms, s.size)),
            ),
            Objects::Segments => rows.extend(
                o.segments
                    .iter()
                    .map(|s| row(&s.key, s.first, s.last, s.time_ms, s.size)),
            ),
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let snapshots = which == Objects::Snapshots;
    println!(
        "{:<16}  {:>10}  {:>10}  {:<24}  {:>10}",
        "generation",
        if snapshots { "txid" } else { "first txid" },
        if snapshots { "" } else { "last txid" },
        "time",
        "size"
    );
    for r in &rows {
        println!(
            "{:<16}  {:>10}  {:>10}  {:<24}  {:>10}",
            r.generation,
            human::txid_key(&r.first_txid),
            if snapshots {
                String::new()
            } else {
                human::txid_key(&r.last_txid)
            },
            r.time,
            human::bytes(r.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_generations(rows: &[GenerationSummary], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<16}  {:>4}  {:>6}  {:>10}  {:>10}  {:<24}  {:<24}",
        "generation", "snap", "segs", "size", "last txid", "from", "to"
    );
    for r in rows {
        println!(
            "{:<16}  {:>4}  {:>6}  {:>10}  {:>10}  {:<24}  {:<24}",
            r.generation,
            r.objects.snapshots,
            r.objects.segments,
            human::bytes(r.objects.bytes),
            human::txid_key(r.range.last_txid.as_deref().unwrap_or("-")),
            r.range.from.as_deref().unwrap_or("-"),
            r.range.to.as_deref().unwrap_or("-"),
        );
        if r.pruning {
            println!("  (being deleted by retention: an interrupted prune; `lifeboat prune` finishes it; not restorable)");
        }
    }
    Ok(())
}
