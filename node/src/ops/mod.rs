//! Node use-cases, composed from pools, attach and mount. All idempotent;
//! all state is rediscovered from the mount table, sysfs and the pool.

pub mod paths;
pub mod publish;
pub mod stage;
pub mod stats;

use crate::{
    attach::AttachSource,
    attach::Attacher,
    error::{Error, Result},
    pools::Pool,
    tools::qsd::Export,
    NodeCtx,
};
use pool_csi_common::VolumeId;
use std::sync::Arc;

/// How the workload will use the volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount { fs_type: String, flags: Vec<String> },
}

/// The file a block volume's device node is bound to inside the staging dir.
pub const STAGED_DEVICE: &str = "device";

/// The pool that holds `id` on this node.
pub fn pool_of(ctx: &NodeCtx, id: &VolumeId) -> Result<Arc<dyn Pool>> {
    if let Some(node) = &id.node {
        if *node != ctx.cfg.node_name {
            return Err(Error::VolumeElsewhere {
                pool: id.pool.clone(),
                name: id.name.clone(),
                home: node.clone(),
                here: ctx.cfg.node_name.clone(),
            });
        }
    }
    ctx.pools.get(&id.pool, &ctx.cfg.node_name)
}

/// An attacher for one volume.
pub fn attacher<'a>(ctx: &'a NodeCtx, id: &VolumeId) -> Attacher<'a> {
    Attacher {
        runner: ctx.runner.as_ref(),
        sysfs: &ctx.cfg.sysfs_root,
        direct_io: ctx.cfg.loop_direct_io,
        ploop_mount: ctx.cfg.ploop.mounts(),
        export: Export::at(crate::pools::file::exports_dir(&ctx.cfg, &id.pool).join(&id.name)),
    }
}

/// The volume's attach source; NotFound when the volume is gone.
pub async fn source_of(ctx: &NodeCtx, id: &VolumeId) -> Result<AttachSource> {
    pool_of(ctx, id)?.attach_source(&id.name).await
}
