//! A small disk for the disk-fault tests: a tmpfs mounted at a fresh folder (root only), that a
//! test fills up, frees, and turns read-only and back; or, where this process may not mount, a
//! plain folder whose directories a test can make read-only with their modes.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The name of the file that takes a disk's free space.
const FILLER: &str = "filler";

/// A folder on a small disk of its own, unmounted when dropped.
pub struct SmallDisk {
    dir: tempfile::TempDir,
    /// Whether `dir` is a tmpfs mounted by this test (else a plain folder).
    mounted: bool,
}

fn mount(args: &[&str]) -> Result<(), String> {
    let o = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("mount {args:?}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl SmallDisk {
    /// A tmpfs of `bytes` at a new folder, or why this process may not mount one.
    pub fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        mount(&["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", path])?;
        Ok(SmallDisk { dir, mounted: true })
    }

    /// A tmpfs where this process may mount one, else a plain folder (which can be made
    /// read-only by its modes, not filled).
    pub fn mount_or_folder(bytes: u64) -> SmallDisk {
        SmallDisk::mount(bytes).unwrap_or_else(|why| {
            eprintln!("note: no tmpfs ({why}); using a plain folder and directory modes");
            SmallDisk {
                dir: tempfile::tempdir().unwrap(),
                mounted: false,
            }
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// Takes all the free space (a file that grows until the disk says it is full); returns the
    /// bytes added. Calling it again takes whatever was freed since.
    pub fn fill(&self) -> u64 {
        assert!(self.mounted, "only a mounted disk can be filled");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(FILLER))
            .unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        let mut added = 0;
        for size in [64 << 10, 4096, 512, 1] {
            loop {
                match f.write(&chunk[..size]) {
                    Ok(n) => added += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                    Err(e) => panic!("filling {}: {e}", self.path().display()),
                }
            }
        }
        added
    }

    /// Gives the space taken by [`fill`](Self::fill) back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(self.path().join(FILLER));
    }

    /// Makes everything under the disk read-only, or writable again: a read-only remount of the
    /// tmpfs (which root cannot write through either), or, on a plain folder, mode 0555 on
    /// every directory under it (which root ignores: a plain folder is for other users only).
    pub fn set_read_only(&self, ro: bool) {
        if self.mounted {
            let opt = if ro { "remount,ro" } else { "remount,rw" };
            // A remount read-only is refused (EBUSY) while a file on it is open for writing: an
            // upload in flight; it ends within a moment.
            let mut last = String::new();
            let ok = (0..500).any(
                |_| match mount(&["-o", opt, self.path().to_str().unwrap()]) {
                    Ok(()) => true,
                    Err(e) => {
                        last = e;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        false
                    }
                },
            );
            assert!(ok, "{last}");
        } else {
            assert!(
                !is_root(),
                "root ignores directory modes: mount a tmpfs instead"
            );
            set_dir_modes(self.path(), if ro { 0o555 } else { 0o755 });
        }
    }
}

/// Whether this process runs as root (it owns what it creates).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::metadata(dir.path()).unwrap().uid() == 0
}

/// Sets the mode of `dir` and every directory under it.
fn set_dir_modes(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        // Writable first when opening up, so the walk can go on either way.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .args(["-l", self.path().to_str().unwrap()])
                .status();
        } else {
            set_dir_modes(self.path(), 0o755);
        }
    }
}
