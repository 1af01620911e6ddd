//! Loop devices: attach through `losetup`, find by backing file through sysfs
//! (no command needed, so lookups are cheap and survive restarts).

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::path::{Path, PathBuf};

/// Attaches `file` to a free loop device and returns its path. Direct I/O
/// avoids double caching in the page cache.
pub async fn attach(
    runner: &dyn CommandRunner,
    file: &Path,
    direct_io: bool,
) -> Result<PathBuf, ExecError> {
    let mut cmd = Cmd::new("losetup").args(["--find", "--show"]);
    if direct_io {
        cmd = cmd.arg("--direct-io=on");
    }
    let out = runner.run_ok(&cmd.arg(file)).await?;
    Ok(PathBuf::from(out.stdout_str().trim()))
}

/// Waits until no loop device is backed by `file` any more (a detached but
/// busy device goes when its last user closes it), at most `timeout`.
/// Returns whether it went.
pub async fn wait_released(sysfs: &Path, file: &Path, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if find_by_backing_file(sysfs, file).is_empty() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            tracing::warn!(file = %file.display(), "a loop device on it is still busy after detach");
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Makes the kernel re-read the backing file's size (after it grew).
pub async fn refresh_capacity(runner: &dyn CommandRunner, device: &Path) -> Result<(), ExecError> {
    runner
        .run_ok(&Cmd::new("losetup").arg("--set-capacity").arg(device))
        .await?;
    Ok(())
}

/// Loop devices whose backing file is `file`, from `<sysfs>/block/loop*/loop/backing_file`.
pub fn find_by_backing_file(sysfs: &Path, file: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(sysfs.join("block")) else {
        return Vec::new();
    };
    let want = file.as_os_str().as_encoded_bytes();
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().as_encoded_bytes().starts_with(b"loop"))
        .filter(|e| {
            std::fs::read(e.path().join("loop/backing_file"))
                .map(|b| b.strip_suffix(b"\n").unwrap_or(&b) == want)
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// The backing file of a loop device, if it is one.
pub fn backing_file(sysfs: &Path, device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?;
    let b = std::fs::read(sysfs.join("block").join(name).join("loop/backing_file")).ok()?;
    let s = String::from_utf8(b).ok()?;
    Some(PathBuf::from(s.trim_end_matches('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_loop_devices_in_a_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        for (dev, file) in [
            ("loop0", "/pool/a.raw"),
            ("loop1", "/pool/b.raw"),
            ("loop2", "/pool/a.raw"),
        ] {
            let d = root.path().join("block").join(dev).join("loop");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("backing_file"), format!("{file}\n")).unwrap();
        }
        std::fs::create_dir_all(root.path().join("block/sda")).unwrap();
        assert_eq!(
            find_by_backing_file(root.path(), Path::new("/pool/a.raw")),
            vec![PathBuf::from("/dev/loop0"), PathBuf::from("/dev/loop2")]
        );
        assert!(find_by_backing_file(root.path(), Path::new("/pool/a.ra")).is_empty());
        assert_eq!(
            backing_file(root.path(), Path::new("/dev/loop1")),
            Some("/pool/b.raw".into())
        );
        assert_eq!(backing_file(root.path(), Path::new("/dev/sda")), None);
    }
}
