//! Progress bars for long operations (restore, verify, drill, prune): on stderr, only when it is
//! a terminal, cleared when done (each command then prints a one-line summary). Logs and
//! redirected output never see them.

use std::io::IsTerminal;
use std::sync::Arc;

use lifeboat_agent::restore::Progress;

/// What a bar counts.
#[derive(Clone, Copy)]
pub enum Unit {
    /// Bytes downloaded or read.
    Bytes,
    /// Objects.
    Objects,
}

/// A bar labelled `label` when stderr is a terminal; `None` otherwise.
pub fn bar(label: &str, unit: Unit) -> Option<Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let template = match unit {
        Unit::Bytes => "[{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        Unit::Objects => "[{bar:40}] {pos}/{len} objects eta {eta}",
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{label} {template}"))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Some(Progress(Arc::new(move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        if done >= total && total > 0 {
            bar.finish_and_clear();
        }
    })))
}
