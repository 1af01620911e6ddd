//! ploop volumes: `<target>/<name>.ploop/` holding `DiskDescriptor.xml`,
//! `root.hds` and deltas, written by this crate ([`disk`], [`image`],
//! [`xml`]) or by the `ploop` tool where the host's probe ([`host`]) found
//! it working.
//!
//! A snapshot is a ploop snapshot: the current top delta becomes read-only
//! and a new, empty delta goes on top (recorded in DiskDescriptor.xml); the
//! snapshot's record names the frozen delta's GUID. Deltas that no snapshot
//! record names any more ("internal" ones: a deleted snapshot, an online
//! growth step, a snapshot whose record was never written) are merged into
//! their neighbour whenever the volume is not attached — right away when it
//! is idle, else at its next attach.
//!
//! While the volume is attached through qemu-storage-daemon, new deltas are
//! pushed into the running daemon over QMP (`blockdev-snapshot`), which is
//! also how an attached volume grows: a bigger delta on top. The descriptor
//! is always written before the daemon switches, so a crash between the two
//! leaves an empty extra delta, never lost writes.
//!
//! One lock per pool serialises every change to a descriptor (snapshots,
//! merges, growth) and the reads of snapshot records those changes depend
//! on, so a merge never takes a delta a snapshot is being recorded for.

pub mod disk;
pub mod host;
pub mod image;
pub mod xml;

use super::{
    env::{blocking, ImageEnv},
    records::Record,
    CopyFrom, Described, ImageFormat, Origin, SnapshotTarget,
};
use crate::{
    attach::AttachSource,
    error::{io, Error, Result},
    exec::DEFAULT_TIMEOUT,
    fsutil::{remove_if_exists, sync_dir, wipe},
    mount::quiesce::Frozen,
    tools::{ploop as tool, qsd},
};
use disk::Disk;
use host::PloopHost;
use pool_csi_common::VolumeFormat;
use std::{collections::HashSet, fs::FileType, path::Path};

pub struct Ploop {
    /// What the host's ploop tool can do.
    host: PloopHost,
    /// Serialises changes to this pool's descriptors.
    lock: tokio::sync::Mutex<()>,
}

