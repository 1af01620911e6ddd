//! Pool answers → agent API messages, at the edge of the agent service.

use crate::pools::{self, Pool, PoolState, PoolStatus};
use pool_csi_proto::agent as pb;

pub fn volume(pool: &dyn Pool, v: pools::Volume) -> pb::VolumeInfo {
    pb::VolumeInfo {
        pool: pool.name().into(),
        shared: pool.shared(),
        name: v.name,
        format: pb::VolumeFormat::from(v.format) as i32,
        capacity_bytes: v.capacity,
        allocation_bytes: v.allocation,
        abnormal: v.abnormal.is_some(),
        condition_message: v.abnormal.unwrap_or_default(),
        published_nodes: v.published.into_iter().collect(),
    }
}

pub fn snapshot(pool: &dyn Pool, s: pools::Snapshot) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        pool: pool.name().into(),
        shared: pool.shared(),
        name: s.name,
        source_volume: s.source_volume,
        size_bytes: s.size,
        creation_unix_nanos: s.created_unix_nanos,
        ready: true,
    }
}

pub fn pool(p: &dyn Pool, s: PoolStatus) -> pb::PoolInfo {
    pb::PoolInfo {
        name: p.name().into(),
        kind: pb::PoolType::from(p.pool_type()) as i32,
        state: state(s.state) as i32,
        capacity_bytes: s.capacity,
        allocation_bytes: s.allocation,
        available_bytes: s.available,
        volume_count: s.volume_count.unwrap_or(0),
        message: s.message,
        max_volume_bytes: s.max_volume,
        free_extents: s
            .free_extents
            .iter()
            .map(|(start, end)| pb::Extent {
                start: *start,
                end: *end,
                size: end - start,
            })
            .collect(),
        thin_available_bytes: s.thin_available,
        shared: p.shared(),
        every_node: false, // the registry knows (see the inventory)
    }
}

pub fn lun(l: pools::LunEntry) -> pb::LunInfo {
    pb::LunInfo {
        identity: l.identity,
        size_bytes: l.size,
        address: l.address,
        volume: l.volume.unwrap_or_default(),
        static_name: l.static_name,
    }
}

fn state(s: PoolState) -> pb::PoolState {
    match s {
        PoolState::Starting => pb::PoolState::Starting,
        PoolState::Inactive => pb::PoolState::Inactive,
        PoolState::Running => pb::PoolState::Running,
        PoolState::Degraded => pb::PoolState::Degraded,
    }
}
