//! Progress bars for long operations (restore, verify, drill, prune, a snapshot of a large
//! database under `replicate` or `run`): on stderr, only when it is
//! a terminal, cleared when done (each command then prints a one-line summary). Logs and
//! redirected output never see them.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

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
    let style = indicatif::ProgressStyle::with_template(&format!("{label} {template}"))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    // One bar per run of the operation: created on its first report, gone when it completes,
    // so one callback serves every snapshot an agent takes.
    let current: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);
    Some(Progress(Arc::new(move |done, total| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        let bar = current.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(style.clone());
            b
        });
        bar.set_length(total);
        bar.set_position(done);
        if done >= total && total > 0 {
            bar.finish_and_clear();
            *current = None;
        }
    })))
}
