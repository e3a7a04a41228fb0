//! One agent per database, however it is named: through a symlink to the file or to its folder,
//! and across `replicate` and `run`.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// Starts a second agent and asserts it refuses, naming the database.
fn assert_refused(args: &[&str], log: &Path) {
    let mut second = Agent::start(args, log);
    let status = second.wait(Duration::from_secs(30));
    let msg = second.log_text();
    assert!(!status.success(), "a second agent must refuse: {msg}");
    assert!(
        msg.contains("already replicating") && msg.contains("app.db"),
        "the refusal must say why and name the database: {msg}"
    );
}

#[test]
fn a_symlinked_path_is_the_same_database_for_the_one_agent_rule_and_replicates_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = data.join("app.db");
    let c = app_conn(&db, 4096);
    create_schema(&c);
    let file_link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&db, &file_link).unwrap();
    let dir_link = dir.path().join("linked-data");
    std::os::unix::fs::symlink(&data, &dir_link).unwrap();

    // The agent runs through the file's symlink while the app writes through the real path.
    let url = format!("file://{}", dir.path().join("replica").display());
    let agent = Agent::replicate(&file_link, &url, &dir.path().join("a.log"));
    for s in 0..40 {
        mixed_txn(&c, s);
    }
    let other = format!("file://{}", dir.path().join("other").display());
    for (i, path) in [db.clone(), dir_link.join("app.db")].iter().enumerate() {
        assert_refused(
            &["replicate", path.to_str().unwrap(), &other],
            &dir.path().join(format!("second-{i}.log")),
        );
    }
    for s in 40..80 {
        mixed_txn(&c, s);
    }
    agent.stop_ok();
    // What it shipped is the real database's WAL, not an empty one beside the link.
    restore_and_compare(&url, &dir.path().join("out.db"), &db);
}

#[test]
fn run_and_replicate_on_one_database_refuse_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create_schema(&app_conn(&db, 4096));
    let url = format!("file://{}", dir.path().join("replica").display());
    let other = format!("file://{}", dir.path().join("other").display());

    // `replicate` first: `run` refuses and does not start the app.
    let agent = Agent::replicate(&db, &url, &dir.path().join("a.log"));
    let started = dir.path().join("started");
    let script = format!("touch {}", started.display());
    assert_refused(
        &[
            "run",
            "--db",
            db.to_str().unwrap(),
            "--replica",
            &other,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &dir.path().join("run.log"),
    );
    assert!(!started.exists(), "the app must not start");
    agent.stop_ok();

    // `run` first: `replicate` refuses.
    let ready = dir.path().join("ready");
    let stop = dir.path().join("stop");
    let script = format!(
        "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
        ready.display(),
        stop.display()
    );
    let mut runner = Agent::start(
        &[
            "run",
            "--db",
            db.to_str().unwrap(),
            "--replica",
            &url,
            "--",
            "sh",
            "-c",
            &script,
        ],
        &dir.path().join("run2.log"),
    );
    wait_until("the app to start", Duration::from_secs(60), || {
        ready.exists()
    });
    assert_refused(
        &["replicate", db.to_str().unwrap(), &other],
        &dir.path().join("replicate2.log"),
    );
    std::fs::write(&stop, b"").unwrap();
    assert!(runner.wait(Duration::from_secs(60)).success());
}
