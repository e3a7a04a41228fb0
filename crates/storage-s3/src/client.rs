//! [`S3Client`]: the [`ReplicaClient`] over `aws-sdk-s3`.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use lifeboat_storage::{Error, ObjectMeta, PutOutcome, ReplicaClient, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::S3Config;

/// Files larger than this are uploaded in parts.
const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Part size for multipart uploads.
const PART_SIZE: u64 = 16 << 20;

/// A replica in an S3 bucket, under a prefix.
#[derive(Clone)]
pub struct S3Client {
    client: Client,
    cfg: S3Config,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("replica", &self.cfg.describe())
            .finish()
    }
}

/// How an S3 error maps onto the storage error kinds.
enum Kind {
    NotFound,
    Precondition,
    Transient,
    Permanent,
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R>(
    e: &SdkError<E, R>,
    status: Option<u16>,
) -> Kind {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Kind::Transient
        }
        _ => {
            let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
            match (status, code) {
                (_, "NoSuchKey") | (Some(404), _) => Kind::NotFound,
                (_, "PreconditionFailed") | (_, "ConditionalRequestConflict") | (Some(412), _) => {
                    Kind::Precondition
                }
                (_, "SlowDown") | (_, "RequestTimeout") | (_, "InternalError") => Kind::Transient,
                (Some(s), _) if s == 429 || s >= 500 => Kind::Transient,
                _ => Kind::Permanent,
            }
        }
    }
}

fn describe_err<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
    status: Option<u16>,
) -> String {
    let mut msg = match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or("(no message)")
        ),
        None => {
            let mut m = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                m.push_str(": ");
                m.push_str(&s.to_string());
                src = s.source();
            }
            m
        }
    };
    if let Some(s) = status {
        msg.push_str(&format!(" (HTTP {s})"));
        if s == 403 {
            msg.push_str("; check the AWS credentials and the bucket policy");
        }
    }
    msg
}

