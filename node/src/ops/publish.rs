//! NodePublishVolume / NodeUnpublishVolume: bind mounts from the staging path
//! to the workload's target, through the mount system call.

use super::{stage::mount_device, Access, STAGED_DEVICE};
use crate::{
    error::{io, Error, Result},
    mount::{mounter, mountinfo},
    NodeCtx,
};
use pool_csi_common::VolumeId;
use std::path::Path;

/// Publishes a staged volume at `target`. Idempotent for the same arguments;
/// a different volume or read-only mode already at `target` is ALREADY_EXISTS.
pub async fn publish(
    ctx: &NodeCtx,
    id: &VolumeId,
    staging: &Path,
    target: &Path,
    access: &Access,
    read_only: bool,
) -> Result<()> {
    super::pool_of(ctx, id)?;
    let table = mountinfo::read(&ctx.cfg.mountinfo).map_err(io("read", &ctx.cfg.mountinfo))?;
    let source = match access {
        Access::Block => staging.join(STAGED_DEVICE),
        Access::Mount { .. } => staging.to_path_buf(),
    };
    let Some(staged) = mountinfo::find_at(&table, &source) else {
        return Err(Error::Precondition(format!(
            "volume {} is not staged at {}: NodeStageVolume must come first",
            id.name,
            staging.display()
        )));
    };
    if let Some(m) = mountinfo::find_at(&table, target) {
        if m.dev == staged.dev && m.root == staged.root && m.is_read_only() == read_only {
            return Ok(());
        }
        return Err(Error::NameTaken {
            what: "target path",
            pool: id.pool.clone(),
            name: target.display().to_string(),
            why: format!(
                "{} mounted there (read-only: {})",
                mount_device(m).display(),
                m.is_read_only()
            ),
        });
    }
    match access {
        Access::Mount { .. } => std::fs::create_dir_all(target).map_err(io("create", target))?,
        Access::Block => {
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(target)
                .map_err(io("create", target))?;
        }
    }
    mounter::bind(&source, target, read_only).map_err(io("bind mount", target))
}

/// Unmounts `target` (every stacked mount) and removes it. Ok when already gone.
pub async fn unpublish(ctx: &NodeCtx, target: &Path) -> Result<()> {
    // A stacked mount shows up again after the first unmount; a few rounds at most.
    for _ in 0..8 {
        if !mounter::unmount(target).map_err(io("unmount", target))? {
            break;
        }
    }
    let table = mountinfo::read(&ctx.cfg.mountinfo).map_err(io("read", &ctx.cfg.mountinfo))?;
    if mountinfo::find_at(&table, target).is_some() {
        return Err(Error::Precondition(format!(
            "{} is still mounted after unmounting",
            target.display()
        )));
    }
    let removed = match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(target),
        Ok(_) => std::fs::remove_file(target),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", target)(e)),
        _ => Ok(()),
    }
}
