//! Directory volumes (`volumeFormat: directory`): a directory of the pool's
//! filesystem, published by bind mount. In a netfs pool every node reaches
//! it, so it is the volume several nodes use at once (ReadWriteMany).
//!
//! ```text
//! <target>/<name>.directory/data          what the workload sees
//! <target>/<name>.directory/volume.json   {capacity, onDelete}
//! ```
//! The record lives beside the data, inside the volume, so it is made and
//! renamed into place with it (the file pool's tmp + RENAME_NOREPLACE) and
//! an archived volume keeps it. The capacity is a record: nothing on a
//! network filesystem enforces it from the client side (see docs/pools.md).
//! Copies (clones, snapshots, restores) are `cp -a --reflink=auto`; a
//! directory cannot be frozen, so a copy of one in use is taken while it
//! may change.

use super::{
    env::ImageEnv, records::Record, CopyFrom, Described, ImageFormat, Origin, SnapshotTarget,
};
use crate::{
    attach::AttachSource,
    error::{io, Error, Result},
    exec::Cmd,
    fsutil::{rename_noreplace, sync_dir},
};
use pool_csi_common::{OnDelete, VolumeFormat};
use serde::{Deserialize, Serialize};
use std::{
    fs::FileType,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

const DATA: &str = "data";
const RECORD: &str = "volume.json";
/// A copy of a large tree takes as long as it takes; an hour bounds a hang.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a directory volume records about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeRecord {
    capacity: u64,
    #[serde(default)]
    on_delete: OnDelete,
}

pub struct Directory;

/// The directory the workload sees of the volume at `path`.
pub fn data_dir(path: &Path) -> PathBuf {
    path.join(DATA)
}

fn read_record(path: &Path) -> Result<VolumeRecord> {
    crate::fsutil::read_json(&path.join(RECORD))?.ok_or_else(|| {
        Error::Precondition(format!(
            "{} has no {RECORD}: not a directory volume pool-csi made",
            path.display()
        ))
    })
}

fn write_record(path: &Path, r: &VolumeRecord) -> Result<()> {
    crate::fsutil::write_json(&path.join(RECORD), r)
}

/// Bytes allocated and inodes used under `dir`, staying on its filesystem
/// and never following links.
pub fn usage(dir: &Path) -> std::io::Result<(u64, u64)> {
    let root_dev = std::fs::symlink_metadata(dir)?.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let Ok(m) = e.metadata() else { continue }; // removed meanwhile
            bytes += m.blocks() * 512;
            inodes += 1;
            if m.is_dir() && m.dev() == root_dev {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// `YYYYMMDDThhmmssZ` of the current time (archive names sort by time).
fn utc_stamp() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// Copies the tree `from` to `to` (which must not exist), sharing extents
/// where the filesystem can.
async fn copy_tree(env: &ImageEnv, from: &Path, to: &Path) -> Result<()> {
    let cmd = Cmd::new("cp")
        .args(["-a", "--reflink=auto", "-T", "--"])
        .arg(from)
        .arg(to)
        .timeout(COPY_TIMEOUT);
    env.runner().run_ok(&cmd).await?;
    Ok(())
}

/// Makes the volume `to` holding a copy of the volume (or snapshot) at
/// `from`, recorded at `capacity`.
async fn copy_volume(env: &ImageEnv, from: &Path, to: &Path, capacity: u64) -> Result<()> {
    let on_delete = read_record(from)?.on_delete;
    std::fs::create_dir(to).map_err(io("create", to))?;
    copy_tree(env, &data_dir(from), &data_dir(to)).await?;
    write_record(
        to,
        &VolumeRecord {
            capacity,
            on_delete,
        },
    )
}

/// Opens `path`, a directory under `root`, without following a symbolic
/// link anywhere below `root`: whoever can write to a share could put one
/// where a volume's directory was, pointing anywhere on the node.
pub fn open_beneath(root: &Path, path: &Path) -> Result<std::os::fd::OwnedFd> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags};
    let rel = path.strip_prefix(root).map_err(|_| {
        Error::Invalid(format!(
            "{} is not under {}",
            path.display(),
            root.display()
        ))
    })?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir =
        rustix::fs::open(root, flags, Mode::empty()).map_err(|e| io("open", root)(e.into()))?;
    let opened = match openat2(
        &dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        // Kernels before 5.6: one component at a time, none a link.
        Err(rustix::io::Errno::NOSYS) => rel.components().try_fold(dir, |at, c| match c {
            std::path::Component::Normal(name) => {
                rustix::fs::openat(&at, name, flags | OFlags::NOFOLLOW, Mode::empty())
            }
            _ => Err(rustix::io::Errno::XDEV),
        }),
        r => r,
    };
    opened.map_err(|e| {
        Error::Precondition(format!(
            "{} is not a plain directory of the pool ({e}); pool-csi will not mount it",
            path.display()
        ))
    })
}

