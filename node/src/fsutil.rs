//! File and device helpers every layer uses (pools, formats, attach, ops):
//! crash-safe renames and replacements, directory syncs, JSON state files,
//! idempotent removal, device size and identity, and the one chunked loop
//! that zeroes and copies byte ranges (wipes, preallocation, block copies).

use crate::error::{io, Error, Result};
use std::{fs::File, os::unix::fs::FileExt, path::Path};

/// The unit of every chunked zero or copy: big enough to stream, small
/// enough to keep memory flat.
const CHUNK: usize = 1 << 20;

/// Renames without ever replacing an existing file, also where other hosts
/// make names in the same directory (a netfs share). Filesystems without
/// RENAME_NOREPLACE (NFS) get what is atomic there: a file is hard-linked
/// to its new name (EEXIST if taken) and its old name removed; a directory
/// (never empty when pool-csi renames one) is renamed, which fails onto a
/// non-empty directory.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let appeared =
        || Error::Precondition(format!("{} appeared while it was being made", to.display()));
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => {
            let is_dir = std::fs::symlink_metadata(from).is_ok_and(|m| m.is_dir());
            if !is_dir {
                match std::fs::hard_link(from, to) {
                    Ok(()) => return std::fs::remove_file(from).map_err(io("remove", from)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(appeared())
                    }
                    Err(_) => {} // no hard links here either
                }
            }
            if to.exists() {
                return Err(appeared());
            }
            let taken = [rustix::io::Errno::NOTEMPTY, rustix::io::Errno::EXIST]
                .map(|e| Some(e.raw_os_error()));
            match std::fs::rename(from, to) {
                Err(e) if taken.contains(&e.raw_os_error()) => Err(appeared()),
                r => r.map_err(io("rename", from)),
            }
        }
        Err(rustix::io::Errno::EXIST) => Err(appeared()),
        Err(e) => Err(io("rename", from)(e.into())),
    }
}

/// A JSON file's content; `None` when there is no file.
pub fn read_json<T: serde::de::DeserializeOwned>(f: &std::path::Path) -> Result<Option<T>> {
    match std::fs::read(f) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path: f.into(),
                why: e.to_string(),
            }),
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
    write_new(tmp, bytes, 0o644)?;
    std::fs::rename(tmp, path).map_err(io("rename", tmp))?;
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

/// Writes `bytes` to a new file `path` and syncs it. Whatever was at
/// `path` is removed first and the file made with O_EXCL, so a symbolic
/// link planted there (on a share other hosts write to) is never followed.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", path)(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(bytes).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

/// What kind of filesystem holds `dir`, by its statfs magic (the low 32
/// bits, as the kernel defines them); `None` when it cannot be asked.
pub fn filesystem_of(dir: &Path) -> Option<FsKind> {
    const TMPFS: u64 = 0x0102_1994;
    const RAMFS: u64 = 0x8584_58F6;
    // ext2/3/4, xfs, btrfs, zfs, f2fs.
    const DISK: [u64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x2FC1_2FC1, 0xF2F5_2010];
    let magic = rustix::fs::statfs(dir).ok()?.f_type as u64 & 0xffff_ffff;
    Some(match magic {
        TMPFS | RAMFS => FsKind::Memory,
        m if DISK.contains(&m) => FsKind::LocalDisk,
        m => FsKind::Other(m),
    })
}

/// See [`filesystem_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// tmpfs or ramfs: local, and fsync does nothing.
    Memory,
    /// A local disk filesystem only this machine changes.
    LocalDisk,
    /// Anything else (NFS, CIFS, FUSE …): other machines may change it.
    Other(u64),
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

/// Writes zeros over `[start, end)` of `f` (not synced).
pub fn zero_range(f: &File, start: u64, end: u64) -> std::io::Result<()> {
    zero_range_noted(f, start, end, &mut Progress::quiet())
}

