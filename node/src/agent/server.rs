//! Agent API handlers: every field checked first, then the pool looked up
//! and the volume's lock taken ([`AgentService::prologue`]), then one call
//! into the pool, run to its end even when the controller stops waiting
//! (`detach`: a slow copy keeps its lock, a retry meanwhile is ABORTED).
//! Wire types stop here.

use super::{convert, paging};
use crate::{
    error::Error,
    pools::{CreateRequest, Pool, SnapshotQuery, Source},
    NodeCtx,
};
use pool_csi_common::{
    oplock::detach, params::striping, respond, volume_id::check_storage_name, wire, LockKey,
    OpGuard, SnapshotId, VolumeId,
};
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

    fn pool(&self, name: &str) -> Result<Arc<dyn Pool>, Error> {
        self.ctx.pools.get(name, &self.ctx.cfg.node_name)
    }

    /// The pool, and the lock on `key` within it. Callers have checked
    /// every field of the request before.
    fn prologue(&self, pool: &str, key: LockKey) -> Result<(Arc<dyn Pool>, OpGuard), Error> {
        let p = self.pool(pool)?;
        Ok((p, self.ctx.locks.try_acquire(key)?))
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
                        .map_err(|why| Error::invalid("node", &r.node, why))?;
                }
                let pool = self.pool(&r.pool)?;
                // A shared pool's claim changes under the volume's lock; a
                // node-local record under its own (see LockKey::Published).
                let key = match pool.shared() {
                    true => LockKey::volume(&r.pool, &r.name),
                    false => LockKey::published(&r.pool, &r.name),
                };
                let g = self.ctx.locks.try_acquire(key)?;
                let node = self.ctx.cfg.node_name.as_str();
                if !pool.shared() && !r.node.is_empty() && r.node != node {
                    if !on {
                        return Ok(pb::PublishVolumeResponse {}); // never published there
                    }
                    return Err(Error::Precondition(format!(
                        "volume {} of pool {:?} lives on node {node} and can be published there only, not on {}",
                        r.name, r.pool, r.node
                    )));
                }
                let records = (!pool.shared()).then(|| self.ctx.publish_records());
                detach(g, async move {
                    match on {
                        true => pool.publish(&r.name, &r.node).await?,
                        false => pool.unpublish(&r.name, &r.node).await?,
                    }
                    // A node-local volume's record is this node's.
                    let Some(records) = records else {
                        return Ok(());
                    };
                    match on {
                        true => records.record(&r.pool, &r.name),
                        false => records.forget(&r.pool, &r.name),
                    }
                })
                .await?;
                Ok(pb::PublishVolumeResponse {})
            }
            .await,
        )
    }
}

fn name(field: &'static str, n: &str) -> Result<(), Error> {
    check_storage_name(n).map_err(|why| Error::invalid(field, n, why))
}

