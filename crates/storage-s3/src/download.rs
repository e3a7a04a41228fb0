//! Downloads that survive faults: a body cut off in the middle (a reset, a stall past
//! `body_idle`, a proxy that closes early) is resumed with a ranged GET from the first byte not
//! yet received, pinned to the same version with `If-Match`, instead of starting over; a body
//! shorter than its `Content-Length` is a transient error, never a short object.
//!
//! Resuming is bounded: after [`STALLED_RESUMES`] resumes in a row that receive nothing, the
//! last error is returned (transient: the caller's own retry starts again later). The first
//! request is not retried here (the SDK already retried it once); callers retry it.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use lifeboat_storage::{ETag, Error, Result};
use tokio::io::AsyncWriteExt;
use tracing::warn;

use crate::S3Client;

/// Resumes in a row that may receive nothing before the download gives up.
const STALLED_RESUMES: u32 = 4;

/// Where a download's bytes go.
pub(crate) enum Sink<'a> {
    Memory(&'a mut Vec<u8>),
    File {
        file: &'a mut tokio::fs::File,
        path: &'a Path,
        written: u64,
    },
}

impl Sink<'_> {
    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        match self {
            Sink::Memory(v) => v.len() as u64,
            Sink::File { written, .. } => *written,
        }
    }

    async fn write(&mut self, c: &S3Client, op: &'static str, key: &str, b: &[u8]) -> Result<()> {
        match self {
            Sink::Memory(v) => v.extend_from_slice(b),
            Sink::File {
                file,
                path,
                written,
            } => {
                file.write_all(b)
                    .await
                    .map_err(|e| c.local_io(op, key, path, e))?;
                *written += b.len() as u64;
            }
        }
        Ok(())
    }
}

impl S3Client {
    /// Reads bytes `range` of the object (the whole object if `None`; a range past its end is
    /// cut short) into `sink`, resuming after interruptions. Returns the object's ETag, if the
    /// server gave one.
    pub(crate) async fn download(
        &self,
        op: &'static str,
        key: &str,
        range: Option<Range<u64>>,
        sink: &mut Sink<'_>,
    ) -> Result<Option<ETag>> {
        let start = range.as_ref().map_or(0, |r| r.start);
        let end = range.as_ref().map(|r| r.end);
        if end.is_some_and(|e| e <= start) {
            return Ok(None);
        }
        let full = self.cfg.full_key(key);
        let mut pos = start;
        // Set once the first response is in: from then on, failures are resumed.
        let mut version: Option<Option<String>> = None;
        let mut stalls = 0u32;
        loop {
            let ranged = range.is_some() || pos > start;
            let mut req = self.client.get_object().bucket(&self.cfg.bucket).key(&full);
            if ranged {
                req = req.range(match end {
                    Some(e) => format!("bytes={pos}-{}", e - 1),
                    None => format!("bytes={pos}-"),
                });
            }
            if let Some(Some(tag)) = &version {
                req = req.if_match(tag);
            }
            let before = pos;
            let failure = match req.send().await {
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    if status == Some(416) {
                        // The range starts at or past the end: nothing (more) to read.
                        return Ok(version.flatten().map(ETag::new));
                    }
                    if version.is_some() && status == Some(412) {
                        return Err(self.backend(
                            op,
                            key,
                            "the object changed while it was being read (it should never \
                             change: is another program writing to this replica?)"
                                .into(),
                            false,
                        ));
                    }
                    let err = self.err(op, key, e);
                    if version.is_none() || !err.is_transient() {
                        return Err(err);
                    }
                    err
                }
                Ok(resp) => {
                    if version.is_none() {
                        version = Some(resp.e_tag().map(str::to_string));
                    }
                    // A server that ignores Range sends the object from its first byte.
                    let mut skip = if ranged && resp.content_range().is_none() {
                        pos
                    } else {
                        0
                    };
                    let expected = resp
                        .content_length()
                        .and_then(|l| u64::try_from(l).ok())
                        .map(|l| l.saturating_sub(skip));
                    let mut body = resp.body;
                    let mut got = 0u64;
                    let outcome = loop {
                        match self.next_chunk(op, key, &mut body).await {
                            Ok(Some(mut chunk)) => {
                                if skip > 0 {
                                    let n = skip.min(chunk.len() as u64);
                                    chunk = chunk.slice(n as usize..);
                                    skip -= n;
                                }
                                let room = end.map_or(u64::MAX, |e| e - pos);
                                let chunk: Bytes =
                                    chunk.slice(..(chunk.len() as u64).min(room) as usize);
                                sink.write(self, op, key, &chunk).await?;
                                pos += chunk.len() as u64;
                                got += chunk.len() as u64;
                                if end == Some(pos) {
                                    break Ok(());
                                }
                            }
                            Ok(None) => match expected {
                                Some(n) if got < n => {
                                    break Err(self.backend(
                                        op,
                                        key,
                                        format!(
                                            "the response ended after {got} of its {n} bytes \
                                             (truncated on the way)"
                                        ),
                                        true,
                                    ))
                                }
                                _ => break Ok(()),
                            },
                            Err(e) => break Err(e),
                        }
                    };
                    match outcome {
                        Ok(()) => return Ok(version.flatten().map(ETag::new)),
                        Err(e) if e.is_transient() => e,
                        Err(e) => return Err(e),
                    }
                }
            };
            stalls = if pos > before { 0 } else { stalls + 1 };
            if stalls >= STALLED_RESUMES {
                return Err(failure);
            }
            let backoff = Duration::from_millis(100 << stalls);
            warn!(
                replica = %self.cfg.describe(),
                key,
                received = pos - start,
                error = %failure,
                backoff = ?backoff,
                "download interrupted; resuming from the first byte not received"
            );
            tokio::time::sleep(backoff).await;
        }
    }

    /// The error for a server that gives no ETag (a conditional write cannot work without one).
    pub(crate) fn no_etag(&self, key: &str) -> Error {
        Error::Unsupported {
            replica: self.cfg.describe(),
            message: format!(
                "the server sent no ETag for {}: lifeboat's writer lease needs ETags and \
                 conditional writes (If-Match); use a store that supports them",
                self.url(key)
            ),
        }
    }
}
