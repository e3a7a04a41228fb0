//! A real S3 server (moto) behind the fault proxy, for the fault tests: the agent talks to the
//! proxy, the test switches the proxy's faults and reads the bucket directly.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lifeboat_faultproxy::{Counts, FaultProxy, Rule};
use lifeboat_storage::ReplicaClient;
use lifeboat_storage_s3::testing::S3TestServer;

/// moto and a fault proxy in front of it, on a runtime of their own.
pub struct FaultyS3 {
    pub rt: tokio::runtime::Runtime,
    pub server: S3TestServer,
    pub proxy: FaultProxy,
}

impl FaultyS3 {
    pub fn start() -> FaultyS3 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(S3TestServer::start());
        let upstream: SocketAddr = server
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let proxy = rt.block_on(FaultProxy::start(upstream));
        FaultyS3 { rt, server, proxy }
    }

    /// The replica URL through the proxy, with short timeouts (a second to the first byte,
    /// uploads at 1 MiB/s at least) so that a fault costs the tests seconds, not minutes.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}&region=us-east-1&timeout=1s&min_upload_rate=1048576",
            self.server.bucket(),
            self.proxy.endpoint()
        )
    }

    /// The replica URL straight to the server (for restores and checks after the faults).
    pub fn direct_url(&self, prefix: &str) -> String {
        self.server.url(prefix)
    }

    /// Environment for a `lifeboat` process.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        self.server.env()
    }

    /// Switches the proxy's fault.
    pub fn set(&self, rule: Rule) {
        self.proxy.set(rule);
    }

    pub fn counts(&self) -> Counts {
        self.proxy.counts()
    }

    /// Keys under `prefix` ending with `suffix`, read straight from the server.
    pub fn objects(&self, prefix: &str, suffix: &str) -> Vec<String> {
        self.rt.block_on(async {
            let c = self.server.client(prefix).await;
            c.list("generations/")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .filter(|k| k.ends_with(suffix))
                .collect()
        })
    }
}

/// Runs `lifeboat verify` on `url` and asserts it finds no problem; returns its output.
pub fn verify_clean(url: &str, env: &[(&str, &str)]) -> String {
    let o = super::run_env(&["verify", url], env);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "verify found problems:\n{out}");
    assert!(
        !out.contains("PROBLEM") && !out.contains("fork"),
        "verify:\n{out}"
    );
    out
}

/// The highest `seq` in the `marks` table of a database (the writer's last acknowledged commit).
pub fn last_mark(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT COALESCE(MAX(seq), -1) FROM marks", [], |r| r.get(0))
        .unwrap()
}

/// A config file for one database and one replica with extra settings (TOML lines).
pub fn config(dir: &Path, db: &Path, url: &str, extra: &str) -> std::path::PathBuf {
    let p = dir.join("lifeboat.toml");
    std::fs::write(
        &p,
        format!(
            "[[databases]]\npath = {:?}\nreplicas = [{:?}]\n{extra}\n",
            db.to_str().unwrap(),
            url
        ),
    )
    .unwrap();
    p
}

/// Sleeps for the length of a fault window (the fault itself is the point: no condition to
/// poll for).
pub fn outage(d: Duration) {
    std::thread::sleep(d);
}

/// A writer committing the mixed workload at a steady pace (one transaction, then `pause`)
/// until halted: a live app whose WAL stays far below `max-wal-bytes` during an outage of a
/// few tens of seconds, so the tests of other faults do not turn into tests of that bound.
pub struct PacedWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl PacedWriter {
    pub fn start(path: &Path, pause: Duration) -> PacedWriter {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let path = path.to_path_buf();
        let handle = std::thread::spawn(move || {
            let c = super::app_conn(&path, 4096);
            super::create_schema(&c);
            let mut n = 0;
            while !s.load(Ordering::SeqCst) {
                super::mixed_txn(&c, n);
                n += 1;
                std::thread::sleep(pause);
            }
            n
        });
        PacedWriter {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops it; the number of transactions it committed.
    pub fn halt(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Pairs of segment keys whose transaction ranges overlap (two objects over the same txids).
pub fn overlapping(keys: &[String]) -> Vec<(String, String)> {
    let range = |k: &str| {
        let name = k.rsplit('/').next().unwrap();
        let mut parts = name.trim_end_matches(".lbseg").split('-');
        let first = u64::from_str_radix(parts.next().unwrap(), 16).unwrap();
        let last = u64::from_str_radix(parts.next().unwrap(), 16).unwrap();
        (first, last)
    };
    let mut out = Vec::new();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            let (ra, rb) = (range(a), range(b));
            if ra.0 <= rb.1 && rb.0 <= ra.1 {
                out.push((a.clone(), b.clone()));
            }
        }
    }
    out
}
