//! [`S3Client`]: the [`ReplicaClient`] over `aws-sdk-s3`.
//!
//! Every write is a conditional create (`If-None-Match: *`), on a single PutObject or on the
//! CompleteMultipartUpload that ends a multipart upload; when the server refuses it because the
//! key exists, the object is read back and compared, streaming, with what we meant to write.
//! Every wait on the network is bounded (see [`Timeouts`](crate::Timeouts)).
//!
//! Unknown outcomes. The SDK retries an attempt once by itself (a timeout, a reset, a 5xx),
//! sending the same request: the same key, the same body (a `Bytes` buffer, or the same file
//! read again from its start), the same CRC32. Nothing here builds a different body for a
//! retry, so "the first attempt landed, its answer was lost, the retry got 412" always ends in
//! the read-back, which finds our bytes: [`PutOutcome::AlreadyExisted`]. The same holds for the
//! conditional writes of a lease (see `conditional`) and for a multipart upload whose
//! completion answer was lost (the retry finds no upload: read back too).

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_sdk_s3::Client;
use bytes::Bytes;
use lifeboat_storage::{ETag, Error, ObjectMeta, PutOutcome, ReplicaClient, Result};
use tokio::io::AsyncReadExt;

use crate::download::Sink;
use crate::error::{boxed, classify, message, region_hint, Kind};
use crate::S3Config;

/// What was said to a server that answered, for messages about it.
pub(crate) type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// Files larger than this are uploaded in parts.
pub(crate) const MULTIPART_THRESHOLD: u64 = 64 << 20;

/// A replica in an S3 bucket, under a prefix.
#[derive(Clone)]
pub struct S3Client {
    pub(crate) client: Client,
    pub(crate) cfg: S3Config,
    /// The region requests are signed for.
    region: String,
    /// The server refused a DeleteObjects request for good: delete one key per request.
    pub(crate) batch_delete_refused: Arc<AtomicBool>,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may hold test credentials: show only where the replica is.
        f.debug_struct("S3Client")
            .field("replica", &self.cfg.describe())
            .finish()
    }
}

