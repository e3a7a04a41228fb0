//! `lifeboat run -- app args...`: restore on boot, replicate while the app runs, forward signals,
//! sync a last time when it exits.
//!
//! On boot, for each database: missing and the replica has data → restore the newest state;
//! missing everywhere → start fresh; present → it must be the replica's newest state or a
//! continuation of it (proven by checksum, as `replicate` does on resume), otherwise `--on-stale`
//! decides (refuse by default, so an old disk never becomes the newest backup).
//!
//! The app starts only once every replica holds a generation and has shipped everything (the
//! readiness rule), and gets the same environment and working directory.
//!
//! With the writer lease (the default; see `lease`): the lease is taken before the restore
//! (a live holder is asked to hand over and the state it released at is restored exactly), kept
//! while the app runs, handed over when another instance asks (the app's writes are frozen from
//! then until it exits), and released at the final sync's transaction when the app exits.
//!
//! Exit status: the app's own (128 + N if signal N ended it). If the app exited 0 but the final
//! sync did not complete, 75 (EX_TEMPFAIL), so a supervisor notices that the newest writes may
//! not be in the replica. 1 if lifeboat could not get the app started (restore failed, stale
//! disk refused, first sync timed out).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use std::sync::Arc;

use lifeboat_agent::agent::DbConfig;
use lifeboat_agent::catalog::Catalog;
use lifeboat_agent::clock::now_ms;
use lifeboat_agent::files::{fsync_dir, sibling};
use lifeboat_agent::folder::FolderConfig;
use lifeboat_agent::restore::{self, RestoreOptions, Target};
use lifeboat_agent::status::Status;
use lifeboat_agent::supervisor::Supervisor;
use lifeboat_agent::OnDivergence;
use lifeboat_storage::ReplicaClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::args::{OnStale, RunArgs};
use crate::config::{self, Source};
use crate::http;
use crate::lease::{self, Event};

/// Exit status when the app succeeded but the final sync did not.
pub const EXIT_SYNC_FAILED: u8 = 75;

/// The signals forwarded to the app.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// A database position: where a restore landed.
type At = (lifeboat_wal::Generation, lifeboat_wal::TxId);

/// Restores the newest state of `client` (or the one `at`: where the previous lease holder
/// stopped) into `db` (which must not exist), with the permissions of `like` if given (the stale
/// file moved aside), else a new database's; returns where it landed.
async fn restore_into(
    db: &Path,
    client: &dyn ReplicaClient,
    at: Option<At>,
    like: Option<&Path>,
) -> Result<At> {
    info!(db = %db.display(), replica = %client.describe(), at = %lifeboat_agent::lease::fmt_position(at), "restoring the newest state (or the one the lease was handed over at)");
    let mut opts = RestoreOptions::new(db.to_path_buf());
    opts.mode = like
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777);
    if let Some((g, t)) = at {
        (opts.generation, opts.target) = (Some(g), Target::TxId(t));
    }
    let report = restore::restore(client, &opts).await.with_context(|| {
        format!(
            "restore of {} from {} failed",
            db.display(),
            client.describe()
        )
    })?;
    info!(db = %db.display(), "{}", crate::human::restored(&report));
    Ok((report.generation, report.txid))
}

/// Restores the database's folders as of `at` (the database was just restored), or, with
/// `at` `None`, those that are missing or empty as of the newest state. A non-empty folder is
/// moved aside only with `aside` (`--on-stale restore`), otherwise refused.
async fn restore_dirs(cfg: &DbConfig, at: Option<At>, aside: bool) -> Result<()> {
    use lifeboat_dirs::{restore, Error};
    for d in &cfg.options.dirs {
        if at.is_none() && restore::check_output(&d.path, false).is_err() {
            continue;
        }
        match restore::restore(cfg.replicas[0].as_ref(), &d.name, at, &d.path, aside).await {
            Ok(r) => info!(folder = %d.path.display(), files = r.files, bytes = r.bytes, moved_aside = ?r.moved_aside, "folder restored with the database"),
            Err(Error::NoBackup { .. }) => warn!(folder = %d.path.display(), "the replica holds no backup of this folder yet; starting with it as it is"),
            Err(e @ Error::OutputExists { .. }) => bail!("{e}; the database was restored but this folder is not the one its rows refer to. Pass --on-stale restore to move the folder aside and restore it"),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("restore of folder {} failed", d.path.display()))),
        }
    }
    Ok(())
}

