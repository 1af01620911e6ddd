//! NodeStageVolume / NodeUnstageVolume: attach the volume and mount it (or
//! bind its device node) at the staging path.

use super::{attacher, source_of, Access, STAGED_DEVICE};
use crate::{
    attach::AttachSource,
    error::{io, Error, Result},
    mount::{mounter, mountinfo},
    steps,
    tools::{
        blkid::Probe,
        loopdev::{self, Pinned},
        losetup, mkfs,
    },
    NodeCtx,
};
use pool_csi_common::VolumeId;
use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// Stages `id` at `staging`. Idempotent: a second call with the same
/// arguments finds the mount and returns Ok. `many`: a MULTI_NODE access
/// mode, which only a directory volume serves.
pub async fn stage(
    ctx: &NodeCtx,
    id: &VolumeId,
    staging: &Path,
    access: &Access,
    read_only: bool,
    many: bool,
) -> Result<()> {
    let src = source_of(ctx, id).await?;
    if let AttachSource::Directory { path } = &src {
        return stage_directory(ctx, id, path, staging, access, read_only);
    }
    if many {
        return Err(Error::Invalid(format!(
            "volume {} is not a directory volume: it is attached on one node at a time, so MULTI_NODE access modes are not possible",
            id.name
        )));
    }
    let att = attacher(ctx, id);
    let table = mountinfo::read(&ctx.cfg.mountinfo).map_err(io("read", &ctx.cfg.mountinfo))?;
    let target = match access {
        Access::Block => staging.join(STAGED_DEVICE),
        Access::Mount { .. } => staging.to_path_buf(),
    };
    if let Some(m) = mountinfo::find_at(&table, &target) {
        let ours = att
            .attached(&src)
            .is_some_and(|d| crate::fsutil::is_same_device(&mount_device(m), &d));
        return if ours {
            // Staged before this node plugin started: hold the device again
            // (block mode's bind does not).
            if matches!(access, Access::Block) && !ctx.held.has(&target) {
                if let Some(pin) = att.attach_held(&src).await?.into_pin() {
                    ctx.held.keep(&target, pin);
                }
            }
            Ok(())
        } else {
            Err(taken(id, staging, m))
        };
    }
    let was_attached = att.attached(&src).is_some();
    // Held until mounted: what is probed, formatted and mounted is this
    // volume's device even if another program frees its number meanwhile.
    let held = steps::timed("attach", att.attach_held(&src)).await;
    let result = match &held {
        Err(_) => Ok(()),
        Ok(h) => match access {
            Access::Block => bind_device(&h.device, &target),
            Access::Mount { fs_type, flags } => {
                mount_filesystem(ctx, &h.device, staging, fs_type, flags, read_only).await
            }
        },
    };
    let result = match held {
        Err(e) => Err(e),
        Ok(h) => result.map(|()| {
            // A filesystem mount holds its device from here on; a bind of
            // the device node does not, so block mode keeps the hold.
            if let (Access::Block, Some(pin)) = (access, h.into_pin()) {
                ctx.held.keep(&target, pin);
            }
        }),
    };
    if result.is_err() && !was_attached {
        // Undo what this call made.
        if let (Ok(()), Ok(pool)) = (att.detach(&src).await, super::pool_of(ctx, id)) {
            let _ = pool.detached(&id.name).await;
        }
    }
    result
}

