//! StoragePool status: per node, as the node agents report it, plus a
//! summary the printer columns show (`kubectl get storagepools` reads like
//! `virsh pool-list --details`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the controller writes into `StoragePool.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StoragePoolStatus {
    /// Running when every node holding the pool runs it; else Degraded or Inactive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Sum over nodes, as a quantity ("100Gi").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
    /// "running/total" nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_ready: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodePoolStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<PoolCondition>,
}

/// The pool on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolStatus {
    pub node: String,
    /// running, inactive, degraded …
    pub state: String,
    pub capacity_bytes: u64,
    pub allocation_bytes: u64,
    pub available_bytes: u64,
    pub volumes: u32,
    /// Disk pools: free extents a partition can take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub free_extents: Vec<ExtentStatus>,
    /// Why the pool is not running there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A byte range `[start, end)` on a disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ExtentStatus {
    pub start: u64,
    pub end: u64,
    pub size: u64,
}

/// A condition in the Kubernetes style.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

/// A size for people, as `kubectl get sp` shows it: a Kubernetes quantity
/// in the largest binary unit it reaches, to the nearest whole unit, or one
/// decimal below 10 ("252Gi", "1.5Ti", "768Mi", "512"). Exact sizes are
/// in each node's `capacityBytes`, `allocationBytes`, `availableBytes`.
pub fn quantity(bytes: u64) -> String {
    const UNITS: [(&str, u32); 5] = [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift {
            let tenths = (bytes as u128 * 10 + (1u128 << shift) / 2) >> shift;
            return if tenths < 100 && !tenths.is_multiple_of(10) {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            } else {
                let whole = (bytes as u128 + (1u128 << shift) / 2) >> shift;
                format!("{whole}{unit}")
            };
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubectl_users_expect() {
        assert_eq!(quantity(0), "0");
        assert_eq!(quantity(512), "512");
        assert_eq!(quantity(10 << 30), "10Gi");
        assert_eq!(quantity(1536 << 20), "1.5Gi");
        assert_eq!(quantity((1 << 30) + 1), "1Gi");
        // The example: 264212084Ki.
        assert_eq!(quantity(264_212_084 << 10), "252Gi");
        assert_eq!(quantity(768 << 20), "768Mi");
        assert_eq!(quantity((3 << 40) / 2), "1.5Ti");
        assert_eq!(quantity((10 << 30) - 1), "10Gi");
        assert_eq!(quantity(1023), "1023");
        assert_eq!(quantity(1 << 60), "1024Pi");
        // Every answer is a quantity Kubernetes parses.
        for b in [1u64 << 20, 5 << 29, 999 << 30, u64::MAX] {
            let q = quantity(b);
            let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            assert!(digits.parse::<f64>().is_ok(), "{q}");
        }
    }
}
