//! logical pools: an LVM volume group; each volume is a logical volume. The
//! storage is the record: every LV pool-csi makes carries the tag `pool-csi`
//! plus `pool-csi.io/kind=volume|snapshot` (and for snapshots their source,
//! size and creation time), so refresh, ListVolumes and retried creates are
//! answered from `lvs`. LVs without the tag are never listed, changed or
//! removed: an administrator's LVs in the same VG are safe.
//!
//! Thick volumes are linear (or striped) LVs; `allocation: thin` volumes are
//! thin LVs in the pool's thin pool. Snapshots are thin snapshots of thin
//! volumes (instant, independent of the origin) or sized copy-on-write
//! snapshots of thick ones (which depend on their origin: such a volume cannot
//! be deleted while it has snapshots, as the CSI spec allows). Clones of thin
//! volumes are thin snapshots; of thick volumes, a block copy.

use super::{
    fit_size, CreateRequest, Expanded, Pool, PoolState, PoolStatus, Snapshot, Source, ThinPoolUse,
    Volume,
};
use crate::tools::lvm_shell::LvmShell;
use crate::{
    attach::AttachSource,
    error::{io, Error, Result},
    exec::CommandRunner,
    mount::quiesce::Quiescer,
    tools::{
        blkid::Probe,
        lvm::{Lv, Lvm, Vg},
    },
    Config,
};
use pool_csi_common::{
    pool_spec::{is_lvm_name, LvmOptions},
    Allocation, PoolDefinition, PoolType, VolumeFormat,
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

const TAG: &str = "pool-csi";
const KIND: &str = "pool-csi.io/kind";
/// On a thick clone until its block copy is complete.
const COPYING: &str = "pool-csi.io/copying";
const SOURCE: &str = "pool-csi.io/source";
const SIZE: &str = "pool-csi.io/size";
const CREATED: &str = "pool-csi.io/created";
const WIPE: &str = "pool-csi.io/wipe";
const DEFAULT_SIZE: u64 = 1 << 30;
const SNAPSHOT_PREFIX: &str = "snap_";

pub struct LogicalPool {
    name: String,
    vg: String,
    devices: Vec<PathBuf>,
    opts: LvmOptions,
    auto_build: bool,
    runner: Arc<dyn CommandRunner>,
    /// A clone's source is frozen while it is mounted.
    quiescer: Quiescer,
    state: super::StateCell,
    /// Where the node keeps its LVM configuration directory; None when
    /// commands run behind a prefix (another mount namespace, where this
    /// process's `/etc/lvm` need not be the host's): lvm then runs with the
    /// host's configuration, one process per command.
    state_dir: Option<PathBuf>,
    /// `LVM_SYSTEM_DIR` for single commands and the pool's shell, set up
    /// when the pool starts (unset until then, or when the directories
    /// could not be written: lvm then runs with the host's, on its own).
    lvm_env: std::sync::OnceLock<(PathBuf, LvmShell)>,
    /// The last report and the metadata headers read just before it (see
    /// [`Self::report`]).
    cached: std::sync::Mutex<Option<CachedReport>>,
}

/// A report, good while the PVs' metadata headers read `fingerprint` and
/// for at most [`REPORT_TTL`] (open and usage columns are not metadata).
struct CachedReport {
    fingerprint: Vec<u8>,
    at: std::time::Instant,
    report: Arc<(Vg, Vec<Lv>)>,
}

/// How long a report's runtime columns (thin usage, open) may be served.
const REPORT_TTL: Duration = Duration::from_secs(5);

fn lv_name(name: &str) -> Result<String> {
    if !is_lvm_name(name) {
        return Err(Error::Invalid(format!(
            "volume name {name:?} is not a valid LV name (LVM reserves names starting with \"snapshot\" or \"pvmove\")"
        )));
    }
    Ok(name.to_string())
}

fn is_ours(lv: &Lv) -> bool {
    lv.has_tag(TAG)
}

fn is_snapshot(lv: &Lv) -> bool {
    lv.tag(KIND) == Some("snapshot")
}

/// A thick clone whose block copy has not finished (a crash mid-copy):
/// not a volume; a retry or a delete of the name removes it.
fn is_copying(lv: &Lv) -> bool {
    lv.has_tag(COPYING)
}

fn is_thin(lv: &Lv) -> bool {
    !lv.pool_lv.is_empty()
}

/// Whether the kernel has the LV open (lv_attr's sixth character).
fn is_open(lv: &Lv) -> bool {
    lv.lv_attr.as_bytes().get(5) == Some(&b'o')
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl LogicalPool {
    pub fn new(def: &PoolDefinition, cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        let s = &def.spec;
        Self {
            name: def.name.clone(),
            vg: s.source.name.clone().unwrap_or_else(|| def.name.clone()),
            devices: s.source.devices.iter().map(PathBuf::from).collect(),
            opts: s.lvm.clone().unwrap_or_default(),
            auto_build: s.auto_build,
            quiescer: Quiescer::new(cfg),
            runner,
            state: super::StateCell::new(&def.name),
            state_dir: cfg.command_prefix.is_empty().then(|| cfg.state_dir.clone()),
            lvm_env: std::sync::OnceLock::new(),
            cached: std::sync::Mutex::new(None),
        }
    }

    fn lvm(&self) -> Lvm<'_> {
        Lvm {
            runner: self.runner.as_ref(),
            no_activation: self.opts.no_activation,
            devices: &self.devices,
            system_dir: self.lvm_env.get().map(|(d, _)| d.as_path()),
            shell: self.lvm_env.get().map(|(_, s)| s),
        }
    }

    async fn vg(&self) -> Result<Vg> {
        self.lvm().vg(&self.vg).await?.ok_or_else(|| self.no_vg())
    }

    fn no_vg(&self) -> Error {
        Error::Precondition(format!(
            "volume group {} does not exist: build the pool or create the VG",
            self.vg
        ))
    }

    /// [`Self::vg`] and [`Self::lvs`] from one fresh report (also kept for
    /// [`Self::report`]).
    async fn vg_and_lvs(&self) -> Result<(Vg, Vec<Lv>)> {
        let before = self.fingerprint().await;
        self.fresh_report(before).await
    }

    /// A fresh report, kept with `before`: the metadata headers as read
    /// before it was taken.
    async fn fresh_report(&self, before: Option<Vec<u8>>) -> Result<(Vg, Vec<Lv>)> {
        let r = self
            .lvm()
            .vg_and_lvs(&self.vg)
            .await?
            .ok_or_else(|| self.no_vg())?;
        if let Some(fingerprint) = before {
            *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(CachedReport {
                fingerprint,
                at: std::time::Instant::now(),
                report: Arc::new(r.clone()),
            });
        }
        Ok(r)
    }

    /// The PVs' metadata headers, when the pool names its devices and they
    /// can be read (off the runtime's thread: a device may be slow).
    async fn fingerprint(&self) -> Option<Vec<u8>> {
        let devices = self.devices.clone();
        tokio::task::spawn_blocking(move || crate::tools::lvm_label::fingerprint(&devices))
            .await
            .ok()
            .flatten()
    }

    /// The VG and its LVs for listings and capacity: the last report while
    /// no metadata commit happened since (by anyone: the headers are read
    /// off the PVs) and it is younger than [`REPORT_TTL`], else a fresh one.
    /// Creates and deletes never use it: they decide on a fresh report.
    async fn report(&self) -> Result<Arc<(Vg, Vec<Lv>)>> {
        let now = self.fingerprint().await;
        let hit = now.as_ref().and_then(|now| {
            self.cached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|c| &c.fingerprint == now && c.at.elapsed() < REPORT_TTL)
                .map(|c| c.report.clone())
        });
        match hit {
            Some(r) => Ok(r),
            // `now` was read before this report: it may be kept with it.
            None => Ok(Arc::new(self.fresh_report(now).await?)),
        }
    }

    async fn lvs(&self) -> Result<Vec<Lv>> {
        Ok(self.lvm().lvs(&self.vg).await?)
    }

    fn volume_of(lv: &Lv) -> Volume {
        let allocation = if is_thin(lv) {
            (lv.lv_size as f64 * lv.data_used()) as u64
        } else {
            lv.lv_size
        };
        Volume {
            name: lv.lv_name.clone(),
            format: VolumeFormat::Raw,
            capacity: lv.lv_size,
            allocation,
            abnormal: None,
            published: None,
        }
    }

    fn device(&self, lv: &str) -> PathBuf {
        Path::new("/dev").join(&self.vg).join(lv)
    }

    /// The pool's thin pool LV, when it has one and it exists.
    fn thin_pool_lv<'a>(&self, lvs: &'a [Lv]) -> Option<&'a Lv> {
        let name = self.opts.thin_pool.as_deref()?;
        lvs.iter().find(|l| l.lv_name == name)
    }

    /// Space thin volumes may still be promised: thin pool size times the
    /// overcommit ratio, less the virtual sizes already handed out.
    fn thin_available(&self, lvs: &[Lv]) -> u64 {
        let Some(pool) = self.thin_pool_lv(lvs) else {
            return 0;
        };
        let offered = pool
            .lv_size
            .saturating_mul(u64::from(self.opts.overcommit_percent))
            / 100;
        let promised: u64 = lvs
            .iter()
            .filter(|l| l.pool_lv == pool.lv_name && !is_snapshot(l))
            .map(|l| l.lv_size)
            .sum();
        let free_data = (pool.lv_size as f64 * (1.0 - pool.data_used())) as u64;
        offered
            .saturating_sub(promised)
            .min(free_data.saturating_mul(u64::from(self.opts.overcommit_percent)) / 100)
    }

    /// Activates an LV (when needed) and returns its device.
    async fn activated(&self, lv: &str) -> Result<PathBuf> {
        if self.opts.no_activation {
            return Err(Error::Precondition(format!(
                "pool {} runs LVM without activation (lvm.noActivation): its volumes cannot be attached or copied on this node",
                self.name
            )));
        }
        let dev = self.device(lv);
        if !dev.exists() {
            self.lvm().activate(&self.vg, lv).await?;
            for _ in 0..100 {
                if dev.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(dev)
    }

    async fn make(
        &self,
        req: &CreateRequest,
        name: &str,
        size: u64,
        lvs: &[Lv],
        vg: &Vg,
    ) -> Result<()> {
        let thin = req.allocation == Some(Allocation::Thin);
        let tags = {
            let mut t = vec![TAG.to_string(), format!("{KIND}=volume")];
            if req.wipe_on_delete {
                t.push(format!("{WIPE}=true"));
            }
            t
        };
        let source = match &req.source {
            Source::Empty => None,
            Source::Volume(v) => {
                Some(
                    self.find(lvs, v, false)
                        .ok_or_else(|| Error::VolumeNotFound {
                            pool: self.name.clone(),
                            name: v.clone(),
                        })?,
                )
            }
            Source::Snapshot(s) => {
                Some(
                    self.find(lvs, s, true)
                        .ok_or_else(|| Error::SnapshotNotFound {
                            pool: self.name.clone(),
                            name: s.clone(),
                        })?,
                )
            }
        };
        match source {
            None if thin => {
                let pool = self.opts.thin_pool.as_deref().ok_or_else(|| {
                    Error::Invalid(format!(
                        "allocation=thin needs lvm.thinPool on pool {}",
                        self.name
                    ))
                })?;
                if size > self.thin_available(lvs) {
                    return Err(Error::NoSpace {
                        pool: self.name.clone(),
                        needed: size,
                        available: self.thin_available(lvs),
                    });
                }
                self.lvm()
                    .create_thin(&self.vg, pool, name, size, &tags)
                    .await?;
            }
            None => {
                if size > vg.free {
                    return Err(Error::NoSpace {
                        pool: self.name.clone(),
                        needed: size,
                        available: vg.free,
                    });
                }
                self.lvm()
                    .create_linear(&self.vg, name, size, req.stripes, &tags)
                    .await?;
            }
            Some(src) if is_thin(src) => {
                // A thin snapshot is a full, writable, independent copy, made instantly.
                self.lvm()
                    .create_snapshot(&self.vg, &src.lv_name, name, None, &tags)
                    .await?;
                if size > src.lv_size {
                    if let Err(e) = self.lvm().extend(&self.vg, name, size).await {
                        let _ = self.lvm().remove(&self.vg, name).await; // a failed create leaves nothing
                        return Err(e.into());
                    }
                }
            }
            Some(src) => {
                if size > vg.free {
                    return Err(Error::NoSpace {
                        pool: self.name.clone(),
                        needed: size,
                        available: vg.free,
                    });
                }
                let from = self.activated(&src.lv_name).await?; // fails first, before anything is made
                                                                // Marked as a copy in progress until the last block is in.
                let mut tags = tags;
                tags.push(COPYING.to_string());
                self.lvm()
                    .create_linear(&self.vg, name, size, req.stripes, &tags)
                    .await?;
                let copied = async {
                    let to = self.activated(name).await?;
                    let frozen = self.quiescer.freeze(std::slice::from_ref(&from)).await?;
                    let r =
                        tokio::task::spawn_blocking(move || crate::fsutil::copy_device(&from, &to))
                            .await
                            .map_err(|e| io("copy", Path::new(name))(std::io::Error::other(e)))
                            .and_then(|r| r.map_err(io("copy", Path::new(name))));
                    frozen.thaw(&self.quiescer).await;
                    r?;
                    Ok(self.lvm().del_tag(&self.vg, name, COPYING).await?)
                }
                .await;
                if let Err(e) = copied {
                    let _ = self.lvm().remove(&self.vg, name).await; // a failed create leaves nothing
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn find<'l>(&self, lvs: &'l [Lv], name: &str, snapshot: bool) -> Option<&'l Lv> {
        let lv = if snapshot {
            format!("{SNAPSHOT_PREFIX}{name}")
        } else {
            name.to_string()
        };
        lvs.iter()
            .find(|l| l.lv_name == lv && is_ours(l) && is_snapshot(l) == snapshot && !is_copying(l))
    }
}

#[tonic::async_trait]
impl Pool for LogicalPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn recorded_state(&self) -> PoolState {
        self.state.state()
    }

    fn pool_type(&self) -> PoolType {
        PoolType::Logical
    }

    async fn start(&self) -> Result<()> {
        if let (None, Some(state_dir)) = (self.lvm_env.get(), self.state_dir.clone()) {
            let prepared = tokio::task::spawn_blocking(move || {
                crate::tools::lvm_system::prepare(&state_dir, Path::new("/etc/lvm"))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match prepared {
                Ok(dirs) => {
                    let _ = self
                        .lvm_env
                        .set((dirs.commands, LvmShell::new(&dirs.shell)));
                }
                Err(e) => {
                    tracing::warn!(pool = %self.name, error = %e, "could not write the LVM configuration directory; lvm runs with the host's (each command ~30 ms slower)")
                }
            }
        }
        let r = async {
            if self.lvm().vg(&self.vg).await?.is_none() && self.auto_build && !self.devices.is_empty() {
                self.build(false).await?;
            }
            self.vg().await?;
            if let Some(tp) = &self.opts.thin_pool {
                if !self.lvs().await?.iter().any(|l| &l.lv_name == tp) {
                    return Err(Error::Precondition(format!(
                        "thin pool {}/{tp} does not exist: build the pool (with lvm.thinPoolPercent) or create it",
                        self.vg
                    )));
                }
            }
            Ok(())
        }
        .await;
        self.state.record_start(r)
    }

    async fn build(&self, overwrite: bool) -> Result<()> {
        if self.lvm().vg(&self.vg).await?.is_none() {
            if self.devices.is_empty() {
                return Err(Error::Invalid(format!(
                    "pool {} lists no source.devices to build volume group {} from",
                    self.name, self.vg
                )));
            }
            for d in &self.devices {
                let found = match Probe::device(self.runner.as_ref(), d).await? {
                    Probe::Blank => continue,
                    Probe::Filesystem(fs) => format!("a {fs} filesystem"),
                    Probe::Other { kind } => kind,
                };
                if !overwrite {
                    return Err(Error::NotBlank {
                        device: d.clone(),
                        found,
                    });
                }
            }
            let devs: Vec<&Path> = self.devices.iter().map(PathBuf::as_path).collect();
            self.lvm().pvcreate(&devs).await?;
            self.lvm().vgcreate(&self.vg, &devs).await?;
        }
        if let (Some(tp), Some(pct)) = (&self.opts.thin_pool, self.opts.thin_pool_percent) {
            if !self.lvs().await?.iter().any(|l| &l.lv_name == tp) {
                let vg = self.vg().await?;
                let bytes = (vg.size / 100 * u64::from(pct)) / vg.extent_size * vg.extent_size;
                self.lvm().create_thin_pool(&self.vg, tp, bytes).await?;
            }
        }
        Ok(())
    }

    async fn status(&self, count_volumes: bool) -> PoolStatus {
        let mut st = self.state.status();
        let state = st.state;
        if state != PoolState::Running {
            return st;
        }
        match self.report().await {
            Ok(r) => {
                let (vg, lvs) = (&r.0, &r.1);
                st.capacity = vg.size;
                st.available = vg.free;
                st.allocation = vg.size - vg.free;
                st.thin_available = self.thin_available(lvs);
                st.thin_pool = self.thin_pool_lv(lvs).map(|t| ThinPoolUse {
                    size: t.lv_size,
                    data_used: (t.lv_size as f64 * t.data_used()) as u64,
                });
                if count_volumes {
                    st.volume_count =
                        Some(lvs.iter().filter(|l| is_ours(l) && !is_snapshot(l)).count() as u32);
                }
            }
            Err(e) => {
                st.state = PoolState::Degraded;
                st.message = pool_csi_common::full_message(&e);
            }
        }
        st
    }

    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        self.state.ensure_running()?;
        let name = lv_name(&req.name)?;
        if req.format.is_some_and(|f| f != VolumeFormat::Raw) {
            return Err(Error::Invalid(
                "logical volumes are raw block devices: volumeFormat must be raw".into(),
            ));
        }
        if let Some(a) = req
            .allocation
            .filter(|a| !matches!(a, Allocation::Thin | Allocation::Thick))
        {
            return Err(Error::Invalid(format!(
                "allocation {a} is not possible in logical pools; use thin or thick"
            )));
        }
        let (vg, mut lvs) = self.vg_and_lvs().await?;
        if let Some(at) = lvs
            .iter()
            .position(|l| l.lv_name == name && is_ours(l) && is_copying(l))
        {
            // A copy a crash interrupted: start over.
            tracing::info!(pool.name = %self.name, lv = %name, "removing a clone left half-copied by an interrupted operation");
            self.lvm().remove(&self.vg, &name).await?;
            lvs.remove(at);
        }
        if let Some(lv) = lvs.iter().find(|l| l.lv_name == name) {
            let v = Self::volume_of(lv);
            let thin_wanted = req.allocation == Some(Allocation::Thin);
            let fits = v.capacity >= req.required && (req.limit == 0 || v.capacity <= req.limit);
            if !is_ours(lv) || is_snapshot(lv) || !fits || is_thin(lv) != thin_wanted {
                let why = if is_ours(lv) {
                    format!("{} bytes, thin: {}", v.capacity, is_thin(lv))
                } else {
                    "an LV pool-csi did not make".into()
                };
                return Err(Error::NameTaken {
                    what: "volume",
                    pool: self.name.clone(),
                    name,
                    why,
                });
            }
            return Ok(v);
        }
        let size = fit_size(
            req.required,
            req.limit,
            vg.extent_size.max(512),
            DEFAULT_SIZE,
        )?;
        self.make(req, &name, size, &lvs, &vg).await?;
        // No second report: the size is what lvcreate was asked for (whole extents).
        let thin = req.allocation == Some(Allocation::Thin)
            || matches!(&req.source, Source::Volume(_) | Source::Snapshot(_));
        let allocation = if thin { 0 } else { size };
        Ok(Volume {
            name,
            format: VolumeFormat::Raw,
            capacity: size,
            allocation,
            abnormal: None,
            published: None,
        })
    }

    async fn delete_volume(&self, name: &str, wipe: bool) -> Result<()> {
        self.state.ensure_running()?;
        let lvs = self.lvs().await?;
        let Some(lv) = self.find(&lvs, name, false) else {
            // Gone; a clone of that name a crash left half-copied goes too.
            if lvs
                .iter()
                .any(|l| l.lv_name == name && is_ours(l) && is_copying(l))
            {
                self.lvm().remove(&self.vg, name).await?;
            }
            return Ok(());
        };
        if is_open(lv) {
            return Err(Error::InUse {
                what: format!("volume {name} ({}/{name})", self.vg),
                by: "the kernel has it open".into(),
            });
        }
        if !is_thin(lv) {
            if let Some(s) = lvs.iter().find(|l| l.origin == lv.lv_name && is_ours(l)) {
                return Err(Error::InUse {
                    what: format!("volume {name}"),
                    by: format!(
                        "snapshot {} depends on it (copy-on-write); delete the snapshot first",
                        s.lv_name.trim_start_matches(SNAPSHOT_PREFIX)
                    ),
                });
            }
        }
        if wipe || lv.tag(WIPE) == Some("true") {
            let dev = self.activated(name).await?;
            tokio::task::spawn_blocking(move || crate::fsutil::zero_device(&dev))
                .await
                .map_err(|e| io("wipe", Path::new(name))(std::io::Error::other(e)))?
                .map_err(io("wipe", Path::new(name)))?;
        }
        Ok(self.lvm().remove(&self.vg, name).await?)
    }

    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded> {
        self.state.ensure_running()?;
        let (vg, lvs) = tokio::try_join!(self.vg(), self.lvs())?; // two read-only reports at once
        let lv = self
            .find(&lvs, name, false)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.into(),
            })?;
        if lv.lv_size >= required {
            return Ok(Expanded {
                capacity: lv.lv_size,
                node_expansion_required: true,
            });
        }
        let size = fit_size(required, limit, vg.extent_size.max(512), DEFAULT_SIZE)?;
        let growth = size - lv.lv_size;
        let available = if is_thin(lv) {
            self.thin_available(&lvs)
        } else {
            vg.free
        };
        if growth > available {
            return Err(Error::NoSpace {
                pool: self.name.clone(),
                needed: growth,
                available,
            });
        }
        self.lvm().extend(&self.vg, name, size).await?;
        Ok(Expanded {
            capacity: size,
            node_expansion_required: true,
        })
    }

    async fn get_volume(&self, name: &str) -> Result<Volume> {
        self.state.ensure_running()?;
        let r = self.report().await?;
        self.find(&r.1, name, false)
            .map(Self::volume_of)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.into(),
            })
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.state.ensure_running()?;
        let mut v: Vec<Volume> = self
            .report()
            .await?
            .1
            .iter()
            .filter(|l| is_ours(l) && !is_snapshot(l))
            .map(Self::volume_of)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    async fn create_snapshot(&self, source: &str, name: &str) -> Result<Snapshot> {
        self.state.ensure_running()?;
        let lv = format!("{SNAPSHOT_PREFIX}{name}");
        lv_name(&lv)?;
        if self.opts.no_activation {
            // Thin and copy-on-write snapshots both need device-mapper.
            return Err(Error::Precondition(format!(
                "pool {} runs LVM without activation (lvm.noActivation): snapshots need device-mapper; take them on a node whose kernel has it, with noActivation off",
                self.name
            )));
        }
        let (vg, lvs) = tokio::try_join!(self.vg(), self.lvs())?; // two read-only reports at once
        if let Some(existing) = lvs.iter().find(|l| l.lv_name == lv) {
            if is_ours(existing) && existing.tag(SOURCE) == Some(source) {
                return Ok(snapshot_of(existing));
            }
            return Err(Error::NameTaken {
                what: "snapshot",
                pool: self.name.clone(),
                name: name.into(),
                why: format!("source {:?}", existing.tag(SOURCE)),
            });
        }
        let origin = self
            .find(&lvs, source, false)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: source.into(),
            })?;
        let tags = vec![
            TAG.to_string(),
            format!("{KIND}=snapshot"),
            format!("{SOURCE}={source}"),
            format!("{SIZE}={}", origin.lv_size),
            format!("{CREATED}={}", now_nanos()),
        ];
        let cow = if is_thin(origin) {
            None
        } else {
            let want = origin.lv_size / 100 * u64::from(self.opts.snapshot_percent);
            let bytes = want.div_ceil(vg.extent_size.max(1)).max(1) * vg.extent_size.max(1);
            if bytes > vg.free {
                return Err(Error::NoSpace {
                    pool: self.name.clone(),
                    needed: bytes,
                    available: vg.free,
                });
            }
            Some(bytes)
        };
        self.lvm()
            .create_snapshot(&self.vg, source, &lv, cow, &tags)
            .await?;
        let made = self.lvs().await?.into_iter().find(|l| l.lv_name == lv);
        made.as_ref()
            .map(snapshot_of)
            .ok_or_else(|| Error::Precondition(format!("lvcreate made no snapshot {lv}")))
    }

    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.state.ensure_running()?;
        let lvs = self.lvs().await?;
        match self.find(&lvs, name, true) {
            Some(lv) => Ok(self.lvm().remove(&self.vg, &lv.lv_name).await?),
            None => Ok(()),
        }
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.state.ensure_running()?;
        Ok(self
            .lvs()
            .await?
            .iter()
            .filter(|l| is_ours(l) && is_snapshot(l))
            .map(snapshot_of)
            .collect())
    }

    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        self.state.ensure_running()?;
        let lvs = self.lvs().await?;
        self.find(&lvs, name, false)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.into(),
            })?;
        Ok(AttachSource::Block {
            device: self.activated(name).await?,
        })
    }
}