/// Brings a missing database back from its first replica (returns where), at the state `at`
/// (where the previous lease holder stopped) if given, or creates it.
async fn prepare_missing(cfg: &DbConfig, at: Option<At>) -> Result<Option<At>> {
    let db = &cfg.path;
    if db.exists() {
        return Ok(None);
    }
    if sibling(db, "-wal").exists() {
        bail!(
            "{} is missing but {} is there: refusing to guess which is right; move the -wal file \
             aside (or restore it by hand) and start again",
            db.display(),
            sibling(db, "-wal").display()
        );
    }
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let client = cfg.replicas[0].as_ref();
    let cat = Catalog::load(client)
        .await
        .with_context(|| format!("cannot list {}", client.describe()))?;
    if cat.latest().is_some() {
        info!(db = %db.display(), "database missing: restoring it from the replica");
        Ok(Some(restore_into(db, client, at, None).await?))
    } else {
        info!(db = %db.display(), replica = %client.describe(), "no database and no backup yet: starting fresh");
        let c = rusqlite::Connection::open(db)
            .with_context(|| format!("cannot create {}", db.display()))?;
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .with_context(|| format!("cannot switch {} to WAL mode", db.display()))?;
        Ok(None)
    }
}

/// Moves a database and its -wal/-shm aside as `<db>.stale-<ms>[-wal|-shm]`; returns the name.
fn move_aside(db: &Path) -> Result<PathBuf> {
    let stamp = now_ms();
    let aside = sibling(db, &format!(".stale-{stamp}"));
    // A database separated from its -wal loses the transactions in it: if any rename fails,
    // the ones already done are undone, so the set moves together or not at all.
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    for suffix in ["-wal", "-shm", ""] {
        let from = sibling(db, suffix);
        if !from.exists() {
            continue;
        }
        let to = sibling(&aside, suffix);
        if let Err(e) = std::fs::rename(&from, &to) {
            for (f, t) in moved.iter().rev() {
                if let Err(undo) = std::fs::rename(t, f) {
                    error!(from = %t.display(), to = %f.display(), error = %undo, "cannot move a file back; put it back by hand before starting again");
                }
            }
            return Err(anyhow::Error::new(e).context(format!(
                "cannot move {} aside to {}",
                from.display(),
                to.display()
            )));
        }
        moved.push((from, to));
    }
    // The renames must survive a crash before the restore writes a new database in their place.
    fsync_dir(lifeboat_agent::files::parent_dir(db))?;
    Ok(aside)
}

