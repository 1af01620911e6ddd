//! disk pools: a whole disk with a partition table; each volume is a
//! partition. Reads and writes go through sfdisk, the kernel learns about each
//! changed partition through partx, and every table change on one disk is
//! serialised, so no two partitions can ever overlap.
//!
//! Names: on GPT the partition name is the volume name (shortened with a hash
//! past GPT's 36 characters), so refresh and retried creates are answered
//! from the disk itself. A dos table has no names: the node keeps a small
//! record per pool (`<state-dir>/disks/<pool>.json`, partition start sector →
//! name), written before the partition is made; partitions it does not know
//! are listed as `part<N>`. The same record remembers wipeOnDelete.

use super::{
    disk_layout::{self, best_fit, free_extents, gpt_name, is_extended, room_after, ALIGN_BYTES},
    fit_size, CreateRequest, Expanded, Pool, PoolState, PoolStatus, Source, Volume,
};
use crate::attach::AttachSource;
use crate::{
    error::{io, Error, Result},
    exec::CommandRunner,
    fsutil::device_size,
    mount::mountinfo,
    tools::{blkid::Probe, partx, sfdisk},
    Config,
};
use pool_csi_common::{
    volume_id::check_storage_name, Allocation, PoolDefinition, PoolType, VolumeFormat,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

const DEFAULT_SIZE: u64 = 1 << 30;
/// Table types sfdisk reads but pool-csi will not write.
const READ_ONLY_LABELS: [&str; 7] = ["dvh", "mac", "bsd", "pc98", "sun", "aix", "amiga"];

/// What the node remembers about one partition (by start sector).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    name: String,
    #[serde(default)]
    wipe_on_delete: bool,
}

pub struct DiskPool {
    name: String,
    disk: PathBuf,
    /// "gpt" or "dos"; Err(why) for a table type that cannot be written.
    label: std::result::Result<String, String>,
    auto_build: bool,
    runner: Arc<dyn CommandRunner>,
    mountinfo: PathBuf,
    sysfs: PathBuf,
    records: PathBuf,
    state: super::StateCell,
    /// Held across every read-modify-write of the table.
    table_lock: tokio::sync::Mutex<()>,
}

fn label_of(format: Option<&str>) -> std::result::Result<String, String> {
    match format.unwrap_or("gpt") {
        "gpt" => Ok("gpt".into()),
        "dos" | "msdos" => Ok("dos".into()),
        l if READ_ONLY_LABELS.contains(&l) => Err(format!(
            "{l} partition tables are known but pool-csi cannot write them; use gpt or dos"
        )),
        other => Err(format!(
            "unknown partition table type {other:?}; use gpt or dos"
        )),
    }
}

