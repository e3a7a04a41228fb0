//! Batch deletes against a real S3-compatible server (moto) behind the fault proxy: one
//! DeleteObjects request per thousand keys, and one DELETE per key on a server that refuses
//! DeleteObjects. The proxy counts the requests by method (DeleteObjects is a POST).

use std::net::SocketAddr;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use lifeboat_faultproxy::{Fault, FaultProxy, Rule};
use lifeboat_storage::{Error, ReplicaClient};
use lifeboat_storage_s3::testing::S3TestServer;
use lifeboat_storage_s3::{S3Client, S3Config};

/// moto, a fault proxy in front of it, and a client that talks to the proxy.
async fn through_proxy(prefix: &str) -> (S3TestServer, FaultProxy, S3Client) {
    let server = S3TestServer::start().await;
    let upstream: SocketAddr = server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream).await;
    let mut cfg = S3Config::from_url(&format!(
        "s3://{}/{prefix}?endpoint={}&region=us-east-1",
        server.bucket(),
        proxy.endpoint()
    ))
    .unwrap();
    cfg.static_credentials = Some(("test".into(), "test".into()));
    let client = S3Client::new(cfg).await.unwrap();
    (server, proxy, client)
}

async fn put_all(c: &S3Client, keys: &[String]) {
    stream::iter(keys)
        .for_each_concurrent(16, |k| async move {
            c.put(k, Bytes::from(k.clone())).await.unwrap();
        })
        .await;
}

async fn listed(c: &S3Client) -> Vec<String> {
    c.list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

fn requests(p: &FaultProxy, method: &str) -> u64 {
    p.counts().requests.get(method).copied().unwrap_or(0)
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

#[tokio::test]
async fn many_keys_go_in_one_request_per_thousand() {
    let (_server, proxy, c) = through_proxy("batch").await;
    let all = keys("k", 1001);
    put_all(&c, &all).await;
    put_all(&c, &["other".to_string()]).await;

    let answers = c.delete_many(&all).await;
    assert_eq!(answers.len(), all.len());
    assert!(answers.iter().all(|r| r.is_ok()), "{answers:?}");
    assert_eq!(
        listed(&c).await,
        ["other"],
        "exactly the keys given are gone"
    );
    // A batch holds at most 1,000 keys; a batch of one is a plain DeleteObject.
    assert_eq!(
        requests(&proxy, "POST"),
        1,
        "the first 1,000 keys: one DeleteObjects"
    );
    assert_eq!(requests(&proxy, "DELETE"), 1, "the last key alone");

    let answers = c.delete_many(&keys("k", 1002)).await;
    assert!(answers.iter().all(|r| r.is_ok()), "{answers:?}");
    assert_eq!(requests(&proxy, "POST"), 3, "1,002 keys: two DeleteObjects");
    assert_eq!(requests(&proxy, "DELETE"), 1);
}

#[tokio::test]
async fn a_server_that_refuses_delete_objects_gets_one_delete_per_key() {
    let (_server, proxy, c) = through_proxy("refused").await;
    let first = keys("a", 3);
    put_all(&c, &first).await;
    // What MinIO before 2025 answers to DeleteObjects without Content-MD5.
    proxy.set(Rule::methods(Fault::ServerError(400), &["POST"]));

    let answers = c.delete_many(&first).await;
    assert!(answers.iter().all(|r| r.is_ok()), "{answers:?}");
    assert!(listed(&c).await.is_empty(), "every key deleted, one by one");
    assert_eq!(requests(&proxy, "POST"), 1, "one refused batch");
    assert_eq!(requests(&proxy, "DELETE"), 3);

    // The refusal is remembered: no more batches, straight to one request per key.
    let second = keys("b", 4);
    put_all(&c, &second).await;
    let answers = c.delete_many(&second).await;
    assert!(answers.iter().all(|r| r.is_ok()), "{answers:?}");
    assert!(listed(&c).await.is_empty());
    assert_eq!(requests(&proxy, "POST"), 1, "no batch sent after a refusal");
    assert_eq!(requests(&proxy, "DELETE"), 7);
}

#[tokio::test]
async fn a_batch_that_meets_a_server_error_fails_for_every_key_and_is_tried_again_later() {
    let (_server, proxy, c) = through_proxy("slow").await;
    let all = keys("s", 5);
    put_all(&c, &all).await;
    proxy.set(Rule::methods(Fault::ServerError(503), &["POST"]));

    let answers = c.delete_many(&all).await;
    assert_eq!(answers.len(), all.len());
    for (k, r) in all.iter().zip(&answers) {
        match r {
            Err(e @ Error::Backend { transient, .. }) => {
                assert!(transient, "a server error is transient: {e}");
                assert!(e.to_string().contains(k.as_str()), "names its key: {e}");
            }
            other => panic!("{k}: expected a transient failure, got {other:?}"),
        }
    }
    assert_eq!(listed(&c).await.len(), all.len(), "nothing was deleted");
    assert_eq!(
        requests(&proxy, "DELETE"),
        0,
        "a struggling server is not sent one request per key on top"
    );

    // The server recovers: the next call is a batch again.
    proxy.set(Rule::all(Fault::Pass));
    let posts = requests(&proxy, "POST");
    let answers = c.delete_many(&all).await;
    assert!(answers.iter().all(|r| r.is_ok()), "{answers:?}");
    assert!(listed(&c).await.is_empty());
    assert_eq!(requests(&proxy, "POST"), posts + 1, "one batch");
    assert_eq!(requests(&proxy, "DELETE"), 0);
}
