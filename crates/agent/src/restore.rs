//! Restore: rebuild a database from a snapshot and the segments after it, verifying everything.
//!
//! Every object's CRC32 is checked, every segment's SQLite frame-checksum chain is re-verified,
//! each segment must start exactly where the previous state ended (same transaction id and same
//! database checksum), and the database checksum recorded after every applied commit must match
//! the one computed over the pages written. The result is written to a temporary file, fsynced,
//! checked with `PRAGMA integrity_check`, and only then renamed into place. Any failure leaves
//! the output path untouched and names the object at fault.

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use lifeboat_storage::keys::Key;
use lifeboat_storage::retry::{retry, RetryPolicy};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::segment::Segment;
use lifeboat_wal::snapshot::SnapshotReader;
use lifeboat_wal::{DbChecksum, Generation, TxId};
use serde::Serialize;
use tracing::info;

use crate::catalog::{Catalog, GenerationObjects, Object};
use crate::{Error, Result};

/// What to restore to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Target {
    /// The newest state.
    #[default]
    Latest,
    /// The state right after this transaction.
    TxId(TxId),
    /// The state after the last transaction the agent saw commit at or before this time (Unix
    /// ms). Precise to when the agent noticed the commit (file-event latency, milliseconds).
    Time(u64),
}

/// How to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Where the database goes.
    pub output: PathBuf,
    /// Which generation (default: the newest restorable one).
    pub generation: Option<Generation>,
    /// Which state.
    pub target: Target,
    /// Downloads in flight at once.
    pub parallelism: usize,
    /// Replace an existing output file (and remove its `-wal` and `-shm`).
    pub force: bool,
    /// Told the bytes downloaded so far and the total, as the restore goes.
    pub progress: Option<Progress>,
}

/// A progress callback: `(bytes done, bytes in all)`.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// What a restore did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreReport {
    /// Generation restored.
    pub generation: String,
    /// Transaction the database is the state after.
    pub txid: String,
    /// When the agent saw that transaction (Unix ms).
    pub time_ms: u64,
    /// Pages in the database.
    pub pages: u32,
    /// Page size.
    pub page_size: u32,
    /// Verified database checksum.
    pub checksum: String,
    /// Objects downloaded.
    pub objects: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

/// The objects a restore will read.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Generation.
    pub generation: Generation,
    /// The snapshot to start from.
    pub snapshot: Object,
    /// Segments to apply, in order.
    pub segments: Vec<Object>,
    /// Where to stop.
    pub target: Target,
}

impl Plan {
    /// Bytes to download.
    pub fn bytes(&self) -> u64 {
        self.snapshot.size + self.segments.iter().map(|s| s.size).sum::<u64>()
    }
}

fn snapshot_txid(o: &Object) -> TxId {
    match o.key {
        Key::Snapshot { txid, .. } => txid,
        Key::Segment { .. } => unreachable!("a snapshot"),
    }
}

fn snapshot_time(o: &Object) -> u64 {
    match o.key {
        Key::Snapshot { time_ms, .. } => time_ms,
        Key::Segment { .. } => unreachable!("a snapshot"),
    }
}

/// Chooses the snapshot and segments for a target within one generation.
pub fn plan_generation(
    generation: Generation,
    objs: &GenerationObjects,
    target: Target,
) -> Result<Plan> {
    let snapshot = objs
        .snapshots
        .iter()
        .rev()
        .find(|s| match target {
            Target::Latest => true,
            Target::TxId(t) => snapshot_txid(s) <= t,
            Target::Time(t) => snapshot_time(s) <= t,
        })
        .ok_or_else(|| {
            Error::Replica(format!(
                "generation {generation} has no snapshot at or before the target"
            ))
        })?
        .clone();
    let base = snapshot_txid(&snapshot);
    let mut next = base.next();
    let mut segments: Vec<Object> = Vec::new();
    for s in &objs.segments {
        let Key::Segment {
            first,
            last,
            time_ms,
            ..
        } = s.key
        else {
            continue;
        };
        if let Target::TxId(t) = target {
            if first > t {
                break;
            }
        }
        // One agent never writes two segments that share a transaction: two agents resumed the
        // same generation (overlapping deploys) and its history forked. Neither branch is
        // chosen silently.
        if let Some(prev) = segments.last().filter(|_| first < next && first > base) {
            return Err(Error::Replica(format!(
                "generation {generation} forked at txid {first}: {} and {} both hold it, so two \
                 agents wrote to this replica at once (overlapping deploys?). The history before \
                 the fork restores with --generation {generation} --txid {}; look at both \
                 branches with `lifeboat segments`",
                prev.name,
                s.name,
                TxId(first.0 - 1)
            )));
        }
        if last < next {
            continue;
        }
        if first > next {
            return Err(Error::Replica(format!(
                "generation {generation} is missing transactions {next}..{}: expected a segment \
                 starting at txid {next} before {}; the chain is broken and cannot be restored \
                 past txid {}",
                TxId(first.0 - 1),
                s.name,
                TxId(next.0 - 1)
            )));
        }
        segments.push(s.clone());
        next = last.next();
        // The first segment whose last commit is after the target time may hold commits at or
        // before it; later ones cannot.
        if let Target::Time(t) = target {
            if time_ms > t {
                break;
            }
        }
    }
    if let Target::TxId(t) = target {
        if TxId(next.0 - 1) < t {
            return Err(Error::Replica(format!(
                "generation {generation} ends at txid {}, before the target txid {t}",
                TxId(next.0 - 1)
            )));
        }
    }
    Ok(Plan {
        generation,
        snapshot,
        segments,
        target,
    })
}

