//! Volume capabilities: which access types and modes pool-csi volumes
//! support, checked the same way by the controller and the node.

use pool_csi_proto::csi::{volume_capability, VolumeCapability};

/// Why a capability cannot be served.
pub fn check(cap: &VolumeCapability) -> Result<(), String> {
    use volume_capability::access_mode::Mode;
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or("volume capability has no access_mode")?
        .mode;
    match Mode::try_from(mode) {
        Ok(
            Mode::SingleNodeWriter
            | Mode::SingleNodeReaderOnly
            | Mode::SingleNodeSingleWriter
            | Mode::SingleNodeMultiWriter,
        ) => {}
        Ok(Mode::Unknown) | Err(_) => {
            return Err("volume capability has an unknown access mode".into())
        }
        Ok(m) => {
            return Err(format!(
            "access mode {} is not supported: pool-csi volumes are attached on one node at a time",
            m.as_str_name()
        ))
        }
    }
    match &cap.access_type {
        None => Err("volume capability needs an access type: block or mount".into()),
        Some(volume_capability::AccessType::Block(_)) => Ok(()),
        Some(volume_capability::AccessType::Mount(m)) => {
            if !m.fs_type.is_empty() && !crate::params::FILESYSTEMS.contains(&m.fs_type.as_str()) {
                return Err(format!(
                    "filesystem {:?} is not supported; supported: {}",
                    m.fs_type,
                    crate::params::FILESYSTEMS.join(", ")
                ));
            }
            if !m.volume_mount_group.is_empty() {
                return Err("volume_mount_group is not supported".into());
            }
            Ok(())
        }
    }
}

/// Whether the access mode allows one read/write publication at a time
/// (SINGLE_NODE_SINGLE_WRITER).
pub fn is_single_writer(cap: &VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    cap.access_mode
        .as_ref()
        .is_some_and(|m| Mode::try_from(m.mode) == Ok(Mode::SingleNodeSingleWriter))
}

/// Whether the access mode only reads.
pub fn is_read_only_mode(cap: &VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| {
        matches!(
            Mode::try_from(m.mode),
            Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume};

    fn cap(mode: Mode, t: Option<AccessType>) -> VolumeCapability {
        VolumeCapability {
            access_type: t,
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn single_node_modes_are_supported() {
        for m in [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ] {
            check(&cap(m, Some(AccessType::Block(BlockVolume {})))).unwrap();
        }
        assert!(is_read_only_mode(&cap(Mode::SingleNodeReaderOnly, None)));
    }

    #[test]
    fn multi_node_unknown_and_bad_fs_are_refused() {
        let mount = |fs: &str| {
            Some(AccessType::Mount(MountVolume {
                fs_type: fs.into(),
                ..Default::default()
            }))
        };
        assert!(check(&cap(Mode::MultiNodeMultiWriter, mount("")))
            .unwrap_err()
            .contains("MULTI_NODE_MULTI_WRITER"));
        assert!(check(&cap(Mode::Unknown, mount(""))).is_err());
        assert!(check(&cap(Mode::SingleNodeWriter, mount("ntfs")))
            .unwrap_err()
            .contains("ntfs"));
        assert!(check(&cap(Mode::SingleNodeWriter, None)).is_err());
        check(&cap(Mode::SingleNodeWriter, mount("xfs"))).unwrap();
    }
}
