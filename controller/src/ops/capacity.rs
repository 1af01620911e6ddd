//! GetCapacity: free space of a pool, per topology segment (one node), so the
//! external-provisioner's capacity tracking can steer the scheduler. Always
//! asked fresh: it is polled rarely and must not lag behind creates.

use crate::{error::Result, Ctx};
use pool_csi_common::TOPOLOGY_NODE_KEY;
use std::{collections::HashMap, time::Duration};

/// (available bytes, largest single volume) for `pool` (None: every pool)
/// on the nodes the topology segment names (None: every node). `thin` asks
/// for the space thin volumes may still be promised (logical pools).
pub async fn capacity(
    ctx: &Ctx,
    pool: Option<&str>,
    segment: Option<&HashMap<String, String>>,
    thin: bool,
) -> Result<(u64, u64)> {
    let node = segment.and_then(|s| s.get(TOPOLOGY_NODE_KEY));
    if segment.is_some_and(|s| !s.is_empty()) && node.is_none() {
        return Ok((0, 0)); // a segment we do not report: nothing of ours is there
    }
    let (inventories, _) = ctx.agents.all_inventories(Duration::ZERO).await;
    let (mut total, mut largest) = (0u64, 0u64);
    // A shared pool's space is the same seen from each of its nodes: counted once.
    let mut shared_seen = std::collections::HashSet::new();
    for inv in inventories
        .iter()
        .filter(|i| node.is_none_or(|n| *n == i.node))
    {
        for p in inv
            .pools
            .iter()
            .filter(|p| pool.is_none_or(|want| p.name == want) && p.is_running())
        {
            if p.shared && !shared_seen.insert(p.name.as_str()) {
                continue;
            }
            let available = if thin { p.thin_available } else { p.available };
            total += available;
            let max = if p.max_volume > 0 && !thin {
                p.max_volume
            } else {
                available
            };
            largest = largest.max(max);
        }
    }
    Ok((total, largest))
}
