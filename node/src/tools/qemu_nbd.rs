//! `qemu-nbd`: attaches an image (qcow2, vmdk …) to a kernel nbd device where
//! the nbd module is loaded. State is two files beside the export path:
//! `<name>.nbd` (the device) and `<name>.nbd.pid` (qemu-nbd's pid), checked
//! against `/sys/block/nbdX/pid`, so a restarted node finds the attachment.

use super::qsd::Image;
use crate::exec::{Cmd, CommandRunner, ExecError};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Whether the kernel has the nbd module loaded.
pub fn is_available(sysfs: &Path) -> bool {
    sysfs.join("module/nbd").is_dir()
}

/// The state files of one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdState {
    pub device_file: PathBuf,
    pub pid_file: PathBuf,
}

impl NbdState {
    /// State beside `export` (`<export>.nbd`, `<export>.nbd.pid`).
    pub fn beside(export: &Path) -> Self {
        let with = |ext: &str| {
            let mut s = export.as_os_str().to_os_string();
            s.push(ext);
            PathBuf::from(s)
        };
        Self {
            device_file: with(".nbd"),
            pid_file: with(".nbd.pid"),
        }
    }

    /// The attached device, if the recorded one is still served by the
    /// recorded qemu-nbd (the kernel's `pid` attribute names the server).
    pub fn attached(&self, sysfs: &Path) -> Option<PathBuf> {
        let dev = PathBuf::from(std::fs::read_to_string(&self.device_file).ok()?.trim());
        let pid = std::fs::read_to_string(&self.pid_file).ok()?;
        let kernel_pid =
            std::fs::read_to_string(sysfs.join("block").join(dev.file_name()?).join("pid")).ok()?;
        (kernel_pid.trim() == pid.trim()).then_some(dev)
    }
}

/// A free nbd device: one the kernel reports no server (`pid`) for.
pub fn free_device(sysfs: &Path) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(sysfs.join("block"))
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("nbd") && n[3..].chars().all(|c| c.is_ascii_digit()))
        .collect();
    names.sort_by_key(|n| n[3..].parse::<u32>().unwrap_or(u32::MAX));
    names
        .into_iter()
        .find(|n| !sysfs.join("block").join(n).join("pid").exists())
        .map(|n| Path::new("/dev").join(n))
}

/// Serves `image` on `device` through a forked qemu-nbd and records it. A
/// ploop chain is passed as nested `--image-opts` (top, its backing, …).
pub async fn connect(
    runner: &dyn CommandRunner,
    image: Image<'_>,
    device: &Path,
    state: &NbdState,
) -> Result<(), ExecError> {
    let cmd = Cmd::new("qemu-nbd")
        .arg(format!("--connect={}", device.display()))
        .args(["--cache=none", "--discard=unmap", "--fork"])
        .arg(format!("--pid-file={}", state.pid_file.display()));
    let cmd = match image {
        Image::One { path, format } => cmd
            .arg(format!("--format={}", super::qemu_img::driver(format)))
            .arg(path),
        Image::PloopChain(chain) => {
            let mut opts = String::new();
            for (depth, path) in chain.iter().rev().enumerate() {
                let prefix = "backing.".repeat(depth);
                if depth > 0 {
                    opts.push(',');
                }
                opts.push_str(&format!(
                    "{prefix}driver=parallels,{prefix}file.driver=file,{prefix}file.filename={}",
                    path.to_string_lossy().replace(',', ",,")
                ));
            }
            cmd.arg("--image-opts").arg(opts)
        }
    }
    .timeout(Duration::from_secs(30));
    runner.run_ok(&cmd).await?;
    std::fs::write(&state.device_file, device.as_os_str().as_encoded_bytes()).map_err(|e| {
        ExecError::Failed {
            cmd: cmd.to_string(),
            status: 0,
            stderr: format!(
                "attached, but failed to record {}: {e}",
                state.device_file.display()
            ),
        }
    })?;
    Ok(())
}