/// None for an empty (unset) field.
fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// The create request in pool terms; every option checked.
fn create_request(r: &pb::CreateVolumeRequest) -> Result<CreateRequest, Error> {
    name("name", &r.name)?;
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
    let o = r.options.clone().unwrap_or_default();
    let bad = |field: &'static str| {
        move |e: wire::UnknownValue| Error::invalid(field, &e.value.to_string(), e)
    };
    Ok(CreateRequest {
        name: r.name.clone(),
        required: r.required_bytes,
        limit: r.limit_bytes,
        format: wire::volume_format(o.format).map_err(bad("options.format"))?,
        allocation: wire::allocation(o.allocation).map_err(bad("options.allocation"))?,
        source,
        wipe_on_delete: o.wipe_on_delete,
        on_delete: wire::on_delete(o.on_delete).map_err(bad("options.on_delete"))?,
        partition_type: (!o.partition_type.is_empty()).then(|| o.partition_type.clone()),
        stripes: striping::from_wire(o.stripes, o.stripe_size_bytes)
            .map_err(|why| Error::invalid("options.stripes", &o.stripes.to_string(), why))?,
    })
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_inventory(
        &self,
        req: Request<pb::GetInventoryRequest>,
    ) -> Result<Response<pb::GetInventoryResponse>, Status> {
        let count = req.into_inner().count_volumes;
        let mut pools = Vec::new();
        let in_cluster = self.ctx.cfg.cluster.is_some();
        for p in self.ctx.pools.all() {
            let mut info = convert::pool(p.as_ref(), p.status(count).await);
            info.every_node = self.ctx.pools.on_every_node(p.name(), in_cluster);
            pools.push(info);
        }
        Ok(Response::new(pb::GetInventoryResponse {
            node_name: self.ctx.cfg.node_name.clone(),
            pools,
            starting: !self.ctx.ready.load(std::sync::atomic::Ordering::Acquire),
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
                let (pool, g) = self.prologue(&r.pool, LockKey::Pool(r.pool.clone()))?;
                detach(g, async move {
                    pool.build(r.overwrite).await?;
                    pool.start().await?;
                    let s = pool.status(true).await;
                    Ok(pb::BuildPoolResponse {
                        pool: Some(convert::pool(pool.as_ref(), s)),
                    })
                })
                .await
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
                let create = create_request(&r)?;
                let (pool, g) = self.prologue(&r.pool, LockKey::volume(&r.pool, &r.name))?;
                let src = match &create.source {
                    Source::Volume(v) => Some(LockKey::volume(&r.pool, v)),
                    Source::Snapshot(s) => Some(LockKey::snapshot(&r.pool, s)),
                    Source::Empty => None,
                }
                .map(|k| self.ctx.locks.try_acquire(k))
                .transpose()?;
                detach((g, src), async move {
                    let v = pool.create_volume(&create).await?;
                    Ok(pb::VolumeResponse {
                        volume: Some(convert::volume(pool.as_ref(), v)),
                    })
                })
                .await
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
                let (pool, g) = self.prologue(&r.pool, LockKey::volume(&r.pool, &r.name))?;
                let records = (!pool.shared()).then(|| self.ctx.publish_records());
                // A publish must not land between the delete and the
                // record's removal (a new volume of the name would inherit it).
                let g2 = match &records {
                    Some(_) => Some(
                        self.ctx
                            .locks
                            .try_acquire(LockKey::published(&r.pool, &r.name))?,
                    ),
                    None => None,
                };
                detach((g, g2), async move {
                    pool.delete_volume(&r.name, r.wipe).await?;
                    // Nothing outlives the volume, not even a publish record.
                    match records {
                        Some(records) => records.forget(&r.pool, &r.name),
                        None => Ok(()),
                    }
                })
                .await?;
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
                let (pool, g) = self.prologue(&r.pool, LockKey::volume(&r.pool, &r.name))?;
                let e = detach(g, async move {
                    pool.expand_volume(&r.name, r.required_bytes, r.limit_bytes)
                        .await
                })
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
                let mut v = pool.get_volume(&r.name).await?;
                if !pool.shared() && self.ctx.publish_records().is_published(&r.pool, &r.name) {
                    v.published = Some(self.ctx.cfg.node_name.clone());
                }
                Ok(pb::VolumeResponse {
                    volume: Some(convert::volume(pool.as_ref(), v)),
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
                    luns: luns.into_iter().map(convert::lun).collect(),
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
                let node = self.ctx.cfg.node_name.as_str();
                let records = &self.ctx.publish_records();
                let pools = self
                    .pools_named(&r.pool)
                    .into_iter()
                    .map(|p| {
                        let prefix = VolumeId::new(p.name(), (!p.shared()).then_some(node), "");
                        (prefix.to_string(), p)
                    })
                    .collect();
                let (volumes, more) = paging::across_pools(
                    pools,
                    &r.after_volume_id,
                    r.max_entries,
                    r.pool.is_empty(),
                    |p, from, left| async move {
                        let page = p.list_page(from, left).await?;
                        // This node's records of its own volumes, read once a page.
                        let published = match p.shared() {
                            true => Default::default(),
                            false => records.of_pool(p.name())?,
                        };
                        let volumes = page.entries.into_iter().map(|mut v| {
                            if published.contains(&v.name) {
                                v.published = Some(node.to_string());
                            }
                            convert::volume(p.as_ref(), v)
                        });
                        Ok((volumes.collect(), page.more))
                    },
                )
                .await?;
                Ok(pb::ListVolumesResponse { volumes, more })
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
                let (pool, g) = self.prologue(&r.pool, LockKey::snapshot(&r.pool, &r.name))?;
                let src = self
                    .ctx
                    .locks
                    .try_acquire(LockKey::volume(&r.pool, &r.source_volume))?;
                detach((g, src), async move {
                    let s = pool.create_snapshot(&r.source_volume, &r.name).await?;
                    Ok(pb::SnapshotResponse {
                        snapshot: Some(convert::snapshot(pool.as_ref(), s)),
                    })
                })
                .await
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
                let (pool, g) = self.prologue(&r.pool, LockKey::snapshot(&r.pool, &r.name))?;
                detach(g, async move { pool.delete_snapshot(&r.name).await }).await?;
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
                if !r.source_volume.is_empty() {
                    name("source_volume", &r.source_volume)?;
                }
                if !r.name.is_empty() {
                    name("name", &r.name)?;
                }
                let node = self.ctx.cfg.node_name.as_str();
                let pools = self
                    .pools_named(&r.pool)
                    .into_iter()
                    .map(|p| {
                        let prefix = SnapshotId::new(p.name(), (!p.shared()).then_some(node), "");
                        (prefix.to_string(), p)
                    })
                    .collect();
                let (only, of) = (some(&r.name), some(&r.source_volume));
                let (snapshots, more) = paging::across_pools(
                    pools,
                    &r.after_snapshot_id,
                    r.max_entries,
                    r.pool.is_empty(),
                    |p, after, max| async move {
                        let q = SnapshotQuery {
                            after,
                            max,
                            name: only,
                            source: of,
                        };
                        let page = p.snapshots_page(&q).await?;
                        let snapshots = page.entries.into_iter();
                        let snapshots = snapshots.map(|s| convert::snapshot(p.as_ref(), s));
                        Ok((snapshots.collect(), page.more))
                    },
                )
                .await?;
                Ok(pb::ListSnapshotsResponse { snapshots, more })
            }
            .await,
        )
    }
}

impl AgentService {
    /// The pool named `pool`, or every pool when it is empty.
    fn pools_named(&self, pool: &str) -> Vec<Arc<dyn Pool>> {
        self.ctx
            .pools
            .all()
            .into_iter()
            .filter(|p| pool.is_empty() || p.name() == pool)
            .collect()
    }
}
