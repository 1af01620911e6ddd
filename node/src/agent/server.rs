//! Agent API handlers: check names, take the volume's lock, call the pool.

use crate::{
    error::Error,
    pools::{self, CreateRequest, PoolState, Source},
    NodeCtx,
};
use pool_csi_common::{respond, volume_id::check_storage_name};
use pool_csi_proto::agent::{self as pb, agent_server::Agent, create_volume_request};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

#[derive(Clone)]
pub struct AgentService {
    ctx: Arc<NodeCtx>,
}

impl AgentService {
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        Self { ctx }
    }

    fn pool(&self, name: &str) -> Result<Arc<dyn pools::Pool>, Error> {
        self.ctx.pools.get(name, &self.ctx.cfg.node_name)
    }

    /// PublishVolume (`on`) and UnpublishVolume.
    async fn publishing(
        &self,
        r: pb::PublishVolumeRequest,
        on: bool,
    ) -> Result<Response<pb::PublishVolumeResponse>, Status> {
        respond::<_, Error>(
            async {
                name("name", &r.name)?;
                // Unpublishing from no node in particular means from any.
                if on || !r.node.is_empty() {
                    pool_csi_common::volume_id::check_node_name(&r.node)
                        .map_err(|why| Error::Invalid(format!("node {:?} {why}", r.node)))?;
                }
                let pool = self.pool(&r.pool)?;
                let _g = self
                    .ctx
                    .locks
                    .try_acquire(NodeCtx::volume_key(&r.pool, &r.name))?;
                match on {
                    true => pool.publish(&r.name, &r.node).await?,
                    false => pool.unpublish(&r.name, &r.node).await?,
                }
                Ok(pb::PublishVolumeResponse {})
            }
            .await,
        )
    }
}

fn name(field: &str, n: &str) -> Result<(), Error> {
    check_storage_name(n).map_err(|why| Error::Invalid(format!("{field} {n:?} {why}")))
}

fn volume_pb(pool: &dyn pools::Pool, v: pools::Volume) -> pb::VolumeInfo {
    pb::VolumeInfo {
        pool: pool.name().into(),
        shared: pool.shared(),
        name: v.name,
        format: v.format.to_string(),
        capacity_bytes: v.capacity,
        allocation_bytes: v.allocation,
        abnormal: v.abnormal.is_some(),
        condition_message: v.abnormal.unwrap_or_default(),
    }
}

fn snapshot_pb(pool: &str, s: pools::Snapshot) -> pb::SnapshotInfo {
    pb::SnapshotInfo {
        pool: pool.into(),
        name: s.name,
        source_volume: s.source_volume,
        size_bytes: s.size,
        creation_unix_nanos: s.created_unix_nanos,
        ready: true,
    }
}

fn pool_pb(p: &dyn pools::Pool, s: pools::PoolStatus) -> pb::PoolInfo {
    pb::PoolInfo {
        name: p.name().into(),
        r#type: p.pool_type().to_string(),
        state: state_pb(s.state) as i32,
        capacity_bytes: s.capacity,
        allocation_bytes: s.allocation,
        available_bytes: s.available,
        volume_count: s.volume_count.unwrap_or(0),
        message: s.message,
        max_volume_bytes: s.max_volume,
        free_extents: extents(&s.free_extents),
        thin_available_bytes: s.thin_available,
        shared: p.shared(),
    }
}

/// Striping options, checked here too: they reach lvcreate's arguments.
fn stripes(o: &pb::VolumeOptions) -> Result<Option<(u32, u64)>, Error> {
    if o.stripes == 0 {
        return Ok(None);
    }
    // 64 KiB is LVM's default stripe size.
    let size = if o.stripe_size_bytes == 0 {
        64 << 10
    } else {
        o.stripe_size_bytes
    };
    if o.stripes > 64 || !size.is_power_of_two() || !(4096..=(512 << 20)).contains(&size) {
        return Err(Error::Invalid(format!(
            "options.stripes {} / stripe_size_bytes {size}: stripes must be 1-64 and the size a power of two from 4 KiB to 512 MiB",
            o.stripes
        )));
    }
    Ok(Some((o.stripes, size)))
}

fn extents(e: &[(u64, u64)]) -> Vec<pb::Extent> {
    e.iter()
        .map(|(start, end)| pb::Extent {
            start: *start,
            end: *end,
            size: end - start,
        })
        .collect()
}

fn state_pb(s: PoolState) -> pb::PoolState {
    match s {
        PoolState::Inactive => pb::PoolState::Inactive,
        PoolState::Running => pb::PoolState::Running,
        PoolState::Degraded => pb::PoolState::Degraded,
    }
}

