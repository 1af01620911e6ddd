//! NodePublishVolume / NodeUnpublishVolume: bind mounts from the staging path
//! to the workload's target, through the mount system call.

use super::{stage::mount_device, Access, STAGED_DEVICE};
use crate::{
    error::{io, Error, Result},
    fsutil::{remove_if_exists, replace_file},
    mount::{mounter, mountinfo},
    NodeCtx,
};
use pool_csi_common::{volume_id::fnv1a64, VolumeId};
use std::path::{Path, PathBuf};

/// How a publication may write, and beside what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    ReadOnly,
    /// Read/write beside other publications (SINGLE_NODE_WRITER,
    /// SINGLE_NODE_MULTI_WRITER).
    Shared,
    /// The only read/write publication (SINGLE_NODE_SINGLE_WRITER).
    Single,
}

/// Publishes a staged volume at `target`. Idempotent for the same arguments;
/// a different volume or read-only mode already at `target` is ALREADY_EXISTS;
/// a single-writer publication beside another read/write one (or a second
/// beside it) is FAILED_PRECONDITION.
pub async fn publish(
    ctx: &NodeCtx,
    id: &VolumeId,
    staging: &Path,
    target: &Path,
    access: &Access,
    writers: Writers,
) -> Result<()> {
    let read_only = writers == Writers::ReadOnly;
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
    // Other read/write publications of this volume: binds of the staged mount.
    let writer_at = table
        .iter()
        .find(|m| {
            m.dev == staged.dev
                && m.root == staged.root
                && m.mount_point != source
                && m.mount_point != target
                && !m.is_read_only()
        })
        .map(|m| m.mount_point.clone());
    // A single-writer publication elsewhere (its marker, if that target
    // still holds this volume: markers a crash left are ignored).
    let marker = single_writer_marker(ctx, &id.to_string());
    let exclusive_at = std::fs::read(&marker)
        .ok()
        .map(|t| PathBuf::from(String::from_utf8_lossy(&t).into_owned()))
        .filter(|t| t != target)
        .filter(|t| {
            mountinfo::find_at(&table, t)
                .is_some_and(|m| m.dev == staged.dev && m.root == staged.root)
        });
    match (writers, writer_at, exclusive_at) {
        (Writers::Single, Some(other), _) => {
            return Err(Error::Precondition(format!(
                "volume {} is SINGLE_NODE_SINGLE_WRITER and is published read/write at {} already; unpublish it there first",
                id.name,
                other.display()
            )))
        }
        (Writers::Shared, _, Some(other)) => {
            return Err(Error::Precondition(format!(
                "volume {} is published SINGLE_NODE_SINGLE_WRITER at {}; no other read/write publication may join it",
                id.name,
                other.display()
            )))
        }
        (Writers::Single, None, _) => {
            let dir = marker.parent().expect("in the state dir");
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            let bytes = target.as_os_str().as_encoded_bytes();
            replace_file(&marker, &marker.with_extension("tmp"), bytes)?;
        }
        _ => {}
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

/// Where the single-writer publication of volume `id` is recorded (its
/// target).
fn single_writer_marker(ctx: &NodeCtx, id: &str) -> PathBuf {
    let key = fnv1a64(id.as_bytes());
    ctx.cfg
        .state_dir
        .join("single-writer")
        .join(format!("{key:016x}"))
}

/// Unmounts `target` (every stacked mount) and removes it. Ok when already
/// gone. A single-writer record naming `target` goes with it.
pub async fn unpublish(ctx: &NodeCtx, id: &str, target: &Path) -> Result<()> {
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
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(io("remove", target)(e));
        }
    }
    let marker = single_writer_marker(ctx, id);
    if std::fs::read(&marker).is_ok_and(|t| t == target.as_os_str().as_encoded_bytes()) {
        remove_if_exists(&marker)?;
    }
    Ok(())
}
