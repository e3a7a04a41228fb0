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
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| args.log_level.clone());
    let filter = filter(&spec);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The file watcher (`notify`) logs every file-system event at trace level (and some at debug):
/// with the log file in a watched folder, beside the database, each line written is an event
/// that writes another line, as fast as the disk takes them (183 MB in 5 s, a whole core). So a
/// filter that turns on debug or trace keeps `notify` at info, unless it names `notify` itself.
fn filter(spec: &str) -> EnvFilter {
    let f = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let verbose = f
        .max_level_hint()
        .is_some_and(|l| l > tracing_subscriber::filter::LevelFilter::INFO);
    if verbose && !spec.contains("notify") {
        f.add_directive("notify=info".parse().expect("a valid directive"))
    } else {
        f
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

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn the_file_watcher_stays_at_info_unless_named() {
        for (spec, has_cap) in [
            ("trace", true),
            ("info,lifeboat_agent=debug", true),
            ("info", false),
            ("warn", false),
            ("trace,notify=trace", false),
        ] {
            let f = filter(spec);
            assert_eq!(
                f.to_string().contains("notify=info"),
                has_cap,
                "{spec}: {f}"
            );
        }
        assert_eq!(filter("info").max_level_hint(), Some(LevelFilter::INFO));
    }
}
