//! Volume image formats in file pools. Each format is a type behind one
//! trait, [`ImageFormat`]: making an image, reading its size, growing it
//! (offline, or online through whatever has it open), copying it for clones
//! and restores, snapshotting it, removing it, and saying what the node
//! attaches. The file pool calls the trait and names no format; this file
//! declares the trait; [`registry::Formats`] holds one of each (the only
//! `match` on [`VolumeFormat`] in the node).
//!
//! - [`raw::Raw`]: plain files, handled with system calls (the fast path the
//!   benchmark measures).
//! - [`qemu::Qemu`]: qcow2, vmdk, vpc and vdi through qemu-img (qcow2's
//!   size read from its header).
//! - [`ploop::Ploop`]: ploop disks, by this crate's own reader and writer,
//!   or the ploop tool where the host's probe found it working.
//! - [`directory::Directory`]: a directory published by bind mount, the
//!   volume several nodes of a netfs pool use at once.

pub mod directory;
pub mod env;
pub mod ploop;
pub mod qcow2;
pub mod qemu;
pub mod raw;
pub mod records;
pub mod registry;

use crate::{
    attach::AttachSource,
    copy,
    error::{io, Error, Result},
    fsutil::{remove_if_exists, rename_noreplace, wipe},
};
use env::ImageEnv;
use pool_csi_common::{OnDelete, VolumeFormat};
use records::Record;
use std::{
    fs::FileType,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

/// Where a new image's content comes from, and how big that is.
#[derive(Debug, Clone, Copy)]
pub struct CopyFrom<'a> {
    pub origin: Origin<'a>,
    pub size: u64,
}

/// Where a new image's content comes from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// A volume of the pool, possibly in use: frozen while it is copied.
    Volume { name: &'a str, path: &'a Path },
    /// A snapshot kept as a read-only copy of its volume.
    SnapshotCopy { path: &'a Path },
    /// A snapshot kept inside volume `name` (at `path`), found there by
    /// `reference` (a ploop delta's GUID).
    SnapshotInside {
        name: &'a str,
        path: &'a Path,
        reference: &'a str,
    },
}

/// What a listing shows of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub capacity: u64,
    pub allocation: u64,
    /// Some(why) when the image is unhealthy (unreadable header …).
    pub abnormal: Option<String>,
}

/// Where a snapshot goes while it is made and once it is whole.
#[derive(Debug, Clone)]
pub struct SnapshotTarget {
    pub name: String,
    /// A copy is written here first…
    pub tmp: PathBuf,
    /// …and renamed here, read-only, when complete.
    pub data: PathBuf,
}

/// One image format. Every method works on a volume the caller holds the
/// operation lock of; paths come from the pool's layout (checked names only).
#[tonic::async_trait]
pub trait ImageFormat: Send + Sync {
    fn format(&self) -> VolumeFormat;

    /// Whether `path`, of type `kind` (links not followed), is a volume of
    /// this format. Anything else at a volume's path is left alone.
    fn is_volume(&self, _path: &Path, kind: FileType) -> bool {
        kind.is_file()
    }

    /// What uses volume `name` (at `path`) on this node, if anything: a
    /// delete is refused while something does.
    fn user_here(&self, env: &ImageEnv, name: &str, path: &Path) -> Option<String> {
        env.user_of(name, path)
    }

    /// Whether a volume of this format may be used by several nodes at once
    /// (when its pool is shared): no claim records a single user.
    fn used_by_many_nodes(&self) -> bool {
        false
    }

    /// Whether growing a volume needs the node's part too (a filesystem
    /// on the device to grow).
    fn grows_on_the_node(&self) -> bool {
        true
    }

    /// Records what deleting the new volume at `path` does with its data
    /// (StorageClass `onDelete`); only formats that keep data aside can.
    fn keep_on_delete(&self, path: &Path, policy: OnDelete) -> Result<()> {
        match policy {
            OnDelete::Delete => Ok(()),
            p => Err(Error::Invalid(format!(
                "onDelete={p} is for directory volumes; {} volumes are deleted ({})",
                self.format(),
                path.display()
            ))),
        }
    }

    /// Whether snapshots of this format live inside their volume (so the
    /// volume cannot go while they exist) rather than as copies beside it.
    fn keeps_snapshots_inside(&self) -> bool {
        false
    }

    /// The size the guest sees.
    async fn size(&self, env: &ImageEnv, path: &Path) -> Result<u64>;

    /// The size the guest sees, given the file's metadata just read (a raw
    /// image's is its length: no second stat per volume in a listing).
    async fn size_of(&self, env: &ImageEnv, path: &Path, _meta: &std::fs::Metadata) -> Result<u64> {
        self.size(env, path).await
    }

