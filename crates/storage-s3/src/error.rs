//! How an S3 failure becomes a [`lifeboat_storage::Error`]: which failures a retry may fix, and
//! a message that says what happened and, where it can, what to do.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// What an S3 failure means to a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The object does not exist.
    NotFound,
    /// A create-only write met an existing object (412), or a concurrent one (409).
    Precondition,
    /// Network trouble, throttling, a server error: a retry may succeed.
    Transient,
    /// Anything else (credentials, permissions, a missing bucket): retrying will not help.
    Permanent,
}

/// Classifies a failure from its kind, its HTTP status and its S3 error code.
pub(crate) fn classify<E, R>(e: &SdkError<E, R>, status: Option<u16>) -> Kind
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Kind::Transient
        }
        _ => classify_code(status, e.code().unwrap_or("")),
    }
}

fn classify_code(status: Option<u16>, code: &str) -> Kind {
    match (status, code) {
        // A missing bucket is a configuration error, not a missing object.
        (_, "NoSuchBucket") => Kind::Permanent,
        (_, "NoSuchKey") | (Some(404), _) => Kind::NotFound,
        (_, "PreconditionFailed" | "ConditionalRequestConflict") | (Some(412 | 409), _) => {
            Kind::Precondition
        }
        (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
            Kind::Transient
        }
        (Some(s), _) if s == 408 || s == 429 || s >= 500 => Kind::Transient,
        _ => Kind::Permanent,
    }
}

/// The message for a failure: the server's code and message (or the chain of causes of a
/// network failure), the HTTP status, and a hint.
pub(crate) fn message<E, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
    status: Option<u16>,
    bucket: &str,
) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut msg = match e {
        SdkError::ServiceError(_) => format!(
            "{}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or("(no message)")
        ),
        _ => {
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
    }
    if let Some(h) = hint(e, status, bucket) {
        msg.push_str("; ");
        msg.push_str(&h);
    }
    msg
}

fn hint<E, R>(e: &SdkError<E, R>, status: Option<u16>, bucket: &str) -> Option<String>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = e.code().unwrap_or("");
    Some(match (e, status, code) {
        (SdkError::TimeoutError(_), _, _) => {
            "the server did not answer in time; it may be down, overloaded or unreachable".into()
        }
        (SdkError::DispatchFailure(_), _, _) => {
            "could not reach the server; check the endpoint, DNS and the network".into()
        }
        (_, _, "NoSuchBucket") => format!("bucket {bucket:?} does not exist: create it first"),
        (_, Some(403), _) => "check the AWS credentials (AWS_ACCESS_KEY_ID and \
                              AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket policy"
            .into(),
        (_, Some(301), _) | (_, _, "PermanentRedirect" | "AuthorizationHeaderMalformed") => {
            format!("bucket {bucket:?} may be in another region: set ?region= in the URL")
        }
        (_, _, "SlowDown") | (_, Some(429 | 503), _) => "the server is throttling requests".into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        assert_eq!(classify_code(Some(404), "NoSuchKey"), Kind::NotFound);
        assert_eq!(classify_code(Some(404), ""), Kind::NotFound);
        assert_eq!(classify_code(Some(404), "NoSuchBucket"), Kind::Permanent);
        assert_eq!(
            classify_code(Some(412), "PreconditionFailed"),
            Kind::Precondition
        );
        assert_eq!(
            classify_code(Some(409), "ConditionalRequestConflict"),
            Kind::Precondition
        );
        assert_eq!(classify_code(Some(503), "SlowDown"), Kind::Transient);
        assert_eq!(classify_code(Some(429), ""), Kind::Transient);
        assert_eq!(classify_code(Some(500), "InternalError"), Kind::Transient);
        assert_eq!(classify_code(Some(400), "RequestTimeout"), Kind::Transient);
        assert_eq!(classify_code(Some(403), "AccessDenied"), Kind::Permanent);
        assert_eq!(classify_code(Some(400), "InvalidRequest"), Kind::Permanent);
    }
}
