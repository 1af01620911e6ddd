//! Each node's pool inventory, as last reported, and a short-lived cache of
//! it (so CreateVolume needs no extra round trip).

use super::model::PoolReport;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How long an inventory answer is trusted.
pub const INVENTORY_TTL: Duration = Duration::from_secs(5);

/// One node's pools, as last reported.
#[derive(Debug, Clone)]
pub struct NodeInventory {
    pub node: String,
    /// The node is still starting its pools: missing ones may yet appear.
    pub starting: bool,
    pub pools: Vec<PoolReport>,
}

impl NodeInventory {
    pub fn pool(&self, name: &str) -> Option<&PoolReport> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn running_pool(&self, name: &str) -> Option<&PoolReport> {
        self.pool(name).filter(|p| p.is_running())
    }

    /// Whether `pool` may come up here soon: the node or the pool is starting.
    pub fn is_starting(&self, pool: &str) -> bool {
        match self.pool(pool) {
            Some(p) => p.state == super::model::PoolState::Starting,
            None => self.starting,
        }
    }
}

/// The inventories answered lately, by node.
#[derive(Default)]
pub struct InventoryCache {
    entries: Mutex<BTreeMap<String, (Instant, Arc<NodeInventory>)>>,
}

impl InventoryCache {
    /// `node`'s inventory if it is younger than `max_age`.
    pub fn fresh(&self, node: &str, max_age: Duration) -> Option<Arc<NodeInventory>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(node)
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, inv)| inv.clone())
    }

    pub fn put(&self, inv: Arc<NodeInventory>) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inv.node.clone(), (Instant::now(), inv));
    }

    pub fn forget(&self, node: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }
}
