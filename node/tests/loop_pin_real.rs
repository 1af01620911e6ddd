//! A loop device the node holds stays the volume's, on real loop devices:
//! another program's `losetup -d` cannot free its number for someone else
//! while the node formats or mounts it, a device backed by another file is
//! never taken for the volume's, and a held device detaches at once.

#![allow(clippy::disallowed_methods)] // the test plays the other program with real losetup

use pool_csi_node::tools::{loopdev::Pinned, losetup};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

const SYSFS: &str = "/sys";

fn losetup(args: &[&str]) -> Result<String, String> {
    let out = Command::new("losetup")
        .args(args)
        .output()
        .map_err(|e| format!("run losetup: {e}"))?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let f = dir.join(name);
    std::fs::File::create(&f).unwrap().set_len(4 << 20).unwrap();
    f
}

fn backing(dev: &str) -> Option<PathBuf> {
    losetup::backing_file(Path::new(SYSFS), Path::new(dev))
}

/// Whether `dev` is released within 2 s (udev's blkid may hold it open for
/// a moment after a change event).
fn released(dev: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while backing(dev).is_some() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// Detaches whatever is left on the test's files if an assertion fails.
struct Leftovers<'a>(&'a [&'a Path]);

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        for f in self.0 {
            for d in losetup::find_by_backing_file(Path::new(SYSFS), f) {
                let _ = losetup(&["-d", d.to_str().unwrap()]);
            }
        }
    }
}

#[test]
fn a_held_loop_device_stays_the_volumes_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let (mine, theirs) = (
        image(dir.path(), "mine.raw"),
        image(dir.path(), "theirs.raw"),
    );
    let dev = match losetup(&["--find", "--show", mine.to_str().unwrap()]) {
        Ok(d) => d,
        Err(why) => return pool_csi_testkit::skip::skip("loop", &format!("no loop device: {why}")),
    };
    let files = [mine.as_path(), theirs.as_path()];
    let _leftovers = Leftovers(&files);
    let sys = Path::new(SYSFS);

    // Backed by another file: not taken for this one.
    assert!(Pinned::pin(sys, Path::new(&dev), &theirs)
        .unwrap()
        .is_none());
    let pin = Pinned::pin(sys, Path::new(&dev), &mine)
        .unwrap()
        .expect("the device is backed by the volume's file");

    // Another program detaches it while held: it stays bound, and its
    // number is not handed to the next file.
    losetup(&["-d", &dev]).expect("a foreign detach is accepted");
    assert_eq!(backing(&dev), Some(mine.clone()), "still the volume's");
    let other = losetup(&["--find", "--show", theirs.to_str().unwrap()]).unwrap();
    assert_ne!(other, dev, "a held device's number is not reused");
    assert!(Pinned::pin(sys, Path::new(&dev), &mine).unwrap().is_some());

    // Released with the last holder (the foreign detach was recorded).
    drop(pin);
    assert!(released(&dev), "gone once released");
    assert!(Pinned::pin(sys, Path::new(&dev), &mine).unwrap().is_none());

    // The node's own detach through a held descriptor is immediate, and
    // leaves a device now someone else's alone.
    let pin = Pinned::pin(sys, Path::new(&other), &theirs)
        .unwrap()
        .unwrap();
    assert!(Pinned::pin(sys, Path::new(&other), &mine)
        .unwrap()
        .is_none());
    pin.detach().unwrap();
    assert!(released(&other), "detached once nobody holds it");
    // Detaching what is already gone is fine.
    if let Some(p) = Pinned::hold(Path::new(&other)).unwrap() {
        p.detach().unwrap();
    }
}
