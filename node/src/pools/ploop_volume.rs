//! ploop volumes in file pools: `<target>/<name>.ploop/` holding
//! `DiskDescriptor.xml`, `root.hds` and deltas.
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

use super::{file::FilePool, file_snapshot::Record, Snapshot, Volume};
use crate::attach::AttachSource;
use crate::fsutil::sync_dir;
use crate::{
    error::{io, Error, Result},
    exec::DEFAULT_TIMEOUT,
    formats::ploop_disk::Disk,
    tools::{ploop, qsd},
};
use pool_csi_common::VolumeFormat;
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

impl FilePool {
    pub(super) fn describe_ploop(&self, name: &str, dir: &Path) -> Volume {
        let checked = Disk::open(dir).and_then(|d| Ok((d.check()?, d.allocated_bytes())));
        match checked {
            Ok((capacity, allocation)) => Volume {
                name: name.into(),
                format: VolumeFormat::Ploop,
                capacity,
                allocation,
                abnormal: None,
            },
            Err(e) => Volume {
                name: name.into(),
                format: VolumeFormat::Ploop,
                capacity: 0,
                allocation: 0,
                abnormal: Some(pool_csi_common::full_message(&e)),
            },
        }
    }

    /// The ploop device the kernel module has this volume's disk on, if any.
    pub(super) fn ploop_device(&self, name: &str) -> Option<PathBuf> {
        let dir = self.layout.volume(name, VolumeFormat::Ploop).ok()?;
        ploop::device_of(&self.sysfs, &dir)
    }

    /// A new empty disk at `tmp` made by `ploop init`, where the host's tool
    /// works; it must read back as a disk of at least `size` bytes.
    pub(super) async fn init_ploop(&self, tmp: &Path, size: u64) -> Result<()> {
        std::fs::create_dir(tmp).map_err(io("create", tmp))?;
        ploop::init(self.runner.as_ref(), tmp, size, DEFAULT_TIMEOUT).await?;
        let made = Disk::open(tmp)?.check()?;
        if made < size {
            return Err(Error::Precondition(format!(
                "ploop init made a {made}-byte disk where {size} bytes were asked for"
            )));
        }
        Ok(())
    }

