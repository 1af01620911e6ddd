//! CreateSnapshot, DeleteSnapshot, ListSnapshots.

use super::{ask, found, unless_gone};
use crate::{
    agents::model::{SnapshotFilter, SnapshotReport},
    error::{Error, Result},
    join::join_all,
    Ctx,
};
use pool_csi_common::{SnapshotId, VolumeId};

/// What a ListSnapshots asks for: CSI's filters and a page.
#[derive(Debug, Default, Clone, Copy)]
pub struct Listing<'a> {
    /// Only this snapshot (an id; one that cannot be parsed matches none).
    pub snapshot_id: &'a str,
    /// Only snapshots of this volume (an id, likewise).
    pub source_volume_id: &'a str,
    /// The last snapshot id of the previous page (empty: from the first).
    pub token: &'a str,
    /// At most this many (0: all).
    pub max: i32,
}

/// One page of the snapshots `l` asks for, in snapshot-id order, and the
/// token of the next page (empty: this was the last). Only the nodes that
/// can hold them are asked (the node of the snapshot id or of the source
/// volume id), each for its next page only, so a page costs the page. An
/// unreachable node fails the listing (UNAVAILABLE).
pub async fn list_page(
    ctx: &Ctx,
    l: &Listing<'_>,
) -> Result<(Vec<(SnapshotId, SnapshotReport)>, String)> {
    let max = super::page_size(l.max)?;
    let filter = SnapshotFilter {
        after: l.token,
        max,
        ..Default::default()
    };
    let none = || Ok((Vec::new(), String::new()));
    if !l.snapshot_id.is_empty() {
        let Ok(id) = SnapshotId::parse(l.snapshot_id) else {
            return none();
        };
        // Both filters: the source volume must be the snapshot's own.
        let source = match l.source_volume_id {
            "" => None,
            v => match VolumeId::parse(v) {
                Ok(v) if v.pool == id.pool && (v.node.is_none() || v.node == id.node) => Some(v),
                _ => return none(),
            },
        };
        let f = SnapshotFilter {
            pool: &id.pool,
            name: &id.name,
            source_volume: source.as_ref().map_or("", |v| v.name.as_str()),
            ..filter
        };
        // A shared pool's snapshot (no node) is on every node of the pool;
        // only the id asked for answers (a node-local pool's snapshot of
        // that name has another id).
        let nodes = id
            .node
            .as_deref()
            .map_or_else(|| ctx.agents.nodes(), |n| known(ctx, n));
        let (mut found, next) = page_of(ctx, &nodes, &f).await?;
        found.retain(|(sid, _)| *sid == id);
        return Ok((found, next));
    }
    if !l.source_volume_id.is_empty() {
        let Ok(v) = VolumeId::parse(l.source_volume_id) else {
            return none();
        };
        let f = SnapshotFilter {
            pool: &v.pool,
            source_volume: &v.name,
            ..filter
        };
        // A shared pool's volume (no node) may have snapshots on any node.
        let nodes = v
            .node
            .as_deref()
            .map_or_else(|| ctx.agents.nodes(), |n| known(ctx, n));
        return page_of(ctx, &nodes, &f).await;
    }
    page_of(ctx, &ctx.agents.nodes(), &filter).await
}

/// `[node]` when an agent of that name is known; none otherwise (an id
/// naming a node that is not in the cluster names nothing).
fn known(ctx: &Ctx, node: &str) -> Vec<String> {
    match ctx.agents.client(node) {
        Ok(_) => vec![node.to_string()],
        Err(_) => Vec::new(),
    }
}

/// The page of `f` across `nodes`.
async fn page_of(
    ctx: &Ctx,
    nodes: &[String],
    f: &SnapshotFilter<'_>,
) -> Result<(Vec<(SnapshotId, SnapshotReport)>, String)> {
    let calls = nodes.iter().map(|node| async move {
        let (found, more) = ctx.agents.client(node)?.list_snapshots(f).await?;
        // An older agent (a rolling upgrade) ignores the name filter.
        let found = found.into_iter().filter(|s| f.admits(s));
        let keyed = found.map(|s| keyed(node, s));
        Ok::<_, Error>((keyed.collect(), more))
    });
    let pages = join_all(calls)
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    Ok(super::merge_pages(pages, f.after, f.max))
}

/// A node's snapshot under its id (a shared pool's names no node, so each
/// of its nodes reports it under the same id and the merge keeps one).
fn keyed(node: &str, s: SnapshotReport) -> (String, (SnapshotId, SnapshotReport)) {
    let id = SnapshotId::new(&s.pool, (!s.shared).then_some(node), &s.name);
    (id.to_string(), (id, s))
}

/// The snapshot `id`; NotFound when it does not exist.
pub async fn get(ctx: &Ctx, id: &str) -> Result<(SnapshotId, SnapshotReport)> {
    let listing = Listing {
        snapshot_id: id,
        ..Default::default()
    };
    let (found, _) = list_page(ctx, &listing).await?;
    found
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotFound(format!("snapshot {id} not found")))
}

/// Snapshots `source` as `name`. A snapshot of that name from another volume
/// anywhere is ALREADY_EXISTS (snapshot names are cluster-wide in CSI).
pub async fn create(
    ctx: &Ctx,
    source: &VolumeId,
    name: &str,
) -> Result<(SnapshotId, SnapshotReport)> {
    // Each node reads one record per pool for this name, not its listing.
    let nodes = ctx.agents.nodes();
    let by_name = SnapshotFilter {
        name,
        ..Default::default()
    };
    for (id, s) in page_of(ctx, &nodes, &by_name).await?.0 {
        if id.pool != source.pool || id.node != source.node || s.source_volume != source.name {
            return Err(Error::AlreadyExists(format!(
                "snapshot {name:?} already exists for volume {} on node {}",
                s.source_volume,
                id.node.as_deref().unwrap_or("")
            )));
        }
    }
    // Its node, or for a shared pool's volume any node serving the pool
    // (the one it is published on first: its image is copied there).
    let holder = super::volumes::published_on(ctx, source).await;
    let made = ask(ctx, source, holder.as_deref(), |c| async move {
        c.create_snapshot(&source.pool, &source.name, name).await
    })
    .await?;
    let s = found(made, format_args!("source volume {source}"))?;
    Ok((
        SnapshotId::new(&source.pool, source.node.as_deref(), name),
        s,
    ))
}

/// Deletes a snapshot; one that is gone is Ok.
pub async fn delete(ctx: &Ctx, id: &SnapshotId) -> Result<()> {
    let volume = VolumeId::new(&id.pool, id.node.as_deref(), &id.name);
    // A shared snapshot kept inside its volume (ploop) is dropped where
    // the volume is published.
    let holder = match id.node {
        Some(_) => None,
        None => match get(ctx, &id.to_string()).await {
            Ok((_, s)) => {
                let source = VolumeId::new(&id.pool, None, &s.source_volume);
                super::volumes::published_on(ctx, &source).await
            }
            Err(_) => None,
        },
    };
    let r = match ask(ctx, &volume, holder.as_deref(), |c| async move {
        c.delete_snapshot(&id.pool, &id.name).await
    })
    .await
    {
        // No node defines the pool any more: nothing holds the snapshot.
        Err(Error::NotFound(_)) => return Ok(()),
        r => r?,
    };
    unless_gone(r).map(|_| ())
}