impl DiskPool {
    pub fn new(def: &PoolDefinition, cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        Self {
            name: def.name.clone(),
            disk: def.spec.source.device.clone().unwrap_or_default().into(),
            label: label_of(def.spec.source.format.as_deref()),
            auto_build: def.spec.auto_build,
            runner,
            mountinfo: cfg.mountinfo.clone(),
            sysfs: cfg.sysfs_root.clone(),
            records: cfg
                .state_dir
                .join("disks")
                .join(format!("{}.json", def.name)),
            state: super::StateCell::new(&def.name),
            table_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn label(&self) -> Result<&str> {
        self.label
            .as_deref()
            .map_err(|why| Error::Precondition(format!("pool {}: {why}", self.name)))
    }

    fn read_records(&self) -> BTreeMap<u64, Record> {
        std::fs::read(&self.records)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_records(&self, r: &BTreeMap<u64, Record>) -> Result<()> {
        crate::fsutil::write_json(&self.records, r)
    }

    async fn table(&self) -> Result<sfdisk::Table> {
        sfdisk::read(self.runner.as_ref(), &self.disk)
            .await?
            .ok_or_else(|| {
                Error::Precondition(format!(
                    "{} has no partition table: build the pool ({})",
                    self.disk.display(),
                    self.name
                ))
            })
    }

    fn disk_sectors(&self, t: &sfdisk::Table) -> Result<u64> {
        Ok(device_size(&self.disk).map_err(io("size", &self.disk))? / t.sectorsize)
    }

    /// The volumes of a table: (name, partition); extended containers excluded.
    fn volumes_of<'t>(&self, t: &'t sfdisk::Table) -> Vec<(String, &'t sfdisk::Partition)> {
        let records = self.read_records();
        t.partitions
            .iter()
            .filter(|p| !is_extended(p))
            .map(|p| {
                let known = match &p.name {
                    Some(n) if check_storage_name(n).is_ok() => Some(n.clone()),
                    _ => records.get(&p.start).map(|r| r.name.clone()),
                };
                (
                    known.unwrap_or_else(|| format!("part{}", p.number().unwrap_or(0))),
                    p,
                )
            })
            .collect()
    }

    /// The name a volume has on this disk.
    fn disk_name(&self, name: &str) -> String {
        match self.label.as_deref() {
            Ok("gpt") => gpt_name(name),
            _ => name.to_string(),
        }
    }

    fn volume(&self, name: String, p: &sfdisk::Partition, sector: u64) -> Volume {
        let bytes = p.size * sector;
        let abnormal = (!Path::new(&p.node).exists())
            .then(|| format!("the kernel shows no device {}", p.node));
        Volume {
            name,
            format: VolumeFormat::Raw,
            capacity: bytes,
            allocation: bytes,
            abnormal,
        }
    }

    /// Who uses a partition: a mount, or a holder (device-mapper, md …).
    fn users_of(&self, node: &str) -> Option<String> {
        let table = mountinfo::read(&self.mountinfo).unwrap_or_default();
        if let Some(m) = table
            .iter()
            .find(|m| crate::fsutil::is_same_device(Path::new(&m.source), Path::new(node)))
        {
            return Some(format!("mounted at {}", m.mount_point.display()));
        }
        let dev = Path::new(node).file_name()?;
        let holders =
            std::fs::read_dir(self.sysfs.join("class/block").join(dev).join("holders")).ok()?;
        holders
            .flatten()
            .next()
            .map(|h| format!("held by {}", h.file_name().to_string_lossy()))
    }

    /// Waits until devtmpfs shows the partition's device node.
    async fn wait_for_node(&self, node: &str) -> Result<()> {
        for _ in 0..100 {
            if Path::new(node).exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Error::Precondition(format!(
            "the kernel did not show {node} within 2s after adding it"
        )))
    }

    async fn add_partition(
        &self,
        t: &sfdisk::Table,
        name: &str,
        sectors: u64,
        type_name: &str,
    ) -> Result<Volume> {
        let label = self.label()?;
        let (gpt_type, mbr_type) = disk_layout::partition_type(type_name).ok_or_else(|| {
            Error::Invalid(format!(
                "partitionType {type_name:?} is not known; use one of {}",
                disk_layout::PARTITION_TYPES
            ))
        })?;
        let disk_sectors = self.disk_sectors(t)?;
        let free = free_extents(t, disk_sectors);
        let Some((extent, slot)) = best_fit(&free, sectors) else {
            let total: u64 = free.iter().map(|(e, _)| e.len()).sum();
            let largest = free.iter().map(|(e, _)| e.len()).max().unwrap_or(0);
            let why = if total >= sectors {
                format!(
                    "no single free extent holds {} bytes (largest {}, {} free in {} extents); a partition cannot span extents",
                    sectors * t.sectorsize, largest * t.sectorsize, total * t.sectorsize, free.len()
                )
            } else if label == "dos" && free.is_empty() {
                "the dos table has no free primary slot or extended space".into()
            } else {
                format!("{} bytes free", total * t.sectorsize)
            };
            return Err(Error::OutOfSpace {
                pool: self.name.clone(),
                why,
            });
        };
        let start = extent.start;
        let type_code = if label == "gpt" { gpt_type } else { mbr_type };
        let disk_label = (label == "gpt").then_some(name);
        tracing::debug!(pool.name = %self.name, start, sectors, ?slot, "adding partition");
        sfdisk::append(
            self.runner.as_ref(),
            &self.disk,
            start,
            sectors,
            type_code,
            disk_label,
        )
        .await?;
        let after = self.table().await?;
        let p = after
            .partitions
            .iter()
            .find(|p| p.start == start)
            .ok_or_else(|| {
                Error::Precondition(format!("sfdisk wrote no partition at sector {start}"))
            })?;
        let n = p.number().unwrap_or(0);
        let told = async {
            partx::add(self.runner.as_ref(), &self.disk, n).await?;
            self.wait_for_node(&p.node).await?;
            // The space was free in the table, but may still hold an old
            // filesystem's signature; a new volume must read as blank.
            let node = PathBuf::from(&p.node);
            tokio::task::spawn_blocking(move || crate::fsutil::zero_ends(&node, ALIGN_BYTES))
                .await
                .map_err(|e| io("clear", Path::new(&p.node))(std::io::Error::other(e)))?
                .map_err(io("clear", Path::new(&p.node)))
        }
        .await;
        if let Err(e) = told {
            let _ = sfdisk::delete(self.runner.as_ref(), &self.disk, n).await; // undo: leave no half volume
            return Err(e);
        }
        Ok(self.volume(name.to_string(), p, after.sectorsize))
    }
}

#[tonic::async_trait]
impl Pool for DiskPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_type(&self) -> PoolType {
        PoolType::Disk
    }

    async fn start(&self) -> Result<()> {
        let r = async {
            let label = self.label()?.to_string();
            match std::fs::metadata(&self.disk) {
                Ok(m) if m.file_type().is_block_device() => {}
                Ok(_) => {
                    return Err(Error::Precondition(format!(
                        "source.device {} is not a block device",
                        self.disk.display()
                    )))
                }
                Err(e) => return Err(io("open", &self.disk)(e)),
            }
            let table = match sfdisk::read(self.runner.as_ref(), &self.disk).await? {
                Some(t) => t,
                None if self.auto_build => {
                    self.build(false).await?;
                    self.table().await?
                }
                None => return Err(self.table().await.unwrap_err()),
            };
            if table.label != label {
                return Err(Error::Precondition(format!(
                    "{} holds a {} table but the pool's source.format is {label}",
                    self.disk.display(),
                    table.label
                )));
            }
            Ok(())
        }
        .await;
        self.state.record_start(r)
    }

    async fn build(&self, overwrite: bool) -> Result<()> {
        let label = self.label()?.to_string();
        let _g = self.table_lock.lock().await;
        let existing = sfdisk::read(self.runner.as_ref(), &self.disk).await?;
        if let Some(t) = &existing {
            if t.label == label && !overwrite {
                return Ok(()); // built already
            }
            if let Some(by) = t.partitions.iter().find_map(|p| self.users_of(&p.node)) {
                return Err(Error::InUse {
                    what: format!("disk {}", self.disk.display()),
                    by,
                });
            }
        }
        let found = match Probe::device(self.runner.as_ref(), &self.disk).await? {
            Probe::Blank => None,
            Probe::Filesystem(fs) => Some(format!("a {fs} filesystem")),
            Probe::Other { kind } => Some(kind),
        };
        if let Some(found) = found.filter(|_| !overwrite) {
            return Err(Error::NotBlank {
                device: self.disk.clone(),
                found,
            });
        }
        sfdisk::write_label(self.runner.as_ref(), &self.disk, &label, overwrite).await?;
        if let Some(t) = existing {
            for p in &t.partitions {
                if let Some(n) = p.number() {
                    let _ = partx::delete(self.runner.as_ref(), &self.disk, n).await;
                }
            }
        }
        self.write_records(&BTreeMap::new())
    }

    async fn status(&self, count_volumes: bool) -> PoolStatus {
        let mut st = self.state.status();
        let state = st.state;
        if state != PoolState::Running {
            return st;
        }
        let t = match self.table().await {
            Ok(t) => t,
            Err(e) => {
                st.state = PoolState::Degraded;
                st.message = pool_csi_common::full_message(&e);
                return st;
            }
        };
        let sector = t.sectorsize;
        let disk = self.disk_sectors(&t).unwrap_or(0);
        let free = free_extents(&t, disk);
        let vols = self.volumes_of(&t);
        st.capacity = disk * sector;
        st.allocation = vols.iter().map(|(_, p)| p.size * sector).sum();
        st.available = free.iter().map(|(e, _)| e.len() * sector).sum();
        st.max_volume = free
            .iter()
            .map(|(e, _)| e.len() * sector)
            .max()
            .unwrap_or(0);
        st.free_extents = free
            .iter()
            .map(|(e, _)| (e.start * sector, e.end * sector))
            .collect();
        if count_volumes {
            st.volume_count = Some(vols.len() as u32);
        }
        st
    }

    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        self.state.ensure_running()?;
        if req.source != Source::Empty {
            return Err(Error::Invalid(
                "disk pools cannot copy volumes: a partition starts empty".into(),
            ));
        }
        if req.format.is_some_and(|f| f != VolumeFormat::Raw) {
            return Err(Error::Invalid(
                "disk pool volumes are partitions: volumeFormat must be raw".into(),
            ));
        }
        if req.allocation.is_some_and(|a| a != Allocation::Full) {
            return Err(Error::Invalid(
                "disk pool volumes are partitions: they are always fully allocated".into(),
            ));
        }
        let type_name = req.partition_type.as_deref().unwrap_or("linux");
        if disk_layout::partition_type(type_name).is_none() {
            return Err(Error::Invalid(format!(
                "partitionType {type_name:?} is not known; use one of {}",
                disk_layout::PARTITION_TYPES
            )));
        }
        let name = self.disk_name(&req.name);
        let _g = self.table_lock.lock().await;
        let t = self.table().await?;
        if let Some((n, p)) = self.volumes_of(&t).into_iter().find(|(n, _)| *n == name) {
            let v = self.volume(n, p, t.sectorsize);
            if v.capacity < req.required || (req.limit != 0 && v.capacity > req.limit) {
                return Err(Error::NameTaken {
                    what: "volume",
                    pool: self.name.clone(),
                    name,
                    why: format!("{} bytes, outside the requested range", v.capacity),
                });
            }
            return Ok(v);
        }
        let bytes = fit_size(req.required, req.limit, ALIGN_BYTES, DEFAULT_SIZE)?;
        let sectors = bytes / t.sectorsize;
        let mut records = self.read_records();
        // The record goes first (intent), so a crash mid-create still knows the name.
        let free = free_extents(&t, self.disk_sectors(&t)?);
        if let Some((e, _)) = best_fit(&free, sectors) {
            records.insert(
                e.start,
                Record {
                    name: name.clone(),
                    wipe_on_delete: req.wipe_on_delete,
                },
            );
            self.write_records(&records)?;
        }
        match self.add_partition(&t, &name, sectors, type_name).await {
            Ok(v) => Ok(v),
            Err(e) => {
                records.retain(|_, r| r.name != name);
                let _ = self.write_records(&records);
                Err(e)
            }
        }
    }

