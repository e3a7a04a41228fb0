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

#[tokio::test]
async fn multipart_upload_round_trips() {
    let s = S3TestServer::start().await;
    let c = s.client("mp").await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big");
    let data: Vec<u8> = (0..70u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    assert_eq!(c.put_file("big", &src).await.unwrap(), PutOutcome::Created);
    assert_eq!(
        c.put_file("big", &src).await.unwrap(),
        PutOutcome::AlreadyExisted
    );
    let dest = dir.path().join("back");
    assert_eq!(
        c.get_to_file("big", &dest).await.unwrap(),
        data.len() as u64
    );
    assert!(std::fs::read(&dest).unwrap() == data);
}

#[tokio::test]
async fn a_frozen_server_fails_fast_with_a_transient_error() {
    let s = S3TestServer::start().await;
    let c = s.client("x").await;
    c.put("a", Bytes::from_static(b"a")).await.unwrap();
    s.pause();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), c.list("")).await;
    s.resume();
    let r = r.expect("the client must give up on its own");
    let e = r.expect_err("a frozen server cannot answer");
    assert!(e.is_transient(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        c.list("").await.unwrap().len(),
        1,
        "data survives the outage"
    );
}
