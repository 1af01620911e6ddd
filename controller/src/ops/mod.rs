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

/// One page of the cluster from the nodes' pages (each in id order, with
/// whether more follow on that node): the entries after `token` in id
/// order, at most `max` (0: all), each id once (a shared pool's volumes
/// come from each of its nodes), and the token of the next page (empty:
/// this was the last). The token is the last id handed out, so a walk
/// stays correct while entries come and go between pages.
pub fn merge_pages<T>(
    pages: impl IntoIterator<Item = (Vec<(String, T)>, bool)>,
    token: &str,
    max: u32,
) -> (Vec<T>, String) {
    let mut merged = std::collections::BTreeMap::new();
    let mut more = false;
    for (entries, node_more) in pages {
        more |= node_more;
        for (key, v) in entries {
            // The agents' own cut is an optimisation: an older agent (a
            // rolling upgrade) answers from the first entry every time.
            if token.is_empty() || key.as_str() > token {
                merged.entry(key).or_insert(v);
            }
        }
    }
    let limit = if max == 0 { usize::MAX } else { max as usize };
    more |= merged.len() > limit;
    let page: Vec<(String, T)> = merged.into_iter().take(limit).collect();
    let next = match (more, page.last()) {
        (true, Some((key, _))) => key.clone(),
        _ => String::new(),
    };
    (page.into_iter().map(|(_, v)| v).collect(), next)
}

/// `max_entries` of a CSI listing.
pub fn page_size(max: i32) -> Result<u32> {
    u32::try_from(max).map_err(|_| Error::Invalid("max_entries must not be negative".into()))
}

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
pub(crate) async fn serving_nodes(
    ctx: &Ctx,
    id: &VolumeId,
    prefer: Option<&str>,
) -> Result<Vec<String>> {
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
    // A node that has not read its pools yet may define this one: "no
    // node defines it" cannot be told until it has.
    let starting: Vec<&str> = inventories
        .iter()
        .filter(|i| i.is_starting(&id.pool))
        .map(|i| i.node.as_str())
        .collect();
    if !starting.is_empty() {
        return Err(Error::Starting {
            pool: id.pool.clone(),
            nodes: starting.join(", "),
        });
    }
    if !unreachable.is_empty() {
        return Err(Error::NoPool {
            pool: id.pool.clone(),
            reachable: false,
        });
    }
    if let Some(here) = ctx.agents.here() {
        // Other nodes may hold the pool: never "gone" from here.
        return Err(Error::NotHere {
            what: format!("pool {:?} of volume {id} is not defined here", id.pool),
            here: here.into(),
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
/// Empty for a shared pool defined for every node of the cluster: the
/// volume needs no topology (a node that joins later reaches it too).
pub fn reach_in(inventories: &[Arc<NodeInventory>], id: &VolumeId) -> Vec<String> {
    match &id.node {
        Some(n) => vec![n.clone()],
        None if inventories
            .iter()
            .any(|i| i.pool(&id.pool).is_some_and(|p| p.every_node)) =>
        {
            Vec::new()
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn items(keys: &[&str]) -> Vec<(String, String)> {
        keys.iter()
            .map(|k| (k.to_string(), k.to_string()))
            .collect()
    }

    /// One node's whole list as its only page.
    fn paginate(all: Vec<(String, String)>, max: u32, token: &str) -> (Vec<String>, String) {
        merge_pages([(all, false)], token, max)
    }

    #[test]
    fn a_shared_volume_reaches_its_pool_s_nodes_or_every_node() {
        use crate::agents::model::PoolReport;
        use pool_csi_common::PoolType;
        let inv = |node: &str, every_node: bool| {
            let mut p = PoolReport::running("share", PoolType::Netfs);
            (p.shared, p.every_node) = (true, every_node);
            Arc::new(NodeInventory {
                node: node.into(),
                starting: false,
                pools: vec![p],
            })
        };
        let shared = VolumeId::new("share", None, "v");
        let selected = [inv("a", false), inv("b", false)];
        assert_eq!(reach_in(&selected, &shared), ["a", "b"]);
        // No nodeSelector in the cluster: no topology, so nodes that join
        // later reach the volume too.
        let everywhere = [inv("a", true), inv("b", true)];
        assert!(reach_in(&everywhere, &shared).is_empty());
        let local = VolumeId::new("share", Some("a"), "v");
        assert_eq!(reach_in(&everywhere, &local), ["a"]);
    }

    #[test]
    fn pages_walk_the_whole_list() {
        let all = items(&["a", "b", "c", "d", "e"]);
        let (p1, t1) = paginate(all.clone(), 2, "");
        assert_eq!((p1, t1.as_str()), (vec!["a".to_string(), "b".into()], "b"));
        let (p2, t2) = paginate(all.clone(), 2, &t1);
        assert_eq!(p2, vec!["c".to_string(), "d".into()]);
        let (p3, t3) = paginate(all.clone(), 2, &t2);
        assert_eq!((p3, t3.as_str()), (vec!["e".to_string()], ""));
        let (all_at_once, t) = paginate(all, 0, "");
        assert_eq!((all_at_once.len(), t.as_str()), (5, ""));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn removed_items_do_not_break_the_walk() {
        let (_, t) = paginate(items(&["a", "b", "c"]), 1, "");
        let (p, _) = paginate(items(&["b2", "c"]), 1, &t);
        assert_eq!(p, vec!["b2".to_string()]);
    }

    #[test]
    fn nodes_pages_merge_in_order_once_each_and_cut_at_the_token() {
        // node 1 has more after "d"; node 2 (an old agent) ignores the
        // token and answers from its first entry; "c" is a shared volume
        // both list.
        let n1 = (items(&["b", "c", "d"]), true);
        let n2 = (items(&["a", "c", "e"]), false);
        let (page, next) = merge_pages([n1, n2], "a", 3);
        assert_eq!(page, ["b", "c", "d"]);
        assert_eq!(next, "d");
        // Short pages from every node, none with more: the last page.
        let (page, next) = merge_pages([(items(&["x"]), false), (items(&["y"]), false)], "", 3);
        assert_eq!((page.len(), next.as_str()), (2, ""));
        // A node with more makes a next token even when the page is short.
        let (_, next) = merge_pages([(items(&["x"]), true)], "", 3);
        assert_eq!(next, "x");
    }
}
