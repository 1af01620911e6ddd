//! CSI Node service: thin handlers that check arguments, take the volume's
//! lock, call one op, and map the error.

use crate::{
    error::Error,
    ops::{self, publish::Writers, Access},
    NodeCtx,
};
use pool_csi_common::{caps, respond, LockKey, VolumeId};
use pool_csi_proto::csi::{
    self, node_server::Node, node_service_capability, volume_capability::AccessType,
};
use std::{path::PathBuf, sync::Arc};
use tonic::{Request, Response, Status};
use tracing::instrument;

#[derive(Clone)]
pub struct NodeService {
    ctx: Arc<NodeCtx>,
}

/// The capability against what the id says: MULTI_NODE modes only for a
/// shared pool's volume.
fn reach_of(cap: Option<&csi::VolumeCapability>, id: &VolumeId) -> Result<(), Error> {
    match cap {
        Some(c) => caps::check(c, caps::Kind::by_id(id.node.is_none())).map_err(Error::Invalid),
        None => Ok(()),
    }
}

impl NodeService {
    pub fn new(ctx: Arc<NodeCtx>) -> Self {
        Self { ctx }
    }
}

/// INVALID_ARGUMENT when a REQUIRED field is empty.
fn required(field: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::MissingField { field });
    }
    Ok(())
}

fn volume_id(id: &str) -> Result<VolumeId, Error> {
    VolumeId::parse(id).map_err(|e| Error::UnknownVolumeId {
        id: id.into(),
        why: e.to_string(),
    })
}

/// The lock of a volume id; an id this driver cannot parse is locked as
/// given (unpublishing works on the target path alone).
fn id_key(id: &str) -> LockKey {
    VolumeId::parse(id)
        .map(|id| id.lock_key())
        .unwrap_or_else(|_| LockKey::Unparsed(id.into()))
}

/// The access a capability asks for; the filesystem defaults to the
/// StorageClass's fstype (in the volume context) or ext4.
fn access_of(
    cap: Option<&csi::VolumeCapability>,
    ctx: &std::collections::HashMap<String, String>,
) -> Result<(Access, bool), Error> {
    let cap = cap.ok_or(Error::MissingField {
        field: "volume_capability",
    })?;
    // Checked before the id is: as for a shared volume, whether it is a
    // directory is known once its pool is asked (see `reach_of`).
    caps::check(cap, caps::Kind::by_id(true)).map_err(Error::Invalid)?;
    let access = match &cap.access_type {
        Some(AccessType::Mount(m)) => {
            let fs = [
                m.fs_type.as_str(),
                ctx.get("fsType").map(String::as_str).unwrap_or(""),
                "ext4",
            ]
            .into_iter()
            .find(|f| !f.is_empty())
            .unwrap_or("ext4");
            // The volume context comes from the PV: check it like the capability.
            if !pool_csi_common::params::FILESYSTEMS.contains(&fs) {
                return Err(Error::invalid(
                    "fsType",
                    fs,
                    format_args!(
                        "not supported; supported: {}",
                        pool_csi_common::params::FILESYSTEMS.join(", ")
                    ),
                ));
            }
            Access::Mount {
                fs_type: fs.to_string(),
                flags: m.mount_flags.clone(),
            }
        }
        _ => Access::Block,
    };
    Ok((access, caps::is_read_only_mode(cap)))
}

impl NodeService {
    /// A path from the CO, checked as text against the kubelet directory;
    /// its links are checked by [`inside`] in the operation, off the
    /// runtime thread.
    fn path(&self, field: &'static str, p: &str) -> Result<PathBuf, Error> {
        ops::paths::lexical(&self.ctx.cfg.kubelet_dir, field, p)
    }
}

/// Whether a call on volume `id` may wait on storage that does not answer:
/// unless its pool is here and cannot hang, it may (an id this driver
/// cannot parse, None; a pool deleted, or not yet read after a restart,
/// whose share is still mounted). Such calls run off the runtime thread; a
/// local pool's run inline (they are short, and a thread switch would cost
/// each of them).
fn may_hang(ctx: &NodeCtx, id: Option<&VolumeId>) -> bool {
    !id.is_some_and(|id| ops::pool_of(ctx, id).is_ok_and(|p| !p.may_hang()))
}

