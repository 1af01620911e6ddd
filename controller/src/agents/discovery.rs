//! Finding the node agents: through DNS (every address a Service name
//! resolves to is asked for its node name) or, in a cluster, from the node
//! DaemonSet's pods (nodeName → podIP). Both add new agents, re-point moved
//! ones and forget the ones that went away.

use super::{
    client::{endpoint, AgentClient},
    Agents,
};
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

/// Every address `service` (host:port, e.g. the node DaemonSet's headless
/// Service) resolves to is asked for its node name. Returns how many agents
/// are known afterwards and how many addresses did not answer (an agent
/// still starting).
pub async fn discover(agents: &Agents, service: &str) -> (usize, usize) {
    let found: Vec<SocketAddr> = match tokio::net::lookup_host(service).await {
        Ok(it) => it.collect(),
        Err(e) => {
            tracing::warn!(%service, error = %e, "agent discovery: DNS lookup failed");
            return (agents.nodes().len(), 0);
        }
    };
    let mut silent = 0;
    let known = agents.addresses();
    for addr in found.iter().filter(|a| !known.values().any(|k| k == *a)) {
        let Ok(ep) = endpoint(&addr.to_string(), agents.tls()) else {
            continue;
        };
        // The node name is not known yet: ask the agent for it.
        let probe = AgentClient::lazy("", ep.clone());
        match probe.inventory(false).await {
            Ok(inv) => agents.add(*addr, AgentClient::lazy(&inv.node_name, ep)),
            Err(e) => {
                silent += 1;
                tracing::warn!(%addr, error = %e.message, "agent discovery: no answer")
            }
        }
    }
    for (node, _) in known.iter().filter(|(_, a)| !found.contains(a)) {
        agents.forget(node);
    }
    (agents.nodes().len(), silent)
}

/// Every running pod matching `selector` in `namespace` is its node's agent
/// at `podIP:port`. Returns how many agents are known afterwards.
pub async fn discover_pods(
    agents: &Agents,
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    port: u16,
) -> Result<usize, kube::Error> {
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
    let known = agents.addresses();
    for (node, addr) in &found {
        if known.get(node) == Some(addr) {
            continue;
        }
        match endpoint(&addr.to_string(), agents.tls()) {
            Ok(ep) => agents.add(*addr, AgentClient::lazy(node, ep)),
            Err(e) => tracing::warn!(%node, %addr, error = %e, "agent discovery: bad address"),
        }
    }
    for node in known.keys().filter(|n| !found.contains_key(*n)) {
        agents.forget(node);
    }
    Ok(agents.nodes().len())
}

/// Runs [`discover_pods`] every `every`, forever, backing off (up to a
/// minute) while the API server does not answer.
pub async fn keep_discovering_pods(
    agents: Arc<Agents>,
    client: kube::Client,
    namespace: String,
    selector: String,
    port: u16,
    every: Duration,
) {
    let mut wait = every;
    loop {
        match discover_pods(&agents, &client, &namespace, &selector, port).await {
            Ok(_) => wait = every,
            Err(e) => {
                wait = (wait * 2).min(Duration::from_secs(60));
                tracing::warn!(error = %e, retry_in = ?wait, "agent discovery: listing the node pods failed");
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// Runs [`discover`] every `every`, forever; sooner (1 s) while an address
/// does not answer yet.
pub async fn keep_discovering(agents: Arc<Agents>, service: String, every: Duration) {
    loop {
        let (_, silent) = discover(&agents, &service).await;
        let wait = if silent > 0 {
            every.min(Duration::from_secs(1))
        } else {
            every
        };
        tokio::time::sleep(wait).await;
    }
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
        let n = discover_pods(&agents, &client, "kube-system", sel, 7690)
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(agents.nodes(), ["n1", "n2"]);
        let addr = |a: &Agents, n: &str| a.addresses().get(n).copied();
        assert_eq!(addr(&agents, "n1"), Some("10.0.0.1:7690".parse().unwrap()));

        // n2's pod is replaced (new IP), n1's pod goes, n3's starts.
        fake.remove("/api/v1/namespaces/kube-system/pods/node-a");
        pod(&fake, "node-b", "n2", "10.0.0.22", "Running", "node");
        pod(&fake, "node-c", "n3", "10.0.0.3", "Running", "node");
        discover_pods(&agents, &client, "kube-system", sel, 7690)
            .await
            .unwrap();
        assert_eq!(agents.nodes(), ["n2", "n3"]);
        assert_eq!(addr(&agents, "n2"), Some("10.0.0.22:7690".parse().unwrap()));
        let e = agents.client("n1").err().expect("n1 forgotten");
        assert!(
            matches!(e, crate::error::Error::UnknownNode { ref node } if node == "n1"),
            "{e}"
        );

        // The API server down: an error, and the known agents stay.
        fake.fail_next(503);
        assert!(discover_pods(&agents, &client, "kube-system", sel, 7690)
            .await
            .is_err());
        assert_eq!(agents.nodes(), ["n2", "n3"]);
    }
}
