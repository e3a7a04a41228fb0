//! The conditional writes of a lease on S3: PutObject with `If-None-Match: *` or
//! `If-Match: <etag>`, DeleteObject with `If-Match: <etag>` (AWS since September 2025 on
//! general-purpose buckets; see the README for other stores).
//!
//! A refused condition (412, or 409 ConditionalRequestConflict, or 404 for `If-Match` on a
//! missing object) is not taken at its word: an earlier attempt of the same request may have
//! landed and lost its answer (the SDK retries once by itself, and callers retry on timeouts).
//! So the object is read back: our own bytes mean success (the trait's uniqueness rule), the
//! version we expected still in place means a concurrent request got in the way (transient:
//! retry), anything else is [`Error::Precondition`].

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use bytes::Bytes;
use lifeboat_storage::{ETag, Error, ReplicaClient, Result};

use crate::S3Client;

impl S3Client {
    /// `put_if_absent` (`expected` is `None`) and `put_if_match`.
    pub(crate) async fn put_conditional(
        &self,
        key: &str,
        data: Bytes,
        expected: Option<&ETag>,
    ) -> Result<ETag> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data.clone()));
        req = match expected {
            None => req.if_none_match("*"),
            Some(tag) => req.if_match(tag.as_str()),
        };
        let res = req
            .customize()
            .config_override(self.upload_timeouts(data.len() as u64))
            .send()
            .await;
        match res {
            Ok(out) => match out.e_tag() {
                Some(tag) => Ok(ETag::new(tag)),
                None => Err(self.no_etag(key)),
            },
            Err(e) => match self.err("put", key, e) {
                Error::Precondition { .. } => self.resolve_conditional(key, &data, expected).await,
                Error::NotFound { .. } if expected.is_some() => {
                    self.resolve_conditional(key, &data, expected).await
                }
                other => Err(other),
            },
        }
    }

    /// After a conditional write was refused: what the object holds now decides.
    async fn resolve_conditional(
        &self,
        key: &str,
        data: &Bytes,
        expected: Option<&ETag>,
    ) -> Result<ETag> {
        match self.get_versioned(key).await {
            Ok((current, tag)) if current == *data => Ok(tag),
            Ok((_, tag)) if Some(&tag) == expected => Err(self.conflicting(key)),
            Ok(_) => Err(Error::Precondition { key: self.url(key) }),
            Err(Error::NotFound { .. }) if expected.is_none() => Err(self.conflicting(key)),
            Err(Error::NotFound { .. }) => Err(Error::Precondition { key: self.url(key) }),
            Err(e) => Err(e),
        }
    }

    fn conflicting(&self, key: &str) -> Error {
        self.backend(
            "put",
            key,
            "a conditional request was refused, but the object is as expected: a concurrent \
             request got in the way; retry"
                .into(),
            true,
        )
    }

    pub(crate) async fn delete_conditional(&self, key: &str, expected: &ETag) -> Result<()> {
        let res = self
            .client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .if_match(expected.as_str())
            .send()
            .await;
        let Err(e) = res else { return Ok(()) };
        match self.err("delete", key, e) {
            Error::NotFound { .. } => Ok(()),
            Error::Precondition { .. } => match self.get_versioned(key).await {
                Err(Error::NotFound { .. }) => Ok(()),
                Ok((_, tag)) if tag == *expected => Err(self.conflicting(key)),
                Ok(_) => Err(Error::Precondition { key: self.url(key) }),
                Err(e) => Err(e),
            },
            other => Err(other),
        }
    }
}
