//! ploop images (the Parallels/OpenVZ "expandable" format, v2), read and
//! written directly: qemu-img can make but not grow them, and the `ploop`
//! tool needs its kernel module.
//!
//! ```text
//! offset 0   header, 64 bytes, little-endian:
//!            magic "WithouFreSpacExt" | version=2 | heads | cylinders |
//!            cluster size in sectors | BAT entries | size in sectors (u64) |
//!            in-use | first data sector | flags | extension offset (u64)
//! offset 64  BAT: one u32 per cluster of the disk, the data cluster's index
//!            in the file (offset = index × cluster size), 0 = unallocated
//! data_off   data clusters (data_off is cluster-aligned)
//! ```
//! A delta (snapshot layer) is an image of the same shape whose unallocated
//! clusters read through to the image below it.
//!
//! Every change is ordered so that a crash leaves a valid image: data is
//! written and synced before the BAT entries that point at it, and the header
//! (which says how big the BAT and the disk are) is written last.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

pub const MAGIC_V2: &[u8; 16] = b"WithouFreSpacExt";
/// The v1 magic (32-bit sizes); read, never written.
pub const MAGIC_V1: &[u8; 16] = b"WithoutFreeSpace";
const HEADER_LEN: u64 = 64;
const SECTOR: u64 = 512;
/// ploop's and qemu's default cluster: 1 MiB.
pub const DEFAULT_CLUSTER: u64 = 1 << 20;
/// Header flag: the image holds no data clusters. The ploop tools insist
/// it is right (`ploop check`); qemu neither reads nor maintains it.
pub const CIF_EMPTY: u32 = 1;
/// Largest image this code writes (BAT indexes are u32; 64 TiB at 1 MiB clusters
/// keeps the BAT at 256 KiB).
pub const MAX_SIZE: u64 = 64 << 40;

/// What is wrong with an image, for the volume's condition and errors.
#[derive(Debug, thiserror::Error)]
pub enum PloopError {
    #[error("{path}: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, PloopError>;

fn ioe<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PloopError + 'a {
    move |source| PloopError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The header fields this driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub cluster_sectors: u32,
    pub bat_entries: u32,
    pub size_sectors: u64,
    /// First data sector.
    pub data_off: u32,
    /// Non-zero while qemu or the ploop module has the image open for writing.
    pub in_use: u32,
    /// [`CIF_EMPTY`] and any flags another writer set (kept as found).
    pub flags: u32,
}

impl Header {
    pub fn for_size(size: u64, cluster: u64) -> Self {
        let cluster_sectors = (cluster / SECTOR) as u32;
        let bat_entries = size.div_ceil(cluster) as u32;
        Self {
            cluster_sectors,
            bat_entries,
            size_sectors: size.div_ceil(SECTOR),
            data_off: data_off_for(bat_entries, cluster),
            in_use: 0,
            flags: CIF_EMPTY,
        }
    }

    pub fn size(&self) -> u64 {
        self.size_sectors * SECTOR
    }

    pub fn cluster(&self) -> u64 {
        u64::from(self.cluster_sectors) * SECTOR
    }

    fn data_start(&self) -> u64 {
        u64::from(self.data_off) * SECTOR
    }

