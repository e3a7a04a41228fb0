//! A scripted HTTP server on 127.0.0.1 that plays an S3 endpoint misbehaving on purpose: each
//! request (numbered from 0, across connections) gets the [`Reply`] a test's script gives it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// A request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    /// `PUT /bucket/key HTTP/1.1`.
    pub line: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }
}

/// What the server does with a request.
pub enum Reply {
    /// Sends these bytes (a whole response) and goes on reading requests.
    Send(Vec<u8>),
    /// Sends these bytes, then says nothing more with the connection open (a frozen server, or
    /// a request that lands while its answer never comes).
    SendThenHang(Vec<u8>),
    /// Sends these bytes, then closes the connection (a reset, a proxy cutting a body short).
    SendThenClose(Vec<u8>),
}

/// A response with `status`, `headers` and `body` (Content-Length added).
pub fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// An S3 error response.
pub fn s3_error(status: &str, code: &str, message: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![("Content-Type", "application/xml")];
    h.extend_from_slice(headers);
    response(
        status,
        &h,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
             <Message>{message}</Message><RequestId>r</RequestId></Error>"
        )
        .as_bytes(),
    )
}

pub type Script = dyn Fn(usize, &Request) -> Reply + Send + Sync;

/// A running scripted server; `requests()` is what it received, in order.
pub struct Scripted {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Scripted {
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

pub async fn serve(script: impl Fn(usize, &Request) -> Reply + Send + Sync + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script: Arc<Script> = Arc::new(script);
    let count = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (script, seen, count) = (script.clone(), s.clone(), count.clone());
            tokio::spawn(async move { connection(sock, &*script, &seen, &count).await });
        }
    });
    Scripted { addr, seen }
}

async fn connection(
    sock: TcpStream,
    script: &Script,
    seen: &Mutex<Vec<Request>>,
    count: &AtomicUsize,
) {
    let mut r = BufReader::new(sock);
    while let Some(req) = read_request(&mut r).await {
        let n = count.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(req.clone());
        match script(n, &req) {
            Reply::Send(b) => {
                if r.get_mut().write_all(&b).await.is_err() {
                    return;
                }
            }
            Reply::SendThenHang(b) => {
                let _ = r.get_mut().write_all(&b).await;
                // Keep the connection open, silent, until the client gives up on it.
                let mut sink = [0u8; 1024];
                while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Reply::SendThenClose(b) => {
                let _ = r.get_mut().write_all(&b).await;
                return;
            }
        }
    }
}

/// Reads a request's line and headers (the body is left unread).
pub async fn read_head(r: &mut BufReader<TcpStream>) -> Option<Request> {
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
    Some(Request {
        line: line.trim_end().to_string(),
        headers,
        body: Vec::new(),
    })
}

async fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut req = read_head(r).await?;
    if req.header("expect") == Some("100-continue") {
        r.get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .ok()?;
    }
    let len: usize = req
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    req.body.resize(len, 0);
    r.read_exact(&mut req.body).await.ok()?;
    Some(req)
}
