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
//! are listed as `part<N>`. The same record remembers wipeOnDelete. On a dos
//! table pool-build makes one extended partition over the disk, and volumes
//! are logical partitions inside it (a table with three primaries and no
//! extended partition turns its last slot into one), so a dos pool is not
//! limited to four volumes.
//!
//! Snapshots, clones and restores are partitions too: a snapshot is a
//! partition holding a block copy of its volume (never attached), a clone or
//! restore a new partition with a copy of its source. While the copy runs
//! the new partition is marked pending (GPT name `t.…`, and in the record);
//! it becomes a volume or snapshot only once the copy is complete and
//! flushed, so a crash mid-copy never leaves half a volume that looks whole:
//! a retry, or deleting the name, removes the pending partition. The source
//! is frozen (`fsfreeze`) for the copy while it is mounted, and the copy
//! skips what reads as zeros after zeroing the target, so copies of mostly
//! empty volumes stay thin on thin-provisioned disks. See [`records`].

pub mod layout;
pub mod records;

use super::{
    fit_size, CreateRequest, Expanded, Pool, PoolState, PoolStatus, Snapshot, Source, StateCell,
    Volume,
};
use crate::{
    attach::AttachSource,
    error::{io, Error, Result},
    exec::CommandRunner,
    fsutil::{copy_device_sparse, device_size, is_same_device, zero_device, zero_ends},
    mount::{mountinfo, quiesce},
    tools::{blkid::Probe, partx, sfdisk},
    Config,
};
use layout::{best_fit, free_extents, room_after, ALIGN_BYTES, PARTITION_TYPES};
use pool_csi_common::{Allocation, PoolDefinition, PoolType, VolumeFormat};
use records::{classify, find, gpt_label, Entry, Kind, Record, Records, SnapshotOf};
use std::{
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const DEFAULT_SIZE: u64 = 1 << 30;
/// Table types sfdisk reads but pool-csi will not write.
const READ_ONLY_LABELS: [&str; 7] = ["dvh", "mac", "bsd", "pc98", "sun", "aix", "amiga"];

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
    quiescer: quiesce::Quiescer,
    state: StateCell,
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
            quiescer: quiesce::Quiescer::new(cfg),
            runner,
            mountinfo: cfg.mountinfo.clone(),
            sysfs: cfg.sysfs_root.clone(),
            records: cfg
                .state_dir
                .join("disks")
                .join(format!("{}.json", def.name)),
            state: StateCell::new(&def.name),
            table_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn label(&self) -> Result<&str> {
        self.label
            .as_deref()
            .map_err(|why| Error::Precondition(format!("pool {}: {why}", self.name)))
    }

    fn is_gpt(&self) -> bool {
        self.label.as_deref() == Ok("gpt")
    }

    fn read_records(&self) -> Records {
        std::fs::read(&self.records)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_records(&self, r: &Records) -> Result<()> {
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

    /// The name a volume has on this disk.
    fn disk_name(&self, name: &str) -> String {
        match self.is_gpt() {
            true => layout::gpt_name(name),
            false => name.to_string(),
        }
    }

    fn volume(e: &Entry<'_>, sector: u64) -> Volume {
        let bytes = e.part.size * sector;
        let abnormal = (!Path::new(&e.part.node).exists())
            .then(|| format!("the kernel shows no device {}", e.part.node));
        Volume {
            name: e.name.clone(),
            format: VolumeFormat::Raw,
            capacity: bytes,
            allocation: bytes,
            abnormal,
            published: None,
        }
    }

    fn snapshot(e: &Entry<'_>, sector: u64) -> Snapshot {
        let of = e
            .record
            .and_then(|r| r.snapshot.clone())
            .unwrap_or_default();
        Snapshot {
            name: e.name.clone(),
            source_volume: of.source,
            format: VolumeFormat::Raw,
            size: e.part.size * sector,
            created_unix_nanos: of.created_unix_nanos,
        }
    }

    /// Who uses a partition: a mount, or a holder (device-mapper, md …).
    fn users_of(&self, node: &str) -> Option<String> {
        let table = mountinfo::read(&self.mountinfo).unwrap_or_default();
        if let Some(m) = table
            .iter()
            .find(|m| is_same_device(Path::new(&m.source), Path::new(node)))
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

    /// Makes a partition of `sectors` in the best-fitting free extent for
    /// `record` (written first: a crash in between leaves a record the next
    /// attempt finds), of kind `kind`. The caller holds the table lock.
    async fn add_partition(
        &self,
        t: &sfdisk::Table,
        kind: &Kind,
        record: Record,
        sectors: u64,
        type_name: &str,
    ) -> Result<sfdisk::Partition> {
        let label = self.label()?;
        let (gpt_type, mbr_type) = layout::partition_type(type_name).ok_or_else(|| {
            Error::Invalid(format!(
                "partitionType {type_name:?} is not known; use one of {PARTITION_TYPES}"
            ))
        })?;
        let disk_sectors = self.disk_sectors(t)?;
        // Tables built before pool-csi made the extended partition at build
        // (or by hand): the last primary slot becomes one.
        let extended;
        let t = match layout::extended_candidate(t, disk_sectors) {
            Some(e) => {
                // The last primary slot becomes a container for logical partitions.
                tracing::info!(pool.name = %self.name, start = e.start, sectors = e.len(), "making an extended partition for volumes past the fourth");
                sfdisk::append(
                    self.runner.as_ref(),
                    &self.disk,
                    e.start,
                    e.len(),
                    "5",
                    None,
                )
                .await?;
                extended = self.table().await?;
                &extended
            }
            None => t,
        };
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
        let mut records = self.read_records();
        records.insert(start, record.clone());
        self.write_records(&records)?;
        let made = async {
            let type_code = if label == "gpt" { gpt_type } else { mbr_type };
            let disk_label = (label == "gpt").then(|| gpt_label(kind, &record.name));
            tracing::debug!(pool.name = %self.name, start, sectors, ?slot, "adding partition");
            sfdisk::append(
                self.runner.as_ref(),
                &self.disk,
                start,
                sectors,
                type_code,
                disk_label.as_deref(),
            )
            .await?;
            let after = self.table().await?;
            let p = after
                .partitions
                .into_iter()
                .find(|p| p.start == start)
                .ok_or_else(|| {
                    Error::Precondition(format!("sfdisk wrote no partition at sector {start}"))
                })?;
            let told = async {
                // --update, not --add: a partition the kernel kept after a
                // crash mid-delete is replaced, not an error.
                partx::update(self.runner.as_ref(), &self.disk, p.number().unwrap_or(0)).await?;
                self.wait_for_node(&p.node).await?;
                // The space was free in the table, but may still hold an old
                // filesystem's signature; a new volume must read as blank.
                let node = PathBuf::from(&p.node);
                tokio::task::spawn_blocking(move || zero_ends(&node, ALIGN_BYTES))
                    .await
                    .map_err(|e| io("clear", Path::new(&p.node))(std::io::Error::other(e)))?
                    .map_err(io("clear", Path::new(&p.node)))
            }
            .await;
            if let Err(e) = told {
                // Undo: leave no half volume.
                let _ =
                    sfdisk::delete(self.runner.as_ref(), &self.disk, p.number().unwrap_or(0)).await;
                return Err(e);
            }
            Ok(p)
        }
        .await;
        if made.is_err() {
            records.remove(&start);
            let _ = self.write_records(&records);
        }
        made
    }

    /// Removes a partition and its record. The caller holds the table lock
    /// and has checked nothing uses it.
    async fn remove_partition(&self, p: &sfdisk::Partition) -> Result<()> {
        let n = p.number().unwrap_or(0);
        sfdisk::delete(self.runner.as_ref(), &self.disk, n).await?;
        if let Err(e) = partx::delete(self.runner.as_ref(), &self.disk, n).await {
            tracing::warn!(pool.name = %self.name, error = %e, "kernel kept the deleted partition");
        }
        let mut records = self.read_records();
        if records.remove(&p.start).is_some() {
            self.write_records(&records)?;
        }
        Ok(())
    }

    /// Removes what a crashed create or copy into `name` (of this kind)
    /// left behind; whether there was anything. The caller holds the table
    /// lock.
    async fn remove_pending(&self, t: &sfdisk::Table, snapshot: bool, name: &str) -> Result<bool> {
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        let Some(e) = find(&entries, &Kind::Pending { snapshot }, name) else {
            return Ok(false);
        };
        tracing::info!(pool.name = %self.name, partition = %e.part.node, "removing a partition left half-made by an interrupted operation");
        let part = e.part.clone();
        self.remove_partition(&part).await?;
        Ok(true)
    }

    /// `t` without a leftover of an interrupted create or copy into `name`.
    async fn without_pending(
        &self,
        t: sfdisk::Table,
        snapshot: bool,
        name: &str,
    ) -> Result<sfdisk::Table> {
        match self.remove_pending(&t, snapshot, name).await? {
            true => self.table().await,
            false => Ok(t),
        }
    }

    /// Fills the pending partition `to` with the first `len` bytes of
    /// `from`, frozen while mounted, then makes it the `kind` named in its
    /// record. On failure the partition goes again.
    async fn fill(
        &self,
        from: &str,
        to: &sfdisk::Partition,
        len: u64,
        kind: Kind,
        name: &str,
    ) -> Result<()> {
        let copied = async {
            let frozen = self.quiescer.freeze(&[PathBuf::from(from)]).await?;
            let (src, dst) = (PathBuf::from(from), PathBuf::from(&to.node));
            let r = tokio::task::spawn_blocking(move || copy_device_sparse(&src, &dst, len))
                .await
                .map_err(|e| io("copy onto", Path::new(&to.node))(std::io::Error::other(e)))
                .and_then(|r| r.map_err(io("copy onto", Path::new(&to.node))));
            frozen.thaw(&self.quiescer).await;
            r
        }
        .await;
        let _g = self.table_lock.lock().await;
        let finished = match copied {
            Ok(()) => self.finish(to, &kind, name).await,
            Err(e) => Err(e),
        };
        if finished.is_err() {
            let _ = self.remove_partition(to).await;
        }
        finished
    }

    /// A pending partition whose content is complete becomes what it was
    /// made for: its GPT name, then its record (the record decides).
    async fn finish(&self, p: &sfdisk::Partition, kind: &Kind, name: &str) -> Result<()> {
        let label = gpt_label(kind, name);
        if self.is_gpt() && p.name.as_deref() != Some(label.as_str()) {
            let n = p.number().unwrap_or(0);
            sfdisk::set_name(self.runner.as_ref(), &self.disk, n, &label).await?;
        }
        let mut records = self.read_records();
        if let Some(r) = records.get_mut(&p.start) {
            r.pending = false;
        }
        self.write_records(&records)
    }

    /// The partition a copy starts from: a volume or a snapshot of this pool.
    fn source<'e, 't>(&self, entries: &'e [Entry<'t>], source: &Source) -> Result<&'e Entry<'t>> {
        let (kind, name) = match source {
            Source::Volume(v) => (Kind::Volume, v),
            Source::Snapshot(s) => (Kind::Snapshot, s),
            Source::Empty => unreachable!("only copies have a source"),
        };
        find(entries, &kind, name).ok_or_else(|| match kind {
            Kind::Snapshot => Error::SnapshotNotFound {
                pool: self.name.clone(),
                name: name.clone(),
            },
            _ => Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.clone(),
            },
        })
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Pool for DiskPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn recorded_state(&self) -> PoolState {
        self.state.state()
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
        if label == "dos" {
            // One extended partition over the whole disk: volumes are logical
            // partitions inside it, as many as fit, each free to grow into
            // the space after it (four primaries would be a hard limit).
            let t = self.table().await?;
            if let Some(e) = layout::free_extents(&t, self.disk_sectors(&t)?)
                .into_iter()
                .map(|(e, _)| e)
                .max_by_key(layout::Extent::len)
            {
                sfdisk::append(
                    self.runner.as_ref(),
                    &self.disk,
                    e.start,
                    e.len(),
                    "5",
                    None,
                )
                .await?;
            }
        }
        if let Some(t) = existing {
            for p in &t.partitions {
                if let Some(n) = p.number() {
                    let _ = partx::delete(self.runner.as_ref(), &self.disk, n).await;
                }
            }
        }
        self.write_records(&Records::new())
    }

    async fn status(&self, count_volumes: bool) -> PoolStatus {
        let mut st = self.state.status();
        if st.state != PoolState::Running {
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
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        st.capacity = disk * sector;
        // Snapshots and copies in progress take space as volumes do.
        st.allocation = entries.iter().map(|e| e.part.size * sector).sum();
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
            let volumes = entries.iter().filter(|e| e.kind == Kind::Volume).count();
            st.volume_count = Some(volumes as u32);
        }
        st
    }

    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        self.state.ensure_running()?;
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
        if layout::partition_type(type_name).is_none() {
            return Err(Error::Invalid(format!(
                "partitionType {type_name:?} is not known; use one of {PARTITION_TYPES}"
            )));
        }
        let name = self.disk_name(&req.name);
        let g = self.table_lock.lock().await;
        let t = self.table().await?;
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        if let Some(e) = find(&entries, &Kind::Volume, &name) {
            let v = Self::volume(e, t.sectorsize);
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
        let source = match &req.source {
            Source::Empty => None,
            s => {
                let e = self.source(&entries, s)?;
                Some((e.part.node.clone(), e.part.size * t.sectorsize))
            }
        };
        let bytes = match &source {
            Some((_, from)) if req.limit != 0 && *from > req.limit => {
                return Err(Error::OutOfRange(format!(
                    "the source is {from} bytes, more than limit_bytes {}",
                    req.limit
                )))
            }
            Some((_, from)) if req.required <= *from => *from,
            _ => fit_size(req.required, req.limit, ALIGN_BYTES, DEFAULT_SIZE)?,
        };
        let sectors = bytes.div_ceil(t.sectorsize);
        let record = Record {
            name: name.clone(),
            wipe_on_delete: req.wipe_on_delete,
            snapshot: None,
            // Pending until its ends are zeroed (or its copy is in): a
            // crash in between leaves what a retry removes, never a volume
            // that may show an old filesystem.
            pending: true,
        };
        // A leftover of an interrupted create goes first.
        let t = self.without_pending(t, false, &name).await?;
        let Some((from, len)) = source else {
            // Named as the volume on GPT already: the record says pending,
            // so finishing is one record write.
            let p = self
                .add_partition(&t, &Kind::Volume, record, sectors, type_name)
                .await?;
            if let Err(e) = self.finish(&p, &Kind::Volume, &name).await {
                let _ = self.remove_partition(&p).await;
                return Err(e);
            }
            return Ok(Self::volume(&volume_entry(&p, &name), t.sectorsize));
        };
        // A copy runs without the table lock.
        let kind = Kind::Pending { snapshot: false };
        let p = self
            .add_partition(&t, &kind, record, sectors, type_name)
            .await?;
        drop(g);
        self.fill(&from, &p, len, Kind::Volume, &name).await?;
        Ok(Self::volume(&volume_entry(&p, &name), t.sectorsize))
    }

    async fn delete_volume(&self, name: &str, wipe: bool) -> Result<()> {
        self.state.ensure_running()?;
        let name = self.disk_name(name);
        let _g = self.table_lock.lock().await;
        let t = self.table().await?;
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        let Some(e) = find(&entries, &Kind::Volume, &name) else {
            // Gone; a copy into it that a crash interrupted goes too.
            self.remove_pending(&t, false, &name).await?;
            let mut records = self.read_records();
            records.retain(|_, r| !(r.name == name && r.snapshot.is_none()));
            return self.write_records(&records);
        };
        if let Some(by) = self.users_of(&e.part.node) {
            return Err(Error::InUse {
                what: format!("volume {name} ({})", e.part.node),
                by,
            });
        }
        if wipe || e.record.is_some_and(|r| r.wipe_on_delete) {
            let node = PathBuf::from(&e.part.node);
            tokio::task::spawn_blocking(move || zero_device(&node))
                .await
                .map_err(|x| io("wipe", Path::new(&e.part.node))(std::io::Error::other(x)))?
                .map_err(io("wipe", Path::new(&e.part.node)))?;
        }
        let part = e.part.clone();
        self.remove_partition(&part).await
    }

    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded> {
        self.state.ensure_running()?;
        let name = self.disk_name(name);
        let _g = self.table_lock.lock().await;
        let t = self.table().await?;
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        let p = find(&entries, &Kind::Volume, &name)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.clone(),
            })?
            .part;
        let current = p.size * t.sectorsize;
        if current >= required {
            // A retry after a crash between the table write and the
            // kernel's update: the kernel learns the size now.
            if crate::fsutil::device_size(Path::new(&p.node)).is_ok_and(|k| k < current) {
                partx::update(self.runner.as_ref(), &self.disk, p.number().unwrap_or(0)).await?;
            }
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
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        find(&entries, &Kind::Volume, &name)
            .map(|e| Self::volume(e, t.sectorsize))
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name,
            })
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.state.ensure_running()?;
        let t = self.table().await?;
        let records = self.read_records();
        let mut v: Vec<_> = classify(&t.partitions, &records)
            .iter()
            .filter(|e| e.kind == Kind::Volume)
            .map(|e| Self::volume(e, t.sectorsize))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// A partition of the volume's size holding a block copy of it.
    async fn create_snapshot(&self, source: &str, name: &str) -> Result<Snapshot> {
        self.state.ensure_running()?;
        let source = self.disk_name(source);
        let g = self.table_lock.lock().await;
        let t = self.table().await?;
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        if let Some(e) = find(&entries, &Kind::Snapshot, name) {
            let s = Self::snapshot(e, t.sectorsize);
            if s.source_volume == source {
                return Ok(s);
            }
            return Err(Error::NameTaken {
                what: "snapshot",
                pool: self.name.clone(),
                name: name.into(),
                why: format!("source volume {}", s.source_volume),
            });
        }
        let src = self.source(&entries, &Source::Volume(source.clone()))?;
        let (from, sectors) = (src.part.node.clone(), src.part.size);
        // A copy of data that must be zeroed when deleted is zeroed too.
        let wipe_on_delete = src.record.is_some_and(|r| r.wipe_on_delete);
        let t = self.without_pending(t, true, name).await?;
        let created = now_nanos();
        let record = Record {
            name: name.into(),
            wipe_on_delete,
            snapshot: Some(SnapshotOf {
                source: source.clone(),
                created_unix_nanos: created,
            }),
            pending: true,
        };
        let kind = Kind::Pending { snapshot: true };
        let p = self
            .add_partition(&t, &kind, record, sectors, "linux")
            .await?;
        drop(g);
        self.fill(&from, &p, sectors * t.sectorsize, Kind::Snapshot, name)
            .await?;
        Ok(Snapshot {
            name: name.into(),
            source_volume: source,
            format: VolumeFormat::Raw,
            size: sectors * t.sectorsize,
            created_unix_nanos: created,
        })
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.state.ensure_running()?;
        let _g = self.table_lock.lock().await;
        let t = self.table().await?;
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        let Some(e) = find(&entries, &Kind::Snapshot, name) else {
            return self.remove_pending(&t, true, name).await.map(drop);
        };
        if e.record.is_some_and(|r| r.wipe_on_delete) {
            let node = PathBuf::from(&e.part.node);
            tokio::task::spawn_blocking(move || zero_device(&node))
                .await
                .map_err(|x| io("wipe", Path::new(&e.part.node))(std::io::Error::other(x)))?
                .map_err(io("wipe", Path::new(&e.part.node)))?;
        }
        let part = e.part.clone();
        self.remove_partition(&part).await
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.state.ensure_running()?;
        let t = self.table().await?;
        let records = self.read_records();
        let mut s: Vec<_> = classify(&t.partitions, &records)
            .iter()
            .filter(|e| e.kind == Kind::Snapshot)
            .map(|e| Self::snapshot(e, t.sectorsize))
            .collect();
        s.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(s)
    }

    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        self.state.ensure_running()?;
        let name = self.disk_name(name);
        let t = self.table().await?;
        let records = self.read_records();
        let entries = classify(&t.partitions, &records);
        let e = find(&entries, &Kind::Volume, &name).ok_or_else(|| Error::VolumeNotFound {
            pool: self.name.clone(),
            name: name.clone(),
        })?;
        // The kernel may not show a partition a crash kept it from learning.
        if !Path::new(&e.part.node).exists() {
            let _g = self.table_lock.lock().await;
            partx::update(
                self.runner.as_ref(),
                &self.disk,
                e.part.number().unwrap_or(0),
            )
            .await?;
            self.wait_for_node(&e.part.node).await?;
        }
        Ok(AttachSource::Block {
            device: PathBuf::from(&e.part.node),
        })
    }
}

/// A partition just made for volume `name`, as a listing shows it.
fn volume_entry<'t>(p: &'t sfdisk::Partition, name: &str) -> Entry<'t> {
    Entry {
        kind: Kind::Volume,
        name: name.into(),
        part: p,
        record: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_types_are_named_or_refused_clearly() {
        assert_eq!(label_of(None).unwrap(), "gpt");
        assert_eq!(label_of(Some("msdos")).unwrap(), "dos");
        for l in ["dvh", "mac", "bsd", "pc98", "sun", "aix", "amiga"] {
            let why = label_of(Some(l)).unwrap_err();
            assert!(why.contains("cannot write") && why.contains(l), "{why}");
        }
        assert!(label_of(Some("zfs")).unwrap_err().contains("unknown"));
    }
}
