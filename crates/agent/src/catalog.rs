//! What a replica holds: its generations, snapshots and segments, from one listing.
//!
//! What an older lease epoch wrote after a newer one took over is set aside as it loads (see
//! [`crate::catalog::fences`]), so no reader extends the history with it.

use std::collections::BTreeMap;

use lifeboat_storage::keys::{self, Fence, Key};
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::any_segment::AnySegment;
use lifeboat_wal::segment::{SegmentHeader, WalPosition, HEADER_SIZE as SEG_HEADER_SIZE};
use lifeboat_wal::snapshot::{
    SnapshotHeader, SnapshotTrailer, HEADER_SIZE as SNAP_HEADER_SIZE, TRAILER_SIZE,
};
use lifeboat_wal::{DbChecksum, Generation, TxId};

use crate::{Error, Result};

pub mod fences;

/// A snapshot: the database right after transaction `txid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The key as stored.
    pub key: String,
    /// The state is the one after this transaction (0: the generation's first snapshot).
    pub txid: TxId,
    /// When that state was current (Unix ms).
    pub time_ms: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A segment, or a pack of segments (see [`Segment::is_pack`]): transactions `first..=last`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The key as stored.
    pub key: String,
    /// First transaction.
    pub first: TxId,
    /// Last transaction.
    pub last: TxId,
    /// When the agent saw the last transaction (Unix ms).
    pub time_ms: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Segment {
    /// Whether the object is a pack (`.lbpack`): consecutive segments back to back (see
    /// `lifeboat_wal::pack`), read with [`crate::catalog::parts`].
    pub fn is_pack(&self) -> bool {
        self.key.ends_with(".lbpack")
    }
}

/// The objects of one generation, each list sorted by key (so by transaction).
#[derive(Clone, Debug, Default)]
pub struct GenerationObjects {
    /// Snapshots.
    pub snapshots: Vec<Snapshot>,
    /// Segments.
    pub segments: Vec<Segment>,
    /// Its fence, if an agent holding the writer lease wrote it (see [`crate::catalog::fences`]).
    pub fence: Option<Fence>,
    /// Retention is deleting it (its `pruning` marker is present): not restorable, whatever
    /// objects are left.
    pub pruning: bool,
}

impl GenerationObjects {
    /// Bytes stored.
    pub fn bytes(&self) -> u64 {
        self.snapshots.iter().map(|s| s.size).sum::<u64>()
            + self.segments.iter().map(|s| s.size).sum::<u64>()
    }

    /// The newest time the generation holds a restore point for (Unix ms), if any object.
    pub fn newest_time(&self) -> Option<u64> {
        let snaps = self.snapshots.iter().map(|s| s.time_ms);
        snaps.chain(self.segments.iter().map(|s| s.time_ms)).max()
    }

    /// The segment reaching furthest (the last by key, unless a redundant copy landed late).
    pub fn last_segment(&self) -> Option<&Segment> {
        self.segments.iter().rev().max_by_key(|s| s.last)
    }

    /// The segments after the newest snapshot (what a restore of the newest state applies):
    /// how many, and their bytes.
    pub fn since_snapshot(&self) -> (usize, u64) {
        let base = self.snapshots.last().map_or(TxId(0), |s| s.txid);
        self.segments
            .iter()
            .filter(|s| s.last > base)
            .fold((0, 0), |(n, b), s| (n + 1, b + s.size))
    }
}

/// Everything in a replica, by generation.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Generations in creation order.
    pub generations: BTreeMap<Generation, GenerationObjects>,
    /// Keys under `generations/` that lifeboat did not write.
    pub foreign: Vec<String>,
    /// Objects an older lease epoch wrote after a newer one took over: ignored by every reader.
    pub stale: Vec<crate::catalog::fences::StaleObject>,
}

