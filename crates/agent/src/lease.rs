//! The writer lease: one object per replica path (`lease.json`) that says which instance may
//! write the replica, kept with nothing but the store's conditional writes.
//!
//! - **Taking it** ([`acquire`]): create the object with `put_if_absent` (S3 `If-None-Match:
//!   *`), or replace a released or expired one with `put_if_match` (S3 `If-Match` on its ETag),
//!   one epoch higher. Of racing instances exactly one wins. A holder is *expired* when its
//!   lease object has not changed for its TTL as measured by the instance waiting for it (its
//!   own monotonic clock: no trust in clocks across hosts).
//! - **Keeping it** ([`Lease::renew`], about every TTL/3): `put_if_match` on the version it
//!   wrote last. A refused renewal means another instance took the lease: the holder has lost
//!   it. [`Gate`] tells the agent whether it may still write (it stops once the lease may have
//!   expired without a renewal).
//! - **Handing it over**: an instance that finds a live lease writes a request
//!   ([`request_handoff`], `lease-handoff.json`) naming the epoch it saw; the holder finds it
//!   ([`Lease::handoff_requested`]), ships everything, and releases the lease
//!   ([`Lease::release`]) recording the generation and transaction it stopped at, which the new
//!   instance restores exactly.
//!
//! The lease object is never deleted (a release is a write), so epochs only grow. Every
//! generation an epoch starts carries it in its fence (see [`crate::catalog::fences`]), so what a
//! holder paused past its lease writes after waking is ignored by every reader.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::keys;
use lifeboat_storage::{ETag, Error as StorageError, ReplicaClient};
use lifeboat_wal::{Generation, TxId};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::{Error, Result};

mod gate;
mod handoff;

/// The lease as the status shows it (defined with the status, which reports it).
pub use crate::status::LeaseInfo;
pub use gate::{highest_epoch, Fencing, Gate};
pub(crate) use gate::{may_write, write_fence};
pub use handoff::{request_handoff, HandoffRequest};

/// Default lease time to live.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Who holds (or wants) a lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// A random id for this process's claim.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
}

impl Holder {
    /// This process, with a fresh random id.
    pub fn this_process() -> Holder {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Holder {
            id: format!("{:016x}", rand::random::<u64>()),
            host,
            pid: std::process::id(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {} on {})", self.id, self.pid, self.host)
    }
}

/// Where a holder stopped when it released the lease: the new holder restores exactly this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The generation it wrote (16 hex digits), if it had one.
    pub generation: Option<String>,
    /// The last transaction in it (16 hex digits).
    pub txid: Option<String>,
    /// When (the holder's clock, Unix ms).
    pub at_ms: u64,
}

impl Released {
    /// The generation and transaction, if the holder had shipped any.
    pub fn position(&self) -> Option<(Generation, TxId)> {
        Some((
            self.generation.as_deref()?.parse().ok()?,
            self.txid.as_deref()?.parse().ok()?,
        ))
    }
}

/// The lease object's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it.
    #[serde(flatten)]
    pub holder: Holder,
    /// Its epoch: one more than the epoch it replaced.
    pub epoch: u64,
    /// Its time to live (ms).
    pub ttl_ms: u64,
    /// When it was last written (the holder's clock, Unix ms; informational).
    pub renewed_ms: u64,
    /// Renewals so far: every write's bytes differ, so every write has its own version.
    pub seq: u64,
    /// Set when the holder let go.
    pub released: Option<Released>,
}

impl LeaseRecord {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).expect("a lease record serialises"))
    }

    fn decode(client: &dyn ReplicaClient, b: &[u8]) -> Result<LeaseRecord> {
        serde_json::from_slice(b).map_err(|cause| Error::LeaseUnreadable {
            key: keys::LEASE,
            replica: client.describe(),
            cause,
        })
    }
}

/// How to take a lease.
#[derive(Clone, Copy, Debug)]
pub struct LeaseOptions {
    /// Time to live (renewed every third of it).
    pub ttl: Duration,
    /// Ask a live holder to hand over (else only wait for it to release or expire).
    pub handoff: bool,
    /// Give up if a live holder keeps renewing this long (at least twice the TTL is waited,
    /// so a dead holder's lease always expires first).
    pub timeout: Duration,
    /// Look at the lease this often while waiting.
    pub poll: Duration,
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions {
            ttl: DEFAULT_TTL,
            handoff: true,
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(200),
        }
    }
}

