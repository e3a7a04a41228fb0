use super::*;

/// A new folder `up` in a temporary directory (kept while the first is), watched with this
/// settle time and no scheduled rescan.
fn watched(settle: Duration) -> (tempfile::TempDir, std::path::PathBuf, Folder) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("up");
    let f = Folder::open(&root, "up", settle, Duration::from_secs(3600), None).unwrap();
    (d, root, f)
}

fn settled(f: &mut Folder) -> State {
    assert!(
        f.capture_settled(Duration::from_secs(10)).unwrap(),
        "never settled"
    );
    f.state()
}

#[test]
fn captures_files_dirs_links_and_changes() {
    let (_d, root, mut f) = watched(Duration::from_millis(30));
    assert!(settled(&mut f).is_empty());
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/x.txt"), b"hello").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
    std::fs::create_dir(root.join("void")).unwrap();
    let s = settled(&mut f);
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        ["a", "a/b", "a/b/x.txt", "empty", "link", "void"]
    );
    assert!(matches!(&s["link"].kind, Kind::Symlink { target } if target == "/etc/passwd"));
    assert!(matches!(&s["empty"].kind, Kind::File { size: 0, .. }));
    assert!(matches!(s["void"].kind, Kind::Dir));
    // Rename a folder, delete a file, change a mode: seen without a full rescan.
    let v = f.version();
    std::fs::rename(root.join("a"), root.join("c")).unwrap();
    std::fs::remove_file(root.join("empty")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("c/b/x.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let s = settled(&mut f);
    assert!(f.version() > v);
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        ["c", "c/b", "c/b/x.txt", "link", "void"]
    );
    assert_eq!(s["c/b/x.txt"].mode, 0o600);
    // Idle: nothing changes.
    let v = f.version();
    let _ = settled(&mut f);
    assert_eq!(f.version(), v);
}

#[test]
fn a_file_being_written_is_not_taken_until_it_settles() {
    let (_d, root, mut f) = watched(Duration::from_millis(300));
    f.capture().unwrap();
    std::fs::write(root.join("big"), vec![1u8; 1000]).unwrap();
    // Fresh: not yet.
    assert!(!f.capture().unwrap());
    assert!(!f.state().contains_key("big"));
    // Grows: still not.
    std::fs::write(root.join("big"), vec![1u8; 2000]).unwrap();
    assert!(!f.capture().unwrap());
    let s = settled(&mut f);
    assert!(matches!(&s["big"].kind, Kind::File { size: 2000, .. }));
}

/// On an idle folder of 10,000 files in 100 folders, the exact capture of a flush finds nothing
/// changed (it hashes nothing again). Prints what it costs over an idle capture; for figures,
/// run `cargo test -p lifeboat-dirs --release --lib -- --nocapture exact_capture_cost`.
#[test]
fn exact_capture_cost_for_ten_thousand_files() {
    let (_d, root, mut f) = watched(Duration::from_millis(1));
    for i in 0..10_000u64 {
        let p = root.join(format!("{}/{i}.bin", i % 100));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, i.to_le_bytes()).unwrap();
    }
    assert_eq!(settled(&mut f).len(), 10_100);
    let time = |f: &mut Folder, exact: bool| {
        let mut v: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                let settled = if exact {
                    f.capture_exact()
                } else {
                    f.capture()
                };
                assert!(settled.unwrap());
                t.elapsed()
            })
            .collect();
        v.sort();
        v[v.len() / 2]
    };
    let version = f.version();
    let idle = time(&mut f, false);
    let exact = time(&mut f, true);
    assert_eq!(
        f.version(),
        version,
        "an idle folder's exact capture changed its state"
    );
    eprintln!("10,000 files, idle: capture {idle:?}, capture_exact {exact:?} (medians of 21)");
}