impl Catalog {
    /// Lists the replica (one paginated LIST of `generations/`).
    pub async fn load(client: &dyn ReplicaClient) -> Result<Catalog> {
        let mut cat = Catalog::default();
        for o in client.list(keys::GENERATIONS).await? {
            if let Some(g) = keys::parse_pruning_marker(&o.key) {
                cat.generations.entry(g).or_default().pruning = true;
                continue;
            }
            let Some(key) = Key::parse(&o.key) else {
                if let Some(f) = Fence::parse(&o.key) {
                    let g = cat.generations.entry(f.generation).or_default();
                    if g.fence.is_none_or(|old| old.epoch < f.epoch) {
                        g.fence = Some(f);
                    }
                } else {
                    cat.foreign.push(o.key);
                }
                continue;
            };
            let g = cat.generations.entry(key.generation()).or_default();
            match key {
                Key::Snapshot { txid, time_ms, .. } => g.snapshots.push(Snapshot {
                    key: o.key,
                    txid,
                    time_ms,
                    size: o.size,
                }),
                Key::Segment {
                    first,
                    last,
                    time_ms,
                    ..
                }
                | Key::Pack {
                    first,
                    last,
                    time_ms,
                    ..
                } => g.segments.push(Segment {
                    key: o.key,
                    first,
                    last,
                    time_ms,
                    size: o.size,
                }),
            }
        }
        crate::catalog::fences::apply(&mut cat);
        if let Some(first) = cat.stale.first() {
            tracing::warn!(
                replica = %client.describe(),
                objects = cat.stale.len(),
                first = %first.key,
                reason = %first.reason,
                "IGNORING objects written by a lease holder after a newer one took over (a paused \
                 or partitioned old instance): they are not part of the history"
            );
        }
        Ok(cat)
    }

    /// The newest generation that has a snapshot and is not being pruned (so can be restored):
    /// of the highest lease epoch, then the most recently created.
    pub fn latest(&self) -> Option<(Generation, &GenerationObjects)> {
        self.generations
            .iter()
            .filter(|(_, o)| !o.pruning && !o.snapshots.is_empty())
            .max_by_key(|(g, o)| (crate::catalog::fences::epoch(o), **g))
            .map(|(g, o)| (*g, o))
    }
}

/// The segments an object holds, each with its bytes and a catalog entry of its own: the object
/// itself for a segment; for a pack, its parts (verified by `lifeboat_wal::pack::split`: both
/// CRCs, every length, and parts that continue each other), which must cover exactly the
/// transactions its key names, and of which those past `o.last` are dropped (a pack that fencing
/// cut short, see [`crate::catalog::fences`]). Each part's own CRCs are checked when it is opened.
pub fn parts(o: &Segment, b: bytes::Bytes) -> Result<Vec<(Segment, bytes::Bytes)>> {
    let corrupt = |cause| Error::Corrupt {
        key: o.key.clone(),
        cause,
    };
    let bad = |reason: String| corrupt(lifeboat_wal::Error::Corrupt { offset: 0, reason });
    if !o.is_pack() {
        if lifeboat_wal::pack::is_pack(&b) {
            return Err(bad("a pack stored under a segment's name".into()));
        }
        return Ok(vec![(o.clone(), b)]);
    }
    let Some(Key::Pack {
        first,
        last,
        time_ms,
        ..
    }) = Key::parse(&o.key)
    else {
        return Err(bad("not a pack's key".into()));
    };
    let split = lifeboat_wal::pack::split(&b).map_err(corrupt)?;
    let (h0, hn) = (&split[0].0, &split[split.len() - 1].0);
    if h0.first_txid != first || hn.last_txid != last || hn.last_time_ms != time_ms {
        return Err(bad(format!(
            "its parts hold txids {}..{} (last seen at {}), its name says {}..{} (at {})",
            h0.first_txid.0, hn.last_txid.0, hn.last_time_ms, first.0, last.0, time_ms
        )));
    }
    let mut out = Vec::with_capacity(split.len());
    for (i, (h, part)) in split.into_iter().enumerate() {
        if h.last_txid > o.last {
            break;
        }
        out.push((
            Segment {
                key: format!("{} (part {i})", o.key),
                first: h.first_txid,
                last: h.last_txid,
                time_ms: h.last_time_ms,
                size: part.len() as u64,
            },
            part,
        ));
    }
    if out.last().map(|(s, _)| s.last) != Some(o.last) {
        return Err(bad(format!(
            "no part ends at txid {}, where the history it belongs to ends",
            o.last.0
        )));
    }
    Ok(out)
}

