//! A real S3-compatible server for tests: `moto_server` (PyPI `moto[server]`) on 127.0.0.1.
//!
//! The binary is found from `LIFEBOAT_MOTO_SERVER`, else `<workspace>/.venv/bin/moto_server`,
//! else `moto_server` on `PATH`; `scripts/s3-server/install.sh` installs it.
//!
//! moto keeps objects in memory and has no way to keep them across a restart, so there is no
//! `restart()`. An outage that the data survives is simulated by freezing the process
//! ([`S3TestServer::pause`], SIGSTOP) and thawing it ([`S3TestServer::resume`], SIGCONT): while
//! frozen, connections are accepted by the kernel and then hang, as with a server that stopped
//! answering. [`S3TestServer::stop`] kills the server for good (connections are refused).
//!
//! Clients get fake static credentials through their configuration ([`S3TestServer::client`]),
//! never through the process environment, which tests running in parallel share.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{S3Client, S3Config};

/// How long moto may take to start (a cold Python start on a busy machine).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running moto server with one fresh bucket. Dropping it kills the server.
pub struct S3TestServer {
    child: Child,
    /// Whether the child was killed and reaped: its pid may belong to another process now.
    stopped: bool,
    port: u16,
    bucket: String,
    log: PathBuf,
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("LIFEBOAT_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("moto_server");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "moto_server not found: run scripts/s3-server/install.sh (or set LIFEBOAT_MOTO_SERVER \
         to a moto_server binary)"
    );
}

impl S3TestServer {
    /// Starts a server on a free port and creates a bucket. Panics with a clear message if it
    /// cannot.
    pub async fn start() -> S3TestServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let bin = moto_binary();
        // moto logs every request; a file (unlike an unread pipe) never fills up and blocks it.
        let log = std::env::temp_dir().join(format!("lifeboat-moto-{port}.log"));
        let log_file = std::fs::File::create(&log).expect("create moto log file");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; run scripts/s3-server/install.sh",
                    bin.display()
                )
            });
        let mut s = S3TestServer {
            child,
            stopped: false,
            port,
            bucket: format!("lifeboat-test-{:08x}", rand::random::<u32>()),
            log,
        };
        let deadline = Instant::now() + START_DEADLINE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                s.stopped = true;
                panic!(
                    "moto_server exited at start with {status}:\n{}",
                    s.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within {START_DEADLINE:?}:\n{}",
                s.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let c = s.client("").await;
        if let Err(e) = c.sdk().create_bucket().bucket(&s.bucket).send().await {
            panic!(
                "cannot create test bucket {}: {e:?}\n{}",
                s.bucket,
                s.log_tail()
            );
        }
        s
    }

    /// The end of the server's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A replica URL under `prefix`: `s3://BUCKET/PREFIX?endpoint=http://127.0.0.1:PORT&...`.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&region=us-east-1",
            self.bucket,
            self.endpoint()
        )
    }

    /// Environment for a child `lifeboat` process (fake credentials; moto accepts any).
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    }

    /// The configuration of a client for `prefix`, with fake static credentials, to adjust
    /// before [`S3Client::new`].
    pub fn config(&self, prefix: &str) -> S3Config {
        let mut cfg = S3Config::from_url(&self.url(prefix)).expect("test URL");
        cfg.static_credentials = Some(("test".into(), "test".into()));
        cfg
    }

    /// A client for `prefix`.
    pub async fn client(&self, prefix: &str) -> S3Client {
        S3Client::new(self.config(prefix)).await.expect("S3 client")
    }

    /// Turns on moto's authentication, with one IAM user that has no permissions, and returns
    /// that user's `(access key id, secret key)`. From then on, a request signed with an unknown
    /// key is refused with InvalidAccessKeyId, one signed with the wrong secret with
    /// SignatureDoesNotMatch, and one signed right with AccessDenied.
    pub async fn require_auth(&self) -> (String, String) {
        // Before authentication is on, IAM answers unsigned requests.
        self.raw_post(
            "/",
            "iam",
            "Action=CreateUser&UserName=lifeboat-test&Version=2010-05-08",
        )
        .await;
        let created = self
            .raw_post(
                "/",
                "iam",
                "Action=CreateAccessKey&UserName=lifeboat-test&Version=2010-05-08",
            )
            .await;
        let field = |name: &str| {
            let open = format!("<{name}>");
            let start = created
                .find(&open)
                .unwrap_or_else(|| panic!("no {name} in {created}"))
                + open.len();
            let end = start + created[start..].find('<').expect("closing tag");
            created[start..end].to_string()
        };
        let keys = (field("AccessKeyId"), field("SecretAccessKey"));
        // Authentication from the next request on.
        self.raw_post("/moto-api/reset-auth", "s3", "0").await;
        keys
    }

    /// Sends an unsigned POST (attributed to `service` by its credential scope) and returns the
    /// response body; panics unless the answer is 200.
    async fn raw_post(&self, path: &str, service: &str, body: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to moto");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: {content_type}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20250101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.port,
            body.len(),
            // moto reads the reset-auth count from the raw body, which a form type would hide.
            content_type = if service == "iam" {
                "application/x-www-form-urlencoded"
            } else {
                "text/plain"
            },
        );
        sock.write_all(req.as_bytes()).await.expect("send to moto");
        let mut resp = String::new();
        sock.read_to_string(&mut resp)
            .await
            .expect("read from moto");
        assert!(
            resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
            "moto refused POST {path}: {resp}"
        );
        resp
    }

    fn signal(&self, sig: i32) {
        if self.stopped {
            return;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped, so the pid is still ours.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Freezes the server (an outage: connections are accepted, then requests hang until
    /// [`resume`](Self::resume)). The data survives.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a paused server.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Kills the server for good: connections to its port are refused from now on, and its
    /// objects are gone (moto keeps them in memory only).
    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.stopped = true;
        }
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        // A frozen process still dies of SIGKILL; resuming first is only politeness.
        self.resume();
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}
