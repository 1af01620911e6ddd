//! The node's typed configuration, built from the command line in `main`.

use std::{ffi::OsString, path::PathBuf};

/// Everything the node needs to know, passed down explicitly.
#[derive(Debug, Clone)]
pub struct Config {
    pub driver_name: String,
    pub node_name: String,
    /// Where exports, pid files and other runtime state live.
    pub state_dir: PathBuf,
    /// Root of sysfs (tests point it at fixture trees).
    pub sysfs_root: PathBuf,
    /// Where pool Secrets are mounted (`<dir>/<secretRef>/password`).
    pub secrets_dir: PathBuf,
    /// The mount table to read.
    pub mountinfo: PathBuf,
    /// kubelet's root directory: every path from the CO lies under it.
    pub kubelet_dir: PathBuf,
    /// Prefix for every external command (e.g. nsenter into the host).
    pub command_prefix: Vec<OsString>,
    /// Attach raw files with direct I/O.
    pub loop_direct_io: bool,
    /// Report at most this many volumes per node to the scheduler (0: no limit).
    pub max_volumes_per_node: i64,
    /// What the host's ploop tool and module can do (probed at start-up;
    /// nothing until then).
    pub ploop: crate::formats::ploop::host::PloopHost,
    /// The Kubernetes API, when the node runs in a cluster: LUN pools keep
    /// their claims there, shared by every node of the pool.
    pub cluster: Option<ClusterAccess>,
}

/// A client for the Kubernetes API and the namespace of the driver's objects.
#[derive(Clone)]
pub struct ClusterAccess {
    pub client: kube::Client,
    pub namespace: String,
}

impl std::fmt::Debug for ClusterAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterAccess {{ namespace: {:?} }}", self.namespace)
    }
}

impl Config {
    /// A configuration for tests and the demo: state under `state_dir`, the
    /// real sysfs and mount table.
    pub fn local(node_name: &str, state_dir: PathBuf) -> Self {
        Self {
            driver_name: pool_csi_common::DEFAULT_DRIVER_NAME.into(),
            node_name: node_name.into(),
            state_dir,
            sysfs_root: "/sys".into(),
            secrets_dir: default_secrets_dir(),
            mountinfo: "/proc/self/mountinfo".into(),
            kubelet_dir: DEFAULT_KUBELET_DIR.into(),
            command_prefix: Vec::new(),
            loop_direct_io: true,
            max_volumes_per_node: 0,
            ploop: Default::default(),
            cluster: None,
        }
    }
}

/// Where kubelet keeps pods' volumes unless told otherwise.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";

fn default_secrets_dir() -> PathBuf {
    "/etc/pool-csi/secrets".into()
}