/// Runs `op` holding `key`, off the runtime thread when `off`.
async fn locked<T, F>(ctx: &NodeCtx, key: LockKey, off: bool, op: F) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    match off {
        true => ctx.locks.run_off_thread(key, op).await,
        false => ctx.locks.run(key, op).await,
    }
}

/// The links among `path`'s existing parts stay in the kubelet directory.
fn inside(ctx: &NodeCtx, field: &'static str, path: &std::path::Path) -> Result<(), Error> {
    ops::paths::links_stay_inside(&ctx.cfg.kubelet_dir, field, path)
}

#[tonic::async_trait]
impl Node for NodeService {
    #[instrument(name = "NodeStageVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn node_stage_volume(
        &self,
        req: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                required("volume_id", &r.volume_id)?;
                let staging = self.path("staging_target_path", &r.staging_target_path)?;
                let (access, ro) = access_of(r.volume_capability.as_ref(), &r.volume_context)?;
                let id = volume_id(&r.volume_id)?;
                reach_of(r.volume_capability.as_ref(), &id)?;
                let many = r
                    .volume_capability
                    .as_ref()
                    .is_some_and(caps::is_multi_node);
                let ctx = self.ctx.clone();
                let off = may_hang(&self.ctx, Some(&id));
                let op = async move {
                    inside(&ctx, "staging_target_path", &staging)?;
                    ops::stage::stage(&ctx, &id, &staging, &access, ro, many).await
                };
                locked(&self.ctx, id_key(&r.volume_id), off, op).await?;
                Ok(csi::NodeStageVolumeResponse {})
            }
            .await,
        )
    }

    #[instrument(name = "NodeUnstageVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn node_unstage_volume(
        &self,
        req: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                required("volume_id", &r.volume_id)?;
                let staging = self.path("staging_target_path", &r.staging_target_path)?;
                let id = volume_id(&r.volume_id)?;
                let ctx = self.ctx.clone();
                let off = may_hang(&self.ctx, Some(&id));
                let op = async move {
                    inside(&ctx, "staging_target_path", &staging)?;
                    ops::stage::unstage(&ctx, &id, &staging).await
                };
                locked(&self.ctx, id_key(&r.volume_id), off, op).await?;
                Ok(csi::NodeUnstageVolumeResponse {})
            }
            .await,
        )
    }

    #[instrument(name = "NodePublishVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                required("volume_id", &r.volume_id)?;
                let target = self.path("target_path", &r.target_path)?;
                // pool-csi stages every volume.
                let staging = self.path("staging_target_path", &r.staging_target_path)?;
                let (access, ro_mode) = access_of(r.volume_capability.as_ref(), &r.volume_context)?;
                let id = volume_id(&r.volume_id)?;
                reach_of(r.volume_capability.as_ref(), &id)?;
                let ro = r.readonly || ro_mode;
                let mode = match ro {
                    true => Writers::ReadOnly,
                    false
                        if r.volume_capability
                            .as_ref()
                            .is_some_and(caps::is_single_writer) =>
                    {
                        Writers::Single
                    }
                    false => Writers::Shared,
                };
                let ctx = self.ctx.clone();
                let off = may_hang(&self.ctx, Some(&id));
                let op = async move {
                    inside(&ctx, "target_path", &target)?;
                    inside(&ctx, "staging_target_path", &staging)?;
                    ops::publish::publish(&ctx, &id, &staging, &target, &access, mode).await
                };
                locked(&self.ctx, id_key(&r.volume_id), off, op).await?;
                Ok(csi::NodePublishVolumeResponse {})
            }
            .await,
        )
    }

    #[instrument(name = "NodeUnpublishVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                required("volume_id", &r.volume_id)?;
                let target = self.path("target_path", &r.target_path)?;
                // Unpublishing works on the target path alone, so kubelet can
                // always clean up, even for an id this driver never made.
                let ctx = self.ctx.clone();
                let off = may_hang(&self.ctx, VolumeId::parse(&r.volume_id).ok().as_ref());
                let id = r.volume_id.clone();
                let op = async move {
                    inside(&ctx, "target_path", &target)?;
                    ops::publish::unpublish(&ctx, &id, &target).await
                };
                locked(&self.ctx, id_key(&r.volume_id), off, op).await?;
                Ok(csi::NodeUnpublishVolumeResponse {})
            }
            .await,
        )
    }

    #[instrument(name = "NodeGetVolumeStats", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        use csi::volume_usage::Unit;
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                required("volume_id", &r.volume_id)?;
                required("volume_path", &r.volume_path)?;
                let id = volume_id(&r.volume_id)?;
                ops::stats::check_volume_path(&self.ctx, &id, &r.volume_path)?;
                // Stats take no lock (kubelet asks for each pod using a
                // volume at once), except where they can wait on a share:
                // then one per path is in flight, and kubelet's next ones
                // are ABORTED instead of each holding a thread.
                let s = match may_hang(&self.ctx, Some(&id)) {
                    false => ops::stats::stats(&self.ctx, &id, &r.volume_path).await?,
                    true => {
                        let key = LockKey::Stats(format!("{} at {}", r.volume_id, r.volume_path));
                        let (ctx, path) = (self.ctx.clone(), r.volume_path.clone());
                        let op = async move { ops::stats::stats(&ctx, &id, &path).await };
                        self.ctx.locks.run_off_thread(key, op).await?
                    }
                };
                let usage = |unit: Unit, total: u64, available: u64, used: u64| csi::VolumeUsage {
                    total: total as i64,
                    available: available as i64,
                    used: used as i64,
                    unit: unit as i32,
                };
                let mut out = vec![usage(
                    Unit::Bytes,
                    s.bytes_total,
                    s.bytes_available,
                    s.bytes_used,
                )];
                if let Some((total, free, used)) = s.inodes {
                    out.push(usage(Unit::Inodes, total, free, used));
                }
                Ok(csi::NodeGetVolumeStatsResponse {
                    usage: out,
                    volume_condition: Some(csi::VolumeCondition {
                        abnormal: s.abnormal.is_some(),
                        message: s.abnormal.unwrap_or_else(|| "volume is healthy".into()),
                    }),
                })
            }
            .await,
        )
    }

    #[instrument(name = "NodeExpandVolume", skip_all, fields(volume.id = %req.get_ref().volume_id, rpc.code))]
    async fn node_expand_volume(
        &self,
        req: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        let r = req.into_inner();
        respond::<_, Error>(
            async {
                required("volume_id", &r.volume_id)?;
                required("volume_path", &r.volume_path)?;
                let range = r.capacity_range.unwrap_or_default();
                if range.required_bytes < 0 || range.limit_bytes < 0 {
                    return Err(Error::invalid(
                        "capacity_range",
                        &format!("{}..{}", range.required_bytes, range.limit_bytes),
                        "must not be negative",
                    ));
                }
                let id = volume_id(&r.volume_id)?;
                ops::stats::check_volume_path(&self.ctx, &id, &r.volume_path)?;
                let ctx = self.ctx.clone();
                let off = may_hang(&self.ctx, Some(&id));
                let path = r.volume_path.clone();
                let op = async move {
                    ops::stats::expand(&ctx, &id, &path, range.required_bytes as u64).await
                };
                let size = locked(&self.ctx, id_key(&r.volume_id), off, op).await?;
                Ok(csi::NodeExpandVolumeResponse {
                    capacity_bytes: size as i64,
                })
            }
            .await,
        )
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{rpc::Type, Rpc, Type as T};
        let cap = |t: Type| csi::NodeServiceCapability {
            r#type: Some(T::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                cap(Type::StageUnstageVolume),
                cap(Type::GetVolumeStats),
                cap(Type::ExpandVolume),
                cap(Type::VolumeCondition),
                cap(Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        let node = self.ctx.cfg.node_name.clone();
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: node.clone(),
            max_volumes_per_node: self.ctx.cfg.max_volumes_per_node,
            accessible_topology: Some(csi::Topology {
                segments: [(pool_csi_common::TOPOLOGY_NODE_KEY.to_string(), node)].into(),
            }),
        }))
    }
}
