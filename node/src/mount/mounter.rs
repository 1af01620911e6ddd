//! Mount and unmount through the system calls (no mount(8) process: a bind
//! mount costs microseconds, not a fork and exec).

use rustix::mount::{MountFlags, UnmountFlags};
use std::{ffi::CString, io, path::Path};

/// A mount flag we cannot pass on.
#[derive(Debug, thiserror::Error)]
#[error("invalid mount flag {flag:?}: {why}")]
pub struct BadFlag {
    pub flag: String,
    pub why: &'static str,
}

/// Mount flags split into kernel flags and the filesystem's data string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub flags: MountFlags,
    pub data: String,
}

/// Parses CSI `mount_flags` (each may be "a,b"): generic flags become
/// MS_* bits, the rest (discard, nouuid, data=ordered …) the data string.
/// Only `[A-Za-z0-9_=.:/-]` is accepted, so a flag cannot smuggle anything.
pub fn parse_flags(mount_flags: &[String], read_only: bool) -> Result<Options, BadFlag> {
    let mut flags = MountFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for f in mount_flags
        .iter()
        .flat_map(|f| f.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        if !f
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"_=.:/-".contains(&c))
        {
            return Err(BadFlag {
                flag: f.to_string(),
                why: "unexpected character",
            });
        }
        match f {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" | "defaults" => {}
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "lazytime" => flags |= MountFlags::LAZYTIME,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "bind" | "rbind" | "remount" | "move" => {
                return Err(BadFlag {
                    flag: f.to_string(),
                    why: "not allowed for a volume mount",
                })
            }
            other => data.push(other),
        }
    }
    if read_only {
        flags |= MountFlags::RDONLY;
    }
    Ok(Options {
        flags,
        data: data.join(","),
    })
}

/// Mounts a filesystem.
pub fn mount_fs(device: &Path, target: &Path, fs_type: &str, opts: &Options) -> io::Result<()> {
    let data = CString::new(opts.data.as_str()).map_err(io::Error::other)?;
    rustix::mount::mount(device, target, fs_type, opts.flags, Some(data.as_c_str()))?;
    Ok(())
}

/// Bind-mounts `source` on `target`; read-only needs a second, remount call.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    rustix::mount::mount_bind(source, target)?;
    if read_only {
        if let Err(e) =
            rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
        {
            let _ = rustix::mount::unmount(target, UnmountFlags::empty());
            return Err(e.into());
        }
    }
    Ok(())
}

/// Unmounts `target`. Returns false when nothing was mounted there.
pub fn unmount(target: &Path) -> io::Result<bool> {
    match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn generic_flags_become_bits_and_the_rest_data() {
        let o = parse_flags(&s(&["noatime,nodev", "discard", "nouuid"]), true).unwrap();
        assert_eq!(
            o.flags,
            MountFlags::NOATIME | MountFlags::NODEV | MountFlags::RDONLY
        );
        assert_eq!(o.data, "discard,nouuid");
    }

    #[test]
    fn dangerous_flags_are_refused() {
        assert!(parse_flags(&s(&["bind"]), false).is_err());
        assert!(parse_flags(&s(&["x y"]), false).is_err());
        assert!(parse_flags(&s(&["a\0b"]), false).is_err());
        assert!(parse_flags(&s(&["context=\"x\""]), false).is_err());
    }
}
