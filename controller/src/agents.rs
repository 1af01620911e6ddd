//! Node agents: a gRPC channel per node and a short-lived cache of each
//! node's pool inventory (so CreateVolume needs no extra round trip).

use crate::error::{Error, Result};
use pool_csi_proto::agent::{agent_client::AgentClient, GetInventoryRequest, PoolInfo, PoolState};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Mutual-TLS flags for talking to agents (controller and poolctl).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM client certificate presented to the agents (with --agent-tls-key and --agent-tls-ca).
    #[arg(long, env = "AGENT_TLS_CERT")]
    pub agent_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --agent-tls-cert.
    #[arg(long, env = "AGENT_TLS_KEY")]
    pub agent_tls_key: Option<std::path::PathBuf>,
    /// PEM CA that signs the agents' certificates.
    #[arg(long, env = "AGENT_TLS_CA")]
    pub agent_tls_ca: Option<std::path::PathBuf>,
    /// The name the agents' certificates are issued for.
    #[arg(long, env = "AGENT_TLS_SERVER_NAME", default_value = pool_csi_proto::tls::DEFAULT_SERVER_NAME)]
    pub agent_tls_server_name: String,
}

impl TlsArgs {
    /// The client TLS configuration, or None for plain text.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, String> {
        let files = pool_csi_proto::tls::TlsFiles::from_flags(
            self.agent_tls_cert.clone(),
            self.agent_tls_key.clone(),
            self.agent_tls_ca.clone(),
        )
        .map_err(|e| e.to_string())?;
        files
            .map(|f| {
                f.client(&self.agent_tls_server_name)
                    .map_err(|e| pool_csi_proto::full_message(&e))
            })
            .transpose()
    }
}

/// How long an inventory answer is trusted.
pub const INVENTORY_TTL: Duration = Duration::from_secs(5);
/// Deadline for one agent call; storage work (copies, mkfs) can be slow.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One node's pools, as last reported.
#[derive(Debug, Clone)]
pub struct NodeInventory {
    pub node: String,
    pub pools: Vec<PoolInfo>,
}

impl NodeInventory {
    pub fn pool(&self, name: &str) -> Option<&PoolInfo> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn running_pool(&self, name: &str) -> Option<&PoolInfo> {
        self.pool(name)
            .filter(|p| p.state == PoolState::Running as i32)
    }
}

pub struct Agents {
    /// node → client. Static from `--agent`, or kept current from DNS.
    clients: RwLock<BTreeMap<String, AgentClient<Channel>>>,
    /// The address each discovered client was made for.
    addrs: RwLock<BTreeMap<String, SocketAddr>>,
    cache: Mutex<BTreeMap<String, (Instant, Arc<NodeInventory>)>>,
    /// Mutual TLS towards the agents, when configured.
    tls: Option<ClientTlsConfig>,
}

fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| Error::Invalid(format!("agent address {addr:?}: {e}")))?;
    if let Some(t) = tls {
        ep = ep
            .tls_config(t.clone())
            .map_err(|e| Error::Invalid(format!("agent TLS for {addr}: {e}")))?;
    }
    Ok(ep
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30)))
}

impl Agents {
    /// Agents from a static `node → address` map (host:port).
    pub fn new(map: &BTreeMap<String, String>, tls: Option<ClientTlsConfig>) -> Result<Self> {
        let mut clients = BTreeMap::new();
        for (node, addr) in map {
            clients.insert(
                node.clone(),
                AgentClient::new(endpoint(addr, tls.as_ref())?.connect_lazy()),
            );
        }
        Ok(Self {
            clients: RwLock::new(clients),
            addrs: RwLock::default(),
            cache: Mutex::default(),
            tls,
        })
    }

    /// Agents found through DNS: every address `service` (host:port, e.g. the
    /// node DaemonSet's headless Service) resolves to is asked for its node
    /// name. Addresses that disappear are forgotten; new ones are added.
    /// Returns how many agents are known afterwards.
    pub async fn discover(&self, service: &str) -> usize {
        let found: Vec<SocketAddr> = match tokio::net::lookup_host(service).await {
            Ok(it) => it.collect(),
            Err(e) => {
                tracing::warn!(%service, error = %e, "agent discovery: DNS lookup failed");
                return self.nodes().len();
            }
        };
        let known: BTreeMap<String, SocketAddr> =
            self.addrs.read().unwrap_or_else(|p| p.into_inner()).clone();
        for addr in found.iter().filter(|a| !known.values().any(|k| k == *a)) {
            let Ok(ep) = endpoint(&addr.to_string(), self.tls.as_ref()) else {
                continue;
            };
            let mut client = AgentClient::new(ep.connect_lazy());
            match client
                .get_inventory(GetInventoryRequest {
                    count_volumes: false,
                })
                .await
            {
                Ok(inv) => {
                    let node = inv.into_inner().node_name;
                    tracing::info!(%node, %addr, "agent discovered");
                    self.clients
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(node.clone(), client);
                    self.addrs
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(node, *addr);
                }
                Err(status) => {
                    tracing::warn!(%addr, error = %status.message(), "agent discovery: no answer")
                }
            }
        }
        for (node, addr) in known.iter().filter(|(_, a)| !found.contains(a)) {
            tracing::info!(%node, %addr, "agent gone");
            self.clients
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(node);
            self.addrs
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(node);
        }
        self.nodes().len()
    }

    /// Runs [`Self::discover`] now and then every `every`, forever.
    pub async fn keep_discovering(self: Arc<Self>, service: String, every: Duration) {
        loop {
            self.discover(&service).await;
            tokio::time::sleep(every).await;
        }
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
    pub fn client(&self, node: &str) -> Result<AgentClient<Channel>> {
        self.clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
            .ok_or_else(|| Error::UnknownNode { node: node.into() })
    }

    /// The inventory of `node`, from cache when fresh.
    pub async fn inventory(&self, node: &str, max_age: Duration) -> Result<Arc<NodeInventory>> {
        if let Some((at, inv)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
        {
            if at.elapsed() < max_age {
                return Ok(inv.clone());
            }
        }
        let resp = self
            .client(node)?
            .get_inventory(GetInventoryRequest {
                count_volumes: false,
            })
            .await
            .map_err(|status| Error::Agent {
                node: node.into(),
                status,
            })?
            .into_inner();
        let inv = Arc::new(NodeInventory {
            node: node.into(),
            pools: resp.pools,
        });
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.into(), (Instant::now(), inv.clone()));
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
        for (node, r) in futures_join_all(futs).await {
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
}

/// Runs futures concurrently (on this task) and collects their outputs in order.
pub async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
