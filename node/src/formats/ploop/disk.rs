//! A ploop disk: a directory holding `DiskDescriptor.xml`, the base image
//! `root.hds` and any deltas. Everything here works on a disk nobody has
//! open (the pool checks that); the descriptor is always replaced whole by
//! rename, after the images it names are complete, so a crash leaves either
//! the old or the new chain.

use super::{
    image::{self, Image, PloopError},
    xml::{self, Delta, Descriptor},
};
use crate::error::{io, Error, Result};
use std::path::{Path, PathBuf};

pub struct Disk {
    pub dir: PathBuf,
    pub desc: Descriptor,
}

impl From<PloopError> for Error {
    fn from(e: PloopError) -> Self {
        match e {
            PloopError::Io { op, path, source } => Error::Io { op, path, source },
            PloopError::Corrupt { path, what } => Error::Corrupt { path, why: what },
        }
    }
}

impl Disk {
    /// Reads and validates the disk at `dir`: the descriptor parses, and
    /// every image it names is a regular file (not a link) in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(xml::FILE_NAME);
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let desc = Descriptor::parse(&text).map_err(|why| Error::Corrupt {
            path: path.clone(),
            why,
        })?;
        for d in &desc.chain {
            let p = dir.join(&d.file);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_file() => {}
                Ok(_) => {
                    return Err(Error::Corrupt {
                        path: p,
                        why: "not a regular file".into(),
                    })
                }
                Err(e) => return Err(io("stat", &p)(e)),
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            desc,
        })
    }

    /// Makes an empty disk in `dir` (which must not exist).
    pub fn create(dir: &Path, name: &str, size: u64) -> Result<Self> {
        if size > image::MAX_SIZE {
            return Err(Error::OutOfRange(format!(
                "ploop images are limited to {} bytes here",
                image::MAX_SIZE
            )));
        }
        std::fs::create_dir(dir).map_err(io("create", dir))?;
        let uid = xml::new_guid().map_err(io("read", Path::new("/dev/urandom")))?;
        let disk = Self {
            dir: dir.to_path_buf(),
            desc: Descriptor::new(name, size, image::DEFAULT_CLUSTER, uid),
        };
        Image::create(&disk.image(0), size, image::DEFAULT_CLUSTER)?;
        disk.write_descriptor()?;
        Ok(disk)
    }

    /// The image file at chain position `i` (0: base).
    pub fn image(&self, i: usize) -> PathBuf {
        self.dir.join(&self.desc.chain[i].file)
    }

    pub fn images(&self) -> Vec<PathBuf> {
        (0..self.desc.chain.len()).map(|i| self.image(i)).collect()
    }

    /// The guest-visible size: the top image's header is authoritative
    /// (growth writes it before the descriptor).
    pub fn size(&self) -> Result<u64> {
        let top = Image::open(&self.image(self.desc.chain.len() - 1), false)?;
        Ok(top.header.size())
    }

    /// Opens every image once, so any corrupt header or BAT shows here;
    /// returns the disk's size (the top's).
    pub fn check(&self) -> Result<u64> {
        let mut size = 0;
        for p in self.images() {
            size = Image::open(&p, false)?.header.size();
        }
        Ok(size)
    }

    /// Brings every image's header in line with what the ploop tools
    /// check (qemu leaves the empty flag set after writing data). For a
    /// disk nobody has open.
    pub fn settle(&self) -> Result<()> {
        for p in self.images() {
            Image::open(&p, true)?.settle()?;
        }
        Ok(())
    }

    pub fn allocated_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| crate::copy::allocated_bytes(&m))
            .sum()
    }

    /// Replaces DiskDescriptor.xml atomically.
    pub fn write_descriptor(&self) -> Result<()> {
        let path = self.dir.join(xml::FILE_NAME);
        let tmp = self.dir.join(".DiskDescriptor.xml.tmp");
        crate::fsutil::replace_file(&path, &tmp, self.desc.render().as_bytes())
    }

    /// Grows the disk to `size` (the top image's BAT and header, then the descriptor).
    pub fn grow(&mut self, size: u64) -> Result<()> {
        if size > image::MAX_SIZE {
            return Err(Error::OutOfRange(format!(
                "ploop images are limited to {} bytes here",
                image::MAX_SIZE
            )));
        }
        let top = self.image(self.desc.chain.len() - 1);
        Image::open(&top, true)?.grow(size)?;
        self.desc.size_sectors = self.desc.size_sectors.max(size.div_ceil(512));
        self.write_descriptor()
    }

    /// Puts a new, empty delta of `size` bytes on top; the old top becomes
    /// read-only history. Returns the new delta's GUID.
    pub fn push_delta(&mut self, size: u64) -> Result<String> {
        let guid = xml::new_guid().map_err(io("read", Path::new("/dev/urandom")))?;
        let file = xml::delta_file(&guid);
        let path = self.dir.join(&file);
        let cluster = u64::from(self.desc.cluster_sectors) * 512;
        Image::create(&path, size, cluster)?;
        self.desc.chain.push(Delta {
            guid: guid.clone(),
            file,
        });
        self.desc.size_sectors = self.desc.size_sectors.max(size.div_ceil(512));
        if let Err(e) = self.write_descriptor() {
            self.desc.chain.pop();
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(guid)
    }

    /// Removes delta `i` (not the top) from the chain, merging it with its
    /// child so every other layer reads the same as before. The smaller of
    /// the two is copied into the larger; the merged image takes the child's
    /// GUID and place. Idempotent after a crash: the descriptor changes only
    /// once the merged image is complete, and the leftover file goes last.
    pub fn merge_into_child(&mut self, i: usize) -> Result<()> {
        let n = self.desc.chain.len();
        if i + 1 >= n {
            return Err(Error::Precondition(
                "the top image cannot be merged away".into(),
            ));
        }
        let (lower_p, upper_p) = (self.image(i), self.image(i + 1));
        let lower = Image::open(&lower_p, false)?;
        let upper = Image::open(&upper_p, false)?;
        // Writing into the lower image changes what it reads as, which only
        // layer i itself sees — and layer i is what goes away.
        let into_lower = lower.allocated_clusters() > upper.allocated_clusters();
        let leftover = if into_lower {
            drop(lower);
            let mut l = Image::open(&lower_p, true)?;
            l.take_clusters(&upper, true)?;
            self.desc.chain[i + 1].file = self.desc.chain[i].file.clone();
            upper_p
        } else {
            drop(upper);
            let mut u = Image::open(&upper_p, true)?;
            u.take_clusters(&lower, false)?;
            lower_p
        };
        self.desc.chain.remove(i);
        self.write_descriptor()?;
        match std::fs::remove_file(&leftover) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &leftover)(e)),
            _ => Ok(()),
        }
    }

    /// Writes the disk as seen through chain positions `0..=upto` into a new
    /// single-image disk at `dst` (must not exist), at least `size` bytes.
    pub fn flatten_into(&self, upto: usize, dst: &Path, name: &str, size: u64) -> Result<Disk> {
        std::fs::create_dir(dst).map_err(io("create", dst))?;
        let chain: Vec<PathBuf> = (0..=upto).map(|i| self.image(i)).collect();
        let out = dst.join(xml::BASE_IMAGE);
        let size = image::flatten(&chain, &out, size)?;
        let uid = xml::new_guid().map_err(io("read", Path::new("/dev/urandom")))?;
        let disk = Disk {
            dir: dst.to_path_buf(),
            desc: Descriptor::new(name, size, u64::from(self.desc.cluster_sectors) * 512, uid),
        };
        disk.write_descriptor()?;
        Ok(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Disks the real ploop tool made (tests/fixtures/commands/ploop,
    /// recorded by its record.sh): their images pass this crate's check,
    /// and a snapshot's chain reads as two layers of the same size.
    #[test]
    fn disks_the_ploop_tool_made_open_and_check() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/commands/ploop");
        for (name, layers) in [("init_64M", 1), ("snapshot_64M", 2)] {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            for e in std::fs::read_dir(fixtures.join(name)).unwrap().flatten() {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
            let d = Disk::open(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(d.desc.chain.len(), layers, "{name}");
            assert_eq!(d.size().unwrap(), 64 << 20, "{name}");
            d.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_chain_merges_and_flattens_keeping_every_layer() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("v.ploop");
        let mut d = Disk::create(&dir, "v", 8 << 20).unwrap();
        assert_eq!(d.size().unwrap(), 8 << 20);
        let g1 = d.push_delta(8 << 20).unwrap();
        let g2 = d.push_delta(16 << 20).unwrap(); // growth on top
        assert_eq!(d.desc.chain.len(), 3);
        assert_eq!(d.size().unwrap(), 16 << 20);
        let reopened = Disk::open(&dir).unwrap();
        assert_eq!(reopened.desc, d.desc);
        d.merge_into_child(1).unwrap();
        assert_eq!(d.desc.chain.len(), 2);
        assert_eq!(d.desc.top().guid, g2);
        assert!(d.desc.position(&g1).is_none());
        assert_eq!(Disk::open(&dir).unwrap().desc, d.desc);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            3,
            "descriptor + 2 images"
        );
        let flat = t.path().join("f.ploop");
        let f = d.flatten_into(1, &flat, "f", 0).unwrap();
        assert_eq!(f.size().unwrap(), 16 << 20);
        let e = d.merge_into_child(1).unwrap_err();
        assert!(matches!(e, Error::Precondition(_)), "the top stays: {e}");
    }
}
