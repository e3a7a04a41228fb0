//! A fault-injection proxy for tests: an HTTP/1.1 relay on 127.0.0.1 between lifeboat and a
//! real S3 server (moto), whose behaviour a test switches at run time.
//!
//! [`FaultProxy`] listens and relays; a [`Rule`] says which [`Fault`] to inject and into which
//! requests (a share of them, of some methods); [`Counts`] says what it saw, so a test can tell
//! a backoff from a busy loop. Each request is relayed on its own connection to the server, so
//! a fault never leaks into the next request.
//!
//! ```no_run
//! # async fn demo() {
//! use lifeboat_faultproxy::{FaultProxy, Fault, Rule};
//! let proxy = FaultProxy::start("127.0.0.1:9000".parse().unwrap()).await;
//! // Point the client at proxy.endpoint(); then, for a while, the server acts on each request
//! // but the answer never comes back (a "timed-out request that lands later").
//! proxy.set(Rule::all(Fault::LoseResponse));
//! proxy.set(Rule::all(Fault::Pass));
//! # }
//! ```

#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub mod http;

use http::{read_body, read_head, Body};

/// What happens to a request the rule selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Relay it.
    Pass,
    /// Read it and never answer; nothing reaches the server (a server that stopped answering).
    Stall,
    /// Accept the connection and never read from it (a blackholed network path).
    Blackhole,
    /// Close new connections at once, unread (a server that is down).
    Refuse,
    /// Reset the connection after the request head, before its body; nothing reaches the server.
    ResetBeforeBody,
    /// Relay it (the server acts on it), then reset the connection instead of answering.
    ResetAfterBody,
    /// Relay it (the server acts on it) and never answer: the client times out, and the
    /// request has landed all the same.
    LoseResponse,
    /// Relay it and answer after this delay (past the client's timeout: a late landing).
    Delay(Duration),
    /// Hold it for this long, then relay it and answer (if the client is still there): a
    /// request that lands late, possibly after the client gave up or was killed.
    LateForward(Duration),
    /// Answer with this status without relaying: 503 is `SlowDown`, 400 `InvalidRequest` (a
    /// header the server wants is missing), 501 `NotImplemented`, any other `InternalError`.
    ServerError(u16),
    /// Relay it, and cut the answer's body in half (answers with a body only).
    TruncateBody,
}

/// Which requests get a fault.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The fault.
    pub fault: Fault,
    /// The share of selected requests that get it (0 to 1), spread evenly: with 0.2, every
    /// fifth request. Deterministic, so a test's outcome does not depend on luck.
    pub share: f64,
    /// Only requests with one of these methods (`PUT`, `GET`, ...); empty: all.
    pub methods: Vec<String>,
}

impl Rule {
    /// `fault` for every request.
    pub fn all(fault: Fault) -> Rule {
        Rule {
            fault,
            share: 1.0,
            methods: Vec::new(),
        }
    }

    /// `fault` for every request with one of `methods`.
    pub fn methods(fault: Fault, methods: &[&str]) -> Rule {
        Rule {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            ..Rule::all(fault)
        }
    }

    /// The same rule for a share of the requests.
    pub fn share(self, share: f64) -> Rule {
        Rule { share, ..self }
    }

    fn selects(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}

/// What the proxy saw since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections accepted.
    pub connections: u64,
    /// Requests read, by method.
    pub requests: BTreeMap<String, u64>,
    /// Requests (or connections) that got a fault other than [`Fault::Pass`].
    pub faulted: u64,
}

impl Counts {
    /// Requests read, all methods.
    pub fn total(&self) -> u64 {
        self.requests.values().sum()
    }
}

#[derive(Debug)]
struct State {
    rule: Rule,
    /// Requests the rule selected since it was set (for spreading the share).
    selected: u64,
    counts: Counts,
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fault for a new connection (only connection-level faults apply).
    fn on_connect(&self) -> Fault {
        let mut s = self.state();
        s.counts.connections += 1;
        match s.rule.fault {
            f @ (Fault::Blackhole | Fault::Refuse) if s.rule.share >= 1.0 => {
                s.counts.faulted += 1;
                f
            }
            _ => Fault::Pass,
        }
    }