impl S3Client {
    /// Builds a client: credentials and (unless given) region from the AWS chain.
    pub async fn new(cfg: S3Config) -> Result<S3Client> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                // A dead endpoint must fail fast (connect, first byte), while a large snapshot
                // upload on a slow link still has time to finish.
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .read_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(600))
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(2));
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
        Ok(S3Client {
            client: Client::from_conf(b.build()),
            cfg,
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

    fn err<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        op: &'static str,
        key: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> Error {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let full = format!("{}/{}", self.cfg.describe(), key);
        match classify(&e, status) {
            Kind::NotFound => Error::NotFound { key: full },
            Kind::Precondition => Error::Conflict { key: full },
            k => Error::Backend {
                op,
                key: full,
                message: describe_err(&e, status),
                transient: matches!(k, Kind::Transient),
            },
        }
    }

    /// After a create-only write was refused: the same bytes count as success.
    async fn resolve_conflict(
        &self,
        key: &str,
        same: impl std::future::Future<Output = Result<bool>>,
    ) -> Result<PutOutcome> {
        if same.await? {
            Ok(PutOutcome::AlreadyExisted)
        } else {
            Err(Error::Conflict {
                key: format!("{}/{}", self.cfg.describe(), key),
            })
        }
    }

    async fn put_multipart(&self, key: &str, path: &Path, size: u64) -> Result<()> {
        let full = self.cfg.full_key(key);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.cfg.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.err("put", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut n = 1;
            while offset < size {
                let len = PART_SIZE.min(size - offset);
                let body = ByteStream::read_from()
                    .path(path)
                    .offset(offset)
                    .length(aws_smithy_types::byte_stream::Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| Error::Backend {
                        op: "put",
                        key: key.into(),
                        message: format!("read {}: {e}", path.display()),
                        transient: false,
                    })?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.cfg.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(n)
                    .body(body)
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
            self.client
                .complete_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .if_none_match("*")
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.err("put", key, e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.cfg.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn same_as_file(&self, key: &str, path: &Path) -> Result<bool> {
        let local = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::io("put", key, e))?
            .len();
        let resp = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .send()
            .await
            .map_err(|e| self.err("get", key, e))?;
        if resp.content_length().is_some_and(|l| l as u64 != local) {
            return Ok(false);
        }
        let mut body = resp.body;
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io("put", key, e))?;
        let mut buf = Vec::new();
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::Backend {
            op: "get",
            key: key.into(),
            message: e.to_string(),
            transient: true,
        })? {
            buf.resize(chunk.len(), 0);
            if f.read_exact(&mut buf).await.is_err() || buf[..] != chunk[..] {
                return Ok(false);
            }
        }
        let mut extra = [0u8; 1];
        Ok(f.read(&mut extra)
            .await
            .map_err(|e| Error::io("put", key, e))?
            == 0)
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
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data.clone()))
            .send()
            .await;
        match res {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) => match self.err("put", key, e) {
                Error::Conflict { .. } => {
                    self.resolve_conflict(key, async { Ok(self.get(key).await? == data) })
                        .await
                }
                other => Err(other),
            },
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| Error::io("put", key, e))?
            .len();
        let res = if size > MULTIPART_THRESHOLD {
            self.put_multipart(key, path, size).await
        } else {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| Error::Backend {
                    op: "put",
                    key: key.into(),
                    message: format!("read {}: {e}", path.display()),
                    transient: false,
                })?;
            self.client
                .put_object()
                .bucket(&self.cfg.bucket)
                .key(self.cfg.full_key(key))
                .if_none_match("*")
                .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.err("put", key, e))
        };
        match res {
            Ok(()) => Ok(PutOutcome::Created),
            Err(Error::Conflict { .. }) => {
                self.resolve_conflict(key, self.same_as_file(key, path))
                    .await
            }
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let resp = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .send()
            .await
            .map_err(|e| self.err("get", key, e))?;
        let data = resp.body.collect().await.map_err(|e| Error::Backend {
            op: "get",
            key: key.into(),
            message: e.to_string(),
            transient: true,
        })?;
        Ok(data.into_bytes())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.end <= range.start {
            return Ok(Bytes::new());
        }
        let resp = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            // A range that starts past the end of the object.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                return Ok(Bytes::new())
            }
            Err(e) => return Err(self.err("get", key, e)),
        };
        let data = resp.body.collect().await.map_err(|e| Error::Backend {
            op: "get",
            key: key.into(),
            message: e.to_string(),
            transient: true,
        })?;
        let b = data.into_bytes();
        // Some servers ignore an unsatisfiable end and send more: cut to the asked length.
        let want = (range.end - range.start) as usize;
        Ok(if b.len() > want { b.slice(..want) } else { b })
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<u64> {
        let resp = self
            .client
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(self.cfg.full_key(key))
            .send()
            .await
            .map_err(|e| self.err("get", key, e))?;
        let mut f = tokio::fs::File::create(path)
            .await
            .map_err(|e| Error::io("get", key, e))?;
        let mut body = resp.body;
        let mut n = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::Backend {
            op: "get",
            key: key.into(),
            message: e.to_string(),
            transient: true,
        })? {
            f.write_all(&chunk)
                .await
                .map_err(|e| Error::io("get", key, e))?;
            n += chunk.len() as u64;
        }
        f.sync_all().await.map_err(|e| Error::io("get", key, e))?;
        Ok(n)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = self.cfg.full_key(prefix);
        let strip = if self.cfg.prefix.is_empty() {
            0
        } else {
            self.cfg.prefix.len() + 1
        };
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
                let Some(k) = o.key() else { continue };
                if k.len() < strip {
                    continue;
                }
                out.push(ObjectMeta {
                    key: k[strip..].to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
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
        {
            Ok(_) => Ok(()),
            Err(e) => match self.err("delete", key, e) {
                Error::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}
