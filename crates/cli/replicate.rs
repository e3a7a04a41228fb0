//! `lifeboat replicate`: replicate until SIGINT or SIGTERM, then sync a last time.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::args::ReplicateArgs;
use crate::config::{self, Flags, Source};
use crate::http;

pub async fn replicate(a: ReplicateArgs) -> Result<ExitCode> {
    // Signals first: a SIGTERM during start-up must still end in a final sync.
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let src = Source::new(a.config.clone(), a.db.clone(), a.urls.clone())?;
    let flags = Flags {
        puts_per_second: a.puts_per_second,
        health_max_lag: a.health_max_lag,
        ..Flags::from(&a.keep)
    };
    crate::neighbours::warn_all(&src).await;
    let mut dbs = config::databases(&src, &flags).await?;
    config::with_dirs(&mut dbs, &a.dirs)?;
    let mut endpoint = Ok(());
    lifeboat_agent::agent::replicate(dbs, shutdown.clone(), |handles| {
        if let Some(addr) = &a.health_addr {
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
