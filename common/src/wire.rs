//! The agent API's enums ↔ the contract types. Both sides convert here,
//! once, at their edge; below it only [`PoolType`], [`VolumeFormat`] and
//! [`Allocation`] are seen.

use crate::{Allocation, OnDelete, PoolType, VolumeFormat};
use pool_csi_proto::agent as pb;

impl From<PoolType> for pb::PoolType {
    fn from(t: PoolType) -> Self {
        match t {
            PoolType::Dir => Self::Dir,
            PoolType::Fs => Self::Fs,
            PoolType::Netfs => Self::Netfs,
            PoolType::Logical => Self::Logical,
            PoolType::Disk => Self::Disk,
            PoolType::Iscsi => Self::Iscsi,
            PoolType::Scsi => Self::Scsi,
            PoolType::Mpath => Self::Mpath,
        }
    }
}

impl From<VolumeFormat> for pb::VolumeFormat {
    fn from(f: VolumeFormat) -> Self {
        match f {
            VolumeFormat::Raw => Self::Raw,
            VolumeFormat::Qcow2 => Self::Qcow2,
            VolumeFormat::Vmdk => Self::Vmdk,
            VolumeFormat::Vpc => Self::Vpc,
            VolumeFormat::Vdi => Self::Vdi,
            VolumeFormat::Ploop => Self::Ploop,
            VolumeFormat::Directory => Self::Directory,
        }
    }
}

impl From<Allocation> for pb::Allocation {
    fn from(a: Allocation) -> Self {
        match a {
            Allocation::Sparse => Self::Sparse,
            Allocation::Full => Self::Full,
            Allocation::Thin => Self::Thin,
            Allocation::Thick => Self::Thick,
        }
    }
}

impl From<OnDelete> for pb::OnDelete {
    fn from(o: OnDelete) -> Self {
        match o {
            OnDelete::Delete => Self::Delete,
            OnDelete::Retain => Self::Retain,
            OnDelete::Archive => Self::Archive,
        }
    }
}

/// The onDelete policy of a wire value.
pub fn on_delete(v: i32) -> Result<OnDelete, UnknownValue> {
    match pb::OnDelete::try_from(v) {
        Ok(pb::OnDelete::Delete) => Ok(OnDelete::Delete),
        Ok(pb::OnDelete::Retain) => Ok(OnDelete::Retain),
        Ok(pb::OnDelete::Archive) => Ok(OnDelete::Archive),
        Err(_) => Err(UnknownValue {
            what: "onDelete policy",
            value: v,
        }),
    }
}

/// A wire value the receiver does not know (a newer peer, or junk).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value} in an agent message (controller and node plugins of different releases?)")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: i32,
}

/// The pool type of a wire value; unspecified is an error.
pub fn pool_type(v: i32) -> Result<PoolType, UnknownValue> {
    let unknown = UnknownValue {
        what: "pool type",
        value: v,
    };
    Ok(match pb::PoolType::try_from(v).map_err(|_| unknown)? {
        pb::PoolType::Dir => PoolType::Dir,
        pb::PoolType::Fs => PoolType::Fs,
        pb::PoolType::Netfs => PoolType::Netfs,
        pb::PoolType::Logical => PoolType::Logical,
        pb::PoolType::Disk => PoolType::Disk,
        pb::PoolType::Iscsi => PoolType::Iscsi,
        pb::PoolType::Scsi => PoolType::Scsi,
        pb::PoolType::Mpath => PoolType::Mpath,
        pb::PoolType::Unspecified => {
            return Err(UnknownValue {
                what: "pool type",
                value: v,
            })
        }
    })
}

/// The format of a wire value; unspecified is None (the default).
pub fn volume_format(v: i32) -> Result<Option<VolumeFormat>, UnknownValue> {
    let unknown = UnknownValue {
        what: "volume format",
        value: v,
    };
    Ok(match pb::VolumeFormat::try_from(v).map_err(|_| unknown)? {
        pb::VolumeFormat::Unspecified => None,
        pb::VolumeFormat::Raw => Some(VolumeFormat::Raw),
        pb::VolumeFormat::Qcow2 => Some(VolumeFormat::Qcow2),
        pb::VolumeFormat::Vmdk => Some(VolumeFormat::Vmdk),
        pb::VolumeFormat::Vpc => Some(VolumeFormat::Vpc),
        pb::VolumeFormat::Vdi => Some(VolumeFormat::Vdi),
        pb::VolumeFormat::Ploop => Some(VolumeFormat::Ploop),
        pb::VolumeFormat::Directory => Some(VolumeFormat::Directory),
    })
}

/// The allocation of a wire value; unspecified is None (the default).
pub fn allocation(v: i32) -> Result<Option<Allocation>, UnknownValue> {
    let unknown = UnknownValue {
        what: "allocation",
        value: v,
    };
    Ok(match pb::Allocation::try_from(v).map_err(|_| unknown)? {
        pb::Allocation::Unspecified => None,
        pb::Allocation::Sparse => Some(Allocation::Sparse),
        pb::Allocation::Full => Some(Allocation::Full),
        pb::Allocation::Thin => Some(Allocation::Thin),
        pb::Allocation::Thick => Some(Allocation::Thick),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_and_junk_is_named() {
        for t in PoolType::ALL {
            assert_eq!(pool_type(pb::PoolType::from(t) as i32).unwrap(), t);
        }
        for f in VolumeFormat::ALL {
            assert_eq!(
                volume_format(pb::VolumeFormat::from(f) as i32).unwrap(),
                Some(f)
            );
        }
        for a in Allocation::ALL {
            assert_eq!(allocation(pb::Allocation::from(a) as i32).unwrap(), Some(a));
        }
        for o in OnDelete::ALL {
            assert_eq!(on_delete(pb::OnDelete::from(o) as i32).unwrap(), o);
        }
        assert!(on_delete(7).is_err());
        assert_eq!(volume_format(0).unwrap(), None);
        assert!(pool_type(0).is_err());
        let e = allocation(99).unwrap_err().to_string();
        assert!(e.contains("allocation 99"), "{e}");
    }
}
