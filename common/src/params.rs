//! StorageClass parameters → typed [`VolumeParams`]. Every key is known or
//! refused: an unknown key, a bad value, or a value the pool type cannot hold
//! is an INVALID_ARGUMENT naming the key — never silently ignored.

use crate::{Allocation, OnDelete, PoolType, VolumeFormat};
use std::collections::HashMap;

pub const KEY_POOL: &str = "pool";
pub const KEY_FORMAT: &str = "volumeFormat";
pub const KEY_ALLOCATION: &str = "allocation";
pub const KEY_PARTITION_TYPE: &str = "partitionType";
pub const KEY_WIPE: &str = "wipeOnDelete";
pub const KEY_FSTYPE: &str = "csi.storage.k8s.io/fstype";
pub const KEY_STRIPES: &str = "stripes";
pub const KEY_STRIPE_SIZE: &str = "stripeSize";
pub const KEY_ON_DELETE: &str = "onDelete";
/// Keys the external-provisioner adds with `--extra-create-metadata`.
const PROVISIONER_METADATA: [&str; 3] = [
    "csi.storage.k8s.io/pvc/name",
    "csi.storage.k8s.io/pvc/namespace",
    "csi.storage.k8s.io/pv/name",
];

/// Filesystems the node can make and grow.
pub const FILESYSTEMS: [&str; 3] = ["ext4", "xfs", "ext3"];

/// Validated StorageClass parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeParams {
    /// The pool to carve the volume from (required unless a default is configured).
    pub pool: String,
    /// None: the pool type's default.
    pub format: Option<VolumeFormat>,
    /// None: the pool type's default.
    pub allocation: Option<Allocation>,
    pub partition_type: Option<String>,
    pub wipe_on_delete: bool,
    pub fs_type: Option<String>,
    /// logical pools: stripe over this many PVs.
    pub stripes: Option<u32>,
    /// logical pools: stripe size in bytes (a power of two, 4 KiB – 512 MiB).
    pub stripe_size: Option<u64>,
    /// Directory volumes: what DeleteVolume does with the data.
    pub on_delete: Option<OnDelete>,
    /// PVC namespace/name when the provisioner passes them (for logs and events).
    pub pvc: Option<String>,
}

/// A parameter that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// The key is not a pool-csi parameter.
    #[error("unknown StorageClass parameter {key:?}; known: pool, volumeFormat, allocation, partitionType, wipeOnDelete, onDelete, stripes, stripeSize, csi.storage.k8s.io/fstype")]
    Unknown { key: String },
    /// The value does not parse.
    #[error("invalid StorageClass parameter {key}={value:?}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: String,
    },
    /// `pool` is missing and no default pool is configured.
    #[error(
        "StorageClass parameter \"pool\" is required: name the StoragePool to carve volumes from"
    )]
    MissingPool,
    /// The value is valid but the pool type cannot hold it.
    #[error("StorageClass parameter {key}={value} is not supported by {pool_type} pool {pool:?}; supported: {supported}")]
    NotForPool {
        key: &'static str,
        value: String,
        pool_type: PoolType,
        pool: String,
        supported: String,
    },
}

impl crate::GrpcCode for ParamError {
    fn grpc_code(&self) -> tonic::Code {
        tonic::Code::InvalidArgument
    }
}

fn invalid(key: &'static str, value: &str, why: impl Into<String>) -> ParamError {
    ParamError::Invalid {
        key,
        value: value.to_string(),
        why: why.into(),
    }
}

/// "64Ki", "1Mi", "65536": a power of two between 4 KiB and 512 MiB.
fn parse_stripe_size(v: &str) -> Result<u64, ParamError> {
    let (num, mult) = match v.trim() {
        s if s.ends_with("Ki") || s.ends_with('k') || s.ends_with('K') => {
            (s.trim_end_matches(['i', 'k', 'K']), 1u64 << 10)
        }
        s if s.ends_with("Mi") || s.ends_with('m') || s.ends_with('M') => {
            (s.trim_end_matches(['i', 'm', 'M']), 1 << 20)
        }
        s => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| invalid(KEY_STRIPE_SIZE, v, "expected a size such as 64Ki"))?;
    let bytes = n.checked_mul(mult).unwrap_or(0);
    striping::check_size(bytes).map_err(|why| invalid(KEY_STRIPE_SIZE, v, why))?;
    Ok(bytes)
}

