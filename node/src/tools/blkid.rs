//! `blkid -p`: what a device holds, read from the device itself (no cache).

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::path::Path;

/// What blkid found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No signature at all: safe to format.
    Blank,
    /// A filesystem of this type (ext4, xfs …).
    Filesystem(String),
    /// Something else with data on it: a partition table, an LVM PV, RAID …
    Other { kind: String },
}

impl Probe {
    /// Reads `blkid -p -o export DEVICE`. Exit 2 means "nothing found".
    pub async fn device(runner: &dyn CommandRunner, device: &Path) -> Result<Probe, ExecError> {
        let cmd = Cmd::new("blkid").args(["-p", "-o", "export"]).arg(device);
        let out = runner.run(&cmd).await?;
        match out.status {
            0 => Ok(Self::parse(&out.stdout_str())),
            2 => Ok(Probe::Blank),
            status => Err(ExecError::Failed {
                cmd: cmd.to_string(),
                status,
                stderr: out.stderr_str(),
            }),
        }
    }

    /// The filesystem `fs_type` when its own superblock is on `device`,
    /// read in-process: the common case of staging a volume again, without
    /// starting blkid (the largest part of a re-stage of a raw volume).
    /// None in every other case, and then [`Self::device`] decides: only
    /// blkid may call a device blank. Finding the superblock only leads to
    /// a mount, which checks it again; nothing is formatted on its word.
    pub fn requested(device: &Path, fs_type: &str) -> Option<Probe> {
        use std::{io::Read, os::unix::fs::OpenOptionsExt};
        let mut head = [0u8; 4096];
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(device)
            .ok()?
            .read_exact(&mut head)
            .ok()?;
        superblock_is(&head, fs_type).then(|| Probe::Filesystem(fs_type.into()))
    }

    /// Parses `-o export` lines (KEY=value).
    pub fn parse(export: &str) -> Probe {
        let get = |k: &str| {
            export
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
        };
        match (get("TYPE"), get("USAGE"), get("PTTYPE")) {
            (Some(t), Some("filesystem"), _) => Probe::Filesystem(t.to_string()),
            (Some(t), _, _) => Probe::Other {
                kind: t.to_string(),
            },
            (None, _, Some(pt)) => Probe::Other {
                kind: format!("{pt} partition table"),
            },
            (None, _, None) => Probe::Blank,
        }
    }
}

/// Whether the first 4 KiB of a device hold a superblock that blkid would
/// name `fs_type`: ext4 (the ext magic with a feature only ext4 has:
/// extents, 64-bit or flex_bg, and no journal device) or xfs.
fn superblock_is(head: &[u8; 4096], fs_type: &str) -> bool {
    let le32 = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes"));
    match fs_type {
        "ext4" => {
            const SB: usize = 1024;
            let magic = u16::from_le_bytes([head[SB + 0x38], head[SB + 0x39]]);
            let incompat = le32(SB + 0x60);
            const JOURNAL_DEV: u32 = 0x8;
            const EXT4_ONLY: u32 = 0x40 | 0x80 | 0x200; // extents, 64bit, flex_bg
            magic == 0xEF53 && incompat & JOURNAL_DEV == 0 && incompat & EXT4_ONLY != 0
        }
        "xfs" => &head[..4] == b"XFSB",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_requested_filesystems_own_superblock_skips_blkid() {
        let mut ext4 = [0u8; 4096];
        ext4[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        ext4[1024 + 0x60..1024 + 0x64].copy_from_slice(&(0x2c2u32).to_le_bytes()); // mkfs.ext4's
        assert!(superblock_is(&ext4, "ext4"));
        assert!(!superblock_is(&ext4, "xfs"), "not what was asked for");
        let mut ext2 = ext4;
        ext2[1024 + 0x60..1024 + 0x64].copy_from_slice(&0x2u32.to_le_bytes()); // filetype only
        assert!(!superblock_is(&ext2, "ext4"), "ext2 is blkid's to name");
        let mut journal = ext4;
        journal[1024 + 0x60] |= 0x8;
        assert!(!superblock_is(&journal, "ext4"), "an external journal");
        let mut xfs = [0u8; 4096];
        xfs[..4].copy_from_slice(b"XFSB");
        assert!(superblock_is(&xfs, "xfs") && !superblock_is(&xfs, "ext4"));
        assert!(
            !superblock_is(&[0u8; 4096], "ext4"),
            "blank is blkid's to say"
        );
        assert!(!superblock_is(&ext4, "btrfs"));
        // On a file, as on a device; a short one is not known.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("dev");
        std::fs::write(&f, ext4).unwrap();
        assert_eq!(
            Probe::requested(&f, "ext4"),
            Some(Probe::Filesystem("ext4".into()))
        );
        std::fs::write(&f, &ext4[..2048]).unwrap();
        assert_eq!(Probe::requested(&f, "ext4"), None);
    }

    /// What the real mkfs tools write is recognised, and what blkid calls
    /// ext2 or ext3 is left to blkid.
    #[tokio::test]
    async fn real_mkfs_output_is_recognised() {
        let runner = crate::exec::real::RealRunner::default();
        let dir = tempfile::tempdir().unwrap();
        for (mkfs, wanted, found) in [
            ("mkfs.ext4", "ext4", true),
            ("mkfs.ext2", "ext4", false),
            ("mkfs.ext3", "ext4", false),
            ("mkfs.xfs", "xfs", true),
        ] {
            let f = dir.path().join(mkfs);
            std::fs::File::create(&f)
                .unwrap()
                .set_len(300 << 20)
                .unwrap();
            let cmd = Cmd::new(mkfs)
                .arg(if mkfs == "mkfs.xfs" { "-q" } else { "-qF" })
                .arg(&f);
            if let Err(e) = runner.run_ok(&cmd).await {
                return pool_csi_testkit::skip::skip(
                    mkfs,
                    &format!("needs {mkfs} (run dev/setup): {e}"),
                );
            }
            assert_eq!(Probe::requested(&f, wanted).is_some(), found, "{mkfs}");
        }
    }

    #[test]
    fn classifies_blkid_export_output() {
        let ext4 = "DEVNAME=/dev/loop0\nUUID=1c2d\nVERSION=1.0\nBLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n";
        assert_eq!(Probe::parse(ext4), Probe::Filesystem("ext4".into()));
        let pv = "DEVNAME=/dev/loop1\nUUID=abc\nVERSION=LVM2 001\nTYPE=LVM2_member\nUSAGE=raid\n";
        assert_eq!(
            Probe::parse(pv),
            Probe::Other {
                kind: "LVM2_member".into()
            }
        );
        let gpt = "DEVNAME=/dev/loop2\nPTUUID=1234\nPTTYPE=gpt\n";
        assert_eq!(
            Probe::parse(gpt),
            Probe::Other {
                kind: "gpt partition table".into()
            }
        );
        assert_eq!(Probe::parse("DEVNAME=/dev/loop3\n"), Probe::Blank);
    }
}
