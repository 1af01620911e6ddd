//! pool-csi controller: CSI Identity + Controller for the sidecars. Picks the
//! node and pool for each request and asks that node's agent to do the work.
#![forbid(unsafe_code)]

pub mod agents;
pub mod csi;
pub mod error;
pub mod join;
pub mod leader;
pub mod ops;
pub mod placement;

use agents::Agents;
use pool_csi_common::OpLocks;

/// Everything a controller handler needs.
pub struct Ctx {
    pub driver_name: String,
    /// Used when a StorageClass names no pool.
    pub default_pool: Option<String>,
    pub agents: std::sync::Arc<Agents>,
    pub locks: OpLocks,
}
