//! `s3://bucket/prefix?endpoint=...&region=...&force_path_style=true`
//!
//! Everything a URL can get wrong is found here, as a [`ConfigError`] that names it, before any
//! request: an endpoint that does not parse is a configuration error, not a network problem.
//! An endpoint with secrets in it (`https://user:pass@host`, a `?token=` query) is refused,
//! with a message that does not show them: the SDK cannot use them, and would log them.

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
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(lifeboat_storage::url::redact),
            )
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

impl From<ConfigError> for lifeboat_storage::Error {
    fn from(e: ConfigError) -> Self {
        lifeboat_storage::Error::Config {
            message: format!("invalid S3 replica configuration: {e}"),
            source: None,
        }
    }
}

/// Checks that `endpoint` is `http[s]://host[:port][/path]` with a non-empty host, a numeric
/// port and a path of URL characters: what the SDK accepts, so that a mistake is a
/// configuration error rather than a "network" failure on the first request.
///
/// User information (`user:pass@`) and a query (`?token=...`) are refused, with a message that
/// never shows them: the SDK does not use them (it refuses an endpoint with a query when the
/// first request is sent, and would send user information in the `Host` header), yet logs the
/// endpoint whole at debug level. Credentials go in the AWS variables.
fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    use lifeboat_storage::url::redact;
    let bad = |why: &str| {
        ConfigError(format!(
            "endpoint {:?} {why}: write it as http://HOST[:PORT] or https://HOST[:PORT]",
            redact(endpoint)
        ))
    };
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if path.contains(['?', '#']) {
        return Err(bad(
            "has a query or fragment, which the S3 client cannot use (a token goes in \
             AWS_SESSION_TOKEN, keys in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        ));
    }
    if authority.contains('@') {
        return Err(bad(
            "carries user information (user:password@), which the S3 client does not send as \
             credentials: remove it and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
             AWS_PROFILE)",
        ));
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c))
    {
        return Err(bad("has a character its path may not hold"));
    }
    let host_port = authority;
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed [ in its host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("has junk after its host"))?,
            ),
        };
        if h.is_empty()
            || !h
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad("has an invalid IPv6 host"));
        }
        (h, port)
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(bad("names no host"));
    }
    if !host_port.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(bad("has an invalid host name"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("has an invalid port (1 to 65535)"));
        }
    }
    if rest.contains(char::is_whitespace) {
        return Err(bad("contains spaces"));
    }
    Ok(())
}

/// `500ms`, `2s`: a positive duration.
fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError(format!(
            "{key} must be a duration like 500ms or 4s, got {v:?}"
        ))
    };
    let (n, unit) = match v.strip_suffix("ms") {
        Some(n) => (n, Duration::from_millis(1)),
        None => (v.strip_suffix('s').ok_or_else(bad)?, Duration::from_secs(1)),
    };
    let n: u32 = n.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(unit * n)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError(format!(
            "{key} must be true or false, got {v:?}"
        ))),
    }
}

