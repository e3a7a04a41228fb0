//! Restore: rebuild a database from a snapshot and the segments after it, verifying everything.
//!
//! Every object's CRC32 is checked, every segment's SQLite frame-checksum chain is re-verified,
//! each segment must start exactly where the previous state ended (same transaction id and same
//! database checksum), and the database checksum recorded at each segment's end and at the
//! target (after every commit with [`RestoreOptions::every_commit`], as `verify` restores) must
//! match the one computed over the pages written. The result is written to a temporary file, fsynced,
//! checked with `PRAGMA integrity_check`, and only then renamed into place. Any failure leaves
//! the output path untouched and names the object at fault.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use lifeboat_storage::retry::{retry, RetryPolicy};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::snapshot::SnapshotReader;
use lifeboat_wal::{DbChecksum, Generation, TxId};
use tracing::info;

use crate::catalog::{self, Catalog};
use crate::files::{self, sibling};
use crate::{Error, Result};

mod chain;
mod copies;
mod output;
mod plan;

use chain::{Ready, State};
use output::Output;

pub use plan::{plan, plan_generation, Plan, Target};

/// Downloads in flight at once, unless told otherwise.
pub const DEFAULT_PARALLELISM: usize = 8;

/// How to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Where the database goes.
    pub output: PathBuf,
    /// Which generation (default: the newest restorable one).
    pub generation: Option<Generation>,
    /// Which state.
    pub target: Target,
    /// Downloads in flight at once (see [`DEFAULT_PARALLELISM`]).
    pub parallelism: usize,
    /// Replace an existing output file (and remove its `-wal` and `-shm`).
    pub force: bool,
    /// Told the bytes downloaded so far and the total, as the restore goes.
    pub progress: Option<Progress>,
    /// The restored file's permission bits; `None`: those of the file it replaces, else a new
    /// database's (0644 less the umask). See [`files::take_place_of`].
    pub mode: Option<u32>,
    /// Check the database checksum recorded after every commit applied, not only after each
    /// segment's last and the target (a format-2 segment's frames are proven by SQLite's checksum
    /// chain either way; hashing every version of every page costs about a tenth more CPU):
    /// `verify` does.
    pub every_commit: bool,
}

impl RestoreOptions {
    /// Restores the newest state of the newest generation into `output`, which must not exist.
    pub fn new(output: PathBuf) -> RestoreOptions {
        RestoreOptions {
            output,
            generation: None,
            target: Target::Latest,
            parallelism: DEFAULT_PARALLELISM,
            force: false,
            progress: None,
            mode: None,
            every_commit: false,
        }
    }
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
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// Generation restored.
    pub generation: Generation,
    /// Transaction the database is the state after.
    pub txid: TxId,
    /// When the agent saw that transaction (Unix ms).
    pub time_ms: u64,
    /// Pages in the database.
    pub pages: u32,
    /// Page size.
    pub page_size: u32,
    /// Verified database checksum.
    pub checksum: DbChecksum,
    /// Objects downloaded.
    pub objects: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
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

/// Restores a replica into `opts.output`.
pub async fn restore(client: &dyn ReplicaClient, opts: &RestoreOptions) -> Result<RestoreReport> {
    check_output(&opts.output, opts.force)?;
    let cat = Catalog::load(client).await?;
    let plan = plan(&cat, opts.generation, opts.target)?;
    execute(client, &plan, opts).await
}

/// Carries out a plan into `opts.output`. An object of the plan that is gone by the time it is
/// read was replaced meanwhile (a segment packed, see `replica::packing`; a snapshot pruned): the
/// generation is listed again and planned again for the same target, a few times at most. (A
/// segment truly lost shows in the new listing as the gap it is.)
pub async fn execute(
    client: &dyn ReplicaClient,
    plan: &Plan,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let mut replanned: Option<Plan> = None;
    let mut attempt = 0;
    loop {
        let p = replanned.as_ref().unwrap_or(plan);
        // The error names the object as the store spells it (on S3 a URL), so any object of
        // the plan counts.
        let gone = match execute_once(client, p, opts).await {
            Err(Error::Storage(lifeboat_storage::Error::NotFound { key })) if attempt < 3 => key,
            r => return r,
        };
        attempt += 1;
        info!(object = %gone, "an object was replaced while this restore read the replica (a segment packed); listing it again");
        let cat = Catalog::load(client).await?;
        let objs = cat
            .generations
            .get(&p.generation)
            .ok_or(Error::NoGeneration(p.generation))?;
        replanned = Some(plan_generation(p.generation, objs, p.target)?);
    }
}

async fn execute_once(
    client: &dyn ReplicaClient,
    plan: &Plan,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let started = Instant::now();
    check_output(&opts.output, opts.force)?;
    info!(
        generation = %plan.generation,
        snapshot = %plan.snapshot.key,
        segments = plan.segments.len(),
        bytes = plan.bytes(),
        "restore plan"
    );
    let out_dir = files::parent_dir(&opts.output).to_path_buf();
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| Error::io(format!("create {}", out_dir.display()), e))?;
    // A restore killed mid-way (a crash loop at boot, say) leaves its files behind: remove
    // those of processes that are gone before adding ours.
    crate::staging::clean_restore_leftovers(&out_dir);
    let tmp = crate::staging::temp_named(&out_dir, crate::staging::RESTORE_PREFIXES[0])?;
    let snap_tmp = crate::staging::temp_named(&out_dir, crate::staging::RESTORE_PREFIXES[1])?;

