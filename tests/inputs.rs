//! Settings and inputs that must be refused (or named) at once, by the real binary: each test
//! gives one mistake people make and checks for one line that names the value and says what to
//! do, an exit within seconds (never a retry loop), and nothing written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

fn file_url(p: &Path) -> String {
    format!("file://{}", p.display())
}

/// Runs lifeboat, which must exit non-zero within 20 s; returns its stderr. A process still
/// running then was not refused (it would retry or replicate forever): it is killed and the test
/// fails.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut status = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status.is_none() && std::time::Instant::now() < deadline {
        status = child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("lifeboat {args:?} was not refused within 20 s: {text}");
    };
    assert!(!status.success(), "lifeboat {args:?} succeeded: {text}");
    let last = text.lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("lifeboat: error: "),
        "{args:?}: the error is the last line: {text}"
    );
    last
}

/// A database in WAL mode with one row.
fn wal_db(path: &Path) {
    let c = app_conn(path, 4096);
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
}

/// A configuration file for the one database at `db` with `rest` added to its table.
fn config(dir: &Path, db: &Path, rest: &str) -> String {
    let cfg = dir.join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{}\"\nreplicas = [\"{}\"]\n{rest}\n",
            db.display(),
            file_url(&dir.join("replica"))
        ),
    )
    .unwrap();
    cfg.to_str().unwrap().to_string()
}

#[test]
fn a_zero_poll_interval_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    wal_db(&db);
    let cfg = config(dir.path(), &db, "poll-interval = \"0s\"");
    let e = refused(&["replicate", "-c", &cfg]);
    assert!(
        e.contains("poll-interval = \"0s\"") && e.contains("10ms or more"),
        "{e}"
    );
    assert!(!dir.path().join("replica").exists(), "nothing was shipped");
}

#[test]
fn a_zero_or_negative_puts_per_second_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    wal_db(&db);
    let url = file_url(&dir.path().join("replica"));
    for v in ["0", "-1"] {
        let e = refused(&[
            "replicate",
            &format!("--puts-per-second={v}"),
            db.to_str().unwrap(),
            &url,
        ]);
        assert!(
            e.contains(&format!("--puts-per-second {v}")) && e.contains("above 0"),
            "{e}"
        );
    }
    let cfg = config(dir.path(), &db, "puts-per-second = 0.0");
    let e = refused(&["replicate", "-c", &cfg]);
    assert!(e.contains("puts-per-second = 0"), "{e}");
    assert!(!dir.path().join("replica").exists(), "nothing was shipped");
}

/// Regression: a folder given as the database was reported as "does not exist".
#[test]
fn a_folder_given_as_the_database_is_named_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("data");
    std::fs::create_dir(&folder).unwrap();
    let url = file_url(&dir.path().join("replica"));
    let e = refused(&["replicate", folder.to_str().unwrap(), &url]);
    assert!(
        e.contains("is a folder") && e.contains("--dir-of-databases"),
        "{e}"
    );
    assert!(!e.contains("does not exist"), "{e}");
}

/// Regression: the second entry failed with "another lifeboat is already replicating" and the
/// agent's own pid.
#[test]
fn a_database_listed_twice_is_refused_naming_both_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    wal_db(&db);
    let cfg = dir.path().join("lifeboat.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[databases]]\npath = \"{0}/app.db\"\nreplicas = [\"file://{0}/a\"]\n\
             [[databases]]\npath = \"{0}/./app.db\"\nreplicas = [\"file://{0}/b\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let e = refused(&["replicate", "-c", cfg.to_str().unwrap()]);
    assert!(e.contains("listed twice") && e.contains("/./app.db"), "{e}");
    assert!(!e.contains("another lifeboat"), "{e}");
    assert!(!dir.path().join("a").exists() && !dir.path().join("b").exists());
}

