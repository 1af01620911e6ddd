//! The `ploop` tool and kernel module, where a host has them (OpenVZ,
//! Virtuozzo): the only code that knows the tool's flags. It takes the
//! disk's files as its callers name them (the format module knows the
//! layout); whether the tool is used at all is decided once at start-up
//! (`formats::ploop::host`).
//!
//! Devices are found again from sysfs, as the tool itself does:
//! `<sysfs>/block/ploopN/pdelta/<level>/image` names each layer's file.

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// `ploop init`: an empty disk of `size` bytes (no filesystem) with its
/// base image at `image`, in a directory that must exist and be empty; the
/// tool writes the image and DiskDescriptor.xml beside it.
pub async fn init(
    runner: &dyn CommandRunner,
    image: &Path,
    size: u64,
    timeout: Duration,
) -> Result<(), ExecError> {
    let cmd = Cmd::new("ploop")
        .args([
            "init",
            "-s",
            &kib(size),
            "-f",
            "ploop1",
            "-v",
            "2",
            "-t",
            "none",
        ])
        .arg(image)
        .timeout(timeout);
    match runner.run(&cmd).await? {
        out if out.status == 0 => Ok(()),
        out => Err(ExecError::Failed {
            cmd: cmd.to_string(),
            status: out.status,
            stderr: match out.stderr_str() {
                s if s.is_empty() && out.status < 0 => "killed by a signal (crashed)".into(),
                s => s,
            },
        }),
    }
}

/// `ploop resize` of the disk `descriptor` describes, mounted or not.
pub async fn resize(
    runner: &dyn CommandRunner,
    descriptor: &Path,
    size: u64,
) -> Result<(), ExecError> {
    runner
        .run_ok(
            &Cmd::new("ploop")
                .args(["resize", "-s", &kib(size)])
                .arg(descriptor),
        )
        .await
        .map(|_| ())
}

/// `ploop snapshot`: the top delta freezes and a new one goes on top
/// (online on a mounted disk; the tool suspends the device for the switch).
pub async fn snapshot(runner: &dyn CommandRunner, descriptor: &Path) -> Result<(), ExecError> {
    runner
        .run_ok(&Cmd::new("ploop").arg("snapshot").arg(descriptor))
        .await
        .map(|_| ())
}

/// `ploop mount` of the disk `descriptor` describes as a block device (no
/// filesystem mount); returns the device, found again through sysfs.
pub async fn mount(
    runner: &dyn CommandRunner,
    sysfs: &Path,
    descriptor: &Path,
) -> Result<PathBuf, ExecError> {
    let dir = descriptor.parent().unwrap_or(Path::new("/"));
    if let Some(dev) = device_of(sysfs, dir) {
        return Ok(dev);
    }
    let cmd = Cmd::new("ploop").arg("mount").arg(descriptor);
    runner.run_ok(&cmd).await?;
    device_of(sysfs, dir).ok_or_else(|| ExecError::Failed {
        cmd: cmd.to_string(),
        status: 0,
        stderr: format!(
            "it succeeded but no {}/block/ploop*/pdelta/0/image names a file in {}",
            sysfs.display(),
            dir.display()
        ),
    })
}

/// `ploop umount -d`: detaches the device. Already gone is fine.
pub async fn umount(runner: &dyn CommandRunner, device: &Path) -> Result<(), ExecError> {
    runner
        .run_ok(&Cmd::new("ploop").args(["umount", "-d"]).arg(device))
        .await
        .map(|_| ())
}

