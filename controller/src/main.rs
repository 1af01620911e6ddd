//! pool-csi-controller: parse arguments, connect to the node agents, serve
//! CSI Identity + Controller on a unix socket for the sidecars.

use clap::Parser;
use pool_csi_common::{
    identity::{check_driver_name, IdentityService},
    metrics::{self, MetricsLayer, Registry},
    serve::{bind_private_uds, init_tracing, shutdown_signal, Endpoint, DRAIN_GRACE},
};
use pool_csi_controller::{
    agents::{discovery, Agents},
    csi::controller::ControllerService,
    leader::{
        election::{Elector, LeaderConfig},
        node_loss::NodeLoss,
        orphan_check::OrphanCheck,
        orphans,
        recycle::Recycler,
        round::Round,
        static_pvs::StaticPvs,
        status::StatusWriter,
    },
    Ctx,
};
use pool_csi_proto::csi::{controller_server::ControllerServer, identity_server::IdentityServer};
use std::{
    collections::BTreeMap,
    sync::{atomic::AtomicBool, Arc},
};
use tonic::transport::Server;

/// The pool-csi controller plugin.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// CSI endpoint for the sidecars (unix:///path/csi.sock).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    csi_endpoint: String,
    /// A node agent, NODE=HOST:PORT; repeat for every node.
    #[arg(
        long = "agent",
        env = "AGENTS",
        value_delimiter = ',',
        required_unless_present_any = ["agent_service", "agent_pod_selector"]
    )]
    agents: Vec<String>,
    /// Find agents through DNS: HOST:PORT whose addresses are the node agents
    /// (in a cluster, the node DaemonSet's headless Service). Re-resolved every 15 s.
    #[arg(long, env = "AGENT_SERVICE")]
    agent_service: Option<String>,
    /// In a cluster: find agents from the node plugin pods matching this
    /// label selector (needs --cluster), re-listed every 15 s.
    #[arg(long, env = "AGENT_POD_SELECTOR", requires = "cluster")]
    agent_pod_selector: Option<String>,
    /// The agent port on node plugin pods (with --agent-pod-selector).
    #[arg(long, env = "AGENT_PORT", default_value_t = 7690)]
    agent_port: u16,
    /// Talk to the Kubernetes API (in-cluster service account, or
    /// KUBECONFIG): leader election over a Lease, StoragePool status and
    /// Events from the leader.
    #[arg(long, env = "CLUSTER")]
    cluster: bool,
    /// Namespace of the Lease and of the node plugin pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// This replica's name in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// How often the leader refreshes StoragePool status, in seconds.
    #[arg(long, env = "STATUS_INTERVAL_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    status_interval_seconds: u64,
    /// How long a volume or snapshot with nothing in Kubernetes naming it
    /// (or a PV whose volume is gone) must stay so before the leader
    /// reports it as an orphan, in seconds.
    #[arg(long, env = "ORPHAN_GRACE_SECONDS", default_value_t = 900)]
    orphan_grace_seconds: u64,
    /// Name of the leader election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "pool-csi-controller")]
    lease_name: String,
    /// CSI driver name.
    #[arg(long, env = "DRIVER_NAME", default_value = pool_csi_common::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Pool used when a StorageClass names none.
    #[arg(long, env = "DEFAULT_POOL")]
    default_pool: Option<String>,
    #[command(flatten)]
    tls: pool_csi_controller::agents::tls::TlsArgs,
    /// Address for Prometheus metrics (GET /metrics); off when unset.
    #[arg(long, env = "METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "LOG_FILTER", default_value = "info")]
    log_filter: String,
    /// Log one JSON object per line.
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

/// How often the agent Service is resolved (or the node pods listed) again.
const DISCOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

fn agent_map(list: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for a in list {
        let (node, addr) = a
            .split_once('=')
            .ok_or_else(|| format!("--agent {a:?}: expected NODE=HOST:PORT"))?;
        pool_csi_common::volume_id::check_node_name(node)
            .map_err(|w| format!("--agent {a:?}: node {w}"))?;
        if map.insert(node.to_string(), addr.to_string()).is_some() {
            return Err(format!("--agent: node {node} given twice"));
        }
    }
    Ok(map)
}

