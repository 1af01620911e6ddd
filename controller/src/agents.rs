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
    #[arg(long, env = "AGENT_TLS_SERVER_NAME", default_value = pool_csi_common::tls::DEFAULT_SERVER_NAME)]
    pub agent_tls_server_name: String,
}

impl TlsArgs {
    /// The client TLS configuration, or None for plain text.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, String> {
        let files = pool_csi_common::tls::TlsFiles::from_flags(
            self.agent_tls_cert.clone(),
            self.agent_tls_key.clone(),
            self.agent_tls_ca.clone(),
        )
        .map_err(|e| e.to_string())?;
        files
            .map(|f| {
                f.client(&self.agent_tls_server_name)
                    .map_err(|e| pool_csi_common::full_message(&e))
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

    /// Remembers `client` as `node`'s agent at `addr`.
    fn add(&self, node: &str, addr: SocketAddr, client: AgentClient<Channel>) {
        tracing::info!(%node, %addr, "agent discovered");
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), client);
        self.addrs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), addr);
    }

    /// Forgets `node`'s agent (and its cached inventory).
    fn forget(&self, node: &str) {
        tracing::info!(%node, "agent gone");
        self.clients
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.addrs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    /// Agents found through DNS: every address `service` (host:port, e.g. the
    /// node DaemonSet's headless Service) resolves to is asked for its node
    /// name. Addresses that disappear are forgotten; new ones are added.
    /// Returns how many agents are known afterwards and how many addresses
    /// did not answer (an agent still starting).
    pub async fn discover(&self, service: &str) -> (usize, usize) {
        let found: Vec<SocketAddr> = match tokio::net::lookup_host(service).await {
            Ok(it) => it.collect(),
            Err(e) => {
                tracing::warn!(%service, error = %e, "agent discovery: DNS lookup failed");
                return (self.nodes().len(), 0);
            }
        };
        let mut silent = 0;
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
                Ok(inv) => self.add(&inv.into_inner().node_name, *addr, client),
                Err(status) => {
                    silent += 1;
                    tracing::warn!(%addr, error = %status.message(), "agent discovery: no answer")
                }
            }
        }
        for (node, _) in known.iter().filter(|(_, a)| !found.contains(a)) {
            self.forget(node);
        }
        (self.nodes().len(), silent)
    }

    /// Agents found from the node DaemonSet's pods (in a cluster): every
    /// running pod matching `selector` in `namespace` is its node's agent at
    /// `podIP:port`. Pods that went away are forgotten, moved ones re-pointed.
    /// Returns how many agents are known afterwards.
    pub async fn discover_pods(
        &self,
        client: &kube::Client,
        namespace: &str,
        selector: &str,
        port: u16,
    ) -> std::result::Result<usize, kube::Error> {
        use k8s_openapi::api::core::v1::Pod;
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
        let pods = api
            .list(&kube::api::ListParams::default().labels(selector))
            .await?;
        let mut found = BTreeMap::new();
        for p in pods.items {
            let spec_node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let status = p.status.as_ref();
            let ip = status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok());
            let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
            if let (Some(node), Some(ip), true) = (spec_node, ip, running) {
                found.insert(node, SocketAddr::new(ip, port));
            }
        }
        let known = self.addrs.read().unwrap_or_else(|p| p.into_inner()).clone();
        for (node, addr) in &found {
            if known.get(node) == Some(addr) {
                continue;
            }
            match endpoint(&addr.to_string(), self.tls.as_ref()) {
                Ok(ep) => self.add(node, *addr, AgentClient::new(ep.connect_lazy())),
                Err(e) => tracing::warn!(%node, %addr, error = %e, "agent discovery: bad address"),
            }
        }
        for node in known.keys().filter(|n| !found.contains_key(*n)) {
            self.forget(node);
        }
        Ok(self.nodes().len())
    }

    /// Runs [`Self::discover_pods`] every `every`, forever, backing off
    /// (up to a minute) while the API server does not answer.
    pub async fn keep_discovering_pods(
        self: Arc<Self>,
        client: kube::Client,
        namespace: String,
        selector: String,
        port: u16,
        every: Duration,
    ) {
        let mut wait = every;
        loop {
            match self
                .discover_pods(&client, &namespace, &selector, port)
                .await
            {
                Ok(_) => wait = every,
                Err(e) => {
                    wait = (wait * 2).min(Duration::from_secs(60));
                    tracing::warn!(error = %e, retry_in = ?wait, "agent discovery: listing the node pods failed");
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs [`Self::discover`] every `every`, forever; sooner (1 s) while
    /// an address does not answer yet.
    pub async fn keep_discovering(self: Arc<Self>, service: String, every: Duration) {
        loop {
            let (_, silent) = self.discover(&service).await;
            let wait = if silent > 0 {
                every.min(Duration::from_secs(1))
            } else {
                every
            };
            tokio::time::sleep(wait).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_testkit::fake_api::FakeApi;
    use serde_json::json;

    fn pod(fake: &FakeApi, name: &str, node: &str, ip: &str, phase: &str, app: &str) {
        fake.insert(
            &format!("/api/v1/namespaces/kube-system/pods/{name}"),
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "kube-system", "labels": {"app.kubernetes.io/component": app}},
                   "spec": {"nodeName": node, "containers": []},
                   "status": {"phase": phase, "podIP": ip}}),
        );
    }

    #[tokio::test]
    async fn agents_follow_the_node_pods() {
        let fake = FakeApi::new();
        let client = fake.client();
        pod(&fake, "node-a", "n1", "10.0.0.1", "Running", "node");
        pod(&fake, "node-b", "n2", "10.0.0.2", "Running", "node");
        pod(&fake, "node-c", "n3", "10.0.0.3", "Pending", "node");
        pod(&fake, "ctrl", "n1", "10.0.0.9", "Running", "controller");
        let agents = Agents::new(&BTreeMap::new(), None).unwrap();
        let sel = "app.kubernetes.io/component=node";
        let n = agents
            .discover_pods(&client, "kube-system", sel, 7690)
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(agents.nodes(), ["n1", "n2"]);
        let addr = |a: &Agents, n: &str| a.addrs.read().unwrap().get(n).copied();
        assert_eq!(addr(&agents, "n1"), Some("10.0.0.1:7690".parse().unwrap()));

        // n2's pod is replaced (new IP), n1's pod goes, n3's starts.
        fake.remove("/api/v1/namespaces/kube-system/pods/node-a");
        pod(&fake, "node-b", "n2", "10.0.0.22", "Running", "node");
        pod(&fake, "node-c", "n3", "10.0.0.3", "Running", "node");
        agents
            .discover_pods(&client, "kube-system", sel, 7690)
            .await
            .unwrap();
        assert_eq!(agents.nodes(), ["n2", "n3"]);
        assert_eq!(addr(&agents, "n2"), Some("10.0.0.22:7690".parse().unwrap()));
        assert!(agents.client("n1").is_err());

        // The API server down: an error, and the known agents stay.
        fake.fail_next(503);
        assert!(agents
            .discover_pods(&client, "kube-system", sel, 7690)
            .await
            .is_err());
        assert_eq!(agents.nodes(), ["n2", "n3"]);
    }
}
