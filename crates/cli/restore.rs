//! `lifeboat restore`: plan from one listing, then restore verified (or print the plan).

use std::process::ExitCode;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use lifeboat_agent::clock::to_ms;
use lifeboat_agent::restore::{self as rs, Target};

use lifeboat_storage::prefixed::Prefixed;

use crate::args::RestoreArgs;
use crate::{config, human, progress, replica_url};

/// Parses `--timestamp`: RFC 3339, or `-15m`-style relative to now.
fn parse_time(s: &str) -> Result<u64> {
    let now = std::time::SystemTime::now();
    let t = if let Some(rel) = s.strip_prefix('-') {
        let d = humantime::parse_duration(rel)
            .with_context(|| format!("--timestamp {s:?}: not a duration like -15m or -2h"))?;
        now - d
    } else {
        humantime::parse_rfc3339_weak(s).with_context(|| {
            format!("--timestamp {s:?}: use RFC 3339 (2026-11-28T17:00:00Z) or -15m")
        })?
    };
    if t < std::time::UNIX_EPOCH {
        anyhow::bail!("--timestamp {s:?} is before 1970");
    }
    Ok(to_ms(t))
}

/// Whether a `restore` argument is a replica URL (else it is a database path).
pub fn is_url(s: &str) -> bool {
    s.contains("://") || s.starts_with("file:")
}

/// Where a restore reads and writes: the replica URL, the database's output path, and the
/// folders to restore with it (`PATH` or `NAME=PATH`).
struct Resolved {
    url: String,
    output: PathBuf,
    dirs: Dirs,
}

/// The folders a restore brings back with the database.
#[derive(Default)]
struct Dirs {
    specs: Vec<String>,
    /// Taken from the configuration rather than named with `--dir`: one the replica holds no
    /// backup of yet (never captured, e.g. empty) is skipped with a note instead of failing the
    /// restore, and a non-empty one is refused naming `--no-dirs` as well as `--force`.
    configured: bool,
}

/// As given, or, for a database path, its first replica in the configuration file and (unless
/// `-o` says otherwise) the path itself. The folders are those of `--dir`; without it, a database
/// restored to its own path brings back the folders the configuration backs up with it (`dirs`),
/// each to its configured path (a database restored elsewhere with `-o` does not: its folders'
/// paths are the live ones, so they need `--dir`).
fn resolve(r: &RestoreArgs) -> Result<Resolved> {
    if is_url(&r.url) {
        let output = r.output.clone().with_context(|| {
            format!(
                "restoring from a replica URL needs -o (where to write the database); or name \
                 a database of the configuration file instead of {}",
                lifeboat_storage::url::redact(&r.url)
            )
        })?;
        return Ok(Resolved {
            url: r.url.clone(),
            output,
            dirs: Dirs {
                specs: r.dirs.clone(),
                configured: false,
            },
        });
    }
    let config = config::locate(r.config.clone(), |k| std::env::var(k).ok());
    if !config.exists() {
        bail!(
            "{} is not a replica URL (file:///..., s3://...) and there is no configuration file \
             at {} to find it in (pass --config or set LIFEBOAT_CONFIG)",
            r.url,
            config.display()
        );
    }
    let db = PathBuf::from(&r.url);
    let entry = config::find(&config, &db)?;
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let in_place = r.output.as_ref().is_none_or(|o| abs(o) == abs(&db));
    let dirs = match (r.dirs.is_empty(), in_place) {
        (false, _) => Dirs {
            specs: r.dirs.clone(),
            configured: false,
        },
        (true, _) if r.no_dirs => Dirs::default(),
        (true, true) => Dirs {
            specs: entry.dirs.clone(),
            configured: true,
        },
        (true, false) => {
            if !entry.dirs.is_empty() {
                println!(
                    "note: the folders backed up with {} ({}) are not restored with -o; add \
                     --dir NAME=PATH for each to restore it elsewhere",
                    db.display(),
                    entry.dirs.join(", ")
                );
            }
            Dirs::default()
        }
    };
    Ok(Resolved {
        url: entry.replicas[0].clone(),
        output: r.output.clone().unwrap_or(db),
        dirs,
    })
}

