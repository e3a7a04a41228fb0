//! What a storage operation can run into, as variants a caller can act on.
//!
//! Three groups: what the data says ([`Error::NotFound`], [`Error::Conflict`],
//! [`Error::Precondition`]); set-up mistakes that no retry will fix and that a user must correct
//! ([`Error::Auth`], [`Error::NoSuchBucket`], [`Error::AccessDenied`], [`Error::WrongRegion`],
//! [`Error::Config`], [`Error::Unsupported`]: see [`Error::is_setup`]); and everything else
//! ([`Error::Backend`], transient or not). Each message is one line that names the object or
//! replica and says what to do; the underlying cause (an SDK error, an I/O error) is kept as the
//! [`source`](std::error::Error::source), not pasted into the message, so `{:#}` in anyhow
//! prints the whole chain once.

use std::fmt;

use thiserror::Error;

/// Result alias for storage operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cause of an error, kept for whoever prints the chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which credential problem an [`Error::Auth`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthProblem {
    /// No credentials anywhere in the chain (environment, profile, instance role).
    Missing,
    /// The server does not know the access key id.
    UnknownKeyId,
    /// The secret key does not match the access key id (the signature was refused).
    BadSignature,
    /// A session token is expired or invalid.
    BadToken,
}

impl fmt::Display for AuthProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthProblem::Missing => {
                "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                 AWS_PROFILE (a profile in ~/.aws/credentials), or run with an instance role"
            }
            AuthProblem::UnknownKeyId => {
                "the server does not know this access key id: check AWS_ACCESS_KEY_ID (or the \
                 profile AWS_PROFILE names) is a key for this store and endpoint"
            }
            AuthProblem::BadSignature => {
                "the server refused the request signature: AWS_SECRET_ACCESS_KEY does not match \
                 AWS_ACCESS_KEY_ID (or the profile's keys are wrong)"
            }
            AuthProblem::BadToken => {
                "the session token is expired or invalid: refresh AWS_SESSION_TOKEN (or the \
                 profile's session)"
            }
        })
    }
}

/// What a storage operation ran into.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist.
    #[error("object {key} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A create-only write met an existing object with other bytes: another writer is using this
    /// replica, or the replica was tampered with.
    #[error(
        "object {key} already exists with different content: another lifeboat may be writing to \
         this replica; stop it, or give each database its own replica path"
    )]
    Conflict {
        /// The key written.
        key: String,
    },
    /// A conditional write or delete ([`put_if_absent`], [`put_if_match`], [`delete_if_match`])
    /// found another version of the object than the one it was conditioned on (or an object
    /// where it expected none): someone else wrote it in between.
    ///
    /// [`put_if_absent`]: crate::ReplicaClient::put_if_absent
    /// [`put_if_match`]: crate::ReplicaClient::put_if_match
    /// [`delete_if_match`]: crate::ReplicaClient::delete_if_match
    #[error("object {key} is not the version this write expected: another writer changed it")]
    Precondition {
        /// The key written.
        key: String,
    },
    /// Credentials are missing or refused. `endpoint` is where they were sent (secrets redacted).
    #[error("{replica} (endpoint {endpoint}): {problem}")]
    Auth {
        /// The replica, as [`describe`](crate::ReplicaClient::describe) gives it.
        replica: String,
        /// The endpoint, redacted.
        endpoint: String,
        /// What is wrong.
        problem: AuthProblem,
        /// The SDK's or server's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The bucket does not exist.
    #[error(
        "bucket {bucket:?} does not exist (replica {replica}, endpoint {endpoint}): create it, or \
         fix the bucket name in the replica URL"
    )]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
        /// The replica.
        replica: String,
        /// The endpoint, redacted.
        endpoint: String,
        /// The server's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The credentials are valid but may not do this.
    #[error(
        "access denied: {op} {key}: the credentials in use (AWS_ACCESS_KEY_ID / AWS_PROFILE) may \
         not do this; allow s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on the \
         bucket and prefix in its policy"
    )]
    AccessDenied {
        /// The operation.
        op: &'static str,
        /// The object or prefix.
        key: String,
        /// The server's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The bucket lives in another region than the one requests are signed for.
    #[error(
        "bucket {bucket:?} is not in region {region:?}{}: set ?region= in the replica URL (or \
         AWS_REGION)",
        match hint { Some(h) => format!(" (the server says {h:?})"), None => String::new() }
    )]
    WrongRegion {
        /// The bucket.
        bucket: String,
        /// The region requests were signed for.
        region: String,
        /// The region the server named, if it did.
        hint: Option<String>,
        /// The server's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The replica's configuration is wrong (a URL that does not parse, a folder that cannot be
    /// one): fix it, nothing else will help.
    #[error("{message}")]
    Config {
        /// What is wrong and what to do.
        message: String,
        /// The parse error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The store lacks a feature lifeboat relies on (it ignored a conditional write).
    #[error("{replica}: {message}")]
    Unsupported {
        /// The replica.
        replica: String,
        /// What is missing and what to do.
        message: String,
    },
    /// The backend failed.
    #[error("{op} {key}: {message}")]
    Backend {
        /// The operation (`put`, `get`, `list`, ...).
        op: &'static str,
        /// The key or prefix.
        key: String,
        /// What happened, and a hint where there is one.
        message: String,
        /// Whether retrying may help (network errors, throttling, 5xx).
        transient: bool,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                transient: true,
                ..
            }
        )
    }

    /// Whether this is a set-up mistake (credentials, bucket, permissions, region,
    /// configuration, an unsuitable store): permanent, the same on every attempt until a person
    /// fixes it. Report it once, clearly; do not retry it in a loop and do not crash-loop on it.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            Error::Auth { .. }
                | Error::NoSuchBucket { .. }
                | Error::AccessDenied { .. }
                | Error::WrongRegion { .. }
                | Error::Config { .. }
                | Error::Unsupported { .. }
        )
    }

    /// A configuration error with no underlying cause.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
            source: None,
        }
    }

    /// A backend error built from an I/O error on a local file: the message names the kind of
    /// failure ("no storage space", "permission denied"), the I/O error is the source. Interrupted,
    /// timed-out and would-block operations are transient; so are a full disk and a read-only
    /// file system (they end when someone frees space or remounts, and the data waits locally).
    pub fn io(op: &'static str, key: impl Into<String>, e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let transient = matches!(
            e.kind(),
            Interrupted | TimedOut | WouldBlock | StorageFull | ReadOnlyFilesystem | QuotaExceeded
        );
        Error::Backend {
            op,
            key: key.into(),
            message: format!("local file operation failed ({})", e.kind()),
            transient,
            source: Some(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn io_errors_keep_their_cause() {
        let e = Error::io(
            "put",
            "k",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert!(e.is_transient(), "a full disk may be freed");
        assert!(e.to_string().contains("no storage space"), "{e}");
        assert!(e.source().is_some());
        let e = Error::io(
            "put",
            "k",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn setup_errors_are_permanent() {
        let e = Error::Auth {
            replica: "s3://b".into(),
            endpoint: "https://x".into(),
            problem: AuthProblem::Missing,
            source: None,
        };
        assert!(e.is_setup() && !e.is_transient());
        let line = e.to_string();
        for name in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_PROFILE",
            "https://x",
        ] {
            assert!(line.contains(name), "{line}");
        }
        assert!(!line.contains('\n'));
    }
}