    fn encode(&self) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[..16].copy_from_slice(MAGIC_V2);
        let mut put = |at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put(16, 2); // version
        put(20, 16); // heads
        put(
            24,
            (self.size_sectors / 16 / 32).min(u64::from(u32::MAX)) as u32,
        ); // cylinders
        put(28, self.cluster_sectors);
        put(32, self.bat_entries);
        put(44, self.in_use);
        put(48, self.data_off);
        put(52, self.flags);
        h[36..44].copy_from_slice(&self.size_sectors.to_le_bytes());
        h
    }

    /// Parses and checks a header; `file_len` bounds what it may claim.
    pub fn decode(h: &[u8; 64], file_len: u64) -> std::result::Result<Self, String> {
        let v1 = &h[..16] == MAGIC_V1;
        if &h[..16] != MAGIC_V2 && !v1 {
            return Err("not a ploop image (bad signature)".into());
        }
        let get = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
        if get(16) != 2 {
            return Err(format!("unsupported ploop header version {}", get(16)));
        }
        let size_sectors = if v1 {
            u64::from(get(36))
        } else {
            u64::from_le_bytes(h[36..44].try_into().expect("8 bytes"))
        };
        let hd = Self {
            cluster_sectors: get(28),
            bat_entries: get(32),
            size_sectors,
            data_off: get(48),
            in_use: get(44),
            flags: get(52),
        };
        let cluster = hd.cluster();
        if cluster == 0 || !cluster.is_power_of_two() || cluster > (64 << 20) {
            return Err(format!("invalid cluster size {cluster} bytes"));
        }
        if hd.size() > u64::from(hd.bat_entries) * cluster {
            return Err(format!(
                "the BAT ({} entries) does not cover the disk size ({} bytes)",
                hd.bat_entries,
                hd.size()
            ));
        }
        if hd.data_start() < HEADER_LEN + 4 * u64::from(hd.bat_entries)
            || !hd.data_start().is_multiple_of(cluster)
        {
            return Err(format!("invalid first data sector {}", hd.data_off));
        }
        if hd.data_start() > file_len {
            return Err(format!(
                "the image is truncated: {file_len} bytes, its BAT ends at {}",
                hd.data_start()
            ));
        }
        Ok(hd)
    }
}

/// First data sector for a BAT of `entries`: header + BAT, rounded up to a cluster.
fn data_off_for(entries: u32, cluster: u64) -> u32 {
    let bytes = (HEADER_LEN + 4 * u64::from(entries)).div_ceil(cluster) * cluster;
    (bytes / SECTOR) as u32
}

/// An open image: its header and BAT in memory.
pub struct Image {
    path: PathBuf,
    file: File,
    pub header: Header,
    bat: Vec<u32>,
}

