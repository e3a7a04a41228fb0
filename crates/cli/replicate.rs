//! `lifeboat replicate`: replicate until SIGINT or SIGTERM, then sync a last time.

use std::process::ExitCode;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::args::ReplicateArgs;
use crate::config::{self, Flags, Source};
use crate::http;
use crate::lease;

pub async fn replicate(a: ReplicateArgs) -> Result<ExitCode> {
    // Signals first: a SIGTERM during start-up must still end in a final sync.
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;
    let src = match &a.dir_of_databases {
        // The first positional argument is then the first URL.
        Some(spec) => Source::dir(
            spec.clone(),
            a.db.iter()
                .map(|p| p.to_string_lossy().into_owned())
                .chain(a.urls.iter().cloned())
                .collect(),
        )?,
        None => Source::new(a.config.clone(), a.db.clone(), a.urls.clone())?,
    };
    let flags = Flags {
        puts_per_second: a.puts_per_second,
        ..a.agent.flags()
    };
    raise_open_files_limit();
    crate::neighbours::warn_all(&src).await;
    let mut dbs = config::databases(&src, &flags).await?;
    let keepers = if a.lease {
        lease::hold(&mut dbs, &a.agent.lease_flags).await?
    } else {
        Vec::new()
    };
    config::with_dirs(&mut dbs, &a.agent.dirs)?;
    let folders = config::folders(&src, &flags).await?;
    let mut endpoint = Ok(());
    let mut flushes = Vec::new();
    let r = lifeboat_agent::supervisor::replicate(dbs, folders, shutdown.clone(), |registry| {
        // The configured databases start first, in order: the ones the keepers hold.
        let running = registry.snapshot();
        for (k, r) in keepers.iter().zip(&running) {
            k.show_in(r.status.clone());
        }
        flushes = running.iter().map(|r| r.flush.clone()).collect();
        if let Some(addr) = &a.agent.health_addr {
            endpoint = http::serve_agents(addr, registry);
            if endpoint.is_err() {
                shutdown.cancel();
            }
        }
    })
    .await;
    lease::release_all(keepers.into_iter().zip(flushes).collect(), r.is_ok()).await;
    r?;
    endpoint?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the soft limit on open files to the hard one: each database holds a few descriptors
/// open (its connections, its WAL), and a folder of a thousand databases passes the usual
/// default of 1024.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
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
