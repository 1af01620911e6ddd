//! Loop devices held open while the node uses them. A loop device is only a
//! number: once detached, the next `losetup --find` anywhere on the host
//! (kubelet, another driver, an operator) gets the same path for another
//! file. Between finding a volume's device and formatting, mounting or
//! detaching it, that path must still be this volume's. Holding the device
//! open settles it: while a descriptor is open, another program's
//! `LOOP_CLR_FD` only marks the device for release at its last close, and
//! `LOOP_CONFIGURE` of a bound device fails. So the backing file is checked
//! once, after opening, and holds for as long as the [`Pinned`] lives.
//!
//! The crate's other `unsafe`: one argument-less ioctl on a descriptor we
//! own.
#![allow(unsafe_code)]

use super::losetup;
use rustix::ioctl::{ioctl, NoArg, Opcode};
use std::{
    collections::HashMap,
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// `LOOP_CLR_FD` from `<linux/loop.h>`.
const LOOP_CLR_FD: Opcode = 0x4C01;

/// Whether `device` is `/dev/loopN` itself (not a partition of one).
pub fn is_loop_device(device: &Path) -> bool {
    device
        .to_str()
        .and_then(|d| d.strip_prefix("/dev/loop"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// A loop device held open by this process.
#[derive(Debug)]
pub struct Pinned {
    device: PathBuf,
    fd: File,
}

impl Pinned {
    /// Opens `device` (read-only: closing it starts no flush and no udev
    /// "change" event) and checks that it is backed by `file`. None when it
    /// is not: detached, or someone else's by now.
    pub fn pin(sysfs: &Path, device: &Path, file: &Path) -> io::Result<Option<Pinned>> {
        let Some(p) = Self::hold(device)? else {
            return Ok(None);
        };
        Ok((losetup::backing_file(sysfs, device).as_deref() == Some(file)).then_some(p))
    }

    /// Opens `device` without a check: for a device whose binding the
    /// caller knows holds right now (it is mounted at the caller's path).
    /// None when the device node is gone.
    pub fn hold(device: &Path) -> io::Result<Option<Pinned>> {
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(device)
        {
            Ok(fd) => Ok(Some(Pinned {
                device: device.to_path_buf(),
                fd,
            })),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Detaches the device through this descriptor: at once when nobody
    /// else holds it, else (mounted, or a reader still on it) when its
    /// last user closes it. Already detached is fine.
    pub fn detach(self) -> io::Result<()> {
        // SAFETY: LOOP_CLR_FD reads no argument and writes no memory of
        // ours; `fd` is open for the call's duration.
        match unsafe { ioctl(&self.fd, NoArg::<LOOP_CLR_FD>::new()) } {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::NXIO) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Loop devices held for as long as a volume is staged in block mode: a
/// bind of the device node does not hold the device the way a filesystem
/// mount does. By staging path; kept in memory (a restarted node plugin
/// does not hold them again until they are staged again).
#[derive(Debug, Default, Clone)]
pub struct HeldDevices(Arc<Mutex<HashMap<PathBuf, Pinned>>>);

impl HeldDevices {
    pub fn keep(&self, at: &Path, pin: Pinned) {
        self.lock().insert(at.to_path_buf(), pin);
    }

    pub fn take(&self, at: &Path) -> Option<Pinned> {
        self.lock().remove(at)
    }

    pub fn has(&self, at: &Path) -> bool {
        self.lock().contains_key(at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Pinned>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