impl Ploop {
    pub fn new(host: PloopHost) -> Self {
        Self {
            host,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// A new empty disk at `dir` made by `ploop init`; it must read back
    /// as a disk of at least `size` bytes.
    async fn init(&self, env: &ImageEnv, dir: &Path, size: u64) -> Result<()> {
        std::fs::create_dir(dir).map_err(io("create", dir))?;
        tool::init(
            env.runner(),
            &dir.join(xml::BASE_IMAGE),
            size,
            DEFAULT_TIMEOUT,
        )
        .await?;
        let made = Disk::open(dir)?.check()?;
        if made < size {
            return Err(Error::Precondition(format!(
                "ploop init made a {made}-byte disk where {size} bytes were asked for"
            )));
        }
        Ok(())
    }

    /// Merges every internal delta of `volume` away, off the async threads.
    /// The caller holds the lock and has checked nobody has it open.
    async fn compact(&self, env: &ImageEnv, volume: &str, dir: &Path) -> Result<()> {
        let keep = env.records.kept_inside(volume)?;
        let dir = dir.to_path_buf();
        blocking(&dir.clone(), move || compact(&keep, &dir)).await
    }

    /// Puts a new delta of `size` bytes on top of an attached disk: the
    /// descriptor first, then the daemon, which takes every delta of the
    /// descriptor it does not have yet. A refusal or a crash in between
    /// leaves an empty delta in the descriptor (an internal one, merged at
    /// the next attach) and never a delta the daemon writes to but the
    /// descriptor lacks; a retry brings the daemon up to the descriptor.
    async fn push_live_delta(
        &self,
        env: &ImageEnv,
        name: &str,
        dir: &Path,
        size: u64,
    ) -> Result<()> {
        let mut disk = Disk::open(dir)?;
        let size = size.max(disk.size()?);
        disk.push_delta(size)?;
        Ok(qsd::push_deltas(&env.export_of(name), &disk.images()).await?)
    }
}

#[tonic::async_trait]
impl ImageFormat for Ploop {
    fn format(&self) -> VolumeFormat {
        VolumeFormat::Ploop
    }

    /// A directory counts as a ploop volume only when it holds a
    /// DiskDescriptor.xml; anything else is left alone.
    fn is_volume(&self, path: &Path, kind: FileType) -> bool {
        kind.is_dir()
            && std::fs::symlink_metadata(path.join(xml::FILE_NAME)).is_ok_and(|m| m.is_file())
    }

    fn keeps_snapshots_inside(&self) -> bool {
        true
    }

    async fn size(&self, _env: &ImageEnv, path: &Path) -> Result<u64> {
        Disk::open(path)?.size()
    }

    /// Capacity from the top image's header, allocation from the files'
    /// allocated blocks; a corrupt header or descriptor is abnormal.
    async fn describe(&self, _env: &ImageEnv, path: &Path) -> Described {
        match Disk::open(path).and_then(|d| Ok((d.check()?, d.allocated_bytes()))) {
            Ok((capacity, allocation)) => Described {
                capacity,
                allocation,
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
        env: &ImageEnv,
        name: &str,
        path: &Path,
        size: u64,
        full: bool,
    ) -> Result<()> {
        if full {
            return Err(Error::Invalid(
                "allocation=full is supported for raw and qcow2 volumes, not ploop".into(),
            ));
        }
        if self.host.creates() {
            return self.init(env, path, size).await;
        }
        Disk::create(path, name, size).map(|_| ())
    }

    async fn resize(&self, _env: &ImageEnv, path: &Path, size: u64, _full: bool) -> Result<()> {
        let mut disk = Disk::open(path)?;
        blocking(path, move || disk.grow(size)).await
    }

    /// Offline in place, or — attached through qemu-storage-daemon — with a
    /// bigger delta pushed on top; the ploop tool grows mounted disks itself.
    async fn grow(&self, env: &ImageEnv, name: &str, path: &Path, size: u64) -> Result<()> {
        let _held = self.lock.lock().await;
        if self.host.mounts() {
            let desc = path.join(xml::FILE_NAME);
            return Ok(tool::resize(env.runner(), &desc, size).await?);
        }
        match env.user_of(name, path) {
            None => self.resize(env, path, size, false).await,
            Some(_) if env.export_of(name).running_pid().is_some() => {
                self.push_live_delta(env, name, path, size).await
            }
            Some(by) => Err(Error::AttachedThrough {
                what: format!("ploop volume {name}"),
                by,
                action: "grow it online",
                instead: "expand it while unstaged",
            }),
        }
    }

    /// The content of a volume, or of a snapshot's delta of it, flattened
    /// into one new single-image disk. A volume in use is frozen for the
    /// copy of its live top.
    async fn copy(
        &self,
        env: &ImageEnv,
        name: &str,
        from: CopyFrom<'_>,
        to: &Path,
        size: u64,
        _full: bool,
    ) -> Result<()> {
        let (volume, dir, delta) = match from.origin {
            Origin::Volume { name, path } => (name, path, None),
            Origin::SnapshotInside {
                name,
                path,
                reference,
            } => (name, path, Some(reference)),
            Origin::SnapshotCopy { path } => {
                return Err(Error::Precondition(format!(
                    "ploop snapshots live inside their volume, not in {}",
                    path.display()
                )))
            }
        };
        let _held = self.lock.lock().await;
        let disk = Disk::open(dir)?;
        disk.check()?;
        let upto = match delta {
            Some(g) => disk.desc.position(g).ok_or_else(|| {
                Error::Precondition(format!(
                    "the snapshot's delta {g} is missing from {}; the snapshot is lost",
                    dir.join(xml::FILE_NAME).display()
                ))
            })?,
            None => disk.desc.chain.len() - 1,
        };
        let live_top = delta.is_none() && env.user_of(volume, dir).is_some();
        let frozen = if live_top {
            env.freeze_users(volume, dir).await?
        } else {
            Frozen::none()
        };
        let (name, dst) = (name.to_string(), to.to_path_buf());
        let made = blocking(dir, move || {
            disk.flatten_into(upto, &dst, &name, size).map(|_| ())
        })
        .await;
        env.thaw(frozen).await;
        made
    }

    /// The top delta is frozen as the snapshot and a new one goes on top. An
    /// attached volume's filesystem is frozen for the switch, so the
    /// snapshot holds everything written.
    async fn snapshot(
        &self,
        env: &ImageEnv,
        volume: &str,
        path: &Path,
        target: &SnapshotTarget,
    ) -> Result<Record> {
        let _held = self.lock.lock().await;
        let disk = Disk::open(path)?;
        let size = disk.check()?;
        let frozen_top = disk.desc.top().guid.clone();
        match env.user_of(volume, path) {
            None => {
                let mut disk = disk;
                disk.push_delta(size)?;
            }
            // The module freezes the device's filesystem for the switch itself.
            Some(_) if tool::device_of(env.sysfs(), path).is_some() => {
                tool::snapshot(env.runner(), &path.join(xml::FILE_NAME)).await?
            }
            Some(_) if env.export_of(volume).running_pid().is_some() => {
                let frozen = env.freeze_users(volume, path).await?;
                let r = self.push_live_delta(env, volume, path, size).await;
                env.thaw(frozen).await;
                r?
            }
            Some(by) => {
                return Err(Error::AttachedThrough {
                    what: format!("ploop volume {volume}"),
                    by,
                    action: "switch deltas online",
                    instead: "snapshot it while unstaged",
                })
            }
        }
        let mut record = Record::new(volume, VolumeFormat::Ploop, size);
        record.inside = Some(frozen_top);
        // A crash before this line leaves an internal delta, merged later.
        env.records.commit(&target.name, &record)?;
        Ok(record)
    }

    /// The deleted snapshot's delta is now unreferenced: merge it away
    /// unless the volume is in use (best effort: a failure is logged and
    /// retried at the next attach).
    async fn snapshot_dropped(&self, env: &ImageEnv, volume: &str, path: &Path) {
        let _held = self.lock.lock().await;
        if !path.is_dir() || env.user_of(volume, path).is_some() {
            return;
        }
        if let Err(e) = self.compact(env, volume, path).await {
            tracing::warn!(volume, error = %pool_csi_common::full_message(&e), "merging unused ploop deltas failed; retried at the next attach");
        }
    }

    /// The chain to attach; internal deltas are merged first while nothing
    /// has the disk open.
    async fn attach_source(&self, env: &ImageEnv, name: &str, path: &Path) -> Result<AttachSource> {
        let _held = self.lock.lock().await;
        if env.user_of(name, path).is_none() {
            self.compact(env, name, path).await?;
        }
        let disk = Disk::open(path)?;
        disk.check()?;
        Ok(AttachSource::PloopChain {
            dir: path.to_path_buf(),
            descriptor: path.join(xml::FILE_NAME),
            images: disk.images(),
        })
    }

    /// qemu has closed the disk: leave its headers as the ploop tools
    /// expect (the next attach settles them again if this fails).
    async fn detached(&self, _env: &ImageEnv, _name: &str, path: &Path) {
        if let Err(e) = Disk::open(path).and_then(|d| d.settle()) {
            tracing::warn!(disk = %path.display(), error = %pool_csi_common::full_message(&e), "could not settle the ploop headers after detach");
        }
    }

    /// Removes the whole directory: renamed out of the volume namespace
    /// first (atomic), then removed without following any link inside.
    async fn remove(
        &self,
        env: &ImageEnv,
        name: &str,
        path: &Path,
        wipe_first: bool,
    ) -> Result<()> {
        let _held = self.lock.lock().await;
        if let Some(by) = env.user_of(name, path) {
            return Err(Error::InUse {
                what: format!("volume {name} (ploop)"),
                by,
            });
        }
        // Out of the volume namespace, into the pool's scratch directory
        // (cleared at start, so a crash mid-removal leaves nothing behind).
        let trash = env.scratch().join(format!("d.{name}.ploop"));
        remove_if_exists(&trash)?;
        std::fs::rename(path, &trash).map_err(io("move away", path))?;
        sync_dir(path.parent().unwrap_or(Path::new("/")))?;
        let t = trash.clone();
        blocking(&trash, move || {
            let removed = (|| {
                if wipe_first {
                    for e in std::fs::read_dir(&t)?.flatten() {
                        if e.file_type()?.is_file() {
                            wipe(&e.path())?;
                        }
                    }
                }
                std::fs::remove_dir_all(&t)
            })();
            removed.map_err(io("remove", &t))
        })
        .await
    }
}

/// Merges every delta but the top whose GUID `keep` does not hold, and
/// settles the headers qemu may have left behind.
fn compact(keep: &HashSet<String>, dir: &Path) -> Result<()> {
    let mut disk = Disk::open(dir)?;
    while let Some(i) =
        (0..disk.desc.chain.len() - 1).find(|&i| !keep.contains(&disk.desc.chain[i].guid))
    {
        disk.merge_into_child(i)?;
    }
    disk.settle()
}