// One thread: the controller only waits on agents; see the node's main.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        csi_endpoint,
        agents,
        agent_service,
        agent_pod_selector,
        agent_port,
        cluster,
        namespace,
        pod_name,
        lease_name,
        status_interval_seconds,
        orphan_grace_seconds,
        driver_name,
        default_pool,
        metrics_listen,
        tls,
        log_filter,
        log_json,
    } = Args::parse();
    init_tracing(&log_filter, log_json);
    check_driver_name(&driver_name)?;
    if let Some(p) = &default_pool {
        pool_csi_common::pool_spec::check_pool_name(p)
            .map_err(|w| format!("--default-pool {p:?} {w}"))?;
    }
    let Endpoint::Unix(path) = csi_endpoint.parse()? else {
        return Err("--csi-endpoint must be a unix:// socket".into());
    };
    let map = agent_map(&agents)?;
    let ctx = Arc::new(Ctx {
        driver_name: driver_name.clone(),
        default_pool,
        agents: Arc::new(Agents::new(&map, tls.client_config()?).map_err(|e| e.to_string())?),
        locks: Default::default(),
    });
    if let Some(service) = agent_service {
        let (found, _) = discovery::discover(&ctx.agents, &service).await;
        tracing::info!(%service, agents = found, "agents discovered through DNS");
        tokio::spawn(discovery::keep_discovering(
            ctx.agents.clone(),
            service,
            DISCOVERY_INTERVAL,
        ));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    let mut election = None;
    let mut orphan_gauges: Option<metrics::Extra> = None;
    if cluster {
        let client = kube::Client::try_default().await.map_err(|e| {
            format!("--cluster: no Kubernetes API access (in-cluster service account or KUBECONFIG): {e}")
        })?;
        if let Some(selector) = agent_pod_selector {
            match discovery::discover_pods(&ctx.agents, &client, &namespace, &selector, agent_port)
                .await
            {
                Ok(n) => {
                    tracing::info!(%selector, agents = n, "agents discovered from the node pods")
                }
                Err(e) => {
                    tracing::warn!(%selector, error = %e, "agent discovery: listing the node pods failed; retrying")
                }
            }
            tokio::spawn(discovery::keep_discovering_pods(
                ctx.agents.clone(),
                client.clone(),
                namespace.clone(),
                selector,
                agent_port,
                DISCOVERY_INTERVAL,
            ));
        }
        let identity = pod_name.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("pool-csi-controller-{}", std::process::id()))
        });
        let cfg = LeaderConfig::new(&namespace, &lease_name, &identity);
        let (leading, task) = Elector::new(client.clone(), cfg).spawn(stop_rx.clone());
        election = Some(task);
        let check = OrphanCheck::new(
            client.clone(),
            &namespace,
            &driver_name,
            std::time::Duration::from_secs(orphan_grace_seconds),
            &identity,
        );
        let latest = check.latest.clone();
        orphan_gauges = Some(Arc::new(move || {
            let text = orphans::gauges(&latest.lock().unwrap_or_else(|p| p.into_inner()));
            Box::pin(async move { text }) as _
        }));
        let round = Round {
            client: client.clone(),
            status: StatusWriter::new(client.clone(), &identity),
            static_pvs: Some(StaticPvs::new(client.clone(), &driver_name)),
            recycle: Some(Recycler::new(client.clone(), ctx.clone(), &identity)),
            orphans: Some(check),
            node_loss: Some(NodeLoss::new(client, ctx.clone(), &identity)),
        };
        tokio::spawn(round.run(
            ctx.agents.clone(),
            leading,
            std::time::Duration::from_secs(status_interval_seconds),
            stop_rx.clone(),
        ));
        tracing::info!(%identity, lease = %lease_name, %namespace, "cluster mode: leader election and StoragePool status");
    }
    tracing::info!(agents = ctx.agents.nodes().len(), csi = %path.display(), "starting pool-csi-controller");
    // Ready once a node agent answers: before that, every call would fail.
    let ready = Arc::new(AtomicBool::new(false));
    tokio::spawn(
        ctx.agents
            .clone()
            .mark_ready_when_one_answers(ready.clone()),
    );
    let identity = IdentityService::new(&driver_name, true, ready);
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let registry = Registry::new("controller");
    if let Some(addr) = metrics_listen {
        let reg = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, reg, orphan_gauges).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let serve = Server::builder()
        .layer(MetricsLayer(registry))
        .add_service(IdentityServer::new(identity))
        .add_service(ControllerServer::new(ControllerService::new(ctx)))
        .serve_with_incoming_shutdown(bind_private_uds(&path)?, stopped(stop_rx.clone()));
    // Drain open requests after a signal, but never wait on them for long.
    tokio::select! {
        r = serve => r?,
        _ = async { stopped(stop_rx).await; tokio::time::sleep(DRAIN_GRACE).await } => {
            tracing::warn!("requests still open {DRAIN_GRACE:?} after shutdown; exiting")
        }
    }
    let _ = std::fs::remove_file(&path);
    if let Some(task) = election {
        // Give the Lease up so a standby takes over at once.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/cli.md's flag list is this binary's: every flag documented, each
    /// settable from the environment variable docs/cli.md names.
    #[test]
    fn readme_documents_every_flag_and_its_variable() {
        use clap::CommandFactory;
        pool_csi_testkit::flags::assert_readme_documents(&Args::command(), "pool-csi-controller");
    }

    #[test]
    fn agent_map_parses_and_refuses_junk() {
        let m = agent_map(&["n1=127.0.0.1:7690".into(), "n2=10.0.0.2:7690".into()]).unwrap();
        assert_eq!(m["n2"], "10.0.0.2:7690");
        assert!(agent_map(&["n1".into()]).is_err());
        assert!(agent_map(&["N1=x:1".into()]).is_err());
        assert!(agent_map(&["a=x:1".into(), "a=y:2".into()]).is_err());
    }
}
