//! Faults an S3 endpoint can throw at the client, played by a scripted server on 127.0.0.1:
//! answers lost after the request landed (then 412 on the retry), bodies cut short, downloads
//! that stall, a wrong region. Each ends in the right outcome, never in a short object, a
//! different object, or a misleading error.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{response, s3_error, serve, Reply};
use lifeboat_storage::retry::{retry_until, RetryPolicy};
use lifeboat_storage::{ETag, Error, PutOutcome, ReplicaClient};
use lifeboat_storage_s3::{S3Client, S3Config, Timeouts};
use tokio_util::sync::CancellationToken;

async fn client_for(addr: std::net::SocketAddr) -> S3Client {
    let mut cfg = S3Config::from_url(&format!(
        "s3://bucket/prefix?endpoint=http://{addr}&region=us-east-1"
    ))
    .unwrap();
    cfg.static_credentials = Some(("test".into(), "test".into()));
    cfg.timeouts = Timeouts {
        first_byte: Duration::from_millis(400),
        body_idle: Duration::from_millis(500),
        min_upload_rate: 16 << 20,
        ..Timeouts::default()
    };
    S3Client::new(cfg).await.unwrap()
}

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 0,
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    }
}

fn object(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// The first PUT lands but its answer never comes; the retry is refused with 412; the object
/// read back holds `stored`.
async fn lost_answer_then_412(stored: &'static [u8]) -> (common::Scripted, S3Client) {
    // Only the first attempt lands (its answer is lost); every retry finds the object.
    let landed = std::sync::atomic::AtomicBool::new(false);
    let s = serve(move |_, req| match req.method() {
        "PUT" => {
            if !landed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                Reply::SendThenHang(Vec::new())
            } else {
                Reply::Send(s3_error(
                    "412 Precondition Failed",
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                    &[],
                ))
            }
        }
        "GET" => Reply::Send(response("200 OK", &[("ETag", "\"v1\"")], stored)),
        m => panic!("unexpected {m}"),
    })
    .await;
    let c = client_for(s.addr).await;
    (s, c)
}

#[tokio::test]
async fn a_put_whose_answer_was_lost_and_whose_retry_got_412_already_existed() {
    let (s, c) = lost_answer_then_412(b"segment bytes").await;
    let data = Bytes::from_static(b"segment bytes");
    let outcome = retry_until(quick(), "put", &CancellationToken::new(), || {
        c.put("seg", data.clone())
    })
    .await
    .unwrap();
    assert_eq!(outcome, PutOutcome::AlreadyExisted);
    let puts: Vec<_> = s
        .requests()
        .into_iter()
        .filter(|r| r.method() == "PUT")
        .collect();
    assert!(puts.len() >= 2, "retried: {}", puts.len());
    for p in &puts {
        assert_eq!(p.body, data, "every attempt sends the same bytes");
        assert_eq!(
            p.header("if-none-match"),
            Some("*"),
            "every attempt is create-only"
        );
        assert_eq!(
            p.header("x-amz-checksum-crc32"),
            puts[0].header("x-amz-checksum-crc32"),
            "and the same checksum"
        );
    }
}

#[tokio::test]
async fn a_412_after_a_lost_answer_is_a_conflict_when_the_object_holds_other_bytes() {
    // Serve other bytes of the same length, so only the comparison can tell.
    let (_s, c) = lost_answer_then_412(b"SEGMENT BYTES").await;
    let r = retry_until(quick(), "put", &CancellationToken::new(), || {
        c.put("seg", Bytes::from_static(b"segment bytes"))
    })
    .await;
    assert!(matches!(r, Err(Error::Conflict { .. })), "{r:?}");
}

