//! Handing the writer lease over: a new instance asks the holder of the epoch it found
//! (`lease-handoff.json`), and the holder looks for such a request while it renews (see
//! [`crate::lease`]).

use bytes::Bytes;
use lifeboat_storage::keys;
use lifeboat_storage::{Error as StorageError, ReplicaClient};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::lease::{storage, Holder, Lease};
use crate::{Error, Result};

/// A request that the holder of `epoch` hand the lease over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffRequest {
    /// Who asks.
    #[serde(flatten)]
    pub requester: Holder,
    /// The epoch it found holding the lease.
    pub epoch: u64,
    /// When it asked (its clock, Unix ms).
    pub at_ms: u64,
}

/// Asks the holder of `epoch` to hand the lease over to `requester`.
pub async fn request_handoff(
    client: &dyn ReplicaClient,
    requester: &Holder,
    epoch: u64,
) -> Result<()> {
    let req = HandoffRequest {
        requester: requester.clone(),
        epoch,
        at_ms: now_ms(),
    };
    let body = Bytes::from(serde_json::to_vec_pretty(&req).expect("a request serialises"));
    for _ in 0..5 {
        let res = match client.get_versioned(keys::HANDOFF).await {
            Ok((_, etag)) => {
                client
                    .put_if_match(keys::HANDOFF, body.clone(), &etag)
                    .await
            }
            Err(StorageError::NotFound { .. }) => {
                client.put_if_absent(keys::HANDOFF, body.clone()).await
            }
            Err(e) => return Err(storage(e)),
        };
        match res {
            Ok(_) => return Ok(()),
            Err(StorageError::Precondition { .. }) => continue,
            Err(e) => return Err(storage(e)),
        }
    }
    Err(Error::HandoffContended {
        key: keys::HANDOFF,
        replica: client.describe(),
    })
}

impl Lease {
    /// A request to hand this lease over, if one names its epoch.
    pub async fn handoff_requested(&self) -> Result<Option<HandoffRequest>> {
        match self.client().get(keys::HANDOFF).await {
            Ok(b) => Ok(serde_json::from_slice::<HandoffRequest>(&b)
                .ok()
                .filter(|r| r.epoch == self.epoch())),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use lifeboat_wal::{Generation, TxId};

    use super::*;
    use crate::lease::tests::{held, opts};
    use crate::lease::{acquire, Renewal, Takeover};

    #[tokio::test]
    async fn a_live_holder_sees_the_request_and_hands_over() {
        let (c, mut old) = held(2000).await;
        assert_eq!(old.handoff_requested().await.unwrap(), None);
        let c2 = c.clone();
        let new = tokio::spawn(async move {
            acquire(c2, &Holder::this_process(), opts(2000), 0, |_| {}).await
        });
        // The holder renews and looks for a request, as the renewal task does.
        let deadline = Instant::now() + Duration::from_secs(5);
        let req = loop {
            assert_eq!(old.renew().await.unwrap(), Renewal::Renewed);
            if let Some(r) = old.handoff_requested().await.unwrap() {
                break r;
            }
            assert!(Instant::now() < deadline, "no handoff request");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(req.epoch, 1);
        let t = Instant::now();
        old.release(Some((Generation(3), TxId(5)))).await.unwrap();
        let (lease, how) = new.await.unwrap().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "released leases pass on at once"
        );
        assert_eq!(lease.epoch(), 2);
        assert!(matches!(how, Takeover::Released(_)));
        // A request for an older epoch is not for the new holder.
        assert_eq!(lease.handoff_requested().await.unwrap(), None);
    }
}
