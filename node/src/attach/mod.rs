//! Turning a volume into a block device on this node, and back. Raw files get
//! a loop device (direct I/O); ploop disks get `ploop mount` where the ploop
//! module and tool work; image formats get qemu-nbd where the nbd module
//! exists, otherwise a qemu-storage-daemon FUSE export with a loop device on
//! it. All of it is found again from sysfs and pid files after a restart.
//! (Online growth of an nbd-attached image is not possible: qemu-nbd has no
//! resize command; such volumes grow while unstaged.)

use crate::{
    error::{io, Result},
    exec::CommandRunner,
    steps,
    tools::{
        loopdev::{self, Pinned},
        losetup, ploop,
        qemu_nbd::{self, NbdState},
        qsd::{self, Export},
    },
};
use pool_csi_common::VolumeFormat;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// What the node attaches to get a block device for a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachSource {
    /// An image file: raw through a loop device, other formats through qemu.
    File { path: PathBuf, format: VolumeFormat },
    /// A ploop disk: its directory, its descriptor, and its images, lowest
    /// first, each the backing of the next.
    PloopChain {
        dir: PathBuf,
        descriptor: PathBuf,
        images: Vec<PathBuf>,
    },
    /// Already a block device (LV, partition, LUN).
    Block { device: PathBuf },
    /// A directory volume: no device; staged by bind mount (ops::stage).
    Directory { path: PathBuf },
}

/// A volume's block device, attached; when it is a loop device on the
/// volume's file (or export), held open, so that it stays this volume's
/// until dropped (see [`crate::tools::loopdev`]).
#[derive(Debug)]
pub struct Attached {
    pub device: PathBuf,
    pin: Option<Pinned>,
}

impl Attached {
    /// The hold on the device, to keep beyond this call (block mode).
    pub fn into_pin(self) -> Option<Pinned> {
        self.pin
    }
}

/// What attach needs to know about the node.
pub struct Attacher<'a> {
    pub runner: &'a dyn CommandRunner,
    pub sysfs: &'a Path,
    pub direct_io: bool,
    /// ploop disks go through `ploop mount` (module and tool present).
    pub ploop_mount: bool,
    /// `<state>/exports/<pool>/<name>` for this volume.
    pub export: Export,
}