pub async fn restore(r: RestoreArgs) -> Result<ExitCode> {
    if r.all_databases {
        return restore_all(r).await;
    }
    let Resolved { url, output, dirs } = resolve(&r)?;
    if r.if_db_not_exists && output.exists() {
        println!(
            "{} exists; nothing to do (--if-db-not-exists)",
            output.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = replica_url::open(&url).await?;
    if let Some(name) = &r.database {
        client = Arc::new(Prefixed::new(client, name)?);
    }
    restore_one(&r, client.as_ref(), &output, &dirs).await
}

/// `--all-databases`: every database of a folder-of-databases replica into the folder
/// `--output`, one after the other; the first failure stops (those restored stay).
async fn restore_all(r: RestoreArgs) -> Result<ExitCode> {
    if !is_url(&r.url) {
        bail!("--all-databases restores from a replica URL (file:///..., s3://...)");
    }
    if !r.dirs.is_empty() {
        bail!("--dir goes with one database, not with --all-databases");
    }
    let dir = r
        .output
        .clone()
        .context("--all-databases needs -o FOLDER (where the databases go)")?;
    let base = replica_url::open(&r.url).await?;
    let listing = base
        .list("")
        .await
        .with_context(|| format!("cannot list {}", base.describe()))?;
    let names = lifeboat_storage::prefixed::names(&listing);
    if names.is_empty() {
        if r.if_replica_exists {
            println!(
                "{} holds no databases yet; nothing to do (--if-replica-exists)",
                base.describe()
            );
            return Ok(ExitCode::SUCCESS);
        }
        bail!(
            "{} holds no folder of databases (no <name>/generations/ objects); for a single \
             database's replica, leave out --all-databases",
            base.describe()
        );
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    for name in &names {
        let out = dir.join(name);
        if r.if_db_not_exists && out.exists() {
            println!("{} exists; skipped (--if-db-not-exists)", out.display());
            continue;
        }
        let client = Prefixed::new(base.clone(), name)?;
        restore_one(&r, &client, &out, &Dirs::default()).await?;
    }
    println!("{} database(s) of {}", names.len(), base.describe());
    Ok(ExitCode::SUCCESS)
}

/// Restores (or plans, with `--dry-run`) the database in `client` into `output`.
async fn restore_one(
    r: &RestoreArgs,
    client: &dyn lifeboat_storage::ReplicaClient,
    output: &std::path::Path,
    dirs: &Dirs,
) -> Result<ExitCode> {
    let configured = dirs.configured;
    let dirs = crate::config::dir_specs(&dirs.specs)?;
    if !r.dry_run {
        for d in &dirs {
            lifeboat_dirs::restore::check_output(&d.path, r.force).map_err(|e| {
                let e = anyhow::Error::new(e);
                if configured {
                    e.context(format!(
                        "the configuration backs up folder {} with this database; pass \
                         --no-dirs to restore only the database",
                        d.path.display()
                    ))
                } else {
                    e
                }
            })?;
        }
    }
    let target = match (&r.txid, &r.timestamp) {
        (Some(t), _) => Target::TxId(human::parse_txid(t).context("--txid")?),
        (None, Some(ts)) => Target::Time(parse_time(ts)?),
        (None, None) => Target::Latest,
    };
    let generation = match &r.generation {
        Some(g) => Some(g.parse().context("--generation takes 16 hex digits")?),
        None => None,
    };
    let opts = rs::RestoreOptions {
        output: output.to_path_buf(),
        generation,
        target,
        parallelism: r.parallelism,
        force: r.force,
        progress: progress::bar("restoring", progress::Unit::Bytes),
        mode: r.mode,
        every_commit: false,
    };
    let cat = lifeboat_agent::catalog::Catalog::load(client)
        .await
        .with_context(|| format!("cannot list {}", client.describe()))?;
    if cat.latest().is_none() && r.if_replica_exists {
        println!(
            "{} holds no backup yet; nothing to do (--if-replica-exists)",
            client.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let plan = rs::plan(&cat, generation, target)
        .with_context(|| format!("cannot restore from {}", client.describe()))?;
    if r.dry_run {
        println!("restore plan for {} (nothing written):", output.display());
        println!("  generation {}", plan.generation);
        println!("  target     {}", human::target(target));
        println!(
            "  snapshot   {} (txid {}, {})",
            plan.snapshot.key,
            human::txid(plan.snapshot.txid),
            human::bytes(plan.snapshot.size)
        );
        for s in &plan.segments {
            println!(
                "  segment    {} (txids {}..{}, {})",
                s.key,
                human::txid(s.first),
                human::txid(s.last),
                human::bytes(s.size)
            );
        }
        println!(
            "  {} objects, {} to download",
            1 + plan.segments.len(),
            human::bytes(plan.bytes())
        );
        if output.exists() && !r.force {
            println!(
                "  note: {} exists; a real run needs --force",
                output.display()
            );
        }
        for d in &dirs {
            println!(
                "  folder     {} ({}) as of the same point",
                d.path.display(),
                d.name
            );
            if lifeboat_dirs::restore::check_output(&d.path, r.force).is_err() {
                println!(
                    "  note: {} is not empty; a real run needs --force (which moves it aside)",
                    d.path.display()
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = rs::execute(client, &plan, &opts)
        .await
        .with_context(|| format!("restore from {} failed", client.describe()))?;
    for d in &dirs {
        let at = Some((report.generation, report.txid));
        let f = match lifeboat_dirs::restore::restore(client, &d.name, at, &d.path, r.force).await {
            Err(lifeboat_dirs::Error::NoBackup { .. }) if configured => {
                println!(
                    "note: {} holds no backup of folder {} ({}) yet; left as it is",
                    client.describe(),
                    d.path.display(),
                    d.name
                );
                continue;
            }
            f => f,
        };
        let f = f.with_context(|| {
            format!(
                "restore of folder {} failed (the database was restored)",
                d.path.display()
            )
        })?;
        println!(
            "restored folder {} ({}) as of the same point: {} files, {} bytes, every SHA-256 verified{}",
            d.path.display(),
            f.manifest.key(&d.name),
            f.files,
            f.bytes,
            f.moved_aside.map(|p| format!("; the old folder was moved to {}", p.display())).unwrap_or_default()
        );
    }
    println!("{}: {}", output.display(), human::restored(&report));
    Ok(ExitCode::SUCCESS)
}
