//! Growing a mounted filesystem to fill its device: `resize2fs` for ext*,
//! `xfs_growfs` (which takes the mount point) for xfs.

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::{path::Path, time::Duration};

/// Grows the filesystem on `device`, mounted at `mount_point`, online.
pub async fn grow(
    runner: &dyn CommandRunner,
    fs_type: &str,
    device: &Path,
    mount_point: &Path,
) -> Result<(), ExecError> {
    let cmd = match fs_type {
        "xfs" => Cmd::new("xfs_growfs").arg(mount_point),
        _ => Cmd::new("resize2fs").arg(device),
    };
    runner
        .run_ok(&cmd.timeout(Duration::from_secs(600)))
        .await?;
    Ok(())
}