/// Plans a restore from a replica's catalog.
pub fn plan(cat: &Catalog, generation: Option<Generation>, target: Target) -> Result<Plan> {
    let (g, objs) = match generation {
        Some(g) => (
            g,
            cat.generations.get(&g).ok_or_else(|| {
                Error::Replica(format!("generation {g} not found in the replica"))
            })?,
        ),
        None => match target {
            // The newest generation that has a state at or before the time.
            Target::Time(t) => cat
                .generations
                .iter()
                .rev()
                .find(|(_, o)| o.snapshots.iter().any(|s| snapshot_time(s) <= t))
                .map(|(g, o)| (*g, o))
                .ok_or_else(|| {
                    Error::Replica(format!(
                        "the replica holds no state at or before {}",
                        fmt_time(t)
                    ))
                })?,
            _ => cat.latest().ok_or_else(|| {
                Error::Replica("the replica holds no snapshot: nothing to restore".into())
            })?,
        },
    };
    plan_generation(g, objs, target)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    p.into()
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Refuses to clobber anything unless `force`; with `force`, removes the old database's WAL and
/// shared-memory files (a stale WAL would otherwise be applied on top of the restored file).
pub fn check_output(output: &Path, force: bool) -> Result<()> {
    let wal = sibling(output, "-wal");
    let shm = sibling(output, "-shm");
    let existing: Vec<&Path> = [output, wal.as_path(), shm.as_path()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    if !force {
        return Err(Error::Refused(format!(
            "{} already exists; refusing to overwrite it (use --force to replace it, or choose \
             another output path)",
            existing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    }
    for p in [&wal, &shm] {
        if p.exists() {
            std::fs::remove_file(p).map_err(|e| Error::io(format!("remove {}", p.display()), e))?;
        }
    }
    Ok(())
}

struct Output {
    file: File,
    page_size: u64,
}

impl Output {
    fn write_page(&self, pgno: u32, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, u64::from(pgno - 1) * self.page_size)
            .map_err(|e| Error::io("write restored page", e))
    }

    fn set_pages(&self, pages: u32) -> Result<()> {
        self.file
            .set_len(u64::from(pages) * self.page_size)
            .map_err(|e| Error::io("resize restored database", e))
    }
}

/// Formats Unix milliseconds as RFC 3339 (UTC).
pub fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Restores a replica into `opts.output`.
pub async fn restore(client: &dyn ReplicaClient, opts: &RestoreOptions) -> Result<RestoreReport> {
    check_output(&opts.output, opts.force)?;
    let cat = Catalog::load(client).await?;
    let plan = plan(&cat, opts.generation, opts.target)?;
    execute(client, &plan, opts).await
}

/// Carries out a plan into `opts.output`.
pub async fn execute(
    client: &dyn ReplicaClient,
    plan: &Plan,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let started = Instant::now();
    check_output(&opts.output, opts.force)?;
    info!(
        generation = %plan.generation,
        snapshot = %plan.snapshot.name,
        segments = plan.segments.len(),
        bytes = plan.bytes(),
        "restore plan"
    );
    let out_dir = opts
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| Error::io(format!("create {}", out_dir.display()), e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".lifeboat-restore-")
        .tempfile_in(&out_dir)
        .map_err(|e| Error::io(format!("create temp file in {}", out_dir.display()), e))?;
    let snap_tmp = tempfile::Builder::new()
        .prefix(".lifeboat-snapshot-")
        .tempfile_in(&out_dir)
        .map_err(|e| Error::io(format!("create temp file in {}", out_dir.display()), e))?;

    let policy = RetryPolicy::default();
    let snap_key = plan.snapshot.name.clone();
    let mut bytes = retry(policy, "snapshot download", || {
        client.get_to_file(&snap_key, snap_tmp.path())
    })
    .await?;

    // Apply the snapshot.
    let snap_path = snap_tmp.path().to_path_buf();
    let out_file = tmp
        .reopen()
        .map_err(|e| Error::io("open restore temp file", e))?;
    let key = snap_key.clone();
    let (out, mut hashes, mut state) =
        tokio::task::spawn_blocking(move || -> Result<(Output, PageHashes, State)> {
            let f = File::open(&snap_path).map_err(|e| Error::io("open snapshot", e))?;
            let corrupt = |e| Error::Corrupt {
                key: key.clone(),
                cause: e,
            };
            let mut r =
                SnapshotReader::new(BufReader::with_capacity(1 << 20, f)).map_err(corrupt)?;
            let h = *r.header();
            let out = Output {
                file: out_file,
                page_size: u64::from(h.page_size),
            };
            let mut pgno = 1u32;
            let ps = h.page_size as usize;
            while let Some(chunk) = r.next_chunk().map_err(corrupt)? {
                out.file
                    .write_all_at(&chunk, u64::from(pgno - 1) * out.page_size)
                    .map_err(|e| Error::io("write restored page", e))?;
                pgno += (chunk.len() / ps) as u32;
            }
            let t = r.trailer().expect("verified trailer");
            out.set_pages(t.page_count)?;
            Ok((
                out,
                r.hashes().clone(),
                State {
                    generation: h.generation,
                    txid: h.txid,
                    time_ms: h.time_ms,
                    db_size: t.page_count,
                    checksum: t.checksum,
                    page_size: h.page_size,
                },
            ))
        })
        .await
        .map_err(|e| Error::Inconsistent(e.to_string()))??;
    drop(snap_tmp);
    let total = plan.bytes();
    let report_progress = |done: u64| {
        if let Some(p) = &opts.progress {
            (p.0)(done, total);
        }
    };
    report_progress(bytes);
    if state.generation != plan.generation {
        return Err(Error::Replica(format!(
            "object {snap_key} belongs to generation {}, not {}",
            state.generation, plan.generation
        )));
    }

    // Fetch segments in parallel, apply them in order.
    let parallelism = opts.parallelism.max(1);
    let mut fetches = stream::iter(plan.segments.iter().cloned())
        .map(|o| async move {
            let b = retry(policy, "segment download", || client.get(&o.name)).await?;
            let name = o.name.clone();
            let seg = tokio::task::spawn_blocking(move || Segment::decode(&b))
                .await
                .map_err(|e| Error::Inconsistent(e.to_string()))?
                .map_err(|e| Error::Corrupt {
                    key: name.clone(),
                    cause: e,
                })?;
            Ok::<_, Error>((o, seg))
        })
        .buffered(parallelism);
    let mut objects = 1;
    while let Some(r) = fetches.next().await {
        let (o, seg) = r?;
        objects += 1;
        bytes += o.size;
        report_progress(bytes);
        if apply_segment(&out, &mut hashes, &mut state, &o, &seg, plan.target)? {
            break;
        }
    }
    drop(fetches);
    if let Target::TxId(t) = plan.target {
        if state.txid != t {
            return Err(Error::Replica(format!(
                "restore reached txid {} but the target is {t}",
                state.txid
            )));
        }
    }
    if hashes.checksum() != state.checksum || hashes.page_count() != state.db_size {
        return Err(Error::Inconsistent(format!(
            "restored database has checksum {} and {} pages, the replica recorded {} and {}",
            hashes.checksum(),
            hashes.page_count(),
            state.checksum,
            state.db_size
        )));
    }
    out.file
        .sync_all()
        .map_err(|e| Error::io("fsync restored database", e))?;
    drop(out);
    integrity_check(tmp.path())?;
    // Independent proof: hash the file as written.
    let on_disk = hash_file(tmp.path(), state.page_size)?;
    if on_disk != state.checksum {
        return Err(Error::Inconsistent(format!(
            "the restored file hashes to {on_disk}, the replica recorded {}",
            state.checksum
        )));
    }
    check_output(&opts.output, opts.force)?;
    tmp.persist(&opts.output).map_err(|e| {
        Error::io(
            format!("rename restored database to {}", opts.output.display()),
            e.error,
        )
    })?;
    fsync_dir(&out_dir).map_err(|e| Error::io("fsync output folder", e))?;
    let report = RestoreReport {
        generation: plan.generation.to_string(),
        txid: state.txid.to_string(),
        time_ms: state.time_ms,
        pages: state.db_size,
        page_size: state.page_size,
        checksum: state.checksum.to_string(),
        objects,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    info!(
        output = %opts.output.display(),
        generation = %report.generation,
        txid = %report.txid,
        checksum = %report.checksum,
        elapsed = ?Duration::from_secs_f64(report.seconds),
        "restore complete; database checksum verified"
    );
    Ok(report)
}

struct State {
    generation: Generation,
    txid: TxId,
    time_ms: u64,
    db_size: u32,
    checksum: DbChecksum,
    page_size: u32,
}

fn apply_segment(
    out: &Output,
    hashes: &mut PageHashes,
    state: &mut State,
    o: &Object,
    seg: &Segment,
    target: Target,
) -> Result<bool> {
    let h = &seg.header;
    let bad = |what: String| Error::Replica(format!("object {}: {what}", o.name));
    if h.generation != state.generation {
        return Err(bad(format!("belongs to generation {}", h.generation)));
    }
    if h.page_size != state.page_size {
        return Err(bad(format!(
            "page size {} differs from the snapshot's",
            h.page_size
        )));
    }
    if let Key::Segment { first, last, .. } = o.key {
        if first != h.first_txid || last != h.last_txid {
            return Err(bad("header disagrees with its key".into()));
        }
    }
    let skip = state.txid.0.saturating_sub(h.first_txid.0 - 1);
    if h.first_txid.0 > state.txid.0 + 1 {
        return Err(bad(format!(
            "starts at txid {}, but the restore is at txid {}",
            h.first_txid, state.txid
        )));
    }
    if skip == 0 && h.checksum_before != state.checksum {
        return Err(bad(format!(
            "expects database checksum {} before it, the restore has {}",
            h.checksum_before, state.checksum
        )));
    }
    let ps = h.page_size as usize;
    for (i, (c, frames)) in seg.transactions().enumerate() {
        if (i as u64) < skip {
            continue;
        }
        if let Target::Time(t) = target {
            if c.time_ms > t {
                return Ok(true);
            }
        }
        for f in frames.chunks_exact(24 + ps) {
            let pgno = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
            out.write_page(pgno, &f[24..])?;
            hashes.set_page(pgno, &f[24..]);
        }
        hashes.resize(c.db_size);
        out.set_pages(c.db_size)?;
        if hashes.checksum() != c.checksum {
            return Err(bad(format!(
                "after txid {} the database checksum is {}, the segment recorded {}",
                c.txid,
                hashes.checksum(),
                c.checksum
            )));
        }
        state.txid = c.txid;
        state.time_ms = c.time_ms;
        state.db_size = c.db_size;
        state.checksum = c.checksum;
        if let Target::TxId(t) = target {
            if c.txid >= t {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The database checksum of a file, computed independently of any replica.
pub fn hash_file(path: &Path, page_size: u32) -> Result<DbChecksum> {
    let f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len();
    let ps = page_size as usize;
    let mut h = PageHashes::new(ps);
    let mut page = vec![0u8; ps];
    for pgno in 1..=(len / ps as u64) as u32 {
        f.read_exact_at(&mut page, u64::from(pgno - 1) * ps as u64)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        h.set_page(pgno, &page);
    }
    Ok(h.checksum())
}

/// Runs `PRAGMA integrity_check` on a database file without writing to it.
pub fn integrity_check(path: &Path) -> Result<()> {
    let uri = format!("file:{}?immutable=1", path.display());
    let c = rusqlite::Connection::open_with_flags(
        &uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| Error::sqlite(path, "open restored database", e))?;
    let mut stmt = c
        .prepare("PRAGMA integrity_check")
        .map_err(|e| Error::sqlite(path, "integrity check", e))?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| Error::sqlite(path, "integrity check", e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::sqlite(path, "integrity check", e))?;
    if rows != ["ok"] {
        return Err(Error::Inconsistent(format!(
            "the restored database fails PRAGMA integrity_check: {}",
            rows.join("; ")
        )));
    }
    Ok(())
}
