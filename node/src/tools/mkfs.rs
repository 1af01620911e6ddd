//! `mkfs.<type>`. Callers must have checked that the device is blank.

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::{path::Path, time::Duration};

/// Makes a filesystem of `fs_type` on a device that blkid reported blank.
pub async fn make(
    runner: &dyn CommandRunner,
    fs_type: &str,
    device: &Path,
) -> Result<(), ExecError> {
    let cmd = match fs_type {
        // lazy init keeps mkfs fast on large volumes; the kernel finishes it.
        "ext4" | "ext3" => Cmd::new(format!("mkfs.{fs_type}"))
            .args([
                "-q",
                "-F",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
                "-m",
                "0",
            ])
            .arg(device),
        "xfs" => Cmd::new("mkfs.xfs").args(["-q"]).arg(device),
        // Callers pass only FILESYSTEMS; anything else never becomes a program name.
        other => {
            return Err(ExecError::Failed {
                cmd: format!("mkfs.{other}"),
                status: 0,
                stderr: "not a filesystem pool-csi makes".into(),
            })
        }
    };
    runner
        .run_ok(&cmd.timeout(Duration::from_secs(600)))
        .await?;
    Ok(())
}
