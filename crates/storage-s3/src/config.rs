//! `s3://bucket/prefix?endpoint=...&region=...&force_path_style=true`

use std::fmt;
use std::time::Duration;

/// Where an S3 replica lives.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Custom endpoint (`http://127.0.0.1:9000`, `https://<account>.r2.cloudflarestorage.com`).
    pub endpoint: Option<String>,
    /// Region; default from the AWS chain, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); the default when an endpoint is given.
    pub force_path_style: bool,
    /// Static credentials (tests only; real deployments use the AWS chain).
    pub static_credentials: Option<(String, String)>,
    /// How long to wait on the network before giving up (with a transient error).
    pub timeouts: Timeouts,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret, even in a debug log.
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field(
                "static_credentials",
                &self
                    .static_credentials
                    .as_ref()
                    .map(|(id, _)| (id, "<redacted>")),
            )
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

/// How long the client waits, chosen so that a dead or frozen endpoint fails within seconds
/// while a large upload on a slow link still finishes.
///
/// Every wait is bounded: connecting, waiting for a response, and each pause inside a response
/// body. An upload's limit grows with its size, because the SDK's read timeout would otherwise
/// count the time spent sending the body and cut off every large upload on a slow link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection (TCP and TLS).
    pub connect: Duration,
    /// From sending a request without a large body to the response headers. AWS advises retrying
    /// requests for small objects that take over about two seconds.
    pub first_byte: Duration,
    /// The longest pause while reading a response body (a download stalls, the server froze).
    /// The SDK's own stalled-stream protection, on by default, may give up sooner (a transfer
    /// under one byte per second after a five-second grace period).
    pub body_idle: Duration,
    /// The slowest upload rate tolerated, in bytes per second: sending `n` bytes and getting the
    /// answer may take `first_byte + n / min_upload_rate`.
    pub min_upload_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            first_byte: Duration::from_secs(4),
            body_idle: Duration::from_secs(20),
            min_upload_rate: 128 << 10,
        }
    }
}

impl Timeouts {
    /// The limit for one attempt to upload `len` bytes (a PUT, a part, or completing an upload
    /// of that size, which a server may spend time assembling).
    pub fn upload(&self, len: u64) -> Duration {
        let rate = self.min_upload_rate.max(1);
        self.first_byte + Duration::from_millis(len.saturating_mul(1000) / rate)
    }
}

/// A malformed replica URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError(format!(
            "{key} must be true or false, got {v:?}"
        ))),
    }
}

/// Decodes `%XX` escapes in a query value.
fn unescape(s: &str) -> Result<String, ConfigError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ConfigError(format!("bad %-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ConfigError(format!("{s:?} is not UTF-8")))
}

impl S3Config {
    /// Parses `s3://bucket[/prefix][?endpoint=URL&region=R&force_path_style=BOOL]`.
    pub fn from_url(url: &str) -> Result<S3Config, ConfigError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| ConfigError(format!("{url:?} does not start with s3://")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(ConfigError(format!("{url:?} names no bucket")));
        }
        if !bucket.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_'
        }) {
            return Err(ConfigError(format!(
                "{bucket:?} is not a valid bucket name"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..") || prefix.contains("//") {
            return Err(ConfigError(format!("{prefix:?} is not a valid key prefix")));
        }
        let mut cfg = S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            endpoint: None,
            region: None,
            force_path_style: false,
            static_credentials: None,
            timeouts: Timeouts::default(),
        };
        let mut path_style = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError(format!("query item {pair:?} has no value")))?;
            let v = unescape(v)?;
            match k {
                "endpoint" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(ConfigError(format!(
                            "endpoint {v:?} must start with http:// or https://"
                        )));
                    }
                    cfg.endpoint = Some(v.trim_end_matches('/').to_string());
                }
                "region" => cfg.region = Some(v),
                "force_path_style" | "path_style" => path_style = Some(parse_bool(k, &v)?),
                _ => {
                    return Err(ConfigError(format!(
                    "unknown option {k:?} in {url:?} (known: endpoint, region, force_path_style)"
                )))
                }
            }
        }
        cfg.force_path_style = path_style.unwrap_or(cfg.endpoint.is_some());
        Ok(cfg)
    }

    /// The full key for a key relative to the prefix.
    pub fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// `s3://bucket/prefix`, for messages (no query: it may carry an endpoint with a token).
    pub fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c =
            S3Config::from_url("s3://b/a/b/?endpoint=http://127.0.0.1:9000/&region=auto").unwrap();
        assert_eq!(c.bucket, "b");
        assert_eq!(c.prefix, "a/b");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region.as_deref(), Some("auto"));
        assert!(c.force_path_style, "an endpoint implies path style");
        assert_eq!(c.full_key("generations/x"), "a/b/generations/x");
        assert_eq!(c.describe(), "s3://b/a/b");

        let c = S3Config::from_url("s3://bucket").unwrap();
        assert_eq!(c.prefix, "");
        assert!(!c.force_path_style);
        assert_eq!(c.full_key("k"), "k");

        let c = S3Config::from_url("s3://b/p?endpoint=https%3A%2F%2Fx.example&path_style=false")
            .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://x.example"));
        assert!(!c.force_path_style);
    }

    #[test]
    fn uploads_get_time_in_proportion_to_their_size() {
        let t = Timeouts::default();
        assert_eq!(t.upload(0), t.first_byte);
        assert_eq!(
            t.upload(16 << 20),
            t.first_byte + Duration::from_secs(128),
            "a 16 MiB part at 128 KiB/s"
        );
        let t = Timeouts {
            min_upload_rate: 0,
            ..t
        };
        assert!(
            t.upload(1) > t.first_byte,
            "a zero rate does not divide by zero"
        );
    }

    #[test]
    fn debug_output_hides_the_secret_key() {
        let mut c = S3Config::from_url("s3://b/p").unwrap();
        c.static_credentials = Some(("AKIDEXAMPLE".into(), "s3cr3t-value".into()));
        let shown = format!("{c:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }

    #[test]
    fn rejects_bad_urls() {
        for u in [
            "http://b/p",
            "s3:///p",
            "s3://B/p",
            "s3://b/p?endpoint=ftp://x",
            "s3://b/p?bogus=1",
            "s3://b/p?region",
            "s3://b/../p",
            "s3://b/p?force_path_style=maybe",
        ] {
            assert!(S3Config::from_url(u).is_err(), "{u}");
        }
    }
}