/// A directory volume is staged by binding its data directory (on the
/// pool's filesystem) at the staging path; the CO's fs_type does not apply.
fn stage_directory(
    ctx: &NodeCtx,
    id: &VolumeId,
    dir: &Path,
    staging: &Path,
    access: &Access,
    read_only: bool,
) -> Result<()> {
    if matches!(access, Access::Block) {
        return Err(Error::Invalid(format!(
            "volume {} is a directory volume: it is mounted, it has no block device",
            id.name
        )));
    }
    // Held by a descriptor opened without following links below the pool:
    // what is bound is the volume's directory, whatever the share holds.
    let root = dir.parent().and_then(Path::parent).unwrap_or(dir);
    let held = crate::formats::directory::open_beneath(root, dir)?;
    let table = mountinfo::read(&ctx.cfg.mountinfo).map_err(io("read", &ctx.cfg.mountinfo))?;
    if let Some(m) = mountinfo::find_at(&table, staging) {
        let same = match (rustix::fs::fstat(&held), rustix::fs::stat(staging)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        return if same {
            Ok(())
        } else {
            Err(taken(id, staging, m))
        };
    }
    std::fs::create_dir_all(staging).map_err(io("create", staging))?;
    let source = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
    steps::timed_sync("mount", || mounter::bind(&source, staging, read_only))
        .map_err(io("bind directory volume at", staging))
}

/// The staging path holds another mount than the volume's.
fn taken(id: &VolumeId, staging: &Path, m: &mountinfo::MountEntry) -> Error {
    Error::NameTaken {
        what: "staging path",
        pool: id.pool.clone(),
        name: staging.display().to_string(),
        why: format!("{} mounted there, not volume {}", m.source, id.name),
    }
}

fn bind_device(dev: &Path, target: &Path) -> Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target)
        .map_err(io("create", target))?;
    mounter::bind(dev, target, false).map_err(io("bind device onto", target))
}

async fn mount_filesystem(
    ctx: &NodeCtx,
    dev: &Path,
    staging: &Path,
    fs_type: &str,
    flags: &[String],
    read_only: bool,
) -> Result<()> {
    let probe = steps::timed("probe", async {
        // Off the runtime's thread: the device may sit on a FUSE export.
        let (d, f) = (dev.to_path_buf(), fs_type.to_string());
        let quick = crate::formats::env::blocking(dev, move || Ok(Probe::requested(&d, &f)))
            .await
            .ok()
            .flatten();
        match quick {
            Some(p) => Ok(p),
            None => Probe::device(ctx.runner.as_ref(), dev).await,
        }
    });
    match probe.await? {
        Probe::Blank => steps::timed("mkfs", mkfs::make(ctx.runner.as_ref(), fs_type, dev)).await?,
        Probe::Filesystem(have) if have == fs_type => {}
        Probe::Filesystem(have) => {
            return Err(Error::Precondition(format!(
                "the volume holds a {have} filesystem but {fs_type} was requested; nothing was formatted"
            )))
        }
        Probe::Other { kind } => return Err(Error::NotBlank { device: dev.into(), found: kind }),
    }
    let mut flags = flags.to_vec();
    if fs_type == "xfs" {
        flags.push("nouuid".into()); // clones share a UUID; xfs refuses the second mount without this
    }
    let opts = mounter::parse_flags(&flags, read_only)
        .map_err(|e| Error::invalid("mount_flags", &flags.join(","), e))?;
    std::fs::create_dir_all(staging).map_err(io("create", staging))?;
    steps::timed_sync("mount", || mounter::mount_fs(dev, staging, fs_type, &opts))
        .map_err(io("mount volume at", staging))
}

/// The device behind a mount entry: its source for filesystems, or for a
/// bind of a device node, /dev plus the node's path in devtmpfs.
pub fn mount_device(m: &mountinfo::MountEntry) -> PathBuf {
    if m.source.starts_with('/') {
        PathBuf::from(&m.source)
    } else {
        Path::new("/dev").join(m.root.strip_prefix("/").unwrap_or(&m.root))
    }
}