fn parse<T: std::str::FromStr<Err = String>>(field: &str, v: &str) -> Result<Option<T>, Error> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|e| Error::Invalid(format!("{field}: {e}")))
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_inventory(
        &self,
        req: Request<pb::GetInventoryRequest>,
    ) -> Result<Response<pb::GetInventoryResponse>, Status> {
        let count = req.into_inner().count_volumes;
        let mut pools = Vec::new();
        for p in self.ctx.pools.all() {
            pools.push(pool_pb(p.as_ref(), p.status(count).await));
        }
        for (name, (t, why)) in self.ctx.pools.unsupported() {
            pools.push(pb::PoolInfo {
                name: name.clone(),
                r#type: t.to_string(),
                state: pb::PoolState::Inactive as i32,
                message: why.clone(),
                ..Default::default()
            });
        }
        Ok(Response::new(pb::GetInventoryResponse {
            node_name: self.ctx.cfg.node_name.clone(),
            pools,
        }))
    }

    #[instrument(name = "agent.BuildPool", skip_all, fields(pool.name = %req.get_ref().pool, rpc.code))]
    async fn build_pool(
        &self,
        req: Request<pb::BuildPoolRequest>,
    ) -> Result<Response<pb::BuildPoolResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                let pool = self.pool(&r.pool)?;
                let _g = self.ctx.locks.try_acquire(format!("pool:{}", r.pool))?;
                pool.build(r.overwrite).await?;
                pool.start().await?;
                let s = pool.status(true).await;
                Ok(pb::BuildPoolResponse {
                    pool: Some(pool_pb(pool.as_ref(), s)),
                })
            }
            .await,
        )
    }

    #[instrument(name = "agent.CreateVolume", skip_all, fields(pool.name = %req.get_ref().pool, volume.name = %req.get_ref().name, rpc.code))]
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                name("name", &r.name)?;
                let pool = self.pool(&r.pool)?;
                let opts = r.options.unwrap_or_default();
                let source = match &r.source {
                    None => Source::Empty,
                    Some(create_volume_request::Source::SourceVolume(v)) => {
                        name("source_volume", v)?;
                        Source::Volume(v.clone())
                    }
                    Some(create_volume_request::Source::SourceSnapshot(s)) => {
                        name("source_snapshot", s)?;
                        Source::Snapshot(s.clone())
                    }
                };
                let _g = self
                    .ctx
                    .locks
                    .try_acquire(NodeCtx::volume_key(&r.pool, &r.name))?;
                let _src_guard = match &source {
                    Source::Volume(v) => Some(
                        self.ctx
                            .locks
                            .try_acquire(NodeCtx::volume_key(&r.pool, v))?,
                    ),
                    Source::Snapshot(s) => Some(
                        self.ctx
                            .locks
                            .try_acquire(NodeCtx::snapshot_key(&r.pool, s))?,
                    ),
                    Source::Empty => None,
                };
                let create = CreateRequest {
                    name: r.name.clone(),
                    required: r.required_bytes,
                    limit: r.limit_bytes,
                    format: parse("options.format", &opts.format)?,
                    allocation: parse("options.allocation", &opts.allocation)?,
                    source,
                    wipe_on_delete: opts.wipe_on_delete,
                    partition_type: (!opts.partition_type.is_empty())
                        .then(|| opts.partition_type.clone()),
                    stripes: stripes(&opts)?,
                };
                let v = pool.create_volume(&create).await?;
                Ok(pb::VolumeResponse {
                    volume: Some(volume_pb(pool.as_ref(), v)),
                })
            }
            .await,
        )
    }

    #[instrument(name = "agent.DeleteVolume", skip_all, fields(pool.name = %req.get_ref().pool, volume.name = %req.get_ref().name, rpc.code))]
    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                name("name", &r.name)?;
                let pool = self.pool(&r.pool)?;
                let _g = self
                    .ctx
                    .locks
                    .try_acquire(NodeCtx::volume_key(&r.pool, &r.name))?;
                pool.delete_volume(&r.name, r.wipe).await?;
                Ok(pb::DeleteVolumeResponse {})
            }
            .await,
        )
    }

    #[instrument(name = "agent.ExpandVolume", skip_all, fields(pool.name = %req.get_ref().pool, volume.name = %req.get_ref().name, rpc.code))]
    async fn expand_volume(
        &self,
        req: Request<pb::ExpandVolumeRequest>,
    ) -> Result<Response<pb::ExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                name("name", &r.name)?;
                let pool = self.pool(&r.pool)?;
                let _g = self
                    .ctx
                    .locks
                    .try_acquire(NodeCtx::volume_key(&r.pool, &r.name))?;
                let e = pool
                    .expand_volume(&r.name, r.required_bytes, r.limit_bytes)
                    .await?;
                Ok(pb::ExpandVolumeResponse {
                    capacity_bytes: e.capacity,
                    node_expansion_required: e.node_expansion_required,
                })
            }
            .await,
        )
    }

    async fn get_volume(
        &self,
        req: Request<pb::VolumeRef>,
    ) -> Result<Response<pb::VolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                name("name", &r.name)?;
                let pool = self.pool(&r.pool)?;
                let v = pool.get_volume(&r.name).await?;
                Ok(pb::VolumeResponse {
                    volume: Some(volume_pb(pool.as_ref(), v)),
                })
            }
            .await,
        )
    }

    #[instrument(name = "agent.ListLuns", skip_all, fields(pool.name = %req.get_ref().pool, rpc.code))]
    async fn list_luns(
        &self,
        req: Request<pb::ListLunsRequest>,
    ) -> Result<Response<pb::ListLunsResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                let luns = self.pool(&r.pool)?.luns().await?;
                Ok(pb::ListLunsResponse {
                    luns: luns
                        .into_iter()
                        .map(|l| pb::LunInfo {
                            identity: l.identity,
                            size_bytes: l.size,
                            address: l.address,
                            volume: l.volume.unwrap_or_default(),
                            static_name: l.static_name,
                        })
                        .collect(),
                })
            }
            .await,
        )
    }

    #[instrument(name = "agent.PublishVolume", skip_all, fields(pool.name = %req.get_ref().pool, volume.name = %req.get_ref().name, node = %req.get_ref().node, rpc.code))]
    async fn publish_volume(
        &self,
        req: Request<pb::PublishVolumeRequest>,
    ) -> Result<Response<pb::PublishVolumeResponse>, Status> {
        self.publishing(req.into_inner(), true).await
    }

    #[instrument(name = "agent.UnpublishVolume", skip_all, fields(pool.name = %req.get_ref().pool, volume.name = %req.get_ref().name, node = %req.get_ref().node, rpc.code))]
    async fn unpublish_volume(
        &self,
        req: Request<pb::PublishVolumeRequest>,
    ) -> Result<Response<pb::PublishVolumeResponse>, Status> {
        self.publishing(req.into_inner(), false).await
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                let mut volumes = Vec::new();
                for p in self
                    .ctx
                    .pools
                    .all()
                    .into_iter()
                    .filter(|p| r.pool.is_empty() || p.name() == r.pool)
                {
                    match p.list_volumes().await {
                        Ok(vs) => volumes.extend(vs.into_iter().map(|v| volume_pb(p.as_ref(), v))),
                        Err(Error::PoolNotRunning { .. }) if r.pool.is_empty() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(pb::ListVolumesResponse { volumes })
            }
            .await,
        )
    }

    #[instrument(name = "agent.CreateSnapshot", skip_all, fields(pool.name = %req.get_ref().pool, snapshot.name = %req.get_ref().name, rpc.code))]
    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                name("name", &r.name)?;
                name("source_volume", &r.source_volume)?;
                let pool = self.pool(&r.pool)?;
                let _g = self
                    .ctx
                    .locks
                    .try_acquire(NodeCtx::snapshot_key(&r.pool, &r.name))?;
                let _src = self
                    .ctx
                    .locks
                    .try_acquire(NodeCtx::volume_key(&r.pool, &r.source_volume))?;
                let s = pool.create_snapshot(&r.source_volume, &r.name).await?;
                Ok(pb::SnapshotResponse {
                    snapshot: Some(snapshot_pb(&r.pool, s)),
                })
            }
            .await,
        )
    }

    #[instrument(name = "agent.DeleteSnapshot", skip_all, fields(pool.name = %req.get_ref().pool, snapshot.name = %req.get_ref().name, rpc.code))]
    async fn delete_snapshot(
        &self,
        req: Request<pb::SnapshotRef>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                name("name", &r.name)?;
                let pool = self.pool(&r.pool)?;
                let _g = self
                    .ctx
                    .locks
                    .try_acquire(NodeCtx::snapshot_key(&r.pool, &r.name))?;
                pool.delete_snapshot(&r.name).await?;
                Ok(pb::DeleteSnapshotResponse {})
            }
            .await,
        )
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                let mut snapshots = Vec::new();
                for p in self
                    .ctx
                    .pools
                    .all()
                    .into_iter()
                    .filter(|p| r.pool.is_empty() || p.name() == r.pool)
                {
                    match p.list_snapshots().await {
                        Ok(ss) => snapshots.extend(
                            ss.into_iter()
                                .filter(|s| {
                                    r.source_volume.is_empty() || s.source_volume == r.source_volume
                                })
                                .map(|s| snapshot_pb(p.name(), s)),
                        ),
                        Err(Error::PoolNotRunning { .. }) if r.pool.is_empty() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(pb::ListSnapshotsResponse { snapshots })
            }
            .await,
        )
    }
}
