//! `lifeboat databases`: the databases of the configuration file, their replicas, and how recent
//! each replica is (its newest restore point, from one listing per replica). With a replica URL,
//! the databases a folder-of-databases replica holds ([`crate::folder`]).

use std::process::ExitCode;

use anyhow::Result;
use lifeboat_agent::catalog::Catalog;
use lifeboat_agent::clock::{fmt_time, now_ms};
use serde::Serialize;

use crate::args::DatabasesArgs;
use crate::{config, human, replica_url};

/// One replica of one database.
#[derive(Serialize)]
struct Row {
    database: String,
    /// The replica, without its URL's query (which may hold secrets).
    replica: String,
    /// The newest restorable generation.
    generation: Option<String>,
    /// Its newest transaction (16 hex digits, the key form).
    last_txid: Option<String>,
    /// When the agent saw that transaction commit (Unix ms): the last sync.
    last_sync_unix_ms: Option<u64>,
    /// Why the replica could not be read, if it could not.
    error: Option<String>,
}

pub async fn databases(a: DatabasesArgs) -> Result<ExitCode> {
    if let Some(url) = &a.url {
        return crate::folder::list(url, a.dir.as_deref(), a.json).await;
    }
    let path = config::locate_existing(a.config)?;
    let mut rows = Vec::new();
    for e in config::entries(&path)? {
        for url in &e.replicas {
            let mut row = Row {
                database: e.path.display().to_string(),
                replica: lifeboat_storage::url::redact(url),
                generation: None,
                last_txid: None,
                last_sync_unix_ms: None,
                error: None,
            };
            let listed = async {
                let client = replica_url::open(url).await?;
                anyhow::Ok(Catalog::load(client.as_ref()).await?)
            }
            .await;
            match listed {
                Ok(cat) => {
                    if let Some((g, o)) = cat.latest() {
                        row.generation = Some(g.to_string());
                        let last = o.segments.last().map(|s| s.last);
                        let last = last.or_else(|| o.snapshots.last().map(|s| s.txid));
                        row.last_txid = last.map(|t| t.to_string());
                        row.last_sync_unix_ms = o.newest_time();
                    }
                }
                Err(e) => row.error = Some(format!("{e:#}")),
            }
            rows.push(row);
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("databases of {}:", path.display());
    println!(
        "{:<24}  {:<40}  {:>10}  last sync",
        "database", "replica", "last txid"
    );
    let now = now_ms();
    for r in &rows {
        let sync = match (&r.error, r.last_sync_unix_ms) {
            (Some(e), _) => format!("cannot list: {e}"),
            (None, Some(ms)) => format!(
                "{} ({} ago)",
                fmt_time(ms),
                human::duration(std::time::Duration::from_millis(now.saturating_sub(ms)))
            ),
            (None, None) => "never (no backup yet)".into(),
        };
        println!(
            "{:<24}  {:<40}  {:>10}  {sync}",
            r.database,
            r.replica,
            human::txid_key(r.last_txid.as_deref().unwrap_or("-")),
        );
    }
    Ok(ExitCode::SUCCESS)
}
