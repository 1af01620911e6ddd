//! DeleteVolume, ControllerExpandVolume, ControllerGetVolume, ListVolumes.

use super::{ask, found, unless_gone};
use crate::{
    agents::model::{Expansion, VolumeReport},
    error::{Error, Result},
    join::join_all,
    Ctx,
};
use pool_csi_common::VolumeId;

/// Deletes a volume. A volume, pool or node that no longer has it is Ok.
pub async fn delete(ctx: &Ctx, id: &VolumeId) -> Result<()> {
    let asked = ask(ctx, id, None, |c| async move {
        c.delete_volume(&id.pool, &id.name, false).await
    });
    match asked.await {
        Err(Error::NotFound(_)) => Ok(()), // no node has the pool any more
        Err(e) => Err(e),
        Ok(r) => unless_gone(r).map(|_| ()), // the pool is gone from the node
    }
}

/// Grows a volume.
pub async fn expand(ctx: &Ctx, id: &VolumeId, required: u64, limit: u64) -> Result<Expansion> {
    let r = ask(ctx, id, None, |c| async move {
        c.expand_volume(&id.pool, &id.name, required, limit).await
    })
    .await?;
    Ok(r?)
}

/// The volume as its agent reports it; NotFound when it is gone.
pub async fn get(ctx: &Ctx, id: &VolumeId) -> Result<VolumeReport> {
    let r = ask(ctx, id, None, |c| async move {
        c.get_volume(&id.pool, &id.name).await
    })
    .await?;
    found(r, format_args!("volume {id}"))
}

/// Every volume on every reachable node, keyed and sorted by volume id; a
/// shared pool's volumes (listed by each of its nodes) once.
/// An unreachable node fails the listing (UNAVAILABLE): a silently short
/// list would make the CO think volumes vanished.
pub async fn list(ctx: &Ctx) -> Result<Vec<(String, (VolumeId, VolumeReport))>> {
    let nodes = ctx.agents.nodes();
    let calls = nodes.iter().map(|node| async move {
        let volumes = ctx.agents.client(node)?.list_volumes(None).await?;
        Ok::<_, Error>((node.clone(), volumes))
    });
    let mut out = std::collections::BTreeMap::new();
    for r in join_all(calls).await {
        let (node, volumes) = r?;
        for v in volumes {
            let id = VolumeId::new(&v.pool, (!v.shared).then_some(node.as_str()), &v.name);
            out.entry(id.to_string()).or_insert((id, v));
        }
    }
    Ok(out.into_iter().collect())
}
