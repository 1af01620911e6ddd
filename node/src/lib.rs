//! pool-csi node plugin and node agent: serves CSI Identity + Node to kubelet
//! and the agent API to the controller, and is the only process that runs
//! storage commands.
// Denied everywhere but `mount/fifreeze.rs` (two ioctls), `tools/loopdev.rs`
// (one ioctl) and `lease.rs` (one fcntl).
#![deny(unsafe_code)]

pub mod agent;
pub mod attach;
pub mod cluster;
pub mod config;
pub mod copy;
pub mod csi;
pub mod dir_index;
pub mod dir_sync;
pub mod error;
pub mod exec;
pub mod formats;
pub mod fsutil;
pub mod lease;
pub mod mount;
pub mod ops;
pub mod pools;
pub mod publish_records;
pub mod steps;
pub mod tools;

pub use config::Config;

use exec::CommandRunner;
use pool_csi_common::OpLocks;
use pools::registry::PoolRegistry;
use std::sync::{atomic::AtomicBool, Arc};

/// Everything a request handler needs.
pub struct NodeCtx {
    pub cfg: Config,
    pub runner: Arc<dyn CommandRunner>,
    pub pools: PoolRegistry,
    /// One operation per volume; shared by the CSI and the agent services.
    pub locks: OpLocks,
    /// Set once every pool has been started (or has failed with a reason).
    pub ready: Arc<AtomicBool>,
    /// Loop devices of volumes staged in block mode, held open.
    pub held: tools::loopdev::HeldDevices,
}

impl NodeCtx {
    /// ControllerPublish records of this node's own volumes.
    pub fn publish_records(&self) -> publish_records::PublishRecords {
        publish_records::PublishRecords::new(&self.cfg.state_dir)
    }
}
