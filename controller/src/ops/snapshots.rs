//! CreateSnapshot, DeleteSnapshot, ListSnapshots.

use super::{found, node_of, unless_gone};
use crate::{
    agents::model::SnapshotReport,
    error::{Error, Result},
    join::join_all,
    Ctx,
};
use pool_csi_common::{SnapshotId, VolumeId};

/// Every snapshot on every node, keyed and sorted by snapshot id.
pub async fn list(ctx: &Ctx) -> Result<Vec<(String, (SnapshotId, SnapshotReport))>> {
    let nodes = ctx.agents.nodes();
    let calls = nodes.iter().map(|node| async move {
        let snaps = ctx.agents.client(node)?.list_snapshots().await?;
        Ok::<_, Error>((node.clone(), snaps))
    });
    let mut out = Vec::new();
    for r in join_all(calls).await {
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
) -> Result<(SnapshotId, SnapshotReport)> {
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
    let made = ctx
        .agents
        .client(node)?
        .create_snapshot(&source.pool, &source.name, name)
        .await;
    let s = found(made, format_args!("source volume {source}"))?;
    Ok((SnapshotId::new(&source.pool, Some(node), name), s))
}

/// Deletes a snapshot; one that is gone is Ok.
pub async fn delete(ctx: &Ctx, id: &SnapshotId) -> Result<()> {
    let node = node_of(&id.node, "snapshot id")?;
    let r = ctx
        .agents
        .client(node)?
        .delete_snapshot(&id.pool, &id.name)
        .await;
    unless_gone(r).map(|_| ())
}
