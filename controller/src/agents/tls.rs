//! The client side of the agent API's mutual TLS, as flags both the
//! controller and poolctl take.

use tonic::transport::ClientTlsConfig;

/// Mutual-TLS flags for talking to agents (controller and poolctl).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM client certificate presented to the agents (with --agent-tls-key and --agent-tls-ca).
    #[arg(long, env = "AGENT_TLS_CERT")]
    pub agent_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --agent-tls-cert.
    #[arg(long, env = "AGENT_TLS_KEY")]
    pub agent_tls_key: Option<std::path::PathBuf>,
    /// PEM CA that signs the agents' certificates.
    #[arg(long, env = "AGENT_TLS_CA")]
    pub agent_tls_ca: Option<std::path::PathBuf>,
    /// The name the agents' certificates are issued for.
    #[arg(long, env = "AGENT_TLS_SERVER_NAME", default_value = pool_csi_common::tls::DEFAULT_SERVER_NAME)]
    pub agent_tls_server_name: String,
}

impl TlsArgs {
    /// The client TLS configuration, or None for plain text.
    pub fn client_config(&self) -> Result<Option<ClientTlsConfig>, String> {
        let files = pool_csi_common::tls::TlsFiles::from_flags(
            self.agent_tls_cert.clone(),
            self.agent_tls_key.clone(),
            self.agent_tls_ca.clone(),
        )
        .map_err(|e| e.to_string())?;
        files
            .map(|f| {
                f.client(&self.agent_tls_server_name)
                    .map_err(|e| pool_csi_common::full_message(&e))
            })
            .transpose()
    }
}
