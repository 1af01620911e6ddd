//! Volume capabilities: which access types and modes pool-csi volumes
//! support, checked the same way by the controller and the node.

use pool_csi_proto::csi::{volume_capability, VolumeCapability};

/// What is known of a volume when its capabilities are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// A directory volume (mounted by bind, never a block device); None
    /// while the volume has not been looked up.
    pub directory: Option<bool>,
    /// Its pool is shared by several nodes (the volume id names no node).
    pub shared: bool,
}

impl Kind {
    /// A block device or image: one node at a time, block or mount.
    pub const IMAGE: Kind = Kind {
        directory: Some(false),
        shared: false,
    };

    /// A volume not looked up yet, by what its id says.
    pub fn by_id(shared: bool) -> Self {
        Kind {
            directory: None,
            shared,
        }
    }

    /// A volume of format `directory` (or not) in a shared pool (or not).
    pub fn of(directory: bool, shared: bool) -> Self {
        Kind {
            directory: Some(directory),
            shared,
        }
    }
}

/// Whether the access mode lets several nodes use the volume at once.
pub fn is_multi_node(cap: &VolumeCapability) -> bool {
    use volume_capability::access_mode::Mode;
    cap.access_mode.as_ref().is_some_and(|m| {
        matches!(
            Mode::try_from(m.mode),
            Ok(Mode::MultiNodeReaderOnly
                | Mode::MultiNodeSingleWriter
                | Mode::MultiNodeMultiWriter)
        )
    })
}

/// Why a capability cannot be served by a volume of `kind`. Directory
/// volumes of shared pools take the MULTI_NODE modes; every other volume is
/// used on one node at a time. A directory is mounted, never a block
/// device, and its filesystem is the pool's (`fs_type` is not applied).
pub fn check(cap: &VolumeCapability, kind: Kind) -> Result<(), String> {
    use volume_capability::access_mode::Mode;
    let mode = cap
        .access_mode
        .as_ref()
        .ok_or("volume capability has no access_mode")?
        .mode;
    match Mode::try_from(mode) {
        Ok(Mode::Unknown) | Err(_) => {
            return Err("volume capability has an unknown access mode".into())
        }
        Ok(
            m @ (Mode::MultiNodeReaderOnly
            | Mode::MultiNodeSingleWriter
            | Mode::MultiNodeMultiWriter),
        ) if !kind.shared || kind.directory == Some(false) => {
            return Err(format!(
                "access mode {} is not supported: only directory volumes (volumeFormat=directory) of shared pools (netfs) are used by several nodes at once; other volumes are attached on one node at a time",
                m.as_str_name()
            ))
        }
        Ok(_) => {}
    }
    match &cap.access_type {
        None => Err("volume capability needs an access type: block or mount".into()),
        Some(volume_capability::AccessType::Block(_)) if kind.directory == Some(true) => Err(
            "a directory volume is mounted, it has no block device: ask for access type mount"
                .into(),
        ),
        Some(volume_capability::AccessType::Block(_)) => Ok(()),
        Some(volume_capability::AccessType::Mount(m)) => {
            if !m.fs_type.is_empty()
                && kind.directory != Some(true)
                && !crate::params::FILESYSTEMS.contains(&m.fs_type.as_str())
            {
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
            check(
                &cap(m, Some(AccessType::Block(BlockVolume {}))),
                Kind::IMAGE,
            )
            .unwrap();
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
        assert!(
            check(&cap(Mode::MultiNodeMultiWriter, mount("")), Kind::IMAGE)
                .unwrap_err()
                .contains("MULTI_NODE_MULTI_WRITER")
        );
        assert!(check(&cap(Mode::Unknown, mount("")), Kind::IMAGE).is_err());
        assert!(
            check(&cap(Mode::SingleNodeWriter, mount("ntfs")), Kind::IMAGE)
                .unwrap_err()
                .contains("ntfs")
        );
        assert!(check(&cap(Mode::SingleNodeWriter, None), Kind::IMAGE).is_err());
        check(&cap(Mode::SingleNodeWriter, mount("xfs")), Kind::IMAGE).unwrap();
    }

    #[test]
    fn multi_node_modes_are_for_directories_of_shared_pools() {
        let mount = Some(AccessType::Mount(MountVolume::default()));
        let block = Some(AccessType::Block(BlockVolume {}));
        for m in [
            Mode::MultiNodeMultiWriter,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
        ] {
            let c = cap(m, mount.clone());
            assert!(is_multi_node(&c));
            check(&c, Kind::of(true, true)).unwrap();
            // A shared volume not looked up yet may be a directory.
            check(&c, Kind::by_id(true)).unwrap();
            for k in [
                Kind::of(true, false),
                Kind::of(false, true),
                Kind::by_id(false),
            ] {
                assert!(
                    check(&c, k).unwrap_err().contains("directory volumes"),
                    "{k:?}"
                );
            }
        }
        let e = check(&cap(Mode::SingleNodeWriter, block), Kind::of(true, true)).unwrap_err();
        assert!(e.contains("no block device"), "{e}");
        // The pool's filesystem is a directory's; a class default is not applied.
        let nfs = Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        }));
        check(&cap(Mode::MultiNodeMultiWriter, nfs), Kind::of(true, true)).unwrap();
    }
}
