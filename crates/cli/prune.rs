//! `lifeboat prune`: apply a retention window by hand (or show what it would delete).

use std::process::ExitCode;

use anyhow::{Context, Result};
use lifeboat_agent::clock::{fmt_time, now_ms, to_ms};
use lifeboat_agent::retention;

use crate::args::PruneArgs;
use crate::{human, progress, replica_url};

pub async fn prune(a: PruneArgs) -> Result<ExitCode> {
    let client = replica_url::open(&a.url).await?;
    let now = match &a.now {
        Some(t) => to_ms(
            humantime::parse_rfc3339(t)
                .with_context(|| format!("--now {t:?}: expected RFC 3339"))?,
        ),
        None => now_ms(),
    };
    let bar = progress::bar("pruning", progress::Unit::Objects);
    let p =
        retention::prune_with_progress(client.as_ref(), a.retention, now, a.dry_run, bar).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (done, pruned) = if a.dry_run {
        ("would delete", "would prune")
    } else {
        ("deleted", "pruned")
    };
    for k in &p.objects {
        println!("{done} {k}");
    }
    println!(
        "{pruned} {} generation(s), {} object(s), {}; restore points since {} are kept",
        p.generations.len(),
        p.objects.len(),
        human::bytes(p.bytes),
        fmt_time(p.window_start_ms)
    );
    Ok(ExitCode::SUCCESS)
}
