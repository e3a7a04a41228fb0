//! The `lifeboat` command: argument parsing, configuration, logging and signals around the agent.
//! No replication logic lives here.

mod args;
mod config;
mod logging;
mod replica_url;

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
            lifeboat_agent::agent::replicate(dbs, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(r) => {
            let client = replica_url::open(&r.url).await?;
            let target = match r.txid {
                Some(t) => lifeboat_agent::restore::Target::TxId(
                    t.parse()
                        .context("--txid takes 16 hex digits, as `lifeboat` prints them")?,
                ),
                None => lifeboat_agent::restore::Target::Latest,
            };
            let generation = match &r.generation {
                Some(g) => Some(g.parse().context("--generation takes 16 hex digits")?),
                None => None,
            };
            let opts = lifeboat_agent::restore::RestoreOptions {
                output: r.output.clone(),
                generation,
                target,
                parallelism: r.parallelism,
                force: r.force,
            };
            let report = lifeboat_agent::restore::restore(client.as_ref(), &opts)
                .await
                .with_context(|| format!("restore from {} failed", client.describe()))?;
            println!(
                "restored {} to generation {} txid {}: {} pages of {} bytes, checksum {} verified, \
                 integrity_check ok ({} objects, {} bytes in {:.2}s)",
                r.output.display(),
                report.generation,
                report.txid,
                report.pages,
                report.page_size,
                report.checksum,
                report.objects,
                report.bytes,
                report.seconds
            );
            Ok(ExitCode::SUCCESS)
        }
    }
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
