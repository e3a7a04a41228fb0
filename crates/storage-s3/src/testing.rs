//! A real S3-compatible server for tests: `moto_server` (PyPI `moto[server]`) on 127.0.0.1.
//!
//! The binary is found from `LIFEBOAT_MOTO_SERVER`, else `<workspace>/.venv/bin/moto_server`,
//! else `moto_server` on `PATH`; `scripts/s3-server/install.sh` installs it. moto keeps objects
//! in memory, so an outage is simulated by freezing the process ([`S3TestServer::pause`], SIGSTOP)
//! and thawing it ([`S3TestServer::resume`], SIGCONT): connections hang, then the data is still
//! there.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{S3Client, S3Config};

/// A running moto server with one fresh bucket.
pub struct S3TestServer {
    child: Child,
    port: u16,
    bucket: String,
}

fn moto_binary() -> PathBuf {
    if let Ok(p) = std::env::var("LIFEBOAT_MOTO_SERVER") {
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
    panic!("moto_server not found: run scripts/s3-server/install.sh (or set LIFEBOAT_MOTO_SERVER)");
}

impl S3TestServer {
    /// Starts a server on a free port and creates a bucket. Panics with a clear message if it
    /// cannot.
    pub async fn start() -> S3TestServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let mut s = S3TestServer {
            child,
            port,
            bucket: format!("lifeboat-test-{:08x}", rand::random::<u32>()),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("moto_server exited at start with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let c = s.client("").await;
        c.sdk()
            .create_bucket()
            .bucket(&s.bucket)
            .send()
            .await
            .expect("create test bucket");
        s
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A replica URL under `prefix`.
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

    /// A client for `prefix`.
    pub async fn client(&self, prefix: &str) -> S3Client {
        let mut cfg = S3Config::from_url(&self.url(prefix)).expect("test URL");
        cfg.static_credentials = Some(("test".into(), "test".into()));
        S3Client::new(cfg).await.expect("S3 client")
    }

    fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Freezes the server (an outage: requests hang until [`resume`](Self::resume)).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws the server.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
