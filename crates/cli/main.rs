//! The `lifeboat` command: argument parsing, configuration, logging and signals around the agent.
//! No replication logic lives here, and this file only dispatches: each command has a module.

mod args;
mod config;
mod databases;
mod drill;
mod folder;
mod http;
mod http_folders;
mod human;
mod inspect;
mod lease;
mod logging;
mod memory;
mod neighbours;
mod progress;
mod prune;
mod replica_url;
mod replicate;
mod restore;
mod run;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use args::{Args, Command};

fn main() -> ExitCode {
    let args = Args::parse();
    // Only for the commands that stay resident beside the app (see `memory`): a restore or a
    // drill reuses its large buffers, which the defaults serve better.
    if matches!(args.command, Command::Replicate(_) | Command::Run(_)) {
        memory::tune_allocator();
    }
    let log = args.log.clone();
    logging::init(&log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Replication passes run on blocking threads (at most 8 at once, see the agent's
        // scheduler); an idle agent lets them go soon rather than keeping them for 10 s.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeboat: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            logging::report_error(&log, &e);
            ExitCode::from(1)
        }
    }
}

async fn dispatch(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Version => {
            println!(
                "lifeboat {} (replica format {}, SQLite {})",
                env!("CARGO_PKG_VERSION"),
                lifeboat_wal::FORMAT_VERSION,
                lifeboat_agent::sqlite_version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Replicate(a) => replicate::replicate(a).await,
        Command::Restore(a) => restore::restore(a).await,
        Command::Databases(a) => databases::databases(a).await,
        Command::Drill(a) => drill::drill(a).await,
        Command::Drills(a) => drill::list(a).await,
        Command::Run(a) => run::run(a).await,
        Command::Generations(a) => inspect::generations(a).await,
        Command::Snapshots(a) => inspect::list_objects(a, inspect::Objects::Snapshots).await,
        Command::Segments(a) => inspect::list_objects(a, inspect::Objects::Segments).await,
        Command::Verify(a) => inspect::verify(a).await,
        Command::Prune(a) => prune::prune(a).await,
        Command::Sync(a) => http::sync_command(a).await,
    }
}