#[tokio::test]
async fn a_conditional_write_whose_answer_was_lost_returns_its_version() {
    let s = serve(|n, req| match (n, req.method()) {
        (0, "PUT") => Reply::SendThenHang(Vec::new()),
        (_, "PUT") => Reply::Send(s3_error(
            "412 Precondition Failed",
            "PreconditionFailed",
            "no",
            &[],
        )),
        (_, "GET") => Reply::Send(response("200 OK", &[("ETag", "\"v2\"")], b"lease, epoch 2")),
        (_, m) => panic!("unexpected {m}"),
    })
    .await;
    let c = client_for(s.addr).await;
    let v1 = ETag::new("\"v1\"");
    let tag = retry_until(quick(), "renew", &CancellationToken::new(), || {
        c.put_if_match("lease", Bytes::from_static(b"lease, epoch 2"), &v1)
    })
    .await
    .unwrap();
    assert_eq!(tag, ETag::new("\"v2\""), "our write landed: its version");
    let first = &s.requests()[0];
    assert_eq!(first.header("if-match"), Some("\"v1\""));
}

#[tokio::test]
async fn a_download_cut_short_resumes_from_the_byte_it_reached() {
    let data = object(1000);
    let d = data.clone();
    let s = serve(move |n, req| {
        assert_eq!(req.method(), "GET");
        match n {
            // 500 of 1000 bytes, then the connection closes.
            0 => Reply::SendThenClose({
                let mut r = response("200 OK", &[("ETag", "\"e1\"")], &d);
                r.truncate(r.len() - 500);
                r
            }),
            _ => {
                assert_eq!(
                    req.header("range"),
                    Some("bytes=500-"),
                    "resumes where it stopped"
                );
                assert_eq!(
                    req.header("if-match"),
                    Some("\"e1\""),
                    "from the same version"
                );
                Reply::Send(response(
                    "206 Partial Content",
                    &[("ETag", "\"e1\""), ("Content-Range", "bytes 500-999/1000")],
                    &d[500..],
                ))
            }
        }
    })
    .await;
    let c = client_for(s.addr).await;
    assert_eq!(c.get("k").await.unwrap(), data);
    assert_eq!(s.requests().len(), 2);
}

