//! dir and fs pools: volumes are image files in `target.path`. An fs pool
//! first mounts its `source.device` there; after that both behave alike.
//!
//! Crash safety: a volume is made under `.pool-csi/tmp` and renamed into
//! place (RENAME_NOREPLACE) only when complete, so a volume file is always
//! whole; leftovers in tmp are removed at start and on retry.

use super::{
    fit_size, layout::Layout, ploop_volume::is_ploop_dir, CreateRequest, Expanded, Pool, PoolState,
    PoolStatus, Source, Volume,
};
use crate::attach::AttachSource;
use crate::fsutil::{remove_if_exists, rename_noreplace, sync_dir, wipe};
use crate::{
    copy,
    error::{io, Error, Result},
    exec::CommandRunner,
    formats,
    mount::{mounter, mountinfo},
    tools::{blkid::Probe, fsfreeze, losetup, mkfs, qsd::Export},
    Config,
};
use pool_csi_common::{Allocation, PoolDefinition, PoolType, VolumeFormat};
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

pub(super) const MIB: u64 = 1 << 20;
/// Set on a volume file whose StorageClass asked for wipeOnDelete.
const WIPE_XATTR: &str = "user.pool-csi.wipe-on-delete";
/// Size of a volume whose request gives no capacity.
pub(super) const DEFAULT_SIZE: u64 = 1 << 30;
/// Formats a file pool creates volumes in, in lookup order.
const FORMATS: [VolumeFormat; 6] = [
    VolumeFormat::Raw,
    VolumeFormat::Qcow2,
    VolumeFormat::Vmdk,
    VolumeFormat::Vpc,
    VolumeFormat::Vdi,
    VolumeFormat::Ploop,
];

/// The device an fs pool mounts.
#[derive(Debug, Clone)]
struct FsDevice {
    device: PathBuf,
    /// None: auto (whatever blkid finds).
    format: Option<String>,
}

pub struct FilePool {
    pub(super) name: String,
    pool_type: PoolType,
    pub(super) layout: Layout,
    device: Option<FsDevice>,
    auto_build: bool,
    pub(super) runner: Arc<dyn CommandRunner>,
    pub(super) sysfs: PathBuf,
    mountinfo: PathBuf,
    /// Where this pool's qemu-storage-daemon exports live.
    exports: PathBuf,
    state: super::StateCell,
    /// Serialises changes to ploop descriptors (snapshots, merges, growth).
    pub(super) ploop_lock: tokio::sync::Mutex<()>,
    /// What the host's ploop tool can do for ploop volumes.
    pub(super) ploop: crate::formats::ploop_host::PloopHost,
}

impl FilePool {
    pub fn new(def: &PoolDefinition, cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        let s = &def.spec;
        let device = (s.pool_type == PoolType::Fs).then(|| FsDevice {
            device: s.source.device.clone().unwrap_or_default().into(),
            format: s.source.format.clone().filter(|f| f != "auto"),
        });
        Self {
            name: def.name.clone(),
            pool_type: s.pool_type,
            layout: Layout::new(s.target.path.clone().unwrap_or_default().into()),
            device,
            auto_build: s.auto_build,
            runner,
            sysfs: cfg.sysfs_root.clone(),
            mountinfo: cfg.mountinfo.clone(),
            exports: exports_dir(cfg, &def.name),
            state: super::StateCell::new(&def.name),
            ploop_lock: tokio::sync::Mutex::new(()),
            ploop: cfg.ploop.clone(),
        }
    }

