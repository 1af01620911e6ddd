//! `fsfreeze`: hold a mounted filesystem still (dirty data flushed, new
//! writes blocked) while its image is copied, so snapshots and clones of a
//! volume in use are consistent.

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::{path::Path, time::Duration};

pub async fn freeze(runner: &dyn CommandRunner, mount_point: &Path) -> Result<(), ExecError> {
    runner
        .run_ok(
            &Cmd::new("fsfreeze")
                .arg("--freeze")
                .arg(mount_point)
                .timeout(Duration::from_secs(60)),
        )
        .await?;
    Ok(())
}

pub async fn thaw(runner: &dyn CommandRunner, mount_point: &Path) -> Result<(), ExecError> {
    runner
        .run_ok(
            &Cmd::new("fsfreeze")
                .arg("--unfreeze")
                .arg(mount_point)
                .timeout(Duration::from_secs(60)),
        )
        .await?;
    Ok(())
}
