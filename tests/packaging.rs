//! The release tarball and the install script (scripts/release.sh, scripts/install.sh), on the
//! binary under test (CI also runs them on a real release build).

use std::process::Command;

use crate::support::bin;

fn script(name: &str, args: &[&str]) -> std::process::Output {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/");
    Command::new("bash")
        .arg(format!("{path}{name}"))
        .args(args)
        .output()
        .expect("run bash")
}

#[test]
fn a_release_tarball_installs_after_its_checksum_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let dist = dir.path().join("dist");
    let o = script(
        "release.sh",
        &["--binary", bin(), "--out", dist.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tarball = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(tarball.ends_with(".tar.gz"), "{tarball}");
    let sums = std::fs::read_to_string(format!("{tarball}.sha256")).unwrap();
    assert_eq!(sums.split_whitespace().count(), 2, "{sums}");

    let prefix = dir.path().join("prefix");
    let o = script(
        "install.sh",
        &[&tarball, "--prefix", prefix.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let installed = prefix.join("bin/lifeboat");
    let v = Command::new(&installed).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("lifeboat "));
    // Stripped: smaller than the debug binary it came from.
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&installed) < size(std::path::Path::new(bin())));

    // A tarball that does not match its checksum installs nothing.
    std::fs::remove_file(&installed).unwrap();
    let mut bytes = std::fs::read(&tarball).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 1;
    std::fs::write(&tarball, bytes).unwrap();
    let o = script(
        "install.sh",
        &[&tarball, "--prefix", prefix.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SHA-256 mismatch"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!installed.exists());
}
