//! Holding a volume still for a copy: its block devices are flushed and the
//! filesystems mounted from them frozen (`fsfreeze`) until the copy is done,
//! so a snapshot or clone holds every write made before it. Used by every
//! pool that copies a volume in use (file images, partitions, LVs).

use super::mountinfo;
use crate::{
    error::{io, Result},
    exec::CommandRunner,
    fsutil::is_same_device,
    tools::fsfreeze,
};
use std::{
    fs::File,
    path::{Path, PathBuf},
};

/// Filesystems frozen for a copy; [`Frozen::thaw`] them when it is done.
#[must_use = "frozen filesystems must be thawed"]
pub struct Frozen(Vec<PathBuf>);

impl Frozen {
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Thaws every filesystem (a failure is logged: the operator must act).
    pub async fn thaw(self, runner: &dyn CommandRunner) {
        for mp in &self.0 {
            if let Err(e) = fsfreeze::thaw(runner, mp).await {
                tracing::error!(mount = %mp.display(), error = %e, "failed to thaw a frozen filesystem; run fsfreeze --unfreeze");
            }
        }
    }
}

/// Flushes `devices` and freezes the filesystems mounted from them (one
/// mount per filesystem: binds share the superblock). On failure whatever
/// was frozen is thawed again.
pub async fn freeze(
    runner: &dyn CommandRunner,
    mountinfo_path: &Path,
    devices: &[PathBuf],
) -> Result<Frozen> {
    let mut frozen = Frozen::none();
    if devices.is_empty() {
        return Ok(frozen);
    }
    let table = mountinfo::read(mountinfo_path).map_err(io("read", mountinfo_path))?;
    for dev in devices {
        let step = async {
            File::open(dev)
                .and_then(|f| f.sync_all())
                .map_err(io("flush", dev))?;
            if let Some(m) = table
                .iter()
                .find(|m| is_same_device(Path::new(&m.source), dev))
            {
                fsfreeze::freeze(runner, &m.mount_point).await?;
                frozen.0.push(m.mount_point.clone());
            }
            Ok::<_, crate::error::Error>(())
        };
        if let Err(e) = step.await {
            frozen.thaw(runner).await;
            return Err(e);
        }
    }
    Ok(frozen)
}
