//! `lifeboat restore`: plan from one listing, then restore verified (or print the plan).

use std::process::ExitCode;

use anyhow::{Context, Result};
use lifeboat_agent::clock::{fmt_time, to_ms};
use lifeboat_agent::restore::{self as rs, Target};

use std::sync::Arc;

use lifeboat_storage::prefixed::Prefixed;

use crate::args::RestoreArgs;
use crate::replica_url;

/// A progress bar on stderr when it is a terminal; nothing otherwise.
fn progress_bar() -> Option<lifeboat_agent::restore::Progress> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "restoring [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(lifeboat_agent::restore::Progress(std::sync::Arc::new(
        move |done, total| {
            bar.set_length(total);
            bar.set_position(done);
            if done >= total {
                bar.finish_and_clear();
            }
        },
    )))
}

/// Parses `--timestamp`: RFC 3339, or `-15m`-style relative to now.
fn parse_time(s: &str) -> Result<u64> {
    let now = std::time::SystemTime::now();
    let t = if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel)
            .with_context(|| format!("--timestamp {s:?}: not a duration like -15m or -2h"))?;
        now - d
    } else {
        humantime::parse_rfc3339_weak(s).with_context(|| {
            format!("--timestamp {s:?}: use RFC 3339 (2026-11-28T17:00:00Z) or -15m")
        })?
    };
    if t < std::time::UNIX_EPOCH {
        anyhow::bail!("--timestamp {s:?} is before 1970");
    }
    Ok(to_ms(t))
}

pub async fn restore(r: RestoreArgs) -> Result<ExitCode> {
    if r.all_databases {
        return restore_all(r).await;
    }
    if r.if_db_not_exists && r.output.exists() {
        println!(
            "{} exists; nothing to do (--if-db-not-exists)",
            r.output.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = replica_url::open(&r.url).await?;
    if let Some(name) = &r.database {
        client = Arc::new(Prefixed::new(client, name)?);
    }
    restore_one(&r, client.as_ref(), &r.output).await
}

/// `--all-databases`: every database of a folder-of-databases replica into the folder
/// `--output`, one after the other; the first failure stops (those restored stay).
async fn restore_all(r: RestoreArgs) -> Result<ExitCode> {
    let base = replica_url::open(&r.url).await?;
    let listing = base
        .list("")
        .await
        .with_context(|| format!("cannot list {}", base.describe()))?;
    let names = lifeboat_storage::prefixed::names(&listing);
    if names.is_empty() {
        if r.if_replica_exists {
            println!(
                "{} holds no databases yet; nothing to do (--if-replica-exists)",
                base.describe()
            );
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::bail!(
            "{} holds no folder of databases (no <name>/generations/ objects); for a single \
             database's replica, leave out --all-databases",
            base.describe()
        );
    }
    std::fs::create_dir_all(&r.output)
        .with_context(|| format!("cannot create folder {}", r.output.display()))?;
    for name in &names {
        let out = r.output.join(name);
        if r.if_db_not_exists && out.exists() {
            println!("{} exists; skipped (--if-db-not-exists)", out.display());
            continue;
        }
        let client = Prefixed::new(base.clone(), name)?;
        restore_one(&r, &client, &out).await?;
    }
    println!("{} database(s) of {}", names.len(), base.describe());
    Ok(ExitCode::SUCCESS)
}

/// Restores (or plans, with `--dry-run`) the database in `client` into `output`.
async fn restore_one(
    r: &RestoreArgs,
    client: &dyn lifeboat_storage::ReplicaClient,
    output: &std::path::Path,
) -> Result<ExitCode> {
    let target = match (&r.txid, &r.timestamp) {
        (Some(t), _) => Target::TxId(
            t.parse()
                .context("--txid takes 16 hex digits, as lifeboat prints them")?,
        ),
        (None, Some(ts)) => Target::Time(parse_time(ts)?),
        (None, None) => Target::Latest,
    };
    let generation = match &r.generation {
        Some(g) => Some(g.parse().context("--generation takes 16 hex digits")?),
        None => None,
    };
    let opts = rs::RestoreOptions {
        output: output.to_path_buf(),
        generation,
        target,
        parallelism: r.parallelism,
        force: r.force,
        progress: progress_bar(),
    };
    let cat = lifeboat_agent::catalog::Catalog::load(client)
        .await
        .with_context(|| format!("cannot list {}", client.describe()))?;
    if cat.latest().is_none() && r.if_replica_exists {
        println!(
            "{} holds no backup yet; nothing to do (--if-replica-exists)",
            client.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let plan = rs::plan(&cat, generation, target)
        .with_context(|| format!("cannot restore from {}", client.describe()))?;
    if r.dry_run {
        println!("restore plan for {} (nothing written):", output.display());
        println!("  generation {}", plan.generation);
        println!("  target     {target:?}");
        println!(
            "  snapshot   {} ({} bytes)",
            plan.snapshot.key, plan.snapshot.size
        );
        for s in &plan.segments {
            println!("  segment    {} ({} bytes)", s.key, s.size);
        }
        println!(
            "  {} objects, {} bytes",
            1 + plan.segments.len(),
            plan.bytes()
        );
        if output.exists() && !r.force {
            println!(
                "  note: {} exists; a real run needs --force",
                output.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = rs::execute(client, &plan, &opts)
        .await
        .with_context(|| format!("restore from {} failed", client.describe()))?;
    println!(
        "restored {} to generation {} txid {} ({}): {} pages of {} bytes, checksum {} verified, \
         integrity_check ok ({} objects, {} bytes in {:.2}s)",
        output.display(),
        report.generation,
        report.txid,
        fmt_time(report.time_ms),
        report.pages,
        report.page_size,
        report.checksum,
        report.objects,
        report.bytes,
        report.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
