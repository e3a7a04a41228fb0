//! One file-system watcher for the whole agent, routing each event to what it concerns.
//!
//! Every database's `-wal` file is a *route*: an event on it wakes that database (a
//! [`Notify`], which holds at most one wake-up, so a burst of events is one pass). A watched
//! folder of databases is a *folder route*: events on files in it that are not a running
//! database's WAL are handed to the folder by name (a new database, a removed one).
//!
//! One inotify instance and one thread serve every database, and each event is looked up once,
//! so the cost of an event does not grow with the number of databases (a watcher per database
//! on a shared folder made every event read by all of them). Nothing here logs per event: a log
//! file inside a watched folder would otherwise feed the watcher its own output.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tracing::warn;

/// What a folder of databases hears about: a file name in it that something happened to
/// (`None`: events may have been lost; look at everything).
pub type FolderEvent = Option<OsString>;

#[derive(Default)]
struct Dir {
    /// File name → the database to wake.
    files: HashMap<OsString, Arc<Notify>>,
    /// The folder of databases, if this folder is one.
    folder: Option<UnboundedSender<FolderEvent>>,
}

impl Dir {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.folder.is_none()
    }
}

#[derive(Default)]
struct Routes {
    dirs: HashMap<PathBuf, Dir>,
}

/// The agent's watcher. Cheap to share; see the module docs.
pub struct Watcher {
    routes: Arc<Mutex<Routes>>,
    /// `None` when the platform offers no watcher (then databases poll).
    inner: Mutex<Option<notify::RecommendedWatcher>>,
}

/// A registration; dropping it removes the route (and the folder's watch once nothing uses it).
pub struct Route {
    watcher: Arc<Watcher>,
    dir: PathBuf,
    name: Option<OsString>,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.watcher.remove(&self.dir, self.name.as_deref());
    }
}

impl Watcher {
    /// The process's watcher, started on first use.
    pub fn shared() -> Arc<Watcher> {
        static SHARED: OnceLock<Arc<Watcher>> = OnceLock::new();
        SHARED.get_or_init(Watcher::new).clone()
    }

    fn new() -> Arc<Watcher> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let r = routes.clone();
        let mut pace = Pace::default();
        let inner = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let file = match ev {
                Ok(ev) => {
                    route(&r, &ev);
                    ev.paths.into_iter().next()
                }
                // The kernel queue overflowed or the watcher failed: wake everyone.
                Err(_) => {
                    wake_all(&r);
                    None
                }
            };
            pace.after_event(file);
        });
        let inner = match inner {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "file watching unavailable; polling only");
                None
            }
        };
        Arc::new(Watcher {
            routes,
            inner: Mutex::new(inner),
        })
    }

    /// Wakes `wake` on changes to file `path`. `false` (polling only) if its folder cannot
    /// be watched.
    pub fn watch_file(self: &Arc<Self>, path: &Path, wake: Arc<Notify>) -> (Route, bool) {
        let (dir, name) = split(path);
        let name = name.to_os_string();
        let first = {
            let mut r = self.routes.lock().unwrap();
            let d = r.dirs.entry(dir.clone()).or_default();
            let first = d.is_empty();
            d.files.insert(name.clone(), wake);
            first
        };
        let ok = self.add_watch(&dir, first);
        (
            Route {
                watcher: self.clone(),
                dir,
                name: Some(name),
            },
            ok,
        )
    }

    /// Sends the names of files in folder `dir` that events concern (other than the WALs of
    /// databases routed with [`watch_file`](Self::watch_file)) to `tx`.
    pub fn watch_folder(
        self: &Arc<Self>,
        dir: &Path,
        tx: UnboundedSender<FolderEvent>,
    ) -> (Route, bool) {
        let dir = dir.to_path_buf();
        let first = {
            let mut r = self.routes.lock().unwrap();
            let d = r.dirs.entry(dir.clone()).or_default();
            let first = d.is_empty();
            d.folder = Some(tx);
            first
        };
        let ok = self.add_watch(&dir, first);
        (
            Route {
                watcher: self.clone(),
                dir,
                name: None,
            },
            ok,
        )
    }

    /// Whether the folder is watched (the routes lock is never held here: the watcher's own
    /// thread takes it for every event, and `watch` waits for that thread).
    fn add_watch(&self, dir: &Path, first: bool) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let Some(w) = inner.as_mut() else {
            return false;
        };
        if !first {
            return true;
        }
        match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => true,
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot watch folder; polling only");
                false
            }
        }
    }

    fn remove(&self, dir: &Path, name: Option<&OsStr>) {
        let last = {
            let mut r = self.routes.lock().unwrap();
            let Some(d) = r.dirs.get_mut(dir) else { return };
            match name {
                Some(n) => {
                    d.files.remove(n);
                }
                None => d.folder = None,
            }
            let last = d.is_empty();
            if last {
                r.dirs.remove(dir);
            }
            last
        };
        if last {
            if let Some(w) = self.inner.lock().unwrap().as_mut() {
                let _ = w.unwatch(dir);
            }
        }
    }
}

/// Events that follow the previous one this closely came from the same read of the kernel's
/// queue (the watcher's thread did not wait for them).
const SAME_READ: Duration = Duration::from_micros(30);
/// Events that follow the previous one within this come from a busy app.
const BUSY: Duration = Duration::from_millis(50);
/// How long the watcher's thread rests after waking for a busy app's event.
const REST: Duration = Duration::from_millis(5);
/// How long it rests when the event concerns the same file as the one before: one busy
/// database, whose writes the kernel folds into one event however long the rest. At most 50
/// wake-ups a second, however fast the app commits: a database's task looks at most every
/// 50 ms while its pass is held back ([`crate::scheduler::HELD_BACK_LOOKS`]), so waking more
/// often bought nothing there; where a pass is not held back, an event that comes during a
/// rest reaches its database at most this late.
const REST_ONE_FILE: Duration = Duration::from_millis(20);

