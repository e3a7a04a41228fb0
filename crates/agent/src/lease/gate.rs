//! The agent's side of the writer lease: the [`Gate`] it checks before every upload, and the
//! [`Fencing`] it writes into every generation it starts (see [`crate::lease`] for the lease
//! itself and [`crate::catalog::fences`] for how readers use fences).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::keys::Fence;
use lifeboat_storage::ReplicaClient;
use lifeboat_wal::{Generation, TxId};

use crate::clock::now_ms;
use crate::lease::Holder;
use crate::{Error, Result};

/// Whether the agent may write: the lease is held and renewed within its TTL. Shared between
/// the task that renews the lease and the replicator that uploads.
#[derive(Debug)]
pub struct Gate {
    epoch: u64,
    /// Until when a write may start (ms since `base`).
    valid_until: AtomicU64,
    lost: AtomicBool,
    base: Instant,
}

impl Gate {
    pub(crate) fn new(epoch: u64, valid_until: Instant) -> Gate {
        let g = Gate {
            epoch,
            valid_until: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            base: Instant::now(),
        };
        g.extend(valid_until);
        g
    }

    /// A gate that is always open (tests, and agents without a lease never have one).
    pub fn open(epoch: u64) -> Gate {
        Gate::new(
            epoch,
            Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
        )
    }

    pub(crate) fn extend(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.base).as_millis() as u64;
        self.valid_until.fetch_max(ms, Ordering::SeqCst);
    }

    /// The lease's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Marks the lease lost (released, or taken by another instance): no write from now on.
    pub fn close(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// Whether the lease is lost for good.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// `Ok` if a write may start now; else why not (the lease is lost, or has gone a whole TTL
    /// without a renewal, so another instance may have taken it).
    pub fn check(&self) -> Result<()> {
        if self.is_lost() {
            return Err(Error::LeaseLost(format!(
                "the writer lease (epoch {}) is no longer held by this instance",
                self.epoch
            )));
        }
        let now = self.base.elapsed().as_millis() as u64;
        if now >= self.valid_until.load(Ordering::SeqCst) {
            return Err(Error::LeaseNotRenewed { epoch: self.epoch });
        }
        Ok(())
    }
}

/// What a lease-holding agent writes into each generation it starts.
#[derive(Clone, Debug)]
pub struct Fencing {
    /// Whether writes may go ahead.
    pub gate: Arc<Gate>,
    /// The state the lease was taken over from (see [`Fence::parent`]).
    pub parent: Option<(Generation, TxId)>,
    /// Who holds it (written into the fence object, for people).
    pub holder: Holder,
    /// Whether the agent may resume the replica's newest generation (when the local database
    /// provably is its last state): only if the previous holder released the lease (it writes
    /// nothing more) or there was none. After an expiry the old holder may still be alive, so
    /// the agent starts a generation of its own.
    pub may_resume: bool,
}

impl Fencing {
    /// The fence of `generation`.
    pub fn fence(&self, generation: Generation) -> Fence {
        Fence {
            generation,
            epoch: self.gate.epoch(),
            parent: self.parent,
        }
    }

    /// The fence object's body (JSON, for people; readers use the key).
    pub fn body(&self, generation: Generation) -> Bytes {
        Bytes::from(
            serde_json::to_vec_pretty(&serde_json::json!({
                "generation": generation.to_string(),
                "epoch": self.gate.epoch(),
                "parent": self.parent.map(|(g, t)| format!("{g}/{t}")),
                "holder": self.holder,
                "at_ms": now_ms(),
            }))
            .expect("a fence serialises"),
        )
    }

    /// A generation id for a new generation at `now_ms`, later than the parent's even if this
    /// host's clock is behind the previous holder's, so creation order follows the lease.
    pub fn generation_after(&self, now_ms: u64, random: u16) -> Generation {
        let floor = self.parent.map_or(0, |(g, _)| g.unix_ms() + 1);
        Generation::new(now_ms.max(floor), random)
    }
}

/// `Ok` if the agent may write now: it holds no lease, or holds one renewed within its TTL.
pub(crate) fn may_write(ctx: &crate::context::Context) -> Result<()> {
    ctx.opts.lease.as_ref().map_or(Ok(()), |f| f.gate.check())
}

/// Writes `generation`'s fence to `client` (create-only), if the agent holds a lease.
pub(crate) fn write_fence(
    ctx: &crate::context::Context,
    client: &dyn ReplicaClient,
    generation: Generation,
) -> Result<()> {
    let Some(f) = &ctx.opts.lease else {
        return Ok(());
    };
    f.gate.check()?;
    let key = f.fence(generation).to_string();
    let body = f.body(generation);
    ctx.rt.block_on(lifeboat_storage::retry::retry(
        lifeboat_storage::retry::RetryPolicy::default(),
        "fence upload",
        || client.put(&key, body.clone()),
    ))?;
    Ok(())
}

/// The highest lease epoch among a replica's fences (0 if none), for
/// [`acquire`](crate::lease::acquire)'s floor.
pub fn highest_epoch(cat: &crate::catalog::Catalog) -> u64 {
    cat.generations
        .values()
        .map(crate::catalog::fences::epoch)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_closes_a_ttl_after_its_last_renewal() {
        let g = Gate::new(3, Instant::now() + Duration::from_millis(50));
        g.check().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let e = g.check().unwrap_err();
        assert!(
            !matches!(e, Error::LeaseLost(_)),
            "expired is not lost: {e}"
        );
        g.extend(Instant::now() + Duration::from_secs(1));
        g.check().unwrap();
        g.close();
        assert!(matches!(g.check(), Err(Error::LeaseLost(_))));
    }

    #[test]
    fn a_new_holders_generation_sorts_after_its_parent_even_with_a_slow_clock() {
        let f = Fencing {
            gate: Arc::new(Gate::open(2)),
            parent: Some((Generation::new(5_000, 1), TxId(3))),
            holder: Holder::this_process(),
            may_resume: false,
        };
        assert!(f.generation_after(4_000, 0) > Generation::new(5_000, 1));
        assert_eq!(f.generation_after(9_000, 0), Generation::new(9_000, 0));
        let k = f.fence(Generation(77));
        assert_eq!((k.epoch, k.parent), (2, f.parent));
    }
}
