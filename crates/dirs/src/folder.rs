//! Capture: the folder's current state, kept up to date cheaply.
//!
//! A [`Folder`] knows every path's [`Entry`] as last seen *stable*. What it looks at again on
//! each [`capture`](Folder::capture): the paths file-system events named, the files that were
//! still changing at the last look, and the direct children of every folder whose modification
//! time moved (a file created, removed or renamed changes its folder's mtime even when its event
//! has not arrived yet). Every `rescan_every` (and whenever events were lost) it walks the whole
//! tree. All of it is local: capturing an idle folder makes no request to any replica.
//!
//! A flush needs more: a file overwritten in place leaves its folder's mtime alone, and its event
//! may not have arrived when the flush right after the write looks. So the first look of a
//! flush ([`capture_settled`](Folder::capture_settled)) is
//! [`capture_exact`](Folder::capture_exact): it also stats every file and link it knows and
//! looks again at those whose size, mtime, ctime, inode or mode changed. That costs one `lstat`
//! per file (some 20-30 ms for 10,000 files), so the captures between flushes do not do it.
//!
//! A file is taken only once it is *stable*: its size, mtime, ctime and inode are the same
//! before and after it was hashed, and either its mtime is at least `settle` old or two looks
//! `settle` apart saw the same. A file still being written is looked at again later, never
//! shipped half. Symbolic links are recorded with their target and never followed.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::{RecursiveMode, Watcher};
use tracing::{debug, warn};

use crate::entry::{sha256_file, Entry, Kind, Stat};
use crate::manifest::State;
use crate::{Error, Result};

/// What the watcher thread has noticed since the last capture.
#[derive(Debug, Default)]
struct Events {
    dirty: BTreeSet<String>,
    rescan: bool,
}

/// One folder being captured.
pub struct Folder {
    root: PathBuf,
    name: String,
    /// Each path's entry, with the stat it was taken at (files and links).
    current: BTreeMap<String, (Entry, Option<Stat>)>,
    dir_stats: BTreeMap<String, Stat>,
    unstable: BTreeMap<String, (Stat, Instant)>,
    events: Arc<Mutex<Events>>,
    _watcher: Option<notify::RecommendedWatcher>,
    last_rescan: Option<Instant>,
    rescan_every: Duration,
    settle: Duration,
    version: u64,
    staging: Option<Staging>,
}

/// Copies of captured content, made while hashing, kept until every replica has it: a file
/// the app deletes before its upload still reaches the replicas. Bounded by `cap` bytes;
/// beyond it, content is read again from the folder at upload time.
struct Staging {
    dir: PathBuf,
    cap: u64,
    used: u64,
    files: BTreeMap<String, (tempfile::TempPath, u64)>,
}

impl std::fmt::Debug for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folder").field("root", &self.root).finish()
    }
}

