//! The device an `fs` pool mounts at its target: mounted at start (only the
//! pool's own device, and only when it holds a filesystem), and formatted
//! by pool-build only when blkid finds it blank (or `--overwrite`).

use crate::{
    error::{io, Error, Result},
    exec::CommandRunner,
    fsutil::is_same_device,
    mount::{mounter, mountinfo},
    tools::{blkid::Probe, mkfs},
};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct FsDevice {
    pub device: PathBuf,
    /// None: auto (whatever blkid finds).
    pub format: Option<String>,
}

impl FsDevice {
    /// Mounts the device at `root` unless it is mounted there already;
    /// anything else mounted there is refused.
    pub async fn mount(
        &self,
        runner: &dyn CommandRunner,
        table_path: &Path,
        root: &Path,
        pool: &str,
    ) -> Result<()> {
        let table = mountinfo::read(table_path).map_err(io("read", table_path))?;
        if let Some(m) = mountinfo::find_at(&table, root) {
            if is_same_device(Path::new(&m.source), &self.device) {
                return Ok(());
            }
            return Err(Error::Precondition(format!(
                "{} has {} mounted, not the pool's source.device {}",
                root.display(),
                m.source,
                self.device.display()
            )));
        }
        let fs = match Probe::device(runner, &self.device).await? {
            Probe::Filesystem(t) => t,
            Probe::Blank => {
                return Err(Error::Precondition(format!(
                    "{} holds no filesystem: build the pool first (poolctl pool-build {pool}) or set autoBuild",
                    self.device.display(),
                )))
            }
            Probe::Other { kind } => {
                return Err(Error::Precondition(format!(
                    "{} holds {kind}, not a filesystem",
                    self.device.display()
                )))
            }
        };
        if let Some(want) = &self.format {
            if *want != fs {
                return Err(Error::Precondition(format!(
                    "{} holds {fs}, but the pool's source.format is {want}",
                    self.device.display()
                )));
            }
        }
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        let opts = mounter::parse_flags(&[], false).expect("no flags");
        mounter::mount_fs(&self.device, root, &fs, &opts).map_err(io("mount pool device on", root))
    }

    /// libvirt's pool-build for an fs pool: mkfs, only on a blank device
    /// unless `overwrite`, never while it is mounted.
    pub async fn build(
        &self,
        runner: &dyn CommandRunner,
        table_path: &Path,
        pool: &str,
        overwrite: bool,
    ) -> Result<()> {
        let table = mountinfo::read(table_path).map_err(io("read", table_path))?;
        if table
            .iter()
            .any(|m| is_same_device(Path::new(&m.source), &self.device))
        {
            return if overwrite {
                Err(Error::InUse {
                    what: self.device.display().to_string(),
                    by: "a mount; stop the pool first".into(),
                })
            } else {
                Ok(()) // mounted, so built
            };
        }
        let fs = self.format.clone().unwrap_or_else(|| "ext4".into());
        match Probe::device(runner, &self.device).await? {
            Probe::Blank => {}
            Probe::Filesystem(_) if !overwrite => return Ok(()),
            Probe::Other { kind } if !overwrite => {
                return Err(Error::NotBlank {
                    device: self.device.clone(),
                    found: kind,
                })
            }
            _ => {
                tracing::warn!(pool.name = %pool, device = %self.device.display(), "overwrite requested: formatting")
            }
        }
        mkfs::make(runner, &fs, &self.device).await?;
        Ok(())
    }
}
