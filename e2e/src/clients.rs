//! CSI clients over unix sockets.

use hyper_util::rt::TokioIo;
use pool_csi_proto::csi::{
    controller_client::ControllerClient, identity_client::IdentityClient, node_client::NodeClient,
};
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint, Uri};

/// A channel to a gRPC server on a unix socket.
pub async fn uds_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::try_from("http://[::1]:1")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
}

/// The CSI clients a CO would hold.
#[derive(Clone)]
pub struct Clients {
    pub node: NodeClient<Channel>,
    pub node_identity: IdentityClient<Channel>,
    pub controller: ControllerClient<Channel>,
    pub ctrl_identity: IdentityClient<Channel>,
}

impl Clients {
    /// Whether the node plugin's socket also serves the Controller service
    /// (`--controller-service`), as its Identity says.
    pub async fn node_serves_controller(&mut self) -> bool {
        use pool_csi_proto::csi::{plugin_capability, GetPluginCapabilitiesRequest};
        let caps = self
            .node_identity
            .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
            .await
            .expect("GetPluginCapabilities")
            .into_inner();
        caps.capabilities.iter().any(|cap| {
            matches!(&cap.r#type, Some(plugin_capability::Type::Service(s))
                if s.r#type == plugin_capability::service::Type::ControllerService as i32)
        })
    }

    /// CreateVolume through the controller; the new volume's id.
    pub async fn create_volume_id(
        &mut self,
        r: pool_csi_proto::csi::CreateVolumeRequest,
    ) -> String {
        self.controller
            .create_volume(r)
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("a volume")
            .volume_id
    }

    pub async fn connect(
        node_sock: &Path,
        ctrl_sock: &Path,
    ) -> Result<Self, tonic::transport::Error> {
        let n = uds_channel(node_sock).await?;
        let c = uds_channel(ctrl_sock).await?;
        Ok(Self {
            node: NodeClient::new(n.clone()),
            node_identity: IdentityClient::new(n),
            controller: ControllerClient::new(c.clone()),
            ctrl_identity: IdentityClient::new(c),
        })
    }
}
