//! Durable acknowledgements: a caller waits until every transaction committed before its call
//! is in every replica (`POST /sync`, `lifeboat sync`), so an app can acknowledge a write that
//! must never be lost only after that.
//!
//! A caller takes a ticket and wakes the database's task (see `scheduler`); the task reads the
//! highest ticket *before* a pass, runs the pass whatever the PUT budget says, and if the pass
//! left every replica caught up (nothing pending, nothing halted), settles every ticket up to the
//! one it read. A commit made before a call is in the WAL before the pass that settles its ticket
//! starts reading, so that pass shipped it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Where a replica stood when a sync was settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Synced {
    /// The replica.
    pub replica: String,
    /// Its generation (16 hex digits).
    pub generation: String,
    /// The last transaction in it (16 hex digits).
    pub txid: String,
}

#[derive(Debug, Default)]
struct State {
    requested: u64,
    settled: u64,
    at: Vec<Synced>,
    stopped: bool,
}

/// The sync requests of one database.
#[derive(Debug, Default)]
pub struct Flush {
    state: Mutex<State>,
    settled: Condvar,
    wake: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

/// Why a sync did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotSynced {
    /// The deadline passed first (a replica is slow, failing or halted).
    Timeout,
    /// Replication of this database has stopped (the app exited, or the lease was handed over).
    Stopped,
}

impl Flush {
    pub(crate) fn set_waker(&self, wake: Arc<tokio::sync::Notify>) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
    }

    /// Blocks until every transaction committed before this call is in every replica (returns
    /// where each replica stands then), or `timeout` passes.
    pub fn sync(&self, timeout: Duration) -> Result<Vec<Synced>, NotSynced> {
        let deadline = Instant::now() + timeout;
        let ticket = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.stopped {
                return Err(NotSynced::Stopped);
            }
            s.requested += 1;
            s.requested
        };
        if let Some(w) = &*self.wake.lock().unwrap_or_else(|e| e.into_inner()) {
            // A permit is kept if the task is not waiting now: it looks at once when it next does.
            w.notify_one();
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.settled >= ticket {
                return Ok(s.at.clone());
            }
            if s.stopped {
                return Err(NotSynced::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NotSynced::Timeout);
            }
            s = self
                .settled
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The highest ticket taken, if some is not settled yet (read it before a pass).
    pub(crate) fn wanted(&self) -> Option<u64> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.requested > s.settled).then_some(s.requested)
    }

    /// Settles every ticket up to `ticket`: a pass that started after it was taken left every
    /// replica caught up, at `at`.
    pub(crate) fn settle(&self, ticket: u64, at: Vec<Synced>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if ticket > s.settled {
            s.settled = ticket;
            s.at = at;
        }
        self.settled.notify_all();
    }

    /// Where every replica stood at the last settled sync (after the final sync on stop: where
    /// this agent stopped), if one was.
    pub fn last_synced(&self) -> Option<Vec<Synced>> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.settled > 0).then(|| s.at.clone())
    }

    /// Replication stopped: pending and later calls fail at once.
    pub(crate) fn stop(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stopped = true;
        self.settled.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_returns_once_a_pass_started_after_it_settles() {
        let f = Arc::new(Flush::default());
        let wake = Arc::new(tokio::sync::Notify::new());
        f.set_waker(wake.clone());
        let at = vec![Synced {
            replica: "r".into(),
            generation: "g".into(),
            txid: "t".into(),
        }];
        // A pass that started before the call settles nothing for it.
        assert_eq!(f.wanted(), None);
        let caller = {
            let f = f.clone();
            std::thread::spawn(move || f.sync(Duration::from_secs(10)))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), wake.notified()).await })
            .expect("the call wakes the task");
        let ticket = f.wanted().expect("a ticket is waiting");
        f.settle(ticket, at.clone());
        assert_eq!(caller.join().unwrap(), Ok(at));
        assert_eq!(f.wanted(), None);
    }

    #[test]
    fn a_call_times_out_and_a_stopped_database_answers_at_once() {
        let f = Flush::default();
        assert_eq!(f.sync(Duration::from_millis(20)), Err(NotSynced::Timeout));
        f.stop();
        let t = Instant::now();
        assert_eq!(f.sync(Duration::from_secs(10)), Err(NotSynced::Stopped));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