    async fn delete_volume(&self, name: &str, wipe: bool) -> Result<()> {
        self.state.ensure_running()?;
        let name = self.disk_name(name);
        let _g = self.table_lock.lock().await;
        let t = self.table().await?;
        let mut records = self.read_records();
        let Some((_, p)) = self.volumes_of(&t).into_iter().find(|(n, _)| *n == name) else {
            records.retain(|_, r| r.name != name);
            return self.write_records(&records);
        };
        if let Some(by) = self.users_of(&p.node) {
            return Err(Error::InUse {
                what: format!("volume {name} ({})", p.node),
                by,
            });
        }
        if wipe || records.get(&p.start).is_some_and(|r| r.wipe_on_delete) {
            let node = PathBuf::from(&p.node);
            tokio::task::spawn_blocking(move || crate::fsutil::zero_device(&node))
                .await
                .map_err(|e| io("wipe", Path::new(&p.node))(std::io::Error::other(e)))?
                .map_err(io("wipe", Path::new(&p.node)))?;
        }
        let n = p.number().unwrap_or(0);
        sfdisk::delete(self.runner.as_ref(), &self.disk, n).await?;
        if let Err(e) = partx::delete(self.runner.as_ref(), &self.disk, n).await {
            tracing::warn!(pool.name = %self.name, error = %e, "kernel kept the deleted partition");
        }
        records.remove(&p.start);
        self.write_records(&records)
    }

    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded> {
        self.state.ensure_running()?;
        let name = self.disk_name(name);
        let _g = self.table_lock.lock().await;
        let t = self.table().await?;
        let (_, p) = self
            .volumes_of(&t)
            .into_iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.clone(),
            })?;
        let current = p.size * t.sectorsize;
        if current >= required {
            return Ok(Expanded {
                capacity: current,
                node_expansion_required: true,
            });
        }
        let bytes = fit_size(required, limit, ALIGN_BYTES, DEFAULT_SIZE)?;
        let sectors = bytes / t.sectorsize;
        let room = room_after(&t, p, self.disk_sectors(&t)?);
        if sectors > p.size + room {
            return Err(Error::OutOfRange(format!(
                "partition {} can grow to at most {} bytes: the space after it is {} (partitions do not move)",
                p.node,
                (p.size + room) * t.sectorsize,
                if room == 0 { "taken by another partition".to_string() } else { format!("{} bytes", room * t.sectorsize) }
            )));
        }
        let n = p.number().unwrap_or(0);
        sfdisk::resize(self.runner.as_ref(), &self.disk, n, p.start, sectors).await?;
        partx::update(self.runner.as_ref(), &self.disk, n).await?;
        Ok(Expanded {
            capacity: bytes,
            node_expansion_required: true,
        })
    }

    async fn get_volume(&self, name: &str) -> Result<Volume> {
        self.state.ensure_running()?;
        let name = self.disk_name(name);
        let t = self.table().await?;
        let v = self
            .volumes_of(&t)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(n, p)| self.volume(n, p, t.sectorsize));
        v.ok_or_else(|| Error::VolumeNotFound {
            pool: self.name.clone(),
            name,
        })
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.state.ensure_running()?;
        let t = self.table().await?;
        let mut v: Vec<_> = self
            .volumes_of(&t)
            .into_iter()
            .map(|(n, p)| self.volume(n, p, t.sectorsize))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn create_snapshot(&self, _source: &str, _name: &str) -> Result<super::Snapshot> {
        Err(Error::Invalid(
            "disk pools have no snapshots: partitions cannot be copied in place".into(),
        ))
    }

    async fn delete_snapshot(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    async fn list_snapshots(&self) -> Result<Vec<super::Snapshot>> {
        Ok(Vec::new())
    }

    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        self.state.ensure_running()?;
        let name = self.disk_name(name);
        let t = self.table().await?;
        let (_, p) = self
            .volumes_of(&t)
            .into_iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.clone(),
            })?;
        Ok(AttachSource::Block {
            device: PathBuf::from(&p.node),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_types_are_named_or_refused_clearly() {
        assert_eq!(label_of(None).unwrap(), "gpt");
        assert_eq!(label_of(Some("msdos")).unwrap(), "dos");
        assert!(label_of(Some("sun")).unwrap_err().contains("cannot write"));
        assert!(label_of(Some("zfs")).unwrap_err().contains("unknown"));
    }
}
