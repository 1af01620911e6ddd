//! CSI Controller service: thin handlers that check arguments, take the
//! volume's lock, call one op, and map the error.

use super::convert;
use crate::{
    error::{Error, Result},
    ops::{self, create::Content},
    Ctx,
};
use pool_csi_common::{caps, respond, storage_name, LockKey, SnapshotId, VolumeId, VolumeParams};
use pool_csi_proto::csi::{
    self, controller_server::Controller, controller_service_capability, volume_content_source,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::instrument;

#[derive(Clone)]
pub struct ControllerService {
    ctx: Arc<Ctx>,
}

impl ControllerService {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

fn required(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Err(Error::Invalid(format!("{field} is required")));
    }
    Ok(())
}

/// A CSI object name: required, and free of control characters (a NUL or a
/// newline in a name is a client bug, never a name to store).
fn request_name(name: &str) -> Result<()> {
    required("name", name)?;
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Error::Invalid(format!(
            "name {name:?} holds the control character {c:?}; names are printable"
        )));
    }
    Ok(())
}

fn volume_id(id: &str) -> Result<VolumeId> {
    required("volume_id", id)?;
    VolumeId::parse(id).map_err(|e| Error::NotFound(e.to_string()))
}

fn check_caps(caps_list: &[csi::VolumeCapability], kind: caps::Kind) -> Result<()> {
    if caps_list.is_empty() {
        return Err(Error::Invalid("volume_capabilities is required".into()));
    }
    caps_list
        .iter()
        .try_for_each(|c| caps::check(c, kind).map_err(Error::Invalid))
}