/// What a create-only write meant to store, for comparing with what the bucket holds.
pub(crate) enum Local<'a> {
    Bytes(&'a Bytes),
    File(&'a Path),
}

impl S3Client {
    /// Builds a client: credentials and (unless given) the region from the standard AWS chain
    /// (environment, profile files, web identity, instance metadata), else region `us-east-1`.
    ///
    /// Fails only on a configuration error; missing credentials show on the first request, as
    /// [`Error::Auth`] naming the variables to set.
    pub async fn new(cfg: S3Config) -> Result<S3Client> {
        cfg.validate()?;
        let t = cfg.timeouts;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(t.connect)
                    // Counts from sending the request to the response headers; uploads get
                    // their own limit, scaled by size (see `upload_timeouts`).
                    .read_timeout(t.first_byte)
                    .build(),
            )
            // One quick retry in the SDK (a pooled connection the server had closed); callers
            // retry transient errors with their own backoff.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(2)
                    .with_initial_backoff(Duration::from_millis(200)),
            );
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some((id, secret)) = &cfg.static_credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "lifeboat-static",
            ));
        }
        let shared = loader.load().await;
        let mut b =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if shared.region().is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e.clone());
        }
        let conf = b.build();
        let region = conf.region().map_or("us-east-1".into(), |r| r.to_string());
        Ok(S3Client {
            client: Client::from_conf(conf),
            cfg,
            region,
            batch_delete_refused: Arc::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// The underlying SDK client (for test set-up such as creating a bucket).
    pub fn sdk(&self) -> &Client {
        &self.client
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// `s3://bucket/prefix/key`, for messages.
    pub(crate) fn url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.cfg.bucket, self.cfg.full_key(key))
    }

    pub(crate) fn backend(
        &self,
        op: &'static str,
        key: &str,
        message: String,
        transient: bool,
    ) -> Error {
        Error::Backend {
            op,
            key: self.url(key),
            message,
            transient,
            source: None,
        }
    }

    /// A failure reading or writing the local file `path`.
    pub(crate) fn local_io(
        &self,
        op: &'static str,
        key: &str,
        path: &Path,
        e: std::io::Error,
    ) -> Error {
        match Error::io(op, key, e) {
            Error::Backend {
                transient, source, ..
            } => Error::Backend {
                op,
                key: self.url(key),
                message: format!("local file {} failed", path.display()),
                transient,
                source,
            },
            other => other,
        }
    }

    /// The local file `path` could not be opened as an upload body.
    pub(crate) fn unreadable_body(
        &self,
        key: &str,
        path: &Path,
        e: aws_smithy_types::byte_stream::error::Error,
    ) -> Error {
        Error::Backend {
            op: "put",
            key: self.url(key),
            message: format!("local file {} cannot be read", path.display()),
            transient: false,
            source: Some(Box::new(e)),
        }
    }

    /// The storage error for an SDK failure: typed for what a caller can act on (a missing
    /// object, a refused condition, each set-up mistake), with the SDK's error as its source.
    /// A 412 or 409 is [`Error::Precondition`]: callers resolve it by reading the object back.
    pub(crate) fn err<E>(&self, op: &'static str, key: &str, e: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let endpoint = || self.cfg.endpoint_for_messages(&self.region);
        match classify(&e, status) {
            Kind::NotFound => Error::NotFound { key: self.url(key) },
            Kind::Precondition | Kind::ConditionalConflict => {
                Error::Precondition { key: self.url(key) }
            }
            Kind::NoSuchBucket => Error::NoSuchBucket {
                bucket: self.cfg.bucket.clone(),
                replica: self.cfg.describe(),
                endpoint: endpoint(),
                source: boxed(e),
            },
            Kind::Auth(problem) => Error::Auth {
                replica: self.cfg.describe(),
                endpoint: endpoint(),
                problem,
                source: boxed(e),
            },
            Kind::AccessDenied => Error::AccessDenied {
                op,
                key: self.url(key),
                source: boxed(e),
            },
            Kind::WrongRegion => Error::WrongRegion {
                bucket: self.cfg.bucket.clone(),
                region: self.region.clone(),
                hint: region_hint(&e),
                source: boxed(e),
            },
            k @ (Kind::Transient | Kind::Permanent) => Error::Backend {
                op,
                key: self.url(key),
                message: message(&e, status),
                transient: k == Kind::Transient,
                source: boxed(e),
            },
        }
    }

    /// Per-request timeouts for sending `len` bytes: the SDK's read timeout would count the
    /// time spent sending the body, so it is off and the whole attempt gets a limit that grows
    /// with the size. (The read timeout lives in the connection pool's settings, so it cannot
    /// vary per size without a pool per size; the attempt timeout can.)
    pub(crate) fn upload_timeouts(&self, len: u64) -> aws_sdk_s3::config::Builder {
        let t = self.cfg.timeouts;
        aws_sdk_s3::config::Builder::new().timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(t.connect)
                .disable_read_timeout()
                .operation_attempt_timeout(t.upload(len))
                .build(),
        )
    }

    /// The next chunk of a response body, giving up if the server sends nothing for
    /// `body_idle` (the SDK's timeouts end with the response headers).
    pub(crate) async fn next_chunk(
        &self,
        op: &'static str,
        key: &str,
        body: &mut ByteStream,
    ) -> Result<Option<Bytes>> {
        let idle = self.cfg.timeouts.body_idle;
        match tokio::time::timeout(idle, body.try_next()).await {
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(e)) => {
                Err(self.backend(op, key, format!("reading the object failed: {e}"), true))
            }
            Err(_) => Err(self.backend(
                op,
                key,
                format!(
                    "the server sent nothing for {idle:?} in the middle of the object; it may be \
                     down, overloaded or unreachable"
                ),
                true,
            )),
        }
    }

    /// Whether the object holds exactly `local`, read and compared streaming. Called after a
    /// create-only write was refused, so a missing object means a write still in progress.
    async fn holds(&self, key: &str, local: Local<'_>) -> Result<bool> {
        let (local_len, mut file) = match local {
            Local::Bytes(b) => (b.len() as u64, None),
            Local::File(p) => {
                let f = tokio::fs::File::open(p)
                    .await
                    .map_err(|e| self.local_io("put", key, p, e))?;
                let len = f
                    .metadata()
                    .await
                    .map_err(|e| self.local_io("put", key, p, e))?
                    .len();
                (len, Some((f, p)))
            }
        };
        let resp = match self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Err(match self.err("put", key, e) {
                    Error::NotFound { .. } => self.backend(
                        "put",
                        key,
                        "the server refused to create the object because it exists, but it \
                         cannot be read yet (a concurrent write?)"
                            .into(),
                        true,
                    ),
                    other => other,
                })
            }
        };
        if resp.content_length().is_some_and(|l| l as u64 != local_len) {
            return Ok(false);
        }
        let mut body = resp.body;
        let mut offset = 0u64;
        let mut buf = Vec::new();
        while let Some(chunk) = self.next_chunk("put", key, &mut body).await? {
            let end = offset + chunk.len() as u64;
            if end > local_len {
                return Ok(false);
            }
            let same = match (&local, &mut file) {
                (Local::Bytes(b), _) => b[offset as usize..end as usize] == chunk[..],
                (_, Some((f, p))) => {
                    buf.resize(chunk.len(), 0);
                    f.read_exact(&mut buf)
                        .await
                        .map_err(|e| self.local_io("put", key, p, e))?;
                    buf[..] == chunk[..]
                }
                (Local::File(_), None) => unreachable!("a file source has an open file"),
            };
            if !same {
                return Ok(false);
            }
            offset = end;
        }
        Ok(offset == local_len)
    }

    /// After a create-only write was refused: the same bytes count as success.
    pub(crate) async fn resolve_refused(&self, key: &str, local: Local<'_>) -> Result<PutOutcome> {
        if self.holds(key, local).await? {
            Ok(PutOutcome::AlreadyExisted)
        } else {
            Err(Error::Conflict { key: self.url(key) })
        }
    }
}

