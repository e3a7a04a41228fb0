//! Comparing the live database with the replica.
//!
//! The live database is read in one read transaction on a read-only connection of its own
//! (through `sqlite_dbpage`), so its state is consistent even while the app writes; the read-only
//! connection never checkpoints. Its database checksum is then compared with the replica:
//! - equal to the restored newest state: the replica is current ([`LiveVerdict::Current`]);
//! - equal to the restored state followed by the next *k* whole transactions of the live `-wal`
//!   file (verified with SQLite's frame checksums, either continuing from the replica's last
//!   frame or from the start of the current log cycle): the live database has *k* commits the
//!   replica does not have yet, which is replication lag, not a failure ([`LiveVerdict::Lagging`]);
//! - equal to an older commit (or snapshot) of the generation: the replica holds commits the live
//!   database does not, so the live database is a stale or rolled-back copy
//!   ([`LiveVerdict::ReplicaAhead`], a failure);
//! - anything else: the live database cannot be shown to descend from the replica's state
//!   ([`LiveVerdict::Diverged`], a failure). This includes a live database whose unshipped
//!   commits were already checkpointed out of its WAL, which a running agent never allows (its
//!   pin keeps every unshipped frame in the WAL), so it means no agent is keeping up.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use bytes::Bytes;
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::checksum::PageHashes;
use lifeboat_wal::snapshot::{SnapshotTrailer, TRAILER_SIZE};
use lifeboat_wal::transaction::Frames;
use lifeboat_wal::{DbChecksum, Generation, TxId};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::blocking;
use crate::catalog::{self, GenerationObjects};
use crate::files;
use crate::restore::RestoreReport;
use crate::walfile::{position_in_cycle, Continuity, Cursor, WalFile};
use crate::{Error, Result};

/// How the live database relates to the replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveVerdict {
    /// The live database is exactly the replica's newest state.
    Current,
    /// The live database is the replica's newest state plus whole transactions still in its WAL
    /// that the replica does not have yet (replication lag).
    Lagging,
    /// The live database is an older state of the replica's history: the replica is ahead of it
    /// (a stale disk, a rolled-back copy, or a second writer).
    ReplicaAhead,
    /// The live database is not provably the replica's state nor a continuation of it.
    Diverged,
    /// The live database could not be read.
    Unreadable,
}

/// The comparison with the live database.
#[derive(Clone, Debug, Serialize)]
pub struct LiveCheck {
    /// The live database.
    pub path: String,
    /// Its database checksum, from one consistent read transaction.
    pub checksum: Option<String>,
    /// Its pages.
    pub pages: Option<u32>,
    /// How it relates to the replica.
    pub verdict: LiveVerdict,
    /// Transactions the live database has that the replica does not (0 when current; `None`
    /// when not known).
    pub unshipped_commits: Option<u64>,
    /// Pages that differ from the replica's newest state (page count differences included).
    pub differing_pages: Option<u64>,
    /// For [`LiveVerdict::ReplicaAhead`]: the replica's transaction the live database equals.
    pub matches_txid: Option<String>,
    /// In words.
    pub detail: String,
    /// Whether the live database is consistent with the replica (current or lagging).
    pub ok: bool,
}

/// The live database as one read transaction saw it.
struct LiveState {
    page_size: u32,
    hashes: PageHashes,
    differing: u64,
}

