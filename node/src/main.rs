//! pool-csi-node: parse arguments, start the pools, serve CSI (unix socket,
//! for kubelet) and the agent API (TCP, for the controller).

use clap::Parser;
use pool_csi_common::{
    identity::{check_driver_name, IdentityService},
    metrics::{self, MetricsLayer, Registry},
    serve::{bind_private_uds, init_tracing, shutdown_signal, Endpoint, DRAIN_GRACE},
    tls::TlsFiles,
    PoolDefinition,
};
use pool_csi_controller::{
    agents::{client::AgentClient, Agents},
    csi::controller::ControllerService,
    Ctx as ControllerCtx,
};
use pool_csi_node::{
    agent::server::AgentService, cluster, csi::node::NodeService, exec::real::RealRunner,
    formats::ploop::host as ploop_host, mount::quiesce::Quiescer, pools::registry::PoolRegistry,
    Config, NodeCtx,
};
use pool_csi_proto::{
    agent::agent_server::AgentServer,
    csi::{
        controller_server::ControllerServer, identity_server::IdentityServer,
        node_server::NodeServer,
    },
};
use std::{
    ffi::OsString,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tonic::transport::Server;

/// The pool-csi node plugin and node agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// CSI endpoint for kubelet (unix:///path/csi.sock).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    csi_endpoint: String,
    /// Address the agent API listens on for the controller.
    #[arg(long, env = "AGENT_LISTEN", default_value = "0.0.0.0:7690")]
    agent_listen: SocketAddr,
    /// This node's name (the Kubernetes node name in a cluster).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// YAML file of StoragePool manifests for this node.
    #[arg(long, env = "POOLS_FILE", conflicts_with = "pools_from_cluster")]
    pools_file: Option<PathBuf>,
    /// Serve the StoragePool objects of the cluster whose nodeSelector
    /// matches this node's labels (in-cluster service account or
    /// KUBECONFIG); re-read every 30 s.
    #[arg(long, env = "POOLS_FROM_CLUSTER")]
    pools_from_cluster: bool,
    /// Namespace of the driver's own objects (with --pools-from-cluster: the
    /// ConfigMaps holding LUN pools' claims).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// CSI driver name.
    #[arg(long, env = "DRIVER_NAME", default_value = pool_csi_common::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// Directory for runtime state (image exports, pid files).
    #[arg(long, env = "STATE_DIR", default_value = "/var/lib/pool-csi")]
    state_dir: PathBuf,
    /// Root of sysfs.
    #[arg(long, env = "SYSFS_ROOT", default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Where pool Secrets are mounted: `<dir>/<secretRef>/password` (iSCSI CHAP).
    #[arg(long, env = "SECRETS_DIR", default_value = "/etc/pool-csi/secrets")]
    secrets_dir: PathBuf,
    /// The mount table to read.
    #[arg(long, env = "MOUNTINFO", default_value = "/proc/self/mountinfo")]
    mountinfo: PathBuf,
    /// kubelet's root directory: staging and target paths must lie under it.
    #[arg(long, env = "KUBELET_DIR", default_value = pool_csi_node::config::DEFAULT_KUBELET_DIR)]
    kubelet_dir: PathBuf,
    /// Comma-separated prefix for every storage command, e.g. nsenter,--mount=/proc/1/ns/mnt,--
    #[arg(long, env = "COMMAND_PREFIX", value_delimiter = ',')]
    command_prefix: Vec<OsString>,
    /// Attach raw files without direct I/O (for backing filesystems without O_DIRECT).
    #[arg(long, env = "NO_LOOP_DIRECT_IO")]
    no_loop_direct_io: bool,
    /// Volumes this node may hold, reported to the scheduler (0: no limit).
    #[arg(long, env = "MAX_VOLUMES_PER_NODE", default_value_t = 0)]
    max_volumes_per_node: i64,
    /// PEM certificate the agent API presents (mutual TLS; with --agent-tls-key and --agent-tls-ca).
    #[arg(long, env = "AGENT_TLS_CERT")]
    agent_tls_cert: Option<PathBuf>,
    /// PEM private key of --agent-tls-cert.
    #[arg(long, env = "AGENT_TLS_KEY")]
    agent_tls_key: Option<PathBuf>,
    /// PEM CA that signs the controller's client certificates.
    #[arg(long, env = "AGENT_TLS_CA")]
    agent_tls_ca: Option<PathBuf>,
    /// Address for Prometheus metrics (GET /metrics); off when unset.
    #[arg(long, env = "METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Also serve the CSI Controller service on the CSI socket, for this
    /// node's own pools: for distributed provisioning (external-provisioner
    /// with --node-deployment beside each node plugin), where a volume is
    /// made by the node it is for, with no hop through pool-csi-controller.
    #[arg(long, env = "CONTROLLER_SERVICE")]
    controller_service: bool,
    /// With --controller-service: the pool used when a StorageClass names none.
    #[arg(long, env = "DEFAULT_POOL", requires = "controller_service")]
    default_pool: Option<String>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "LOG_FILTER", default_value = "info")]
    log_filter: String,
    /// Log one JSON object per line.
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

