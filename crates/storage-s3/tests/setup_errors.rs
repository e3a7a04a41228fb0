//! Set-up mistakes against a real S3-compatible server (moto on 127.0.0.1): each is one clear,
//! permanent error that names what to fix, never a network problem or a missing object.

use bytes::Bytes;
use lifeboat_storage::{AuthProblem, Error, ReplicaClient};
use lifeboat_storage_s3::testing::S3TestServer;
use lifeboat_storage_s3::S3Client;

fn one_line(e: &Error) -> String {
    let line = e.to_string();
    assert!(!line.contains('\n'), "{line}");
    line
}

#[tokio::test]
async fn a_missing_bucket_is_named_with_what_to_do() {
    let s = S3TestServer::start().await;
    let mut cfg = s.config("p");
    cfg.bucket = "no-such-bucket-here".into();
    let c = S3Client::new(cfg).await.unwrap();
    for e in [
        c.get("k").await.unwrap_err(),
        c.put("k", Bytes::from_static(b"x")).await.unwrap_err(),
        c.list("").await.unwrap_err(),
    ] {
        assert!(matches!(e, Error::NoSuchBucket { .. }), "{e:?}");
        assert!(e.is_setup() && !e.is_transient(), "{e}");
        let line = one_line(&e);
        assert!(
            line.contains("no-such-bucket-here") && line.contains("create it"),
            "{line}"
        );
        assert!(line.contains(&s.endpoint()), "names the endpoint: {line}");
        assert!(
            std::error::Error::source(&e).is_some(),
            "keeps the server's error"
        );
    }
}

#[tokio::test]
async fn unknown_and_wrong_credentials_and_missing_permissions_are_told_apart() {
    let s = S3TestServer::start().await;
    let (id, secret) = s.require_auth().await;

    let mut cfg = s.config("p");
    cfg.static_credentials = Some(("AKIAUNKNOWNKEY000000".into(), "whatever".into()));
    let e = S3Client::new(cfg)
        .await
        .unwrap()
        .get("k")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Auth {
                problem: AuthProblem::UnknownKeyId,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_setup() && !e.is_transient());
    assert!(one_line(&e).contains("AWS_ACCESS_KEY_ID"), "{e}");

    let mut cfg = s.config("p");
    cfg.static_credentials = Some((id.clone(), format!("{secret}-wrong")));
    let e = S3Client::new(cfg)
        .await
        .unwrap()
        .put("k", Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Auth {
                problem: AuthProblem::BadSignature,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(one_line(&e).contains("AWS_SECRET_ACCESS_KEY"), "{e}");

    let mut cfg = s.config("p");
    cfg.static_credentials = Some((id, secret));
    let e = S3Client::new(cfg)
        .await
        .unwrap()
        .list("")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AccessDenied { .. }), "{e:?}");
    assert!(e.is_setup() && !e.is_transient());
    let line = one_line(&e);
    assert!(
        line.contains(s.bucket()) && line.contains("policy"),
        "{line}"
    );
}

#[tokio::test]
async fn stale_multipart_uploads_under_the_replica_prefix_are_aborted_and_others_kept() {
    let s = S3TestServer::start().await;
    let c = s.client("replica").await;
    let sdk = c.sdk();
    for key in ["replica/generations/x/snapshot", "other/snapshot"] {
        sdk.create_multipart_upload()
            .bucket(s.bucket())
            .key(key)
            .send()
            .await
            .unwrap();
    }
    let listed = || async {
        let mut keys: Vec<String> = sdk
            .list_multipart_uploads()
            .bucket(s.bucket())
            .send()
            .await
            .unwrap()
            .uploads()
            .iter()
            .map(|u| u.key().unwrap().to_string())
            .collect();
        keys.sort();
        keys
    };
    // moto dates every upload 2010-11-10, so both look a day old here; which uploads are
    // fresh by their date is a unit test of the client (`multipart::tests`).
    assert_eq!(listed().await.len(), 2);
    let day = std::time::Duration::from_secs(24 * 3600);
    assert_eq!(
        c.abort_stale_uploads(day).await.unwrap(),
        1,
        "only the one under this replica's prefix"
    );
    assert_eq!(listed().await, ["other/snapshot"]);
}
