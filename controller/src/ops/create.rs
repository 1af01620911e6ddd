//! CreateVolume: pick the node, ask its agent, report the volume.

use crate::{
    agents::{
        inventory::{NodeInventory, INVENTORY_TTL},
        model::{NewContent, NewVolume},
    },
    error::{Error, Result},
    placement::{self, NodeTopology},
    Ctx,
};
use pool_csi_common::{SnapshotId, VolumeId, VolumeParams};
use std::{sync::Arc, time::Duration};

/// The content a new volume starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Empty,
    Volume(VolumeId),
    Snapshot(SnapshotId),
}

/// A validated CreateVolume.
#[derive(Debug, Clone)]
pub struct CreateVolume {
    /// The storage name (from the CSI name).
    pub name: String,
    pub required: u64,
    pub limit: u64,
    pub params: VolumeParams,
    pub content: Content,
    pub topology: NodeTopology,
    /// A MULTI_NODE access mode was asked for: only a shared pool serves it.
    pub multi_node: bool,
}

/// The volume that now exists.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: VolumeId,
    pub capacity: u64,
    /// The nodes that reach it.
    pub reach: Vec<String>,
}

/// Makes the volume on the first candidate node that takes it. A refusal
/// that may come from a stale view (no node runs the pool, none has room) is
/// never the answer before the agents were asked afresh: the second look
/// tries the nodes the first did not.
pub async fn create(ctx: &Ctx, req: &CreateVolume) -> Result<Created> {
    let mut tried = Vec::new();
    let mut refusals = Vec::new();
    for max_age in [INVENTORY_TTL, Duration::ZERO] {
        let (inventories, unreachable) = ctx.agents.all_inventories(max_age).await;
        let view = View {
            inventories: &inventories,
            unreachable: &unreachable,
        };
        match attempt(ctx, req, &view, &mut tried, &mut refusals).await {
            Err(e) if max_age != Duration::ZERO && may_be_stale(&e) => continue,
            r => return r,
        }
    }
    unreachable!("the second look always answers")
}

/// What the agents reported, and who did not answer.
struct View<'a> {
    inventories: &'a [Arc<NodeInventory>],
    unreachable: &'a [String],
}

/// A refusal a fresher view could overturn.
fn may_be_stale(e: &Error) -> bool {
    matches!(
        e,
        Error::NoPool { .. } | Error::NoCapacity { .. } | Error::Starting { .. }
    )
}