/// (required, limit) from a capacity range; negative or inverted is refused.
fn range(r: Option<&csi::CapacityRange>) -> Result<(u64, u64)> {
    let r = r.cloned().unwrap_or_default();
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Error::Invalid(
            "capacity_range values must not be negative".into(),
        ));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Error::OutOfRange(format!(
            "required_bytes {} exceeds limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok((r.required_bytes as u64, r.limit_bytes as u64))
}

macro_rules! run {
    ($body:expr) => {
        respond::<_, Error>(async { $body }.await)
    };
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(name = "CreateVolume", skip_all, fields(volume.name = %req.get_ref().name, pool.name, volume.id, rpc.code))]
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let r = req.into_inner();
        run!({
            request_name(&r.name)?;
            let params = VolumeParams::parse(&r.parameters, self.ctx.default_pool.as_deref())?;
            // Whether the pool is shared is known once it is looked up.
            let directory = params.format.is_some_and(|f| f.is_directory());
            check_caps(&r.volume_capabilities, caps::Kind::of(directory, directory))?;
            let multi_node = r.volume_capabilities.iter().any(caps::is_multi_node);
            let (req_bytes, limit) = range(r.capacity_range.as_ref())?;
            tracing::Span::current().record("pool.name", params.pool.as_str());
            let content = match r
                .volume_content_source
                .as_ref()
                .and_then(|s| s.r#type.as_ref())
            {
                None => Content::Empty,
                Some(volume_content_source::Type::Volume(v)) => {
                    Content::Volume(volume_id(&v.volume_id)?)
                }
                Some(volume_content_source::Type::Snapshot(s)) => {
                    required("snapshot_id", &s.snapshot_id)?;
                    Content::Snapshot(
                        SnapshotId::parse(&s.snapshot_id)
                            .map_err(|e| Error::NotFound(e.to_string()))?,
                    )
                }
            };
            let name = storage_name(&r.name);
            let _g = self
                .ctx
                .locks
                .try_acquire(LockKey::volume(&params.pool, &name))?;
            let fs_type = params.fs_type.clone();
            let create = ops::create::CreateVolume {
                name,
                required: req_bytes,
                limit,
                params,
                content,
                topology: convert::node_topology(r.accessibility_requirements.as_ref()),
                multi_node,
            };
            let made = ops::create::create(&self.ctx, &create).await?;
            tracing::Span::current().record("volume.id", tracing::field::display(&made.id));
            let mut volume = convert::volume(&made.id, made.capacity, &made.reach);
            volume
                .volume_context
                .insert("pool".into(), made.id.pool.clone());
            if let Some(fs) = fs_type {
                volume.volume_context.insert("fsType".into(), fs);
            }
            volume.content_source = r.volume_content_source;
            Ok(csi::CreateVolumeResponse {
                volume: Some(volume),
            })
        })
    }

    #[instrument(name = "DeleteVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let r = req.into_inner();
        run!({
            required("volume_id", &r.volume_id)?;
            // CSI: deleting a volume that does not exist (or never could) is OK.
            let Ok(id) = VolumeId::parse(&r.volume_id) else {
                return Ok(csi::DeleteVolumeResponse {});
            };
            let _g = self.ctx.locks.try_acquire(id.lock_key())?;
            ops::volumes::delete(&self.ctx, &id).await?;
            Ok(csi::DeleteVolumeResponse {})
        })
    }

    #[instrument(name = "ControllerPublishVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, node.id = %req.get_ref().node_id, rpc.code))]
    async fn controller_publish_volume(
        &self,
        req: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        let r = req.into_inner();
        run!({
            required("volume_id", &r.volume_id)?;
            required("node_id", &r.node_id)?;
            let cap = r
                .volume_capability
                .as_ref()
                .ok_or_else(|| Error::Invalid("volume_capability is required".into()))?;
            let id = volume_id(&r.volume_id)?;
            caps::check(cap, caps::Kind::by_id(id.node.is_none())).map_err(Error::Invalid)?;
            let _g = self.ctx.locks.try_acquire(id.lock_key())?;
            ops::publish::publish(&self.ctx, &id, &r.node_id).await?;
            Ok(csi::ControllerPublishVolumeResponse {
                publish_context: Default::default(),
            })
        })
    }

    /// Nothing was attached from the control plane; a shared volume's
    /// record of its node is dropped.
    #[instrument(name = "ControllerUnpublishVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, node.id = %req.get_ref().node_id, rpc.code))]
    async fn controller_unpublish_volume(
        &self,
        req: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        run!({
            required("volume_id", &r.volume_id)?;
            // CSI: a volume that does not exist (or never could) is unpublished.
            let Ok(id) = VolumeId::parse(&r.volume_id) else {
                return Ok(csi::ControllerUnpublishVolumeResponse {});
            };
            let _g = self.ctx.locks.try_acquire(id.lock_key())?;
            ops::publish::unpublish(&self.ctx, &id, &r.node_id).await?;
            Ok(csi::ControllerUnpublishVolumeResponse {})
        })
    }

    #[instrument(name = "ValidateVolumeCapabilities", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = req.into_inner();
        run!({
            required("volume_id", &r.volume_id)?;
            if r.volume_capabilities.is_empty() {
                return Err(Error::Invalid("volume_capabilities is required".into()));
            }
            let id = volume_id(&r.volume_id)?;
            if !r.parameters.is_empty() {
                VolumeParams::parse(&r.parameters, self.ctx.default_pool.as_deref())?;
            }
            let v = ops::volumes::get(&self.ctx, &id).await?;
            let kind = caps::Kind::of(v.format.is_directory(), id.node.is_none());
            if let Some(why) = r
                .volume_capabilities
                .iter()
                .find_map(|c| caps::check(c, kind).err())
            {
                return Ok(csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: why,
                });
            }
            Ok(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            })
        })
    }

    #[instrument(name = "ListVolumes", skip_all, fields(rpc.code))]
    async fn list_volumes(
        &self,
        req: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let r = req.into_inner();
        run!({
            if !r.starting_token.is_empty() && VolumeId::parse(&r.starting_token).is_err() {
                return Err(Error::BadToken(r.starting_token));
            }
            let (page, next_token) =
                ops::volumes::list_page(&self.ctx, &r.starting_token, r.max_entries).await?;
            // Shared volumes reach every node of their pool: read once.
            let inventories = match page.iter().any(|(id, _)| id.node.is_none()) {
                true => {
                    self.ctx
                        .agents
                        .all_inventories(crate::agents::inventory::INVENTORY_TTL)
                        .await
                        .0
                }
                false => Vec::new(),
            };
            let entries = page
                .into_iter()
                .map(|(id, v)| csi::list_volumes_response::Entry {
                    volume: Some(convert::volume(
                        &id,
                        v.capacity,
                        &ops::reach_in(&inventories, &id),
                    )),
                    status: Some(csi::list_volumes_response::VolumeStatus {
                        published_node_ids: v.published.clone(),
                        volume_condition: Some(convert::condition(&v)),
                    }),
                })
                .collect();
            Ok(csi::ListVolumesResponse {
                entries,
                next_token,
            })
        })
    }

    #[instrument(name = "GetCapacity", skip_all, fields(rpc.code))]
    async fn get_capacity(
        &self,
        req: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let r = req.into_inner();
        run!({
            let params = if r.parameters.is_empty() && self.ctx.default_pool.is_none() {
                None
            } else {
                Some(VolumeParams::parse(
                    &r.parameters,
                    self.ctx.default_pool.as_deref(),
                )?)
            };
            let pool = params.as_ref().map(|p| p.pool.clone());
            let thin = params
                .as_ref()
                .is_some_and(|p| p.allocation == Some(pool_csi_common::Allocation::Thin));
            let directory = params
                .as_ref()
                .and_then(|p| p.format)
                .is_some_and(|f| f.is_directory());
            if r.volume_capabilities
                .iter()
                .any(|c| caps::check(c, caps::Kind::of(directory, directory)).is_err())
            {
                return Ok(csi::GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: Some(0),
                    minimum_volume_size: None,
                });
            }
            let segment = r.accessible_topology.as_ref().map(|t| &t.segments);
            let (available, largest) =
                ops::capacity::capacity(&self.ctx, pool.as_deref(), segment, thin).await?;
            Ok(csi::GetCapacityResponse {
                available_capacity: available as i64,
                maximum_volume_size: Some(largest as i64),
                minimum_volume_size: None,
            })
        })
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::{rpc::Type, Rpc, Type as T};
        let caps = [
            Type::CreateDeleteVolume,
            Type::PublishUnpublishVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::CreateDeleteSnapshot,
            Type::ListSnapshots,
            Type::CloneVolume,
            Type::ExpandVolume,
            Type::VolumeCondition,
            Type::GetVolume,
            Type::ListVolumesPublishedNodes,
            Type::SingleNodeMultiWriter,
        ];
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .map(|t| csi::ControllerServiceCapability {
                    r#type: Some(T::Rpc(Rpc { r#type: t as i32 })),
                })
                .collect(),
        }))
    }

    #[instrument(name = "CreateSnapshot", skip_all, fields(volume.id = %req.get_ref().source_volume_id, snapshot.name = %req.get_ref().name, rpc.code))]
    async fn create_snapshot(
        &self,
        req: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let r = req.into_inner();
        run!({
            request_name(&r.name)?;
            required("source_volume_id", &r.source_volume_id)?;
            if let Some(k) = r.parameters.keys().next() {
                return Err(Error::Invalid(format!(
                    "unknown VolumeSnapshotClass parameter {k:?}: pool-csi takes none"
                )));
            }
            let source = volume_id(&r.source_volume_id)?;
            let name = storage_name(&r.name);
            let _g = self
                .ctx
                .locks
                .try_acquire(LockKey::SnapshotName(name.clone()))?;
            let (id, s) = ops::snapshots::create(&self.ctx, &source, &name).await?;
            Ok(csi::CreateSnapshotResponse {
                snapshot: Some(convert::snapshot(&id, &s)),
            })
        })
    }

    #[instrument(name = "DeleteSnapshot", skip_all, fields(snapshot.id = %req.get_ref().snapshot_id, rpc.code))]
    async fn delete_snapshot(
        &self,
        req: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let r = req.into_inner();
        run!({
            required("snapshot_id", &r.snapshot_id)?;
            let Ok(id) = SnapshotId::parse(&r.snapshot_id) else {
                return Ok(csi::DeleteSnapshotResponse {});
            };
            let _g = self
                .ctx
                .locks
                .try_acquire(LockKey::SnapshotName(id.name.clone()))?;
            ops::snapshots::delete(&self.ctx, &id).await?;
            Ok(csi::DeleteSnapshotResponse {})
        })
    }

    #[instrument(name = "ListSnapshots", skip_all, fields(rpc.code))]
    async fn list_snapshots(
        &self,
        req: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let r = req.into_inner();
        run!({
            if !r.starting_token.is_empty() && SnapshotId::parse(&r.starting_token).is_err() {
                return Err(Error::BadToken(r.starting_token));
            }
            let listing = ops::snapshots::Listing {
                snapshot_id: &r.snapshot_id,
                source_volume_id: &r.source_volume_id,
                token: &r.starting_token,
                max: r.max_entries,
            };
            let (page, next_token) = ops::snapshots::list_page(&self.ctx, &listing).await?;
            let entries = page
                .into_iter()
                .map(|(id, s)| csi::list_snapshots_response::Entry {
                    snapshot: Some(convert::snapshot(&id, &s)),
                })
                .collect();
            Ok(csi::ListSnapshotsResponse {
                entries,
                next_token,
            })
        })
    }

    #[instrument(name = "GetSnapshot", skip_all, fields(snapshot.id = %req.get_ref().snapshot_id, rpc.code))]
    async fn get_snapshot(
        &self,
        req: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let r = req.into_inner();
        run!({
            required("snapshot_id", &r.snapshot_id)?;
            let (id, s) = ops::snapshots::get(&self.ctx, &r.snapshot_id).await?;
            Ok(csi::GetSnapshotResponse {
                snapshot: Some(convert::snapshot(&id, &s)),
            })
        })
    }

    #[instrument(name = "ControllerExpandVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn controller_expand_volume(
        &self,
        req: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        run!({
            required("volume_id", &r.volume_id)?;
            let Some(cr) = r.capacity_range.as_ref() else {
                return Err(Error::Invalid("capacity_range is required".into()));
            };
            let (required_bytes, limit) = range(Some(cr))?;
            let id = volume_id(&r.volume_id)?;
            if let Some(c) = &r.volume_capability {
                caps::check(c, caps::Kind::by_id(id.node.is_none())).map_err(Error::Invalid)?;
            }
            let _g = self.ctx.locks.try_acquire(id.lock_key())?;
            let e = ops::volumes::expand(&self.ctx, &id, required_bytes, limit).await?;
            Ok(csi::ControllerExpandVolumeResponse {
                capacity_bytes: e.capacity as i64,
                node_expansion_required: e.node_expansion_required,
            })
        })
    }

    #[instrument(name = "ControllerGetVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn controller_get_volume(
        &self,
        req: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        let r = req.into_inner();
        run!({
            let id = volume_id(&r.volume_id)?;
            let v = ops::volumes::get(&self.ctx, &id).await?;
            let reach = ops::reach(&self.ctx, &id).await;
            Ok(csi::ControllerGetVolumeResponse {
                volume: Some(convert::volume(&id, v.capacity, &reach)),
                status: Some(csi::controller_get_volume_response::VolumeStatus {
                    published_node_ids: v.published.clone(),
                    volume_condition: Some(convert::condition(&v)),
                }),
            })
        })
    }

    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "pool-csi volumes have no mutable parameters",
        ))
    }
}
