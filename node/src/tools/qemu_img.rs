//! `qemu-img`: create, resize and inspect image formats (qcow2, vmdk, vpc …).

use crate::exec::{Cmd, CommandRunner, ExecError};
use pool_csi_common::VolumeFormat;
use serde::Deserialize;
use std::path::Path;

/// qemu's driver name for a volume format.
pub fn driver(format: VolumeFormat) -> &'static str {
    match format {
        VolumeFormat::Ploop => "parallels",
        other => other.as_str(),
    }
}

/// Creates an image of `size` bytes; `full` preallocates every byte.
pub async fn create(
    runner: &dyn CommandRunner,
    format: VolumeFormat,
    path: &Path,
    size: u64,
    full: bool,
) -> Result<(), ExecError> {
    let mut cmd = Cmd::new("qemu-img").args(["create", "-q", "-f", driver(format)]);
    if full {
        cmd = cmd.args(["-o", "preallocation=falloc"]);
    }
    runner.run_ok(&cmd.arg(path).arg(size.to_string())).await?;
    Ok(())
}

/// Grows an image to `size` bytes. The image must not be open elsewhere.
pub async fn resize(
    runner: &dyn CommandRunner,
    format: VolumeFormat,
    path: &Path,
    size: u64,
) -> Result<(), ExecError> {
    let cmd = Cmd::new("qemu-img")
        .args(["resize", "-q", "-f", driver(format)])
        .arg(path)
        .arg(size.to_string());
    runner.run_ok(&cmd).await?;
    Ok(())
}

/// What `qemu-img info` says of an image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Info {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    pub format: String,
}

/// Reads an image's header through qemu-img (shared lock: works while attached).
pub async fn info(
    runner: &dyn CommandRunner,
    format: VolumeFormat,
    path: &Path,
) -> Result<Info, ExecError> {
    let cmd = Cmd::new("qemu-img")
        .args([
            "info",
            "--output=json",
            "--force-share",
            "-f",
            driver(format),
        ])
        .arg(path);
    let out = runner.run_ok(&cmd).await?;
    serde_json::from_slice(&out.stdout).map_err(|e| ExecError::Failed {
        cmd: cmd.to_string(),
        status: 0,
        stderr: format!("unreadable JSON: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fake::{FakeRunner, Reply};

    #[tokio::test]
    async fn info_parses_recorded_json() {
        let json = include_str!("../../tests/fixtures/commands/qemu-img/info_qcow2.json");
        let runner = FakeRunner::new().expect(
            [
                "qemu-img",
                "info",
                "--output=json",
                "--force-share",
                "-f",
                "qcow2",
                "/p/v.qcow2",
            ],
            Reply::ok().stdout(json),
        );
        let i = info(&runner, VolumeFormat::Qcow2, Path::new("/p/v.qcow2"))
            .await
            .unwrap();
        assert_eq!(i.virtual_size, 1073741824);
        assert_eq!(i.format, "qcow2");
    }

    #[tokio::test]
    async fn full_allocation_asks_for_falloc() {
        let runner = FakeRunner::new().expect(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "preallocation=falloc",
                "/p/v.qcow2",
                "4096",
            ],
            Reply::ok(),
        );
        create(
            &runner,
            VolumeFormat::Qcow2,
            Path::new("/p/v.qcow2"),
            4096,
            true,
        )
        .await
        .unwrap();
    }
}
