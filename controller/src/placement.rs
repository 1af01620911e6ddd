//! Where a new volume goes: pure functions of the request's topology and the
//! nodes that hold the pool.
//!
//! Order: the CO's preferred topologies first, in its order; then the other
//! allowed nodes by rendezvous hash of (volume name, node). The hash makes a
//! retried CreateVolume try the same node first, where the agent finds the
//! volume it already made, instead of making a second one elsewhere. Free
//! space is not used for ordering for that reason: capacity-aware placement
//! comes from GetCapacity and the scheduler (WaitForFirstConsumer); a node
//! without room answers RESOURCE_EXHAUSTED and the next one is tried.

use pool_csi_common::{volume_id::fnv1a64, TOPOLOGY_NODE_KEY};
use pool_csi_proto::csi::{Topology, TopologyRequirement};

/// The node a topology segment names; None when it does not constrain nodes.
fn node_of(t: &Topology) -> Option<&str> {
    t.segments.get(TOPOLOGY_NODE_KEY).map(String::as_str)
}

/// Nodes to try, in order, for volume `name` among `nodes` (those with the pool).
pub fn candidates(name: &str, nodes: &[String], req: Option<&TopologyRequirement>) -> Vec<String> {
    let empty = TopologyRequirement::default();
    let req = req.unwrap_or(&empty);
    let allowed = |n: &str| {
        req.requisite.is_empty()
            || req
                .requisite
                .iter()
                .any(|t| node_of(t).is_none_or(|want| want == n))
    };
    let mut out: Vec<String> = Vec::new();
    for t in &req.preferred {
        if let Some(n) = node_of(t) {
            if nodes.iter().any(|x| x == n) && allowed(n) && !out.iter().any(|x| x == n) {
                out.push(n.to_string());
            }
        }
    }
    let mut rest: Vec<&String> = nodes
        .iter()
        .filter(|n| allowed(n) && !out.contains(n))
        .collect();
    rest.sort_by_key(|n| std::cmp::Reverse(score(name, n)));
    out.extend(rest.into_iter().cloned());
    out
}

fn score(name: &str, node: &str) -> u64 {
    let mut key = Vec::with_capacity(name.len() + node.len() + 1);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(node.as_bytes());
    fnv1a64(&key)
}

/// The topology of a volume on `node`.
pub fn topology_of(node: &str) -> Topology {
    Topology {
        segments: [(TOPOLOGY_NODE_KEY.to_string(), node.to_string())].into(),
    }
}

/// Whether `node` satisfies the requisite part of a requirement.
pub fn is_allowed(node: &str, req: Option<&TopologyRequirement>) -> bool {
    req.is_none_or(|r| {
        r.requisite.is_empty()
            || r.requisite
                .iter()
                .any(|t| node_of(t).is_none_or(|w| w == node))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn req(requisite: &[&str], preferred: &[&str]) -> TopologyRequirement {
        TopologyRequirement {
            requisite: requisite.iter().map(|n| topology_of(n)).collect(),
            preferred: preferred.iter().map(|n| topology_of(n)).collect(),
        }
    }

    #[test]
    fn preferred_comes_first_and_requisite_limits() {
        let all = nodes(&["a", "b", "c", "d"]);
        let c = candidates("pvc-1", &all, Some(&req(&["b", "c"], &["c"])));
        assert_eq!(c[0], "c");
        assert_eq!(c.len(), 2);
        assert!(c.contains(&"b".to_string()));
    }

    #[test]
    fn nodes_without_the_pool_are_never_chosen() {
        let c = candidates("pvc-1", &nodes(&["a"]), Some(&req(&["b"], &["b"])));
        assert!(c.is_empty());
    }

    #[test]
    fn order_is_stable_for_a_name_and_spreads_names() {
        let all = nodes(&["a", "b", "c", "d", "e"]);
        assert_eq!(
            candidates("pvc-1", &all, None),
            candidates("pvc-1", &all, None)
        );
        let firsts: std::collections::HashSet<_> = (0..50)
            .map(|i| candidates(&format!("pvc-{i}"), &all, None)[0].clone())
            .collect();
        assert!(firsts.len() >= 4, "placement does not spread: {firsts:?}");
    }

    #[test]
    fn segments_without_our_key_do_not_constrain() {
        let mut t = Topology::default();
        t.segments
            .insert("topology.kubernetes.io/zone".into(), "z1".into());
        let r = TopologyRequirement {
            requisite: vec![t],
            preferred: vec![],
        };
        assert_eq!(candidates("v", &nodes(&["a", "b"]), Some(&r)).len(), 2);
        assert!(is_allowed("a", Some(&r)));
        assert!(!is_allowed("a", Some(&req(&["b"], &[]))));
    }
}