    let policy = RetryPolicy::default();
    let snap_key = plan.snapshot.key.clone();
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
    let (out, hashes, state) =
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
                out.write_pages(pgno, &chunk)?;
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
        .map_err(|e| Error::join("applying the snapshot", e))??;
    drop(snap_tmp);
    let total = plan.bytes();
    let report_progress = |done: u64| {
        if let Some(p) = &opts.progress {
            (p.0)(done, total);
        }
    };
    report_progress(bytes);
    if state.generation != plan.generation {
        return Err(Error::ObjectMismatch {
            key: snap_key.to_string(),
            problem: format!(
                "belongs to generation {}, not {}",
                state.generation, plan.generation
            ),
        });
    }

    // Fetch segments in parallel, apply them in order.
    let parallelism = opts.parallelism.max(1);
    let base = plan.snapshot.txid;
    let raws = chain::Raws::default();
    let mut fetches = stream::iter(plan.segments.iter().cloned())
        .map(|o| {
            let raws = raws.clone();
            async move {
                let b = retry(policy, "segment download", || client.get(&o.key)).await?;
                let size = o.size;
                // Checked here, in parallel: both CRCs, decompressed, the structure; a format-1
                // segment's stored frames verified too. A format-2 segment's page deltas are
                // applied in chain order, to the state before it. A pack's parts are checked the
                // same way, each on its own; those the snapshot already holds are not needed.
                let segs = tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    for (part, any) in catalog::open_parts_in(&o, b, &mut || raws.take())? {
                        if part.last <= base {
                            continue;
                        }
                        let ready = if any.holds_deltas() {
                            Ready::Deltas(any)
                        } else {
                            let built = any.rebuild(&mut chain::no_base);
                            Ready::Built(built.map_err(|e| Error::Corrupt {
                                key: part.key.clone(),
                                cause: e,
                            })?)
                        };
                        out.push((part, ready));
                    }
                    Ok::<_, Error>(out)
                })
                .await
                .map_err(|e| Error::join("decoding a segment", e))??;
                Ok::<_, Error>((size, segs))
            }
        })
        .buffered(parallelism);
    let mut objects = 1;
    // Redundant copies must agree with the chain on every transaction they share. They are
    // read first, so that a disagreement is reported as the fork it is, at its first
    // transaction, before the chain runs into a checksum that does not continue.
    let mut copies = copies::Copies::new(plan.generation, plan.shared());
    for o in &plan.redundant {
        let b = retry(policy, "segment download", || client.get(&o.key)).await?;
        // What the object proves on its own is enough to compare (a format-2 copy's frames
        // need the state before it, which this restore may never hold).
        for (part, any) in catalog::open_parts(o, b)? {
            copies.check_and_keep(&part.key, &any.header, &any.commits, None)?;
        }
        objects += 1;
        bytes += o.size;
        report_progress(bytes);
    }
    // The chain is applied on threads of its own (see `chain`) while the downloads (and the
    // decoding of the segments that rebuild on their own) go on.
    let (tx, rx) = tokio::sync::mpsc::channel::<(catalog::Segment, Ready, u64)>(parallelism);
    let how = chain::How {
        target: plan.target,
        every_commit: opts.every_commit,
        raws: raws.clone(),
    };
    let applier =
        tokio::task::spawn_blocking(move || chain::apply(rx, out, hashes, state, copies, how));
    let mut fetched = Ok(());
    let mut downloaded = bytes;
    while let Some(r) = fetches.next().await {
        match r {
            Ok((size, segs)) => {
                downloaded += size;
                report_progress(downloaded);
                let mut object = size;
                let mut closed = false;
                for (o, seg) in segs {
                    // Closed: the applier reached the target, or failed (its error comes
                    // below).
                    if tx
                        .send((o, seg, std::mem::take(&mut object)))
                        .await
                        .is_err()
                    {
                        closed = true;
                        break;
                    }
                }
                if closed {
                    break;
                }
            }
            Err(e) => {
                fetched = Err(e);
                break;
            }
        }
    }
    drop(tx);
    drop(fetches);
    // The chain's own error comes first: a download failing after it changes nothing.
    let chain::Applied {
        out,
        hashes,
        state,
        objects: applied,
        bytes: applied_bytes,
        reached,
    } = applier
        .await
        .map_err(|e| Error::join("applying the segments", e))??;
    if !reached {
        fetched?;
    }
    objects += applied;
    bytes += applied_bytes;
    if let Target::TxId(t) = plan.target {
        if state.txid != t {
            return Err(Error::TargetMissed {
                reached: state.txid,
                target: t,
            });
        }
    }
    if hashes.checksum() != state.checksum || hashes.page_count() != state.db_size {
        return Err(Error::ChecksumMismatch {
            what: format!(
                "the restored database ({} pages; the replica recorded {})",
                hashes.page_count(),
                state.db_size
            ),
            expected: state.checksum,
            found: hashes.checksum(),
            consequence: "nothing was written to the output path",
        });
    }
    files::take_place_of(&out.file, &opts.output, opts.mode)?;
    out.file
        .sync_all()
        .map_err(|e| Error::io("fsync restored database", e))?;
    drop(out);
    // SQLite's integrity check, and the independent proof: the file as written, hashed. Each
    // reads the file on its own; they run side by side (the second finds the pages cached).
    let (checked, hashed) = std::thread::scope(|s| {
        let hashing = s.spawn(|| files::hash_file(tmp.path(), state.page_size));
        let checked = files::integrity_check(tmp.path());
        (checked, hashing.join())
    });
    checked?;
    let on_disk = hashed
        .unwrap_or_else(|p| std::panic::resume_unwind(p))?
        .checksum();
    if on_disk != state.checksum {
        return Err(Error::ChecksumMismatch {
            what: format!("the restored file {}", tmp.path().display()),
            expected: state.checksum,
            found: on_disk,
            consequence: "nothing was written to the output path",
        });
    }
    check_output(&opts.output, opts.force)?;
    tmp.persist(&opts.output).map_err(|e| {
        Error::io(
            format!("rename restored database to {}", opts.output.display()),
            e.error,
        )
    })?;
    files::fsync_dir(&out_dir)?;
    let report = RestoreReport {
        generation: plan.generation,
        txid: state.txid,
        time_ms: state.time_ms,
        pages: state.db_size,
        page_size: state.page_size,
        checksum: state.checksum,
        objects,
        bytes,
        elapsed: started.elapsed(),
    };
    info!(
        output = %opts.output.display(),
        generation = %report.generation,
        txid = report.txid.0,
        checksum = %report.checksum,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "restore complete; database checksum verified"
    );
    Ok(report)
}
