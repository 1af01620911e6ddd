//! Agent answers → CSI messages.

use crate::placement::topology_of;
use pool_csi_common::{SnapshotId, VolumeId};
use pool_csi_proto::{agent as pb, csi};

/// A volume reached from the nodes `reach` (see `ops::reach`).
pub fn volume(id: &VolumeId, capacity: u64, reach: &[String]) -> csi::Volume {
    csi::Volume {
        capacity_bytes: capacity as i64,
        volume_id: id.to_string(),
        volume_context: Default::default(),
        content_source: None,
        accessible_topology: reach.iter().map(|n| topology_of(n)).collect(),
    }
}

pub fn condition(v: &pb::VolumeInfo) -> csi::VolumeCondition {
    csi::VolumeCondition {
        abnormal: v.abnormal,
        message: if v.abnormal {
            v.condition_message.clone()
        } else {
            "volume is healthy".into()
        },
    }
}

pub fn snapshot(id: &SnapshotId, s: &pb::SnapshotInfo) -> csi::Snapshot {
    let nanos = s.creation_unix_nanos;
    csi::Snapshot {
        size_bytes: s.size_bytes as i64,
        snapshot_id: id.to_string(),
        source_volume_id: VolumeId::new(&id.pool, id.node.as_deref(), &s.source_volume).to_string(),
        creation_time: Some(prost_types::Timestamp {
            seconds: nanos / 1_000_000_000,
            nanos: (nanos % 1_000_000_000) as i32,
        }),
        ready_to_use: s.ready,
        group_snapshot_id: String::new(),
    }
}
