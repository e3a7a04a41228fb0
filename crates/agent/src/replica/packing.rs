//! Packing: consecutive small segments, once stored, are stored again as one *pack* object (see
//! `lifeboat_wal::pack`) and the originals deleted, so that a restore reads one object where it
//! would read many.
//!
//! An app that commits every few seconds ships one segment of a few KiB per commit (each commit
//! a restore point within a second), and a restore of the newest state reads every segment since
//! the last snapshot: up to `snapshot-segments` (1000) objects, each a GET whose cost is the
//! round trip, not the bytes. Packing the segments in sixteens cuts that by sixteen for the price of
//! one more PUT per sixteen segments (6 %) and their bytes once more (small by construction).
//!
//! Safety rests on order and on what a pack is:
//! - a pack holds the very bytes of segments whose uploads succeeded (kept in memory: at most
//!   [`PACK_PARTS`] × [`PACK_PART_MAX`]), so it holds nothing the replica did not already hold;
//! - the originals are deleted only after the pack's upload succeeded (a create-only write that
//!   the store confirmed, its checksum verified by the store), and only while this agent may
//!   still write (its lease, if any);
//! - a failure anywhere leaves the originals: a pack that failed is retried never (the segments
//!   stay as they are); an original that could not be deleted is a redundant copy, which a
//!   restore reads and checks against the pack like any other;
//! - a restore that listed an original that a pack then replaced lists again (see
//!   `restore::execute`).

use bytes::Bytes;
use lifeboat_storage::keys::Key;
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};
use tracing::{debug, info, warn};

use crate::context::Context;
use crate::walfile::WalFile;

/// Segments per pack.
pub const PACK_PARTS: usize = 16;
/// Segments larger than this are never packed (a restore's GET of one is worth its round trip).
pub const PACK_PART_MAX: usize = 16 * 1024;
/// Bytes all the replicas of the process may hold for packing at once. One agent may replicate
/// a thousand databases: each one holding its last 15 small segments would cost tens of MiB, so
/// past this a replica lets its run go (its segments stay as they are) rather than hold more.
pub const PACK_HELD_MAX: usize = 4 * 1024 * 1024;

/// Bytes held by every [`Packer`] of the process.
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Takes `n` bytes of the process's packing allowance, if that many are left.
fn take_allowance(n: usize) -> bool {
    use std::sync::atomic::Ordering;
    HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
        (held + n <= PACK_HELD_MAX).then_some(held + n)
    })
    .is_ok()
}

fn give_back(n: usize) {
    HELD.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
}

/// A stored segment, kept to be packed.
#[derive(Clone, Debug)]
struct Part {
    key: String,
    body: Bytes,
    first: TxId,
    last: TxId,
    time_ms: u64,
}

/// The small segments a replica stored last in its generation, in order, none of them packed.
#[derive(Debug, Default)]
pub(crate) struct Packer {
    parts: Vec<Part>,
    /// Bytes of `parts`, taken from the process's allowance ([`PACK_HELD_MAX`]).
    held: usize,
    /// The replica refused to delete packed segments: pack no more (see [`Packed`]).
    off: bool,
}

impl Clone for Packer {
    /// A copy holds no segments (it would count against the allowance twice).
    fn clone(&self) -> Packer {
        Packer {
            parts: Vec::new(),
            held: 0,
            off: self.off,
        }
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        self.clear();
    }
}

/// A pack ready to upload, and the segments it replaces.
#[derive(Debug)]
pub(crate) struct Pack {
    key: String,
    body: Bytes,
    originals: Vec<String>,
}

impl Packer {
    /// Packs no more segments (in this generation).
    pub(crate) fn stop(&mut self) {
        self.off = true;
        self.clear();
    }

    /// Lets the run go.
    fn clear(&mut self) {
        self.parts.clear();
        give_back(std::mem::take(&mut self.held));
    }

    /// Records a segment just stored (`first..=last`), and returns a pack once `parts` small
    /// ones follow each other. A larger segment, or one that does not continue the last,
    /// starts the run again (those before it stay as they are).
    pub(crate) fn stored(
        &mut self,
        generation: Generation,
        key: &str,
        body: &Bytes,
        (first, last, time_ms): (TxId, TxId, u64),
        parts: usize,
    ) -> Option<Pack> {
        if self.parts.last().is_some_and(|p| p.last.next() != first) {
            self.clear();
        }
        if self.off || parts < 2 || body.len() > PACK_PART_MAX || !take_allowance(body.len()) {
            self.clear();
            return None;
        }
        self.held += body.len();
        self.parts.push(Part {
            key: key.to_owned(),
            body: body.clone(),
            first,
            last,
            time_ms,
        });
        if self.parts.len() < parts {
            return None;
        }
        let parts = std::mem::take(&mut self.parts);
        give_back(std::mem::take(&mut self.held));
        let (head, tail) = (&parts[0], &parts[parts.len() - 1]);
        let key = Key::Pack {
            generation,
            first: head.first,
            last: tail.last,
            time_ms: tail.time_ms,
        }
        .to_string();
        let bodies: Vec<&[u8]> = parts.iter().map(|p| &p.body[..]).collect();
        let body = Bytes::from(lifeboat_wal::pack::encode(&bodies));
        Some(Pack {
            key,
            body,
            originals: parts.into_iter().map(|p| p.key).collect(),
        })
    }
}

