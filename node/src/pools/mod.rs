//! Pools present on this node. [`Pool`] is what every pool type implements,
//! with the types its methods speak; [`registry::PoolRegistry`] builds the
//! pools from their definitions (the only `match` on [`PoolType`] in the node).

pub mod disk;

pub mod file;
pub mod logical;
pub mod lun;
pub mod lun_claims;
pub mod lun_sources;
pub mod off_thread;
pub mod registry;

use crate::{
    attach::AttachSource,
    error::{Error, Result},
};
use pool_csi_common::{Allocation, OnDelete, PoolType, VolumeFormat};

/// A pool's state, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    /// Not started yet (the node plugin is starting).
    Starting,
    Inactive,
    Running,
    Degraded,
}

/// Capacity and state of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub state: PoolState,
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
    pub volume_count: Option<u32>,
    /// Why the pool is not running.
    pub message: String,
    /// Largest single volume possible now (0: not limited below `available`).
    pub max_volume: u64,
    /// Free extents as byte ranges `[start, end)` (disk pools).
    pub free_extents: Vec<(u64, u64)>,
    /// Space offered to thin volumes (logical pools with a thin pool).
    pub thin_available: u64,
    /// The thin pool of a logical pool that has one.
    pub thin_pool: Option<ThinPoolUse>,
}

/// A thin pool's size and how much of it data takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinPoolUse {
    pub size: u64,
    pub data_used: u64,
}

/// A pool's lifecycle state and why it is not running: the same
/// bookkeeping for every pool type.
pub struct StateCell {
    pool: String,
    inner: std::sync::Mutex<(PoolState, String)>,
}

impl StateCell {
    pub fn new(pool: &str) -> Self {
        Self {
            pool: pool.into(),
            inner: std::sync::Mutex::new((PoolState::Starting, "starting".into())),
        }
    }

    fn get(&self) -> (PoolState, String) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The state the last start (or a lost share) recorded: no I/O.
    pub fn state(&self) -> PoolState {
        self.get().0
    }

    /// Records how a start attempt ended, and passes the outcome on.
    pub fn record_start(&self, r: Result<()>) -> Result<()> {
        let next = match &r {
            Ok(()) => (PoolState::Running, String::new()),
            Err(e) => (PoolState::Inactive, pool_csi_common::full_message(e)),
        };
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = next;
        r
    }

    /// FAILED_PRECONDITION with the reason unless the pool runs.
    pub fn ensure_running(&self) -> Result<()> {
        match self.get() {
            (PoolState::Running, _) => Ok(()),
            (_, why) => Err(Error::PoolNotRunning {
                pool: self.pool.clone(),
                why,
            }),
        }
    }

    /// A status holding the state only; running pools add their figures.
    pub fn status(&self) -> PoolStatus {
        let (state, message) = self.get();
        PoolStatus {
            state,
            capacity: 0,
            allocation: 0,
            available: 0,
            volume_count: None,
            message,
            max_volume: 0,
            free_extents: Vec::new(),
            thin_available: 0,
            thin_pool: None,
        }
    }
}

/// A volume as its pool reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub format: VolumeFormat,
    pub capacity: u64,
    pub allocation: u64,
    /// Some(why) when the volume is unhealthy (unreadable header …).
    pub abnormal: Option<String>,
    /// The node a ControllerPublish recorded for it. Shared pools fill it
    /// from their claims; node-local volumes' records are the agent's
    /// ([`crate::publish_records`]).
    pub published: Option<String>,
}

/// A page of volumes or snapshots in name order, and whether more follow it.
#[derive(Debug)]
pub struct Page<T = Volume> {
    pub entries: Vec<T>,
    pub more: bool,
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            more: false,
        }
    }
}

impl<T> Page<T> {
    /// The page of `sorted` (by `name`) after `after`, at most `max` (0: all).
    pub fn of(sorted: Vec<T>, after: Option<&str>, max: usize, name: impl Fn(&T) -> &str) -> Self {
        let start = after.map_or(0, |a| sorted.partition_point(|v| name(v) <= a));
        let max = if max == 0 { usize::MAX } else { max };
        let more = sorted.len() - start > max;
        let entries = sorted.into_iter().skip(start).take(max).collect();
        Page { entries, more }
    }
}

/// Which snapshots a listing wants: a page in name order, optionally of one
/// name or of one source volume.
#[derive(Debug, Default, Clone, Copy)]
pub struct SnapshotQuery<'a> {
    /// Only snapshots named after this one (None: from the first).
    pub after: Option<&'a str>,
    /// At most this many (0: all).
    pub max: usize,
    /// Only the snapshot of this name.
    pub name: Option<&'a str>,
    /// Only snapshots of this volume.
    pub source: Option<&'a str>,
}

