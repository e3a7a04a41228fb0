//! No credentials anywhere: the error names the variables to set and the endpoint, not the last
//! provider the SDK tried (the instance metadata service and its session token). No server is
//! needed: the request fails before it is sent.
//!
//! This binary holds one test because it changes the process environment.

use lifeboat_storage::{AuthProblem, Error, ReplicaClient};
use lifeboat_storage_s3::{S3Client, S3Config};

#[tokio::test]
async fn missing_credentials_name_the_variables_and_the_endpoint() {
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        std::env::remove_var(v);
    }
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/lifeboat-test/config");
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/lifeboat-test/credentials",
    );
    // Port 9 (discard) on 127.0.0.1: nothing is sent anyway. The instance metadata service is
    // left enabled, as on a user's machine, so the SDK tries it and fails.
    let cfg = S3Config::from_url("s3://bucket/prefix?endpoint=http://127.0.0.1:9&region=us-east-1")
        .unwrap();
    let c = S3Client::new(cfg).await.unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(60), c.get("k"))
        .await
        .expect("fails on its own")
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Auth {
                problem: AuthProblem::Missing,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_setup() && !e.is_transient());
    let line = e.to_string();
    for needle in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "127.0.0.1:9",
        "s3://bucket/prefix",
    ] {
        assert!(line.contains(needle), "{needle} missing from: {line}");
    }
    assert!(!line.contains("IMDS"), "{line}");
}