/// What became of a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Packed {
    /// Stored, and its segments deleted (or left as redundant copies after a passing failure).
    Stored,
    /// Stored, but the replica refuses deletions (a key without `s3:DeleteObject`): packing
    /// would only add objects, so the replica stops packing.
    DeletesRefused,
    /// Not stored: the segments stay as they are.
    Failed,
}

/// Uploads `pack`, then deletes the segments it holds. Nothing here fails the replica: what
/// goes wrong leaves the segments as they were, or an original beside the pack.
pub(crate) fn upload(
    ctx: &Context,
    wal: &WalFile,
    client: &dyn ReplicaClient,
    pack: Pack,
) -> Packed {
    let stored = crate::lease::may_write(ctx).and_then(|()| {
        crate::upload::bounded(ctx, wal, async {
            Ok(client.put(&pack.key, pack.body.clone()).await?)
        })
    });
    if let Err(e) = stored {
        warn!(key = %pack.key, error = %e, "could not store a pack of segments; they stay as they are (a restore reads them one by one)");
        return Packed::Failed;
    }
    // The deletions go out together (on S3 one DeleteObjects request, not sixteen), each
    // answered on its own.
    let deleted = crate::lease::may_write(ctx).and_then(|()| {
        crate::upload::bounded(ctx, wal, async {
            Ok(client.delete_many(&pack.originals).await)
        })
    });
    let results = match deleted {
        Ok(r) => r,
        Err(e) => {
            info!(pack = %pack.key, error = %e, "packed segments not deleted: restores read them as redundant copies, and check them against the pack");
            return Packed::Stored;
        }
    };
    let mut left = 0;
    for (key, r) in pack.originals.iter().zip(results) {
        match r {
            Ok(()) => {}
            Err(e) if e.is_setup() => {
                warn!(replica = %client.describe(), key = %key, error = %e, "the replica refuses to delete a segment that a pack holds: packing stops for this generation (allow s3:DeleteObject, which retention needs too, or set pack-segments = 0)");
                return Packed::DeletesRefused;
            }
            Err(e) => {
                left += 1;
                debug!(key = %key, error = %e, "could not delete a packed segment");
            }
        }
    }
    if left > 0 {
        info!(pack = %pack.key, left, "some packed segments could not be deleted: restores read them as redundant copies, and check them against the pack");
    }
    debug!(key = %pack.key, parts = pack.originals.len(), bytes = pack.body.len(), "segments packed");
    Packed::Stored
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allowance is the process's: one test at a time uses it.
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn stored(p: &mut Packer, first: u64, last: u64, len: usize) -> Option<Pack> {
        let key = Key::Segment {
            generation: Generation(1),
            first: TxId(first),
            last: TxId(last),
            time_ms: last,
        }
        .to_string();
        let body = Bytes::from(vec![0u8; len]);
        p.stored(
            Generation(1),
            &key,
            &body,
            (TxId(first), TxId(last), last),
            3,
        )
    }

    #[test]
    fn runs_of_small_consecutive_segments_are_packed() {
        let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = Packer::default();
        assert!(stored(&mut p, 1, 1, 100).is_none());
        assert!(stored(&mut p, 2, 4, 100).is_none());
        let pack = stored(&mut p, 5, 5, 100).expect("three parts");
        assert_eq!(pack.originals.len(), 3);
        assert!(pack.key.ends_with(".lbpack"), "{}", pack.key);
        assert_eq!(
            Key::parse(&pack.key),
            Some(Key::Pack {
                generation: Generation(1),
                first: TxId(1),
                last: TxId(5),
                time_ms: 5
            })
        );
        // A large segment starts the run again; so does a gap.
        assert!(stored(&mut p, 6, 6, 100).is_none());
        assert!(stored(&mut p, 7, 7, PACK_PART_MAX + 1).is_none());
        assert!(stored(&mut p, 8, 8, 100).is_none());
        assert!(stored(&mut p, 10, 10, 100).is_none());
        assert!(stored(&mut p, 11, 11, 100).is_none());
        let pack = stored(&mut p, 12, 12, 100).expect("three parts after the gap");
        assert!(pack.originals[0].contains("000000000000000a-"), "{pack:?}");
    }

    #[test]
    fn the_bytes_held_for_packing_are_bounded_across_replicas() {
        let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
        // Enough replicas holding a run each to use the process's allowance up.
        let n = PACK_HELD_MAX / PACK_PART_MAX;
        let mut full: Vec<Packer> = (0..n).map(|_| Packer::default()).collect();
        for p in &mut full {
            assert!(stored(p, 1, 1, PACK_PART_MAX).is_none());
        }
        // The next replica cannot hold one, and lets its run go.
        let mut other = Packer::default();
        assert!(stored(&mut other, 1, 1, PACK_PART_MAX).is_none());
        assert!(other.parts.is_empty() && other.held == 0);
        // One replica dropping its run gives the allowance back.
        full.pop();
        assert!(stored(&mut other, 1, 1, PACK_PART_MAX).is_none());
        assert_eq!(other.held, PACK_PART_MAX);
        drop(full);
        drop(other);
        assert_eq!(HELD.load(std::sync::atomic::Ordering::Acquire), 0);
    }
}