/// One try with one view of the nodes; nodes in `tried` are not asked again.
async fn attempt(
    ctx: &Ctx,
    req: &CreateVolume,
    view: &View<'_>,
    tried: &mut Vec<String>,
    refusals: &mut Vec<String>,
) -> Result<Created> {
    let pool = &req.params.pool;
    let inventories = view.inventories;
    let starting: Vec<&str> = inventories
        .iter()
        .filter(|i| i.is_starting(pool))
        .map(|i| i.node.as_str())
        .collect();
    let Some(pool_type) = inventories
        .iter()
        .find_map(|inv| inv.pool(pool))
        .map(|p| p.pool_type)
    else {
        if !starting.is_empty() {
            return Err(Error::Starting {
                pool: pool.clone(),
                nodes: starting.join(", "),
            });
        }
        if let Some(here) = ctx.agents.here() {
            // The scheduler tries another node on RESOURCE_EXHAUSTED.
            return Err(Error::NoCapacity {
                pool: pool.clone(),
                needed: req.required,
                why: format!("node {here} does not define the pool"),
            });
        }
        return Err(Error::NoPool {
            pool: pool.clone(),
            reachable: view.unreachable.is_empty(),
        });
    };
    req.params.check_for(pool_type)?;
    if let Some(here) = ctx.agents.here() {
        // Whether a LUN went to another volume, or which nodes reach a
        // shared volume, only a view of every node tells.
        let shared = inventories
            .iter()
            .any(|i| i.pool(pool).is_some_and(|p| p.shared));
        if shared || pool_type.is_lun_pool() {
            return Err(Error::Precondition(format!(
                "{pool_type} pool {pool:?} {}: its dynamic volumes are made by pool-csi-controller (chart: provisioning: controller); node {here}'s own Controller service (provisioning: node) makes volumes of node-local pools only (dir, fs, logical, disk)",
                if shared { "is shared by several nodes" } else { "hands out LUNs" }
            )));
        }
    }
    if req.multi_node
        && !inventories
            .iter()
            .any(|i| i.pool(pool).is_some_and(|p| p.shared))
    {
        return Err(Error::Invalid(format!(
            "MULTI_NODE access modes need a pool every node reaches: {pool_type} pool {pool:?} keeps each volume on one node; use a netfs pool with volumeFormat=directory"
        )));
    }

    // A copy stays on the node (and pool) of its source.
    let (nodes, source) = match &req.content {
        Content::Empty => {
            let with_pool: Vec<String> = inventories
                .iter()
                .filter(|i| i.running_pool(pool).is_some())
                .map(|i| i.node.clone())
                .collect();
            let on_own: Vec<&str> = inventories
                .iter()
                .filter(|i| i.pool(pool).is_some_and(|p| !p.shared))
                .map(|i| i.node.as_str())
                .collect();
            let defined_on = super::nodes_defining(inventories, pool).len();
            if pool_type.is_lun_pool() && defined_on > 1 && !on_own.is_empty() {
                // A node recording hand-outs on its own could give a LUN
                // another node gave out.
                return Err(Error::Precondition(format!(
                    "{pool_type} pool {pool:?} is defined on {defined_on} nodes, and {} record LUN hand-outs on their own; dynamic volumes need every node of the pool to record them in the cluster (node plugins with --pools-from-cluster) or the pool on exactly one node (a nodeSelector). Static PersistentVolumes work either way",
                    on_own.join(", ")
                )));
            }
            if with_pool.is_empty() {
                if !starting.is_empty() {
                    return Err(Error::Starting {
                        pool: pool.clone(),
                        nodes: starting.join(", "),
                    });
                }
                return Err(Error::NoCapacity {
                    pool: pool.clone(),
                    needed: req.required,
                    why: format!(
                        "the pool is not running on any node ({})",
                        not_running(inventories, pool)
                    ),
                });
            }
            (
                placement::candidates(&req.name, &with_pool, &req.topology),
                NewContent::Empty,
            )
        }
        Content::Volume(v) => {
            let mut nodes = source_nodes(&v.pool, &v.node, pool, req, inventories)?;
            // A shared image volume is copied where it is published.
            let holder = super::volumes::published_on(ctx, v).await;
            nodes.sort_by_key(|n| Some(n) != holder.as_ref());
            (nodes, NewContent::Volume(v.name.clone()))
        }
        Content::Snapshot(s) => {
            let mut nodes = source_nodes(&s.pool, &s.node, pool, req, inventories)?;
            if s.node.is_none() {
                // A snapshot kept inside its volume is read where that is published.
                if let Ok((_, snap)) = super::snapshots::get(ctx, &s.to_string()).await {
                    let source = VolumeId::new(&s.pool, None, &snap.source_volume);
                    let holder = super::volumes::published_on(ctx, &source).await;
                    nodes.sort_by_key(|n| Some(n) != holder.as_ref());
                }
            }
            (nodes, NewContent::Snapshot(s.name.clone()))
        }
    };
    if nodes.is_empty() {
        return Err(Error::NoCapacity {
            pool: pool.clone(),
            needed: req.required,
            why: "no node with the pool satisfies the topology requirement".into(),
        });
    }
    let new = NewVolume {
        pool: pool.clone(),
        name: req.name.clone(),
        required: req.required,
        limit: req.limit,
        format: req.params.format,
        allocation: req.params.allocation,
        wipe_on_delete: req.params.wipe_on_delete,
        on_delete: req.params.on_delete.unwrap_or_default(),
        partition_type: req.params.partition_type.clone(),
        stripes: req
            .params
            .stripes
            .map(|n| (n, req.params.stripe_size.unwrap_or(0))),
        content: source,
    };
    let copying = new.content != NewContent::Empty;
    let untried: Vec<&String> = nodes
        .iter()
        .filter(|n| copying || !tried.contains(n))
        .collect();
    for node in untried {
        tried.push(node.clone());
        match ctx.agents.client(node)?.create_volume(&new).await {
            Ok(v) => {
                // The pool may store the volume under a shorter name (GPT labels).
                let name = if v.name.is_empty() {
                    req.name.as_str()
                } else {
                    v.name.as_str()
                };
                let id = VolumeId::new(pool, (!v.shared).then_some(node.as_str()), name);
                // A shared volume's reach becomes its PV's node affinity,
                // which never changes: from the nodes as they are now, not
                // a view up to INVENTORY_TTL old (a node that just started
                // the pool would be left out for good).
                let reach = if v.shared {
                    let (now, _) = ctx.agents.all_inventories(Duration::ZERO).await;
                    super::reach_in(&now, &id)
                } else {
                    super::reach_in(inventories, &id)
                };
                return Ok(Created {
                    id,
                    capacity: v.capacity,
                    reach,
                });
            }
            // Out of room (or unreachable) here: the next node may do.
            Err(e) if (e.is_out_of_room() || e.is_unavailable()) && !copying => {
                refusals.push(format!("{node}: {}", e.message));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::NoCapacity {
        pool: pool.clone(),
        needed: req.required,
        why: refusals.join("; "),
    })
}

/// Why `pool` runs nowhere, node by node.
fn not_running(inventories: &[Arc<NodeInventory>], pool: &str) -> String {
    inventories
        .iter()
        .filter_map(|i| {
            i.pool(pool)
                .map(|p| format!("{}: {} ({})", i.node, p.state.as_str(), p.message))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The nodes that can copy a clone source, checked against the request:
/// its own node, or for a shared pool's source every node running the pool
/// (they all reach it).
fn source_nodes(
    src_pool: &str,
    src_node: &Option<String>,
    pool: &str,
    req: &CreateVolume,
    inventories: &[Arc<NodeInventory>],
) -> Result<Vec<String>> {
    if src_pool != pool {
        return Err(Error::Invalid(format!(
            "the content source is in pool {src_pool:?}; volumes are copied within one pool, and this StorageClass names {pool:?}"
        )));
    }
    let nodes: Vec<String> = match src_node {
        Some(node) => vec![node.clone()],
        None => inventories
            .iter()
            .filter(|i| i.running_pool(pool).is_some_and(|p| p.shared))
            .map(|i| i.node.clone())
            .collect(),
    };
    let allowed: Vec<String> = nodes
        .iter()
        .filter(|n| req.topology.allows(n))
        .cloned()
        .collect();
    if allowed.is_empty() {
        return Err(Error::NoCapacity {
            pool: pool.into(),
            needed: req.required,
            why: match src_node {
                Some(node) => {
                    format!("the content source is on node {node}, outside the requested topology")
                }
                None => {
                    format!("no node running shared pool {pool:?} is inside the requested topology")
                }
            },
        });
    }
    Ok(allowed)
}