/// Reads every page of the live database in one read transaction of a read-only connection,
/// hashing it and counting the pages that differ from the restored file.
fn read_live(live: &Path, restored: &Path, restored_page_size: u32) -> Result<LiveState> {
    if !live.exists() {
        return Err(Error::NoDatabase(live.to_path_buf()));
    }
    let c = Connection::open_with_flags(
        live,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(live, "open the live database read-only", e))?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| Error::sqlite(live, "set busy timeout", e))?;
    c.execute_batch("BEGIN")
        .map_err(|e| Error::sqlite(live, "begin a read transaction", e))?;
    let res = (|| -> Result<LiveState> {
        let page_size: u32 = c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(live, "read the page size", e))?;
        let ps = page_size as usize;
        let other = File::open(restored)
            .map_err(|e| Error::io(format!("open {}", restored.display()), e))?;
        let other_pages = other
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", restored.display()), e))?
            .len()
            / u64::from(restored_page_size.max(1));
        let mut other = BufReader::with_capacity(1 << 20, other);
        let mut theirs = vec![0u8; restored_page_size as usize];
        let mut hashes = PageHashes::new(ps);
        let mut differing = 0u64;
        let n = files::for_each_dbpage(&c, live, page_size, |pgno, page| {
            hashes.set_page(pgno, page);
            if page_size != restored_page_size || u64::from(pgno) > other_pages {
                differing += 1;
            } else {
                other
                    .read_exact(&mut theirs)
                    .map_err(|e| Error::io(format!("read {}", restored.display()), e))?;
                if theirs != page {
                    differing += 1;
                }
            }
            Ok(())
        })?;
        if page_size == restored_page_size && other_pages > u64::from(n) {
            differing += other_pages - u64::from(n);
        }
        Ok(LiveState {
            page_size,
            hashes,
            differing,
        })
    })();
    let _ = c.execute_batch("COMMIT");
    res
}

/// If the live database is `base` followed by whole transactions of its WAL, how many.
///
/// Two places the transactions after `base` can start: right after the replica's last frame,
/// when the live WAL is still in that log cycle and the frame there is the one the replica
/// recorded; or at the start of the current cycle, when the log restarted since. Either way the
/// frames are verified with SQLite's checksum chain, applied to `base`'s page hashes, and the
/// result compared with the live checksum after each commit.
fn unshipped_commits(
    live: &Path,
    base: &PageHashes,
    tip: &catalog::Tip,
    target: DbChecksum,
    target_pages: u32,
) -> std::io::Result<Option<u64>> {
    let wal = WalFile::for_db(live);
    let Some(h) = wal.header()? else {
        return Ok(None);
    };
    if h.page_size as usize != base.page_size() {
        return Ok(None);
    }
    let mut starts = Vec::new();
    if position_in_cycle(&tip.wal, &h) {
        let c = Cursor {
            header: Some(h),
            offset: tip.wal.end_offset,
            checksum: tip.wal.checksum_after,
            prev: None,
        };
        if wal.check(&c)? == Continuity::Same {
            starts.push(c);
        }
    }
    starts.push(Cursor::at_start(h));
    let ps = h.page_size as usize;
    for start in starts {
        // Frames read from the WAL are verified (checksum chain, salts, page number non-zero).
        let batch = wal.read_batch(&start, usize::MAX)?;
        let mut hs = base.clone();
        for (k, txn) in batch.txns.iter().enumerate() {
            Frames::new(&txn.frames, ps).apply(&mut hs, txn.commit_size);
            if hs.checksum() == target && hs.page_count() == target_pages {
                return Ok(Some(k as u64 + 1));
            }
        }
    }
    Ok(None)
}

/// The transaction of generation `g` whose recorded checksum is `target`, if any (newest first).
async fn find_commit(
    client: &dyn ReplicaClient,
    objs: &GenerationObjects,
    target: DbChecksum,
) -> Result<Option<TxId>> {
    for s in objs.segments.iter().rev() {
        let b = client.get(&s.key).await?;
        let s = s.clone();
        let commits = blocking(move || {
            // Only the commit tables are needed here.
            let parts = crate::catalog::open_parts(&s, b)?;
            Ok(parts
                .into_iter()
                .flat_map(|(_, any)| any.commits)
                .collect::<Vec<_>>())
        })
        .await?;
        if let Some(c) = commits.iter().rev().find(|c| c.checksum == target) {
            return Ok(Some(c.txid));
        }
    }
    for s in objs.snapshots.iter().rev() {
        let b: Bytes = client
            .get_range(&s.key, s.size.saturating_sub(TRAILER_SIZE as u64)..s.size)
            .await?;
        let t = SnapshotTrailer::decode(&b).map_err(|e| Error::Corrupt {
            key: s.key.clone(),
            cause: e,
        })?;
        if t.checksum == target {
            return Ok(Some(s.txid));
        }
    }
    Ok(None)
}