    /// The snapshots whose data lives in `volume`'s deltas: (name, delta GUID).
    fn ploop_snapshots_of(&self, volume: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .read_records()?
            .into_iter()
            .filter(|(_, r)| r.source_volume == volume)
            .filter_map(|(n, r)| Some((n, r.delta?)))
            .collect())
    }

    /// Merges every internal delta of `name` away, off the async threads.
    /// The caller holds the ploop lock and has checked nobody has it open.
    async fn compact_ploop(&self, name: &str, dir: &Path) -> Result<()> {
        let keep: HashSet<String> = self
            .ploop_snapshots_of(name)?
            .into_iter()
            .map(|(_, guid)| guid)
            .collect();
        let dir = dir.to_path_buf();
        blocking(&dir.clone(), move || compact(&keep, &dir)).await
    }

    /// Compacts `volume` now if nothing has it open (best effort: a failure
    /// is logged and retried at the next attach).
    pub(super) async fn compact_ploop_if_idle(&self, volume: &str) {
        let _held = self.ploop_lock.lock().await;
        let Ok(dir) = self.layout.volume(volume, VolumeFormat::Ploop) else {
            return;
        };
        if !dir.is_dir() || self.image_user(volume).is_some() {
            return;
        }
        if let Err(e) = self.compact_ploop(volume, &dir).await {
            tracing::warn!(pool.name = %self.name, volume, error = %pool_csi_common::full_message(&e), "merging unused ploop deltas failed; retried at the next attach");
        }
    }

    /// The chain to attach; internal deltas are merged first while nothing
    /// has the disk open.
    pub(super) async fn ploop_attach_source(&self, name: &str, dir: &Path) -> Result<AttachSource> {
        let _held = self.ploop_lock.lock().await;
        if self.image_user(name).is_none() {
            self.compact_ploop(name, dir).await?;
        }
        let disk = Disk::open(dir)?;
        disk.check()?;
        Ok(AttachSource::PloopChain {
            dir: dir.to_path_buf(),
            images: disk.images(),
        })
    }

    /// Grows the disk to `size`: offline in place, or — attached through
    /// qemu-storage-daemon — with a bigger delta pushed on top.
    pub(super) async fn grow_ploop(&self, name: &str, dir: &Path, size: u64) -> Result<()> {
        let _held = self.ploop_lock.lock().await;
        if self.ploop.mounts() {
            // Mounted or not, the tool grows the disk (online on a device).
            return Ok(ploop::resize(self.runner.as_ref(), dir, size).await?);
        }
        match self.image_user(name) {
            None => {
                let mut disk = Disk::open(dir)?;
                blocking(dir, move || disk.grow(size)).await
            }
            Some(_) if self.export_of(name).running_pid().is_some() => {
                self.push_live_delta(name, dir, size).await.map(|_| ())
            }
            Some(by) => Err(Error::Precondition(format!(
                "ploop volume {name} is attached through {by}, which cannot grow it online; expand it while unstaged"
            ))),
        }
    }

    /// Puts a new delta of `size` bytes on top of an attached disk: the
    /// descriptor first, then the daemon (undone if the daemon refuses).
    async fn push_live_delta(&self, name: &str, dir: &Path, size: u64) -> Result<String> {
        let mut disk = Disk::open(dir)?;
        let depth = disk.desc.chain.len();
        let size = size.max(disk.size()?);
        let guid = disk.push_delta(size)?;
        let file = disk.image(depth);
        if let Err(e) = qsd::push_delta(&self.export_of(name), depth, &file).await {
            disk.desc.chain.pop();
            disk.write_descriptor()?;
            let _ = std::fs::remove_file(&file);
            return Err(e.into());
        }
        Ok(guid)
    }

    /// CreateSnapshot of a ploop volume: the top delta is frozen as the
    /// snapshot and a new one goes on top. An attached volume's filesystem
    /// is frozen for the switch, so the snapshot holds everything written.
    pub(super) async fn snapshot_ploop(
        &self,
        source: &str,
        dir: &Path,
        name: &str,
    ) -> Result<Snapshot> {
        let _held = self.ploop_lock.lock().await;
        let disk = Disk::open(dir)?;
        let size = disk.check()?;
        let frozen_top = disk.desc.top().guid.clone();
        let user = self.image_user(source);
        let switched = match &user {
            None => {
                let mut disk = disk;
                disk.push_delta(size).map(|_| ())
            }
            // The module freezes the device's filesystem for the switch itself.
            Some(_) if self.ploop_device(source).is_some() => {
                Ok(ploop::snapshot(self.runner.as_ref(), dir).await?)
            }
            Some(_) if self.export_of(source).running_pid().is_some() => {
                let frozen = self.freeze_users(source, dir).await?;
                let r = self.push_live_delta(source, dir, size).await.map(|_| ());
                self.thaw(&frozen).await;
                r
            }
            Some(by) => Err(Error::Precondition(format!(
                "ploop volume {source} is attached through {by}, which cannot switch deltas online; snapshot it while unstaged"
            ))),
        };
        switched?;
        let mut record = Record::new(source, VolumeFormat::Ploop, size);
        record.delta = Some(frozen_top);
        // A crash before this line leaves an internal delta, merged later.
        self.write_record(name, &record)?;
        Ok(Snapshot {
            name: name.into(),
            source_volume: source.into(),
            format: VolumeFormat::Ploop,
            size,
            created_unix_nanos: record.created_unix_nanos,
        })
    }

    /// Writes the content of `source` (a volume, or a snapshot's delta of
    /// it) as a new single-image disk at `tmp`, `size` bytes or more. A
    /// volume in use is frozen for the copy of its live top.
    pub(super) async fn copy_ploop(
        &self,
        new_name: &str,
        volume: &str,
        dir: &Path,
        snapshot_delta: Option<&str>,
        tmp: &Path,
        size: u64,
    ) -> Result<()> {
        let _held = self.ploop_lock.lock().await;
        let disk = Disk::open(dir)?;
        disk.check()?;
        let upto = match snapshot_delta {
            Some(g) => disk.desc.position(g).ok_or_else(|| {
                Error::Precondition(format!(
                    "the snapshot's delta {g} is missing from {}; the snapshot is lost",
                    dir.join("DiskDescriptor.xml").display()
                ))
            })?,
            None => disk.desc.chain.len() - 1,
        };
        let live_top = snapshot_delta.is_none() && self.image_user(volume).is_some();
        let frozen = if live_top {
            self.freeze_users(volume, dir).await?
        } else {
            Vec::new()
        };
        let name = new_name.to_string();
        let dst = tmp.to_path_buf();
        let made = blocking(dir, move || {
            disk.flatten_into(upto, &dst, &name, size).map(|_| ())
        })
        .await;
        self.thaw(&frozen).await;
        made
    }

    /// Removes the whole directory: renamed out of the volume namespace
    /// first (atomic), then removed without following any link inside.
    pub(super) async fn delete_ploop(&self, name: &str, dir: &Path, wipe: bool) -> Result<()> {
        let _held = self.ploop_lock.lock().await;
        if let Some(by) = self.image_user(name) {
            return Err(Error::InUse {
                what: format!("volume {name} (ploop)"),
                by,
            });
        }
        let snaps: Vec<String> = self
            .ploop_snapshots_of(name)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if !snaps.is_empty() {
            return Err(Error::Precondition(format!(
                "ploop volume {name} holds the data of snapshots {}; delete them first",
                snaps.join(", ")
            )));
        }
        let trash = self.layout.tmp('d', name, VolumeFormat::Ploop)?;
        crate::fsutil::remove_if_exists(&trash)?;
        std::fs::rename(dir, &trash).map_err(io("move away", dir))?;
        sync_dir(&self.layout.root)?;
        let t = trash.clone();
        tokio::task::spawn_blocking(move || {
            if wipe {
                for e in std::fs::read_dir(&t)?.flatten() {
                    if e.file_type()?.is_file() {
                        crate::fsutil::wipe(&e.path())?;
                    }
                }
            }
            std::fs::remove_dir_all(&t)
        })
        .await
        .map_err(|e| io("remove", &trash)(std::io::Error::other(e)))?
        .map_err(io("remove", &trash))
    }
}

/// Whether `dir` is a ploop volume directory (holds a DiskDescriptor.xml).
pub fn is_ploop_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(crate::formats::ploop_xml::FILE_NAME))
        .is_ok_and(|m| m.is_file())
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

/// Runs image I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    about: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io("work on", about)(std::io::Error::other(e)))?
}
