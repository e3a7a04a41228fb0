//! A folder of databases replicated as one unit: every database in it whose name matches a
//! pattern (`*.db` by default) is replicated under its own name inside each replica
//! (`<replica>/<name>`), sharing that replica's client. Databases created later are picked up
//! as soon as the shared watcher reports them (or at the next rescan), removed ones are
//! released without a final sync, and their lock file is removed.
//!
//! A file is taken for a database only once it begins with SQLite's header, so an app that has
//! just created an empty file is not raced. A database that cannot be started (another agent
//! holds it, say) is logged and tried again at the next rescan, never on every event: a log
//! file in the folder must not make the agent log about it in a loop.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lifeboat_storage::prefixed::Prefixed;
use lifeboat_storage::ReplicaClient;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agent::{DbConfig, DbHandle, Registry};
use crate::replica::ReplicaOverrides;
use crate::{Error, Options, Result};

/// The pattern used when none is given.
pub const DEFAULT_PATTERN: &str = "*.db";

/// How often the folder is listed again without an event (a safety net for lost events).
const RESCAN: Duration = Duration::from_secs(60);

/// Databases started at once when the agent starts with a full folder.
const STARTING_AT_ONCE: usize = 16;

/// Files next to a database that are never databases themselves.
const SIDE_FILES: [&str; 4] = ["-wal", "-shm", "-journal", "-lifeboat.lock"];

/// A folder of databases and where to replicate them.
#[derive(Clone, Debug)]
pub struct FolderConfig {
    /// The folder.
    pub dir: PathBuf,
    /// Which file names are databases (`*` and `?` wildcards).
    pub pattern: String,
    /// The replicas; database `<name>` goes to `<replica>/<name>` in each.
    pub replicas: Vec<Arc<dyn ReplicaClient>>,
    /// Tuning, for every database of the folder.
    pub options: Options,
    /// Per-replica settings, by index into `replicas`.
    pub overrides: Vec<ReplicaOverrides>,
    /// Databases just restored from the replica (by `lifeboat run`): they start a new
    /// generation rather than resuming (see [`Options::resume`]).
    pub restored: std::collections::HashSet<String>,
}

impl FolderConfig {
    /// `spec` is a folder, or a folder and a pattern (`/data/tenants/*.sqlite`).
    pub fn split_spec(spec: &Path) -> (PathBuf, String) {
        match spec.file_name().and_then(|n| n.to_str()) {
            Some(n) if n.contains(['*', '?']) => (
                spec.parent().unwrap_or(Path::new(".")).to_path_buf(),
                n.to_string(),
            ),
            _ => (spec.to_path_buf(), DEFAULT_PATTERN.to_string()),
        }
    }

    /// The configuration of database `name` of the folder.
    pub fn database(&self, name: &str) -> Result<DbConfig> {
        let mut replicas: Vec<Arc<dyn ReplicaClient>> = Vec::new();
        for r in &self.replicas {
            let p = Prefixed::new(r.clone(), name)?;
            replicas.push(Arc::new(p));
        }
        Ok(DbConfig {
            path: self.dir.join(name),
            replicas,
            options: Options {
                resume: self.options.resume && !self.restored.contains(name),
                ..self.options.clone()
            },
            overrides: self.overrides.clone(),
        })
    }

    /// Whether file `name` of the folder may be a database (by name only).
    pub fn wants(&self, name: &str) -> bool {
        !SIDE_FILES.iter().any(|s| name.ends_with(s)) && matches(&self.pattern, name)
    }

    /// The names of the databases in the folder now, sorted.
    pub fn scan(&self) -> Result<Vec<String>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("list folder {}", self.dir.display()), e))?;
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| self.wants(n) && is_database(&self.dir.join(n)))
            .collect();
        out.sort();
        Ok(out)
    }
}

/// Whether `name` matches `pattern`: `*` is any run of characters, `?` any one.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `path` is a regular file that begins with SQLite's header.
pub fn is_database(path: &Path) -> bool {
    let mut b = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
        && &b == b"SQLite format 3\0"
}

/// A running folder: its task ends (after every database's final sync) when the supervisor's
/// token is cancelled.
pub(crate) struct FolderHandle {
    pub task: tokio::task::JoinHandle<Result<()>>,
}