/// Starts the agent for one database, applying `--on-stale`.
async fn start(sup: &mut Supervisor, mut cfg: DbConfig, on_stale: OnStale) -> Result<()> {
    cfg.options.on_divergence = match on_stale {
        OnStale::Keep => OnDivergence::NewGeneration,
        OnStale::Refuse | OnStale::Restore => OnDivergence::Refuse,
    };
    match sup.start(cfg.clone()).await {
        Ok(()) => Ok(()),
        Err(e @ lifeboat_agent::Error::Diverged { .. }) if on_stale == OnStale::Restore => {
            let aside = move_aside(&cfg.path)?;
            warn!(db = %cfg.path.display(), moved_to = %aside.display(), error = %e, "local database moved aside; restoring the replica's newest state");
            let at = restore_into(&cfg.path, cfg.replicas[0].as_ref(), None, Some(&aside)).await?;
            restore_dirs(&cfg, Some(at), true).await?;
            cfg.options.resume = false;
            Ok(sup.start(cfg).await?)
        }
        Err(e @ lifeboat_agent::Error::Diverged { .. }) => Err(anyhow::Error::new(e).context(
            "stale disk: refusing to start, so that the newer backup stays the newest. To use \
             the backup, pass --on-stale restore (the local files are moved aside, not deleted); \
             to keep the local database as a new generation, pass --on-stale keep",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Waits until every replica of every database has a generation and has shipped all it read.
async fn wait_ready(statuses: &[Arc<Status>], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    loop {
        interval.tick().await;
        let mut waiting = None;
        for status in statuses {
            let st = status.snapshot();
            if let Some(r) = st.replicas.iter().find(|r| r.halted.is_some()) {
                let why = r.halted.as_deref().unwrap_or_default();
                bail!(
                    "replication to {} stopped: {why}; the app was not started{}",
                    r.replica,
                    if why.contains("stale disk") {
                        ". To use the backup, pass --on-stale restore (the local files are moved \
                         aside, not deleted); to keep the local database as a new generation, \
                         pass --on-stale keep"
                    } else {
                        ""
                    }
                );
            }
            if let Some(r) = st
                .replicas
                .iter()
                .find(|r| r.generation.is_none() || !r.caught_up)
            {
                waiting = Some((r.replica.clone(), st.last_error.clone()));
                break;
            }
            if st.replicas.is_empty() {
                waiting = Some(("(starting)".into(), None));
                break;
            }
        }
        let Some((replica, last_error)) = waiting else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            bail!(
                "the first sync to {replica} did not complete within {} (last error: {}); the app \
                 was not started. Check the replica URL and credentials, or raise --ready-timeout",
                humantime::format_duration(timeout),
                last_error.as_deref().unwrap_or("none")
            );
        }
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    }
}

/// Restores the databases a folder's replica holds and the folder lacks (each then starts a new
/// generation, as a single restored database does).
async fn prepare_folder(f: &mut FolderConfig) -> Result<()> {
    std::fs::create_dir_all(&f.dir)
        .with_context(|| format!("cannot create {}", f.dir.display()))?;
    let base = f.replicas[0].clone();
    let listing = base
        .list("")
        .await
        .with_context(|| format!("cannot list {}", base.describe()))?;
    for name in lifeboat_storage::prefixed::names(&listing) {
        let db = f.dir.join(&name);
        if !f.wants(&name) || db.exists() {
            continue;
        }
        let cfg = f.database(&name)?;
        // Tenants of a folder hold no writer lease (see docs/design.md): the newest state.
        if prepare_missing(&cfg, None).await?.is_some() {
            f.restored.insert(name);
        }
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let src = match &args.dir_of_databases {
        Some(spec) => Source::dir(spec.clone(), args.replica.iter().cloned().collect())?,
        None => Source::new(
            args.config.clone(),
            args.db.clone(),
            args.replica.iter().cloned().collect(),
        )?,
    };
    crate::replicate::raise_open_files_limit();
    crate::neighbours::warn_all(&src).await;
    let flags = args.agent.flags();
    let mut folders = config::folders(&src, &flags).await?;
    for f in &mut folders {
        f.options.shutdown_timeout = args.shutdown_timeout;
        f.options.on_divergence = match args.on_stale {
            OnStale::Keep => OnDivergence::NewGeneration,
            OnStale::Refuse | OnStale::Restore => OnDivergence::Refuse,
        };
        prepare_folder(f).await?;
    }
    let mut dbs = config::databases(&src, &flags).await?;
    config::with_dirs(&mut dbs, &args.agent.dirs)?;
    let (lease_tx, mut lease_rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut keepers, mut parents) = (Vec::new(), Vec::new());
    for (i, d) in dbs.iter_mut().enumerate() {
        d.options.shutdown_timeout = args.shutdown_timeout;
        // The writer lease comes first: the state restored is the one its holder released at.
        let taken = match args.no_lease {
            true => None,
            false => Some(
                lease::take_within(d, &args.agent.lease_flags, true, args.ready_timeout).await?,
            ),
        };
        let at = taken.as_ref().and_then(|t| t.parent);
        d.options.lease = taken.as_ref().map(lease::Taken::fencing);
        keepers.push(taken.map(|t| t.keep(i, lease_tx.clone())));
        parents.push(at);
        // A database restored on boot starts a new generation rather than resuming: another
        // instance may still be running on the old one (an overlapping deploy), and two writers
        // on one generation would fork it.
        let restored = match prepare_missing(d, at).await {
            Ok(r) => r,
            Err(e) => {
                release_untouched(&keepers, &parents).await;
                return Err(e);
            }
        };
        d.options.resume = restored.is_none();
        if let Err(e) = restore_dirs(d, restored, args.on_stale == OnStale::Restore).await {
            release_untouched(&keepers, &parents).await;
            return Err(e);
        }
    }
    if args.no_lease {
        warn!("running without the writer lease (--no-lease): another instance writing the same replica at the same time is not prevented, and an overlapping deploy loses the old instance's last writes");
    }
    let drill_targets: Vec<_> = dbs
        .iter()
        .map(|d| (d.path.clone(), d.replicas[0].clone()))
        .collect();
    let mut sup = Supervisor::new();
    for d in dbs {
        if let Err(e) = start(&mut sup, d, args.on_stale).await {
            let _ = sup.stop().await;
            return Err(e);
        }
    }
    for f in folders {
        if let Err(e) = sup.start_folder(f).await {
            let _ = sup.stop().await;
            return Err(e.into());
        }
    }
    if let Some(addr) = &args.agent.health_addr {
        if let Err(e) = http::serve_agents(addr, sup.registry()) {
            let _ = sup.stop().await;
            return Err(e);
        }
    }
    for (k, h) in keepers.iter().zip(sup.handles()) {
        if let Some(k) = k {
            k.show_in(h.status.clone());
        }
    }
    let statuses: Vec<_> = sup
        .registry()
        .snapshot()
        .into_iter()
        .map(|r| r.status)
        .collect();
    if let Err(e) = wait_ready(&statuses, args.ready_timeout).await {
        let _ = sup.stop().await;
        return Err(e);
    }
    info!("first sync complete; starting the app");

    // Handlers go in before the child starts, so no signal meant for it is lost.
    let mut streams = Vec::new();
    for sig in FORWARDED {
        streams.push((
            sig,
            signal(SignalKind::from_raw(sig as i32)).context("install signal handler")?,
        ));
    }
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = sup.stop().await;
            return Err(
                anyhow::Error::new(e).context(format!("cannot start {:?}", args.command[0]))
            );
        }
    };
    let pid = Pid::from_raw(child.id().context("the app has no pid")? as i32);
    let forwarders: Vec<_> = streams
        .into_iter()
        .map(|(sig, mut s)| {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    info!(signal = sig.as_str(), "forwarding signal to the app");
                    if let Err(e) = kill(pid, sig) {
                        warn!(signal = sig.as_str(), error = %e, "cannot forward signal");
                    }
                }
            })
        })
        .collect();
    let drills = args.drill_interval.map(|every| {
        let targets: Vec<_> = drill_targets
            .into_iter()
            .zip(sup.handles().iter().map(|h| h.status.clone()))
            .collect();
        tokio::spawn(drill_loop(every, targets))
    });
    // Freezes of the app's writes (a handoff, a lost lease) are held until it exits.
    let mut frozen = Vec::new();
    let mut handed_over = false;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.context("waiting for the app")?,
            Some((i, ev)) = lease_rx.recv() => {
                let (h, k) = (&sup.handles()[i], &mut keepers[i]);
                match (ev, k.as_ref()) {
                    (Event::HandoffRequested(req), Some(keeper)) => {
                        match lease::hand_over(h, keeper, &req, args.agent.lease_flags.handoff_timeout).await {
                            Ok(f) => { frozen.push(f); *k = None; handed_over = true; }
                            Err(e) => error!(db = %h.path().display(), error = %format!("{e:#}"), "handoff failed: this instance keeps the lease and the app goes on"),
                        }
                    }
                    (Event::Lost(why), _) => {
                        *k = None;
                        frozen.extend(lease::lost(h, &why).await);
                    }
                    (Event::HandoffRequested(_), None) => {}
                }
            }
        }
    };
    if let Some(d) = drills {
        d.abort();
    }
    for f in forwarders {
        f.abort();
    }
    let code = exit_code_of(status);
    info!(status = %status, "the app exited; final sync");
    let flushes: Vec<_> = sup.handles().iter().map(|h| h.flush.clone()).collect();
    let stopped = sup.stop().await;
    let held: Vec<_> = keepers
        .into_iter()
        .zip(flushes)
        .filter_map(|(k, f)| Some((k?, f)))
        .collect();
    lease::release_all(held, stopped.is_ok()).await;
    drop(frozen);
    // After a handoff everything committed was shipped before the lease went: a final sync
    // refused for want of the lease loses nothing.
    if stopped.is_ok() || handed_over {
        info!("final sync complete");
        Ok(ExitCode::from(code))
    } else if code == 0 {
        error!("the app succeeded but its newest writes may not be in the replica: exiting {EXIT_SYNC_FAILED}");
        Ok(ExitCode::from(EXIT_SYNC_FAILED))
    } else {
        Ok(ExitCode::from(code))
    }
}