fn zero_range_noted(f: &File, start: u64, end: u64, p: &mut Progress) -> std::io::Result<()> {
    let zeros = vec![0u8; CHUNK.min(end.saturating_sub(start) as usize)];
    for_each_chunk(start, end, |at, n| {
        f.write_all_at(&zeros[..n], at)?;
        p.advance(n as u64);
        Ok(())
    })
}

/// Copies `[start, end)` of `src` to the same offsets of `dst` (not synced).
pub fn copy_range(src: &File, dst: &File, start: u64, end: u64) -> std::io::Result<()> {
    copy_range_noted(src, dst, start, end, &mut Progress::quiet())
}

fn copy_range_noted(
    src: &File,
    dst: &File,
    start: u64,
    end: u64,
    p: &mut Progress,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min(end.saturating_sub(start) as usize)];
    for_each_chunk(start, end, |at, n| {
        src.read_exact_at(&mut buf[..n], at)?;
        dst.write_all_at(&buf[..n], at)?;
        p.advance(n as u64);
        Ok(())
    })
}

/// Calls `step(offset, len)` for consecutive chunks covering `[start, end)`.
fn for_each_chunk(
    start: u64,
    end: u64,
    mut step: impl FnMut(u64, usize) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut at = start;
    while at < end {
        let n = (end - at).min(CHUNK as u64) as usize;
        step(at, n)?;
        at += n as u64;
    }
    Ok(())
}

/// How far a long copy or wipe got, logged every 10 s so an operator sees
/// it move (these run past the RPC that started them).
pub struct Progress {
    what: Option<String>,
    total: u64,
    done: u64,
    last: std::time::Instant,
}

impl Progress {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Progress of `what` (e.g. "copying /a to /b") over `total` bytes.
    pub fn new(what: String, total: u64) -> Self {
        Self {
            what: Some(what),
            total,
            done: 0,
            last: std::time::Instant::now(),
        }
    }

    fn quiet() -> Self {
        Self {
            what: None,
            total: 0,
            done: 0,
            last: std::time::Instant::now(),
        }
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        let Some(what) = &self.what else { return };
        if self.last.elapsed() >= Self::EVERY {
            self.last = std::time::Instant::now();
            let percent = (self.done * 100).checked_div(self.total).unwrap_or(100);
            tracing::info!(
                done_bytes = self.done,
                total_bytes = self.total,
                "{what}: {percent}%"
            );
        }
    }
}

/// Overwrites a whole block device with zeros and flushes it.
pub fn zero_device(dev: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(dev)?;
    let size = device_size(dev)?;
    let mut p = Progress::new(format!("zeroing {}", dev.display()), size);
    zero_range_noted(&f, 0, size, &mut p)?;
    f.sync_all()
}

/// Zeroes the first and last `len` bytes of a device (where every common
/// signature lives) and flushes it.
pub fn zero_ends(dev: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(dev)?;
    let size = device_size(dev)?;
    let len = len.min(size);
    zero_range(&f, 0, len)?;
    zero_range(&f, size - len, size)?;
    f.sync_all()
}

/// Copies a whole block device onto another of at least its size, and
/// flushes the destination.
pub fn copy_device(from: &Path, to: &Path) -> std::io::Result<()> {
    let src = open_uncached(from)?;
    let dst = std::fs::OpenOptions::new().write(true).open(to)?;
    let size = device_size(from)?;
    let what = format!("copying {} to {}", from.display(), to.display());
    copy_range_noted(&src, &dst, 0, size, &mut Progress::new(what, size))?;
    dst.sync_all()
}

