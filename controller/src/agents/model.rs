//! What the controller knows of a node's pools, volumes, snapshots and LUNs,
//! in its own types: the typed agent client converts the wire messages into
//! these once, and nothing below it sees the wire.

use pool_csi_common::{Allocation, OnDelete, PoolType, VolumeFormat};

/// A pool's state on one node, as libvirt names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    Unknown,
    /// The node is starting it: ask again soon.
    Starting,
    Inactive,
    Building,
    Running,
    Degraded,
    Inaccessible,
}

impl PoolState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Starting => "starting",
            Self::Inactive => "inactive",
            Self::Building => "building",
            Self::Degraded => "degraded",
            Self::Inaccessible => "inaccessible",
            Self::Unknown => "unknown",
        }
    }
}

/// A byte range [start, end) on a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
}

impl Extent {
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

/// One pool on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolReport {
    pub name: String,
    pub pool_type: PoolType,
    pub state: PoolState,
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
    /// Filled when the inventory was asked to count volumes.
    pub volume_count: u32,
    /// Why the pool is not running, in words an operator can act on.
    pub message: String,
    /// Largest single volume possible now (0: not limited below `available`).
    pub max_volume: u64,
    /// Disk pools: the free extents a partition can take.
    pub free_extents: Vec<Extent>,
    /// Logical pools with a thin pool: space thin volumes may be promised.
    pub thin_available: u64,
    /// Every node serving the pool sees the same volumes.
    pub shared: bool,
    /// Defined for every node of the cluster (no nodeSelector).
    pub every_node: bool,
}

impl PoolReport {
    /// A pool of `pool_type` that is running, with every figure zero.
    pub fn running(name: &str, pool_type: PoolType) -> Self {
        Self {
            name: name.into(),
            pool_type,
            state: PoolState::Running,
            capacity: 0,
            allocation: 0,
            available: 0,
            volume_count: 0,
            message: String::new(),
            max_volume: 0,
            free_extents: Vec::new(),
            thin_available: 0,
            shared: false,
            every_node: false,
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == PoolState::Running
    }
}

/// A node's answer to an inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub node_name: String,
    /// Still reading its pool definitions and starting its pools.
    pub starting: bool,
    pub pools: Vec<PoolReport>,
}

/// A volume as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeReport {
    pub pool: String,
    pub name: String,
    pub format: VolumeFormat,
    pub capacity: u64,
    pub allocation: u64,
    /// Some(why) when the volume is unhealthy.
    pub abnormal: Option<String>,
    /// Of a shared pool: its id names no node.
    pub shared: bool,
    /// The node a ControllerPublish recorded (at most one).
    pub published: Vec<String>,
}

/// A snapshot as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotReport {
    pub pool: String,
    pub name: String,
    pub source_volume: String,
    pub size: u64,
    pub created_unix_nanos: i64,
    pub ready: bool,
    /// Of a shared pool: its id names no node.
    pub shared: bool,
}

/// Which snapshots to ask a node for; empty fields ask for any.
#[derive(Debug, Default, Clone, Copy)]
pub struct SnapshotFilter<'a> {
    pub pool: &'a str,
    /// Only the snapshot of this name.
    pub name: &'a str,
    /// Only snapshots of this volume (of `pool`).
    pub source_volume: &'a str,
    /// Only snapshots whose id sorts after this one.
    pub after: &'a str,
    /// At most this many (0: all).
    pub max: u32,
}

impl SnapshotFilter<'_> {
    /// Whether `s` passes the pool, name and source filters.
    pub fn admits(&self, s: &SnapshotReport) -> bool {
        let any_or = |want: &str, got: &str| want.is_empty() || want == got;
        any_or(self.pool, &s.pool)
            && any_or(self.name, &s.name)
            && any_or(self.source_volume, &s.source_volume)
    }
}

/// A LUN of a LUN pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    /// Stable identity: device identifier / WWN, unit serial, or address.
    pub identity: String,
    pub size: u64,
    /// Where it is, for people.
    pub address: String,
    /// The volume holding it; None when free.
    pub volume: Option<String>,
    /// The volume name a static PersistentVolume uses for this LUN.
    pub static_name: String,
}

/// Where a new volume's content comes from (same pool, same node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewContent {
    Empty,
    Volume(String),
    Snapshot(String),
}

/// A volume to create on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVolume {
    pub pool: String,
    /// The storage name; the pool may answer with a shorter one.
    pub name: String,
    pub required: u64,
    /// 0: no limit.
    pub limit: u64,
    pub format: Option<VolumeFormat>,
    pub allocation: Option<Allocation>,
    pub wipe_on_delete: bool,
    /// Directory volumes: what deleting one does with its data.
    pub on_delete: OnDelete,
    pub partition_type: Option<String>,
    /// Logical pools: (stripes, stripe size in bytes; 0: LVM's default).
    pub stripes: Option<(u32, u64)>,
    pub content: NewContent,
}

/// The result of growing a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expansion {
    pub capacity: u64,
    /// The node must do its part (grow the filesystem).
    pub node_expansion_required: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pool: &str, name: &str, source: &str) -> SnapshotReport {
        SnapshotReport {
            pool: pool.into(),
            name: name.into(),
            source_volume: source.into(),
            size: 1,
            created_unix_nanos: 0,
            ready: true,
            shared: false,
        }
    }

    #[test]
    fn a_filter_drops_what_an_older_agent_returns_beyond_it() {
        // An older agent ignores `name` and answers every snapshot.
        let answered = [
            snap("p", "a", "v1"),
            snap("p", "b", "v2"),
            snap("q", "b", "v2"),
        ];
        let by_name = SnapshotFilter {
            pool: "p",
            name: "b",
            ..Default::default()
        };
        let kept: Vec<_> = answered.iter().filter(|s| by_name.admits(s)).collect();
        assert_eq!(kept, [&answered[1]]);
        let of_volume = SnapshotFilter {
            source_volume: "v2",
            ..Default::default()
        };
        assert_eq!(answered.iter().filter(|s| of_volume.admits(s)).count(), 2);
        assert!(answered.iter().all(|s| SnapshotFilter::default().admits(s)));
    }
}
