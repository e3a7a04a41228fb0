//! Unit tests of the local replica client.

use super::*;

/// The keys `c` lists under `prefix`.
async fn keys(c: &LocalClient, prefix: &str) -> Vec<String> {
    c.list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

#[tokio::test]
async fn passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalClient::new(dir.path().join("replica"));
    crate::conformance::check(&c).await;
}

#[tokio::test]
async fn leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalClient::new(dir.path());
    c.put("a/b", Bytes::from_static(b"x")).await.unwrap();
    let _ = c.put("a/b", Bytes::from_static(b"y")).await;
    let names: Vec<_> = fs::read_dir(dir.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["b"]);
}

#[tokio::test]
async fn a_listing_removes_temporary_files_left_by_a_killed_writer() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalClient::new(dir.path());
    c.put("a/b", Bytes::from_static(b"x")).await.unwrap();
    let (old, fresh) = (
        dir.path().join("a/.tmp-b-old"),
        dir.path().join("a/.tmp-c-new"),
    );
    fs::write(&old, b"partial").unwrap();
    fs::write(&fresh, b"partial").unwrap();
    let long_ago = std::time::SystemTime::now() - STALE_TMP - Duration::from_secs(60);
    File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    assert_eq!(keys(&c, "a/").await, ["a/b"]);
    assert!(!old.exists(), "a stale temporary file is removed");
    assert!(fresh.exists(), "one that may still be written is not");
    assert_eq!(c.abort_stale_uploads(STALE_TMP).await.unwrap(), 0);
    assert!(fresh.exists());
    assert_eq!(c.abort_stale_uploads(Duration::ZERO).await.unwrap(), 1);
    assert!(
        !fresh.exists(),
        "an explicit clean-up with no age limit takes it"
    );
    assert_eq!(c.list("").await.unwrap().len(), 1, "objects are untouched");
}

#[test]
fn file_urls_name_a_folder_explicitly() {
    for (url, path) in [
        ("file:///a/b", "/a/b"),
        ("file://localhost/a/b", "/a/b"),
        ("file:///my%20backups", "/my backups"),
        ("file:rel/x", "rel/x"),
        ("file:./rel", "./rel"),
    ] {
        assert_eq!(file_url_path(url).unwrap(), PathBuf::from(path), "{url}");
    }
    for (url, says) in [
        ("file://mnt/x", "file:///mnt/x"),
        ("file://relative/missing", "names host \"relative\""),
        ("file://", "names no folder"),
        ("file:///", "names no folder"),
        ("file:///a?s3cr3t", "query"),
        ("file:///a%zz", "bad %-escape"),
        ("s3://b", "not a file: URL"),
        ("file://u:s3cr3t@h/x", "user information"),
    ] {
        let e = file_url_path(url).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{url}: {e}");
        assert!(matches!(e, Error::Config { .. }), "{url}: {e:?}");
        assert!(e.to_string().contains(says), "{url}: {e}");
    }
    assert_eq!(
        LocalClient::from_url("file:rel").unwrap().describe(),
        "file:rel"
    );
    assert_eq!(
        LocalClient::from_url("file:///abs").unwrap().describe(),
        "file:///abs"
    );
}

#[tokio::test]
async fn conditional_versions_survive_a_new_client_and_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalClient::new(dir.path());
    let v1 = a.put_if_absent("lease", "x".into()).await.unwrap();
    a.delete_if_match("lease", &v1).await.unwrap();
    // Another process (a fresh client) writes the same bytes again: a new version.
    let b = LocalClient::new(dir.path());
    let v2 = b.put_if_absent("lease", "x".into()).await.unwrap();
    assert_ne!(v1, v2, "the counter lives on disk, not in the client");
    assert!(matches!(
        a.put_if_match("lease", "y".into(), &v1).await,
        Err(Error::Precondition { .. })
    ));
    assert_eq!(keys(&a, "").await, ["lease"], "lock files are not objects");
}

#[test]
fn a_lock_held_elsewhere_makes_a_writer_wait() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lease");
    assert!(matches!(
        conditional::put_if_absent(&path, b"a").unwrap(),
        Found::Done(_)
    ));
    // Hold the lock as another process would (a separate open file description).
    let held = nix::fcntl::Flock::lock(
        File::open(dir.path().join(".lock-lease")).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    let writer = std::thread::spawn(move || {
        let r = conditional::put_if_absent(&p, b"b");
        tx.send(()).unwrap();
        r
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "the writer must wait for the lock"
    );
    drop(held);
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the writer goes on once the lock is free");
    assert!(matches!(
        writer.join().unwrap().unwrap(),
        Found::Precondition
    ));
}

#[tokio::test]
async fn rejects_escaping_keys() {
    let dir = tempfile::tempdir().unwrap();
    let c = LocalClient::new(dir.path());
    assert!(c.put("../x", Bytes::new()).await.is_err());
    assert!(c.put("a//b", Bytes::new()).await.is_err());
}
