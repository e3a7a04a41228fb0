//! Timeouts against a scripted HTTP server on 127.0.0.1 that reads uploads slowly: a slow link
//! must not cut a large upload off. (A download that stalls is resumed, then given up: see
//! `faults.rs`.)

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::read_head;
use lifeboat_storage::{PutOutcome, ReplicaClient};
use lifeboat_storage_s3::{S3Client, S3Config, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Reads a request body of `len` bytes at about `rate` bytes per second.
async fn drain_slowly(r: &mut BufReader<TcpStream>, len: u64, rate: u64) {
    let step = 4096u64;
    let mut left = len;
    let mut buf = vec![0u8; step as usize];
    while left > 0 {
        let n = step.min(left) as usize;
        r.read_exact(&mut buf[..n]).await.unwrap();
        left -= n as u64;
        tokio::time::sleep(Duration::from_millis(n as u64 * 1000 / rate)).await;
    }
}

async fn client_for(addr: std::net::SocketAddr, timeouts: Timeouts) -> S3Client {
    let mut cfg = S3Config::from_url(&format!(
        "s3://bucket/prefix?endpoint=http://{addr}&region=us-east-1"
    ))
    .unwrap();
    cfg.static_credentials = Some(("test".into(), "test".into()));
    cfg.timeouts = timeouts;
    S3Client::new(cfg).await.unwrap()
}

#[tokio::test]
async fn a_slow_upload_is_not_cut_off_by_the_first_byte_timeout() {
    const SIZE: usize = 128 << 10;
    const SERVER_RATE: u64 = 80 << 10; // so the server takes about 1.6 s to read the body
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(sock);
        let head = read_head(&mut r).await.expect("a request");
        assert!(
            head.line.starts_with("PUT /bucket/prefix/big"),
            "{}",
            head.line
        );
        assert_eq!(head.header("if-none-match"), Some("*"), "create-only");
        assert!(
            head.header("x-amz-checksum-crc32").is_some(),
            "the server gets a checksum to verify"
        );
        if head.header("expect") == Some("100-continue") {
            r.get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .unwrap();
        }
        let len: u64 = head
            .header("content-length")
            .expect("a sized body")
            .parse()
            .unwrap();
        assert!(len >= SIZE as u64, "the whole body is sent: {len}");
        drain_slowly(&mut r, len, SERVER_RATE).await;
        r.get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        head
    });
    let timeouts = Timeouts {
        // Far less than the time the server takes to read the body...
        first_byte: Duration::from_millis(500),
        // ...but this upload may take 0.5 s + 128 KiB / 16 KiB/s = 8.5 s.
        min_upload_rate: 16 << 10,
        ..Timeouts::default()
    };
    let c = client_for(addr, timeouts).await;
    let data: Bytes = vec![7u8; SIZE].into();
    let started = Instant::now();
    assert_eq!(c.put("big", data).await.unwrap(), PutOutcome::Created);
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the server really was slow"
    );
    server.await.unwrap();
}