impl S3Config {
    /// Parses `s3://bucket[/prefix][?endpoint=URL&region=R&force_path_style=BOOL&timeout=4s&min_upload_rate=131072]`
    /// (`timeout`: [`Timeouts::first_byte`]; `min_upload_rate`: [`Timeouts::min_upload_rate`]).
    ///
    /// Error messages show the URL without its query (which may hold an endpoint with secrets).
    pub fn from_url(url: &str) -> Result<S3Config, ConfigError> {
        let shown = lifeboat_storage::url::redact(url);
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| ConfigError(format!("{shown:?} does not start with s3://")))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(ConfigError(format!("{shown:?} names no bucket")));
        }
        if !bucket.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_'
        }) {
            return Err(ConfigError(format!(
                "{shown:?} does not name a valid bucket (lowercase letters, digits, '-', '.')"
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
            let v = lifeboat_storage::url::percent_decode(v).map_err(ConfigError)?;
            match k {
                "endpoint" => {
                    check_endpoint(&v)?;
                    cfg.endpoint = Some(v.trim_end_matches('/').to_string());
                }
                "region" => cfg.region = Some(v),
                "timeout" => cfg.timeouts.first_byte = parse_duration(k, &v)?,
                "min_upload_rate" => {
                    cfg.timeouts.min_upload_rate = v.parse().map_err(|_| {
                        ConfigError(format!("{k} must be bytes per second, got {v:?}"))
                    })?
                }
                "force_path_style" | "path_style" => path_style = Some(parse_bool(k, &v)?),
                _ => {
                    return Err(ConfigError(format!(
                    "unknown option {k:?} in {shown:?} (known: endpoint, region, force_path_style, \
                     timeout, min_upload_rate)"
                )))
                }
            }
        }
        cfg.force_path_style = path_style.unwrap_or(cfg.endpoint.is_some());
        Ok(cfg)
    }

    /// Checks a configuration built by hand (not parsed from a URL) as [`from_url`] would.
    ///
    /// [`from_url`]: S3Config::from_url
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.endpoint {
            check_endpoint(e)?;
        }
        if self.bucket.is_empty() {
            return Err(ConfigError("the configuration names no bucket".into()));
        }
        Ok(())
    }

    /// The endpoint as it may be shown (secrets redacted), or AWS's for `region`.
    pub fn endpoint_for_messages(&self, region: &str) -> String {
        match &self.endpoint {
            Some(e) => lifeboat_storage::url::redact(e),
            None => format!("AWS S3 in {region}"),
        }
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
    fn timeouts_come_from_the_url() {
        let c = S3Config::from_url("s3://b/p?timeout=700ms&min_upload_rate=1048576").unwrap();
        assert_eq!(c.timeouts.first_byte, Duration::from_millis(700));
        assert_eq!(c.timeouts.min_upload_rate, 1 << 20);
        assert_eq!(
            S3Config::from_url("s3://b/p?timeout=2s")
                .unwrap()
                .timeouts
                .first_byte,
            Duration::from_secs(2)
        );
        for bad in [
            "timeout=0s",
            "timeout=2",
            "timeout=xs",
            "min_upload_rate=fast",
        ] {
            assert!(
                S3Config::from_url(&format!("s3://b/p?{bad}")).is_err(),
                "{bad}"
            );
        }
    }

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

    /// Regression: an endpoint's `user:pass@` and `?token=` were handed to the SDK, which logged
    /// them at debug level, refused the query as "not a valid URI" on the first request (shown
    /// as a network problem), and sent the user information in the `Host` header.
    #[test]
    fn endpoints_with_secrets_are_refused_without_showing_them() {
        for (u, says) in [
            (
                "s3://b/p?endpoint=https%3A%2F%2Fkey%3As3cr3t%40store.example%3A9000",
                "user information",
            ),
            ("s3://b/p?endpoint=https://key:s3cr3t@h", "user information"),
            ("s3://b/p?endpoint=https://h/%3Ftoken%3Ds3cr3t", "query"),
            ("s3://b/p?endpoint=http://127.0.0.1:9000/%3Fs3cr3t", "query"),
            ("s3://b/p?endpoint=https://h%23s3cr3t", "query or fragment"),
            (
                "s3://b/p?endpoint=https://key:s3cr3t@:9000",
                "user information",
            ),
            (
                "s3://b/p?endpoint=https://key:s3cr3t@h&bogus=1",
                "user information",
            ),
            ("s3://key:s3cr3t@b/p", "valid bucket"),
            ("s3:///p?endpoint=https://key:s3cr3t@h", "no bucket"),
        ] {
            let e = S3Config::from_url(u).unwrap_err().to_string();
            assert!(e.contains(says), "{u}: {e}");
            assert!(!e.contains("s3cr3t"), "{u}: {e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Every endpoint accepted here is one the SDK's URI parser accepts too (so a bad one is
        /// never first found by a request, as a "network" error), and no endpoint panics.
        #[test]
        fn accepted_endpoints_parse_as_uris(
            scheme in "https?://",
            host in "[a-z0-9._\\-:\\[\\]@%]{0,12}",
            path in "[ -~]{0,12}",
        ) {
            let e = format!("{scheme}{host}{path}");
            if check_endpoint(&e).is_ok() {
                proptest::prop_assert!(e.parse::<http::Uri>().is_ok(), "{e}");
            }
        }
    }

    #[test]
    fn endpoints_that_do_not_parse_are_configuration_errors() {
        for (u, says) in [
            ("s3://b/p?endpoint=ftp://x", "must start with http"),
            ("s3://b/p?endpoint=http://", "names no host"),
            ("s3://b/p?endpoint=http://:9000", "names no host"),
            ("s3://b/p?endpoint=http://h:port", "invalid port"),
            ("s3://b/p?endpoint=http://h:70000", "invalid port"),
            ("s3://b/p?endpoint=http://h%20x", "invalid host"),
            ("s3://b/p?endpoint=http://[::1", "unclosed"),
            ("s3://b/p?endpoint=127.0.0.1:9000", "must start with http"),
            ("s3://b/p?endpoint=http://h/a%3Cb", "path may not hold"),
            ("s3://b/p?endpoint=http://h/a%22b", "path may not hold"),
        ] {
            let e = S3Config::from_url(u).unwrap_err();
            assert!(e.to_string().contains(says), "{u}: {e}");
            let e: lifeboat_storage::Error = e.into();
            assert!(e.is_setup() && !e.is_transient(), "{u}: {e}");
        }
        for ok in [
            "s3://b/p?endpoint=http://127.0.0.1:9000",
            "s3://b/p?endpoint=http://[::1]:9000",
            "s3://b/p?endpoint=https://acct.r2.cloudflarestorage.com",
            "s3://b/p?endpoint=https://minio.internal/s3",
        ] {
            S3Config::from_url(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let mut c = S3Config::from_url("s3://b/p").unwrap();
        c.endpoint = Some("not a url".into());
        assert!(c.validate().is_err());
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