/// [`parts`], each opened ([`AnySegment::open`]: its CRCs, its structure, its body
/// decompressed), an error naming the part at fault.
pub fn open_parts(o: &Segment, b: bytes::Bytes) -> Result<Vec<(Segment, AnySegment)>> {
    open_parts_in(o, b, &mut Vec::new)
}

/// [`open_parts`], each part's body decompressed into a buffer from `buffer` (see
/// [`AnySegment::open_in`]).
pub fn open_parts_in(
    o: &Segment,
    b: bytes::Bytes,
    buffer: &mut dyn FnMut() -> Vec<u8>,
) -> Result<Vec<(Segment, AnySegment)>> {
    parts(o, b)?
        .into_iter()
        .map(|(part, b)| match AnySegment::open_in(&b, buffer()) {
            Ok(any) => Ok((part, any)),
            Err(cause) => Err(Error::Corrupt {
                key: part.key,
                cause,
            }),
        })
        .collect()
}

/// Where a generation's history ends: the state a resuming agent must find locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tip {
    /// Generation.
    pub generation: Generation,
    /// Last transaction.
    pub txid: TxId,
    /// Where the source WAL stood after it.
    pub wal: WalPosition,
    /// Database checksum after it.
    pub checksum: DbChecksum,
    /// Database size in pages after it.
    pub db_size: u32,
    /// Page size.
    pub page_size: u32,
    /// When it was seen (Unix ms).
    pub time_ms: u64,
}

/// Reads the tip of a generation from the header of its last object.
pub async fn tip(
    client: &dyn ReplicaClient,
    generation: Generation,
    objs: &GenerationObjects,
) -> Result<Tip> {
    let snap = objs.snapshots.last().ok_or(Error::NoSnapshot(generation))?;
    if let Some(seg) = objs.last_segment().filter(|s| s.last > snap.txid) {
        let h = if seg.is_pack() {
            // The last part's header: a pack is small (see `replica::packing`), so read whole.
            let b = client.get(&seg.key).await?;
            let parts = parts(seg, b)?;
            let (s, b) = parts.last().expect("parts() returns at least one");
            SegmentHeader::decode(b).map_err(|e| Error::Corrupt {
                key: s.key.clone(),
                cause: e,
            })?
        } else {
            let b = client
                .get_range(&seg.key, 0..SEG_HEADER_SIZE as u64)
                .await?;
            SegmentHeader::decode(&b).map_err(|e| Error::Corrupt {
                key: seg.key.clone(),
                cause: e,
            })?
        };
        return Ok(Tip {
            generation,
            txid: h.last_txid,
            wal: h.wal,
            checksum: h.checksum_after,
            db_size: h.db_size,
            page_size: h.page_size,
            time_ms: h.last_time_ms,
        });
    }
    let hb = client
        .get_range(&snap.key, 0..SNAP_HEADER_SIZE as u64)
        .await?;
    let corrupt = |e| Error::Corrupt {
        key: snap.key.clone(),
        cause: e,
    };
    let h = SnapshotHeader::decode(&hb).map_err(corrupt)?;
    let tb = client
        .get_range(
            &snap.key,
            snap.size.saturating_sub(TRAILER_SIZE as u64)..snap.size,
        )
        .await?;
    let t = SnapshotTrailer::decode(&tb).map_err(corrupt)?;
    Ok(Tip {
        generation,
        txid: h.txid,
        wal: h.wal,
        checksum: t.checksum,
        db_size: t.page_count,
        page_size: h.page_size,
        time_ms: h.time_ms,
    })
}
