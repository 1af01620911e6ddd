//! The typed agent client: Rust types in and out, one [`AgentError`] that
//! reads the agent's gRPC code once. The only controller code that builds
//! or reads agent messages.

use super::model::{
    Expansion, Extent, Inventory, Lun, NewContent, NewVolume, PoolReport, PoolState,
    SnapshotFilter, SnapshotReport, VolumeReport,
};
use hyper_util::rt::TokioIo;
use pool_csi_common::{coalesce::CoalescedWrites, wire, GrpcCode};
use pool_csi_proto::agent::agent_server::Agent;
use pool_csi_proto::agent::{self as pb, agent_client, create_volume_request::Source};
use std::{sync::Arc, time::Duration};
use tonic::{
    transport::{Channel, ClientTlsConfig, Endpoint},
    Code, Status,
};

/// Deadline for one agent call; storage work (copies, mkfs) can be slow.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// An agent's refusal or a failure to reach it. Its gRPC code passes
/// through to the CO unchanged.
#[derive(Debug, thiserror::Error)]
#[error("node {node}: {message}")]
pub struct AgentError {
    pub node: String,
    code: Code,
    pub message: String,
}

impl AgentError {
    fn from_status(node: &str, s: tonic::Status) -> Self {
        Self {
            node: node.into(),
            code: s.code(),
            message: s.message().into(),
        }
    }

    /// The agent answered with something this controller cannot read.
    fn malformed(node: &str, why: impl std::fmt::Display) -> Self {
        Self {
            node: node.into(),
            code: Code::Internal,
            message: why.to_string(),
        }
    }

    /// The volume, snapshot or pool is not there (or not on that node).
    pub fn is_not_found(&self) -> bool {
        self.code == Code::NotFound
    }

    /// The node did not answer: another node of the pool may.
    pub fn is_unavailable(&self) -> bool {
        self.code == Code::Unavailable
    }

    /// The node has no room: the next candidate may.
    pub fn is_out_of_room(&self) -> bool {
        self.code == Code::ResourceExhausted
    }

    /// Another operation on the volume runs there: retry later.
    pub fn is_busy(&self) -> bool {
        self.code == Code::Aborted
    }
}

impl GrpcCode for AgentError {
    fn grpc_code(&self) -> Code {
        self.code
    }
}

type Result<T> = std::result::Result<T, AgentError>;

/// A connection to one node's agent; cheap to clone (channels are shared).
#[derive(Clone)]
pub struct AgentClient {
    node: String,
    link: Link,
}

/// How calls reach an agent.
#[derive(Clone)]
enum Link {
    /// A channel to its address.
    Remote(agent_client::AgentClient<Channel>),
    /// Its service in this process ([`AgentClient::in_process`]).
    Local(Arc<dyn Agent>),
}

/// One agent call: `$method` with request `$req`, over the client's link.
macro_rules! call {
    ($self:ident, $method:ident, $req:expr) => {
        match &$self.link {
            Link::Remote(c) => c.clone().$method($req).await,
            Link::Local(a) => bounded(a.$method(tonic::Request::new($req))).await,
        }
    };
}

/// A call to the agent of this process, bounded by [`CALL_TIMEOUT`] as a
/// remote one is.
async fn bounded<T>(
    call: impl std::future::Future<Output = std::result::Result<T, Status>>,
) -> std::result::Result<T, Status> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "the agent did not answer within {CALL_TIMEOUT:?}"
            )))
        })
}

/// How to reach an agent: plain text or mutual TLS, with deadlines.
pub fn endpoint(
    addr: &str,
    tls: Option<&ClientTlsConfig>,
) -> std::result::Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("agent address {addr:?}: {e}"))?;
    if let Some(t) = tls {
        ep = ep
            .tls_config(t.clone())
            .map_err(|e| format!("agent TLS for {addr}: {e}"))?;
    }
    Ok(ep
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(30)))
}

/// A channel to the agent at `ep`, connecting on first use; each burst of
/// frames goes out in one write.
fn channel(ep: &Endpoint) -> Channel {
    ep.connect_with_connector_lazy(tower::service_fn(connect))
}

/// A TCP connection (no Nagle delay) to the authority of `uri`, its
/// writes coalesced.
async fn connect(
    uri: tonic::transport::Uri,
) -> std::io::Result<TokioIo<CoalescedWrites<tokio::net::TcpStream>>> {
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if uri.port().is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("agent address {authority:?} has no port"),
        ));
    }
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("connect to {authority}: {e}")))?;
    tcp.set_nodelay(true)?;
    Ok(TokioIo::new(CoalescedWrites::new(tcp)))
}

