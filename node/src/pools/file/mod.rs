//! dir, fs and netfs pools: volumes are images in `target.path`, one file
//! (or a ploop or directory volume's directory) per volume, in any of the
//! formats of [`formats`]. An fs pool first mounts its `source.device`
//! there, a netfs pool its network share ([`share`]); after that they
//! behave alike, except that a netfs pool's volumes are shared by every
//! node of the pool: a single-node volume's one user is recorded on the
//! share ([`claims`]). The pool decides names, space, idempotency and crash safety; what
//! an image is and how it is made, grown, copied, snapshotted and attached
//! is the format's business, behind [`ImageFormat`].
//!
//! Crash safety: a volume is made under `.pool-csi/tmp` and renamed into
//! place (RENAME_NOREPLACE) only when complete, so a volume is always whole;
//! leftovers in tmp are removed at start and on retry.

pub mod claims;
pub mod fs_device;
pub mod layout;
pub mod names;
pub mod share;

use super::{
    fit_size, CreateRequest, Expanded, Page, Pool, PoolState, PoolStatus, Snapshot, SnapshotQuery,
    Source, StateCell, Volume,
};
use crate::{
    attach::AttachSource,
    copy,
    error::{io, Error, Result},
    exec::CommandRunner,
    formats::{
        env::ImageEnv,
        records::{Record, SnapshotRecords},
        registry::Formats,
        CopyFrom, ImageFormat, Origin, SnapshotTarget,
    },
    fsutil::{remove_if_exists, rename_noreplace, sync_dir},
    mount::quiesce::Quiescer,
    Config,
};
use claims::Claims;
use fs_device::FsDevice;
use layout::Layout;
use pool_csi_common::{Allocation, PoolDefinition, PoolType};
use share::NetShare;
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

const MIB: u64 = 1 << 20;
/// A listing looks at this many names (about 1 ms of work for raw
/// volumes), then lets the node's other calls run.
const LIST_TURN: usize = 256;
/// Set on a volume whose StorageClass asked for wipeOnDelete.
const WIPE_XATTR: &str = "user.pool-csi.wipe-on-delete";
/// Size of a volume whose request gives no capacity.
const DEFAULT_SIZE: u64 = 1 << 30;

pub struct FilePool {
    name: String,
    pool_type: PoolType,
    layout: Layout,
    device: Option<FsDevice>,
    /// netfs: the share mounted at the target, and who uses which volume.
    share: Option<(NetShare, Claims)>,
    /// This node's name (a shared pool's claims name nodes).
    node: String,
    auto_build: bool,
    runner: Arc<dyn CommandRunner>,
    mountinfo: PathBuf,
    state: StateCell,
    formats: Formats,
    env: ImageEnv,
    names: names::NameIndex,
    /// This node's leftovers in tmp were cleared (at the first start only:
    /// a restart after a lost share must not take work in flight).
    tmp_cleared: std::sync::atomic::AtomicBool,
}

impl FilePool {
    pub fn new(def: &PoolDefinition, cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        let s = &def.spec;
        let device = (s.pool_type == PoolType::Fs).then(|| FsDevice {
            device: s.source.device.clone().unwrap_or_default().into(),
            format: s.source.format.clone().filter(|f| f != "auto"),
        });
        let root: PathBuf = s.target.path.clone().unwrap_or_default().into();
        // A netfs pool's share is every node's; other pools are this node's.
        let shared = s.pool_type == PoolType::Netfs;
        let layout = match shared {
            true => Layout::shared(root, &cfg.node_name),
            false => Layout::new(root),
        };
        let records = SnapshotRecords::new(layout.snapshot_dir(), layout.tmp_dir(), !shared);
        let share = shared.then(|| {
            (
                NetShare::new(def, cfg),
                Claims::new(layout.meta_dir().join("published"), layout.tmp_dir()),
            )
        });
        let env = ImageEnv::new(
            runner.clone(),
            cfg.sysfs_root.clone(),
            Quiescer::new(cfg),
            exports_dir(cfg, &def.name),
            layout.tmp_dir(),
            records,
            layout.root.clone(),
        );
        Self {
            name: def.name.clone(),
            pool_type: s.pool_type,
            layout,
            device,
            share,
            node: cfg.node_name.clone(),
            auto_build: s.auto_build,
            runner,
            mountinfo: cfg.mountinfo.clone(),
            state: StateCell::new(&def.name),
            formats: Formats::new(cfg.ploop.clone()),
            env,
            // Only this node changes a pool that is not shared: watched.
            names: match shared {
                true => names::NameIndex::default(),
                false => names::NameIndex::watched(),
            },
            tmp_cleared: Default::default(),
        }
    }

