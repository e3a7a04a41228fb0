//! Does this store really honour conditional writes? Some S3-compatible stores accept
//! `If-None-Match` and `If-Match` and ignore them (older MinIO for `If-Match` on a missing key,
//! s3s-fs for `If-Match` on DeleteObject), which would let two writers both "win" a lease.
//! [`conditional_writes`] finds out with a throw-away object, for the agent to call at start
//! and refuse loudly (or, if the user opts out, run without a lease) rather than trust a store
//! that cannot keep a lease.
//!
//! A probe sees ignored conditions, not races: a store that checks a condition and then writes
//! without holding a lock passes it (s3s-fs 0.14 lets three racing `If-Match` writes all win).
//! The conformance suite's race check is the test for that.

use bytes::Bytes;

use crate::{ETag, Error, ReplicaClient, Result};

/// Which conditional writes a store honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConditionalSupport {
    /// `put_if_absent` refused to replace an object.
    pub create_only: bool,
    /// `put_if_match` refused a version that is not current.
    pub replace_if_match: bool,
    /// `delete_if_match` refused a version that is not current.
    pub delete_if_match: bool,
}

impl ConditionalSupport {
    /// Whether a writer lease can be kept here: it needs create-only and compare-and-swap
    /// writes; a lease released with a conditional write rather than a delete does not need
    /// `delete_if_match`.
    pub fn lease_ready(&self) -> bool {
        self.create_only && self.replace_if_match
    }

    /// `Ok` if a lease can be kept here, else [`Error::Unsupported`] that says what the store
    /// ignored and what to do.
    pub fn require_lease(&self, replica: &str) -> Result<()> {
        if self.lease_ready() {
            return Ok(());
        }
        let mut ignored = Vec::new();
        if !self.create_only {
            ignored.push("If-None-Match: * (it overwrote an existing object)");
        }
        if !self.replace_if_match {
            ignored.push("If-Match (it replaced an object of another version)");
        }
        Err(Error::Unsupported {
            replica: replica.into(),
            message: format!(
                "this store ignores {}: it cannot keep lifeboat's writer lease, and two \
                 instances could write one replica at once; use a store that supports \
                 conditional writes (AWS S3, Cloudflare R2, a recent MinIO), or turn the lease \
                 off only if one instance ever writes this replica",
                ignored.join(" and ")
            ),
        })
    }
}

/// Probes `client` with a throw-away object at `key` (removed afterwards), and says which
/// conditional writes it honoured. Fails only on a storage error (the store is down, denied...).
pub async fn conditional_writes(
    client: &dyn ReplicaClient,
    key: &str,
) -> Result<ConditionalSupport> {
    let nonce = rand::random::<u64>();
    let first = Bytes::from(format!("lifeboat probe {nonce:016x}: first"));
    let bogus = ETag::new("\"00000000000000000000000000000000\"");
    // A leftover of an earlier probe that died is not ours: start clean.
    client.delete(key).await?;
    client.put_if_absent(key, first.clone()).await?;

    let second = Bytes::from(format!("lifeboat probe {nonce:016x}: second"));
    let create_only = match client.put_if_absent(key, second).await {
        Err(Error::Precondition { .. }) => client.get(key).await? == first,
        Ok(_) => false,
        Err(e) => return Err(e),
    };

    let (_, current) = client.get_versioned(key).await?;
    let third = Bytes::from(format!("lifeboat probe {nonce:016x}: third"));
    let replace_if_match = match client.put_if_match(key, third, &bogus).await {
        Err(Error::Precondition { .. }) => client.get_versioned(key).await?.1 == current,
        Ok(_) => false,
        Err(e) => return Err(e),
    };

    let delete_if_match = match client.delete_if_match(key, &bogus).await {
        Err(Error::Precondition { .. }) => client.get(key).await.is_ok(),
        Ok(()) => false,
        Err(e) => return Err(e),
    };
    client.delete(key).await?;
    Ok(ConditionalSupport {
        create_only,
        replace_if_match,
        delete_if_match,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryClient;

    #[tokio::test]
    async fn memory_and_local_honour_every_condition() {
        let all = ConditionalSupport {
            create_only: true,
            replace_if_match: true,
            delete_if_match: true,
        };
        let m = MemoryClient::default();
        assert_eq!(conditional_writes(&m, "probe").await.unwrap(), all);
        assert!(m.list("").await.unwrap().is_empty(), "the probe cleans up");
        let dir = tempfile::tempdir().unwrap();
        let l = crate::local::LocalClient::new(dir.path());
        assert_eq!(conditional_writes(&l, "probe").await.unwrap(), all);
        all.require_lease("memory://").unwrap();
    }

    #[test]
    fn a_store_that_ignores_conditions_is_refused_with_what_it_ignored() {
        let s = ConditionalSupport {
            create_only: true,
            replace_if_match: false,
            delete_if_match: false,
        };
        let e = s.require_lease("s3://b/p").unwrap_err();
        assert!(e.is_setup(), "{e}");
        let line = e.to_string();
        assert!(
            line.contains("If-Match") && line.contains("s3://b/p"),
            "{line}"
        );
        assert!(!line.contains("If-None-Match"), "{line}");
        let without_delete = ConditionalSupport {
            delete_if_match: false,
            ..ConditionalSupport {
                create_only: true,
                replace_if_match: true,
                delete_if_match: true,
            }
        };
        without_delete.require_lease("s3://b/p").unwrap();
    }
}
