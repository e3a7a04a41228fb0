//! The fault proxy as a process, for scripts (`scripts/soak.py`): relays 127.0.0.1 to an
//! upstream S3 server and takes its rule from standard input, one line at a time.
//!
//! ```text
//! cargo run -p lifeboat-faultproxy --example faultproxy -- 127.0.0.1:9000
//! listening http://127.0.0.1:41234        <- printed first
//! error 503 share=0.5 methods=PUT         <- a rule: FAULT [ARG] [share=S] [methods=M,N]
//! ok
//! counts                                  <- prints `counts connections=.. requests=.. faulted=..`
//! pass
//! ```
//!
//! Faults: `pass`, `stall`, `blackhole`, `refuse`, `reset-before-body`, `reset-after-body`,
//! `lose-response`, `truncate-body`, `error STATUS`, `delay SECONDS`, `late-forward SECONDS`.
//! It exits when standard input closes.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::Duration;

use lifeboat_faultproxy::{Fault, FaultProxy, Rule};

fn seconds(arg: Option<&str>) -> Result<Duration, String> {
    let s = arg.ok_or("needs a number of seconds")?;
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("not a number of seconds: {s}"))
}

/// Parses `FAULT [ARG] [share=S] [methods=M,N]`.
fn parse(line: &str) -> Result<Rule, String> {
    let mut words = line.split_whitespace();
    let name = words.next().ok_or("empty line")?;
    let mut rest: Vec<&str> = words.collect();
    let options: Vec<&str> = rest.iter().copied().filter(|w| w.contains('=')).collect();
    rest.retain(|w| !w.contains('='));
    let arg = rest.first().copied();
    let fault = match name {
        "pass" => Fault::Pass,
        "stall" => Fault::Stall,
        "blackhole" => Fault::Blackhole,
        "refuse" => Fault::Refuse,
        "reset-before-body" => Fault::ResetBeforeBody,
        "reset-after-body" => Fault::ResetAfterBody,
        "lose-response" => Fault::LoseResponse,
        "truncate-body" => Fault::TruncateBody,
        "error" => Fault::ServerError(
            arg.and_then(|a| a.parse().ok())
                .ok_or("error needs an HTTP status")?,
        ),
        "delay" => Fault::Delay(seconds(arg)?),
        "late-forward" => Fault::LateForward(seconds(arg)?),
        other => return Err(format!("unknown fault: {other}")),
    };
    let mut rule = Rule::all(fault);
    for option in options {
        match option.split_once('=') {
            Some(("share", v)) => {
                let share: f64 = v.parse().map_err(|_| format!("bad share: {v}"))?;
                rule = rule.share(share);
            }
            Some(("methods", v)) => {
                rule.methods = v.split(',').map(str::to_string).collect();
            }
            _ => return Err(format!("unknown option: {option}")),
        }
    }
    Ok(rule)
}

fn main() {
    let upstream: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: faultproxy UPSTREAM_ADDR (e.g. 127.0.0.1:9000)");
            std::process::exit(2);
        });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let proxy = rt.block_on(FaultProxy::start(upstream));
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening {}", proxy.endpoint());
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        let answer = if line.is_empty() {
            continue;
        } else if line == "counts" {
            let c = proxy.counts();
            format!(
                "counts connections={} requests={} faulted={}",
                c.connections,
                c.total(),
                c.faulted
            )
        } else {
            match parse(line) {
                Ok(rule) => {
                    proxy.set(rule);
                    "ok".to_string()
                }
                Err(e) => format!("error: {e}"),
            }
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
    drop(proxy);
    rt.shutdown_timeout(Duration::from_secs(1));
}
