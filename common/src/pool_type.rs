//! libvirt's pool types, the volume formats and allocation policies, and the
//! table of what each pool type can hold. Only this file knows that table.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// A libvirt storage-pool type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolType {
    Dir,
    Fs,
    Netfs,
    Logical,
    Disk,
    Iscsi,
    Scsi,
    Mpath,
}

/// How a volume's bytes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeFormat {
    Raw,
    Qcow2,
    Vmdk,
    Vpc,
    Vdi,
    Ploop,
    /// A directory on the pool's filesystem, published by bind mount:
    /// shared pools (netfs) serve it to many nodes at once.
    Directory,
}

/// How space is reserved for a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    /// File pools: a sparse file (the default).
    Sparse,
    /// File pools: every byte allocated at create.
    Full,
    /// Logical pools: a thin LV in a thin pool.
    Thin,
    /// Logical pools: a linear LV (the default).
    Thick,
}

impl PoolType {
    pub const ALL: [PoolType; 8] = [
        Self::Dir,
        Self::Fs,
        Self::Netfs,
        Self::Logical,
        Self::Disk,
        Self::Iscsi,
        Self::Scsi,
        Self::Mpath,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::Fs => "fs",
            Self::Netfs => "netfs",
            Self::Logical => "logical",
            Self::Disk => "disk",
            Self::Iscsi => "iscsi",
            Self::Scsi => "scsi",
            Self::Mpath => "mpath",
        }
    }

    /// Volumes are files (or ploop directories) under `target.path`.
    pub fn is_file_pool(self) -> bool {
        matches!(self, Self::Dir | Self::Fs | Self::Netfs)
    }

    /// The pool carves new volumes (as opposed to handing out existing LUNs).
    pub fn creates_volumes(self) -> bool {
        matches!(
            self,
            Self::Dir | Self::Fs | Self::Netfs | Self::Logical | Self::Disk
        )
    }

    /// Formats a volume of this pool can have; the first is the default.
    pub fn formats(self) -> &'static [VolumeFormat] {
        use VolumeFormat::*;
        if self.is_file_pool() {
            &[Raw, Qcow2, Vmdk, Vpc, Vdi, Ploop, Directory]
        } else {
            &[Raw]
        }
    }

    /// Pools whose volumes are pre-existing LUNs (iscsi, scsi, mpath).
    pub fn is_lun_pool(self) -> bool {
        matches!(self, Self::Iscsi | Self::Scsi | Self::Mpath)
    }

    /// Allocation policies of this pool type; the first is the default.
    pub fn allocations(self) -> &'static [Allocation] {
        use Allocation::*;
        match self {
            Self::Dir | Self::Fs | Self::Netfs => &[Sparse, Full],
            Self::Logical => &[Thick, Thin],
            Self::Disk | Self::Iscsi | Self::Scsi | Self::Mpath => &[Full],
        }
    }
}

impl VolumeFormat {
    pub const ALL: [VolumeFormat; 7] = [
        Self::Raw,
        Self::Qcow2,
        Self::Vmdk,
        Self::Vpc,
        Self::Vdi,
        Self::Ploop,
        Self::Directory,
    ];

    /// The name used in parameters, file extensions and `qemu-img -f`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
            Self::Vmdk => "vmdk",
            Self::Vpc => "vpc",
            Self::Vdi => "vdi",
            Self::Ploop => "ploop",
            Self::Directory => "directory",
        }
    }

    /// A directory rather than a block device: mounted by bind, never
    /// formatted, and the only kind of volume many nodes may use at once.
    pub fn is_directory(self) -> bool {
        self == Self::Directory
    }
}

impl Allocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sparse => "sparse",
            Self::Full => "full",
            Self::Thin => "thin",
            Self::Thick => "thick",
        }
    }
}

/// What deleting a directory volume does with its data (the StorageClass
/// parameter `onDelete`, as NFS provisioners have it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// The data is removed.
    #[default]
    Delete,
    /// The data stays in the pool as `retained-<name>`.
    Retain,
    /// The data stays in the pool as `archived-<name>-<UTC time>`.
    Archive,
}

impl OnDelete {
    pub const ALL: [OnDelete; 3] = [Self::Delete, Self::Retain, Self::Archive];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Retain => "retain",
            Self::Archive => "archive",
        }
    }
}

macro_rules! str_enum {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| {
                        let known: Vec<_> = Self::ALL.iter().map(|v| v.as_str()).collect();
                        format!(
                            "unknown {} {s:?}; expected one of {}",
                            $what,
                            known.join(", ")
                        )
                    })
            }
        }
    };
}

impl Allocation {
    pub const ALL: [Allocation; 4] = [Self::Sparse, Self::Full, Self::Thin, Self::Thick];
}

str_enum!(PoolType, "pool type");
str_enum!(VolumeFormat, "volume format");
str_enum!(Allocation, "allocation");
str_enum!(OnDelete, "onDelete policy");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in PoolType::ALL {
            assert_eq!(t.as_str().parse::<PoolType>().unwrap(), t);
        }
        for f in VolumeFormat::ALL {
            assert_eq!(f.as_str().parse::<VolumeFormat>().unwrap(), f);
        }
        let e = "zfs".parse::<PoolType>().unwrap_err();
        assert!(e.contains("dir, fs, netfs"), "{e}");
    }

    #[test]
    fn block_pools_hold_only_raw() {
        assert_eq!(PoolType::Logical.formats(), &[VolumeFormat::Raw]);
        assert!(PoolType::Dir.formats().contains(&VolumeFormat::Qcow2));
        assert_eq!(PoolType::Logical.allocations()[0], Allocation::Thick);
    }
}