/// The ploop device whose base image lives in `dir`, if one is mounted.
pub fn device_of(sysfs: &Path, dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sysfs.join("block")).ok()?;
    entries
        .flatten()
        .filter(|e| e.file_name().as_encoded_bytes().starts_with(b"ploop"))
        .find(|e| {
            std::fs::read_to_string(e.path().join("pdelta/0/image"))
                .is_ok_and(|img| Path::new(img.trim_end()).parent() == Some(dir))
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
}

/// A size for the tool: whole KiB, rounded up.
fn kib(bytes: u64) -> String {
    format!("{}K", bytes.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fake::{FakeRunner, Reply};

    /// A sysfs tree laid out like the ploop module's: block/ploopN/pdelta/L/image.
    fn sysfs_with(devices: &[(&str, &[&str])]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("module/ploop")).unwrap();
        for (dev, images) in devices {
            for (level, img) in images.iter().enumerate() {
                let d = t.path().join(format!("block/{dev}/pdelta/{level}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("image"), format!("{img}\n")).unwrap();
                std::fs::write(d.join("format"), "ploop1\n").unwrap();
            }
            let top = t.path().join(format!("block/{dev}/pstate"));
            std::fs::create_dir_all(&top).unwrap();
            std::fs::write(top.join("top"), format!("{}\n", images.len() - 1)).unwrap();
        }
        t
    }

    #[test]
    fn devices_are_found_by_their_base_image_directory() {
        let sys = sysfs_with(&[
            ("ploop17", &["/pool/a.ploop/root.hds"]),
            (
                "ploop42",
                &["/pool/b.ploop/root.hds", "/pool/b.ploop/root.hds.{x}"],
            ),
        ]);
        assert_eq!(
            device_of(sys.path(), Path::new("/pool/b.ploop")),
            Some(PathBuf::from("/dev/ploop42"))
        );
        assert_eq!(
            device_of(sys.path(), Path::new("/pool/a.ploop")),
            Some(PathBuf::from("/dev/ploop17"))
        );
        assert_eq!(device_of(sys.path(), Path::new("/pool/c.ploop")), None);
        assert_eq!(
            device_of(sys.path(), Path::new("/pool")),
            None,
            "a parent directory is not the disk"
        );
    }

    #[tokio::test]
    async fn mount_is_idempotent_and_checks_the_device_appeared() {
        let sys = sysfs_with(&[("ploop5", &["/pool/a.ploop/root.hds"])]);
        // Already mounted: no command at all.
        let quiet = FakeRunner::new();
        let dev = mount(
            &quiet,
            sys.path(),
            Path::new("/pool/a.ploop/DiskDescriptor.xml"),
        )
        .await
        .unwrap();
        assert_eq!(dev, PathBuf::from("/dev/ploop5"));
        assert!(quiet.calls().is_empty());
        // The tool says yes but no device shows up: an error, not a guess.
        let liar = FakeRunner::new().expect(
            ["ploop", "mount", "/pool/z.ploop/DiskDescriptor.xml"],
            Reply::ok().stdout("Adding delta dev=/dev/ploop9 img=/pool/z.ploop/root.hds (rw)\n"),
        );
        let err = mount(
            &liar,
            sys.path(),
            Path::new("/pool/z.ploop/DiskDescriptor.xml"),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("no ") && err.contains("z.ploop"), "{err}");
    }

    #[tokio::test]
    async fn commands_take_sizes_in_kib_and_name_the_descriptor() {
        let dir = Path::new("/pool/a.ploop");
        let runner = FakeRunner::new()
            .expect(
                [
                    "ploop",
                    "init",
                    "-s",
                    "65536K",
                    "-f",
                    "ploop1",
                    "-v",
                    "2",
                    "-t",
                    "none",
                    "/pool/a.ploop/root.hds",
                ],
                Reply::ok(),
            )
            .expect(
                [
                    "ploop",
                    "resize",
                    "-s",
                    "131073K",
                    "/pool/a.ploop/DiskDescriptor.xml",
                ],
                Reply::ok(),
            )
            .expect(
                ["ploop", "snapshot", "/pool/a.ploop/DiskDescriptor.xml"],
                Reply::ok(),
            )
            .expect(["ploop", "umount", "-d", "/dev/ploop5"], Reply::ok());
        let desc = dir.join("DiskDescriptor.xml");
        init(
            &runner,
            &dir.join("root.hds"),
            64 << 20,
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        resize(&runner, &desc, (128 << 20) + 1).await.unwrap();
        snapshot(&runner, &desc).await.unwrap();
        umount(&runner, Path::new("/dev/ploop5")).await.unwrap();
    }
}
