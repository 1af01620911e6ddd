//! ControllerPublishVolume / ControllerUnpublishVolume. Nothing is attached
//! from the control plane (the node attaches at NodeStage); publishing
//! decides whether the node may use the volume:
//!
//! - A node-local volume (its id names its node) can be used on that node
//!   only: any other gets FAILED_PRECONDITION naming it, so a pod scheduled
//!   elsewhere gets a clear error on its VolumeAttachment instead of a
//!   failed mount. Its node records the publish (ListVolumes and
//!   ControllerGetVolume report it: LIST_VOLUMES_PUBLISHED_NODES).
//! - A shared pool's volume (a LUN every node of the pool reaches) can be
//!   used on any node serving the pool, one at a time: the node is recorded
//!   in the volume's cluster-wide claim, and a second node is refused until
//!   the first unpublishes.

use super::{ask, found, serving_nodes, unless_gone};
use crate::{
    agents::inventory::INVENTORY_TTL,
    error::{Error, Result},
    Ctx,
};
use pool_csi_common::VolumeId;

pub async fn publish(ctx: &Ctx, id: &VolumeId, node: &str) -> Result<()> {
    if !ctx.agents.nodes().iter().any(|n| n == node) {
        return Err(Error::NotFound(format!(
            "node {node:?} has no pool-csi node plugin that answers"
        )));
    }
    match id.node.as_deref() {
        Some(home) if home != node => Err(Error::Precondition(format!(
            "volume {id} lives on node {home} and can be used there only; node {node} cannot publish it (is the pod's node affinity intact?)"
        ))),
        Some(_) => {
            let r = ctx
                .agents
                .client(node)?
                .publish(&id.pool, &id.name, node)
                .await;
            found(r, format_args!("volume {id}"))
        }
        None => {
            let inv = ctx.agents.inventory(node, INVENTORY_TTL).await?;
            if inv.running_pool(&id.pool).is_none_or(|p| !p.shared) {
                return Err(Error::Precondition(format!(
                    "node {node} does not serve pool {:?} of volume {id}{}",
                    id.pool,
                    match inv.pool(&id.pool) {
                        Some(p) => format!(" now: {}", p.message),
                        None => " (see the pool's nodeSelector)".into(),
                    }
                )));
            }
            ctx.agents
                .client(node)?
                .publish(&id.pool, &id.name, node)
                .await?;
            Ok(())
        }
    }
}

/// Drops the record of `node`: a shared volume's in its claim, a node-local
/// one's on its node. A volume or pool that is gone is unpublished.
pub async fn unpublish(ctx: &Ctx, id: &VolumeId, node: &str) -> Result<()> {
    if let Some(home) = id.node.as_deref() {
        // Never published anywhere else.
        if home != node || !ctx.agents.nodes().iter().any(|n| n == home) {
            return Ok(());
        }
        let r = ctx
            .agents
            .client(home)?
            .unpublish(&id.pool, &id.name, node)
            .await;
        return match r {
            // A dead node must not hold its volumes' VolumeAttachments
            // forever (they live there only); the record it keeps only
            // says "published" until the volume is published or deleted
            // again, and nothing acts on a record without an attachment.
            Err(e) if e.is_unavailable() => {
                tracing::warn!(volume = %id, node = home, error = %e.message, "unpublish: the volume's node does not answer; its publish record stays there");
                Ok(())
            }
            r => unless_gone(r).map(|_| ()),
        };
    }
    // Any node of the pool can drop the record: `node` may be gone for good.
    let asked = ask(ctx, id, Some(node), |c| async move {
        c.unpublish(&id.pool, &id.name, node).await
    });
    match asked.await {
        Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
        Ok(r) => unless_gone(r).map(|_| ()),
    }
}

/// Releases shared volume `id` from `lost`, a node lost to the cluster (the
/// leader acting for it): asked of the pool's other nodes only, since the
/// one that releases fences `lost` off the volume's LUN first (unless the
/// pool says `fencing: none`) and refuses when it cannot. Returns the node
/// that released it.
pub async fn release_from_lost(ctx: &Ctx, id: &VolumeId, lost: &str) -> Result<String> {
    let mut last = None;
    for node in serving_nodes(ctx, id, None).await? {
        if node == lost {
            continue;
        }
        match ctx
            .agents
            .client(&node)?
            .unpublish(&id.pool, &id.name, lost)
            .await
        {
            Err(e) if e.is_unavailable() => last = Some(e),
            Err(e) => return Err(e.into()),
            Ok(()) => return Ok(node),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => Error::Precondition(format!(
            "no node of pool {:?} but {lost} serves it: nobody can release volume {id}",
            id.pool
        )),
    })
}
