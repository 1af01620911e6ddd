//! DeleteVolume, ControllerExpandVolume, ControllerGetVolume, ListVolumes.

use super::{agent_err, ask};
use crate::{
    agents::futures_join_all,
    error::{Error, Result},
    Ctx,
};
use pool_csi_common::VolumeId;
use pool_csi_proto::agent as pb;

/// Deletes a volume. A volume, pool or node that no longer has it is Ok.
pub async fn delete(ctx: &Ctx, id: &VolumeId) -> Result<()> {
    let req = pb::DeleteVolumeRequest {
        pool: id.pool.clone(),
        name: id.name.clone(),
        wipe: false,
    };
    let asked = ask(ctx, id, None, |mut c| {
        let req = req.clone();
        async move { c.delete_volume(req).await }
    });
    match asked.await {
        Err(Error::NotFound(_)) => Ok(()), // no node has the pool any more
        Err(e) => Err(e),
        Ok((_, Ok(_))) => Ok(()),
        Ok((_, Err(s))) if s.code() == tonic::Code::NotFound => Ok(()), // the pool is gone from the node
        Ok((node, Err(s))) => Err(agent_err(&node)(s)),
    }
}

/// Grows a volume; returns (capacity, node expansion required).
pub async fn expand(ctx: &Ctx, id: &VolumeId, required: u64, limit: u64) -> Result<(u64, bool)> {
    let req = pb::ExpandVolumeRequest {
        pool: id.pool.clone(),
        name: id.name.clone(),
        required_bytes: required,
        limit_bytes: limit,
    };
    let (node, r) = ask(ctx, id, None, |mut c| {
        let req = req.clone();
        async move { c.expand_volume(req).await }
    })
    .await?;
    let r = r.map_err(agent_err(&node))?;
    Ok((r.capacity_bytes, r.node_expansion_required))
}

/// The volume as its agent reports it; NotFound when it is gone.
pub async fn get(ctx: &Ctx, id: &VolumeId) -> Result<pb::VolumeInfo> {
    let req = pb::VolumeRef {
        pool: id.pool.clone(),
        name: id.name.clone(),
    };
    let (node, r) = ask(ctx, id, None, |mut c| {
        let req = req.clone();
        async move { c.get_volume(req).await }
    })
    .await?;
    match r {
        Ok(r) => r
            .volume
            .ok_or_else(|| Error::NotFound(format!("volume {id} not found"))),
        Err(s) if s.code() == tonic::Code::NotFound => Err(Error::NotFound(format!(
            "volume {id} not found: {}",
            s.message()
        ))),
        Err(s) => Err(agent_err(&node)(s)),
    }
}

/// Every volume on every reachable node, keyed and sorted by volume id; a
/// shared pool's volumes (listed by each of its nodes) once.
/// An unreachable node fails the listing (UNAVAILABLE): a silently short
/// list would make the CO think volumes vanished.
pub async fn list(ctx: &Ctx) -> Result<Vec<(String, (VolumeId, pb::VolumeInfo))>> {
    let nodes = ctx.agents.nodes();
    let calls = nodes.iter().map(|node| async move {
        let r = ctx
            .agents
            .client(node)?
            .list_volumes(pb::ListVolumesRequest {
                pool: String::new(),
            })
            .await;
        r.map(|r| (node.clone(), r.into_inner().volumes))
            .map_err(agent_err(node))
    });
    let mut out = std::collections::BTreeMap::new();
    for r in futures_join_all(calls).await {
        let (node, volumes) = r?;
        for v in volumes {
            let id = VolumeId::new(&v.pool, (!v.shared).then_some(node.as_str()), &v.name);
            out.entry(id.to_string()).or_insert((id, v));
        }
    }
    Ok(out.into_iter().collect())
}