/// Copies the first `len` bytes of block device `from` onto `to`, which
/// is zeroed first (a discard-like `fallocate` where the device supports it,
/// else written zeros); chunks that read as zeros are then not written, so
/// copying a mostly empty volume onto thin storage stays thin. Flushed.
pub fn copy_device_sparse(from: &Path, to: &Path, len: u64) -> std::io::Result<()> {
    use rustix::fs::FallocateFlags;
    let src = open_uncached(from)?;
    let dst = std::fs::OpenOptions::new().write(true).open(to)?;
    let size = device_size(to)?;
    if len > size {
        return Err(std::io::Error::other(format!(
            "{} holds {size} bytes, {len} needed",
            to.display()
        )));
    }
    let zeroed = rustix::fs::fallocate(
        &dst,
        FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
        0,
        size,
    );
    if zeroed.is_err() {
        zero_range(&dst, 0, size)?;
    }
    let what = format!("copying {} to {}", from.display(), to.display());
    let mut p = Progress::new(what, len);
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    for_each_chunk(0, len, |at, n| {
        src.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], at)?;
        }
        p.advance(n as u64);
        Ok(())
    })?;
    dst.sync_all()
}

/// Overwrites every data extent of a file with zeros (holes already read as zeros).
pub fn wipe(path: &Path) -> std::io::Result<()> {
    use rustix::fs::SeekFrom;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let mut p = Progress::new(format!("zeroing {}", path.display()), len);
    let mut pos = 0;
    while pos < len {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data))?.min(len);
        p.advance(data - pos);
        zero_range_noted(&f, data, hole, &mut p)?;
        pos = hole;
    }
    f.sync_all()
}

/// Opens a block device to read what is on it now: a mounted filesystem
/// writes past the device's page cache, so pages cached by an earlier read
/// (a previous copy, blkid) may be stale; they are dropped first.
fn open_uncached(dev: &Path) -> std::io::Result<File> {
    let f = File::open(dev)?;
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(f)
}

/// Size of a block device (or any file) in bytes.
pub fn device_size(dev: &Path) -> std::io::Result<u64> {
    let f = File::open(dev)?;
    Ok(rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0))?)
}

/// Whether two paths name the same block device: `/dev/VG/LV` and
/// `/dev/mapper/VG-LV` are both links to `/dev/dm-N`, so compare what they
/// resolve to, and failing that, the device numbers.
pub fn is_same_device(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    if let (Ok(x), Ok(y)) = (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        if x == y {
            return true;
        }
    }
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => {
            x.file_type().is_block_device()
                && y.file_type().is_block_device()
                && x.rdev() == y.rdev()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_planted_at_a_temp_name_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let tmp = t.path().join("state.json.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        replace_file(&t.path().join("state.json"), &tmp, b"{}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(t.path().join("state.json")).unwrap(), b"{}");
    }

    #[test]
    fn links_to_one_device_are_the_same_device() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("dm-3"), dir.path().join("vg-lv"));
        std::fs::write(&a, b"").unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        assert!(is_same_device(&a, &b));
        assert!(is_same_device(&b, &b));
        let c = dir.path().join("other");
        std::fs::write(&c, b"").unwrap();
        assert!(
            !is_same_device(&a, &c),
            "two regular files are not one device"
        );
        assert!(is_same_device(
            Path::new("/dev/null"),
            Path::new("/dev/null")
        ));
    }

    #[test]
    fn chunked_zero_and_copy_cover_exactly_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let len = 3 * CHUNK as u64 + 5;
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&a, &pattern).unwrap();
        std::fs::write(&b, vec![0xffu8; len as usize]).unwrap();
        let (fa, fb) = (
            File::open(&a).unwrap(),
            std::fs::OpenOptions::new().write(true).open(&b).unwrap(),
        );
        copy_range(&fa, &fb, 7, len - 3).unwrap();
        let got = std::fs::read(&b).unwrap();
        assert_eq!(&got[..7], &[0xff; 7]);
        assert_eq!(&got[7..(len - 3) as usize], &pattern[7..(len - 3) as usize]);
        assert_eq!(&got[(len - 3) as usize..], &[0xff; 3]);
        zero_range(&fb, 1, CHUNK as u64 + 2).unwrap();
        let got = std::fs::read(&b).unwrap();
        assert_eq!(got[0], 0xff);
        assert!(got[1..CHUNK + 2].iter().all(|&x| x == 0));
        assert_eq!(got[CHUNK + 2], pattern[CHUNK + 2]);
    }
}