/// How the lease was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// No lease existed.
    Fresh,
    /// The previous holder released it (a handoff or a clean stop).
    Released(LeaseRecord),
    /// The previous holder stopped renewing: it expired.
    Expired(LeaseRecord),
}

impl Takeover {
    /// In words, for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Takeover::Fresh => "no previous holder",
            Takeover::Released(_) => "released by its previous holder",
            Takeover::Expired(_) => "expired: its previous holder stopped renewing",
        }
    }
}

/// `generation/txid`, for logs.
pub fn fmt_position(at: Option<(Generation, TxId)>) -> String {
    at.map_or_else(|| "-".into(), |(g, t)| format!("{g}/{t}"))
}

/// A lease this process holds.
#[derive(Debug)]
pub struct Lease {
    client: Arc<dyn ReplicaClient>,
    record: LeaseRecord,
    etag: ETag,
    ttl: Duration,
    gate: Arc<Gate>,
}

pub(crate) fn storage(e: StorageError) -> Error {
    Error::Storage(e)
}

/// Takes the lease of `client`'s replica path for `holder`. A live holder is asked to hand
/// over (if `opts.handoff`) and waited for; `on_wait` is told once, with the holder's record,
/// when that wait starts. `min_epoch`: the highest epoch already seen in the replica's fences
/// (a lease object deleted by hand must not bring epochs back).
pub async fn acquire(
    client: Arc<dyn ReplicaClient>,
    holder: &Holder,
    opts: LeaseOptions,
    min_epoch: u64,
    mut on_wait: impl FnMut(&LeaseRecord),
) -> Result<(Lease, Takeover)> {
    let started = Instant::now();
    let give_up = started + opts.timeout.max(opts.ttl * 2);
    let mut seen: Option<(ETag, Instant)> = None;
    let mut waiting = false;
    let mut requested = false;
    loop {
        let current = match client.get_versioned(keys::LEASE).await {
            Ok((b, etag)) => Some((LeaseRecord::decode(client.as_ref(), &b)?, etag)),
            Err(StorageError::NotFound { .. }) => None,
            Err(e) => return Err(storage(e)),
        };
        let now = Instant::now();
        let take = |epoch: u64| LeaseRecord {
            holder: holder.clone(),
            epoch: epoch.max(min_epoch) + 1,
            ttl_ms: opts.ttl.as_millis() as u64,
            renewed_ms: now_ms(),
            seq: 0,
            released: None,
        };
        let (record, takeover, attempt) = match current {
            None => {
                let r = take(0);
                let res = client.put_if_absent(keys::LEASE, r.encode()).await;
                (r, Takeover::Fresh, res)
            }
            Some((old, etag)) => {
                let expired = match &seen {
                    Some((e, since)) if *e == etag => {
                        now.duration_since(*since) >= Duration::from_millis(old.ttl_ms)
                    }
                    _ => {
                        seen = Some((etag.clone(), now));
                        false
                    }
                };
                if old.released.is_none() && !expired {
                    if !waiting {
                        waiting = true;
                        on_wait(&old);
                    }
                    if opts.handoff && !requested {
                        request_handoff(client.as_ref(), holder, old.epoch).await?;
                        requested = true;
                        info!(holder = %old.holder, epoch = old.epoch, "the lease is held: asked its holder to hand over");
                    }
                    if now >= give_up {
                        return Err(Error::LeaseHeld(format!(
                            "{} in {} is held by {} (epoch {}), which keeps renewing it and did \
                             not hand over within {}; stop that instance (or raise \
                             --handoff-timeout), or run only one instance per replica",
                            keys::LEASE,
                            client.describe(),
                            old.holder,
                            old.epoch,
                            humantime::format_duration(opts.timeout.max(opts.ttl * 2))
                        )));
                    }
                    tokio::time::sleep(opts.poll).await;
                    continue;
                }
                let r = take(old.epoch);
                let res = client.put_if_match(keys::LEASE, r.encode(), &etag).await;
                let t = if old.released.is_some() {
                    Takeover::Released(old)
                } else {
                    warn!(holder = %old.holder, epoch = old.epoch, ttl_ms = old.ttl_ms, "the lease holder stopped renewing: taking the lease over");
                    Takeover::Expired(old)
                };
                (r, t, res)
            }
        };
        match attempt {
            Ok(etag) => {
                let ttl = opts.ttl;
                let gate = Arc::new(Gate::new(record.epoch, now + ttl));
                info!(epoch = record.epoch, replica = %client.describe(), "writer lease taken");
                return Ok((
                    Lease {
                        client,
                        record,
                        etag,
                        ttl,
                        gate,
                    },
                    takeover,
                ));
            }
            // Another instance won the race: look again.
            Err(StorageError::Precondition { .. }) => {
                seen = None;
                continue;
            }
            Err(e) => return Err(storage(e)),
        }
    }
}