/// LVM striping: the one rule the StorageClass parser and the node agent
/// both apply (the agent's options reach lvcreate's arguments).
pub mod striping {
    /// LVM's default stripe size, used when a class names none.
    pub const DEFAULT_SIZE: u64 = 64 << 10;

    pub fn check_count(n: u32) -> Result<(), &'static str> {
        match n {
            1..=64 => Ok(()),
            _ => Err("must be 1 to 64"),
        }
    }

    pub fn check_size(bytes: u64) -> Result<(), &'static str> {
        match bytes.is_power_of_two() && (4096..=(512 << 20)).contains(&bytes) {
            true => Ok(()),
            false => Err("must be a power of two from 4Ki to 512Mi"),
        }
    }

    /// (stripes, stripe size) as the agent API carries them: 0 stripes is
    /// a linear volume, a 0 size the default.
    pub fn from_wire(stripes: u32, size: u64) -> Result<Option<(u32, u64)>, String> {
        if stripes == 0 {
            return Ok(None);
        }
        let size = if size == 0 { DEFAULT_SIZE } else { size };
        check_count(stripes).map_err(|why| format!("stripes {stripes} {why}"))?;
        check_size(size).map_err(|why| format!("stripe size {size} {why}"))?;
        Ok(Some((stripes, size)))
    }
}

