//! How an S3 failure becomes a [`lifeboat_storage::Error`]: which failures a retry may fix,
//! which are set-up mistakes a person must fix (credentials, bucket, permissions, region), and a
//! message that says what happened and what to do. The SDK's error is kept as the source.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use lifeboat_storage::{AuthProblem, BoxError};

/// What an S3 failure means to a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The object does not exist.
    NotFound,
    /// A conditional write met another version (412).
    Precondition,
    /// A conditional write met a concurrent one (409 ConditionalRequestConflict): look again.
    ConditionalConflict,
    /// The bucket does not exist.
    NoSuchBucket,
    /// Credentials missing or refused.
    Auth(AuthProblem),
    /// Valid credentials without the permission.
    AccessDenied,
    /// The bucket is in another region.
    WrongRegion,
    /// Network trouble, throttling, a server error: a retry may succeed.
    Transient,
    /// Anything else: retrying will not help.
    Permanent,
}

/// Classifies a failure from its kind, its HTTP status and its S3 error code.
pub(crate) fn classify<E, R>(e: &SdkError<E, R>, status: Option<u16>) -> Kind
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    match e {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Kind::Transient,
        SdkError::DispatchFailure(_) | SdkError::ConstructionFailure(_) => {
            match credentials_problem(e) {
                Some(k) => k,
                None if matches!(e, SdkError::ConstructionFailure(_)) => Kind::Permanent,
                None => Kind::Transient,
            }
        }
        _ => classify_code(status, e.code().unwrap_or("")),
    }
}

/// If the request failed before it was sent because no credentials could be loaded, what that
/// means. The SDK then talks about the last provider it tried, often the instance metadata
/// service and its session token, which says nothing useful to someone who forgot to set a
/// variable: no provider had credentials ([`CredentialsError::CredentialsNotLoaded`]), a
/// configuration is broken, or the last provider refused (no instance role) are all "missing
/// credentials", permanent. A provider that timed out may answer later: transient.
///
/// [`CredentialsError::CredentialsNotLoaded`]: aws_credential_types::provider::error::CredentialsError::CredentialsNotLoaded
fn credentials_problem(e: &(dyn std::error::Error + 'static)) -> Option<Kind> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(c) = x.downcast_ref::<CredentialsError>() {
            return Some(match c {
                CredentialsError::ProviderTimedOut(_) => Kind::Transient,
                _ => Kind::Auth(AuthProblem::Missing),
            });
        }
        cur = x.source();
    }
    None
}

pub(crate) fn classify_code(status: Option<u16>, code: &str) -> Kind {
    match (status, code) {
        // A missing bucket is a configuration error, not a missing object.
        (_, "NoSuchBucket") => Kind::NoSuchBucket,
        (_, "InvalidAccessKeyId") => Kind::Auth(AuthProblem::UnknownKeyId),
        (_, "SignatureDoesNotMatch") => Kind::Auth(AuthProblem::BadSignature),
        (_, "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired") => {
            Kind::Auth(AuthProblem::BadToken)
        }
        (
            _,
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException",
        )
        | (Some(301), _) => Kind::WrongRegion,
        (_, "AccessDenied" | "AllAccessDisabled" | "AccountProblem") | (Some(403), _) => {
            Kind::AccessDenied
        }
        (_, "NoSuchKey") | (Some(404), _) => Kind::NotFound,
        (_, "ConditionalRequestConflict") | (Some(409), _) => Kind::ConditionalConflict,
        (_, "PreconditionFailed") | (Some(412), _) => Kind::Precondition,
        (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
            Kind::Transient
        }
        (Some(s), _) if s == 408 || s == 429 || s >= 500 => Kind::Transient,
        _ => Kind::Permanent,
    }
}

/// The region a wrong-region answer names, from its `x-amz-bucket-region` header or its
/// message ("... the region 'us-east-1' is wrong; expecting 'eu-west-1'").
pub(crate) fn region_hint<E>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Option<String>
where
    E: ProvideErrorMetadata,
{
    if let Some(r) = e
        .raw_response()
        .and_then(|r| r.headers().get("x-amz-bucket-region"))
    {
        return Some(r.to_string());
    }
    let m = e.message()?;
    let i = m.find("expecting '")? + "expecting '".len();
    let j = m[i..].find('\'')?;
    Some(m[i..i + j].to_string())
}

/// The message of a failure that is none of the typed set-up mistakes: the server's code and
/// message (for a network failure, what could be wrong), the HTTP status, and a hint. The
/// SDK's own error, with its chain of causes, is the error's source.
pub(crate) fn message<E, R>(e: &SdkError<E, R>, status: Option<u16>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let mut msg = match e {
        SdkError::ServiceError(_) => format!(
            "{}: {}",
            e.code().unwrap_or("error"),
            e.message().unwrap_or("(no message)")
        ),
        SdkError::TimeoutError(_) => {
            "the server did not answer in time; it may be down, overloaded or unreachable".into()
        }
        SdkError::DispatchFailure(_) if credentials_problem(e).is_some() => {
            "could not load credentials in time (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             AWS_PROFILE, or the instance role)"
                .into()
        }
        SdkError::DispatchFailure(_) => {
            "could not reach the server; check the endpoint, DNS and the network".into()
        }
        SdkError::ResponseError(_) => "the server's answer could not be read".into(),
        SdkError::ConstructionFailure(_) => "the request could not be built".into(),
        _ => "the request failed".into(),
    };
    if let Some(s) = status {
        msg.push_str(&format!(" (HTTP {s})"));
    }
    if e.code() == Some("SlowDown") || matches!(status, Some(429 | 503)) {
        msg.push_str("; the server is throttling requests");
    }
    msg
}

/// The SDK error, boxed as a source.
pub(crate) fn boxed<E, R>(e: SdkError<E, R>) -> Option<BoxError>
where
    SdkError<E, R>: std::error::Error + Send + Sync + 'static,
{
    Some(Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_codes() {
        assert_eq!(classify_code(Some(404), "NoSuchKey"), Kind::NotFound);
        assert_eq!(classify_code(Some(404), ""), Kind::NotFound);
        assert_eq!(classify_code(Some(404), "NoSuchBucket"), Kind::NoSuchBucket);
        assert_eq!(
            classify_code(Some(412), "PreconditionFailed"),
            Kind::Precondition
        );
        assert_eq!(
            classify_code(Some(409), "ConditionalRequestConflict"),
            Kind::ConditionalConflict
        );
        assert_eq!(classify_code(Some(503), "SlowDown"), Kind::Transient);
        assert_eq!(classify_code(Some(429), ""), Kind::Transient);
        assert_eq!(classify_code(Some(500), "InternalError"), Kind::Transient);
        assert_eq!(classify_code(Some(400), "RequestTimeout"), Kind::Transient);
        assert_eq!(classify_code(Some(403), "AccessDenied"), Kind::AccessDenied);
        assert_eq!(
            classify_code(Some(403), "InvalidAccessKeyId"),
            Kind::Auth(AuthProblem::UnknownKeyId)
        );
        assert_eq!(
            classify_code(Some(403), "SignatureDoesNotMatch"),
            Kind::Auth(AuthProblem::BadSignature)
        );
        assert_eq!(
            classify_code(Some(400), "ExpiredToken"),
            Kind::Auth(AuthProblem::BadToken)
        );
        assert_eq!(classify_code(Some(301), ""), Kind::WrongRegion);
        assert_eq!(
            classify_code(Some(400), "AuthorizationHeaderMalformed"),
            Kind::WrongRegion
        );
        assert_eq!(classify_code(Some(400), "InvalidRequest"), Kind::Permanent);
    }
}