#[tokio::test]
async fn a_download_that_stalls_resumes_into_the_file() {
    let data = object(1000);
    let d = data.clone();
    let s = serve(move |n, req| match n {
        // Promise 1000 bytes, send 10, then say nothing with the connection open.
        0 => Reply::SendThenHang({
            let mut r = response("200 OK", &[("ETag", "\"e1\"")], &d);
            r.truncate(r.len() - 990);
            r
        }),
        _ => {
            assert_eq!(req.header("range"), Some("bytes=10-"));
            Reply::Send(response(
                "206 Partial Content",
                &[("ETag", "\"e1\""), ("Content-Range", "bytes 10-999/1000")],
                &d[10..],
            ))
        }
    })
    .await;
    let c = client_for(s.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    assert_eq!(c.get_to_file("k", &dest).await.unwrap(), 1000);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test]
async fn a_ranged_read_resumes_within_its_range_even_from_a_server_that_ignores_ranges() {
    let data = object(1000);
    let d = data.clone();
    let s = serve(move |n, req| match n {
        0 => {
            assert_eq!(req.header("range"), Some("bytes=100-599"));
            Reply::SendThenClose({
                let mut r = response(
                    "206 Partial Content",
                    &[("ETag", "\"e1\""), ("Content-Range", "bytes 100-599/1000")],
                    &d[100..600],
                );
                r.truncate(r.len() - 300);
                r
            })
        }
        _ => {
            assert_eq!(req.header("range"), Some("bytes=300-599"));
            // This server ignores the range and sends the whole object.
            Reply::Send(response("200 OK", &[("ETag", "\"e1\"")], &d))
        }
    })
    .await;
    let c = client_for(s.addr).await;
    assert_eq!(c.get_range("k", 100..600).await.unwrap(), data[100..600]);
}

#[tokio::test]
async fn a_download_that_keeps_stalling_gives_up_with_a_transient_error() {
    let data = object(1000);
    let s = serve(move |_, _| {
        Reply::SendThenHang({
            let mut r = response("200 OK", &[("ETag", "\"e1\"")], &data);
            r.truncate(r.len() - 990);
            r
        })
    })
    .await;
    let c = client_for(s.addr).await;
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(60), c.get("k"))
        .await
        .expect("the client gives up on its own")
        .expect_err("the body never completes");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("s3://bucket/prefix/k"), "{e}");
    // The first response and four resumes that get nothing, each 0.5 s of silence, plus
    // 0.2 + 0.4 + 0.8 s of backoff.
    let n = s.requests().len();
    assert_eq!(n, 5, "bounded resumes");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_bucket_in_another_region_says_which_region_to_set() {
    let s = serve(|_, _| {
        Reply::Send(s3_error(
            "301 Moved Permanently",
            "PermanentRedirect",
            "The bucket you are attempting to access must be addressed using the specified endpoint.",
            &[("x-amz-bucket-region", "eu-west-1")],
        ))
    })
    .await;
    let c = client_for(s.addr).await;
    let e = c.list("").await.unwrap_err();
    match &e {
        Error::WrongRegion { region, hint, .. } => {
            assert_eq!(region, "us-east-1");
            assert_eq!(hint.as_deref(), Some("eu-west-1"));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_setup() && !e.is_transient());
    assert!(e.to_string().contains("?region="), "{e}");
}

/// The SDK retries a timed-out attempt by itself, inside one `put`: the same request again,
/// whose 412 must end in the read-back, not in an error.
#[tokio::test]
async fn the_sdks_own_retry_of_a_timed_out_put_is_resolved_inside_one_call() {
    let (s, c) = lost_answer_then_412(b"segment bytes").await;
    let r = c.put("seg", Bytes::from_static(b"segment bytes")).await;
    assert_eq!(r.unwrap(), PutOutcome::AlreadyExisted);
    let methods: Vec<_> = s
        .requests()
        .iter()
        .map(|r| r.method().to_string())
        .collect();
    assert_eq!(
        methods,
        ["PUT", "PUT", "GET"],
        "one SDK retry, then the read-back"
    );
}

/// A multipart upload whose caller gives up on it part-way (drops its future: the agent does
/// at a stop past its timeout, or when the WAL outgrows its bound) is aborted, so its parts do
/// not stay in the bucket. The server takes the first part and never answers; the upload's task
/// is cancelled at once, long before any timeout of the client's own could end it.
#[tokio::test]
async fn a_multipart_upload_given_up_on_part_way_is_aborted() {
    let s = serve(|_, req| match req.method() {
        "POST" => Reply::Send(response(
            "200 OK",
            &[("Content-Type", "application/xml")],
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult>\
              <Bucket>bucket</Bucket><Key>prefix/big</Key><UploadId>up-1</UploadId>\
              </InitiateMultipartUploadResult>",
        )),
        "DELETE" => Reply::Send(response("204 No Content", &[], b"")),
        _ => Reply::SendThenHang(Vec::new()),
    })
    .await;
    let c = client_for(s.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    // Over the multipart threshold (64 MiB), sparse: nothing on disk.
    std::fs::File::create(&path)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let upload = tokio::spawn(async move { c.put_file("big", &path).await });
    let seen = |what: &[&str]| {
        let has = |r: &common::Request| what.iter().all(|w| r.line.contains(w));
        s.requests().iter().any(has)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen(&["PUT ", "partNumber=1"]) {
        assert!(
            Instant::now() < deadline,
            "no part upload: {:?}",
            s.requests()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    upload.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen(&[
        "DELETE /bucket/prefix/big?",
        "AbortMultipartUpload",
        "uploadId=up-1",
    ]) {
        assert!(
            Instant::now() < deadline,
            "the upload was not aborted: {:#?}",
            s.requests().iter().map(|r| &r.line).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
