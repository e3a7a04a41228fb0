//! An upload from the replicator thread, which waits for it: bounded by the WAL it protects.
//!
//! While an upload hangs (a server that stopped answering takes a timeout per attempt, a few
//! seconds each), the replicator cannot move the pin or checkpoint, so the app's WAL grows. An
//! upload therefore gives up as soon as the WAL grows past `max-wal-bytes` while it is in
//! flight: its outcome is unknown (a segment is retried as the same object, or given up with
//! the replica's continuity; see `shipping`), and the replicator can release the WAL at once
//! rather than after the last retry.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lifeboat_storage::ReplicaClient;
use tracing::{info, warn};

use crate::context::Context;
use crate::walfile::WalFile;
use crate::{Error, Result};

/// An upload interrupted longer ago than this is abandoned: no upload of lifeboat's takes a day.
const STALE_UPLOAD: Duration = Duration::from_secs(24 * 3600);

/// Removes, in the background, what interrupted uploads left in a replica: multipart uploads
/// never completed nor aborted (their parts cost storage on S3 for ever), a folder's temporary
/// files. Called once the agent has read the replica's state. Best effort: a failure is logged,
/// and the next start looks again.
pub(crate) fn clean_up_interrupted(client: &Arc<dyn ReplicaClient>, ctx: &Context) {
    let client = client.clone();
    ctx.rt.spawn(async move {
        match client.abort_stale_uploads(STALE_UPLOAD).await {
            Ok(0) => {}
            Ok(n) => info!(replica = %client.describe(), uploads = n, "removed uploads interrupted over a day ago"),
            Err(e) => warn!(replica = %client.describe(), error = %e, "could not look for interrupted uploads, whose parts cost storage until removed: on S3 allow s3:ListBucketMultipartUploads and s3:AbortMultipartUpload, or add an AbortIncompleteMultipartUpload lifecycle rule; the next start looks again"),
        }
    });
}

/// How often the WAL's size is looked at during an upload.
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Runs `upload` to the end, unless the WAL grows past `max-wal-bytes` (and past its size
/// at the start) first: then [`Error::WalOverLimit`]; or the shutdown timeout passes after a
/// stop signal: then [`Error::ShutdownTimeout`].
pub(crate) fn bounded<T>(
    ctx: &Context,
    wal: &WalFile,
    upload: impl Future<Output = Result<T>>,
) -> Result<T> {
    let path = wal.path().to_path_buf();
    let max = ctx.opts.max_wal_bytes;
    let size = move || std::fs::metadata(&path).map_or(0, |m| m.len());
    let start = size();
    let (stop, grace) = (ctx.stop.clone(), ctx.opts.shutdown_timeout);
    ctx.rt.block_on(async {
        tokio::select! {
            r = upload => r,
            () = async {
                match stop {
                    Some(s) => {
                        s.token.cancelled().await;
                        let at = s.at.get().copied().unwrap_or_else(std::time::Instant::now);
                        tokio::time::sleep_until((at + grace).into()).await;
                    }
                    None => std::future::pending().await,
                }
            } => Err(Error::ShutdownTimeout),
            bytes = async {
                loop {
                    tokio::time::sleep(LOOK_EVERY).await;
                    let s = size();
                    if s > max && s > start {
                        return s;
                    }
                }
            } => Err(Error::WalOverLimit {
                wal: wal.path().to_path_buf(),
                bytes,
                max,
            }),
        }
    })
}