    /// The fault for a request with `method`.
    fn on_request(&self, method: &str) -> Fault {
        let mut s = self.state();
        *s.counts.requests.entry(method.to_string()).or_default() += 1;
        if !s.rule.selects(method) || s.rule.fault == Fault::Pass {
            return Fault::Pass;
        }
        let n = s.selected;
        s.selected += 1;
        let share = s.rule.share.clamp(0.0, 1.0);
        let hit = ((n + 1) as f64 * share).floor() > (n as f64 * share).floor();
        if !hit {
            return Fault::Pass;
        }
        s.counts.faulted += 1;
        s.rule.fault
    }
}

/// A running proxy. Dropping it stops accepting (connections in progress end with their
/// tasks when the runtime stops).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and relays to `upstream`, passing everything.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                rule: Rule::all(Fault::Pass),
                selected: 0,
                counts: Counts::default(),
            }),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, s).await;
                });
            }
        });
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `rule` to requests (and connections) from now on.
    pub fn set(&self, rule: Rule) {
        let mut s = self.shared.state();
        s.rule = rule;
        s.selected = 0;
    }

    /// What it saw so far.
    pub fn counts(&self) -> Counts {
        self.shared.state().counts.clone()
    }
}

/// Holds a connection without answering until the client gives up.
async fn hold(mut sock: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn reset(sock: TcpStream) {
    let _ = sock.set_zero_linger();
    drop(sock);
}

async fn serve(sock: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    match shared.on_connect() {
        Fault::Blackhole => {
            // Never read: hold the socket until the client closes it (a zero-length read
            // would need reading; waiting for writability says nothing), so just park.
            let _keep = sock;
            std::future::pending::<()>().await;
            return Ok(());
        }
        Fault::Refuse => {
            reset(sock);
            return Ok(());
        }
        _ => {}
    }
    let mut client = BufReader::new(sock);
    loop {
        let Some(req) = read_head(&mut client, true, "").await? else {
            return Ok(());
        };
        let method = req.first.clone();
        let fault = shared.on_request(&method);
        if fault == Fault::ResetBeforeBody {
            reset(client.into_inner());
            return Ok(());
        }
        if req.expects_continue {
            client
                .get_mut()
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let body = read_body(&mut client, req.body).await?;
        match fault {
            Fault::Stall => {
                hold(client.into_inner()).await;
                return Ok(());
            }
            Fault::ServerError(code) => {
                let (name, msg) = match code {
                    503 => ("SlowDown", "Please reduce your request rate."),
                    // What a server that wants Content-MD5 on DeleteObjects answers.
                    400 => (
                        "InvalidRequest",
                        "Missing required header for this request: Content-Md5.",
                    ),
                    501 => (
                        "NotImplemented",
                        "A header you provided implies functionality that is not implemented.",
                    ),
                    _ => (
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    ),
                };
                client
                    .get_mut()
                    .write_all(&http::error_response(code, name, msg))
                    .await?;
                if req.close {
                    return Ok(());
                }
                continue;
            }
            _ => {}
        }
        if let Fault::LateForward(d) = fault {
            tokio::time::sleep(d).await;
        }
        // Relay on a connection of its own.
        let answer = async {
            let mut up = TcpStream::connect(shared.upstream).await?;
            let head = if req.expects_continue {
                http::without_expect(&req.raw)
            } else {
                req.raw.clone()
            };
            up.write_all(&head).await?;
            up.write_all(&body).await?;
            let mut up = BufReader::new(up);
            let resp = read_head(&mut up, false, &method).await?.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no answer")
            })?;
            let rbody = read_body(&mut up, resp.body).await?;
            Ok::<_, std::io::Error>((resp, rbody))
        }
        .await;
        let Ok((resp, rbody)) = answer else {
            reset(client.into_inner());
            return Ok(());
        };
        match fault {
            Fault::ResetAfterBody => {
                reset(client.into_inner());
                return Ok(());
            }
            Fault::LoseResponse => {
                hold(client.into_inner()).await;
                return Ok(());
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::TruncateBody => {
                if let Body::Length(n) = resp.body {
                    let w = client.get_mut();
                    w.write_all(&resp.raw).await?;
                    w.write_all(&rbody[..(n / 2) as usize]).await?;
                    w.flush().await?;
                    return Ok(());
                }
            }
            _ => {}
        }
        let w = client.get_mut();
        w.write_all(&resp.raw).await?;
        w.write_all(&rbody).await?;
        w.flush().await?;
        if resp.body == Body::UntilClose || resp.close || req.close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every request with `200 OK` and the body `hello`, counting them.
    async fn upstream() -> (SocketAddr, Arc<Mutex<u32>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(0));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = l.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut r = BufReader::new(sock);
                    while let Ok(Some(h)) = read_head(&mut r, true, "").await {
                        let _ = read_body(&mut r, h.body).await;
                        *s.lock().unwrap() += 1;
                        let _ = r
                            .get_mut()
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
                            .await;
                    }
                });
            }
        });
        (addr, seen)
    }

    async fn request(addr: SocketAddr, method: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("{method} /k HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
                .as_bytes(),
        )
        .await?;
        let mut out = String::new();
        tokio::time::timeout(Duration::from_millis(500), s.read_to_string(&mut out))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        Ok(out)
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says_and_the_server_sees_what_it_should() {
        let (up, seen) = upstream().await;
        let p = FaultProxy::start(up).await;
        let seen = || *seen.lock().unwrap();
        assert!(request(p.addr(), "GET").await.unwrap().ends_with("hello"));
        assert_eq!(seen(), 1);

        p.set(Rule::all(Fault::LoseResponse));
        let e = request(p.addr(), "PUT").await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(seen(), 2, "the request landed");

        p.set(Rule::all(Fault::Stall));
        assert!(request(p.addr(), "PUT").await.is_err());
        assert_eq!(seen(), 2, "a stalled request never lands");

        p.set(Rule::all(Fault::ResetAfterBody));
        assert!(request(p.addr(), "PUT")
            .await
            .map_or(true, |a| a.is_empty()));
        assert_eq!(seen(), 3);

        p.set(Rule::all(Fault::ResetBeforeBody));
        assert!(request(p.addr(), "PUT")
            .await
            .map_or(true, |a| a.is_empty()));
        assert_eq!(seen(), 3);

        p.set(Rule::all(Fault::TruncateBody));
        let a = request(p.addr(), "GET").await.unwrap();
        assert!(
            a.contains("Content-Length: 5") && a.ends_with("\r\n\r\nhe"),
            "{a}"
        );

        p.set(Rule::methods(Fault::ServerError(503), &["PUT"]).share(0.5));
        let answers: Vec<String> = futures_lite(p.addr(), 4).await;
        let slow = answers.iter().filter(|a| a.contains("503")).count();
        assert_eq!(slow, 2, "{answers:?}");
        assert!(request(p.addr(), "GET").await.unwrap().ends_with("hello"));

        p.set(Rule::all(Fault::LateForward(Duration::from_millis(800))));
        let before = seen();
        assert!(request(p.addr(), "PUT").await.is_err());
        assert_eq!(seen(), before, "not yet");
        let t = std::time::Instant::now();
        while seen() == before {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the held request never landed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        p.set(Rule::all(Fault::Blackhole));
        assert!(request(p.addr(), "GET").await.is_err());
        p.set(Rule::all(Fault::Pass));
        assert!(request(p.addr(), "GET").await.unwrap().ends_with("hello"));
        let c = p.counts();
        assert!(c.requests["PUT"] >= 8 && c.faulted >= 7, "{c:?}");
    }

    async fn futures_lite(addr: SocketAddr, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(request(addr, "PUT").await.unwrap());
        }
        out
    }
}
