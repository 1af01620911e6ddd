//! Image formats qemu-img makes and grows: qcow2, vmdk, vpc and vdi. An
//! attached image is open in a qemu-storage-daemon, which grows it online
//! over QMP; qcow2's size is read from its header, the others' from
//! `qemu-img info`.

use super::{env::ImageEnv, ImageFormat};
use crate::{
    error::{Error, Result},
    tools::{qemu_img, qsd},
};
use pool_csi_common::VolumeFormat;
use std::path::Path;

pub struct Qemu {
    format: VolumeFormat,
    /// qemu-img can preallocate it (`allocation: full`).
    preallocates: bool,
    /// qemu can change its size (qemu-img resize, QMP block_resize): of
    /// these formats only qcow2.
    resizable: bool,
    /// Reads the virtual size from the header without running qemu-img.
    header_size: Option<fn(&Path) -> Result<u64>>,
}

impl Qemu {
    /// A format qemu-img handles with its defaults.
    pub fn new(format: VolumeFormat) -> Self {
        Self {
            format,
            preallocates: false,
            resizable: false,
            header_size: None,
        }
    }

    pub fn qcow2() -> Self {
        Self {
            format: VolumeFormat::Qcow2,
            preallocates: true,
            resizable: true,
            header_size: Some(super::qcow2::read_size),
        }
    }
}

impl Qemu {
    fn check_resizable(&self) -> Result<()> {
        match self.resizable {
            true => Ok(()),
            false => Err(Error::Precondition(format!(
                "qemu cannot change the size of {} images: such volumes keep the size they were made with; use raw, qcow2 or ploop for volumes that grow",
                self.format
            ))),
        }
    }
}

#[tonic::async_trait]
impl ImageFormat for Qemu {
    fn format(&self) -> VolumeFormat {
        self.format
    }

    async fn size(&self, env: &ImageEnv, path: &Path) -> Result<u64> {
        match self.header_size {
            Some(read) => read(path),
            None => Ok(qemu_img::info(env.runner(), self.format, path)
                .await?
                .virtual_size),
        }
    }

    async fn create(
        &self,
        env: &ImageEnv,
        _name: &str,
        path: &Path,
        size: u64,
        full: bool,
    ) -> Result<()> {
        if full && !self.preallocates {
            return Err(Error::Invalid(format!(
                "allocation=full is supported for raw and qcow2 volumes, not {}",
                self.format
            )));
        }
        Ok(qemu_img::create(env.runner(), self.format, path, size, full).await?)
    }

    async fn resize(&self, env: &ImageEnv, path: &Path, size: u64, _full: bool) -> Result<()> {
        self.check_resizable()?;
        Ok(qemu_img::resize(env.runner(), self.format, path, size).await?)
    }

    async fn grow(&self, env: &ImageEnv, name: &str, path: &Path, size: u64) -> Result<()> {
        self.check_resizable()?;
        let export = env.export_of(name);
        if export.running_pid().is_some() {
            // Attached: grow through the running daemon.
            return Ok(qsd::resize(&export, size).await?);
        }
        self.resize(env, path, size, false).await
    }
}
