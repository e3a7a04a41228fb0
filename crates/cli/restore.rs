//! `lifeboat restore`: plan from one listing, then restore verified (or print the plan).

use std::process::ExitCode;

use anyhow::{Context, Result};
use lifeboat_agent::clock::{fmt_time, to_ms};
use lifeboat_agent::restore::{self as rs, Target};

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
    if r.if_db_not_exists && r.output.exists() {
        println!(
            "{} exists; nothing to do (--if-db-not-exists)",
            r.output.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let client = replica_url::open(&r.url).await?;
    for d in crate::config::dir_specs(&r.dirs)? {
        lifeboat_dirs::restore::check_output(&d.path, r.force)?;
    }
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
        output: r.output.clone(),
        generation,
        target,
        parallelism: r.parallelism,
        force: r.force,
        progress: progress_bar(),
    };
    let cat = lifeboat_agent::catalog::Catalog::load(client.as_ref())
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
        println!("restore plan for {} (nothing written):", r.output.display());
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
        if r.output.exists() && !r.force {
            println!(
                "  note: {} exists; a real run needs --force",
                r.output.display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = rs::execute(client.as_ref(), &plan, &opts)
        .await
        .with_context(|| format!("restore from {} failed", client.describe()))?;
    for d in crate::config::dir_specs(&r.dirs)? {
        let at = Some((report.generation, report.txid));
        let f = lifeboat_dirs::restore::restore(client.as_ref(), &d.name, at, &d.path, r.force)
            .await
            .with_context(|| {
                format!(
                    "restore of folder {} failed (the database was restored)",
                    d.path.display()
                )
            })?;
        println!(
            "restored folder {} ({}) as of the same point: {} files, {} bytes, every SHA-256 verified{}",
            d.path.display(),
            f.manifest.key(&d.name),
            f.files,
            f.bytes,
            f.moved_aside.map(|p| format!("; the old folder was moved to {}", p.display())).unwrap_or_default()
        );
    }
    println!(
        "restored {} to generation {} txid {} ({}): {} pages of {} bytes, checksum {} verified, \
         integrity_check ok ({} objects, {} bytes in {:.2}s)",
        r.output.display(),
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
