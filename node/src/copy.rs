//! Copying volume files: a reflink (FICLONE) where the filesystem shares
//! extents (btrfs, xfs with reflink), otherwise a sparse-aware copy that only
//! moves the data extents (SEEK_DATA / SEEK_HOLE + copy_file_range), so a
//! 1 TiB sparse volume with 1 GiB written copies 1 GiB.

use rustix::fs::SeekFrom;
use std::{
    fs::{File, OpenOptions},
    io,
    path::Path,
};

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    Reflink,
    Sparse,
}

/// Copies `src` to a new file `dst` (which must not exist). On error the
/// partial `dst` is left for the caller to remove (it owns the temp path).
pub fn copy_file(src: &Path, dst: &Path) -> io::Result<CopyKind> {
    let from = File::open(src)?;
    let to = OpenOptions::new().write(true).create_new(true).open(dst)?;
    if rustix::fs::ioctl_ficlone(&to, &from).is_ok() {
        return Ok(CopyKind::Reflink);
    }
    let len = from.metadata()?.len();
    to.set_len(len)?;
    let what = format!("copying {} to {}", src.display(), dst.display());
    let mut progress = crate::fsutil::Progress::new(what, len);
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&from, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(&from, SeekFrom::Hole(data))?.min(len);
        progress.advance(data - pos);
        copy_range(&from, &to, data, hole, &mut progress)?;
        pos = hole;
    }
    Ok(CopyKind::Sparse)
}

fn copy_range(
    from: &File,
    to: &File,
    start: u64,
    end: u64,
    progress: &mut crate::fsutil::Progress,
) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let chunk = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let n =
            rustix::fs::copy_file_range(from, Some(&mut off_in), to, Some(&mut off_out), chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source shrank during copy",
            ));
        }
        progress.advance(n as u64);
    }
    Ok(())
}

/// Bytes the file really occupies on disk.
pub fn allocated_bytes(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, os::unix::fs::FileExt};

    #[test]
    fn copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        copy_file(&src, &dst).unwrap();
        let got = std::fs::read(&dst).unwrap();
        assert_eq!(got, std::fs::read(&src).unwrap());
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            allocated_bytes(&meta) < 4 << 20,
            "copy is not sparse: {}",
            allocated_bytes(&meta)
        );
    }

    #[test]
    fn copy_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        File::create(&a).unwrap().write_all(b"a").unwrap();
        File::create(&b).unwrap().write_all(b"keep").unwrap();
        let e = copy_file(&a, &b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read(&b).unwrap(), b"keep");
    }
}