/// Disconnects `device` and forgets the state. Already gone is fine.
pub async fn disconnect(
    runner: &dyn CommandRunner,
    device: &Path,
    state: &NbdState,
) -> Result<(), ExecError> {
    runner
        .run_ok(&Cmd::new("qemu-nbd").arg("--disconnect").arg(device))
        .await?;
    for f in [&state.device_file, &state.pid_file] {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fake::{FakeRunner, Reply};

    fn sysfs_with(devs: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("module/nbd")).unwrap();
        for (dev, pid) in devs {
            let d = root.path().join("block").join(dev);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(p) = pid {
                std::fs::write(d.join("pid"), format!("{p}\n")).unwrap();
            }
        }
        root
    }

    #[test]
    fn picks_the_lowest_device_without_a_server() {
        let sys = sysfs_with(&[
            ("nbd10", None),
            ("nbd0", Some("77")),
            ("nbd2", None),
            ("nbd1", None),
        ]);
        assert!(is_available(sys.path()));
        assert_eq!(free_device(sys.path()), Some(PathBuf::from("/dev/nbd1")));
        let none = sysfs_with(&[("nbd0", Some("1"))]);
        assert_eq!(free_device(none.path()), None);
    }

    #[tokio::test]
    async fn connect_records_state_that_survives_a_restart() {
        let sys = sysfs_with(&[("nbd0", None)]);
        let dir = tempfile::tempdir().unwrap();
        let state = NbdState::beside(&dir.path().join("vol"));
        let pid_arg = format!("--pid-file={}", state.pid_file.display());
        let runner = FakeRunner::new()
            .expect(
                [
                    "qemu-nbd",
                    "--connect=/dev/nbd0",
                    "--cache=none",
                    "--discard=unmap",
                    "--fork",
                    &pid_arg,
                    "--format=qcow2",
                    "/pool/vol.qcow2",
                ],
                Reply::ok(),
            )
            .expect(["qemu-nbd", "--disconnect", "/dev/nbd0"], Reply::ok());
        connect(
            &runner,
            Image::One {
                path: Path::new("/pool/vol.qcow2"),
                format: pool_csi_common::VolumeFormat::Qcow2,
            },
            Path::new("/dev/nbd0"),
            &state,
        )
        .await
        .unwrap();
        // What qemu-nbd and the kernel would have written:
        std::fs::write(&state.pid_file, "4242\n").unwrap();
        assert_eq!(
            state.attached(sys.path()),
            None,
            "kernel shows no server yet"
        );
        std::fs::write(sys.path().join("block/nbd0/pid"), "4242\n").unwrap();
        assert_eq!(state.attached(sys.path()), Some(PathBuf::from("/dev/nbd0")));
        // A different server on the device (ours died, another took it): not ours.
        std::fs::write(sys.path().join("block/nbd0/pid"), "5000\n").unwrap();
        assert_eq!(state.attached(sys.path()), None);
        disconnect(&runner, Path::new("/dev/nbd0"), &state)
            .await
            .unwrap();
        assert!(!state.device_file.exists() && !state.pid_file.exists());
    }

    #[tokio::test]
    async fn a_ploop_chain_is_served_top_first_with_nested_backing() {
        let dir = tempfile::tempdir().unwrap();
        let state = NbdState::beside(&dir.path().join("vol"));
        let pid_arg = format!("--pid-file={}", state.pid_file.display());
        let runner = FakeRunner::new().expect(
            [
                "qemu-nbd",
                "--connect=/dev/nbd1",
                "--cache=none",
                "--discard=unmap",
                "--fork",
                &pid_arg,
                "--image-opts",
                "driver=parallels,file.driver=file,file.filename=/p/v.ploop/top,\
                 backing.driver=parallels,backing.file.driver=file,backing.file.filename=/p/v.ploop/root.hds",
            ],
            Reply::ok(),
        );
        let chain = [
            PathBuf::from("/p/v.ploop/root.hds"),
            PathBuf::from("/p/v.ploop/top"),
        ];
        connect(
            &runner,
            Image::PloopChain(&chain),
            Path::new("/dev/nbd1"),
            &state,
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&state.device_file).unwrap(),
            "/dev/nbd1"
        );
    }
}
