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

/// Zeroes a volume and deletes it, through a node of its pool. Unlike
/// [`delete`], a pool no node serves is an error: nothing was zeroed.
pub async fn wipe(ctx: &Ctx, id: &VolumeId) -> Result<()> {
    let asked = ask(ctx, id, None, |c| async move {
        c.delete_volume(&id.pool, &id.name, true).await
    });
    Ok(asked.await??)
}

/// Grows a volume.
pub async fn expand(ctx: &Ctx, id: &VolumeId, required: u64, limit: u64) -> Result<Expansion> {
    let holder = published_on(ctx, id).await;
    let r = ask(ctx, id, holder.as_deref(), |c| async move {
        c.expand_volume(&id.pool, &id.name, required, limit).await
    })
    .await?;
    Ok(r?)
}

/// The node a shared volume is published on (its claim), if any: what
/// touches its image goes there, where it is attached. None for a
/// node-local volume (its own node answers anyway).
pub async fn published_on(ctx: &Ctx, id: &VolumeId) -> Option<String> {
    if id.node.is_some() {
        return None;
    }
    get(ctx, id).await.ok()?.published.into_iter().next()
}

/// The volume as its agent reports it; NotFound when it is gone.
pub async fn get(ctx: &Ctx, id: &VolumeId) -> Result<VolumeReport> {
    let r = ask(ctx, id, None, |c| async move {
        c.get_volume(&id.pool, &id.name).await
    })
    .await?;
    found(r, format_args!("volume {id}"))
}

/// One page of every volume on every reachable node, in volume-id order:
/// those after `token` (a volume id; empty: from the first), at most `max`
/// (0: all), and the token of the next page (empty: this was the last). A
/// shared pool's volumes (listed by each of its nodes) come once. Each node
/// is asked for its next `max` only, so a page costs the page, not the
/// pools; the token is the last id handed out, so the walk stays correct
/// while volumes come and go between pages.
/// An unreachable node fails the listing (UNAVAILABLE): a silently short
/// list would make the CO think volumes vanished.
pub async fn list_page(
    ctx: &Ctx,
    token: &str,
    max: i32,
) -> Result<(Vec<(VolumeId, VolumeReport)>, String)> {
    let max = super::page_size(max)?;
    let nodes = ctx.agents.nodes();
    let calls = nodes.iter().map(|node| async move {
        let (volumes, more) = ctx
            .agents
            .client(node)?
            .list_volumes_page(token, max)
            .await?;
        let keyed = volumes.into_iter().map(|v| {
            let id = VolumeId::new(&v.pool, (!v.shared).then_some(node.as_str()), &v.name);
            (id.to_string(), (id, v))
        });
        Ok::<_, Error>((keyed.collect(), more))
    });
    let pages = join_all(calls)
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(super::merge_pages(pages, token, max))
}
