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

#[cfg(test)]
mod tests {
    use super::*;

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
