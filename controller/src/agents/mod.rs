//! The node agents the controller talks to: a typed client per node
//! ([`client`]), found statically, through DNS or from the node pods
//! ([`discovery`]), with each node's inventory cached briefly
//! ([`inventory`]). Agent answers arrive as the controller's own types
//! ([`model`]).

pub mod client;
pub mod discovery;
pub mod inventory;
pub mod model;
pub mod tls;

use crate::{
    error::{Error, Result},
    join::join_all,
};
use client::AgentClient;
use inventory::{InventoryCache, NodeInventory};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};
use tonic::transport::ClientTlsConfig;

pub struct Agents {
    /// node → client. Static from `--agent`, or kept current by discovery.
    clients: RwLock<BTreeMap<String, AgentClient>>,
    /// The address each discovered client was made for.
    addrs: RwLock<BTreeMap<String, SocketAddr>>,
    inventories: InventoryCache,
    /// Mutual TLS towards the agents, when configured.
    tls: Option<ClientTlsConfig>,
    /// The node whose agent runs in this process, when that is the only one.
    here: Option<String>,
}

impl Agents {
    /// Agents from a static `node → address` map (host:port).
    pub fn new(map: &BTreeMap<String, String>, tls: Option<ClientTlsConfig>) -> Result<Self> {
        let mut clients = BTreeMap::new();
        for (node, addr) in map {
            let ep = client::endpoint(addr, tls.as_ref()).map_err(Error::Invalid)?;
            clients.insert(node.clone(), AgentClient::lazy(node, ep));
        }
        Ok(Self {
            clients: RwLock::new(clients),
            addrs: RwLock::default(),
            inventories: InventoryCache::default(),
            tls,
            here: None,
        })
    }

    /// The one agent of this process (see [`AgentClient::in_process`]):
    /// no discovery, no TLS.
    pub fn in_process(client: AgentClient) -> Self {
        let node = client.node().to_string();
        Self {
            clients: RwLock::new(BTreeMap::from([(node.clone(), client)])),
            addrs: RwLock::default(),
            inventories: InventoryCache::default(),
            tls: None,
            here: Some(node),
        }
    }

    /// The node whose agent this process runs, when it is the only agent
    /// known (a node plugin's own Controller service): what is not on it
    /// cannot be judged absent elsewhere.
    pub fn here(&self) -> Option<&str> {
        self.here.as_deref()
    }

    /// The TLS configuration new clients are made with.
    pub fn tls(&self) -> Option<&ClientTlsConfig> {
        self.tls.as_ref()
    }

    /// Remembers `client` as its node's agent at `addr`.
    pub fn add(&self, addr: SocketAddr, client: AgentClient) {
        let node = client.node().to_string();
        tracing::info!(%node, %addr, "agent discovered");
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), client);
        self.addrs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, addr);
    }

    /// Forgets `node`'s agent (and its cached inventory).
    pub fn forget(&self, node: &str) {
        tracing::info!(%node, "agent gone");
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.addrs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.inventories.forget(node);
    }

    /// The address each discovered agent was found at.
    pub fn addresses(&self) -> BTreeMap<String, SocketAddr> {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The nodes with a known agent, sorted.
    pub fn nodes(&self) -> Vec<String> {
        self.clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// A client for `node`; cheap (channels are shared).
    pub fn client(&self, node: &str) -> Result<AgentClient> {
        self.clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
            .ok_or_else(|| match &self.here {
                Some(here) => Error::NotHere {
                    what: format!("it lives on node {node:?}"),
                    here: here.clone(),
                },
                None => Error::UnknownNode { node: node.into() },
            })
    }

    /// The inventory of `node`, from cache when younger than `max_age`.
    pub async fn inventory(&self, node: &str, max_age: Duration) -> Result<Arc<NodeInventory>> {
        if let Some(inv) = self.inventories.fresh(node, max_age) {
            return Ok(inv);
        }
        let got = self.client(node)?.inventory(false).await?;
        let inv = Arc::new(NodeInventory {
            node: node.into(),
            starting: got.starting,
            pools: got.pools,
        });
        self.inventories.put(inv.clone());
        Ok(inv)
    }

    /// Every reachable node's inventory; unreachable nodes are logged and
    /// reported in the second value.
    pub async fn all_inventories(
        &self,
        max_age: Duration,
    ) -> (Vec<Arc<NodeInventory>>, Vec<String>) {
        let futs = self.nodes().into_iter().map(|n| async move {
            let r = self.inventory(&n, max_age).await;
            (n, r)
        });
        let mut ok = Vec::new();
        let mut failed = Vec::new();
        for (node, r) in join_all(futs).await {
            match r {
                Ok(inv) => ok.push(inv),
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "agent unreachable");
                    failed.push(node);
                }
            }
        }
        (ok, failed)
    }

    /// Sets `ready` once any agent answers an inventory call, asking every
    /// known agent once a second until one does (agents found later by
    /// discovery count). Readiness stays once reached: a later outage
    /// makes calls UNAVAILABLE, which the CO retries, rather than failing
    /// the liveness probe and restarting a controller that cannot help.
    pub async fn mark_ready_when_one_answers(
        self: Arc<Self>,
        ready: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let mut waited = Duration::ZERO;
        loop {
            let (answered, _) = self.all_inventories(Duration::from_secs(1)).await;
            if !answered.is_empty() {
                ready.store(true, std::sync::atomic::Ordering::Release);
                tracing::info!(agents = answered.len(), "ready: an agent answers");
                return;
            }
            if waited.as_secs().is_multiple_of(30) {
                tracing::warn!(known = self.nodes().len(), waited = ?waited, "not ready: no node agent answers yet");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            waited += Duration::from_secs(1);
        }
    }
}