pub(crate) async fn compare_live(
    client: &dyn ReplicaClient,
    live: &Path,
    restored_path: &Path,
    generation: Generation,
    objs: &GenerationObjects,
    restored: &RestoreReport,
    base: PageHashes,
) -> LiveCheck {
    let mut check = LiveCheck {
        path: live.display().to_string(),
        checksum: None,
        pages: None,
        verdict: LiveVerdict::Unreadable,
        unshipped_commits: None,
        differing_pages: None,
        matches_txid: None,
        detail: String::new(),
        ok: false,
    };
    let (lp, rp, ps) = (
        live.to_path_buf(),
        restored_path.to_path_buf(),
        restored.page_size,
    );
    let state = match blocking(move || read_live(&lp, &rp, ps)).await {
        Ok(s) => s,
        Err(e) => {
            check.detail = format!("cannot be read: {}", e.chain());
            return check;
        }
    };
    let sum = state.hashes.checksum();
    let pages = state.hashes.page_count();
    check.checksum = Some(sum.to_string());
    check.pages = Some(pages);
    check.differing_pages = Some(state.differing);
    let newest = format!("generation {generation} txid {}", restored.txid.0);
    if state.page_size == restored.page_size
        && sum == base.checksum()
        && pages == base.page_count()
        && state.differing == 0
    {
        check.verdict = LiveVerdict::Current;
        check.unshipped_commits = Some(0);
        check.ok = true;
        check.detail = format!(
            "equals the replica's newest state ({newest}) page for page: 0 transactions behind"
        );
        return check;
    }
    if state.page_size != restored.page_size {
        check.verdict = LiveVerdict::Diverged;
        check.detail = format!(
            "has page size {}, the replica's newest state ({newest}) has {}: it is another \
             database",
            state.page_size, restored.page_size
        );
        return check;
    }
    // Lag: the restored state plus whole transactions still in the live WAL.
    let tip = catalog::tip(client, generation, objs).await;
    if let Ok(tip) = &tip {
        if tip.txid == restored.txid {
            let (lp, b) = (live.to_path_buf(), base.clone());
            let tip = *tip;
            let found = blocking(move || {
                unshipped_commits(&lp, &b, &tip, sum, pages)
                    .map_err(|e| Error::io("read the live WAL", e))
            })
            .await;
            if let Ok(Some(k)) = found {
                check.verdict = LiveVerdict::Lagging;
                check.unshipped_commits = Some(k);
                check.ok = true;
                check.detail = format!(
                    "is the replica's newest state ({newest}) followed by {k} transaction(s) \
                     still in its WAL that the replica does not have yet (replication lag)"
                );
                return check;
            }
        }
    }
    // An older state of the replica's history: the replica is ahead.
    // A segment gone meanwhile was packed (see `replica::packing`): look again in a new listing.
    let mut found = find_commit(client, objs, sum).await;
    if let Err(Error::Storage(lifeboat_storage::Error::NotFound { .. })) = found {
        found = async {
            let cat = catalog::Catalog::load(client).await?;
            match cat.generations.get(&generation) {
                Some(objs) => find_commit(client, objs, sum).await,
                None => Ok(None),
            }
        }
        .await;
    }
    match found {
        Ok(Some(t)) => {
            check.verdict = LiveVerdict::ReplicaAhead;
            check.matches_txid = Some(t.to_string());
            check.detail = format!(
                "equals txid {} of generation {generation}, but the replica's newest state is \
                 txid {}: the replica is ahead of the live database (diverged: a stale disk, a \
                 rolled-back copy, or another writer on this replica)",
                t.0, restored.txid.0
            );
        }
        Ok(None) => {
            check.verdict = LiveVerdict::Diverged;
            check.detail = format!(
                "differs from the replica's newest state ({newest}) in {} page(s), matches no \
                 recorded commit of generation {generation}, and is not that state followed by \
                 transactions in its WAL: it diverged from the replica (a different history), or \
                 commits the replica never got were checkpointed out of its WAL (is an agent \
                 replicating it?)",
                state.differing
            );
        }
        Err(e) => {
            check.verdict = LiveVerdict::Diverged;
            check.detail = format!(
                "differs from the replica's newest state ({newest}) and is not that state \
                 followed by transactions in its WAL; looking for it among older commits failed: \
                 {}",
                e.chain()
            );
        }
    }
    check
}
