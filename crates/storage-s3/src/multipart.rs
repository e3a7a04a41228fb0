//! Multipart uploads, for files over 64 MiB: 16 MiB parts streamed from the file, completed with
//! `If-None-Match: *` so that the completion is create-only like every other write.
//!
//! An upload that fails is aborted (AbortMultipartUpload), so its parts do not linger and cost
//! storage; so is one whose caller gives up on it (drops its future). One interrupted by a crash cannot be aborted by the process that started it:
//! `abort_stale_uploads` (of the trait) removes those under the replica's prefix, for the agent to
//! call when it starts (an `AbortIncompleteMultipartUpload` lifecycle rule on the bucket does
//! the same on the server's side).
//!
//! A completion whose answer was lost and that the SDK retries finds no upload any more
//! (404 NoSuchUpload): that is resolved like a refused create, by reading the object back.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_smithy_types::byte_stream::Length;
use aws_smithy_types::DateTime;
use lifeboat_storage::{Error, Result};
use tracing::{info, warn};

use crate::S3Client;

/// Part size for multipart uploads: 10,000 parts (the S3 limit) make 160 GiB.
const PART_SIZE: u64 = 16 << 20;

impl S3Client {
    /// Uploads `path` (`size` bytes) in parts, completing with `If-None-Match: *`. On any
    /// failure the upload is aborted so its parts do not linger (and cost) in the bucket. A
    /// refused or possibly-landed completion is [`Error::Precondition`], for the caller to
    /// resolve by reading the object back.
    pub(crate) async fn put_multipart(&self, key: &str, path: &Path, size: u64) -> Result<()> {
        let full = self.cfg.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.err("put", key, e))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(self.backend(
                "put",
                key,
                "CreateMultipartUpload returned no upload id".into(),
                true,
            ));
        };
        // Until the upload ends here, dropping this future (an upload its caller gave up on: a
        // stop past its timeout, a WAL over its bound) aborts it in the background.
        let mut guard = AbortOnDrop {
            client: self.clone(),
            key: key.to_string(),
            full: full.clone(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        let result = self.upload_parts(key, path, size, &upload_id).await;
        if result.is_err() {
            // Still armed: if this future is dropped during the abort, the guard aborts.
            self.abort_upload(key, &full, &upload_id).await;
        }
        guard.armed = false;
        result
    }

    /// Aborts one upload, and says whether it is gone; a failure is logged (the stale-upload
    /// clean-up will find it again).
    async fn abort_upload(&self, key: &str, full: &str, upload_id: &str) -> bool {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(full)
            .upload_id(upload_id)
            .send()
            .await;
        match aborted.map_err(|e| self.err("abort", key, e)) {
            // Gone already: its completion landed, or someone aborted it.
            Ok(_) | Err(Error::NotFound { .. }) => true,
            Err(e) => {
                warn!(
                replica = %self.cfg.describe(),
                key,
                upload_id,
                error = %e,
                "could not abort a failed multipart upload; its parts stay in the bucket until \
                 the next start of lifeboat or an AbortIncompleteMultipartUpload lifecycle rule \
                 removes them"
                );
                false
            }
        }
    }

    async fn upload_parts(&self, key: &str, path: &Path, size: u64, upload_id: &str) -> Result<()> {
        let full = self.cfg.full_key(key);
        let mut parts = Vec::new();
        let mut offset = 0u64;
        let mut n = 1;
        while offset < size {
            let len = PART_SIZE.min(size - offset);
            // Streams this part from the file: only the SDK's buffers are in memory.
            let body = ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(len))
                .build()
                .await
                .map_err(|e| self.unreadable_body(key, path, e))?;
            let out = self
                .client
                .upload_part()
                .bucket(&self.cfg.bucket)
                .key(&full)
                .upload_id(upload_id)
                .part_number(n)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .customize()
                .config_override(self.upload_timeouts(len))
                .send()
                .await
                .map_err(|e| self.err("put", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
            offset += len;
            n += 1;
        }
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .upload_id(upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            // The server assembles the parts before it answers.
            .customize()
            .config_override(self.upload_timeouts(size))
            .send()
            .await;
        match completed {
            Ok(_) => Ok(()),
            // A retried completion whose first attempt landed: the upload is gone.
            Err(e) if e.code() == Some("NoSuchUpload") => {
                Err(Error::Precondition { key: self.url(key) })
            }
            Err(e) => Err(self.err("put", key, e)),
        }
    }

    /// Aborts the multipart uploads under this replica's prefix that were started more than
    /// `older_than` ago (a day is safe: no upload of lifeboat's takes that long), and returns
    /// how many. Best effort, for the agent to call when it starts: a crashed upload otherwise
    /// keeps its parts, and costs storage, until a lifecycle rule removes them.
    pub(crate) async fn abort_stale(&self, older_than: Duration) -> Result<usize> {
        let prefix = self.cfg.full_key("");
        let cutoff = cutoff(SystemTime::now(), older_than);
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        let mut aborted = 0;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.cfg.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.err("list uploads", "", e))?;
            for u in page.uploads() {
                let (Some(full), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                if !stale(u.initiated(), &cutoff) {
                    continue;
                }
                let key = full.strip_prefix(&prefix).unwrap_or(full);
                if self.abort_upload(key, full, id).await {
                    info!(replica = %self.cfg.describe(), key, upload_id = id, "aborted a stale multipart upload");
                    aborted += 1;
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(aborted);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(aborted);
            }
        }
    }
}

/// Aborts a multipart upload whose future was dropped before it ended, on a task of its own
/// (best effort: in a process about to exit, the start-up clean-up of the next agent is the
/// backstop).
struct AbortOnDrop {
    client: S3Client,
    key: String,
    full: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (c, key, full, id) = (
            self.client.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.full),
            std::mem::take(&mut self.upload_id),
        );
        rt.spawn(async move {
            if c.abort_upload(&key, &full, &id).await {
                info!(replica = %c.cfg.describe(), key, upload_id = id, "aborted a multipart upload given up on");
            }
        });
    }
}

/// Uploads started at or before this are stale.
fn cutoff(now: SystemTime, older_than: Duration) -> DateTime {
    DateTime::from(
        now.checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

/// Whether an upload started at `initiated` is stale; one without a date is kept.
fn stale(initiated: Option<&DateTime>, cutoff: &DateTime) -> bool {
    initiated.is_some_and(|t| t <= cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uploads_older_than_the_limit_are_stale() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let c = cutoff(now, Duration::from_secs(86_400));
        let at = |secs_ago: u64| DateTime::from(now - Duration::from_secs(secs_ago));
        assert!(stale(Some(&at(86_401)), &c));
        assert!(
            !stale(Some(&at(3_600)), &c),
            "an hour-old upload may be in flight"
        );
        assert!(!stale(None, &c), "no date: kept");
        assert!(stale(Some(&at(1)), &cutoff(now, Duration::ZERO)));
    }
}