#[tonic::async_trait]
impl ImageFormat for Directory {
    fn format(&self) -> VolumeFormat {
        VolumeFormat::Directory
    }

    /// A directory holding its record: a `<x>.directory` folder someone
    /// made by hand is not a volume, and is never listed or removed.
    fn is_volume(&self, path: &Path, kind: FileType) -> bool {
        kind.is_dir()
            && std::fs::symlink_metadata(path.join(RECORD)).is_ok_and(|m| m.file_type().is_file())
    }

    fn used_by_many_nodes(&self) -> bool {
        true
    }

    /// A bind mount of its data on this node (staged or published): the
    /// mounts of the data's filesystem whose root is the data directory.
    /// Other nodes' mounts are theirs to know; the CO deletes a volume only
    /// once it is unpublished everywhere. The filesystem is the one the
    /// mount table shows the data under, not the data's `st_dev`: btrfs
    /// gives its files a device number of their subvolume's, which is no
    /// mount's. Only that filesystem's mount points are looked at (a
    /// stat of another's could hang on a share that stopped answering).
    fn user_here(&self, env: &ImageEnv, _name: &str, path: &Path) -> Option<String> {
        let data_path = std::fs::canonicalize(data_dir(path)).ok()?;
        let data = std::fs::symlink_metadata(&data_path).ok()?;
        let table = crate::mount::mountinfo::read(env.mount_table()).ok()?;
        let dev = crate::mount::mountinfo::under(&table, &data_path)?.dev;
        table
            .iter()
            .filter(|m| m.dev == dev)
            .find(|m| {
                std::fs::metadata(&m.mount_point)
                    .is_ok_and(|s| s.dev() == data.dev() && s.ino() == data.ino())
            })
            .map(|m| format!("a bind mount at {}", m.mount_point.display()))
    }

    fn grows_on_the_node(&self) -> bool {
        false
    }

    async fn size(&self, _env: &ImageEnv, path: &Path) -> Result<u64> {
        Ok(read_record(path)?.capacity)
    }

    /// The recorded capacity; the tree is not walked for a listing (its
    /// use is NodeGetVolumeStats' to count), so allocation is 0.
    async fn describe(&self, _env: &ImageEnv, path: &Path) -> Described {
        match read_record(path) {
            Ok(r) => Described {
                capacity: r.capacity,
                allocation: 0,
                abnormal: None,
            },
            Err(e) => Described {
                capacity: 0,
                allocation: 0,
                abnormal: Some(pool_csi_common::full_message(&e)),
            },
        }
    }

    async fn create(
        &self,
        _env: &ImageEnv,
        _name: &str,
        path: &Path,
        size: u64,
        _full: bool,
    ) -> Result<()> {
        std::fs::create_dir(path).map_err(io("create", path))?;
        let data = data_dir(path);
        std::fs::create_dir(&data).map_err(io("create", &data))?;
        write_record(
            path,
            &VolumeRecord {
                capacity: size,
                on_delete: OnDelete::Delete,
            },
        )
    }

    fn keep_on_delete(&self, path: &Path, policy: OnDelete) -> Result<()> {
        let mut r = read_record(path)?;
        r.on_delete = policy;
        write_record(path, &r)
    }

    /// The capacity is a record: growing rewrites it.
    async fn resize(&self, _env: &ImageEnv, path: &Path, size: u64, _full: bool) -> Result<()> {
        let mut r = read_record(path)?;
        r.capacity = r.capacity.max(size);
        write_record(path, &r)
    }

    async fn grow(&self, env: &ImageEnv, _name: &str, path: &Path, size: u64) -> Result<()> {
        self.resize(env, path, size, false).await
    }

    async fn copy(
        &self,
        env: &ImageEnv,
        _name: &str,
        from: CopyFrom<'_>,
        to: &Path,
        size: u64,
        _full: bool,
    ) -> Result<()> {
        let src = match from.origin {
            Origin::Volume { path, .. } | Origin::SnapshotCopy { path } => path,
            Origin::SnapshotInside { .. } => {
                return Err(Error::Precondition(
                    "directory volumes keep no snapshots inside them".into(),
                ))
            }
        };
        copy_volume(env, src, to, size.max(from.size)).await
    }