fn snapshot_of(lv: &Lv) -> Snapshot {
    Snapshot {
        name: lv.lv_name.trim_start_matches(SNAPSHOT_PREFIX).to_string(),
        source_volume: lv.tag(SOURCE).unwrap_or(&lv.origin).to_string(),
        format: VolumeFormat::Raw,
        size: lv
            .tag(SIZE)
            .and_then(|s| s.parse().ok())
            .unwrap_or(lv.lv_size),
        created_unix_nanos: lv.tag(CREATED).and_then(|s| s.parse().ok()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::lvm::parse_lvs;

    #[test]
    fn only_tagged_lvs_are_ours_and_snapshots_are_told_apart() {
        let lvs = parse_lvs(include_bytes!(
            "../../tests/fixtures/commands/lvm/lvs_thin_written_by_hand.json"
        ))
        .unwrap();
        let ours: Vec<_> = lvs
            .iter()
            .filter(|l| is_ours(l))
            .map(|l| l.lv_name.as_str())
            .collect();
        assert_eq!(ours, vec!["pvc-a", "snap_s1"]);
        let s = snapshot_of(lvs.iter().find(|l| is_snapshot(l)).unwrap());
        assert_eq!(
            (s.name.as_str(), s.source_volume.as_str(), s.size),
            ("s1", "pvc-a", 2 << 30)
        );
        assert!(is_open(&lvs[0]) && !is_open(&lvs[2]));
    }

    #[test]
    fn reserved_lv_names_are_refused() {
        assert!(lv_name("pvc-1").is_ok());
        for bad in ["snapshot-1", "pvmove0", "-x", ".."] {
            assert!(matches!(lv_name(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}