    /// Capacity, allocation and health, for listings: an unreadable image
    /// is reported abnormal, not an error.
    async fn describe(&self, env: &ImageEnv, path: &Path) -> Described {
        let meta = std::fs::metadata(path);
        let allocation = meta.as_ref().map(copy::allocated_bytes).unwrap_or(0);
        let size = match &meta {
            Ok(m) => self.size_of(env, path, m).await,
            Err(_) => self.size(env, path).await, // says what is wrong
        };
        match size {
            Ok(capacity) => Described {
                capacity,
                allocation,
                abnormal: None,
            },
            Err(e) => Described {
                capacity: meta.map(|m| m.len()).unwrap_or(0),
                allocation,
                abnormal: Some(pool_csi_common::full_message(&e)),
            },
        }
    }

    /// Makes an empty image of volume `name` at `path` (which must not
    /// exist); `full` allocates every byte.
    async fn create(
        &self,
        env: &ImageEnv,
        name: &str,
        path: &Path,
        size: u64,
        full: bool,
    ) -> Result<()>;

    /// Grows an image nothing has open to `size` bytes.
    async fn resize(&self, env: &ImageEnv, path: &Path, size: u64, full: bool) -> Result<()>;

    /// Grows volume `name` to `size` bytes, online through whatever has it
    /// open on this node where the format allows.
    async fn grow(&self, env: &ImageEnv, name: &str, path: &Path, size: u64) -> Result<()>;

    /// Writes `from`'s content as a new image of volume `name` at `to`,
    /// grown to `size` when that is more.
    async fn copy(
        &self,
        env: &ImageEnv,
        _name: &str,
        from: CopyFrom<'_>,
        to: &Path,
        size: u64,
        full: bool,
    ) -> Result<()> {
        match from.origin {
            Origin::Volume { name, path } => env.copy_quiesced(name, path, to).await?,
            Origin::SnapshotCopy { path } => env.copy_plain(path, to).await?,
            Origin::SnapshotInside { .. } => {
                return Err(Error::Precondition(format!(
                    "{} volumes keep no snapshots inside them",
                    self.format()
                )))
            }
        }
        if size > from.size {
            self.resize(env, to, size, full).await?;
        }
        Ok(())
    }

    /// Snapshots volume `volume` (at `path`) and commits the snapshot's
    /// record: a snapshot exists exactly when its record does. By default a
    /// read-only copy, frozen while the volume is in use.
    async fn snapshot(
        &self,
        env: &ImageEnv,
        volume: &str,
        path: &Path,
        target: &SnapshotTarget,
    ) -> Result<Record> {
        let size = self.size(env, path).await?;
        env.copy_quiesced(volume, path, &target.tmp).await?;
        std::fs::set_permissions(&target.tmp, std::fs::Permissions::from_mode(0o444))
            .map_err(io("protect", &target.tmp))?;
        std::fs::File::open(&target.tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("sync", &target.tmp))?;
        rename_noreplace(&target.tmp, &target.data)?;
        let record = Record::new(volume, self.format(), size);
        env.records.commit(&target.name, &record)?;
        Ok(record)
    }

    /// A snapshot kept inside volume `volume` was deleted (its record is
    /// gone): the format may reclaim its space.
    async fn snapshot_dropped(&self, _env: &ImageEnv, _volume: &str, _path: &Path) {}

    /// What the node attaches for volume `name`.
    async fn attach_source(
        &self,
        _env: &ImageEnv,
        _name: &str,
        path: &Path,
    ) -> Result<AttachSource> {
        Ok(AttachSource::File {
            path: path.to_path_buf(),
            format: self.format(),
        })
    }

    /// The node detached volume `name` (best effort; errors are logged).
    async fn detached(&self, _env: &ImageEnv, _name: &str, _path: &Path) {}

    /// Removes volume `name`, zeroing its data first when `wipe`. The
    /// caller has checked that nothing uses it.
    async fn remove(
        &self,
        env: &ImageEnv,
        _name: &str,
        path: &Path,
        wipe_first: bool,
    ) -> Result<()> {
        if wipe_first {
            let p = path.to_path_buf();
            tokio::task::spawn_blocking(move || wipe(&p))
                .await
                .map_err(|e| io("wipe", path)(std::io::Error::other(e)))?
                .map_err(io("wipe", path))?;
        }
        remove_if_exists(path)?;
        env.sync_dir(path.parent().unwrap_or(Path::new("/"))).await
    }
}