/// What a renewal found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed for another TTL.
    Renewed,
    /// Another instance holds the lease now (its record, if it could be read).
    Lost(Option<LeaseRecord>),
}

impl Lease {
    /// The replica it is the lease of.
    pub(crate) fn client(&self) -> &dyn ReplicaClient {
        self.client.as_ref()
    }

    /// Its epoch.
    pub fn epoch(&self) -> u64 {
        self.record.epoch
    }

    /// Its time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The gate the agent checks before each write.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Its record.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Renews it (a conditional write on the version this holder wrote last). A storage error
    /// is returned as is: try again at the next tick; the gate closes on its own if no renewal
    /// lands within the TTL.
    pub async fn renew(&mut self) -> Result<Renewal> {
        if self.gate.is_lost() {
            return Ok(Renewal::Lost(None));
        }
        let started = Instant::now();
        let next = self.next_record();
        match self.replace(&next).await {
            Ok(()) => {
                self.record = next;
                self.gate.extend(started + self.ttl);
                Ok(Renewal::Renewed)
            }
            Err(StorageError::Precondition { .. }) => {
                self.gate.close();
                let now = match self.client.get(keys::LEASE).await {
                    Ok(b) => LeaseRecord::decode(self.client.as_ref(), &b).ok(),
                    Err(_) => None,
                };
                Ok(Renewal::Lost(now))
            }
            Err(e) => Err(storage(e)),
        }
    }

    /// The record's next version: the renewal counter one up, renewed now.
    fn next_record(&self) -> LeaseRecord {
        let mut next = self.record.clone();
        next.seq += 1;
        next.renewed_ms = now_ms();
        next
    }

    /// Writes `next` over the version this holder wrote last (a conditional write on its
    /// ETag): a `Precondition` error means another instance wrote the lease since.
    async fn replace(&mut self, next: &LeaseRecord) -> std::result::Result<(), StorageError> {
        self.etag = self
            .client
            .put_if_match(keys::LEASE, next.encode(), &self.etag)
            .await?;
        Ok(())
    }

