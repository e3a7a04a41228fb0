//! A folder of databases seen from its replica: `lifeboat databases URL [--dir FOLDER]` lists
//! the databases the replica holds, each with its newest restore point, and with `--dir` whether
//! each is in the local folder.
//!
//! One LIST of the whole replica finds the names, then one LIST per database reads its catalog.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use lifeboat_agent::catalog::Catalog;
use lifeboat_agent::folder::FolderConfig;
use lifeboat_storage::prefixed::Prefixed;
use lifeboat_storage::ReplicaClient;
use serde::Serialize;

use crate::replica_url;

/// One database of the folder.
#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// `replicated` (restorable), `no snapshot yet`, or `local only` (not in the replica yet).
    state: &'static str,
    /// Whether the local folder has it (`None` without `--dir`).
    local: Option<bool>,
    generations: usize,
    generation: Option<String>,
    last_txid: Option<String>,
    newest: Option<String>,
    bytes: u64,
}

/// Lists the databases of the folder-of-databases replica `url`.
pub async fn list(url: &str, dir: Option<&std::path::Path>, json: bool) -> Result<ExitCode> {
    let base = replica_url::open(url).await?;
    let listing = base
        .list("")
        .await
        .with_context(|| format!("cannot list {}", base.describe()))?;
    let mut rows = BTreeMap::new();
    for name in lifeboat_storage::prefixed::names(&listing) {
        let client = Arc::new(Prefixed::new(base.clone(), &name)?);
        let cat = Catalog::load(client.as_ref())
            .await
            .with_context(|| format!("cannot list {}", client.describe()))?;
        let latest = cat
            .latest()
            .map(|(g, o)| lifeboat_agent::verify::summarize(g, o));
        rows.insert(
            name.clone(),
            Row {
                state: if latest.is_some() {
                    "replicated"
                } else {
                    "no snapshot yet"
                },
                local: None,
                generations: cat.generations.len(),
                generation: latest.as_ref().map(|s| s.generation.clone()),
                last_txid: latest.as_ref().and_then(|s| s.range.last_txid.clone()),
                newest: latest.as_ref().and_then(|s| s.range.to.clone()),
                bytes: cat.generations.values().map(|o| o.bytes()).sum(),
                name,
            },
        );
    }
    if let Some(dir) = dir {
        let (dir, pattern) = FolderConfig::split_spec(dir);
        let folder = FolderConfig {
            dir,
            pattern,
            replicas: Vec::new(),
            options: Default::default(),
            overrides: Vec::new(),
            restored: Default::default(),
        };
        let local = folder.scan()?;
        for r in rows.values_mut() {
            r.local = Some(local.contains(&r.name));
        }
        for name in local {
            rows.entry(name.clone()).or_insert(Row {
                name,
                state: "local only",
                local: Some(true),
                generations: 0,
                generation: None,
                last_txid: None,
                newest: None,
                bytes: 0,
            });
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<16} {:<6} {:>4} {:<16} {:<16} {:<24} {:>12}",
        "NAME", "STATE", "LOCAL", "GENS", "GENERATION", "LAST TXID", "NEWEST", "BYTES"
    );
    for r in &rows {
        let dash = || "-".to_string();
        println!(
            "{:<32} {:<16} {:<6} {:>4} {:<16} {:<16} {:<24} {:>12}",
            r.name,
            r.state,
            r.local.map_or("-", |l| if l { "yes" } else { "no" }),
            r.generations,
            r.generation.clone().unwrap_or_else(dash),
            r.last_txid.clone().unwrap_or_else(dash),
            r.newest.clone().unwrap_or_else(dash),
            r.bytes
        );
    }
    println!("{} database(s)", rows.len());
    Ok(ExitCode::SUCCESS)
}