/// Regression: a rollback-journal database was switched to WAL mode with a log line only; an
/// empty file became an empty WAL database. Both now need --switch-to-wal, and are left as
/// they were without it.
#[test]
fn a_rollback_or_empty_database_is_switched_to_wal_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let url = file_url(&dir.path().join("replica"));
    let rollback = dir.path().join("rollback.db");
    rusqlite::Connection::open(&rollback)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let header = |p: &Path| std::fs::read(p).unwrap().get(18..20).map(<[u8]>::to_vec);
    let e = refused(&["replicate", rollback.to_str().unwrap(), &url]);
    assert!(
        e.contains("rollback-journal") && e.contains("--switch-to-wal"),
        "{e}"
    );
    assert_eq!(header(&rollback), Some(vec![1, 1]), "left in rollback mode");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let e = refused(&["replicate", empty.to_str().unwrap(), &url]);
    assert!(
        e.contains("is empty") && e.contains("--switch-to-wal"),
        "{e}"
    );
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "left empty");
    assert!(!dir.path().join("replica").exists(), "nothing was shipped");

    let mut agent = Agent::start(
        &[
            "replicate",
            "--switch-to-wal",
            rollback.to_str().unwrap(),
            &url,
        ],
        &dir.path().join("agent.log"),
    );
    agent.wait_for_log("new generation");
    agent.stop_ok();
    assert_eq!(header(&rollback), Some(vec![2, 2]), "switched when asked");
    let out = dir.path().join("restored.db");
    restore_and_compare(&url, &out, &rollback);
}

/// Regression: `file://relative/missing` was read as a relative folder, and a restore from it
/// retried "object … not found"; `file://mnt/x` silently meant `./mnt/x`.
#[test]
fn a_file_url_with_a_host_part_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    wal_db(&db);
    for (url, says) in [
        ("file://relative/missing", "file:///relative/missing"),
        ("file://mnt/x", "file:///mnt/x"),
    ] {
        let e = refused(&[
            "restore",
            url,
            "-o",
            dir.path().join("o.db").to_str().unwrap(),
        ]);
        assert!(e.contains("names host") && e.contains(says), "{e}");
        let e = refused(&["replicate", db.to_str().unwrap(), url]);
        assert!(e.contains("names host") && e.contains(says), "{e}");
    }
    assert!(!dir.path().join("relative").exists() && !dir.path().join("mnt").exists());
}

/// Regression: an endpoint whose query the SDK cannot parse was reported on the first request
/// as "could not reach the server", with the query's token in the message; `user:pass@` was
/// logged whole at debug level. Both are now configuration errors that never show the secret,
/// even at trace level.
#[test]
fn an_endpoint_with_secrets_or_that_does_not_parse_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.db");
    for (url, says) in [
        (
            "s3://b/p?endpoint=http://127.0.0.1:9/%3Ftoken%3Ds3cr3t&region=us-east-1",
            "query",
        ),
        (
            "s3://b/p?endpoint=http://key:s3cr3t@127.0.0.1:9&region=us-east-1",
            "user information",
        ),
        (
            "s3://b/p?endpoint=http://127.0.0.1:port&region=us-east-1",
            "invalid port",
        ),
    ] {
        let o = run_env(
            &[
                "--log-level",
                "trace",
                "restore",
                url,
                "-o",
                out.to_str().unwrap(),
            ],
            &[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.contains("invalid S3 replica configuration") && err.contains(says),
            "{url}: {err}"
        );
        assert!(!err.contains("reach the server"), "{url}: {err}");
        assert!(!err.contains("s3cr3t"), "{url}: the secret shows: {err}");
    }
}

/// Regression: restored databases were created 0600, so an app running as another user or
/// group lost access to the database it had.
#[test]
fn a_restored_database_keeps_the_mode_of_the_file_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    wal_db(&db);
    let url = file_url(&dir.path().join("replica"));
    let mut agent = Agent::start(
        &["replicate", db.to_str().unwrap(), &url],
        &dir.path().join("agent.log"),
    );
    agent.wait_for_log("new generation");
    agent.stop_ok();
    let out = dir.path().join("restored.db");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", &url, "-o", out.to_str().unwrap()];
        args.extend(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    restore(&[]);
    let new = mode(&out);
    assert_eq!(new & !0o644, 0, "a new file: at most 0644, got {new:o}");
    assert_eq!(new & 0o600, 0o600, "the owner reads and writes it: {new:o}");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o660)).unwrap();
    restore(&["--force"]);
    assert_eq!(mode(&out), 0o660, "the replaced file's mode");
    restore(&["--force", "--mode", "0640"]);
    assert_eq!(mode(&out), 0o640, "--mode");
    let o = run(&[
        "restore",
        &url,
        "-o",
        out.to_str().unwrap(),
        "--mode",
        "999",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("\"999\" is not a file mode"),
        "{e}"
    );
}
