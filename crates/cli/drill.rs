//! `lifeboat drill`: a thin wrapper around `lifeboat_agent::drill` (the logic lives there).
//!
//! Exit status: 0 when every check passes, 2 when any fails (the problems are printed, and stored
//! in the report), 1 when the drill could not run at all.

use std::process::ExitCode;

use anyhow::{Context, Result};
use lifeboat_agent::drill::{self, DrillOptions, DrillReport, PointCheck};
use lifeboat_storage::keys;

use crate::args::{DrillArgs, DrillsArgs};
use crate::{human, progress, replica_url};

pub async fn drill(a: DrillArgs) -> Result<ExitCode> {
    let client = replica_url::open(&a.url).await?;
    let opts = DrillOptions {
        live: a.db.clone(),
        random_point: a.random_point,
        parallelism: a.parallelism,
        scratch_dir: a.scratch_dir.clone(),
        progress: progress::bar("drill: restoring", progress::Unit::Bytes),
    };
    let mut report = drill::drill(client.as_ref(), &opts).await?;
    if !a.no_store {
        // A failing drill is stored too: the audit trail is of every drill, not only good ones.
        match drill::store(client.as_ref(), &report).await {
            Ok(key) => report.report_key = Some(key),
            Err(e) => report.problem(format!("cannot store the drill report: {}", e.chain())),
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report);
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn point_line(p: &PointCheck) -> String {
    format!(
        "integrity_check {}, foreign_key_check {}, checksum {} recorded, {} computed ({})",
        p.integrity_check,
        p.foreign_key_check,
        p.checksum.recorded,
        p.checksum.computed,
        if p.checksum.ok { "equal" } else { "DIFFERENT" }
    )
}

fn print_human(r: &DrillReport) {
    println!(
        "drill of {} started {}: {}",
        r.replica,
        r.started_at,
        if r.ok { "OK" } else { "FAILED" }
    );
    if let (Some(g), Some(t)) = (&r.generation, &r.txid) {
        println!(
            "  restored  generation {g} txid {} ({}) in {} (RTO)",
            human::txid_key(t),
            r.txid_time.as_deref().unwrap_or("-"),
            human::seconds(r.rto_seconds.unwrap_or_default())
        );
    }
    if r.generation.is_some() {
        println!("  RPO       {}", human::rpo(r));
    }
    if let (Some(i), Some(f), Some(c)) = (&r.integrity_check, &r.foreign_key_check, &r.checksum) {
        println!(
            "  checks    integrity_check {i}, foreign_key_check {f}, checksum {} recorded, {} \
             computed ({})",
            c.recorded,
            c.computed,
            if c.ok { "equal" } else { "DIFFERENT" }
        );
    }
    if let Some(p) = &r.random_point {
        println!(
            "  point     txid {} ({}) restored in {}: {}",
            human::txid_key(&p.txid),
            p.time,
            human::seconds(p.restore_seconds),
            point_line(p)
        );
    }
    if let Some(l) = &r.live {
        let verdict = serde_json::to_value(l.verdict)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("  live      {verdict}: {} {}", l.path, l.detail);
    }
    for p in &r.problems {
        println!("PROBLEM: {p}");
    }
    println!("{}", human::drill_summary(r));
}

/// `lifeboat drills`: the reports stored in the replica, newest last.
pub async fn list(a: DrillsArgs) -> Result<ExitCode> {
    let client = replica_url::open(&a.url).await?;
    let mut keys: Vec<String> = client
        .list(keys::DRILLS)
        .await
        .with_context(|| format!("cannot list {}", client.describe()))?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort();
    let skip = keys.len().saturating_sub(a.last);
    let mut reports = Vec::new();
    for k in &keys[skip..] {
        let body = client.get(k).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("{k} in {} is not a drill report", client.describe()))?;
        reports.push(v);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    if reports.is_empty() {
        println!("{} holds no drill reports", client.describe());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24}  {:<6}  {:>10}  {:>9}  {:>10}  report",
        "started", "result", "txid", "RTO", "at risk"
    );
    for (k, v) in keys[skip..].iter().zip(&reports) {
        let text = |f: &str| v[f].as_str().unwrap_or("-").to_string();
        let secs = |f: &str| v[f].as_f64().map_or("-".into(), human::seconds);
        let at_risk = v["at_risk_commits"]
            .as_u64()
            .map_or("-".into(), |n| n.to_string());
        println!(
            "{:<24}  {:<6}  {:>10}  {:>9}  {:>10}  {k}",
            text("started_at"),
            if v["ok"] == true { "ok" } else { "FAILED" },
            human::txid_key(&text("txid")),
            secs("rto_seconds"),
            at_risk
        );
    }
    if skip > 0 {
        println!("({skip} older report(s) not shown; --last N shows more)");
    }
    Ok(ExitCode::SUCCESS)
}
