//! Raw images: plain files, made, sized and grown with system calls only
//! (sparse by default; `allocation: full` allocates every byte).

use super::{env::ImageEnv, ImageFormat};
use crate::{
    copy,
    error::{io, Result},
};
use pool_csi_common::VolumeFormat;
use std::{fs::OpenOptions, path::Path};

pub struct Raw;

#[tonic::async_trait]
impl ImageFormat for Raw {
    fn format(&self) -> VolumeFormat {
        VolumeFormat::Raw
    }

    async fn size(&self, _env: &ImageEnv, path: &Path) -> Result<u64> {
        Ok(std::fs::metadata(path).map_err(io("stat", path))?.len())
    }

    async fn size_of(
        &self,
        _env: &ImageEnv,
        _path: &Path,
        meta: &std::fs::Metadata,
    ) -> Result<u64> {
        Ok(meta.len())
    }

    async fn create(
        &self,
        _env: &ImageEnv,
        _name: &str,
        path: &Path,
        size: u64,
        full: bool,
    ) -> Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io("create", path))?;
        if full {
            preallocate(&f, 0, size).map_err(io("allocate", path))
        } else {
            f.set_len(size).map_err(io("size", path))
        }
    }

    async fn resize(&self, _env: &ImageEnv, path: &Path, size: u64, full: bool) -> Result<()> {
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

    /// A fully allocated volume stays fully allocated; a loop device on it
    /// sees the new size when the node expands it.
    async fn grow(&self, env: &ImageEnv, _name: &str, path: &Path, size: u64) -> Result<()> {
        let meta = std::fs::metadata(path).map_err(io("stat", path))?;
        let full = copy::allocated_bytes(&meta) >= meta.len() && meta.len() > 0;
        self.resize(env, path, size, full).await
    }
}

/// Allocates `[offset, offset+len)`, falling back to writing zeros where the
/// filesystem has no fallocate.
fn preallocate(f: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    match rustix::fs::fallocate(f, rustix::fs::FallocateFlags::empty(), offset, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => crate::fsutil::zero_range(f, offset, offset + len),
        Err(e) => Err(e.into()),
    }
}