impl SnapshotQuery<'_> {
    /// Whether `s` passes the name and source filters.
    pub fn wants(&self, name: &str, source: &str) -> bool {
        self.name.is_none_or(|n| n == name) && self.source.is_none_or(|v| v == source)
    }
}

/// A snapshot as its pool reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    pub source_volume: String,
    pub format: VolumeFormat,
    pub size: u64,
    pub created_unix_nanos: i64,
}

/// Where a new volume's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Empty,
    Volume(String),
    Snapshot(String),
}

/// A validated create request, in pool terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub name: String,
    pub required: u64,
    /// 0: no limit.
    pub limit: u64,
    /// None: the pool's default, or the source's format when cloning.
    pub format: Option<VolumeFormat>,
    pub allocation: Option<Allocation>,
    pub source: Source,
    /// Zero the data when the volume is deleted. DeleteVolume carries no
    /// StorageClass parameters, so the pool records this with the volume.
    pub wipe_on_delete: bool,
    /// Directory volumes: what deleting one does with its data (recorded
    /// with the volume, as DeleteVolume carries no parameters).
    pub on_delete: OnDelete,
    /// Disk pools: the partition type name (linux, linux-lvm …).
    pub partition_type: Option<String>,
    /// Logical pools: (stripes, stripe size in bytes).
    pub stripes: Option<(u32, u64)>,
}

impl CreateRequest {
    /// An empty volume of `mib` MiB with every option at its default.
    pub fn sized(name: &str, mib: u64) -> Self {
        Self {
            name: name.into(),
            required: mib << 20,
            limit: 0,
            format: None,
            allocation: None,
            source: Source::Empty,
            wipe_on_delete: false,
            on_delete: OnDelete::Delete,
            partition_type: None,
            stripes: None,
        }
    }
}

/// The result of growing a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expanded {
    pub capacity: u64,
    pub node_expansion_required: bool,
}

/// A LUN of a LUN pool and the volume holding it (None: free).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunEntry {
    pub identity: String,
    pub size: u64,
    pub address: String,
    pub volume: Option<String>,
    /// The volume name a static PersistentVolume uses for this LUN.
    pub static_name: String,
}