    /// Releases it, recording where this holder stopped (`at`: its generation and last
    /// transaction). The gate closes first: nothing is written after this.
    pub async fn release(mut self, at: Option<(Generation, TxId)>) -> Result<LeaseRecord> {
        self.gate.close();
        let mut next = self.next_record();
        next.released = Some(Released {
            generation: at.map(|(g, _)| g.to_string()),
            txid: at.map(|(_, t)| t.to_string()),
            at_ms: now_ms(),
        });
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.replace(&next).await {
                Ok(()) => {
                    info!(epoch = next.epoch, at = %fmt_position(at), "writer lease released");
                    return Ok(next);
                }
                Err(StorageError::Precondition { .. }) => {
                    return Err(Error::LeaseLost(format!(
                        "the writer lease (epoch {}) was taken by another instance before it \
                         could be released",
                        next.epoch
                    )))
                }
                Err(e) if e.is_transient() && attempts < 5 => {
                    tokio::time::sleep(Duration::from_millis(100 << attempts)).await;
                }
                Err(e) => return Err(storage(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeboat_storage::memory::MemoryClient;

    /// A replica in memory and a lease of `ttl_ms` held on it by this process.
    pub(crate) async fn held(ttl_ms: u64) -> (Arc<dyn ReplicaClient>, Lease) {
        let c: Arc<dyn ReplicaClient> = Arc::new(MemoryClient::default());
        let (lease, _) = acquire(c.clone(), &Holder::this_process(), opts(ttl_ms), 0, |_| {})
            .await
            .unwrap();
        (c, lease)
    }

    /// Options for a test: a TTL of `ttl_ms`, handoff on, a 10 s timeout, polled every 10 ms.
    pub(crate) fn opts(ttl_ms: u64) -> LeaseOptions {
        LeaseOptions {
            ttl: Duration::from_millis(ttl_ms),
            handoff: true,
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn a_fresh_lease_is_epoch_one_and_a_released_one_passes_on_with_its_position() {
        let c: Arc<dyn ReplicaClient> = Arc::new(MemoryClient::default());
        let a = Holder::this_process();
        let (lease, how) = acquire(c.clone(), &a, opts(1000), 0, |_| {}).await.unwrap();
        assert_eq!((lease.epoch(), how), (1, Takeover::Fresh));
        let gate = lease.gate();
        gate.check().unwrap();
        lease
            .release(Some((Generation(9), TxId(42))))
            .await
            .unwrap();
        assert!(
            gate.check().is_err(),
            "a released lease writes nothing more"
        );
        let b = Holder::this_process();
        let (lease, how) = acquire(c.clone(), &b, opts(1000), 0, |_| {}).await.unwrap();
        assert_eq!(lease.epoch(), 2);
        let Takeover::Released(prev) = how else {
            panic!("{how:?}")
        };
        assert_eq!(
            prev.released.unwrap().position(),
            Some((Generation(9), TxId(42)))
        );
        // Epochs never come back, even if the object is deleted by hand.
        c.delete(keys::LEASE).await.unwrap();
        let (lease, _) = acquire(c, &a, opts(1000), 7, |_| {}).await.unwrap();
        assert_eq!(lease.epoch(), 8);
    }

    #[tokio::test]
    async fn a_holder_that_stops_renewing_loses_the_lease_after_its_ttl_and_learns_it() {
        let (c, mut old) = held(300).await;
        assert_eq!(old.renew().await.unwrap(), Renewal::Renewed);
        let t0 = Instant::now();
        let mut waited = None;
        let (new, how) = acquire(c.clone(), &Holder::this_process(), opts(300), 0, |r| {
            waited = Some(r.epoch)
        })
        .await
        .unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(waited, Some(1));
        assert!(
            matches!(how, Takeover::Expired(ref r) if r.epoch == 1),
            "{how:?}"
        );
        assert_eq!(new.epoch(), 2);
        // The old holder was asked to hand over (it did not answer).
        let req: HandoffRequest =
            serde_json::from_slice(&c.get(keys::HANDOFF).await.unwrap()).unwrap();
        assert_eq!(req.epoch, 1);
        // The old holder wakes: its renewal is refused and its gate closes.
        let gate = old.gate();
        let Renewal::Lost(Some(now)) = old.renew().await.unwrap() else {
            panic!("renewal must be refused")
        };
        assert_eq!(now.epoch, 2);
        assert!(gate.is_lost() && gate.check().is_err());
        assert!(
            old.release(None).await.is_err(),
            "cannot release a lost lease"
        );
    }

    #[tokio::test]
    async fn a_holder_that_keeps_renewing_without_handing_over_is_an_error_after_the_timeout() {
        let (c, mut old) = held(100).await;
        let renewing = tokio::spawn(async move {
            loop {
                let _ = old.renew().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut o = opts(100);
        o.timeout = Duration::from_millis(400);
        let e = acquire(c.clone(), &Holder::this_process(), o, 0, |_| {})
            .await
            .unwrap_err();
        renewing.abort();
        assert!(matches!(e, Error::LeaseHeld(_)), "{e}");
        assert!(e.to_string().contains("--handoff-timeout"), "{e}");
    }

    #[tokio::test]
    async fn a_lease_object_lifeboat_did_not_write_is_named_with_its_parse_error_as_cause() {
        let c: Arc<dyn ReplicaClient> = Arc::new(MemoryClient::default());
        c.put(keys::LEASE, "not a lease".into()).await.unwrap();
        let e = acquire(c, &Holder::this_process(), opts(1000), 0, |_| {})
            .await
            .unwrap_err();
        assert!(matches!(e, Error::LeaseUnreadable { .. }), "{e}");
        assert!(e.to_string().contains("lease.json in "), "{e}");
        let cause = std::error::Error::source(&e).expect("the parse error is the source");
        assert!(e.chain().to_string().ends_with(&cause.to_string()));
    }

    #[tokio::test]
    async fn racing_instances_take_a_free_lease_once() {
        let c: Arc<dyn ReplicaClient> = Arc::new(MemoryClient::default());
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move {
                    // The losers wait for the winner's lease (a minute); the winner is quick.
                    let me = Holder::this_process();
                    let take = acquire(c, &me, opts(60_000), 0, |_| {});
                    tokio::time::timeout(Duration::from_secs(2), take).await
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            if let Ok(r) = t.await.unwrap() {
                r.unwrap();
                won += 1;
            }
        }
        assert_eq!(won, 1);
    }
}