impl Args {
    fn into_config(self) -> (Config, Option<PathBuf>, String, SocketAddr) {
        let Args {
            csi_endpoint,
            agent_listen,
            node_name,
            pools_file,
            pools_from_cluster: _,
            namespace: _,
            driver_name,
            state_dir,
            sysfs_root,
            secrets_dir,
            mountinfo,
            kubelet_dir,
            command_prefix,
            no_loop_direct_io,
            max_volumes_per_node,
            metrics_listen: _,
            controller_service: _,
            default_pool: _,
            agent_tls_cert: _,
            agent_tls_key: _,
            agent_tls_ca: _,
            log_filter: _,
            log_json: _,
        } = self;
        let cfg = Config {
            driver_name,
            node_name,
            state_dir,
            sysfs_root,
            secrets_dir,
            mountinfo,
            kubelet_dir,
            command_prefix,
            loop_direct_io: !no_loop_direct_io,
            max_volumes_per_node,
            ploop: Default::default(),
            cluster: None,
        };
        (cfg, pools_file, csi_endpoint, agent_listen)
    }
}

/// StoragePool objects are re-read this often (with --pools-from-cluster).
const POOLS_SYNC_INTERVAL: Duration = Duration::from_secs(30);

// One thread: a request crosses no thread boundary, which measured ~30%
// faster per call than two workers. The rule that comes with it: nothing on
// this thread may block for long. Storage commands are child processes
// awaited asynchronously; copies, wipes and anything that can hang on a
// network filesystem go through spawn_blocking.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(run());
    // A call still waiting on a share that does not answer must not keep
    // the node from exiting (its thread cannot be stopped).
    rt.shutdown_timeout(Duration::from_secs(5));
    done
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    init_tracing(&args.log_filter, args.log_json);
    let metrics_listen = args.metrics_listen;
    let controller_service = args.controller_service;
    let default_pool = args.default_pool.clone();
    if let Some(p) = &default_pool {
        pool_csi_common::pool_spec::check_pool_name(p)
            .map_err(|w| format!("--default-pool {p:?} {w}"))?;
    }
    let cluster = match args.pools_from_cluster {
        true => Some(kube::Client::try_default().await.map_err(|e| {
            format!("--pools-from-cluster: no Kubernetes API access (in-cluster service account or KUBECONFIG): {e}")
        })?),
        false => None,
    };
    let tls = TlsFiles::from_flags(
        args.agent_tls_cert.clone(),
        args.agent_tls_key.clone(),
        args.agent_tls_ca.clone(),
    )?;
    let namespace = args.namespace.clone();
    let (mut cfg, pools_file, csi_endpoint, agent_listen) = args.into_config();
    cfg.cluster = cluster
        .clone()
        .map(|client| pool_csi_node::config::ClusterAccess { client, namespace });
    check_driver_name(&cfg.driver_name)?;
    pool_csi_common::volume_id::check_node_name(&cfg.node_name)
        .map_err(|w| format!("--node-name {:?} {w}", cfg.node_name))?;
    let Endpoint::Unix(csi_path) = csi_endpoint.parse()? else {
        return Err("--csi-endpoint must be a unix:// socket".into());
    };
    let defs = match &pools_file {
        Some(p) => PoolDefinition::load_file(p).map_err(|e| pool_csi_common::full_message(&e))?,
        None if cluster.is_some() => Vec::new(),
        None => {
            tracing::warn!("no --pools-file: this node serves no pools");
            Vec::new()
        }
    };
    let runner = Arc::new(RealRunner::new(cfg.command_prefix.clone()));
    // A crash mid-snapshot must not leave a filesystem frozen.
    Quiescer::new(&cfg).recover().await;
    cfg.ploop = ploop_host::probe(
        runner.as_ref(),
        &cfg.sysfs_root,
        &cfg.state_dir.join(".ploop-probe"),
    )
    .await;
    match &cfg.ploop.why_not {
        None => tracing::info!(
            module = cfg.ploop.module,
            "the ploop tool works: ploop volumes are made with ploop init{}",
            if cfg.ploop.mounts() {
                ", attached with ploop mount, grown with ploop resize"
            } else {
                ""
            }
        ),
        Some(why) => {
            tracing::info!(reason = %why, "the ploop tool is not used: ploop volumes are written, grown and attached by pool-csi itself")
        }
    }
    // In a cluster the definitions come with the first sync: until then
    // no pool is known to be absent.
    let pools = match &cluster {
        Some(_) => PoolRegistry::default(),
        None => PoolRegistry::new(&defs, &cfg, runner.clone()),
    };
    let ready = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(NodeCtx {
        cfg,
        runner,
        pools,
        locks: Default::default(),
        ready: ready.clone(),
        held: Default::default(),
    });
    tracing::info!(node = %ctx.cfg.node_name, pools = defs.len(), csi = %csi_path.display(), agent = %agent_listen, "starting pool-csi-node");

    let starter = ctx.clone();
    tokio::spawn(async move {
        match &cluster {
            Some(client) => {
                loop {
                    match cluster::sync_once(&starter, client).await {
                        Ok(n) => {
                            tracing::info!(
                                pools = n,
                                "StoragePools for this node read from the cluster"
                            );
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reading StoragePools failed; retrying in 5 s");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                }
                tokio::spawn(cluster::keep_syncing(
                    starter.clone(),
                    client.clone(),
                    POOLS_SYNC_INTERVAL,
                ));
            }
            None => starter.pools.start_all().await,
        }
        starter.ready.store(true, Ordering::Release);
        tracing::info!("pools started; ready");
        pool_csi_node::pools::registry::keep_restarting(&starter.pools).await
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };

    let registry = Registry::new("node");
    if let Some(addr) = metrics_listen {
        let gauges = ctx.clone();
        let extra: metrics::Extra = Arc::new(move || {
            let ctx = gauges.clone();
            Box::pin(async move {
                let mut m = pool_csi_node::pools::registry::render_metrics(&ctx.pools).await;
                m.push_str(&pool_csi_node::steps::render());
                m.push_str(&pool_csi_node::tools::lvm::render_metrics());
                m
            })
        });
        let reg = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, reg, Some(extra)).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let identity = IdentityService::new(&ctx.cfg.driver_name, controller_service, ready.clone());
    // The agent API offers no Controller service, whatever the CSI socket does.
    let agent_identity = IdentityService::new(&ctx.cfg.driver_name, false, ready);
    // One agent service: the agent API serves it, and the Controller
    // service of --controller-service calls it in process.
    let agent = Arc::new(AgentService::new(ctx.clone()));
    let controller = controller_service.then(|| {
        let client = AgentClient::in_process(&ctx.cfg.node_name, agent.clone());
        ControllerServer::new(ControllerService::new(Arc::new(ControllerCtx {
            driver_name: ctx.cfg.driver_name.clone(),
            default_pool,
            agents: Arc::new(Agents::in_process(client)),
            locks: Default::default(),
        })))
    });
    let csi = Server::builder()
        .layer(MetricsLayer(registry.clone()))
        .add_service(IdentityServer::new(identity))
        .add_service(NodeServer::new(NodeService::new(ctx.clone())))
        .add_optional_service(controller)
        .serve_with_incoming_shutdown(bind_private_uds(&csi_path)?, stopped(stop_rx.clone()));
    let mut agent_server = Server::builder();
    match &tls {
        Some(t) => agent_server = agent_server.tls_config(t.server()?)?,
        None => tracing::warn!(
            "the agent API runs without TLS: give --agent-tls-cert/-key/-ca in a cluster"
        ),
    }
    let agent = agent_server
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .layer(MetricsLayer(registry))
        .add_service(IdentityServer::new(agent_identity))
        .add_service(AgentServer::from_arc(agent))
        .serve_with_shutdown(agent_listen, stopped(stop_rx.clone()));
    // Drain open requests after a signal, but never wait on them for long.
    let drain_limit = async {
        stopped(stop_rx).await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::select! {
        r = async { tokio::try_join!(csi, agent) } => { r?; }
        _ = drain_limit => tracing::warn!("requests still open {DRAIN_GRACE:?} after shutdown; exiting"),
    }
    let _ = std::fs::remove_file(&csi_path);
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// docs/cli.md's flag list is this binary's: every flag documented, each
    /// settable from the environment variable docs/cli.md names.
    #[test]
    fn readme_documents_every_flag_and_its_variable() {
        use clap::CommandFactory;
        pool_csi_testkit::flags::assert_readme_documents(&super::Args::command(), "pool-csi-node");
    }
}