#[async_trait]
impl ReplicaClient for S3Client {
    fn describe(&self) -> String {
        self.cfg.describe()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let res = self
            .client
            .put_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .if_none_match("*")
            // The server checks the CRC32 and refuses a body damaged on the way.
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data.clone()))
            .customize()
            .config_override(self.upload_timeouts(data.len() as u64))
            .send()
            .await;
        match res.map_err(|e| self.err("put", key, e)) {
            Ok(_) => Ok(PutOutcome::Created),
            Err(Error::Precondition { .. }) => self.resolve_refused(key, Local::Bytes(&data)).await,
            Err(e) => Err(e),
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| self.local_io("put", key, path, e))?
            .len();
        let res = if size > MULTIPART_THRESHOLD {
            self.put_multipart(key, path, size).await
        } else {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| self.unreadable_body(key, path, e))?;
            self.client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(self.cfg.full_key(key))
                .if_none_match("*")
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .customize()
                .config_override(self.upload_timeouts(size))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.err("put", key, e))
        };
        match res {
            Ok(()) => Ok(PutOutcome::Created),
            Err(Error::Precondition { .. }) => self.resolve_refused(key, Local::File(path)).await,
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let mut out = Vec::new();
        self.download("get", key, None, &mut Sink::Memory(&mut out))
            .await?;
        Ok(out.into())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let mut out = Vec::new();
        self.download("get", key, Some(range), &mut Sink::Memory(&mut out))
            .await?;
        Ok(out.into())
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| self.local_io("get", key, path, e))?;
        let mut sink = Sink::File {
            file: &mut file,
            path,
            written: 0,
        };
        self.download("get", key, None, &mut sink).await?;
        let n = sink.written();
        file.sync_all()
            .await
            .map_err(|e| self.local_io("get", key, path, e))?;
        Ok(n)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = self.cfg.full_key(prefix);
        let root = self.cfg.full_key("");
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.cfg.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", prefix, e))?;
            for o in page.contents() {
                let Some(key) = o.key().and_then(|k| k.strip_prefix(&root)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: key.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        // S3 lists in UTF-8 binary order already; other stores may not.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .send()
            .await
            .map_err(|e| self.err("delete", key, e))
        {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Vec<Result<()>> {
        self.delete_batches(keys).await
    }

    async fn abort_stale_uploads(&self, older_than: std::time::Duration) -> Result<usize> {
        self.abort_stale(older_than).await
    }

    async fn get_versioned(&self, key: &str) -> Result<(Bytes, ETag)> {
        let mut out = Vec::new();
        let tag = self
            .download("get", key, None, &mut Sink::Memory(&mut out))
            .await?;
        let tag = tag.ok_or_else(|| self.no_etag(key))?;
        Ok((out.into(), tag))
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<ETag> {
        self.put_conditional(key, data, None).await
    }

    async fn put_if_match(&self, key: &str, data: Bytes, expected: &ETag) -> Result<ETag> {
        self.put_conditional(key, data, Some(expected)).await
    }

    async fn delete_if_match(&self, key: &str, expected: &ETag) -> Result<()> {
        self.delete_conditional(key, expected).await
    }
}