/// Starts every database in the folder (a database that fails to start is logged and tried
/// again later), then follows the folder until `stop`.
pub(crate) async fn start(
    cfg: FolderConfig,
    stop: CancellationToken,
    registry: Arc<Registry>,
) -> Result<FolderHandle> {
    if !cfg.dir.is_dir() {
        return Err(Error::io(
            format!("open folder of databases {}", cfg.dir.display()),
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
        ));
    }
    let mut f = Folder {
        cfg: Arc::new(cfg),
        running: HashMap::new(),
        failed: HashMap::new(),
        stop,
        registry,
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (route, watched) = crate::watcher::Watcher::shared().watch_folder(&f.cfg.dir, tx);
    f.rescan().await;
    info!(
        dir = %f.cfg.dir.display(),
        pattern = %f.cfg.pattern,
        databases = f.running.len(),
        watched,
        "replicating a folder of databases"
    );
    let task = tokio::spawn(async move {
        let _route = route;
        f.follow(rx, watched).await
    });
    Ok(FolderHandle { task })
}

struct Folder {
    cfg: Arc<FolderConfig>,
    running: HashMap<OsString, DbHandle>,
    /// Names that failed to start; tried again at the next rescan only.
    failed: HashMap<OsString, String>,
    stop: CancellationToken,
    registry: Arc<Registry>,
}

impl Folder {
    async fn follow(
        mut self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::watcher::FolderEvent>,
        watched: bool,
    ) -> Result<()> {
        let every = if watched {
            RESCAN
        } else {
            self.cfg.options.poll_interval
        };
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                ev = rx.recv() => match ev {
                    Some(Some(name)) => self.look_at(name).await,
                    Some(None) => self.rescan().await,
                    None => break,
                },
                _ = tokio::time::sleep(every) => self.rescan().await,
            }
        }
        let mut first = None;
        for (_, h) in self.running.drain() {
            let path = h.path().to_path_buf();
            if let Err(e) = h.join().await {
                error!(db = %path.display(), error = %e.chain(), "final sync failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// An event on file `name` of the folder.
    async fn look_at(&mut self, name: OsString) {
        let Some(s) = name.to_str() else { return };
        // The first commit of a new database in WAL mode creates its `-wal`.
        let db = s.strip_suffix("-wal").unwrap_or(s);
        if !self.cfg.wants(db) {
            return;
        }
        let db = OsString::from(db);
        if self.running.contains_key(&db) {
            if !self.cfg.dir.join(&db).exists() {
                self.release(&db).await;
            }
        } else if !self.failed.contains_key(&db) && is_database(&self.cfg.dir.join(&db)) {
            self.start_all(vec![db]).await;
        }
    }

    /// Lists the folder: starts what is new (or failed before), releases what is gone.
    async fn rescan(&mut self) {
        let names = match self.cfg.scan() {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e.chain(), "cannot list the folder of databases; will try again");
                return;
            }
        };
        self.failed.clear();
        let now: std::collections::HashSet<OsString> =
            names.into_iter().map(OsString::from).collect();
        let gone: Vec<OsString> = self
            .running
            .keys()
            .filter(|n| !now.contains(*n))
            .cloned()
            .collect();
        for n in gone {
            self.release(&n).await;
        }
        let new: Vec<OsString> = now
            .into_iter()
            .filter(|n| !self.running.contains_key(n))
            .collect();
        self.start_all(new).await;
    }

    /// Starts databases, a few at once.
    async fn start_all(&mut self, names: Vec<OsString>) {
        let rt = Handle::current();
        let mut set = tokio::task::JoinSet::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(STARTING_AT_ONCE));
        for name in names {
            let (cfg, rt, stop, gate) = (
                self.cfg.clone(),
                rt.clone(),
                self.stop.child_token(),
                gate.clone(),
            );
            set.spawn(async move {
                let _permit = gate.acquire_owned().await;
                let s = name.to_string_lossy().into_owned();
                let r = match cfg.database(&s) {
                    Ok(db) => {
                        tokio::task::spawn_blocking(move || crate::agent::start(db, rt, stop))
                            .await
                            .map_err(|e| Error::join("starting a replicator", e))
                            .and_then(|r| r)
                    }
                    Err(e) => Err(e),
                };
                (name, r)
            });
        }
        while let Some(j) = set.join_next().await {
            let Ok((name, r)) = j else { continue };
            match r {
                Ok(h) => {
                    self.registry.add(&h);
                    self.running.insert(name, h);
                }
                Err(e) => {
                    warn!(db = %self.cfg.dir.join(&name).display(), error = %e.chain(), "cannot replicate this database; will try again at the next rescan");
                    self.failed.insert(name, e.to_string());
                }
            }
        }
    }

    /// Stops a database whose file is gone, and removes its lock file.
    async fn release(&mut self, name: &OsString) {
        let Some(h) = self.running.remove(name) else {
            return;
        };
        let path = h.path().to_path_buf();
        self.registry.remove(&path);
        if let Err(e) = h.release().await {
            warn!(db = %path.display(), error = %e.chain(), "stopping a removed database");
        }
        let _ = std::fs::remove_file(crate::files::sibling(&path, "-lifeboat.lock"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names() {
        assert!(matches("*.db", "acme.db"));
        assert!(matches("*.db", ".db"));
        assert!(!matches("*.db", "acme.db-wal"));
        assert!(!matches("*.db", "acme.sqlite"));
        assert!(matches("tenant-?.db", "tenant-7.db"));
        assert!(!matches("tenant-?.db", "tenant-17.db"));
        assert!(matches("*", "anything"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn side_files_are_never_databases_and_a_spec_may_carry_a_pattern() {
        let cfg = FolderConfig {
            dir: "/x".into(),
            pattern: "*".into(),
            replicas: Vec::new(),
            options: Options::default(),
            overrides: Vec::new(),
            restored: Default::default(),
        };
        assert!(cfg.wants("a.db"));
        for side in ["a.db-wal", "a.db-shm", "a.db-journal", "a.db-lifeboat.lock"] {
            assert!(!cfg.wants(side), "{side}");
        }
        assert_eq!(
            FolderConfig::split_spec(Path::new("/data/t/*.sqlite")),
            (PathBuf::from("/data/t"), "*.sqlite".to_string())
        );
        assert_eq!(
            FolderConfig::split_spec(Path::new("/data/t")),
            (PathBuf::from("/data/t"), DEFAULT_PATTERN.to_string())
        );
    }

    #[test]
    fn only_files_with_sqlites_header_are_databases() {
        let dir = tempfile::tempdir().unwrap();
        let (empty, db, text) = (
            dir.path().join("e.db"),
            dir.path().join("d.db"),
            dir.path().join("t.db"),
        );
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&text, b"hello, this is not sqlite").unwrap();
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        assert!(is_database(&db));
        assert!(!is_database(&empty));
        assert!(!is_database(&text));
        assert!(!is_database(&dir.path().join("missing.db")));
    }
}