    /// The volume named `name` and its format, if there is one. Anything
    /// else at a volume's path (a symlink, a directory that is no ploop
    /// disk) is refused.
    fn find(&self, name: &str) -> Result<Option<(PathBuf, &dyn ImageFormat)>> {
        // The watched index names the formats to look at; without it (a
        // shared pool), every format's path is probed.
        let root = &self.layout.root;
        let listed = match self.names.lookup(root, name) {
            Ok(listed) => listed,
            // No pool directory: no volume (as probing would find).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", root)(e)),
        };
        let here = |f: &&dyn ImageFormat| {
            listed
                .as_ref()
                .is_none_or(|l| l.iter().any(|e| e.format == f.format()))
        };
        for f in self.formats.all().into_iter().filter(here) {
            let path = self.layout.volume(name, f.format())?;
            // The watched index has each entry's type as of the last change
            // to its name; without it, the entry is looked at.
            let indexed = listed
                .as_ref()
                .and_then(|l| l.iter().find(|e| e.format == f.format()));
            let kind = match indexed {
                Some(e) => Ok(e.kind),
                None => std::fs::symlink_metadata(&path).map(|m| m.file_type()),
            };
            match kind {
                Ok(kind) if f.is_volume(&path, kind) => return Ok(Some((path, f))),
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

    /// [`Self::find`], NotFound when there is no such volume.
    fn existing(&self, name: &str) -> Result<(PathBuf, &dyn ImageFormat)> {
        self.find(name)?.ok_or_else(|| Error::VolumeNotFound {
            pool: self.name.clone(),
            name: name.into(),
        })
    }

    /// What may be a volume, sorted by name: each entry of the pool's
    /// directory whose name parses as `<name>.<format>`, with its file type
    /// (nothing opened or probed; see [`names`]).
    fn candidates(&self) -> Result<Arc<Vec<names::Entry>>> {
        let root = &self.layout.root;
        self.names.sorted(root).map_err(io("read", root))
    }

    async fn describe(&self, name: &str, path: &Path, format: &dyn ImageFormat) -> Volume {
        let d = format.describe(&self.env, path).await;
        let published = match &self.share {
            Some((_, claims)) => claims.holder(name).ok().flatten(),
            None => None,
        };
        Volume {
            name: name.into(),
            format: format.format(),
            capacity: d.capacity,
            allocation: d.allocation,
            abnormal: d.abnormal,
            published,
        }
    }

    fn available(&self) -> Result<u64> {
        let s = rustix::fs::statvfs(&self.layout.root)
            .map_err(|e| io("statfs", &self.layout.root)(e.into()))?;
        Ok(s.f_bavail * s.f_frsize)
    }

    fn snapshot_record(&self, name: &str) -> Result<Record> {
        self.env
            .records
            .read(name)?
            .ok_or_else(|| Error::SnapshotNotFound {
                pool: self.name.clone(),
                name: name.into(),
            })
    }

    fn prepare_dirs(&self) -> Result<()> {
        for d in [
            self.layout.tmp_dir(),
            self.layout.snapshot_dir(),
            self.env.exports_dir().to_path_buf(),
        ] {
            std::fs::create_dir_all(&d).map_err(io("create", &d))?;
        }
        // Whatever is in tmp was never renamed into place: a crash mid-create.
        if self
            .tmp_cleared
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(());
        }
        let tmp = self.layout.tmp_dir();
        for e in std::fs::read_dir(&tmp).map_err(io("read", &tmp))?.flatten() {
            let _ = remove_if_exists(&e.path());
        }
        Ok(())
    }

    /// Makes the new volume's image at `tmp`; returns its size.
    async fn make(
        &self,
        req: &CreateRequest,
        tmp: &Path,
        format: &dyn ImageFormat,
        from: Option<CopyFrom<'_>>,
    ) -> Result<u64> {
        let full = req.allocation == Some(Allocation::Full);
        if let Some(from) = &from {
            if req.limit != 0 && from.size > req.limit {
                return Err(Error::OutOfRange(format!(
                    "the source is {} bytes, more than limit_bytes {}",
                    from.size, req.limit
                )));
            }
        }
        let size = match &from {
            Some(f) if req.required <= f.size => f.size,
            _ => fit_size(req.required, req.limit, MIB, DEFAULT_SIZE)?,
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
        match from {
            None => format.create(&self.env, &req.name, tmp, size, full).await?,
            Some(from) => {
                format
                    .copy(&self.env, &req.name, from, tmp, size, full)
                    .await?
            }
        }
        format.keep_on_delete(tmp, req.on_delete)?;
        if req.wipe_on_delete {
            rustix::fs::lsetxattr(tmp, WIPE_XATTR, b"1", rustix::fs::XattrFlags::empty()).map_err(|e| match e {
                rustix::io::Errno::NOTSUP => Error::Precondition(format!(
                    "wipeOnDelete needs user extended attributes on the pool's filesystem ({}): {e}",
                    self.layout.root.display()
                )),
                e => io("mark for wiping", tmp)(e.into()),
            })?;
        }
        self.env.root_sync.sync_file_at(tmp).await?;
        Ok(size)
    }

    /// A shared pool's single-node volume published on another node: what
    /// changes or copies its image (grow, snapshot, clone, dropping a
    /// snapshot kept inside it) happens only there, where it is attached
    /// (a qemu daemon or a loop device may have it open).
    fn held_elsewhere(&self, name: &str, format: &dyn ImageFormat) -> Result<()> {
        let Some((_, claims)) = &self.share else {
            return Ok(());
        };
        if format.used_by_many_nodes() {
            return Ok(());
        }
        match claims.holder(name)? {
            Some(n) if n != self.node => Err(Error::Precondition(format!(
                "volume {name} of shared pool {} is published on node {n}: its image is grown, snapshotted or copied only there, where it is attached",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// The volume `req` names if it exists and is what `req` asks for
    /// (a retried create); NameTaken if it exists otherwise.
    async fn already_made(
        &self,
        req: &CreateRequest,
        format: &dyn ImageFormat,
    ) -> Result<Option<Volume>> {
        let Some((path, have)) = self.find(&req.name)? else {
            return Ok(None);
        };
        let v = self.describe(&req.name, &path, have).await;
        let fits = v.capacity >= req.required && (req.limit == 0 || v.capacity <= req.limit);
        if have.format() != format.format() || !fits {
            return Err(Error::NameTaken {
                what: "volume",
                pool: self.name.clone(),
                name: req.name.clone(),
                why: format!(
                    "format {} and {} bytes, incompatible with this request",
                    have.format(),
                    v.capacity
                ),
            });
        }
        // A retry after a crash between the rename and the sync: answered
        // only once the directory is synced.
        self.env.root_sync.sync().await?;
        Ok(Some(v))
    }

    /// Snapshots volume `source` as `name`; an existing snapshot of the
    /// same volume is answered as it is.
    async fn snapshot_volume(&self, source: &str, name: &str) -> Result<Snapshot> {
        if let Some(r) = self.env.records.read(name)? {
            if r.source_volume == source {
                return Ok(snapshot_of(name, &r));
            }
            return Err(Error::NameTaken {
                what: "snapshot",
                pool: self.name.clone(),
                name: name.into(),
                why: format!("source volume {}", r.source_volume),
            });
        }
        let (path, format) = self.existing(source)?;
        self.held_elsewhere(source, format)?;
        let target = SnapshotTarget {
            name: name.into(),
            tmp: self.layout.tmp('s', name, format.format())?,
            data: self.layout.snapshot(name, format.format())?,
        };
        remove_if_exists(&target.tmp)?;
        remove_if_exists(&target.data)?; // data without a record: an interrupted earlier attempt
        match format.snapshot(&self.env, source, &path, &target).await {
            Ok(r) => Ok(snapshot_of(name, &r)),
            Err(e) => {
                let _ = remove_if_exists(&target.tmp);
                let _ = remove_if_exists(&target.data);
                Err(e)
            }
        }
    }

    /// Deletes snapshot `name`: the record goes first (from then on the
    /// snapshot does not exist), then its data.
    async fn remove_snapshot(&self, name: &str) -> Result<()> {
        let record = self.env.records.read(name).ok().flatten();
        if let Some(r) = record.as_ref().filter(|r| r.inside.is_some()) {
            self.held_elsewhere(&r.source_volume, self.formats.get(r.format))?;
        }
        self.env.records.remove(name)?;
        for f in self.formats.all() {
            remove_if_exists(&self.layout.snapshot(name, f.format())?)?;
        }
        sync_dir(&self.layout.snapshot_dir())?;
        if let Some(r) = record.filter(|r| r.inside.is_some()) {
            let path = self.layout.volume(&r.source_volume, r.format)?;
            self.formats
                .get(r.format)
                .snapshot_dropped(&self.env, &r.source_volume, &path)
                .await;
        }
        Ok(())
    }
}

fn snapshot_of(name: &str, r: &Record) -> Snapshot {
    Snapshot {
        name: name.into(),
        source_volume: r.source_volume.clone(),
        format: r.format,
        size: r.size,
        created_unix_nanos: r.created_unix_nanos,
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

    fn recorded_state(&self) -> PoolState {
        self.state.state()
    }

    fn pool_type(&self) -> PoolType {
        self.pool_type
    }

    async fn start(&self) -> Result<()> {
        let result = async {
            if let Some((share, _)) = &self.share {
                share
                    .mount(self.runner.as_ref(), &self.mountinfo, &self.layout.root)
                    .await?;
            } else if let Some(dev) = &self.device {
                if self.auto_build {
                    self.build(false).await?;
                }
                dev.mount(
                    self.runner.as_ref(),
                    &self.mountinfo,
                    &self.layout.root,
                    &self.name,
                )
                .await?;
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
            // What is at the root now decides whether syncs there matter.
            self.env.root_sync.look_again();
            self.prepare_dirs()
        }
        .await;
        self.state.record_start(result)
    }

    async fn build(&self, overwrite: bool) -> Result<()> {
        match &self.device {
            None => {
                std::fs::create_dir_all(&self.layout.root).map_err(io("create", &self.layout.root))
            }
            Some(dev) => {
                dev.build(self.runner.as_ref(), &self.mountinfo, &self.name, overwrite)
                    .await
            }
        }
    }

    async fn status(&self, count_volumes: bool) -> PoolStatus {
        let mut st = self.state.status();
        let state = st.state;
        if state != PoolState::Running {
            return st;
        }
        if let Some((share, _)) = &self.share {
            // A share can go away under a running pool: then the pool is
            // not running, with why, until the node's restart round finds
            // it answering again.
            match share.check(&self.mountinfo, &self.layout.root).await {
                Ok(space) => {
                    st.capacity = space.capacity;
                    st.available = space.available;
                    st.allocation = space.allocation;
                }
                Err(e) => {
                    tracing::warn!(pool.name = %self.name, error = %pool_csi_common::full_message(&e), "the pool's share is gone");
                    let _ = self.state.record_start(Err(e));
                    return self.state.status();
                }
            }
        } else {
            match rustix::fs::statvfs(&self.layout.root) {
                Ok(s) => {
                    st.capacity = s.f_blocks * s.f_frsize;
                    st.available = s.f_bavail * s.f_frsize;
                    st.allocation = (s.f_blocks - s.f_bfree) * s.f_frsize;
                }
                Err(e) => {
                    st.state = PoolState::Degraded;
                    st.message =
                        format!("target {} is unreadable: {e}", self.layout.root.display());
                    return st;
                }
            }
        }
        if count_volumes {
            // Counted, not described: a status stays cheap on a full pool.
            st.volume_count = self.candidates().ok().map(|c| {
                c.iter()
                    .filter(|c| {
                        self.layout
                            .volume(&c.name, c.format)
                            .is_ok_and(|path| self.formats.get(c.format).is_volume(&path, c.kind))
                    })
                    .count() as u32
            });
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
        // Where the content comes from: (origin's path, its format, the
        // snapshot record when restoring).
        let (origin, format) = match &req.source {
            Source::Empty => (
                None,
                req.format
                    .map_or(self.formats.default_format(), |f| self.formats.get(f)),
            ),
            Source::Volume(v) => {
                let (path, f) = self.existing(v)?;
                self.held_elsewhere(v, f)?;
                (Some((path, None)), f)
            }
            Source::Snapshot(s) => {
                let r = self.snapshot_record(s)?;
                let path = match &r.inside {
                    Some(_) => self.layout.volume(&r.source_volume, r.format)?,
                    None => self.layout.snapshot(s, r.format)?,
                };
                let format = self.formats.get(r.format);
                if r.inside.is_some() {
                    self.held_elsewhere(&r.source_volume, format)?;
                }
                (Some((path, Some(r))), format)
            }
        };
        if let Some(want) = req.format.filter(|w| *w != format.format()) {
            return Err(Error::Invalid(format!(
                "the source is {}, so the new volume cannot be {want}",
                format.format()
            )));
        }
        if let Some(v) = self.already_made(req, format).await? {
            return Ok(v);
        }
        let from = match &origin {
            None => None,
            Some((path, None)) => {
                let Source::Volume(v) = &req.source else {
                    unreachable!("only a volume source has no record")
                };
                let size = format.size(&self.env, path).await?;
                Some(CopyFrom {
                    origin: Origin::Volume { name: v, path },
                    size,
                })
            }
            Some((path, Some(r))) => {
                let o = match &r.inside {
                    Some(reference) => Origin::SnapshotInside {
                        name: &r.source_volume,
                        path,
                        reference,
                    },
                    None => Origin::SnapshotCopy { path },
                };
                Some(CopyFrom {
                    origin: o,
                    size: r.size,
                })
            }
        };
        let tmp = self.layout.tmp('v', &req.name, format.format())?;
        remove_if_exists(&tmp)?;
        let dst = self.layout.volume(&req.name, format.format())?;
        let made = match self.make(req, &tmp, format, from).await {
            Ok(size) => rename_noreplace(&tmp, &dst).map(|()| size),
            Err(e) => Err(e),
        };
        let capacity = match made {
            Ok(size) => size,
            Err(e) => {
                let _ = remove_if_exists(&tmp);
                // Another node of a shared pool made it meanwhile: the
                // rename refused to replace it, and it is the answer.
                return match self.already_made(req, format).await? {
                    Some(v) => Ok(v),
                    None => Err(e),
                };
            }
        };
        // Durable once the directory is synced after the rename; a failed
        // sync fails the create (never answered from what is in place).
        self.env.root_sync.sync().await?;
        let allocation = std::fs::metadata(&dst)
            .map(|m| copy::allocated_bytes(&m))
            .unwrap_or(0);
        Ok(Volume {
            name: req.name.clone(),
            format: format.format(),
            capacity,
            allocation,
            abnormal: None,
            published: None,
        })
    }

    async fn delete_volume(&self, name: &str, wipe_first: bool) -> Result<()> {
        self.state.ensure_running()?;
        let Some((path, format)) = self.find(name)? else {
            // Gone, or never renamed into place: nothing may linger in tmp.
            for f in self.formats.all() {
                remove_if_exists(&self.layout.tmp('v', name, f.format())?)?;
            }
            // A retry after a crash between the unlink and the sync.
            return self.env.root_sync.sync().await;
        };
        if let Some(node) = self
            .share
            .as_ref()
            .and_then(|(_, c)| c.holder(name).ok().flatten())
        {
            return Err(Error::InUse {
                what: format!("volume {name}"),
                by: format!("node {node}, where it is published; unpublish it first"),
            });
        }
        let recorded = rustix::fs::lgetxattr(&path, WIPE_XATTR, &mut [0u8; 4]).is_ok();
        if let Some(by) = format.user_here(&self.env, name, &path) {
            return Err(Error::InUse {
                what: format!("volume {name} ({})", format.format()),
                by,
            });
        }
        if format.keeps_snapshots_inside() {
            let snaps: Vec<String> = self
                .env
                .records
                .inside(name)?
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            if !snaps.is_empty() {
                return Err(Error::Precondition(format!(
                    "{} volume {name} holds the data of snapshots {}; delete them first",
                    format.format(),
                    snaps.join(", ")
                )));
            }
        }
        format
            .remove(&self.env, name, &path, wipe_first || recorded)
            .await
    }

    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded> {
        self.state.ensure_running()?;
        let (path, format) = self.existing(name)?;
        self.held_elsewhere(name, format)?;
        let current = format.size(&self.env, &path).await?;
        if current >= required {
            if limit != 0 && current > limit {
                return Err(Error::OutOfRange(format!(
                    "volume is {current} bytes, above limit_bytes {limit}"
                )));
            }
            return Ok(Expanded {
                capacity: current,
                node_expansion_required: format.grows_on_the_node(),
            });
        }
        let size = fit_size(required, limit, MIB, DEFAULT_SIZE)?;
        let (growth, available) = (size - current, self.available()?);
        if growth > available {
            return Err(Error::NoSpace {
                pool: self.name.clone(),
                needed: growth,
                available,
            });
        }
        format.grow(&self.env, name, &path, size).await?;
        Ok(Expanded {
            capacity: size,
            node_expansion_required: format.grows_on_the_node(),
        })
    }

    async fn get_volume(&self, name: &str) -> Result<Volume> {
        self.state.ensure_running()?;
        let (path, format) = self.existing(name)?;
        Ok(self.describe(name, &path, format).await)
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        Ok(self.list_page(None, 0).await?.entries)
    }

    /// Names come from one directory read (no per-name probing), sorted;
    /// only the page's volumes are checked and described, so a page costs
    /// the page, not the pool. A long listing lets the node's other calls
    /// in after every [`LIST_TURN`] names, and goes on after the last name
    /// it looked at, in the names as they are then (a volume deleted
    /// meanwhile is not listed).
    async fn list_page(&self, after: Option<&str>, max: usize) -> Result<Page> {
        self.state.ensure_running()?;
        let max = if max == 0 { usize::MAX } else { max };
        let mut page = Page::default();
        let mut after = after.map(str::to_string);
        'turns: loop {
            let candidates = self.candidates()?;
            let start = after
                .as_deref()
                .map_or(0, |a| candidates.partition_point(|c| c.name.as_str() <= a));
            let mut rest = candidates[start..].iter().peekable();
            let mut looked = 0;
            while let Some(c) = rest.next() {
                let format = self.formats.get(c.format);
                let path = self.layout.volume(&c.name, c.format)?;
                if format.is_volume(&path, c.kind) {
                    page.entries
                        .push(self.describe(&c.name, &path, format).await);
                    if page.entries.len() == max {
                        page.more = rest.peek().is_some();
                        return Ok(page);
                    }
                }
                looked += 1;
                // A turn ends between names (a name may be in two formats).
                if looked >= LIST_TURN && rest.peek().is_some_and(|n| n.name != c.name) {
                    after = Some(c.name.clone());
                    tokio::task::yield_now().await;
                    continue 'turns;
                }
            }
            return Ok(page);
        }
    }

    async fn create_snapshot(&self, source: &str, name: &str) -> Result<Snapshot> {
        self.state.ensure_running()?;
        self.snapshot_volume(source, name).await
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.state.ensure_running()?;
        self.remove_snapshot(name).await
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        Ok(self
            .snapshots_page(&SnapshotQuery::default())
            .await?
            .entries)
    }

    /// Records are read once and kept while their directory is unchanged
    /// (one asked for by name is read alone), so a page costs the page.
    async fn snapshots_page(&self, q: &SnapshotQuery<'_>) -> Result<Page<Snapshot>> {
        self.state.ensure_running()?;
        let records = &self.env.records;
        let one;
        let all = match q.name {
            // A name that is no snapshot name is no snapshot.
            Some(n) => {
                one = records.read(n).ok().flatten().map(|r| (n.to_string(), r));
                one.as_slice()
            }
            None => &records.all()?[..],
        };
        let start = q
            .after
            .map_or(0, |a| all.partition_point(|(n, _)| n.as_str() <= a));
        let max = if q.max == 0 { usize::MAX } else { q.max };
        let mut page = Page::default();
        let mut rest = all[start..].iter();
        for (name, r) in rest.by_ref() {
            if q.wants(name, &r.source_volume) {
                page.entries.push(snapshot_of(name, r));
                if page.entries.len() == max {
                    break;
                }
            }
        }
        page.more = rest.any(|(name, r)| q.wants(name, &r.source_volume));
        Ok(page)
    }

    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        self.state.ensure_running()?;
        let (path, format) = self.existing(name)?;
        format.attach_source(&self.env, name, &path).await
    }

    async fn detached(&self, name: &str) -> Result<()> {
        if let Ok(Some((path, format))) = self.find(name) {
            format.detached(&self.env, name, &path).await;
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        self.share.is_some()
    }

    /// netfs: a single-node volume is claimed for `node` on the share;
    /// a directory volume is used by many nodes and claims nothing.
    async fn publish(&self, name: &str, node: &str) -> Result<()> {
        self.state.ensure_running()?;
        let (_, format) = self.existing(name)?;
        match &self.share {
            Some((_, claims)) if !format.used_by_many_nodes() => {
                claims.claim(&self.name, name, node)
            }
            _ => Ok(()),
        }
    }

    async fn unpublish(&self, name: &str, node: &str) -> Result<()> {
        match &self.share {
            Some((_, claims)) => {
                self.state.ensure_running()?;
                claims.release(name, node)
            }
            None => Ok(()),
        }
    }

    async fn stop(&self) -> Result<()> {
        match &self.share {
            Some((share, _)) => share.unmount_if_ours(&self.mountinfo, &self.layout.root),
            None => Ok(()),
        }
    }
}
