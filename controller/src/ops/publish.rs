//! ControllerPublishVolume / ControllerUnpublishVolume. A pool-csi volume
//! lives on one node (its id says which): publishing checks that the node
//! asking is that node and that the volume exists there, so a pod scheduled
//! elsewhere gets a clear FAILED_PRECONDITION on its VolumeAttachment
//! instead of a failed mount. Nothing is attached from the control plane;
//! the node attaches at NodeStage.

use super::volumes;
use crate::{
    error::{Error, Result},
    Ctx,
};
use pool_csi_proto::VolumeId;

pub async fn publish(ctx: &Ctx, id: &VolumeId, node: &str) -> Result<()> {
    if !ctx.agents.nodes().iter().any(|n| n == node) {
        return Err(Error::NotFound(format!(
            "node {node:?} has no pool-csi node plugin that answers"
        )));
    }
    if let Some(home) = id.node.as_deref().filter(|home| *home != node) {
        return Err(Error::Precondition(format!(
            "volume {id} lives on node {home} and can be used there only; node {node} cannot publish it (is the pod's node affinity intact?)"
        )));
    }
    volumes::get(ctx, id).await.map(|_| ())
}