/// Unstages `id` from `staging`: unmounts, then detaches what stage attached.
/// Already unstaged is Ok; still published elsewhere is FAILED_PRECONDITION.
pub async fn unstage(ctx: &NodeCtx, id: &VolumeId, staging: &Path) -> Result<()> {
    let table = mountinfo::read(&ctx.cfg.mountinfo).map_err(io("read", &ctx.cfg.mountinfo))?;
    let mut devices = Vec::new();
    // Loop devices under the mounts, held before unmounting, for the case
    // the volume's file is gone: a filesystem mount pins its device's
    // binding, block mode's bind does not (stage's hold does, kept in
    // `ctx.held`; after a restart, only a device still backed by a deleted
    // file is taken for the volume's).
    let mut held = Vec::new();
    for mp in [staging.join(STAGED_DEVICE), staging.to_path_buf()] {
        let Some(m) = mountinfo::find_at(&table, &mp) else {
            continue;
        };
        if let Some(other) = table
            .iter()
            .find(|o| o.dev == m.dev && o.root == m.root && o.mount_point != mp)
        {
            return Err(Error::InUse {
                what: format!("volume {}", id.name),
                by: format!(
                    "still published at {}; unpublish it first",
                    other.mount_point.display()
                ),
            });
        }
        let dev = mount_device(m);
        let kept = ctx.held.take(&mp);
        let pin = match (loopdev::is_loop_device(&dev), kept) {
            (false, _) => None,
            (true, Some(p)) => Some(p),
            (true, None) => Pinned::hold(&dev).map_err(io("open", &dev))?.filter(|_| {
                mp == staging
                    || losetup::backing_file(&ctx.cfg.sysfs_root, &dev)
                        .is_some_and(|b| b.to_string_lossy().ends_with(" (deleted)"))
            }),
        };
        devices.push(dev);
        if let Err(e) = steps::timed_sync("unmount", || mounter::unmount(&mp)) {
            // Still staged: the block-mode hold stays with it.
            if let Some(p) = pin.filter(|_| mp != staging) {
                ctx.held.keep(&mp, p);
            }
            return Err(io("unmount", &mp)(e));
        }
        held.extend(pin);
    }
    match std::fs::remove_file(staging.join(STAGED_DEVICE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", staging)(e)),
        _ => {}
    }
    let att = attacher(ctx, id);
    match source_of(ctx, id).await {
        Ok(src) => {
            // Detach finds, holds and checks the devices itself; a device
            // still held here would only be released on return.
            drop(held);
            steps::timed("detach", att.detach(&src)).await?;
            super::pool_of(ctx, id)?.detached(&id.name).await
        }
        // Nothing was staged here, and the pool cannot say how it would
        // attach the volume (it cannot attach at all, or is not running):
        // undoing what was never done is done.
        // (Unless the node has not read its pools yet: then it cannot tell.)
        Err(e) if devices.is_empty() && !e.is_volume_gone() && !e.is_pools_not_read() => {
            tracing::debug!(error = %pool_csi_common::full_message(&e), "unstage: nothing staged, nothing to detach");
            Ok(())
        }
        // The volume file is gone: free whatever device the mount showed.
        Err(e) if e.is_volume_gone() => {
            for pin in held {
                let d = pin.device().to_path_buf();
                pin.detach().map_err(io("detach loop device", &d))?;
            }
            let _ = crate::tools::qsd::stop(&att.export, std::time::Duration::from_secs(10)).await;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{exec::fake::FakeRunner, pools::registry::PoolRegistry, Config, NodeCtx};
    use std::sync::{atomic::AtomicBool, Arc};

    fn ctx(pools: PoolRegistry, dir: &Path) -> NodeCtx {
        NodeCtx {
            cfg: Config::local("n1", dir.join("state")),
            runner: Arc::new(FakeRunner::new()),
            pools,
            locks: Default::default(),
            ready: Arc::new(AtomicBool::new(false)),
            held: Default::default(),
        }
    }

    /// kubelet's retry of an unstage whose first try unmounted finds
    /// nothing mounted: before the node has read its pools that is no
    /// proof nothing stayed attached, so the retry waits for the pools
    /// (UNAVAILABLE) instead of ending with the loop device left behind.
    /// Once the pools are read, a pool not here means nothing to detach.
    #[tokio::test]
    async fn an_unstage_waits_for_the_pools_to_be_read() {
        let t = tempfile::tempdir().unwrap();
        let staging = t.path().join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let id = VolumeId::new("p", Some("n1"), "v");
        let e = unstage(&ctx(PoolRegistry::default(), t.path()), &id, &staging)
            .await
            .expect_err("cannot be told yet");
        assert!(e.is_pools_not_read(), "{e}");
        let read = PoolRegistry::new(
            &[],
            &Config::local("n1", t.path().join("state")),
            Arc::new(FakeRunner::new()),
        );
        unstage(&ctx(read, t.path()), &id, &staging)
            .await
            .expect("nothing staged, nothing to detach");
    }
}
