//! `lifeboat drill`: a thin wrapper around `lifeboat_agent::drill` (the logic lives there).
//!
//! Exit status: 0 when every check passes, 2 when any fails (the problems are printed, and stored
//! in the report), 1 when the drill could not run at all.

use std::process::ExitCode;

use anyhow::Result;
use lifeboat_agent::drill::{self, DrillOptions, DrillReport, PointCheck};

use crate::args::DrillArgs;
use crate::{human, replica_url};

pub async fn drill(a: DrillArgs) -> Result<ExitCode> {
    let client = replica_url::open(&a.url).await?;
    let opts = DrillOptions {
        live: a.db.clone(),
        random_point: a.random_point,
        parallelism: a.parallelism,
        scratch_dir: a.scratch_dir.clone(),
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
    if let Some(rpo) = r.rpo_seconds {
        let behind = match r.live.as_ref().and_then(|l| l.unshipped_commits) {
            Some(k) => format!(", {k} transaction(s) behind the live database"),
            None if r.live.is_some() => ", distance to the live database unknown".into(),
            None => String::new(),
        };
        println!("  RPO       newest restorable transaction is {rpo:.3}s old{behind}");
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
    if let Some(k) = &r.report_key {
        println!("  report    stored as {k}");
    }
    for p in &r.problems {
        println!("PROBLEM: {p}");
    }
}
