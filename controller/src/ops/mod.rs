//! Controller use-cases. Each takes validated arguments and returns our own
//! types or errors; the CSI glue lives in `csi/`.

pub mod capacity;
pub mod create;
pub mod publish;
pub mod snapshots;
pub mod volumes;

use crate::{
    agents::{
        client::{AgentClient, AgentError},
        inventory::{NodeInventory, INVENTORY_TTL},
    },
    error::{Error, Result},
    Ctx,
};
use pool_csi_common::VolumeId;
use std::sync::Arc;

/// The node of a node-local volume or snapshot id.
pub fn node_of<'a>(node: &'a Option<String>, what: &str) -> Result<&'a str> {
    node.as_deref()
        .ok_or_else(|| Error::NotFound(format!("{what} names no node")))
}

/// `Ok(None)` when the agent says the thing is not there: deleting,
/// unpublishing or forgetting something already gone is done.
pub fn unless_gone<T>(r: std::result::Result<T, AgentError>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The agent's answer; NOT_FOUND becomes ours, naming `what` and why.
pub fn found<T>(r: std::result::Result<T, AgentError>, what: impl std::fmt::Display) -> Result<T> {
    match r {
        Err(e) if e.is_not_found() => {
            Err(Error::NotFound(format!("{what} not found: {}", e.message)))
        }
        r => Ok(r?),
    }
}

/// Asks the node that answers for volume `id`: its own for a node-local
/// pool; for a shared pool (the id names no node) the nodes serving the pool,
/// `prefer` first, moving on while one does not answer (UNAVAILABLE: a node
/// gone for good must not strand its volumes). Returns the last answer;
/// NotFound when no node defines the pool.
pub async fn ask<T, F, Fut>(
    ctx: &Ctx,
    id: &VolumeId,
    prefer: Option<&str>,
    mut call: F,
) -> Result<std::result::Result<T, AgentError>>
where
    F: FnMut(AgentClient) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, AgentError>>,
{
    let mut last = None;
    for node in serving_nodes(ctx, id, prefer).await? {
        match call(ctx.agents.client(&node)?).await {
            Err(e) if e.is_unavailable() => last = Some(Err(e)),
            r => return Ok(r),
        }
    }
    Ok(last.expect("serving_nodes never answers an empty list"))
}

/// The nodes that can answer for volume `id`, best first (see [`ask`]).
async fn serving_nodes(ctx: &Ctx, id: &VolumeId, prefer: Option<&str>) -> Result<Vec<String>> {
    if let Some(node) = &id.node {
        return Ok(vec![node.clone()]);
    }
    let (inventories, unreachable) = ctx.agents.all_inventories(INVENTORY_TTL).await;
    let mut serving: Vec<String> = inventories
        .iter()
        .filter(|i| i.running_pool(&id.pool).is_some_and(|p| p.shared))
        .map(|i| i.node.clone())
        .collect();
    if !serving.is_empty() {
        serving.sort_by_key(|n| Some(n.as_str()) != prefer);
        return Ok(serving);
    }
    let defined: Vec<String> = inventories
        .iter()
        .filter_map(|i| {
            i.pool(&id.pool).map(|p| match p.message.as_str() {
                "" => format!(
                    "{}: records its claims on its own, not in the cluster",
                    i.node
                ),
                why => format!("{}: {why}", i.node),
            })
        })
        .collect();
    if !defined.is_empty() {
        return Err(Error::Precondition(format!(
            "pool {:?} of volume {id} is not running on any of its nodes ({}); start it there and retry",
            id.pool,
            defined.join("; ")
        )));
    }
    if !unreachable.is_empty() {
        return Err(Error::NoPool {
            pool: id.pool.clone(),
            reachable: false,
        });
    }
    Err(Error::NotFound(format!(
        "volume {id}: no node defines pool {:?}",
        id.pool
    )))
}

/// The nodes that reach volume `id`: its node, or every node defining its
/// shared pool (as last reported).
pub async fn reach(ctx: &Ctx, id: &VolumeId) -> Vec<String> {
    let inventories = match id.node {
        Some(_) => Vec::new(), // not needed
        None => ctx.agents.all_inventories(INVENTORY_TTL).await.0,
    };
    reach_in(&inventories, id)
}

/// [`reach`] from inventories in hand (every node's, for a shared volume).
pub fn reach_in(inventories: &[Arc<NodeInventory>], id: &VolumeId) -> Vec<String> {
    match &id.node {
        Some(n) => vec![n.clone()],
        None => nodes_defining(inventories, &id.pool),
    }
}

/// The nodes whose inventory defines `pool`.
pub fn nodes_defining(inventories: &[Arc<NodeInventory>], pool: &str) -> Vec<String> {
    inventories
        .iter()
        .filter(|i| i.pool(pool).is_some())
        .map(|i| i.node.clone())
        .collect()
}

/// One page of `items` (sorted by key) after `token`, at most `max` (0: all).
/// The token is the key of the last item handed out, so a listing stays
/// correct while items are added or removed between pages.
pub fn paginate<T>(items: Vec<(String, T)>, max: i32, token: &str) -> Result<(Vec<T>, String)> {
    if max < 0 {
        return Err(Error::Invalid("max_entries must not be negative".into()));
    }
    let start = if token.is_empty() {
        0
    } else {
        items.partition_point(|(k, _)| k.as_str() <= token)
    };
    let max = if max == 0 { usize::MAX } else { max as usize };
    let total = items.len();
    let page: Vec<(String, T)> = items.into_iter().skip(start).take(max).collect();
    let next = if start + page.len() < total {
        page.last().map(|(k, _)| k.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok((page.into_iter().map(|(_, v)| v).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(keys: &[&str]) -> Vec<(String, String)> {
        keys.iter()
            .map(|k| (k.to_string(), k.to_string()))
            .collect()
    }

    #[test]
    fn pages_walk_the_whole_list() {
        let all = items(&["a", "b", "c", "d", "e"]);
        let (p1, t1) = paginate(all.clone(), 2, "").unwrap();
        assert_eq!((p1, t1.as_str()), (vec!["a".to_string(), "b".into()], "b"));
        let (p2, t2) = paginate(all.clone(), 2, &t1).unwrap();
        assert_eq!(p2, vec!["c".to_string(), "d".into()]);
        let (p3, t3) = paginate(all.clone(), 2, &t2).unwrap();
        assert_eq!((p3, t3.as_str()), (vec!["e".to_string()], ""));
        let (all_at_once, t) = paginate(all, 0, "").unwrap();
        assert_eq!((all_at_once.len(), t.as_str()), (5, ""));
    }

    #[test]
    fn removed_items_do_not_break_the_walk() {
        let (_, t) = paginate(items(&["a", "b", "c"]), 1, "").unwrap();
        let (p, _) = paginate(items(&["b2", "c"]), 1, &t).unwrap();
        assert_eq!(p, vec!["b2".to_string()]);
        assert!(paginate(items(&["a"]), -1, "").is_err());
    }
}