impl VolumeParams {
    /// Parses StorageClass parameters; `default_pool` fills a missing `pool`.
    pub fn parse(
        params: &HashMap<String, String>,
        default_pool: Option<&str>,
    ) -> Result<Self, ParamError> {
        let mut out = VolumeParams::default();
        let mut pvc = (None, None);
        for (key, value) in params {
            match key.as_str() {
                KEY_POOL => {
                    crate::pool_spec::check_pool_name(value)
                        .map_err(|why| invalid(KEY_POOL, value, why))?;
                    out.pool = value.clone();
                }
                KEY_FORMAT => {
                    out.format = Some(value.parse().map_err(|e| invalid(KEY_FORMAT, value, e))?)
                }
                KEY_ALLOCATION => {
                    out.allocation = Some(
                        value
                            .parse()
                            .map_err(|e| invalid(KEY_ALLOCATION, value, e))?,
                    )
                }
                KEY_PARTITION_TYPE => {
                    if value.is_empty()
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        return Err(invalid(
                            KEY_PARTITION_TYPE,
                            value,
                            "expected a type name such as linux or linux-lvm",
                        ));
                    }
                    out.partition_type = Some(value.clone());
                }
                KEY_WIPE => {
                    out.wipe_on_delete = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(KEY_WIPE, value, "expected true or false")),
                    }
                }
                KEY_FSTYPE => {
                    if !FILESYSTEMS.contains(&value.as_str()) {
                        return Err(invalid(
                            KEY_FSTYPE,
                            value,
                            format!("supported: {}", FILESYSTEMS.join(", ")),
                        ));
                    }
                    out.fs_type = Some(value.clone());
                }
                KEY_STRIPES => {
                    let n: u32 = value
                        .parse()
                        .map_err(|_| invalid(KEY_STRIPES, value, "expected a number"))?;
                    striping::check_count(n).map_err(|why| invalid(KEY_STRIPES, value, why))?;
                    out.stripes = Some(n);
                }
                KEY_STRIPE_SIZE => out.stripe_size = Some(parse_stripe_size(value)?),
                KEY_ON_DELETE => {
                    out.on_delete = Some(
                        value
                            .parse()
                            .map_err(|e| invalid(KEY_ON_DELETE, value, e))?,
                    )
                }
                k if k == PROVISIONER_METADATA[0] => pvc.1 = Some(value.clone()),
                k if k == PROVISIONER_METADATA[1] => pvc.0 = Some(value.clone()),
                k if k == PROVISIONER_METADATA[2] => {}
                _ => return Err(ParamError::Unknown { key: key.clone() }),
            }
        }
        if out.pool.is_empty() {
            out.pool = default_pool.ok_or(ParamError::MissingPool)?.to_string();
        }
        if let (Some(ns), Some(name)) = pvc {
            out.pvc = Some(format!("{ns}/{name}"));
        }
        Ok(out)
    }

    /// Checks the options against what `pool_type` can hold.
    pub fn check_for(&self, pool_type: PoolType) -> Result<(), ParamError> {
        let not_for = |key, value: String, supported: String| ParamError::NotForPool {
            key,
            value,
            pool_type,
            pool: self.pool.clone(),
            supported,
        };
        if let Some(f) = self.format {
            if !pool_type.formats().contains(&f) {
                let s = pool_type
                    .formats()
                    .iter()
                    .map(|f| f.as_str())
                    .collect::<Vec<_>>();
                return Err(not_for(KEY_FORMAT, f.to_string(), s.join(", ")));
            }
        }
        if let Some(a) = self.allocation {
            if !pool_type.allocations().contains(&a) {
                let s = pool_type
                    .allocations()
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>();
                return Err(not_for(KEY_ALLOCATION, a.to_string(), s.join(", ")));
            }
        }
        if let Some(t) = &self.partition_type {
            if pool_type != PoolType::Disk {
                return Err(not_for(
                    KEY_PARTITION_TYPE,
                    t.clone(),
                    "only disk pools".into(),
                ));
            }
        }
        if (self.stripes.is_some() || self.stripe_size.is_some()) && pool_type != PoolType::Logical
        {
            let key = if self.stripes.is_some() {
                KEY_STRIPES
            } else {
                KEY_STRIPE_SIZE
            };
            return Err(not_for(key, "set".into(), "only logical pools".into()));
        }
        let directory = self.format.is_some_and(VolumeFormat::is_directory);
        if let Some(o) = self.on_delete.filter(|_| !directory) {
            return Err(not_for(
                KEY_ON_DELETE,
                o.to_string(),
                "only with volumeFormat=directory".into(),
            ));
        }
        if directory && self.wipe_on_delete {
            return Err(not_for(
                KEY_WIPE,
                "true".into(),
                "image volumes only: a directory volume's files are removed, not zeroed".into(),
            ));
        }
        if directory && self.fs_type.is_some() {
            return Err(not_for(
                KEY_FSTYPE,
                self.fs_type.clone().unwrap_or_default(),
                "none with volumeFormat=directory: the volume is a directory of the pool's filesystem".into(),
            ));
        }
        if !pool_type.creates_volumes() && (self.format.is_some() || self.allocation.is_some()) {
            return Err(not_for(
                KEY_FORMAT,
                "any".into(),
                "none: LUN pools hand out existing LUNs".into(),
            ));
        }
        Ok(())
    }

    /// The format a new volume gets in `pool_type`.
    pub fn format_for(&self, pool_type: PoolType) -> VolumeFormat {
        self.format.unwrap_or(pool_type.formats()[0])
    }

    /// The allocation a new volume gets in `pool_type`.
    pub fn allocation_for(&self, pool_type: PoolType) -> Allocation {
        self.allocation.unwrap_or(pool_type.allocations()[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_known_key() {
        let p = VolumeParams::parse(
            &map(&[
                ("pool", "fast"),
                ("volumeFormat", "qcow2"),
                ("allocation", "full"),
                ("wipeOnDelete", "true"),
                ("csi.storage.k8s.io/fstype", "xfs"),
                ("csi.storage.k8s.io/pvc/name", "data"),
                ("csi.storage.k8s.io/pvc/namespace", "app"),
                ("csi.storage.k8s.io/pv/name", "pvc-1"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(p.pool, "fast");
        assert_eq!(p.format, Some(VolumeFormat::Qcow2));
        assert_eq!(p.allocation, Some(Allocation::Full));
        assert!(p.wipe_on_delete);
        assert_eq!(p.fs_type.as_deref(), Some("xfs"));
        assert_eq!(p.pvc.as_deref(), Some("app/data"));
        p.check_for(PoolType::Dir).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let e =
            VolumeParams::parse(&map(&[("pool", "a"), ("volumFormat", "raw")]), None).unwrap_err();
        assert!(e.to_string().contains("\"volumFormat\""), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        for (k, v) in [
            ("volumeFormat", "qcow3"),
            ("allocation", "lots"),
            ("wipeOnDelete", "yes"),
            ("csi.storage.k8s.io/fstype", "ntfs"),
            ("pool", "../etc"),
            ("partitionType", "a b"),
        ] {
            let e = VolumeParams::parse(&map(&[("pool", "p"), (k, v)]), None).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(k) && msg.contains(v), "{msg}");
        }
    }

    #[test]
    fn pool_is_required_unless_defaulted() {
        assert_eq!(
            VolumeParams::parse(&map(&[]), None).unwrap_err(),
            ParamError::MissingPool
        );
        assert_eq!(VolumeParams::parse(&map(&[]), Some("d")).unwrap().pool, "d");
    }

    #[test]
    fn on_delete_goes_with_directory_volumes_only() {
        let p = VolumeParams::parse(
            &map(&[
                ("pool", "share"),
                ("volumeFormat", "directory"),
                ("onDelete", "archive"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(p.on_delete, Some(OnDelete::Archive));
        p.check_for(PoolType::Netfs).unwrap();
        assert!(p.check_for(PoolType::Logical).is_err());
        let raw =
            VolumeParams::parse(&map(&[("pool", "d"), ("onDelete", "retain")]), None).unwrap();
        let e = raw.check_for(PoolType::Dir).unwrap_err().to_string();
        assert!(
            e.contains("onDelete=retain") && e.contains("directory"),
            "{e}"
        );
        let e = VolumeParams::parse(&map(&[("pool", "d"), ("onDelete", "keep")]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("delete, retain, archive"), "{e}");
        for extra in [
            ("wipeOnDelete", "true"),
            ("csi.storage.k8s.io/fstype", "ext4"),
        ] {
            let p = VolumeParams::parse(
                &map(&[("pool", "share"), ("volumeFormat", "directory"), extra]),
                None,
            )
            .unwrap();
            let e = p.check_for(PoolType::Netfs).unwrap_err().to_string();
            assert!(e.contains(extra.0), "{e}");
        }
    }

    #[test]
    fn format_the_pool_cannot_hold_is_refused() {
        let p =
            VolumeParams::parse(&map(&[("pool", "vg"), ("volumeFormat", "qcow2")]), None).unwrap();
        let e = p.check_for(PoolType::Logical).unwrap_err().to_string();
        assert!(
            e.contains("volumeFormat=qcow2") && e.contains("logical"),
            "{e}"
        );
        let p = VolumeParams::parse(&map(&[("pool", "d"), ("allocation", "thin")]), None).unwrap();
        assert!(p.check_for(PoolType::Dir).is_err());
        assert!(p.check_for(PoolType::Logical).is_ok());
    }

    #[test]
    fn stripes_are_for_logical_pools_only() {
        let p = VolumeParams::parse(
            &map(&[("pool", "vg"), ("stripes", "2"), ("stripeSize", "64Ki")]),
            None,
        )
        .unwrap();
        assert_eq!((p.stripes, p.stripe_size), (Some(2), Some(64 << 10)));
        p.check_for(PoolType::Logical).unwrap();
        assert!(p
            .check_for(PoolType::Dir)
            .unwrap_err()
            .to_string()
            .contains("stripes"));
        for bad in [
            ("stripes", "0"),
            ("stripes", "x"),
            ("stripeSize", "3k"),
            ("stripeSize", "1Gi"),
            ("stripeSize", "1"),
        ] {
            let e = VolumeParams::parse(&map(&[("pool", "vg"), bad]), None).unwrap_err();
            assert!(e.to_string().contains(bad.0), "{e}");
        }
    }

    #[test]
    fn defaults_come_from_the_pool_type() {
        let p = VolumeParams::parse(&map(&[("pool", "d")]), None).unwrap();
        assert_eq!(p.format_for(PoolType::Dir), VolumeFormat::Raw);
        assert_eq!(p.allocation_for(PoolType::Dir), Allocation::Sparse);
        assert_eq!(p.allocation_for(PoolType::Logical), Allocation::Thick);
    }
}
