//! The tracing subscriber: human-readable by default, JSON on request. Logs go to stderr.
//!
//! Colours only on a terminal, and never when `NO_COLOR` is set (<https://no-color.org>): logs
//! redirected to a file or a log collector carry no escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::args::{LogArgs, LogFormat};

/// Whether stderr may carry colours: a terminal, and `NO_COLOR` unset or empty.
pub fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Reports the error that ended a command, once: as one `lifeboat: error: ...` line for people,
/// or as one log event when the logs are JSON (so a log collector sees it, and nothing else
/// repeats it).
pub fn report_error(args: &LogArgs, e: &anyhow::Error) {
    match args.log_format {
        LogFormat::Json => tracing::error!("{e:#}"),
        LogFormat::Human => eprintln!("lifeboat: error: {e:#}"),
    }
}
