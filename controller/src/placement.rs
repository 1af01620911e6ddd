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

use pool_csi_common::volume_id::fnv1a64;

/// Where the CO allows and prefers a new volume, in nodes (the CSI
/// topology reduced to pool-csi's one key at the edge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTopology {
    /// None: every node; Some: only these.
    pub requisite: Option<Vec<String>>,
    /// Tried first, in this order.
    pub preferred: Vec<String>,
}

impl NodeTopology {
    /// Whether `node` satisfies the requisite part.
    pub fn allows(&self, node: &str) -> bool {
        self.requisite
            .as_ref()
            .is_none_or(|r| r.iter().any(|n| n == node))
    }
}

/// Nodes to try, in order, for volume `name` among `nodes` (those with the pool).
pub fn candidates(name: &str, nodes: &[String], t: &NodeTopology) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in &t.preferred {
        if nodes.contains(n) && t.allows(n) && !out.contains(n) {
            out.push(n.clone());
        }
    }
    let mut rest: Vec<&String> = nodes
        .iter()
        .filter(|n| t.allows(n) && !out.contains(n))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn req(requisite: &[&str], preferred: &[&str]) -> NodeTopology {
        NodeTopology {
            requisite: Some(nodes(requisite)),
            preferred: nodes(preferred),
        }
    }

    #[test]
    fn preferred_comes_first_and_requisite_limits() {
        let all = nodes(&["a", "b", "c", "d"]);
        let c = candidates("pvc-1", &all, &req(&["b", "c"], &["c"]));
        assert_eq!(c[0], "c");
        assert_eq!(c.len(), 2);
        assert!(c.contains(&"b".to_string()));
    }

    #[test]
    fn nodes_without_the_pool_are_never_chosen() {
        let c = candidates("pvc-1", &nodes(&["a"]), &req(&["b"], &["b"]));
        assert!(c.is_empty());
    }

    #[test]
    fn order_is_stable_for_a_name_and_spreads_names() {
        let all = nodes(&["a", "b", "c", "d", "e"]);
        let any = NodeTopology::default();
        assert_eq!(
            candidates("pvc-1", &all, &any),
            candidates("pvc-1", &all, &any)
        );
        let firsts: std::collections::HashSet<_> = (0..50)
            .map(|i| candidates(&format!("pvc-{i}"), &all, &any)[0].clone())
            .collect();
        assert!(firsts.len() >= 4, "placement does not spread: {firsts:?}");
    }
}
