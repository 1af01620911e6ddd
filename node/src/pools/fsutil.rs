//! Filesystem helpers the pools share: crash-safe renames, directory
//! syncs, JSON state files, idempotent removal, and zeroing (wipe) of
//! files and devices.

use crate::error::{io, Error, Result};
use std::{fs::File, path::Path};

/// Renames without ever replacing an existing file.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) if !to.exists() => {
            std::fs::rename(from, to).map_err(io("rename", from))
        }
        Err(rustix::io::Errno::EXIST) => Err(Error::Precondition(format!(
            "{} appeared while it was being made",
            to.display()
        ))),
        Err(e) => Err(io("rename", from)(e.into())),
    }
}

/// A JSON file's content; `None` when there is no file.
pub fn read_json<T: serde::de::DeserializeOwned>(f: &std::path::Path) -> Result<Option<T>> {
    match std::fs::read(f) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Precondition(format!("{} is corrupt: {e}", f.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", f)(e)),
    }
}

/// Replaces `f` with `value` as JSON, whole or not at all.
pub fn write_json(f: &std::path::Path, value: &impl serde::Serialize) -> Result<()> {
    let dir = f.parent().expect("state files live in a directory");
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let bytes = serde_json::to_vec_pretty(value).expect("state serialises");
    replace_file(f, &f.with_extension("json.tmp"), &bytes)
}

/// Replaces `path` with `bytes`, whole or not at all: written to `tmp`,
/// synced, renamed over `path`, and the directory synced.
pub fn replace_file(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(tmp, bytes).map_err(io("write", tmp))?;
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("sync", tmp))?;
    std::fs::rename(tmp, path).map_err(io("rename", tmp))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Removes a file, or a directory with everything in it (links inside are
/// removed, never followed). Missing is fine.
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::IsADirectory || path.is_dir() => {
            std::fs::remove_dir_all(path).map_err(io("remove", path))?;
            Ok(true)
        }
        Err(e) => Err(io("remove", path)(e)),
    }
}

/// Overwrites a whole block device with zeros and flushes it.
pub fn zero_device(dev: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(dev)?;
    let len = crate::attach::device_size(dev)?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    f.sync_all()
}

/// Overwrites every data extent of a file with zeros (holes already read as zeros).
pub fn wipe(path: &Path) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data))?.min(len);
        let mut at = data;
        while at < hole {
            let n = (hole - at).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        pos = hole;
    }
    f.sync_all()
}
