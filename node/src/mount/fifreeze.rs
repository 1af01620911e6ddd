//! `FIFREEZE` / `FITHAW` on a mounted filesystem, from the node plugin's own
//! process. Not through an `fsfreeze` child: SIGKILL of the plugin would
//! leave the child to finish its freeze after the restarted plugin had
//! thawed what the journal held, and the filesystem would stay frozen. A
//! process in the ioctl exits only once the ioctl returns, so when a
//! restarted plugin runs (after the old one exited) every freeze is done
//! and journaled, and [`super::quiesce::Quiescer::recover`] thaws it.
//!
//! The crate's only `unsafe`: two argument-less ioctls on a descriptor we
//! own.
#![allow(unsafe_code)]

use rustix::ioctl::{ioctl, opcode, NoArg, Opcode};
use std::{ffi::c_int, fs::File, io, path::Path};

/// `_IOWR('X', 119, int)`
const FIFREEZE: Opcode = opcode::read_write::<c_int>(b'X', 119);
/// `_IOWR('X', 120, int)`
const FITHAW: Opcode = opcode::read_write::<c_int>(b'X', 120);

/// Flushes and freezes the filesystem mounted at `mount_point` (blocks
/// until dirty data is written). EBUSY: it is frozen already.
pub fn freeze(mount_point: &Path) -> io::Result<()> {
    let fs = File::open(mount_point)?;
    // SAFETY: FIFREEZE reads no argument and writes no memory of ours; `fs`
    // is an open descriptor for the call's duration.
    unsafe { ioctl(&fs, NoArg::<FIFREEZE>::new()) }?;
    Ok(())
}

/// Thaws the filesystem mounted at `mount_point`. EINVAL: it was not
/// frozen.
pub fn thaw(mount_point: &Path) -> io::Result<()> {
    let fs = File::open(mount_point)?;
    // SAFETY: as for FIFREEZE.
    unsafe { ioctl(&fs, NoArg::<FITHAW>::new()) }?;
    Ok(())
}

/// Whether a thaw failed only because nothing was frozen (EINVAL), or the
/// filesystem cannot be frozen at all (EOPNOTSUPP: tmpfs, for one).
pub fn was_not_frozen(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [Errno::INVAL, Errno::OPNOTSUPP]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}
