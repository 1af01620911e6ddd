//! What the leader's round knows: every node's pools (with volume counts)
//! and every running LUN pool's LUNs, gathered from the agents. A stuck
//! node never stalls the round for long.

use crate::{
    agents::{
        model::{Lun, PoolReport},
        Agents,
    },
    join::join_all,
};
use std::{collections::BTreeMap, time::Duration};

/// What each node reported: its pools, or why it could not be asked.
pub type Reports = BTreeMap<String, Result<Vec<PoolReport>, String>>;

/// One LUN pool on one node, as its agent listed it.
#[derive(Debug, Clone)]
pub struct LunReport {
    pub pool: String,
    pub node: String,
    /// The pool's claims live in the cluster (`PoolInfo.shared`).
    pub shared: bool,
    pub luns: Vec<Lun>,
}

/// How long one agent may take to report (a stuck node must not stall
/// every pool's status).
const GATHER_TIMEOUT: Duration = Duration::from_secs(10);

/// Every known agent's pools, with volume counts.
pub async fn gather(agents: &Agents) -> Reports {
    let futs = agents.nodes().into_iter().map(|node| async move {
        let r = match agents.client(&node) {
            Ok(c) => match tokio::time::timeout(GATHER_TIMEOUT, c.inventory(true)).await {
                Ok(r) => r.map(|inv| inv.pools).map_err(|e| e.message),
                Err(_) => Err(format!("no answer within {GATHER_TIMEOUT:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = &r {
            tracing::debug!(%node, %why, "status: agent did not report");
        }
        (node, r)
    });
    join_all(futs).await.into_iter().collect()
}

/// Every running LUN pool's LUNs, from the nodes in `reports` (the status
/// round's inventories).
pub async fn gather_luns(agents: &Agents, reports: &Reports) -> Vec<LunReport> {
    let mut out = Vec::new();
    for (node, pools) in reports {
        let Ok(pools) = pools else { continue };
        for p in pools {
            if !p.pool_type.is_lun_pool() || !p.is_running() {
                continue;
            }
            let Ok(c) = agents.client(node) else {
                continue;
            };
            match c.list_luns(&p.name).await {
                Ok(luns) => out.push(LunReport {
                    pool: p.name.clone(),
                    node: node.clone(),
                    shared: p.shared,
                    luns,
                }),
                Err(e) => {
                    tracing::warn!(%node, pool = %p.name, error = %e.message, "listing LUNs failed")
                }
            }
        }
    }
    out
}
