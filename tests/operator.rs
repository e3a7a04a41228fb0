//! What an operator sees: plain logs off a terminal, each error once, decimal transaction ids,
//! configuration found without flags, errors that say what is restorable.

use std::path::Path;

use crate::support::*;

/// A folder replica of a database with `n` transactions of the mixed workload, replicated and
/// stopped. Returns the folder, the database and the replica URL.
pub fn replica_with(n: u64) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let mut agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    // "replicating" comes before the first snapshot: writes before it would land in txid 0.
    agent.wait_for_log("snapshot uploaded");
    for s in 0..n {
        mixed_txn(&c, s);
    }
    drop(c);
    let log = agent.log_text();
    agent.stop_ok();
    // The tests count on one generation holding every transaction.
    let o = run(&["generations", &url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v.as_array().map(Vec::len),
        Some(1),
        "one generation expected: {v:#}\nagent log:\n{log}{}",
        std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default()
    );
    (dir, db, url)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn marks(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM marks", [], |r| r.get(0))
        .unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn logs_carry_no_escape_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let o = run(&[
        "run",
        "--db",
        db.to_str().unwrap(),
        "--replica",
        &url,
        "--",
        "true",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("starting the app"), "the run logged: {err}");
    assert!(
        !err.contains('\x1b'),
        "escape codes in a redirected log: {err:?}"
    );
}

#[test]
fn an_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("empty").display());
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let out = dir.path().join("out.db");
    let o = run(&["restore", &url, "-o", out.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("nothing to restore").count(), 1, "{err}");
    assert!(err.starts_with("lifeboat: error: "), "{err}");
}

#[test]
fn txids_are_decimal_in_human_output_and_on_the_command_line() {
    let (dir, _db, url) = replica_with(30);
    // Decimal, the 16-hex-digit key form and 0x all name transaction 12.
    for (i, given) in ["12", "000000000000000c", "0xc"].iter().enumerate() {
        let out = dir.path().join(format!("t{i}.db"));
        let o = run(&[
            "restore",
            &url,
            "-o",
            out.to_str().unwrap(),
            "--txid",
            given,
        ]);
        assert!(o.status.success(), "--txid {given}: {}", stderr(&o));
        assert_eq!(marks(&out), 12, "--txid {given} restores transaction 12");
        assert!(stdout(&o).contains("txid 12 "), "{}", stdout(&o));
    }
    // A 16-digit value is the key form, hex, even without a letter: 0x50 = 80 > 30.
    let out = dir.path().join("hex.db");
    let o = run(&[
        "restore",
        &url,
        "-o",
        out.to_str().unwrap(),
        "--txid",
        "0000000000000050",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("ends at txid 30, before the target txid 80"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "restore",
        &url,
        "-o",
        out.to_str().unwrap(),
        "--txid",
        "4d2",
    ]);
    assert!(stderr(&o).contains("give it in decimal"), "{}", stderr(&o));
    // Tables show the newest transaction in decimal; --json keeps the key form.
    let o = run(&["generations", &url]);
    let line = stdout(&o).lines().nth(1).unwrap().to_string();
    assert!(
        line.split_whitespace().any(|w| w == "30"),
        "generations: {}",
        stdout(&o)
    );
    assert!(!line.contains("000000000000001e"), "{line}");
    let o = run(&["generations", &url, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["last_txid"], "000000000000001e");
}

#[test]
fn the_configuration_is_found_without_flags_and_restore_takes_a_database_path() {
    let (dir, db, url) = replica_with(30);
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = {:?}\nreplicas = [{url:?}]\n",
            db.display().to_string()
        ),
    )
    .unwrap();
    let env = [("LIFEBOAT_CONFIG", cfg.to_str().unwrap())];

    // `databases` lists the database, its replica and its newest restore point.
    let o = run_env(&["databases"], &env);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains(db.to_str().unwrap()) && out.contains(&url),
        "{out}"
    );
    assert!(out.contains(" 30 ") && out.contains(" ago)"), "{out}");
    let o = run_env(&["databases", "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["last_txid"], "000000000000001e", "{v:#}");

    // The disk is lost: `restore <db path>` finds its replica and writes to that path.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let o = run_env(&["restore", db.to_str().unwrap()], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(marks(&db), 30);

    // A path the configuration does not list is refused, naming what it lists.
    let other = dir.path().join("other.db");
    let o = run_env(&["restore", other.to_str().unwrap()], &env);
    assert!(
        stderr(&o).contains("is not a database of") && stderr(&o).contains(db.to_str().unwrap()),
        "{}",
        stderr(&o)
    );
    assert!(!other.exists());

    // `replicate` with no arguments replicates what the configuration lists.
    let c = app_conn(&db, 4096);
    let mut agent = Agent::start_env(&["replicate"], &dir.path().join("r.log"), &env);
    agent.wait_for_log("replicating");
    mixed_txn(&c, 30);
    drop(c);
    agent.stop_ok();
    let o = run_env(&["databases", "--json"], &env);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(v[0]["generation"], serde_json::Value::Null, "{v:#}");

    // A database named on the command line beats a configuration set for the whole host.
    let solo = dir.path().join("solo.db");
    let solo_url = format!("file://{}", dir.path().join("solo-replica").display());
    let args = [
        "run",
        "--db",
        solo.to_str().unwrap(),
        "--replica",
        &solo_url,
        "--",
        "true",
    ];
    let o = run_env(&args, &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("solo-replica/generations").is_dir());

    // Nothing named and no configuration: the error says where it looked.
    let missing = dir.path().join("missing.toml");
    let o = run_env(
        &["replicate"],
        &[("LIFEBOAT_CONFIG", missing.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(missing.to_str().unwrap()) && stderr(&o).contains("LIFEBOAT_CONFIG"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_time_before_the_replica_names_its_earliest_and_newest_restore_points() {
    let (dir, _db, url) = replica_with(3);
    let out = dir.path().join("out.db");
    let o = run(&[
        "restore",
        &url,
        "-o",
        out.to_str().unwrap(),
        "--timestamp",
        "2001-01-01T00:00:00Z",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no state at or before 2001-01-01T00:00:00")
            && err.contains("its earliest restore point is 20")
            && err.contains("and its newest 20"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn retention_defaults_to_30_days_and_lifeboat_retention_sets_it_for_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("file://{}", dir.path().join("replica").display());
    let args = [
        "run",
        "--db",
        db.to_str().unwrap(),
        "--replica",
        &url,
        "--",
        "true",
    ];
    let line = |env: &[(&str, &str)]| {
        let o = run_env(&args, env);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        err.lines()
            .find(|l| l.contains("replicating"))
            .unwrap_or_else(|| panic!("no 'replicating' line: {err}"))
            .to_string()
    };
    assert!(line(&[]).contains("retention=30days"), "{}", line(&[]));
    let l = line(&[("LIFEBOAT_RETENTION", "7d")]);
    assert!(l.contains("retention=7days"), "{l}");
    let l = line(&[("LIFEBOAT_RETENTION", "off")]);
    assert!(l.contains("retention=off"), "{l}");
    let o = run_env(&args, &[("LIFEBOAT_RETENTION", "forever")]);
    assert_eq!(o.status.code(), Some(2), "clap refuses a bad value");
    assert!(stderr(&o).contains("or off"), "{}", stderr(&o));
}

#[test]
fn a_mistyped_prefix_next_to_other_replicas_is_a_loud_warning() {
    let (dir, _db, url) = replica_with(3);
    let typo = format!("{}-typo", url);
    let o = run(&["generations", &typo]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("WARNING")
            && err.contains(&format!("{typo} holds no backup"))
            && err.contains(&url),
        "{err}"
    );
    // The real replica draws no warning.
    let o = run(&["generations", &url]);
    assert!(!stderr(&o).contains("WARNING"), "{}", stderr(&o));

    // `run` on the mistyped prefix warns at boot (and, by design, still starts).
    let fresh = dir.path().join("fresh.db");
    let o = run(&[
        "run",
        "--db",
        fresh.to_str().unwrap(),
        "--replica",
        &typo,
        "--",
        "true",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("WARNING") && err.contains(&url), "{err}");
}

/// Runs `lifeboat ARGS` on a pseudo-terminal (util-linux `script`), returning what the terminal
/// showed; `None` (the test then says it skips) where `script` is missing.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> Option<String> {
    let mut cmd = format!("'{}'", bin());
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    let o = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output();
    match o {
        Ok(o) => Some(String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => {
            eprintln!("SKIPPED: no `script` to make a pseudo-terminal ({e})");
            None
        }
    }
}

#[test]
fn progress_bars_and_colours_on_a_terminal_only_and_no_colour_with_no_color() {
    let (dir, _db, url) = replica_with(30);
    let out = dir.path().join("out.db");
    let restore = ["restore", &url, "-o", out.to_str().unwrap()];
    let Some(tty) = on_a_terminal(&restore, &[]) else {
        return;
    };
    assert!(tty.contains("restoring ["), "{tty:?}");
    assert!(
        tty.contains("integrity_check ok; read"),
        "the one-line summary: {tty:?}"
    );
    assert!(
        tty.contains("\x1b[32m INFO"),
        "colours on a terminal: {tty:?}"
    );
    std::fs::remove_file(&out).unwrap();
    let piped = run(&restore);
    assert!(piped.status.success());
    assert!(
        !stderr(&piped).contains("restoring ["),
        "{}",
        stderr(&piped)
    );

    let tty = on_a_terminal(&["verify", &url], &[]).unwrap();
    assert!(tty.contains("verifying ["), "{tty:?}");
    assert!(tty.contains("no problems"), "{tty:?}");
    let tty = on_a_terminal(&["drill", &url, "--no-store"], &[]).unwrap();
    assert!(tty.contains("drill: restoring ["), "{tty:?}");
    assert!(tty.contains("drill passed: RTO"), "{tty:?}");

    // NO_COLOR: a terminal, and still no colour.
    std::fs::remove_file(&out).unwrap();
    let tty = on_a_terminal(&restore, &[("NO_COLOR", "1")]).unwrap();
    assert!(tty.contains(" INFO "), "{tty:?}");
    assert!(
        !tty.contains("\x1b[32m") && !tty.contains("\x1b[2m"),
        "{tty:?}"
    );
}

#[test]
fn the_first_snapshot_of_a_large_database_shows_progress_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let c = app_conn(&db, 1024);
    c.execute_batch(
        "CREATE TABLE b(x);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
         INSERT INTO b SELECT randomblob(900) FROM n;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    drop(c);
    let url = format!("file://{}", dir.path().join("replica").display());
    let args = [
        "run",
        "--db",
        db.to_str().unwrap(),
        "--replica",
        &url,
        "--",
        "true",
    ];
    let Some(tty) = on_a_terminal(&args, &[("NO_COLOR", "1")]) else {
        return;
    };
    assert!(tty.contains("snapshot ["), "{tty:?}");
    assert!(tty.contains("first sync complete"), "{tty:?}");
    // Redirected, no bar.
    std::fs::remove_dir_all(dir.path().join("replica")).unwrap();
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("snapshot ["), "{}", stderr(&o));
}