impl AgentClient {
    /// A client for `node`'s agent at `ep`, connecting on first use (TLS,
    /// when configured, runs over the coalesced writes).
    pub fn lazy(node: &str, ep: Endpoint) -> Self {
        Self {
            node: node.into(),
            link: Link::Remote(agent_client::AgentClient::new(channel(&ep))),
        }
    }

    /// A client for `node`'s agent service `agent` in this process (the
    /// node plugin serving the Controller service for its own pools): each
    /// call goes straight to the service's handler, with no encoding and no
    /// connection, bounded by [`CALL_TIMEOUT`] as a remote one is.
    pub fn in_process(node: &str, agent: Arc<dyn Agent>) -> Self {
        Self {
            node: node.into(),
            link: Link::Local(agent),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn status(&self) -> impl FnOnce(tonic::Status) -> AgentError + '_ {
        move |s| AgentError::from_status(&self.node, s)
    }

    /// The agent's node name and pools; `count_volumes` also counts each
    /// pool's volumes (slower).
    pub async fn inventory(&self, count_volumes: bool) -> Result<Inventory> {
        let r = call!(
            self,
            get_inventory,
            pb::GetInventoryRequest { count_volumes }
        )
        .map_err(self.status())?
        .into_inner();
        let pools = r
            .pools
            .into_iter()
            .map(|p| pool(p).map_err(|e| AgentError::malformed(&self.node, e)))
            .collect::<Result<_>>()?;
        Ok(Inventory {
            node_name: r.node_name,
            starting: r.starting,
            pools,
        })
    }

    /// libvirt's pool-build, then a start; the pool as it is afterwards.
    pub async fn build_pool(&self, pool_name: &str, overwrite: bool) -> Result<PoolReport> {
        let r = call!(
            self,
            build_pool,
            pb::BuildPoolRequest {
                pool: pool_name.into(),
                overwrite,
            }
        )
        .map_err(self.status())?
        .into_inner();
        pool(r.pool.unwrap_or_default()).map_err(|e| AgentError::malformed(&self.node, e))
    }

    pub async fn create_volume(&self, v: &NewVolume) -> Result<VolumeReport> {
        let (stripes, stripe_size_bytes) = v.stripes.unwrap_or((0, 0));
        let req = pb::CreateVolumeRequest {
            pool: v.pool.clone(),
            name: v.name.clone(),
            required_bytes: v.required,
            limit_bytes: v.limit,
            options: Some(pb::VolumeOptions {
                format: v.format.map_or(0, |f| pb::VolumeFormat::from(f) as i32),
                allocation: v.allocation.map_or(0, |a| pb::Allocation::from(a) as i32),
                wipe_on_delete: v.wipe_on_delete,
                on_delete: pb::OnDelete::from(v.on_delete) as i32,
                partition_type: v.partition_type.clone().unwrap_or_default(),
                stripes,
                stripe_size_bytes,
            }),
            source: match &v.content {
                NewContent::Empty => None,
                NewContent::Volume(n) => Some(Source::SourceVolume(n.clone())),
                NewContent::Snapshot(n) => Some(Source::SourceSnapshot(n.clone())),
            },
        };
        let r = call!(self, create_volume, req).map_err(self.status())?;
        self.volume(r.into_inner().volume)
    }

    pub async fn delete_volume(&self, pool_name: &str, name: &str, wipe: bool) -> Result<()> {
        call!(
            self,
            delete_volume,
            pb::DeleteVolumeRequest {
                pool: pool_name.into(),
                name: name.into(),
                wipe,
            }
        )
        .map_err(self.status())?;
        Ok(())
    }

    pub async fn expand_volume(
        &self,
        pool_name: &str,
        name: &str,
        required: u64,
        limit: u64,
    ) -> Result<Expansion> {
        let r = call!(
            self,
            expand_volume,
            pb::ExpandVolumeRequest {
                pool: pool_name.into(),
                name: name.into(),
                required_bytes: required,
                limit_bytes: limit,
            }
        )
        .map_err(self.status())?
        .into_inner();
        Ok(Expansion {
            capacity: r.capacity_bytes,
            node_expansion_required: r.node_expansion_required,
        })
    }

    pub async fn get_volume(&self, pool_name: &str, name: &str) -> Result<VolumeReport> {
        let r = call!(
            self,
            get_volume,
            pb::VolumeRef {
                pool: pool_name.into(),
                name: name.into(),
            }
        )
        .map_err(self.status())?;
        self.volume(r.into_inner().volume)
    }

    /// The volumes of `pool_name` (None: of every pool running here).
    pub async fn list_volumes(&self, pool_name: Option<&str>) -> Result<Vec<VolumeReport>> {
        let r = pb::ListVolumesRequest {
            pool: pool_name.unwrap_or_default().into(),
            ..Default::default()
        };
        Ok(self.list(r).await?.0)
    }

    /// One page of this node's volumes in volume-id order: those whose id
    /// sorts after `after` (empty: from the first), at most `max` (0: all),
    /// and whether more follow.
    pub async fn list_volumes_page(
        &self,
        after: &str,
        max: u32,
    ) -> Result<(Vec<VolumeReport>, bool)> {
        self.list(pb::ListVolumesRequest {
            pool: String::new(),
            after_volume_id: after.into(),
            max_entries: max,
        })
        .await
    }

    async fn list(&self, r: pb::ListVolumesRequest) -> Result<(Vec<VolumeReport>, bool)> {
        let r = call!(self, list_volumes, r)
            .map_err(self.status())?
            .into_inner();
        let volumes = r
            .volumes
            .into_iter()
            .map(|v| self.volume(Some(v)))
            .collect::<Result<_>>()?;
        Ok((volumes, r.more))
    }

    pub async fn create_snapshot(
        &self,
        pool_name: &str,
        source: &str,
        name: &str,
    ) -> Result<SnapshotReport> {
        let r = call!(
            self,
            create_snapshot,
            pb::CreateSnapshotRequest {
                pool: pool_name.into(),
                source_volume: source.into(),
                name: name.into(),
            }
        )
        .map_err(self.status())?;
        Ok(snapshot(r.into_inner().snapshot.unwrap_or_default()))
    }

    pub async fn delete_snapshot(&self, pool_name: &str, name: &str) -> Result<()> {
        call!(
            self,
            delete_snapshot,
            pb::SnapshotRef {
                pool: pool_name.into(),
                name: name.into(),
            }
        )
        .map_err(self.status())?;
        Ok(())
    }

    /// The node's snapshots that `f` asks for, in snapshot-id order, and
    /// whether more follow.
    pub async fn list_snapshots(
        &self,
        f: &SnapshotFilter<'_>,
    ) -> Result<(Vec<SnapshotReport>, bool)> {
        let r = call!(
            self,
            list_snapshots,
            pb::ListSnapshotsRequest {
                pool: f.pool.into(),
                source_volume: f.source_volume.into(),
                after_snapshot_id: f.after.into(),
                max_entries: f.max,
                name: f.name.into(),
            }
        )
        .map_err(self.status())?
        .into_inner();
        Ok((r.snapshots.into_iter().map(snapshot).collect(), r.more))
    }

    pub async fn list_luns(&self, pool_name: &str) -> Result<Vec<Lun>> {
        let r = call!(
            self,
            list_luns,
            pb::ListLunsRequest {
                pool: pool_name.into(),
            }
        )
        .map_err(self.status())?;
        Ok(r.into_inner()
            .luns
            .into_iter()
            .map(|l| Lun {
                identity: l.identity,
                size: l.size_bytes,
                address: l.address,
                volume: (!l.volume.is_empty()).then_some(l.volume),
                static_name: l.static_name,
            })
            .collect())
    }

    /// Records `node` as the user of a volume (a shared pool's, or one of
    /// the asked node's own).
    pub async fn publish(&self, pool_name: &str, name: &str, node: &str) -> Result<()> {
        let req = publish_request(pool_name, name, node);
        call!(self, publish_volume, req).map_err(self.status())?;
        Ok(())
    }

    /// Forgets `node` (empty: any node) as the user of a volume.
    pub async fn unpublish(&self, pool_name: &str, name: &str, node: &str) -> Result<()> {
        let req = publish_request(pool_name, name, node);
        call!(self, unpublish_volume, req).map_err(self.status())?;
        Ok(())
    }

    fn volume(&self, v: Option<pb::VolumeInfo>) -> Result<VolumeReport> {
        let v = v.ok_or_else(|| AgentError::malformed(&self.node, "the answer holds no volume"))?;
        let format = wire::volume_format(v.format)
            .map_err(|e| AgentError::malformed(&self.node, e))?
            .unwrap_or(pool_csi_common::VolumeFormat::Raw);
        for n in &v.published_nodes {
            pool_csi_common::volume_id::check_node_name(n).map_err(|why| {
                AgentError::malformed(&self.node, format!("published node {n:?}: {why}"))
            })?;
        }
        Ok(VolumeReport {
            pool: v.pool,
            name: v.name,
            format,
            capacity: v.capacity_bytes,
            allocation: v.allocation_bytes,
            abnormal: v.abnormal.then_some(v.condition_message),
            shared: v.shared,
            published: v.published_nodes,
        })
    }
}

fn publish_request(pool_name: &str, name: &str, node: &str) -> pb::PublishVolumeRequest {
    pb::PublishVolumeRequest {
        pool: pool_name.into(),
        name: name.into(),
        node: node.into(),
    }
}

fn pool(p: pb::PoolInfo) -> std::result::Result<PoolReport, wire::UnknownValue> {
    Ok(PoolReport {
        pool_type: wire::pool_type(p.kind)?,
        state: match pb::PoolState::try_from(p.state).unwrap_or(pb::PoolState::Unspecified) {
            pb::PoolState::Running => PoolState::Running,
            pb::PoolState::Inactive => PoolState::Inactive,
            pb::PoolState::Building => PoolState::Building,
            pb::PoolState::Degraded => PoolState::Degraded,
            pb::PoolState::Inaccessible => PoolState::Inaccessible,
            pb::PoolState::Starting => PoolState::Starting,
            pb::PoolState::Unspecified => PoolState::Unknown,
        },
        name: p.name,
        capacity: p.capacity_bytes,
        allocation: p.allocation_bytes,
        available: p.available_bytes,
        volume_count: p.volume_count,
        message: p.message,
        max_volume: p.max_volume_bytes,
        free_extents: p
            .free_extents
            .iter()
            .map(|e| Extent {
                start: e.start,
                end: e.end,
            })
            .collect(),
        thin_available: p.thin_available_bytes,
        shared: p.shared,
        every_node: p.every_node,
    })
}

fn snapshot(s: pb::SnapshotInfo) -> SnapshotReport {
    SnapshotReport {
        pool: s.pool,
        name: s.name,
        source_volume: s.source_volume,
        size: s.size_bytes,
        created_unix_nanos: s.creation_unix_nanos,
        ready: s.ready,
        shared: s.shared,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_common::identity::IdentityService;
    use pool_csi_proto::csi::{identity_client::IdentityClient, identity_server::IdentityServer};
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    };
    use tokio::net::TcpListener;

    /// A real gRPC server behind a relay that counts how many reads the
    /// client's bytes took: a call sent as HEADERS and DATA in two writes
    /// arrives in two reads most of the time. The client runs on one
    /// thread, as in the controller (on a multi-threaded runtime the
    /// frames of a call are coalesced only when they are queued in time).
    #[tokio::test(flavor = "current_thread")]
    async fn each_call_reaches_the_agent_in_one_write() {
        tokio::time::timeout(Duration::from_secs(30), one_write_per_call())
            .await
            .expect("the calls are answered, none stuck in a held write");
    }

    async fn one_write_per_call() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let identity = IdentityService::new("test", false, Arc::new(AtomicBool::new(true)));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IdentityServer::new(identity))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(server)),
        );
        // The relay reads on threads of its own, as promptly as a remote
        // agent would, whatever the client's runtime does meanwhile.
        let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut from_client, _) = relay.accept().unwrap();
            from_client.set_nodelay(true).unwrap();
            let mut to_server = std::net::TcpStream::connect(server_addr).unwrap();
            to_server.set_nodelay(true).unwrap();
            let (mut from_server, mut to_client) = (
                to_server.try_clone().unwrap(),
                from_client.try_clone().unwrap(),
            );
            std::thread::spawn(move || std::io::copy(&mut from_server, &mut to_client));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = from_client.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                counted.fetch_add(1, Ordering::SeqCst);
                to_server.write_all(&buf[..n]).unwrap();
            }
        });
        let ep = endpoint(&relay_addr.to_string(), None).unwrap();
        let mut client = IdentityClient::new(channel(&ep));
        let probe = || pool_csi_proto::csi::ProbeRequest {};
        client
            .probe(probe())
            .await
            .expect("the first call connects");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = reads.load(Ordering::SeqCst);
        const CALLS: usize = 40;
        for _ in 0..CALLS {
            client.probe(probe()).await.unwrap();
        }
        let took = reads.load(Ordering::SeqCst) - before;
        // A control frame (a window update, a ping's answer) may go alone.
        assert!(
            took <= CALLS + 2,
            "{CALLS} calls took {took} reads at the agent's end: more than one write per call"
        );
    }

    #[tokio::test]
    async fn an_agent_address_without_a_port_is_refused_at_connect() {
        let ep = endpoint("agent.example", None).unwrap();
        let mut client = IdentityClient::new(channel(&ep));
        let e = client
            .probe(pool_csi_proto::csi::ProbeRequest {})
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(
            format!("{e:?}").contains("has no port"),
            "the operator is told why: {e:?}"
        );
    }
}

#[cfg(test)]
mod in_process_tests {
    use super::*;

    /// A call to the agent of this process is bounded as a remote one is,
    /// and ends DEADLINE_EXCEEDED.
    #[tokio::test(start_paused = true)]
    async fn an_in_process_call_ends_at_the_deadline() {
        let started = tokio::time::Instant::now();
        let stuck = std::future::pending::<std::result::Result<(), Status>>();
        let e = bounded(stuck).await.unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
        assert_eq!(started.elapsed(), CALL_TIMEOUT);
        let answered = bounded(async { Ok::<_, Status>(7) }).await.unwrap();
        assert_eq!(answered, 7);
    }
}