impl Folder {
    /// Starts watching `root` (created if missing). `name` is its name in the replica; `wake`
    /// is told (without blocking) whenever an event arrives.
    pub fn open(
        root: &Path,
        name: &str,
        settle: Duration,
        rescan_every: Duration,
        wake: Option<std::sync::mpsc::SyncSender<()>>,
    ) -> Result<Folder> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("create folder", root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io("resolve folder", root, e))?;
        let events = Arc::new(Mutex::new(Events {
            dirty: BTreeSet::new(),
            rescan: true,
        }));
        let watcher = watch(&root, events.clone(), wake);
        Ok(Folder {
            root,
            name: name.to_string(),
            current: BTreeMap::new(),
            dir_stats: BTreeMap::new(),
            unstable: BTreeMap::new(),
            events,
            _watcher: watcher,
            last_rescan: None,
            rescan_every,
            settle,
            version: 0,
            staging: None,
        })
    }

    /// Keeps a copy of new content in `dir` (at most `cap` bytes in all) until
    /// [`release`](Folder::release)d.
    pub fn set_staging(&mut self, dir: &Path, cap: u64) {
        self.staging = Some(Staging {
            dir: dir.to_path_buf(),
            cap,
            used: 0,
            files: BTreeMap::new(),
        });
    }

    /// The staged copy of the content with this SHA-256, if one was kept.
    pub fn staged(&self, sha256: &str) -> Option<&Path> {
        self.staging.as_ref()?.files.get(sha256).map(|(p, _)| &**p)
    }

    /// Deletes the staged copies `done` says are no longer needed.
    pub fn release(&mut self, mut done: impl FnMut(&str) -> bool) {
        if let Some(st) = &mut self.staging {
            let mut freed = 0;
            st.files.retain(|h, (_, n)| {
                let keep = !done(h);
                if !keep {
                    freed += *n;
                }
                keep
            });
            st.used -= freed;
        }
    }

    /// Hashes a file, copying it to staging if there is room and it is not staged yet.
    fn hash(&mut self, abs: &Path, size: u64) -> Result<(String, u64, Option<tempfile::TempPath>)> {
        let room = self
            .staging
            .as_ref()
            .filter(|st| st.used + size <= st.cap)
            .map(|st| st.dir.clone());
        let Some(dir) = room else {
            let (h, n) = sha256_file(abs)?;
            return Ok((h, n, None));
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(&crate::staged_name_prefix())
            .tempfile_in(&dir)
            .map_err(|e| Error::io("create staging file in", &dir, e))?;
        let f = std::fs::File::open(abs).map_err(|e| Error::io("open", abs, e))?;
        let (h, n) = crate::entry::sha256_of(f, Some(tmp.as_file_mut()))
            .map_err(|e| Error::io("copy to staging", abs, e))?;
        Ok((h, n, Some(tmp.into_temp_path())))
    }

    /// The folder on disk.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its name in the replica.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Goes up by one whenever the captured state changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The stable entries.
    pub fn state(&self) -> State {
        self.current
            .iter()
            .map(|(k, (e, _))| (k.clone(), e.clone()))
            .collect()
    }

    /// Files captured, their bytes, and files still changing.
    pub fn counts(&self) -> (u64, u64, u64) {
        let (mut files, mut bytes) = (0, 0);
        for (e, _) in self.current.values() {
            if let Kind::File { size, .. } = e.kind {
                files += 1;
                bytes += size;
            }
        }
        (files, bytes, self.unstable.len() as u64)
    }

    /// Whether every file seen is captured (none still changing).
    pub fn settled(&self) -> bool {
        self.unstable.is_empty()
    }

    /// Forgets what it knows of `path` so the next capture reads it again (its content
    /// changed after it was hashed).
    pub fn invalidate(&mut self, path: &str) {
        if self.current.remove(path).is_some() {
            self.version += 1;
        }
        self.events.lock().unwrap().dirty.insert(path.to_string());
    }

    /// Brings the state up to date (see the module docs); returns whether it is settled.
    pub fn capture(&mut self) -> Result<bool> {
        self.look(false)
    }

    /// Like [`capture`](Folder::capture), and also stats every file and link it knows, looking
    /// again at those whose stat changed: a file overwritten in place whose event has not
    /// arrived yet is seen too. Costs one `lstat` per file (some 20-30 ms for 10,000 files).
    pub fn capture_exact(&mut self) -> Result<bool> {
        self.look(true)
    }

    fn look(&mut self, exact: bool) -> Result<bool> {
        let (dirty, rescan) = {
            let mut ev = self.events.lock().unwrap();
            (
                std::mem::take(&mut ev.dirty),
                std::mem::take(&mut ev.rescan),
            )
        };
        if rescan
            || self
                .last_rescan
                .is_none_or(|t| t.elapsed() >= self.rescan_every)
        {
            self.last_rescan = Some(Instant::now());
            let before = self.version;
            self.list_dir("", true)?;
            debug!(folder = %self.root.display(), changed = self.version != before, "rescanned");
        } else {
            let moved: Vec<String> = self
                .dir_stats
                .iter()
                .filter(|(rel, s)| {
                    lstat(&self.root.join(rel.as_str()))
                        .map(|m| Stat::of(&m))
                        .ok()
                        != Some(**s)
                })
                .map(|(rel, _)| rel.clone())
                .collect();
            for d in moved {
                self.list_dir(&d, false)?;
            }
            let mut again: Vec<String> = self.unstable.keys().cloned().collect();
            if exact {
                again.extend(self.stat_changed());
            }
            for p in dirty.into_iter().chain(again) {
                self.examine(&p)?;
            }
        }
        Ok(self.settled())
    }

    /// The files and links whose stat is not the one recorded with their entry (changed, gone,
    /// or now something else).
    fn stat_changed(&self) -> Vec<String> {
        self.current
            .iter()
            .filter_map(|(rel, (_, s))| {
                let s = s.as_ref()?;
                let now = lstat(&self.root.join(rel)).ok().map(|m| Stat::of(&m));
                (now.as_ref() != Some(s)).then(|| rel.clone())
            })
            .collect()
    }

    /// Captures exactly ([`capture_exact`](Folder::capture_exact)), then again until every file
    /// that was still changing at the first look has settled (those may be files the commits
    /// being shipped refer to) or `wait` has passed; returns whether they settled. Files that
    /// appear meanwhile are not waited for.
    pub fn capture_settled(&mut self, wait: Duration) -> Result<bool> {
        let deadline = Instant::now() + wait;
        self.capture_exact()?;
        let waiting: Vec<String> = self.unstable.keys().cloned().collect();
        loop {
            if waiting.iter().all(|p| !self.unstable.contains_key(p)) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep((self.settle / 4).max(Duration::from_millis(5)));
            self.capture()?;
        }
    }

    fn examine(&mut self, rel: &str) -> Result<()> {
        let abs = self.root.join(rel);
        match lstat(&abs) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.remove_tree(rel);
                Ok(())
            }
            Err(e) => Err(Error::io("stat", abs, e)),
            Ok(m) if m.is_dir() => {
                let known = matches!(
                    self.current.get(rel),
                    Some((
                        Entry {
                            kind: Kind::Dir,
                            ..
                        },
                        _
                    ))
                );
                self.set_dir(rel, &m);
                if !known {
                    self.list_dir(rel, true)?;
                }
                Ok(())
            }
            Ok(m) => self.examine_meta(rel, &m),
        }
    }

    /// Lists a folder's direct children (and, if `deep` or new, their subtrees), dropping
    /// what is gone.
    fn list_dir(&mut self, rel: &str, deep: bool) -> Result<()> {
        let abs = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let meta = match lstat(&abs) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => return self.examine(rel),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => {
                self.remove_tree(rel);
                return Ok(());
            }
            Err(e) => return Err(Error::io("stat", abs, e)),
        };
        // Recorded before listing: a change during the listing shows at the next look.
        self.dir_stats.insert(rel.to_string(), Stat::of(&meta));
        let rd = match std::fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => {
                self.remove_tree(rel);
                return Ok(());
            }
            Err(e) => return Err(Error::io("list folder", abs, e)),
        };
        let mut seen = BTreeSet::new();
        for de in rd {
            let de = de.map_err(|e| Error::io("list folder", &abs, e))?;
            let Some(name) = de.file_name().to_str().map(str::to_string) else {
                warn!(path = %de.path().display(), "file name is not UTF-8; not backed up");
                continue;
            };
            let crel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = match de.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("stat", de.path(), e)),
            };
            seen.insert(crel.clone());
            if m.is_dir() {
                let known = matches!(
                    self.current.get(&crel),
                    Some((
                        Entry {
                            kind: Kind::Dir,
                            ..
                        },
                        _
                    ))
                );
                self.set_dir(&crel, &m);
                if deep || !known {
                    self.list_dir(&crel, deep)?;
                }
            } else {
                self.examine_meta(&crel, &m)?;
            }
        }
        let gone: Vec<String> = self
            .current
            .keys()
            .chain(self.unstable.keys())
            .filter(|p| parent(p) == rel && !seen.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.remove_tree(&p);
        }
        Ok(())
    }

    fn set_dir(&mut self, rel: &str, m: &std::fs::Metadata) {
        let e = Entry {
            path: rel.to_string(),
            kind: Kind::Dir,
            mode: m.mode() & 0o7777,
            mtime_ns: 0,
        };
        if self.current.get(rel).map(|(x, _)| x) != Some(&e) {
            self.remove_tree_below(rel);
            self.current.insert(rel.to_string(), (e, None));
            self.version += 1;
        }
    }

    fn examine_meta(&mut self, rel: &str, m: &std::fs::Metadata) -> Result<()> {
        let abs = self.root.join(rel);
        let ft = m.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&abs).map_err(|e| Error::io("read link", &abs, e))?;
            let Some(target) = target.to_str() else {
                warn!(path = %abs.display(), "link target is not UTF-8; not backed up");
                return Ok(());
            };
            let e = Entry {
                path: rel.to_string(),
                kind: Kind::Symlink {
                    target: target.to_string(),
                },
                mode: m.mode() & 0o7777,
                mtime_ns: 0,
            };
            self.put(rel, e, Some(Stat::of(m)));
            return Ok(());
        }
        if !ft.is_file() {
            debug!(path = %abs.display(), "not a file, folder or link; skipped");
            return Ok(());
        }
        let stat = Stat::of(m);
        if matches!(self.current.get(rel), Some((_, Some(s))) if *s == stat) {
            self.unstable.remove(rel);
            return Ok(());
        }
        let now = Instant::now();
        let old_enough = now_ns().saturating_sub(stat.mtime_ns()) >= self.settle.as_nanos() as i64;
        let seen_still = matches!(self.unstable.get(rel), Some((s, t)) if *s == stat && now.duration_since(*t) >= self.settle);
        if !old_enough && !seen_still {
            if !matches!(self.unstable.get(rel), Some((s, _)) if *s == stat) {
                self.unstable.insert(rel.to_string(), (stat, now));
            }
            return Ok(());
        }
        let (sha256, size, copy) = match self.hash(&abs, stat.size()) {
            Ok(h) => h,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                self.remove_tree(rel);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let after = lstat(&abs).ok().map(|m| Stat::of(&m));
        if after != Some(stat) || size != stat.size() {
            // Written while we read it: look again later.
            if let Some(s) = after {
                self.unstable.insert(rel.to_string(), (s, Instant::now()));
            }
            return Ok(());
        }
        self.unstable.remove(rel);
        if let (Some(st), Some(copy)) = (&mut self.staging, copy) {
            if !st.files.contains_key(&sha256) {
                st.used += size;
                st.files.insert(sha256.clone(), (copy, size));
            }
        }
        let e = Entry {
            path: rel.to_string(),
            kind: Kind::File { sha256, size },
            mode: m.mode() & 0o7777,
            mtime_ns: stat.mtime_ns(),
        };
        self.put(rel, e, Some(stat));
        Ok(())
    }

    fn put(&mut self, rel: &str, e: Entry, stat: Option<Stat>) {
        if matches!(
            self.current.get(rel),
            Some((
                Entry {
                    kind: Kind::Dir,
                    ..
                },
                _
            ))
        ) {
            self.remove_tree_below(rel);
        }
        let changed = self.current.get(rel).map(|(x, _)| x) != Some(&e);
        self.current.insert(rel.to_string(), (e, stat));
        if changed {
            self.version += 1;
        }
    }

    fn remove_tree_below(&mut self, rel: &str) {
        let prefix = format!("{rel}/");
        let below: Vec<String> = self
            .current
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        if !below.is_empty() {
            self.version += 1;
        }
        for k in below {
            self.current.remove(&k);
        }
        self.unstable.retain(|k, _| !k.starts_with(&prefix));
        self.dir_stats.retain(|k, _| !k.starts_with(&prefix));
    }

    fn remove_tree(&mut self, rel: &str) {
        if self.current.remove(rel).is_some() {
            self.version += 1;
        }
        self.unstable.remove(rel);
        self.dir_stats.remove(rel);
        self.remove_tree_below(rel);
    }
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

fn lstat(p: &Path) -> std::io::Result<std::fs::Metadata> {
    std::fs::symlink_metadata(p)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn watch(
    root: &Path,
    events: Arc<Mutex<Events>>,
    wake: Option<std::sync::mpsc::SyncSender<()>>,
) -> Option<notify::RecommendedWatcher> {
    let base = root.to_path_buf();
    let res = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let mut st = events.lock().unwrap();
        match ev {
            Ok(ev) if ev.need_rescan() => st.rescan = true,
            Ok(ev) => {
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                for p in &ev.paths {
                    match p.strip_prefix(&base).ok().and_then(Path::to_str) {
                        Some("") => {}
                        Some(rel) => {
                            st.dirty.insert(rel.to_string());
                        }
                        None => st.rescan = true,
                    }
                }
            }
            Err(_) => st.rescan = true,
        }
        if let Some(w) = &wake {
            let _ = w.try_send(());
        }
    });
    match res.and_then(|mut w| w.watch(root, RecursiveMode::Recursive).map(|()| w)) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(folder = %root.display(), error = %e, "file watching unavailable; the folder is rescanned instead");
            None
        }
    }
}

#[cfg(test)]
mod tests;
