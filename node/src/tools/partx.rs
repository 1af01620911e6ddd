//! `partx`: tells the kernel about one changed partition (BLKPG), which works
//! while other partitions of the disk are in use.

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::path::Path;

async fn partx(
    runner: &dyn CommandRunner,
    op: &str,
    disk: &Path,
    number: u32,
) -> Result<(), ExecError> {
    let cmd = Cmd::new("partx")
        .arg(op)
        .arg("--nr")
        .arg(number.to_string())
        .arg(disk);
    runner.run_ok(&cmd).await?;
    Ok(())
}

pub async fn add(runner: &dyn CommandRunner, disk: &Path, number: u32) -> Result<(), ExecError> {
    partx(runner, "--add", disk, number).await
}

pub async fn delete(runner: &dyn CommandRunner, disk: &Path, number: u32) -> Result<(), ExecError> {
    partx(runner, "--delete", disk, number).await
}

pub async fn update(runner: &dyn CommandRunner, disk: &Path, number: u32) -> Result<(), ExecError> {
    partx(runner, "--update", disk, number).await
}