/// Releases the writer leases of a boot that failed before anything was shipped (a restore
/// that could not be written, say), each at the state it was taken at: the next boot (a
/// supervisor's restart) takes it at once instead of waiting out its TTL.
async fn release_untouched(keepers: &[Option<lease::Keeper>], parents: &[Option<At>]) {
    for (k, at) in keepers.iter().zip(parents) {
        let Some(k) = k else { continue };
        match tokio::time::timeout(Duration::from_secs(5), k.release(*at)).await {
            Ok(Ok(())) => info!("the boot failed: writer lease released"),
            Ok(Err(e)) => warn!(error = %format!("{e:#}"), "the boot failed and the writer lease could not be released: the next instance waits for it to expire"),
            Err(_) => warn!("the boot failed and releasing the writer lease timed out: the next instance waits for it to expire"),
        }
    }
}

/// A database to drill: its path, the replica to restore from, its agent's status.
type DrillTarget = (
    (PathBuf, std::sync::Arc<dyn ReplicaClient>),
    std::sync::Arc<lifeboat_agent::status::Status>,
);

/// Runs a drill of each database every `every` (the first one `every` after start), recording
/// the outcome for /metrics and storing each report in the replica.
async fn drill_loop(every: Duration, targets: Vec<DrillTarget>) {
    use lifeboat_agent::drill::{self, DrillOptions};
    use lifeboat_agent::status::DrillOutcome;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        for ((db, client), status) in &targets {
            let opts = DrillOptions {
                live: Some(db.clone()),
                ..Default::default()
            };
            let at_ms = now_ms();
            match drill::drill(client.as_ref(), &opts).await {
                Ok(mut report) => {
                    match drill::store(client.as_ref(), &report).await {
                        Ok(key) => report.report_key = Some(key),
                        Err(e) => {
                            report.problem(format!("cannot store the drill report: {}", e.chain()))
                        }
                    }
                    status.record_drill(DrillOutcome {
                        ok: report.ok,
                        rto_seconds: report.rto_seconds,
                        at_ms,
                    });
                    let summary = crate::human::drill_summary(&report);
                    if report.ok {
                        info!(db = %db.display(), "{summary}");
                    } else {
                        error!(db = %db.display(), "{summary}");
                    }
                }
                Err(e) => {
                    status.record_drill(DrillOutcome {
                        ok: false,
                        rto_seconds: None,
                        at_ms,
                    });
                    error!(db = %db.display(), error = %e.chain(), "DRILL FAILED: could not run");
                }
            }
        }
    }
}
