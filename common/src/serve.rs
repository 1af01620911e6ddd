//! Serving helpers both binaries share: endpoint parsing, a private unix
//! socket, the shutdown signal and tracing set-up.

use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Where a gRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

/// An endpoint string that is neither `unix://PATH` nor `tcp://HOST:PORT`.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid endpoint {0:?}: expected unix:///path/to.sock or tcp://ADDR:PORT")]
    Syntax(String),
    #[error("failed to prepare unix socket {path}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s
            .strip_prefix("unix://")
            .or_else(|| s.strip_prefix("unix:"))
        {
            let p = Path::new(p);
            if p.is_absolute() {
                return Ok(Self::Unix(p.to_path_buf()));
            }
        } else if let Some(a) = s.strip_prefix("tcp://") {
            if let Ok(addr) = a.parse() {
                return Ok(Self::Tcp(addr));
            }
        } else if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        Err(EndpointError::Syntax(s.to_string()))
    }
}

/// Binds a unix socket only root (and the socket's group) may use. A stale
/// socket from an earlier run is removed; any other file at the path is an
/// error rather than something to delete. Connections accept any HTTP/2
/// `:authority` ([`crate::any_authority`]).
pub fn bind_private_uds(
    path: &Path,
) -> Result<
    impl tokio_stream::Stream<
        Item = std::io::Result<crate::any_authority::AnyAuthority<tokio::net::UnixStream>>,
    >,
    EndpointError,
> {
    use tokio_stream::StreamExt;
    let err = |source| EndpointError::Socket {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::other(
                "exists and is not a socket; refusing to remove it",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(UnixListenerStream::new(listener).map(|c| c.map(crate::any_authority::AnyAuthority::new)))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

/// How long a server drains open requests after a shutdown signal.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the tracing subscriber: `filter` is an EnvFilter directive
/// (`info`, `pool_csi_node=debug` …); `json` switches to one JSON object per line.
pub fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:///run/csi.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/csi.sock".into())
        );
        assert_eq!(
            "unix:/run/csi.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/csi.sock".into())
        );
        assert_eq!(
            "/run/csi.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/csi.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:9000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:9000".parse().unwrap())
        );
        for bad in ["unix://relative.sock", "tcp://nohost", "http://x", ""] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_but_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("csi.sock");
        drop(bind_private_uds(&sock).unwrap());
        drop(bind_private_uds(&sock).unwrap());
        let file = dir.path().join("data");
        std::fs::write(&file, b"keep").unwrap();
        assert!(bind_private_uds(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    }
}