    async fn snapshot(
        &self,
        env: &ImageEnv,
        volume: &str,
        path: &Path,
        target: &SnapshotTarget,
    ) -> Result<Record> {
        let size = self.size(env, path).await?;
        copy_volume(env, path, &target.tmp, size).await?;
        sync_dir(&target.tmp)?;
        rename_noreplace(&target.tmp, &target.data)?;
        let record = Record::new(volume, self.format(), size);
        env.records.commit(&target.name, &record)?;
        Ok(record)
    }

    async fn attach_source(
        &self,
        _env: &ImageEnv,
        _name: &str,
        path: &Path,
    ) -> Result<AttachSource> {
        let data = data_dir(path);
        if !std::fs::symlink_metadata(&data).is_ok_and(|m| m.is_dir()) {
            return Err(Error::Precondition(format!(
                "directory volume {} has no data directory (or it is not a plain directory)",
                path.display()
            )));
        }
        Ok(AttachSource::Directory { path: data })
    }

    /// As the volume's onDelete says: removed (renamed out of the pool's
    /// names first, so the volume is gone at once and a crash leaves only
    /// tmp to clean), or kept as `retained-<name>` / `archived-<name>-<time>`.
    async fn remove(&self, env: &ImageEnv, name: &str, path: &Path, _wipe: bool) -> Result<()> {
        // No record, no removal: what the data is to become is unknown.
        let policy = read_record(path)?.on_delete;
        let root = path.parent().unwrap_or(Path::new("/"));
        let kept = match policy {
            OnDelete::Delete => None,
            OnDelete::Retain => Some(format!("retained-{name}")),
            OnDelete::Archive => Some(format!("archived-{name}-{}", utc_stamp())),
        };
        if let Some(kept) = kept {
            let mut to = root.join(&kept);
            if to.exists() {
                to = root.join(format!("{kept}-{}", utc_stamp()));
            }
            rename_noreplace(path, &to)?;
            tracing::info!(volume = name, kept = %to.display(), "directory volume deleted; its data is kept ({policy})");
            return sync_dir(root);
        }
        let doomed = env.scratch().join(format!("d.{name}.{}", utc_stamp()));
        rename_noreplace(path, &doomed)?;
        sync_dir(root)?;
        let d = doomed.clone();
        crate::formats::env::blocking(&doomed, move || {
            std::fs::remove_dir_all(&d).map_err(io("remove", &d))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        let s = utc_stamp();
        assert_eq!(s.len(), 16, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[8] == b'T',
            "{s}"
        );
    }

    #[test]
    fn only_a_directory_with_its_record_is_a_volume_and_links_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let kind = |p: &Path| std::fs::symlink_metadata(p).unwrap().file_type();
        // A folder someone named like a volume: not one.
        let hand = root.join("backup.directory");
        std::fs::create_dir_all(hand.join("data")).unwrap();
        assert!(!Directory.is_volume(&hand, kind(&hand)));
        let e = read_record(&hand).unwrap_err().to_string();
        assert!(e.contains("no volume.json"), "{e}");
        // A volume: its data opens beneath the pool.
        let v = root.join("v.directory");
        std::fs::create_dir_all(v.join("data")).unwrap();
        write_record(
            &v,
            &VolumeRecord {
                capacity: 1,
                on_delete: OnDelete::Archive,
            },
        )
        .unwrap();
        assert!(Directory.is_volume(&v, kind(&v)));
        open_beneath(root, &data_dir(&v)).unwrap();
        // Its data replaced by a link out of the pool: refused, not followed.
        let w = root.join("w.directory");
        std::fs::create_dir(&w).unwrap();
        std::os::unix::fs::symlink("/", data_dir(&w)).unwrap();
        let e = open_beneath(root, &data_dir(&w)).unwrap_err().to_string();
        assert!(e.contains("not a plain directory"), "{e}");
        // So is a link at the volume itself.
        std::os::unix::fs::symlink("/etc", root.join("x.directory")).unwrap();
        assert!(open_beneath(root, &root.join("x.directory/data")).is_err());
    }

    #[test]
    fn usage_counts_the_tree_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("sub")).unwrap();
        std::fs::write(t.path().join("sub/f"), vec![1u8; 64 << 10]).unwrap();
        std::os::unix::fs::symlink("/usr", t.path().join("link")).unwrap();
        let (bytes, inodes) = usage(t.path()).unwrap();
        assert_eq!(inodes, 3);
        assert!(bytes >= 64 << 10, "{bytes}");
    }
}