impl Attacher<'_> {
    /// The block device for `src`, attaching it if needed. Idempotent.
    /// What is to be formatted or mounted goes through [`Self::attach_held`].
    pub async fn attach(&self, src: &AttachSource) -> Result<PathBuf> {
        match src {
            AttachSource::Block { device } => Ok(device.clone()),
            AttachSource::Directory { path } => Err(crate::error::Error::Invalid(format!(
                "{} is a directory volume: it is mounted by bind, it has no block device",
                path.display()
            ))),
            AttachSource::File {
                path,
                format: VolumeFormat::Raw,
            } => self.loop_on(path, self.direct_io).await,
            AttachSource::File { path, format } => {
                self.attach_image(qsd::Image::One {
                    path,
                    format: *format,
                })
                .await
            }
            AttachSource::PloopChain { descriptor, .. } if self.ploop_mount => Ok(steps::timed(
                "ploop_mount",
                ploop::mount(self.runner, self.sysfs, descriptor),
            )
            .await?),
            AttachSource::PloopChain { images, .. } => {
                self.attach_image(qsd::Image::PloopChain(images)).await
            }
        }
    }

    /// [`Self::attach`], and the device held: formatting and mounting it
    /// cannot reach another program's device even if that program detaches
    /// ours meanwhile. A loop device that stopped being this volume's
    /// between finding and holding it is attached anew once, then ABORTED.
    pub async fn attach_held(&self, src: &AttachSource) -> Result<Attached> {
        let mut tries = 0;
        loop {
            let device = self.attach(src).await?;
            let Some(file) = self.loop_file(src, &device) else {
                return Ok(Attached { device, pin: None });
            };
            if let Some(pin) =
                Pinned::pin(self.sysfs, &device, file).map_err(io("open", &device))?
            {
                return Ok(Attached {
                    device,
                    pin: Some(pin),
                });
            }
            tries += 1;
            if tries == 2 {
                return Err(crate::error::Error::LoopTaken {
                    device,
                    file: file.to_path_buf(),
                });
            }
            tracing::warn!(device = %device.display(), file = %file.display(), "the loop device was detached by another program before use; attaching again");
        }
    }

    /// The file `device` is backed by when it is a loop device attach made
    /// for `src` (not a ploop, nbd or the volume's own block device).
    fn loop_file<'s>(&'s self, src: &'s AttachSource, device: &Path) -> Option<&'s Path> {
        match src {
            _ if !loopdev::is_loop_device(device) => None,
            AttachSource::Block { .. } | AttachSource::Directory { .. } => None,
            AttachSource::File {
                path,
                format: VolumeFormat::Raw,
            } => Some(path),
            AttachSource::File { .. } | AttachSource::PloopChain { .. } => Some(&self.export.file),
        }
    }

    /// An image through qemu-nbd where the nbd module exists, else through a
    /// qemu-storage-daemon FUSE export with a loop device on it.
    async fn attach_image(&self, image: qsd::Image<'_>) -> Result<PathBuf> {
        let nbd = NbdState::beside(&self.export.file);
        if let Some(dev) = nbd.attached(self.sysfs) {
            return Ok(dev);
        }
        if qemu_nbd::is_available(self.sysfs) && self.export.running_pid().is_none() {
            let dev = qemu_nbd::free_device(self.sysfs).ok_or_else(|| {
                crate::error::Error::Precondition("every nbd device is in use".into())
            })?;
            if let Some(dir) = self.export.file.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
            steps::timed(
                "qemu_nbd",
                qemu_nbd::connect(self.runner, image, &dev, &nbd),
            )
            .await?;
            return Ok(dev);
        }
        if self.export.running_pid().is_none() {
            self.start_export(image).await?;
        }
        self.loop_on(&self.export.file, false).await
    }

    /// The device already attached for `src`, if any (no changes made).
    pub fn attached(&self, src: &AttachSource) -> Option<PathBuf> {
        match src {
            AttachSource::Block { device } => Some(device.clone()),
            AttachSource::Directory { .. } => None,
            AttachSource::File {
                path,
                format: VolumeFormat::Raw,
            } => losetup::find_by_backing_file(self.sysfs, path)
                .into_iter()
                .next(),
            AttachSource::PloopChain { dir, .. } if ploop::device_of(self.sysfs, dir).is_some() => {
                ploop::device_of(self.sysfs, dir)
            }
            AttachSource::File { .. } | AttachSource::PloopChain { .. } => {
                NbdState::beside(&self.export.file)
                    .attached(self.sysfs)
                    .or_else(|| {
                        losetup::find_by_backing_file(self.sysfs, &self.export.file)
                            .into_iter()
                            .next()
                    })
            }
        }
    }

    /// Detaches everything attach made for `src`. Idempotent.
    pub async fn detach(&self, src: &AttachSource) -> Result<()> {
        let path = match src {
            AttachSource::Block { .. } | AttachSource::Directory { .. } => return Ok(()),
            AttachSource::File { path, .. } => Some(path.as_path()),
            AttachSource::PloopChain { dir, .. } => {
                if let Some(dev) = ploop::device_of(self.sysfs, dir) {
                    ploop::umount(self.runner, &dev).await?;
                }
                None
            }
        };
        let nbd = NbdState::beside(&self.export.file);
        if let Some(dev) = nbd.attached(self.sysfs) {
            qemu_nbd::disconnect(self.runner, &dev, &nbd).await?;
        }
        for file in path.into_iter().chain([self.export.file.as_path()]) {
            let mut detached = false;
            for dev in losetup::find_by_backing_file(self.sysfs, file) {
                // Held and checked first: a device number freed and reused
                // by another program since the scan is not ours to detach.
                if let Some(pin) = Pinned::pin(self.sysfs, &dev, file).map_err(io("open", &dev))? {
                    pin.detach().map_err(io("detach loop device", &dev))?;
                    detached = true;
                }
            }
            // The kernel lets go of the file at the device's last close,
            // which can come a moment after the unmount: unstaged means the
            // image is free (a DeleteVolume right after finds it so).
            if detached {
                losetup::wait_released(self.sysfs, file, Duration::from_secs(10)).await;
            }
        }
        if self.export.running_pid().is_some() || self.export.pid_file.exists() {
            // `losetup -d` of a busy device only marks it for release: the
            // daemon must not go while the kernel still reads through it,
            // or it cannot close its images cleanly.
            losetup::wait_released(self.sysfs, &self.export.file, Duration::from_secs(10)).await;
            qsd::stop(&self.export, Duration::from_secs(10))
                .await
                .map_err(io("stop export", &self.export.file))?;
        }
        let _ = std::fs::remove_file(&self.export.file);
        Ok(())
    }

    async fn loop_on(&self, file: &Path, direct_io: bool) -> Result<PathBuf> {
        if let Some(dev) = losetup::find_by_backing_file(self.sysfs, file)
            .into_iter()
            .next()
        {
            return Ok(dev);
        }
        Ok(steps::timed("loop", losetup::attach(self.runner, file, direct_io)).await?)
    }

    async fn start_export(&self, image: qsd::Image<'_>) -> Result<()> {
        let e = &self.export;
        if let Some(dir) = e.file.parent() {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        // A stale daemon's leftovers (killed node, reboot) must not block a new start.
        qsd::stop(e, Duration::from_secs(5))
            .await
            .map_err(io("clean up export", &e.file))?;
        // A FUSE mount point left by a killed daemon shows as "not connected".
        let _ = crate::mount::mounter::unmount(&e.file);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&e.file)
            .map_err(io("create", &e.file))?;
        steps::timed("qsd_export", qsd::start(self.runner, image, e)).await?;
        Ok(())
    }

    /// Waits until the export shows at least `size` bytes (FUSE caches
    /// attributes for about a second after a resize).
    pub async fn wait_export_size(&self, size: u64) {
        for _ in 0..40 {
            if std::fs::metadata(&self.export.file)
                .map(|m| m.len() >= size)
                .unwrap_or(true)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