impl Image {
    /// Opens and validates an image (read-only unless `write`).
    pub fn open(path: &Path, write: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(ioe("open", path))?;
        let len = file.metadata().map_err(ioe("stat", path))?.len();
        let corrupt = |what: String| PloopError::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let mut h = [0u8; 64];
        if len < HEADER_LEN {
            return Err(corrupt(format!(
                "the header is truncated ({len} of 64 bytes)"
            )));
        }
        file.read_exact_at(&mut h, 0)
            .map_err(ioe("read header of", path))?;
        let header = Header::decode(&h, len).map_err(corrupt)?;
        let mut raw = vec![0u8; 4 * header.bat_entries as usize];
        file.read_exact_at(&mut raw, HEADER_LEN)
            .map_err(ioe("read BAT of", path))?;
        let bat: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let (first, clusters) = (
            header.data_start() / header.cluster(),
            len.div_ceil(header.cluster()),
        );
        if let Some((i, b)) = bat
            .iter()
            .enumerate()
            .find(|(_, &b)| b != 0 && (u64::from(b) < first || u64::from(b) >= clusters))
        {
            return Err(corrupt(format!(
                "BAT entry {i} points at cluster {b}, outside the data area"
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            header,
            bat,
        })
    }

    /// Writes a new, empty image of `size` bytes at `path` (must not exist).
    pub fn create(path: &Path, size: u64, cluster: u64) -> Result<()> {
        let header = Header::for_size(size, cluster);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(ioe("create", path))?;
        // Header and BAT clusters are written out in full: the ploop tools
        // reject an image with holes (`ploop check`: "image is sparse").
        let mut head = vec![0u8; header.data_start() as usize];
        head[..64].copy_from_slice(&header.encode());
        file.write_all_at(&head, 0).map_err(ioe("write", path))?;
        file.sync_all().map_err(ioe("sync", path))
    }

    /// The [`CIF_EMPTY`] bit as the ploop tools compute it: set while the
    /// file ends with its BAT (no data cluster referenced or present).
    fn empty_bit(&self, h: &Header) -> Result<u32> {
        let cluster = h.cluster();
        let bat_end = h.data_start() / cluster;
        let referenced = self.bat.iter().map(|&b| u64::from(b) + 1).max();
        let in_file = self.cluster_count_in_file()?;
        let head = referenced.unwrap_or(0).max(in_file);
        Ok(if head > bat_end { 0 } else { CIF_EMPTY })
    }

    /// Writes zeros into every hole of the file (what reads as zeros stays
    /// zeros). qemu allocates clusters by extending the file and leaves the
    /// unwritten part of a cluster sparse; the ploop tools refuse such an
    /// image. Returns the bytes filled.
    fn fill_holes(&mut self) -> Result<u64> {
        use rustix::fs::{seek, SeekFrom};
        let len = self.file.metadata().map_err(ioe("stat", &self.path))?.len();
        let (mut pos, mut filled) = (0, 0);
        let zeros = vec![0u8; 1 << 20];
        while pos < len {
            let hole = seek(&self.file, SeekFrom::Hole(pos))
                .map_err(|e| ioe("seek in", &self.path)(e.into()))?;
            if hole >= len {
                break;
            }
            let data = match seek(&self.file, SeekFrom::Data(hole)) {
                Ok(d) => d.min(len),
                Err(rustix::io::Errno::NXIO) => len,
                Err(e) => return Err(ioe("seek in", &self.path)(e.into())),
            };
            let mut at = hole;
            while at < data {
                let n = (data - at).min(zeros.len() as u64) as usize;
                self.file
                    .write_all_at(&zeros[..n], at)
                    .map_err(ioe("write", &self.path))?;
                at += n as u64;
            }
            filled += data - hole;
            pos = data;
        }
        if filled > 0 {
            self.sync()?;
        }
        Ok(filled)
    }

    /// Brings the image in line with what the ploop tools check, after qemu
    /// wrote to it: no holes, and the empty flag as the content says (qemu
    /// leaves it as it was). Returns whether anything changed.
    pub fn settle(&mut self) -> Result<bool> {
        let filled = self.fill_holes()?;
        let mut h = self.header;
        h.flags = (h.flags & !CIF_EMPTY) | self.empty_bit(&h)?;
        if h == self.header {
            return Ok(filled > 0);
        }
        self.write_header(h)?;
        Ok(true)
    }

    /// Clusters that hold data in this image.
    pub fn allocated_clusters(&self) -> usize {
        self.bat.iter().filter(|&&b| b != 0).count()
    }

    fn cluster_count_in_file(&self) -> Result<u64> {
        let len = self.file.metadata().map_err(ioe("stat", &self.path))?.len();
        Ok(len.div_ceil(self.header.cluster()))
    }

    fn read_cluster(&self, index: u32, buf: &mut [u8]) -> Result<()> {
        let at = u64::from(index) * self.header.cluster();
        // The last cluster of a file may be short: what is missing reads as zeros.
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], at + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ioe("read", &self.path)(e)),
            }
        }
        Ok(())
    }

    fn write_bat_entry(&mut self, i: usize, value: u32) -> Result<()> {
        self.file
            .write_all_at(&value.to_le_bytes(), HEADER_LEN + 4 * i as u64)
            .map_err(ioe("write BAT of", &self.path))?;
        self.bat[i] = value;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.file.sync_all().map_err(ioe("sync", &self.path))
    }

    /// Writes `h` (with the empty flag as the content says) and syncs.
    fn write_header(&mut self, mut h: Header) -> Result<()> {
        h.flags = (h.flags & !CIF_EMPTY) | self.empty_bit(&h)?;
        self.file
            .write_all_at(&h.encode(), 0)
            .map_err(ioe("write header of", &self.path))?;
        self.header = h;
        self.sync()
    }

    /// Grows the disk to `size` bytes, keeping every byte of data. When the
    /// bigger BAT needs clusters that hold data, those clusters move to the
    /// end of the file first (copied and synced, then re-pointed).
    pub fn grow(&mut self, size: u64) -> Result<()> {
        let old = self.header;
        if size <= old.size() {
            return Ok(());
        }
        let cluster = old.cluster();
        let mut new = Header::for_size(size, cluster);
        new.in_use = old.in_use;
        new.flags = old.flags;
        let (old_first, new_first) = (old.data_start() / cluster, new.data_start() / cluster);
        let first_free = self.cluster_count_in_file()?.max(new_first);
        let mut buf = vec![0u8; cluster as usize];
        let in_the_way: Vec<usize> = (0..self.bat.len())
            .filter(|&i| (old_first..new_first).contains(&u64::from(self.bat[i])))
            .collect();
        for (end, &i) in (first_free..).zip(&in_the_way) {
            self.read_cluster(self.bat[i], &mut buf)?;
            self.file
                .write_all_at(&buf, end * cluster)
                .map_err(ioe("write", &self.path))?;
            self.sync()?;
            let to = u32::try_from(end).map_err(|_| PloopError::Corrupt {
                path: self.path.clone(),
                what: "the image would exceed 2^32 clusters".into(),
            })?;
            self.write_bat_entry(i, to)?;
            self.sync()?;
        }
        // Zero the new BAT slots (they may cover clusters that held data).
        let from = HEADER_LEN + 4 * u64::from(old.bat_entries);
        let to = new.data_start();
        let zeros = vec![0u8; (to - from) as usize];
        self.file
            .write_all_at(&zeros, from)
            .map_err(ioe("write BAT of", &self.path))?;
        let len = self.file.metadata().map_err(ioe("stat", &self.path))?.len();
        if len < to {
            self.file.set_len(to).map_err(ioe("size", &self.path))?;
        }
        self.sync()?;
        self.bat.resize(new.bat_entries as usize, 0);
        self.write_header(new)
    }

    /// Copies the clusters of `src` into this image: all of them when
    /// `overwrite` (src is the upper layer), else only where this image has
    /// none (src is the lower layer). Data first, synced, then the BAT.
    pub fn take_clusters(&mut self, src: &Image, overwrite: bool) -> Result<()> {
        if src.header.cluster() != self.header.cluster() {
            return Err(PloopError::Corrupt {
                path: src.path.clone(),
                what: format!(
                    "cluster size {} differs from {}'s {}",
                    src.header.cluster(),
                    self.path.display(),
                    self.header.cluster()
                ),
            });
        }
        if src.header.size() > self.header.size() {
            self.grow(src.header.size())?;
        }
        let cluster = self.header.cluster();
        let mut end = self
            .cluster_count_in_file()?
            .max(self.header.data_start() / cluster);
        let mut buf = vec![0u8; cluster as usize];
        let mut new_entries = Vec::new();
        for (i, &s) in src.bat.iter().enumerate() {
            if s == 0 || (self.bat[i] != 0 && !overwrite) {
                continue;
            }
            src.read_cluster(s, &mut buf)?;
            let at = if self.bat[i] != 0 {
                u64::from(self.bat[i])
            } else {
                new_entries.push((i, end as u32));
                end += 1;
                end - 1
            };
            self.file
                .write_all_at(&buf, at * cluster)
                .map_err(ioe("write", &self.path))?;
        }
        self.sync()?;
        for (i, at) in new_entries {
            self.write_bat_entry(i, at)?;
        }
        self.sync()?;
        self.write_header(self.header)
    }

    /// The data of cluster `i` of the disk seen through `chain` (lowest
    /// first): the topmost image that has it wins. None: reads as zeros.
    fn chain_cluster(chain: &[Image], i: usize, buf: &mut [u8]) -> Result<bool> {
        for img in chain.iter().rev() {
            if let Some(&b) = img.bat.get(i).filter(|&&b| b != 0) {
                img.read_cluster(b, buf)?;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Writes the disk seen through `chain` (lowest first) as one new image at
/// `out` (must not exist), skipping clusters of zeros. The new image has the
/// top's size, or `size` if larger.
pub fn flatten(chain: &[PathBuf], out: &Path, size: u64) -> Result<u64> {
    let images = chain
        .iter()
        .map(|p| Image::open(p, false))
        .collect::<Result<Vec<_>>>()?;
    let top = images.last().ok_or_else(|| PloopError::Corrupt {
        path: out.to_path_buf(),
        what: "empty delta chain".into(),
    })?;
    let cluster = top.header.cluster();
    if let Some(odd) = images.iter().find(|i| i.header.cluster() != cluster) {
        return Err(PloopError::Corrupt {
            path: odd.path.clone(),
            what: "deltas of one disk differ in cluster size".into(),
        });
    }
    let size = size.max(top.header.size());
    Image::create(out, size, cluster)?;
    let mut dst = Image::open(out, true)?;
    let mut buf = vec![0u8; cluster as usize];
    let mut end = dst.header.data_start() / cluster;
    let mut entries = Vec::new();
    for i in 0..top.header.bat_entries as usize {
        if !Image::chain_cluster(&images, i, &mut buf)? || buf.iter().all(|&b| b == 0) {
            continue;
        }
        dst.file
            .write_all_at(&buf, end * cluster)
            .map_err(ioe("write", out))?;
        entries.push((i, end as u32));
        end += 1;
    }
    dst.sync()?;
    for (i, at) in entries {
        dst.write_bat_entry(i, at)?;
    }
    dst.sync()?;
    dst.write_header(dst.header)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_at(path: &Path, at: u64, data: &[u8]) {
        // Writes through the format: allocate the cluster at the end.
        let mut img = Image::open(path, true).unwrap();
        let cluster = img.header.cluster();
        let i = (at / cluster) as usize;
        let mut buf = vec![0u8; cluster as usize];
        if img.bat[i] != 0 {
            img.read_cluster(img.bat[i], &mut buf).unwrap();
        }
        let off = (at % cluster) as usize;
        buf[off..off + data.len()].copy_from_slice(data);
        let idx = if img.bat[i] != 0 {
            img.bat[i]
        } else {
            img.cluster_count_in_file().unwrap() as u32
        };
        img.file
            .write_all_at(&buf, u64::from(idx) * cluster)
            .unwrap();
        img.write_bat_entry(i, idx).unwrap();
    }

    fn read_at(chain: &[PathBuf], at: u64, len: usize) -> Vec<u8> {
        let images: Vec<_> = chain
            .iter()
            .map(|p| Image::open(p, false).unwrap())
            .collect();
        let cluster = images[0].header.cluster();
        let mut buf = vec![0u8; cluster as usize];
        if !Image::chain_cluster(&images, (at / cluster) as usize, &mut buf).unwrap() {
            return vec![0; len];
        }
        let off = (at % cluster) as usize;
        buf[off..off + len].to_vec()
    }

    #[test]
    fn header_round_trips_and_matches_qemus_layout() {
        let h = Header::for_size(100 << 20, DEFAULT_CLUSTER);
        let bytes = h.encode();
        assert_eq!(&bytes[..16], MAGIC_V2);
        assert_eq!(h.bat_entries, 100);
        assert_eq!(h.data_off, 2048, "header + BAT fit one 1 MiB cluster");
        assert_eq!(Header::decode(&bytes, 1 << 20).unwrap(), h);
        // qemu-img create -f parallels 100M: cylinders 400, tracks 2048.
        assert_eq!(&bytes[24..28], &400u32.to_le_bytes());
        assert_eq!(&bytes[28..32], &2048u32.to_le_bytes());
    }

    fn flags_of(path: &Path) -> u32 {
        Image::open(path, false).unwrap().header.flags
    }

    fn has_holes(path: &Path) -> bool {
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len();
        rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(0)).unwrap() < len
    }

    /// What `ploop check` insists on: no holes in the file, and the empty
    /// flag set exactly while no data cluster exists.
    #[test]
    fn images_keep_the_ploop_tools_rules_and_settle_what_qemu_leaves() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("root.hds");
        Image::create(&p, 8 << 20, 64 << 10).unwrap();
        assert_eq!(flags_of(&p), CIF_EMPTY, "a fresh image is empty");
        assert!(!has_holes(&p), "header and BAT are written out");
        write_at(&p, 100 << 10, b"data");
        // write_at (like qemu) does not maintain the flag; settle does.
        assert_eq!(flags_of(&p), CIF_EMPTY);
        assert!(Image::open(&p, true).unwrap().settle().unwrap());
        assert_eq!(flags_of(&p), 0, "data clears the flag");
        assert!(!Image::open(&p, true).unwrap().settle().unwrap(), "settled");

        // qemu extends the file for a cluster and writes part of it: the
        // rest is a hole, filled with zeros that read the same.
        let len = std::fs::metadata(&p).unwrap().len();
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len + (64 << 10)).unwrap();
        f.write_all_at(b"partial", len + 4096).unwrap();
        drop(f);
        {
            let mut img = Image::open(&p, true).unwrap();
            img.write_bat_entry(5, (len / (64 << 10)) as u32).unwrap();
        }
        assert!(has_holes(&p));
        assert!(Image::open(&p, true).unwrap().settle().unwrap());
        assert!(!has_holes(&p), "holes filled");
        let chain = [p.clone()];
        assert_eq!(read_at(&chain, 5 * (64 << 10) + 4096, 7), b"partial");
        assert_eq!(read_at(&chain, 5 * (64 << 10), 16), vec![0; 16]);
        assert_eq!(read_at(&chain, 100 << 10, 4), b"data");

        // Flattening and growth keep the rules on their own.
        let flat = t.path().join("flat.hds");
        flatten(&chain, &flat, 0).unwrap();
        assert_eq!(flags_of(&flat), 0);
        assert!(!has_holes(&flat));
        let empty = t.path().join("empty.hds");
        Image::create(&empty, 1 << 20, 64 << 10).unwrap();
        Image::open(&empty, true).unwrap().grow(64 << 20).unwrap();
        assert_eq!(flags_of(&empty), CIF_EMPTY, "grown but still empty");
        assert!(!has_holes(&empty));
    }

    #[test]
    fn bad_headers_are_described() {
        let good = Header::for_size(10 << 20, DEFAULT_CLUSTER).encode();
        let mut bad = good;
        bad[0] = b'X';
        assert!(Header::decode(&bad, 1 << 20)
            .unwrap_err()
            .contains("signature"));
        let mut bad = good;
        bad[28..32].copy_from_slice(&3u32.to_le_bytes());
        assert!(Header::decode(&bad, 1 << 20)
            .unwrap_err()
            .contains("cluster size"));
        let mut bad = good;
        bad[32..36].copy_from_slice(&1u32.to_le_bytes());
        assert!(Header::decode(&bad, 1 << 20).unwrap_err().contains("BAT"));
        assert!(Header::decode(&good, 4096)
            .unwrap_err()
            .contains("truncated"));

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.hds");
        std::fs::write(&p, &good[..40]).unwrap();
        let e = Image::open(&p, false).err().unwrap().to_string();
        assert!(e.contains("header is truncated"), "{e}");
    }

    #[test]
    fn growing_moves_data_out_of_the_bats_way() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root.hds");
        // 64 KiB clusters: 16 Ki entries fill one BAT cluster, so growth past
        // 1 GiB needs a second BAT cluster, where the first data cluster sits.
        let cluster = 64 << 10;
        let size = 1u64 << 30;
        Image::create(&p, size - (1 << 20), cluster).unwrap();
        write_at(&p, 0, b"first cluster");
        write_at(&p, size - (2 << 20), b"near the end");
        let before = Image::open(&p, false).unwrap();
        assert_eq!(before.bat[0], 1, "first data cluster right after the BAT");
        drop(before);

        let mut img = Image::open(&p, true).unwrap();
        img.grow(4 << 30).unwrap();
        assert_eq!(img.header.size(), 4 << 30);
        assert!(img.header.data_off > 128, "the BAT grew");
        assert!(u64::from(img.bat[0]) >= img.header.data_start() / cluster);
        drop(img);
        let chain = [p.clone()];
        assert_eq!(read_at(&chain, 0, 13), b"first cluster");
        assert_eq!(read_at(&chain, size - (2 << 20), 12), b"near the end");
        assert_eq!(
            read_at(&chain, 3 << 30, 4),
            vec![0; 4],
            "new space reads zero"
        );
        write_at(&p, (4 << 30) - 8, b"new tail");
        assert_eq!(read_at(&chain, (4 << 30) - 8, 8), b"new tail");
        assert_eq!(read_at(&chain, 0, 13), b"first cluster");
        qemu_agrees(&p, &[(0, "first cluster"), ((4 << 30) - 8, "new tail")]);
    }

    /// qemu's parallels driver reads the same bytes and finds no errors.
    #[allow(clippy::disallowed_methods)] // a test calling qemu directly
    fn qemu_agrees(image: &Path, expect: &[(u64, &str)]) {
        let run = |prog: &str, args: &[&str]| std::process::Command::new(prog).args(args).output();
        let img = image.to_str().unwrap();
        let Ok(check) = run("qemu-img", &["check", "-f", "parallels", img]) else {
            pool_csi_testkit::skip::skip(
                "qemu-img",
                "qemu's check of the image: qemu-img is not installed (run dev/setup)",
            );
            return;
        };
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        for (at, text) in expect {
            let cmd = format!("read -v {at} {}", text.len());
            let out = run("qemu-io", &["-f", "parallels", "-r", "-c", &cmd, img]).unwrap();
            let dump = String::from_utf8_lossy(&out.stdout);
            // `read -v` ends each hex line with the ASCII rendering.
            let ascii: String = dump
                .lines()
                .filter_map(|l| l.split_once("  ").map(|(_, a)| a.trim()))
                .collect();
            // (unprintable bytes and spaces show as '.')
            assert!(ascii.contains(&text.replace(' ', ".")), "qemu reads {dump}");
        }
    }

    #[test]
    fn deltas_merge_both_ways_and_flatten() {
        let dir = tempfile::tempdir().unwrap();
        let (base, top) = (dir.path().join("root.hds"), dir.path().join("top.hds"));
        let c = DEFAULT_CLUSTER;
        Image::create(&base, 8 << 20, c).unwrap();
        write_at(&base, 0, b"base0");
        write_at(&base, 3 << 20, b"base3");
        Image::create(&top, 16 << 20, c).unwrap(); // grown on top
        write_at(&top, 3 << 20, b"top3!");
        write_at(&top, 12 << 20, b"top12");
        let chain = [base.clone(), top.clone()];
        let flat = dir.path().join("flat.hds");
        assert_eq!(flatten(&chain, &flat, 0).unwrap(), 16 << 20);
        let one = [flat.clone()];
        assert_eq!(read_at(&one, 0, 5), b"base0");
        assert_eq!(read_at(&one, 3 << 20, 5), b"top3!");
        assert_eq!(read_at(&one, 12 << 20, 5), b"top12");
        // upper into lower (overwrite), on a copy of the base
        let lower = dir.path().join("lower.hds");
        std::fs::copy(&base, &lower).unwrap();
        let mut l = Image::open(&lower, true).unwrap();
        l.take_clusters(&Image::open(&top, false).unwrap(), true)
            .unwrap();
        drop(l);
        // lower into upper (fill gaps only)
        let mut u = Image::open(&top, true).unwrap();
        u.take_clusters(&Image::open(&base, false).unwrap(), false)
            .unwrap();
        drop(u);
        for p in [&lower, &top] {
            let one = [p.to_path_buf()];
            assert_eq!(read_at(&one, 0, 5), b"base0", "{}", p.display());
            assert_eq!(read_at(&one, 3 << 20, 5), b"top3!", "{}", p.display());
            assert_eq!(read_at(&one, 12 << 20, 5), b"top12", "{}", p.display());
            assert_eq!(Image::open(p, false).unwrap().header.size(), 16 << 20);
        }
    }
}
