//! Timeouts against a scripted HTTP server on 127.0.0.1 that misbehaves on purpose: one that
//! reads uploads slowly (a slow link must not cut a large upload off), and one that stops
//! sending in the middle of a body (a download must not hang).

use std::time::{Duration, Instant};

use bytes::Bytes;
use lifeboat_storage::{PutOutcome, ReplicaClient};
use lifeboat_storage_s3::{S3Client, S3Config, Timeouts};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A request's head: its first line and headers (names in lower case).
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head(r: &mut BufReader<TcpStream>) -> Option<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Some(Head {
        line: line.trim_end().to_string(),
        headers,
    })
}

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

#[tokio::test]
async fn a_download_that_stalls_fails_with_a_transient_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut r = BufReader::new(sock);
        let head = read_head(&mut r).await.expect("a request");
        assert!(
            head.line.starts_with("GET /bucket/prefix/k"),
            "{}",
            head.line
        );
        // Promise 1000 bytes, send 10, then say nothing with the connection open.
        r.get_mut()
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        let _ = released.await;
    });
    let timeouts = Timeouts {
        body_idle: Duration::from_secs(1),
        ..Timeouts::default()
    };
    let c = client_for(addr, timeouts).await;
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), c.get("k"))
        .await
        .expect("the client gives up on its own")
        .expect_err("the body never completes");
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("s3://bucket/prefix/k"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _ = release.send(());
    server.await.unwrap();
}
