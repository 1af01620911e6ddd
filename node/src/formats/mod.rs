//! Volume image formats in file pools: making an image, reading its size,
//! growing it. Raw files are handled with plain system calls (the fast path
//! the benchmark measures), ploop disks by this crate's own reader and
//! writer, the other formats through qemu-img.

pub mod ploop;
pub mod ploop_disk;
pub mod ploop_host;
pub mod ploop_xml;
pub mod qcow2;

use crate::{
    error::{io, Error, Result},
    exec::CommandRunner,
    tools::qemu_img,
};
use pool_csi_common::VolumeFormat;
use std::{fs::OpenOptions, path::Path};

/// Creates a new image of `size` bytes at `path` (which must not exist).
pub async fn create(
    runner: &dyn CommandRunner,
    format: VolumeFormat,
    path: &Path,
    size: u64,
    full: bool,
) -> Result<()> {
    match format {
        VolumeFormat::Raw => {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io("create", path))?;
            if full {
                preallocate(&f, 0, size).map_err(io("allocate", path))?;
            } else {
                f.set_len(size).map_err(io("size", path))?;
            }
            Ok(())
        }
        VolumeFormat::Qcow2 | VolumeFormat::Vmdk | VolumeFormat::Vpc | VolumeFormat::Vdi => {
            if full && format != VolumeFormat::Qcow2 {
                return Err(Error::Invalid(format!(
                    "allocation=full is supported for raw and qcow2 volumes, not {format}"
                )));
            }
            Ok(qemu_img::create(runner, format, path, size, full).await?)
        }
        VolumeFormat::Ploop => {
            if full {
                return Err(Error::Invalid(
                    "allocation=full is supported for raw and qcow2 volumes, not ploop".into(),
                ));
            }
            // `<name>.ploop`, or `v.<name>.ploop` while being made.
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let name = stem.rsplit('.').next().unwrap_or_default();
            ploop_disk::Disk::create(path, name, size).map(|_| ())
        }
    }
}

/// Allocates `[offset, offset+len)`, falling back to writing zeros where the
/// filesystem has no fallocate.
pub fn preallocate(f: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => crate::fsutil::zero_range(f, offset, offset + len),
        Err(e) => Err(e.into()),
    }
}

/// The guest-visible size of an image. Raw and qcow2 are read directly;
/// other formats ask qemu-img.
pub async fn virtual_size(
    runner: &dyn CommandRunner,
    format: VolumeFormat,
    path: &Path,
) -> Result<u64> {
    match format {
        VolumeFormat::Raw => Ok(std::fs::metadata(path).map_err(io("stat", path))?.len()),
        VolumeFormat::Qcow2 => qcow2::read_size(path),
        VolumeFormat::Ploop => ploop_disk::Disk::open(path)?.size(),
        _ => Ok(qemu_img::info(runner, format, path).await?.virtual_size),
    }
}

/// Grows an image that is not open elsewhere to `size` bytes.
pub async fn grow(
    runner: &dyn CommandRunner,
    format: VolumeFormat,
    path: &Path,
    size: u64,
    full: bool,
) -> Result<()> {
    match format {
        VolumeFormat::Raw => {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("open", path))?;
            let old = f.metadata().map_err(io("stat", path))?.len();
            if full && size > old {
                preallocate(&f, old, size - old).map_err(io("allocate", path))?;
            }
            f.set_len(size).map_err(io("grow", path))
        }
        VolumeFormat::Ploop => ploop_disk::Disk::open(path)?.grow(size),
        _ => Ok(qemu_img::resize(runner, format, path, size).await?),
    }
}