/// Paces the watcher's thread under a busy app. Every write to a WAL is an event, and an app
/// committing thousands of transactions a second made the thread wake for each one: about half
/// of the agent's CPU went to those wake-ups, though a database's task needs one wake-up per
/// look and looks at most every 50 ms while its pass is held back. So after waking for an event
/// that came soon after the previous one, the thread rests: meanwhile the kernel folds the
/// app's writes into the one event queued last (inotify merges an event identical to it), and
/// the next read finds a single event. The first event after a quiet spell is routed at once.
///
/// The rest is [`REST_ONE_FILE`] when the event concerns the same file as the previous one
/// (one busy database: at 200 commits a second a 5 ms rest still woke the thread for each
/// commit), and [`REST`] otherwise: the writes of many busy databases interleave and do not
/// fold, and a longer rest there only lets the queue grow (a new database in a folder of sixty
/// busy ones was seen seconds late with 20 ms).
#[derive(Default)]
struct Pace {
    /// When the previous event was routed.
    last: Option<Instant>,
    /// The file it concerned.
    file: Option<PathBuf>,
}

impl Pace {
    /// Rests if the event just routed (on `file`) came soon after the previous one, but not in
    /// the same read. Returns how long it rested.
    fn after_event(&mut self, file: Option<PathBuf>) -> Option<Duration> {
        let gap = self.last.map(|t| t.elapsed());
        let rest = gap.is_some_and(|g| g > SAME_READ && g < BUSY).then(|| {
            match file.is_some() && file == self.file {
                true => REST_ONE_FILE,
                false => REST,
            }
        });
        if let Some(r) = rest {
            std::thread::sleep(r);
        }
        self.file = file;
        self.last = Some(Instant::now());
        rest
    }
}

/// A file's folder (`.` for a bare name) and name.
fn split(path: &Path) -> (PathBuf, &OsStr) {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    (dir, path.file_name().unwrap_or(path.as_os_str()))
}

fn route(routes: &Mutex<Routes>, ev: &notify::Event) {
    if ev.need_rescan() {
        return wake_all(routes);
    }
    if !wakes(&ev.kind) {
        return;
    }
    let r = routes.lock().unwrap();
    for p in &ev.paths {
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            continue;
        };
        let Some(d) = r.dirs.get(dir) else { continue };
        match d.files.get(name) {
            Some(n) => n.notify_one(),
            None => {
                if let Some(tx) = &d.folder {
                    let _ = tx.send(Some(name.to_os_string()));
                }
            }
        }
    }
}

fn wake_all(routes: &Mutex<Routes>) {
    let r = routes.lock().unwrap();
    for d in r.dirs.values() {
        d.files.values().for_each(|n| n.notify_one());
        if let Some(tx) = &d.folder {
            let _ = tx.send(None);
        }
    }
}

/// Whether an event can mean new frames or a new or removed file: every write raises a
/// modify event of its own, so no access event (open, read, close) wakes anyone. The agent
/// opens, reads and closes the WAL itself; waking on those would make every pass schedule the
/// next (closing a connection opened for writing raises "closed after writing" even when
/// nothing was written).
fn wakes(kind: &notify::EventKind) -> bool {
    !matches!(kind, notify::EventKind::Access(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_reach_only_the_file_they_concern_and_the_folder_hears_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let w = Watcher::new();
        let (a, b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (_ra, ok) = w.watch_file(&dir.path().join("a.db-wal"), a.clone());
        assert!(ok);
        let (_rb, _) = w.watch_file(&dir.path().join("b.db-wal"), b.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (rf, _) = w.watch_folder(dir.path(), tx);
        std::fs::write(dir.path().join("a.db-wal"), b"x").unwrap();
        tokio::time::timeout(Duration::from_secs(5), a.notified())
            .await
            .expect("a's WAL wakes a");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), b.notified())
                .await
                .is_err(),
            "b was woken by a's event"
        );
        std::fs::write(dir.path().join("c.db"), b"x").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.as_deref(), Some(OsStr::new("c.db")));
        drop(rf);
        assert!(
            w.routes.lock().unwrap().dirs[&std::fs::canonicalize(dir.path()).unwrap()]
                .folder
                .is_none()
        );
    }

    #[test]
    fn the_thread_rests_only_between_reads_of_a_busy_apps_events() {
        let mut p = Pace::default();
        let wal = || Some(PathBuf::from("/d/a.db-wal"));
        assert_eq!(
            p.after_event(wal()),
            None,
            "the first event is not followed by a rest"
        );
        // The next event of the same read (microseconds later): no rest.
        p.last = Some(Instant::now());
        assert_eq!(p.after_event(wal()), None);
        // A wake-up for an event 1 ms after the previous one on the same file: one busy
        // database, the long rest.
        p.last = Instant::now().checked_sub(Duration::from_millis(1));
        let t = Instant::now();
        assert_eq!(p.after_event(wal()), Some(REST_ONE_FILE));
        assert!(t.elapsed() >= REST_ONE_FILE);
        // On another file (many busy databases): the short rest.
        p.last = Instant::now().checked_sub(Duration::from_millis(1));
        assert_eq!(
            p.after_event(Some(PathBuf::from("/d/b.db-wal"))),
            Some(REST)
        );
        p.last = Instant::now().checked_sub(Duration::from_millis(1));
        assert_eq!(p.after_event(wal()), Some(REST));
        // After a quiet spell: routed and no rest.
        p.last = Instant::now().checked_sub(BUSY * 2);
        assert_eq!(p.after_event(wal()), None);
    }
}