    /// The volume file (or ploop directory) for `name`, if there is one.
    /// Anything else at a volume's path (a symlink, a directory without
    /// ploop files) is refused.
    pub(super) fn find(&self, name: &str) -> Result<Option<(PathBuf, VolumeFormat)>> {
        for f in FORMATS {
            let path = self.layout.volume(name, f)?;
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && f != VolumeFormat::Ploop => return Ok(Some((path, f))),
                Ok(m) if m.is_dir() && is_ploop_dir(&path) => return Ok(Some((path, f))),
                Ok(_) => {
                    return Err(Error::Precondition(format!(
                        "{} is not a volume pool-csi made (not a regular file or a ploop directory); pool-csi will not touch it",
                        path.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("stat", &path)(e)),
            }
        }
        Ok(None)
    }

    pub(super) async fn describe(&self, name: &str, path: &Path, format: VolumeFormat) -> Volume {
        if format == VolumeFormat::Ploop {
            return self.describe_ploop(name, path);
        }
        let meta = std::fs::metadata(path);
        let allocation = meta.as_ref().map(copy::allocated_bytes).unwrap_or(0);
        match formats::virtual_size(self.runner.as_ref(), format, path).await {
            Ok(capacity) => Volume {
                name: name.into(),
                format,
                capacity,
                allocation,
                abnormal: None,
            },
            Err(e) => Volume {
                name: name.into(),
                format,
                capacity: meta.map(|m| m.len()).unwrap_or(0),
                allocation,
                abnormal: Some(pool_csi_common::full_message(&e)),
            },
        }
    }

    pub(super) fn available(&self) -> Result<u64> {
        let s = rustix::fs::statvfs(&self.layout.root)
            .map_err(|e| io("statfs", &self.layout.root)(e.into()))?;
        Ok(s.f_bavail * s.f_frsize)
    }

    pub(super) fn export_of(&self, name: &str) -> Export {
        Export::at(self.exports.join(name))
    }

    /// Which qemu process (qemu-nbd, qemu-storage-daemon) or ploop device
    /// has the image open on this node, if any.
    pub(super) fn image_user(&self, name: &str) -> Option<String> {
        if let Some(dev) = self.ploop_device(name) {
            return Some(format!("ploop device {}", dev.display()));
        }
        let export = self.export_of(name);
        if let Some(dev) =
            crate::tools::qemu_nbd::NbdState::beside(&export.file).attached(&self.sysfs)
        {
            return Some(format!("qemu-nbd on {}", dev.display()));
        }
        export
            .running_pid()
            .map(|pid| format!("qemu-storage-daemon pid {pid}"))
    }

    /// Who holds the file open through the kernel or qemu, if anyone.
    fn users_of(&self, name: &str, path: &Path) -> Option<String> {
        let loops = losetup::find_by_backing_file(&self.sysfs, path);
        if let Some(l) = loops.first() {
            return Some(format!("loop device {}", l.display()));
        }
        self.image_user(name)
    }

    /// Copies a volume file while it is consistent: when the volume is
    /// attached on this node, its block device is flushed and a filesystem
    /// mounted from it is frozen for the duration of the copy, then thawed
    /// whatever the copy's outcome.
    pub(super) async fn copy_quiesced(&self, name: &str, src: &Path, dst: &Path) -> Result<()> {
        let frozen = self.freeze_users(name, src).await?;
        let (from, to) = (src.to_path_buf(), dst.to_path_buf());
        let copied = tokio::task::spawn_blocking(move || copy::copy_file(&from, &to))
            .await
            .map_err(|e| io("copy", src)(std::io::Error::other(e)))
            .and_then(|r| r.map_err(io("copy", src)).map(|_| ()));
        self.thaw(&frozen).await;
        copied
    }

    /// Flushes the block devices attached for `name` on this node and
    /// freezes the filesystems mounted from them; returns what to thaw.
    pub(super) async fn freeze_users(&self, name: &str, src: &Path) -> Result<Vec<PathBuf>> {
        let export = self.export_of(name);
        if crate::tools::qemu_nbd::NbdState::beside(&export.file)
            .attached(&self.sysfs)
            .is_some()
        {
            return Err(Error::Precondition(format!(
                "volume {name} is attached through qemu-nbd, which cannot be quiesced for a copy; do it while unstaged"
            )));
        }
        let devices: Vec<PathBuf> = [src, export.file.as_path()]
            .iter()
            .flat_map(|f| losetup::find_by_backing_file(&self.sysfs, f))
            .chain(crate::tools::ploop::device_of(&self.sysfs, src))
            .collect();
        let mut frozen = Vec::new();
        if !devices.is_empty() {
            let table = mountinfo::read(&self.mountinfo).map_err(io("read", &self.mountinfo))?;
            for dev in &devices {
                let flushed = File::open(dev)
                    .and_then(|f| f.sync_all())
                    .map_err(io("flush", dev));
                if let Err(e) = flushed {
                    self.thaw(&frozen).await;
                    return Err(e);
                }
                // One mount per filesystem is enough: binds share the superblock.
                if let Some(m) = table.iter().find(|m| Path::new(&m.source) == dev) {
                    if let Err(e) = fsfreeze::freeze(self.runner.as_ref(), &m.mount_point).await {
                        self.thaw(&frozen).await;
                        return Err(e.into());
                    }
                    frozen.push(m.mount_point.clone());
                }
            }
        }
        Ok(frozen)
    }

    pub(super) async fn thaw(&self, frozen: &[PathBuf]) {
        for mp in frozen {
            if let Err(e) = fsfreeze::thaw(self.runner.as_ref(), mp).await {
                tracing::error!(mount = %mp.display(), error = %e, "failed to thaw a frozen filesystem; run fsfreeze --unfreeze");
            }
        }
    }

    async fn mount_device(&self, dev: &FsDevice) -> Result<()> {
        let table = mountinfo::read(&self.mountinfo).map_err(io("read", &self.mountinfo))?;
        if let Some(m) = mountinfo::find_at(&table, &self.layout.root) {
            if crate::fsutil::is_same_device(Path::new(&m.source), &dev.device) {
                return Ok(());
            }
            return Err(Error::Precondition(format!(
                "{} has {} mounted, not the pool's source.device {}",
                self.layout.root.display(),
                m.source,
                dev.device.display()
            )));
        }
        let fs = match Probe::device(self.runner.as_ref(), &dev.device).await? {
            Probe::Filesystem(t) => t,
            Probe::Blank => {
                return Err(Error::Precondition(format!(
                    "{} holds no filesystem: build the pool first (poolctl pool-build {}) or set autoBuild",
                    dev.device.display(),
                    self.name
                )))
            }
            Probe::Other { kind } => {
                return Err(Error::Precondition(format!("{} holds {kind}, not a filesystem", dev.device.display())))
            }
        };
        if let Some(want) = &dev.format {
            if *want != fs {
                return Err(Error::Precondition(format!(
                    "{} holds {fs}, but the pool's source.format is {want}",
                    dev.device.display()
                )));
            }
        }
        std::fs::create_dir_all(&self.layout.root).map_err(io("create", &self.layout.root))?;
        let opts = mounter::parse_flags(&[], false).expect("no flags");
        mounter::mount_fs(&dev.device, &self.layout.root, &fs, &opts)
            .map_err(io("mount pool device on", &self.layout.root))
    }

    fn prepare_dirs(&self) -> Result<()> {
        for d in [
            self.layout.tmp_dir(),
            self.layout.snapshot_dir(),
            self.exports.clone(),
        ] {
            std::fs::create_dir_all(&d).map_err(io("create", &d))?;
        }
        // Whatever is in tmp was never renamed into place: a crash mid-create.
        let tmp = self.layout.tmp_dir();
        for e in std::fs::read_dir(&tmp).map_err(io("read", &tmp))?.flatten() {
            let _ = remove_if_exists(&e.path());
        }
        Ok(())
    }

    async fn create_inner(
        &self,
        req: &CreateRequest,
        tmp: &Path,
        format: VolumeFormat,
        src: Option<(PathBuf, u64)>,
    ) -> Result<u64> {
        let full = req.allocation == Some(Allocation::Full);
        let required = req.required.max(src.as_ref().map_or(0, |s| s.1));
        if let Some((_, src_size)) = &src {
            if req.limit != 0 && *src_size > req.limit {
                return Err(Error::OutOfRange(format!(
                    "the source is {src_size} bytes, more than limit_bytes {}",
                    req.limit
                )));
            }
        }
        let size = match &src {
            Some((_, s)) if req.required <= *s => *s,
            _ => fit_size(required, req.limit, MIB, DEFAULT_SIZE)?,
        };
        // Sparse or not, a volume never starts out larger than the free space.
        let available = self.available()?;
        if size > available {
            return Err(Error::NoSpace {
                pool: self.name.clone(),
                needed: size,
                available,
            });
        }
        match src {
            None if format == VolumeFormat::Ploop && self.ploop.creates() => {
                self.init_ploop(tmp, size).await?
            }
            None => formats::create(self.runner.as_ref(), format, tmp, size, full).await?,
            Some((src_path, _)) if format == VolumeFormat::Ploop => {
                let (volume, delta) = match &req.source {
                    Source::Snapshot(s) => {
                        let r = self
                            .read_record(s)?
                            .ok_or_else(|| Error::SnapshotNotFound {
                                pool: self.name.clone(),
                                name: s.clone(),
                            })?;
                        (r.source_volume, r.delta)
                    }
                    Source::Volume(v) => (v.clone(), None),
                    Source::Empty => unreachable!("a source path means a source"),
                };
                self.copy_ploop(&req.name, &volume, &src_path, delta.as_deref(), tmp, size)
                    .await?;
            }
            Some((src_path, src_size)) => {
                match &req.source {
                    Source::Volume(v) => self.copy_quiesced(v, &src_path, tmp).await?,
                    _ => {
                        let (from, to) = (src_path.clone(), tmp.to_path_buf());
                        tokio::task::spawn_blocking(move || copy::copy_file(&from, &to))
                            .await
                            .map_err(|e| io("copy", &src_path)(std::io::Error::other(e)))?
                            .map_err(io("copy", &src_path))?;
                    }
                }
                if size > src_size {
                    formats::grow(self.runner.as_ref(), format, tmp, size, full).await?;
                }
            }
        }
        let f = File::open(tmp).map_err(io("open", tmp))?;
        if req.wipe_on_delete {
            rustix::fs::fsetxattr(&f, WIPE_XATTR, b"1", rustix::fs::XattrFlags::empty()).map_err(|e| {
                Error::Precondition(format!(
                    "wipeOnDelete needs user extended attributes on the pool's filesystem ({}): {e}",
                    self.layout.root.display()
                ))
            })?;
        }
        f.sync_all().map_err(io("sync", tmp))?;
        Ok(size)
    }
}

pub fn exports_dir(cfg: &Config, pool: &str) -> PathBuf {
    cfg.state_dir.join("exports").join(pool)
}

#[tonic::async_trait]
impl Pool for FilePool {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_type(&self) -> PoolType {
        self.pool_type
    }

    async fn start(&self) -> Result<()> {
        let result = async {
            if let Some(dev) = &self.device {
                if self.auto_build {
                    self.build(false).await?;
                }
                self.mount_device(dev).await?;
            } else if !self.layout.root.is_dir() {
                if !self.auto_build {
                    return Err(Error::Precondition(format!(
                        "target directory {} does not exist: build the pool (poolctl pool-build {}) or set autoBuild",
                        self.layout.root.display(),
                        self.name
                    )));
                }
                self.build(false).await?;
            }
            self.prepare_dirs()
        }
        .await;
        self.state.record_start(result)
    }

    async fn build(&self, overwrite: bool) -> Result<()> {
        let Some(dev) = &self.device else {
            return std::fs::create_dir_all(&self.layout.root)
                .map_err(io("create", &self.layout.root));
        };
        let table = mountinfo::read(&self.mountinfo).map_err(io("read", &self.mountinfo))?;
        if table
            .iter()
            .any(|m| crate::fsutil::is_same_device(Path::new(&m.source), &dev.device))
        {
            return if overwrite {
                Err(Error::InUse {
                    what: dev.device.display().to_string(),
                    by: "a mount; stop the pool first".into(),
                })
            } else {
                Ok(()) // mounted, so built
            };
        }
        let fs = dev.format.clone().unwrap_or_else(|| "ext4".into());
        match Probe::device(self.runner.as_ref(), &dev.device).await? {
            Probe::Blank => {}
            Probe::Filesystem(_) if !overwrite => return Ok(()),
            Probe::Other { kind } if !overwrite => {
                return Err(Error::NotBlank {
                    device: dev.device.clone(),
                    found: kind,
                })
            }
            _ => {
                tracing::warn!(pool.name = %self.name, device = %dev.device.display(), "overwrite requested: formatting")
            }
        }
        mkfs::make(self.runner.as_ref(), &fs, &dev.device).await?;
        Ok(())
    }

    async fn status(&self, count_volumes: bool) -> PoolStatus {
        let mut st = self.state.status();
        let state = st.state;
        if state != PoolState::Running {
            return st;
        }
        match rustix::fs::statvfs(&self.layout.root) {
            Ok(s) => {
                st.capacity = s.f_blocks * s.f_frsize;
                st.available = s.f_bavail * s.f_frsize;
                st.allocation = (s.f_blocks - s.f_bfree) * s.f_frsize;
            }
            Err(e) => {
                st.state = PoolState::Degraded;
                st.message = format!("target {} is unreadable: {e}", self.layout.root.display());
                return st;
            }
        }
        if count_volumes {
            st.volume_count = self.list_volumes().await.ok().map(|v| v.len() as u32);
        }
        st
    }

    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        self.state.ensure_running()?;
        if let Some(a) = req
            .allocation
            .filter(|a| !matches!(a, Allocation::Sparse | Allocation::Full))
        {
            return Err(Error::Invalid(format!(
                "allocation {a} is not possible in {} pools",
                self.pool_type
            )));
        }
        let (source, format) = match &req.source {
            Source::Empty => (None, req.format.unwrap_or(VolumeFormat::Raw)),
            Source::Volume(v) => {
                let (p, f) = self.find(v)?.ok_or_else(|| Error::VolumeNotFound {
                    pool: self.name.clone(),
                    name: v.clone(),
                })?;
                (Some((p, None)), f)
            }
            Source::Snapshot(s) => {
                let snap = self
                    .read_snapshot(s)?
                    .ok_or_else(|| Error::SnapshotNotFound {
                        pool: self.name.clone(),
                        name: s.clone(),
                    })?;
                if snap.format == VolumeFormat::Ploop {
                    // The data is a delta inside the source volume's directory.
                    let dir = self
                        .layout
                        .volume(&snap.source_volume, VolumeFormat::Ploop)?;
                    (Some((dir, Some(snap.size))), snap.format)
                } else {
                    (
                        Some((self.layout.snapshot(s, snap.format)?, None)),
                        snap.format,
                    )
                }
            }
        };
        if let Some(want) = req.format.filter(|w| *w != format) {
            return Err(Error::Invalid(format!(
                "the source is {format}, so the new volume cannot be {want}"
            )));
        }
        if let Some((path, have)) = self.find(&req.name)? {
            let v = self.describe(&req.name, &path, have).await;
            let fits = v.capacity >= req.required && (req.limit == 0 || v.capacity <= req.limit);
            if have != format || !fits {
                return Err(Error::NameTaken {
                    what: "volume",
                    pool: self.name.clone(),
                    name: req.name.clone(),
                    why: format!(
                        "format {have} and {} bytes, incompatible with this request",
                        v.capacity
                    ),
                });
            }
            return Ok(v);
        }
        let src = match source {
            Some((p, Some(size))) => Some((p, size)),
            Some((p, None)) => {
                let size = formats::virtual_size(self.runner.as_ref(), format, &p).await?;
                Some((p, size))
            }
            None => None,
        };
        let tmp = self.layout.tmp('v', &req.name, format)?;
        remove_if_exists(&tmp)?;
        let dst = self.layout.volume(&req.name, format)?;
        let made = async {
            let size = self.create_inner(req, &tmp, format, src).await?;
            rename_noreplace(&tmp, &dst)?;
            sync_dir(&self.layout.root)?;
            Ok(size)
        }
        .await;
        let capacity = match made {
            Ok(size) => size,
            Err(e) => {
                let _ = remove_if_exists(&tmp);
                return Err(e);
            }
        };
        let allocation = std::fs::metadata(&dst)
            .map(|m| copy::allocated_bytes(&m))
            .unwrap_or(0);
        Ok(Volume {
            name: req.name.clone(),
            format,
            capacity,
            allocation,
            abnormal: None,
        })
    }

    async fn delete_volume(&self, name: &str, wipe_first: bool) -> Result<()> {
        self.state.ensure_running()?;
        let Some((path, format)) = self.find(name)? else {
            remove_if_exists(&self.layout.tmp('v', name, VolumeFormat::Raw)?)?;
            return Ok(());
        };
        let recorded = File::open(&path)
            .ok()
            .is_some_and(|f| rustix::fs::fgetxattr(&f, WIPE_XATTR, &mut [0u8; 4]).is_ok());
        if format == VolumeFormat::Ploop {
            return self.delete_ploop(name, &path, wipe_first || recorded).await;
        }
        if let Some(by) = self.users_of(name, &path) {
            return Err(Error::InUse {
                what: format!("volume {name} ({format})"),
                by,
            });
        }
        if wipe_first || recorded {
            let p = path.clone();
            tokio::task::spawn_blocking(move || wipe(&p))
                .await
                .map_err(|e| io("wipe", &path)(std::io::Error::other(e)))?
                .map_err(io("wipe", &path))?;
        }
        remove_if_exists(&path)?;
        sync_dir(&self.layout.root)
    }

    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded> {
        self.state.ensure_running()?;
        let (path, format) = self.find(name)?.ok_or_else(|| Error::VolumeNotFound {
            pool: self.name.clone(),
            name: name.into(),
        })?;
        let current = formats::virtual_size(self.runner.as_ref(), format, &path).await?;
        if current >= required {
            if limit != 0 && current > limit {
                return Err(Error::OutOfRange(format!(
                    "volume is {current} bytes, above limit_bytes {limit}"
                )));
            }
            return Ok(Expanded {
                capacity: current,
                node_expansion_required: true,
            });
        }
        let size = fit_size(required, limit, MIB, DEFAULT_SIZE)?;
        let meta = std::fs::metadata(&path).map_err(io("stat", &path))?;
        let full = format == VolumeFormat::Raw
            && copy::allocated_bytes(&meta) >= meta.len()
            && meta.len() > 0;
        let (growth, available) = (size - current, self.available()?);
        if growth > available {
            return Err(Error::NoSpace {
                pool: self.name.clone(),
                needed: growth,
                available,
            });
        }
        let export = self.export_of(name);
        if format == VolumeFormat::Ploop {
            self.grow_ploop(name, &path, size).await?;
        } else if format != VolumeFormat::Raw && export.running_pid().is_some() {
            crate::tools::qsd::resize(&export, size).await?; // attached: grow through the running daemon
        } else {
            formats::grow(self.runner.as_ref(), format, &path, size, full).await?;
        }
        Ok(Expanded {
            capacity: size,
            node_expansion_required: true,
        })
    }

    async fn get_volume(&self, name: &str) -> Result<Volume> {
        self.state.ensure_running()?;
        let (path, format) = self.find(name)?.ok_or_else(|| Error::VolumeNotFound {
            pool: self.name.clone(),
            name: name.into(),
        })?;
        Ok(self.describe(name, &path, format).await)
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.state.ensure_running()?;
        let root = &self.layout.root;
        let mut out = Vec::new();
        for e in std::fs::read_dir(root).map_err(io("read", root))?.flatten() {
            let Some((name, format)) = super::layout::parse_file_name(Path::new(&e.file_name()))
            else {
                continue;
            };
            let Ok(t) = e.file_type() else { continue };
            let ours = match format {
                VolumeFormat::Ploop => t.is_dir() && is_ploop_dir(&e.path()),
                _ => t.is_file(),
            };
            if ours {
                out.push(self.describe(&name, &e.path(), format).await);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create_snapshot(&self, source: &str, name: &str) -> Result<super::Snapshot> {
        self.state.ensure_running()?;
        self.snapshot_volume(source, name).await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.state.ensure_running()?;
        self.remove_snapshot(name).await
    }

    async fn list_snapshots(&self) -> Result<Vec<super::Snapshot>> {
        self.state.ensure_running()?;
        self.read_snapshots()
    }

    /// qemu has closed a ploop disk: leave its headers as the ploop tools
    /// expect (best effort; the next attach settles them again).
    async fn detached(&self, name: &str) -> Result<()> {
        if let Ok(Some((dir, VolumeFormat::Ploop))) = self.find(name) {
            let settled = crate::formats::ploop_disk::Disk::open(&dir).and_then(|d| d.settle());
            if let Err(e) = settled {
                tracing::warn!(disk = %dir.display(), error = %pool_csi_common::full_message(&e), "could not settle the ploop headers after detach");
            }
        }
        Ok(())
    }

    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        self.state.ensure_running()?;
        let (path, format) = self.find(name)?.ok_or_else(|| Error::VolumeNotFound {
            pool: self.name.clone(),
            name: name.into(),
        })?;
        if format == VolumeFormat::Ploop {
            return self.ploop_attach_source(name, &path).await;
        }
        Ok(AttachSource::File { path, format })
    }
}
