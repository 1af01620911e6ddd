//! Mutual TLS for the agent API: the node agent accepts only clients whose
//! certificate the cluster's CA signed, and the controller (and poolctl)
//! accept only agents whose certificate the CA signed for the agent name.
//! Agents are dialled by pod IP, so the name checked is a fixed one
//! (`pool-csi-agent` by default) rather than an address.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name agent certificates carry (subjectAltName DNS).
pub const DEFAULT_SERVER_NAME: &str = "pool-csi-agent";

/// PEM files: this side's certificate and key, and the CA that signs the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read TLS file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("give all three of --agent-tls-cert, --agent-tls-key and --agent-tls-ca, or none")]
    Partial,
}

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|source| TlsError::Read {
        path: p.to_path_buf(),
        source,
    })
}

impl TlsFiles {
    /// All three or none; a partial set is an error rather than silently plain text.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key, ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(Self { cert, key, ca })),
            (None, None, None) => Ok(None),
            _ => Err(TlsError::Partial),
        }
    }

    /// The agent's side: present our certificate, demand a client certificate.
    pub fn server(&self) -> Result<ServerTlsConfig, TlsError> {
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .client_ca_root(Certificate::from_pem(read(&self.ca)?)))
    }

    /// The caller's side: present our certificate, check the agent's.
    pub fn client(&self, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
        Ok(ClientTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .domain_name(server_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_files_or_none() {
        assert_eq!(TlsFiles::from_flags(None, None, None).unwrap(), None);
        assert!(
            TlsFiles::from_flags(Some("c".into()), Some("k".into()), Some("a".into()))
                .unwrap()
                .is_some()
        );
        assert!(matches!(
            TlsFiles::from_flags(Some("c".into()), None, None),
            Err(TlsError::Partial)
        ));
    }

    #[test]
    fn missing_files_are_named() {
        let t = TlsFiles {
            cert: "/no/cert.pem".into(),
            key: "/no/key.pem".into(),
            ca: "/no/ca.pem".into(),
        };
        let e = t.server().unwrap_err();
        assert!(e.to_string().contains("/no/cert.pem"), "{e}");
    }
}
