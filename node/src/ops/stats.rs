//! NodeGetVolumeStats and NodeExpandVolume.

use super::{
    attacher,
    paths::{co_path, lexical},
    source_of,
};
use crate::{
    attach::AttachSource,
    error::{io, Error, Result},
    fsutil::device_size,
    mount::mountinfo,
    tools::{growfs, losetup},
    NodeCtx,
};
use pool_csi_common::VolumeId;

/// A volume path from the CO. Any path that cannot be where this volume is
/// published (relative, with '..', outside the kubelet directory) names no
/// volume there: NOT_FOUND, as the spec says for "volume does not exist on
/// the specified volume_path".
fn volume_path_of(ctx: &NodeCtx, id: &VolumeId, p: &str) -> Result<std::path::PathBuf> {
    not_found_if_bad(id, p, co_path(&ctx.cfg.kubelet_dir, "volume_path", p))
}

/// [`volume_path_of`] as text only (touches no filesystem): what a call
/// checks before it takes a lock or a thread.
pub fn check_volume_path(ctx: &NodeCtx, id: &VolumeId, p: &str) -> Result<()> {
    not_found_if_bad(id, p, lexical(&ctx.cfg.kubelet_dir, "volume_path", p)).map(|_| ())
}

fn not_found_if_bad(
    id: &VolumeId,
    p: &str,
    checked: Result<std::path::PathBuf>,
) -> Result<std::path::PathBuf> {
    match checked {
        Err(e @ Error::MissingField { .. }) => Err(e),
        Err(_) => Err(not_at(id, p.as_ref())),
        Ok(path) => Ok(path),
    }
}

fn not_at(id: &VolumeId, path: &std::path::Path) -> Error {
    Error::VolumeNotAt {
        pool: id.pool.clone(),
        name: id.name.clone(),
        path: path.into(),
    }
}

/// Usage of a published or staged volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub bytes_used: u64,
    /// None for block volumes.
    pub inodes: Option<(u64, u64, u64)>,
    /// Some(why) when the volume is unhealthy.
    pub abnormal: Option<String>,
}

pub async fn stats(ctx: &NodeCtx, id: &VolumeId, volume_path: &str) -> Result<Stats> {
    let path = volume_path_of(ctx, id, volume_path)?;
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_at(id, &path)),
        Err(e) => return Err(io("stat", &path)(e)),
    };
    let table = mountinfo::read(&ctx.cfg.mountinfo).map_err(io("read", &ctx.cfg.mountinfo))?;
    let src = source_of(ctx, id).await;
    let mut abnormal = match &src {
        Err(e) if e.is_volume_gone() => Some(format!(
            "the backing volume {} is gone from pool {}",
            id.name, id.pool
        )),
        Err(Error::PoolNotRunning { why, .. }) => {
            Some(format!("pool {} is not running: {why}", id.pool))
        }
        _ => None,
    };
    if abnormal.is_none() && mountinfo::find_at(&table, &path).is_none() {
        abnormal = Some(format!("{} is not mounted", path.display()));
    }
    if let (Ok(AttachSource::Directory { .. }), true) = (&src, meta.is_dir()) {
        return directory_stats(ctx, id, &path, abnormal).await;
    }
    if meta.is_dir() {
        let s = rustix::fs::statvfs(&path).map_err(|e| io("statfs", &path)(e.into()))?;
        Ok(Stats {
            bytes_total: s.f_blocks * s.f_frsize,
            bytes_available: s.f_bavail * s.f_frsize,
            bytes_used: (s.f_blocks - s.f_bfree) * s.f_frsize,
            inodes: Some((s.f_files, s.f_ffree, s.f_files - s.f_ffree)),
            abnormal,
        })
    } else {
        let size = device_size(&path).map_err(io("size", &path))?;
        Ok(Stats {
            bytes_total: size,
            bytes_available: 0,
            bytes_used: 0,
            inodes: None,
            abnormal,
        })
    }
}

/// A directory volume's use is its tree's (walked), its total the recorded
/// capacity; what is available is also bounded by the share's free space.
/// Inodes are the share's: a directory has no count of its own.
async fn directory_stats(
    ctx: &NodeCtx,
    id: &VolumeId,
    path: &std::path::Path,
    abnormal: Option<String>,
) -> Result<Stats> {
    let v = super::pool_of(ctx, id)?.get_volume(&id.name).await?;
    // The published path is a bind of the volume's data: its tree is the use.
    let p = path.to_path_buf();
    let (used, _) = crate::formats::env::blocking(path, move || {
        crate::formats::directory::usage(&p).map_err(io("read", &p))
    })
    .await?;
    let s = rustix::fs::statvfs(path).map_err(|e| io("statfs", path)(e.into()))?;
    let share_free = s.f_bavail * s.f_frsize;
    Ok(Stats {
        bytes_total: v.capacity,
        bytes_available: v.capacity.saturating_sub(used).min(share_free),
        bytes_used: used,
        inodes: Some((s.f_files, s.f_ffree, s.f_files - s.f_ffree)),
        abnormal: abnormal.or(v.abnormal),
    })
}

/// Makes the node see a grown volume: refreshes the loop device and grows
/// the filesystem online. Returns the device size.
pub async fn expand(ctx: &NodeCtx, id: &VolumeId, volume_path: &str, required: u64) -> Result<u64> {
    let path = volume_path_of(ctx, id, volume_path)?;
    if !path.exists() {
        return Err(not_at(id, &path));
    }
    let src = source_of(ctx, id).await?;
    if let AttachSource::Directory { .. } = src {
        // Its capacity is a record, already grown by the controller's call.
        return Ok(super::pool_of(ctx, id)?
            .get_volume(&id.name)
            .await?
            .capacity);
    }
    let att = attacher(ctx, id);
    let dev = att.attached(&src).ok_or_else(|| Error::NotStaged {
        pool: id.pool.clone(),
        name: id.name.clone(),
        node: ctx.cfg.node_name.clone(),
    })?;
    if att.export.running_pid().is_some() {
        att.wait_export_size(required).await;
    }
    if losetup::backing_file(&ctx.cfg.sysfs_root, &dev).is_some() {
        losetup::refresh_capacity(ctx.runner.as_ref(), &dev).await?;
    }
    if path.is_dir() {
        let table = mountinfo::read(&ctx.cfg.mountinfo).map_err(io("read", &ctx.cfg.mountinfo))?;
        let m = mountinfo::find_at(&table, &path)
            .ok_or_else(|| Error::NotMounted { path: path.clone() })?;
        growfs::grow(ctx.runner.as_ref(), &m.fs_type, &dev, &path).await?;
    }
    device_size(&dev).map_err(io("size", &dev))
}
