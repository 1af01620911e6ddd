//! The formats a file pool serves: one instance of each, and the only
//! `match` on [`VolumeFormat`] in the node.

use super::{directory, ploop, qemu, raw, ImageFormat};
use pool_csi_common::VolumeFormat;

/// The formats a file pool serves, one instance each (a format may keep
/// per-pool state, such as ploop's descriptor lock).
pub struct Formats {
    raw: raw::Raw,
    qcow2: qemu::Qemu,
    vmdk: qemu::Qemu,
    vpc: qemu::Qemu,
    vdi: qemu::Qemu,
    ploop: ploop::Ploop,
    directory: directory::Directory,
}

impl Formats {
    pub fn new(ploop_host: ploop::host::PloopHost) -> Self {
        Self {
            raw: raw::Raw,
            qcow2: qemu::Qemu::qcow2(),
            vmdk: qemu::Qemu::new(VolumeFormat::Vmdk),
            vpc: qemu::Qemu::new(VolumeFormat::Vpc),
            vdi: qemu::Qemu::new(VolumeFormat::Vdi),
            ploop: ploop::Ploop::new(ploop_host),
            directory: directory::Directory,
        }
    }

    pub fn get(&self, f: VolumeFormat) -> &dyn ImageFormat {
        match f {
            VolumeFormat::Raw => &self.raw,
            VolumeFormat::Qcow2 => &self.qcow2,
            VolumeFormat::Vmdk => &self.vmdk,
            VolumeFormat::Vpc => &self.vpc,
            VolumeFormat::Vdi => &self.vdi,
            VolumeFormat::Ploop => &self.ploop,
            VolumeFormat::Directory => &self.directory,
        }
    }

    /// The format of a volume whose StorageClass names none.
    pub fn default_format(&self) -> &dyn ImageFormat {
        &self.raw
    }

    /// Every format, in the order a volume's name is looked up.
    pub fn all(&self) -> [&dyn ImageFormat; 7] {
        [
            &self.raw,
            &self.qcow2,
            &self.vmdk,
            &self.vpc,
            &self.vdi,
            &self.ploop,
            &self.directory,
        ]
    }
}