/// One storage pool on this node. Every method is idempotent.
#[tonic::async_trait]
pub trait Pool: Send + Sync {
    fn name(&self) -> &str;
    fn pool_type(&self) -> PoolType;
    /// Brings the pool up (mount its device …); builds first when the spec
    /// says `autoBuild` and the pool is not built yet.
    async fn start(&self) -> Result<()>;
    /// The state recorded by the last start (Starting, Running or
    /// Inactive), without looking at the storage: what the restart round
    /// reads every second. `status` looks.
    fn recorded_state(&self) -> PoolState;
    /// libvirt's pool-build. Never overwrites data unless `overwrite`.
    async fn build(&self, overwrite: bool) -> Result<()>;
    async fn status(&self, count_volumes: bool) -> PoolStatus;
    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume>;
    /// Deleting a missing volume is Ok.
    async fn delete_volume(&self, name: &str, wipe: bool) -> Result<()>;
    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded>;
    async fn get_volume(&self, name: &str) -> Result<Volume>;
    async fn list_volumes(&self) -> Result<Vec<Volume>>;
    /// One page of the volumes in name order: those named after `after`
    /// (None: from the first), at most `max` (0: all), and whether more
    /// follow. Pools whose listing is one report slice it; file pools
    /// describe only the page.
    async fn list_page(&self, after: Option<&str>, max: usize) -> Result<Page> {
        let mut all = self.list_volumes().await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Page::of(all, after, max, |v| &v.name))
    }
    async fn create_snapshot(&self, source: &str, name: &str) -> Result<Snapshot>;
    /// Deleting a missing snapshot is Ok.
    async fn delete_snapshot(&self, name: &str) -> Result<()>;
    async fn list_snapshots(&self) -> Result<Vec<Snapshot>>;
    /// The snapshots `q` asks for, a page in name order. Pools whose
    /// listing is one report slice it; file pools read only the page's
    /// records.
    async fn snapshots_page(&self, q: &SnapshotQuery<'_>) -> Result<Page<Snapshot>> {
        let mut all = self.list_snapshots().await?;
        all.retain(|s| q.wants(&s.name, &s.source_volume));
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Page::of(all, q.after, q.max, |s| &s.name))
    }
    /// What to attach for `name`; NotFound when the volume is gone.
    async fn attach_source(&self, name: &str) -> Result<AttachSource>;
    /// LUN pools: every LUN and who holds it. Other pools have none.
    async fn luns(&self) -> Result<Vec<LunEntry>> {
        Err(Error::Invalid(format!(
            "pool {} is a {} pool: only iscsi, scsi and mpath pools have LUNs",
            self.name(),
            self.pool_type()
        )))
    }
    /// This node stopped using `name` (unstaged, or a stage undone): a
    /// pool may drop a connection nothing else needs (iSCSI logout).
    /// Whether the pool's volumes are shared by its nodes rather than tied
    /// to this one (LUN pools whose claims live in the cluster).
    fn shared(&self) -> bool {
        false
    }
    /// Whether the pool's file calls can wait as long as a server does
    /// not answer (a netfs share): its operations, and the node's calls on
    /// its volumes, then run off the runtime thread (see `off_thread`).
    fn may_hang(&self) -> bool {
        false
    }
    /// ControllerPublish of a shared pool's volume: record `node` as its
    /// user (FAILED_PRECONDITION while another node is). Others: checks the
    /// volume exists.
    async fn publish(&self, name: &str, _node: &str) -> Result<()> {
        self.get_volume(name).await.map(|_| ())
    }
    /// ControllerUnpublish: forget `node` (empty: any node) as the volume's user.
    async fn unpublish(&self, _name: &str, _node: &str) -> Result<()> {
        Ok(())
    }
    async fn detached(&self, _name: &str) -> Result<()> {
        Ok(())
    }
    /// The pool is no longer defined here (or its definition changed):
    /// undo what start did that must not outlive it (a netfs pool unmounts
    /// the share it mounted). Volumes stay where they are.
    async fn stop(&self) -> Result<()> {
        Ok(())
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub fn align_up(n: u64, align: u64) -> Option<u64> {
    n.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// The size a new volume gets for a CSI capacity range: `required` rounded
/// up to `align` (1 GiB when nothing is asked), never above `limit`.
pub fn fit_size(required: u64, limit: u64, align: u64, default: u64) -> Result<u64> {
    if limit != 0 && required > limit {
        return Err(Error::OutOfRange(format!(
            "required_bytes {required} exceeds limit_bytes {limit}"
        )));
    }
    let want = if required == 0 {
        if limit != 0 {
            default.min(limit)
        } else {
            default
        }
    } else {
        required
    };
    let size = align_up(want, align)
        .ok_or_else(|| Error::OutOfRange(format!("{want} bytes is too large")))?;
    if limit == 0 || size <= limit {
        return Ok(size);
    }
    // Rounding up broke the limit: take the largest aligned size under it.
    let down = limit & !(align - 1);
    if down >= required.max(1) {
        return Ok(down);
    }
    let down512 = limit & !511;
    if down512 >= required.max(1) {
        return Ok(down512);
    }
    Err(Error::OutOfRange(format!(
        "no size between {required} and {limit} bytes is a multiple of 512"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn sizes_fit_the_capacity_range() {
        assert_eq!(fit_size(0, 0, MIB, 1 << 30).unwrap(), 1 << 30);
        assert_eq!(fit_size(1, 0, MIB, 1 << 30).unwrap(), MIB);
        assert_eq!(fit_size(MIB + 1, 0, MIB, 1 << 30).unwrap(), 2 * MIB);
        assert_eq!(
            fit_size(MIB + 1, 3 * MIB / 2, MIB, 1 << 30).unwrap(),
            (3 * MIB / 2) & !511
        );
        assert_eq!(fit_size(0, 10 * MIB, MIB, 1 << 30).unwrap(), 10 * MIB);
        assert_eq!(fit_size(5 * MIB, 5 * MIB, MIB, 1 << 30).unwrap(), 5 * MIB);
        assert!(matches!(
            fit_size(2 * MIB, MIB, MIB, 1 << 30),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            fit_size(100, 200, MIB, 1 << 30),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            fit_size(u64::MAX - 5, 0, MIB, 1 << 30),
            Err(Error::OutOfRange(_))
        ));
    }

    fn snap(name: &str, source: &str) -> Snapshot {
        Snapshot {
            name: name.into(),
            source_volume: source.into(),
            format: VolumeFormat::Raw,
            size: MIB,
            created_unix_nanos: 0,
        }
    }

    #[test]
    fn a_snapshot_page_starts_after_its_token_and_filters_by_name_and_source() {
        let all = vec![
            snap("a", "v1"),
            snap("b", "v2"),
            snap("c", "v1"),
            snap("d", "v1"),
        ];
        let p = Page::of(all.clone(), Some("a"), 2, |s| &s.name);
        let names: Vec<&str> = p.entries.iter().map(|s| s.name.as_str()).collect();
        assert_eq!((names, p.more), (vec!["b", "c"], true));
        let p = Page::of(all.clone(), Some("c"), 0, |s| &s.name);
        assert_eq!((p.entries.len(), p.more), (1, false));
        let q = SnapshotQuery {
            source: Some("v1"),
            ..Default::default()
        };
        assert_eq!(
            all.iter()
                .filter(|s| q.wants(&s.name, &s.source_volume))
                .count(),
            3
        );
        let q = SnapshotQuery {
            name: Some("b"),
            source: Some("v1"),
            ..Default::default()
        };
        assert!(!all.iter().any(|s| q.wants(&s.name, &s.source_volume)));
    }
}
