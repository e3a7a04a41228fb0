//! What an operator sees: plain logs off a terminal, each error once, decimal transaction ids,
//! configuration found without flags, errors that say what is restorable.

use crate::support::*;

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
