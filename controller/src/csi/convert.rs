//! CSI messages ↔ the controller's types, at the edge of the CSI service.

use crate::{
    agents::model::{SnapshotReport, VolumeReport},
    placement::NodeTopology,
};
use pool_csi_common::{SnapshotId, VolumeId, TOPOLOGY_NODE_KEY};
use pool_csi_proto::csi::{self, Topology, TopologyRequirement};

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

pub fn condition(v: &VolumeReport) -> csi::VolumeCondition {
    csi::VolumeCondition {
        abnormal: v.abnormal.is_some(),
        message: v
            .abnormal
            .clone()
            .unwrap_or_else(|| "volume is healthy".into()),
    }
}

pub fn snapshot(id: &SnapshotId, s: &SnapshotReport) -> csi::Snapshot {
    let nanos = s.created_unix_nanos;
    csi::Snapshot {
        size_bytes: s.size as i64,
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

/// The topology of a volume on `node`.
pub fn topology_of(node: &str) -> Topology {
    Topology {
        segments: [(TOPOLOGY_NODE_KEY.to_string(), node.to_string())].into(),
    }
}

/// The node a topology segment names; None when it does not constrain nodes.
fn node_of(t: &Topology) -> Option<&str> {
    t.segments.get(TOPOLOGY_NODE_KEY).map(String::as_str)
}

/// A CSI topology requirement in nodes. A requisite segment without
/// pool-csi's key (another driver's zone, say) does not constrain nodes.
pub fn node_topology(req: Option<&TopologyRequirement>) -> NodeTopology {
    let Some(req) = req else {
        return NodeTopology::default();
    };
    let named: Option<Vec<String>> = req
        .requisite
        .iter()
        .map(|t| node_of(t).map(String::from))
        .collect();
    NodeTopology {
        requisite: named.filter(|_| !req.requisite.is_empty()),
        preferred: req
            .preferred
            .iter()
            .filter_map(|t| node_of(t).map(String::from))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_without_our_key_do_not_constrain() {
        let mut t = Topology::default();
        t.segments
            .insert("topology.kubernetes.io/zone".into(), "z1".into());
        let r = TopologyRequirement {
            requisite: vec![t],
            preferred: vec![],
        };
        assert!(node_topology(Some(&r)).allows("a"));
        let only_b = TopologyRequirement {
            requisite: vec![topology_of("b")],
            preferred: vec![topology_of("b")],
        };
        let t = node_topology(Some(&only_b));
        assert!(!t.allows("a") && t.allows("b"));
        assert_eq!(t.preferred, ["b"]);
        assert!(node_topology(None).allows("a"));
    }
}
