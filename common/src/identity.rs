//! The CSI Identity service both binaries serve: name, version, capabilities
//! and readiness (false until start-up has finished).

use pool_csi_proto::csi::{self, identity_server::Identity, plugin_capability};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct IdentityService {
    name: String,
    capabilities: Vec<csi::PluginCapability>,
    ready: Arc<AtomicBool>,
}

impl IdentityService {
    /// `controller` adds CONTROLLER_SERVICE and expansion capabilities.
    pub fn new(name: &str, controller: bool, ready: Arc<AtomicBool>) -> Self {
        use plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
        let svc = |t: service::Type| csi::PluginCapability {
            r#type: Some(Type::Service(Service { r#type: t as i32 })),
        };
        let exp = |t: volume_expansion::Type| csi::PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion { r#type: t as i32 })),
        };
        let mut capabilities = vec![svc(service::Type::VolumeAccessibilityConstraints)];
        if controller {
            capabilities.push(svc(service::Type::ControllerService));
            capabilities.push(exp(volume_expansion::Type::Online));
            capabilities.push(exp(volume_expansion::Type::Offline));
        }
        Self {
            name: name.into(),
            capabilities,
            ready,
        }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: crate::VERSION.into(),
            manifest: [("project".to_string(), "pool-csi".to_string())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: self.capabilities.clone(),
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse {
            ready: Some(self.ready.load(Ordering::Acquire)),
        }))
    }
}

/// A valid CSI driver name: ≤ 63 chars, alphanumerics with '-' and '.' inside.
pub fn check_driver_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.');
    ok.then_some(())
        .ok_or_else(|| format!("invalid driver name {name:?}: 1-63 of a-z, A-Z, 0-9, '-', '.'"))
}
