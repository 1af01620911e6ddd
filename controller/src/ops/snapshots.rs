//! CreateSnapshot, DeleteSnapshot, ListSnapshots.

use super::{agent_err, node_of};
use crate::{
    agents::futures_join_all,
    error::{Error, Result},
    Ctx,
};
use pool_csi_common::{SnapshotId, VolumeId};
use pool_csi_proto::agent as pb;

/// Every snapshot on every node, keyed and sorted by snapshot id.
pub async fn list(ctx: &Ctx) -> Result<Vec<(String, (SnapshotId, pb::SnapshotInfo))>> {
    let nodes = ctx.agents.nodes();
    let calls = nodes.iter().map(|node| async move {
        let req = pb::ListSnapshotsRequest {
            pool: String::new(),
            source_volume: String::new(),
        };
        let r = ctx.agents.client(node)?.list_snapshots(req).await;
        r.map(|r| (node.clone(), r.into_inner().snapshots))
            .map_err(agent_err(node))
    });
    let mut out = Vec::new();
    for r in futures_join_all(calls).await {
        let (node, snaps) = r?;
        for s in snaps {
            let id = SnapshotId::new(&s.pool, Some(&node), &s.name);
            out.push((id.to_string(), (id, s)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Snapshots `source` as `name`. A snapshot of that name from another volume
/// anywhere is ALREADY_EXISTS (snapshot names are cluster-wide in CSI).
pub async fn create(
    ctx: &Ctx,
    source: &VolumeId,
    name: &str,
) -> Result<(SnapshotId, pb::SnapshotInfo)> {
    let node = node_of(&source.node, "source volume id")?;
    for (_, (id, s)) in list(ctx).await? {
        if id.name == name
            && (id.pool != source.pool || id.node != source.node || s.source_volume != source.name)
        {
            return Err(Error::AlreadyExists(format!(
                "snapshot {name:?} already exists for volume {} on node {}",
                s.source_volume,
                id.node.as_deref().unwrap_or("")
            )));
        }
    }
    let req = pb::CreateSnapshotRequest {
        pool: source.pool.clone(),
        source_volume: source.name.clone(),
        name: name.into(),
    };
    let s = match ctx.agents.client(node)?.create_snapshot(req).await {
        Ok(r) => r.into_inner().snapshot.unwrap_or_default(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            return Err(Error::NotFound(format!(
                "source volume {source} not found: {}",
                s.message()
            )))
        }
        Err(s) => return Err(agent_err(node)(s)),
    };
    Ok((SnapshotId::new(&source.pool, Some(node), name), s))
}

/// Deletes a snapshot; one that is gone is Ok.
pub async fn delete(ctx: &Ctx, id: &SnapshotId) -> Result<()> {
    let node = node_of(&id.node, "snapshot id")?;
    match ctx
        .agents
        .client(node)?
        .delete_snapshot(pb::SnapshotRef {
            pool: id.pool.clone(),
            name: id.name.clone(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(agent_err(node)(s)),
    }
}
