//! The `lifeboat` command: argument parsing, configuration, logging and signals around the agent.
//! No replication logic lives here.

mod args;
mod config;
mod drill;
mod http;
mod logging;
mod replica_url;
mod run;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use args::{Args, Command};

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init(&args.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeboat: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("lifeboat: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Version => {
            println!(
                "lifeboat {} (replica format {}, SQLite {})",
                env!("CARGO_PKG_VERSION"),
                lifeboat_wal::FORMAT_VERSION,
                rusqlite_version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replicate(r) => {
            // Signals first: a SIGTERM during start-up must still end in a final sync.
            let shutdown = CancellationToken::new();
            spawn_signal_handler(shutdown.clone())?;
            let dbs = config::databases(&r).await?;
            let mut endpoint = Ok(());
            lifeboat_agent::agent::replicate(dbs, shutdown.clone(), |handles| {
                if let Some(addr) = &r.health_addr {
                    endpoint = http::serve_agents(addr, handles);
                    if endpoint.is_err() {
                        shutdown.cancel();
                    }
                }
            })
            .await?;
            endpoint?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(r) => restore(r).await,
        Command::Drill(a) => drill::drill(a).await,
        Command::Run(r) => run::run(r).await,
        Command::Generations(a) => {
            let client = replica_url::open(&a.url).await?;
            let cat = lifeboat_agent::catalog::Catalog::load(client.as_ref()).await?;
            let rows: Vec<_> = cat
                .generations
                .iter()
                .map(|(g, o)| lifeboat_agent::verify::summarize(*g, o))
                .collect();
            print_generations(&rows, a.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune(a) => {
            let client = replica_url::open(&a.url).await?;
            let now = match &a.now {
                Some(t) => humantime::parse_rfc3339(t)
                    .with_context(|| format!("--now {t:?}: expected RFC 3339"))?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                None => lifeboat_agent::replicator::now_ms(),
            };
            let p = lifeboat_agent::retention::prune(client.as_ref(), a.retention, now, a.dry_run)
                .await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                for k in &p.objects {
                    println!("{} {k}", if a.dry_run { "would delete" } else { "deleted" });
                }
                println!(
                    "{} {} generation(s), {} object(s), {} bytes; restore points since {} are kept",
                    if a.dry_run { "would prune" } else { "pruned" },
                    p.generations.len(),
                    p.objects.len(),
                    p.bytes,
                    lifeboat_agent::restore::fmt_time(p.window_start_ms)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshots(a) => list_objects(a, true).await,
        Command::Segments(a) => list_objects(a, false).await,
        Command::Verify(a) => {
            let client = replica_url::open(&a.url).await?;
            let rows = lifeboat_agent::verify::verify(client.as_ref()).await?;
            print_generations(&rows, a.json)?;
            let problems: usize = rows.iter().map(|r| r.problems.len()).sum();
            if !a.json {
                if problems == 0 {
                    println!("verify: {} generation(s), no problems", rows.len());
                } else {
                    for r in &rows {
                        for p in &r.problems {
                            println!("PROBLEM generation {}: {p}", r.generation);
                        }
                    }
                    println!("verify: {problems} problem(s)");
                }
            }
            Ok(if problems == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
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

async fn list_objects(a: args::ListArgs, snapshots: bool) -> Result<ExitCode> {
    use lifeboat_storage::keys::Key;
    let client = replica_url::open(&a.url).await?;
    let cat = lifeboat_agent::catalog::Catalog::load(client.as_ref()).await?;
    let only: Option<lifeboat_wal::Generation> = match &a.generation {
        Some(g) => Some(g.parse().context("--generation takes 16 hex digits")?),
        None => None,
    };
    let mut rows = Vec::new();
    for (g, o) in &cat.generations {
        if only.is_some_and(|x| x != *g) {
            continue;
        }
        let objs = if snapshots { &o.snapshots } else { &o.segments };
        for obj in objs {
            let (first, last, time_ms) = match obj.key {
                Key::Snapshot { txid, time_ms, .. } => (txid, txid, time_ms),
                Key::Segment {
                    first,
                    last,
                    time_ms,
                    ..
                } => (first, last, time_ms),
            };
            rows.push(ObjectRow {
                generation: g.to_string(),
                key: obj.name.clone(),
                first_txid: first.to_string(),
                last_txid: last.to_string(),
                time: lifeboat_agent::restore::fmt_time(time_ms),
                bytes: obj.size,
            });
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<16}  {:<16}  {:<16}  {:<24}  {:>12}",
            "generation",
            if snapshots { "txid" } else { "first txid" },
            if snapshots { "" } else { "last txid" },
            "time",
            "bytes"
        );
        for r in &rows {
            println!(
                "{:<16}  {:<16}  {:<16}  {:<24}  {:>12}",
                r.generation,
                r.first_txid,
                if snapshots { "" } else { r.last_txid.as_str() },
                r.time,
                r.bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_generations(rows: &[lifeboat_agent::verify::GenerationSummary], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    println!(
        "{:<16}  {:>4}  {:>6}  {:>12}  {:<16}  {:<24}  {:<24}",
        "generation", "snap", "segs", "bytes", "last txid", "from", "to"
    );
    for r in rows {
        println!(
            "{:<16}  {:>4}  {:>6}  {:>12}  {:<16}  {:<24}  {:<24}",
            r.generation,
            r.snapshots,
            r.segments,
            r.bytes,
            r.last_txid.as_deref().unwrap_or("-"),
            r.from.as_deref().unwrap_or("-"),
            r.to.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

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
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .context("--timestamp before 1970")?
        .as_millis() as u64)
}

async fn restore(r: args::RestoreArgs) -> Result<ExitCode> {
    use lifeboat_agent::restore::{self as rs, Target};
    if r.if_db_not_exists && r.output.exists() {
        println!(
            "{} exists; nothing to do (--if-db-not-exists)",
            r.output.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let client = replica_url::open(&r.url).await?;
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
            plan.snapshot.name, plan.snapshot.size
        );
        for s in &plan.segments {
            println!("  segment    {} ({} bytes)", s.name, s.size);
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
    println!(
        "restored {} to generation {} txid {} ({}): {} pages of {} bytes, checksum {} verified, \
         integrity_check ok ({} objects, {} bytes in {:.2}s)",
        r.output.display(),
        report.generation,
        report.txid,
        rs::fmt_time(report.time_ms),
        report.pages,
        report.page_size,
        report.checksum,
        report.objects,
        report.bytes,
        report.seconds
    );
    Ok(ExitCode::SUCCESS)
}

fn rusqlite_version() -> &'static str {
    lifeboat_agent::sqlite_version()
}

/// SIGINT and SIGTERM cancel `token`; a second signal exits at once.
fn spawn_signal_handler(token: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: final sync, then exit (signal again to exit at once)");
        token.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::warn!("second signal: exiting without a final sync");
        std::process::exit(130);
    });
    Ok(())
}
