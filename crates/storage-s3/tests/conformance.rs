//! The S3 backend against a real S3-compatible server (moto) on 127.0.0.1.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::{Error, PutOutcome, ReplicaClient};
use lifeboat_storage_s3::testing::S3TestServer;

#[tokio::test]
async fn passes_the_conformance_suite() {
    let s = S3TestServer::start().await;
    lifeboat_storage::conformance::check(&s.client("some/prefix").await).await;
    lifeboat_storage::conformance::check(&s.client("").await).await;
}

#[tokio::test]
async fn the_server_refuses_to_overwrite() {
    let s = S3TestServer::start().await;
    let c = s.client("p").await;
    c.put("k", Bytes::from_static(b"one")).await.unwrap();
    // Bypass our client's own check: a raw conditional PUT must be refused by the server itself.
    let raw = c
        .sdk()
        .put_object()
        .bucket(s.bucket())
        .key("p/k")
        .if_none_match("*")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"two"))
        .send()
        .await;
    assert!(raw.is_err(), "the server ignored If-None-Match");
    assert!(matches!(
        c.put("k", Bytes::from_static(b"two")).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(&c.get("k").await.unwrap()[..], b"one");
}

/// A file of `len` pseudo-random bytes (incompressible, unlike zeroes), with `seed` varied.
fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 24) as u8)
        .collect()
}

#[tokio::test]
async fn multipart_uploads_round_trip_and_stay_create_only() {
    let s = S3TestServer::start().await;
    let c = s.client("mp").await;
    let dir = tempfile::tempdir().unwrap();
    // Over the 64 MiB threshold: five parts.
    let data = pseudo_random(70 << 20, 0);
    let src = dir.path().join("big");
    std::fs::write(&src, &data).unwrap();
    assert_eq!(c.put_file("big", &src).await.unwrap(), PutOutcome::Created);
    assert_eq!(
        c.put_file("big", &src).await.unwrap(),
        PutOutcome::AlreadyExisted,
        "the same file again is a retried write"
    );

    // One byte different, near the end: the server refuses CompleteMultipartUpload
    // (If-None-Match), and the read-back comparison must get that far to see the difference.
    let mut other = data.clone();
    *other.last_mut().unwrap() ^= 1;
    let src2 = dir.path().join("other");
    std::fs::write(&src2, &other).unwrap();
    assert!(matches!(
        c.put_file("big", &src2).await,
        Err(Error::Conflict { .. })
    ));
    let uploads = c
        .sdk()
        .list_multipart_uploads()
        .bucket(s.bucket())
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "the refused upload was aborted: {:?}",
        uploads.uploads()
    );

    let dest = dir.path().join("back");
    assert_eq!(
        c.get_to_file("big", &dest).await.unwrap(),
        data.len() as u64
    );
    assert!(
        std::fs::read(&dest).unwrap() == data,
        "the first upload is intact"
    );
}

#[tokio::test]
async fn a_small_object_is_not_replaced_by_a_multipart_upload() {
    let s = S3TestServer::start().await;
    let c = s.client("mp").await;
    c.put("k", Bytes::from_static(b"small")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    std::fs::write(&src, pseudo_random(65 << 20, 1)).unwrap();
    assert!(matches!(
        c.put_file("k", &src).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(&c.get("k").await.unwrap()[..], b"small");
}

#[tokio::test]
async fn a_frozen_server_fails_fast_with_a_transient_error() {
    let s = S3TestServer::start().await;
    let c = s.client("x").await;
    c.put("a", Bytes::from_static(b"a")).await.unwrap();
    s.pause();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), c.list("")).await;
    let elapsed = started.elapsed();
    s.resume();
    let e = r
        .expect("the client must give up on its own")
        .expect_err("a frozen server cannot answer");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains(s.bucket()), "{e}");
    // Two attempts, each ending at the first-byte timeout (the kernel accepts connections to
    // the frozen process, so neither fails sooner), with a 0.2 s backoff between them: at least
    // two timeouts, and short of a third one. The slack above (a timeout's worth, not a
    // fraction of a second) is for a busy machine; a third attempt or no timeout still fails.
    let first_byte = lifeboat_storage_s3::Timeouts::default().first_byte;
    assert!(
        elapsed >= 2 * first_byte && elapsed < 3 * first_byte,
        "took {elapsed:?}: expected two attempts of {first_byte:?}"
    );
    assert_eq!(
        c.list("").await.unwrap().len(),
        1,
        "data survives the outage"
    );
}

#[tokio::test]
async fn a_stopped_server_fails_at_once_with_a_transient_error() {
    let mut s = S3TestServer::start().await;
    let c = s.client("x").await;
    c.put("a", Bytes::from_static(b"a")).await.unwrap();
    s.stop();
    let started = Instant::now();
    let e = c
        .put("b", Bytes::from_static(b"b"))
        .await
        .expect_err("nothing listens any more");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("could not reach the server"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_missing_bucket_is_a_permanent_error_not_a_missing_object() {
    let s = S3TestServer::start().await;
    let mut cfg = s.config("p");
    cfg.bucket = "no-such-bucket-here".into();
    let c = lifeboat_storage_s3::S3Client::new(cfg).await.unwrap();
    let e = c.get("k").await.expect_err("no bucket");
    assert!(!matches!(e, Error::NotFound { .. }), "{e}");
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// Checks a real store, for whoever wants to know if theirs is safe to use: set
/// `LIFEBOAT_S3_CONFORMANCE_URL=s3://bucket/prefix?endpoint=...` (credentials from the AWS
/// environment) and run this test. Without the variable it checks nothing and says so.
#[tokio::test]
async fn an_external_store_named_by_the_environment_passes_too() {
    let Ok(url) = std::env::var("LIFEBOAT_S3_CONFORMANCE_URL") else {
        eprintln!("LIFEBOAT_S3_CONFORMANCE_URL is not set: no external store checked");
        return;
    };
    let cfg = lifeboat_storage_s3::S3Config::from_url(&url).expect("LIFEBOAT_S3_CONFORMANCE_URL");
    let c = lifeboat_storage_s3::S3Client::new(cfg).await.unwrap();
    lifeboat_storage::conformance::check(&c).await;
    let key = format!("if-none-match-{:016x}", rand::random::<u64>());
    c.put(&key, Bytes::from_static(b"one")).await.unwrap();
    let raw = c
        .sdk()
        .put_object()
        .bucket(&c.config().bucket)
        .key(c.config().full_key(&key))
        .if_none_match("*")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"two"))
        .send()
        .await;
    let intact = c.get(&key).await.unwrap();
    c.delete(&key).await.unwrap();
    assert!(
        raw.is_err() && &intact[..] == b"one",
        "{}: the store ignores If-None-Match and overwrote an object: lifeboat cannot keep a \
         replica there safely",
        c.describe()
    );
}
