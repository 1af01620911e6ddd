//! The node's error type. Every variant says what failed with the context to
//! act on it; the gRPC code is chosen in one exhaustive match.

use crate::{exec::ExecError, tools::persist::PrError};
use pool_csi_common::GrpcCode;
use std::path::PathBuf;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names a pool this node does not have.
    #[error("pool {pool:?} is not defined on node {node}")]
    PoolNotFound { pool: String, node: String },
    /// The node has not read its pools' definitions yet (from the cluster).
    #[error("node {node} is starting: it has not read its StoragePools from the cluster yet; retry in a few seconds")]
    PoolsNotRead { node: String },
    /// The pool exists but is not running (not built, device missing …).
    #[error("pool {pool:?} is not running: {why}")]
    PoolNotRunning { pool: String, why: String },
    /// The volume does not exist in its pool.
    #[error("volume {name:?} not found in pool {pool:?}")]
    VolumeNotFound { pool: String, name: String },
    /// The volume id names another node: nothing of it is here.
    #[error("volume {name:?} of pool {pool:?} lives on node {home}, not on this node {here}")]
    VolumeElsewhere {
        pool: String,
        name: String,
        home: String,
        here: String,
    },
    /// A volume id this driver did not make.
    #[error("volume {id:?} is not a pool-csi volume id: {why}")]
    UnknownVolumeId { id: String, why: String },
    /// Nothing of the volume is at the path the CO named.
    #[error("volume {name:?} of pool {pool:?} is not at {path}")]
    VolumeNotAt {
        pool: String,
        name: String,
        path: PathBuf,
    },
    /// The volume is not attached on this node.
    #[error("volume {name:?} of pool {pool:?} is not staged on node {node}")]
    NotStaged {
        pool: String,
        name: String,
        node: String,
    },
    /// A path that must be a mount point is not one.
    #[error("{path} is not mounted")]
    NotMounted { path: PathBuf },
    /// The snapshot does not exist in its pool.
    #[error("snapshot {name:?} not found in pool {pool:?}")]
    SnapshotNotFound { pool: String, name: String },
    /// A volume or snapshot of this name exists with other properties.
    #[error("{what} {name:?} already exists in pool {pool:?} with {why}")]
    NameTaken {
        what: &'static str,
        pool: String,
        name: String,
        why: String,
    },
    /// The pool has no room.
    #[error("pool {pool:?} has {available} bytes available, {needed} needed")]
    NoSpace {
        pool: String,
        needed: u64,
        available: u64,
    },
    /// The pool has room, but not in a form the volume can use (extents, slots).
    #[error("pool {pool:?} cannot place the volume: {why}")]
    OutOfSpace { pool: String, why: String },
    /// A size outside what the request allows or the storage can do.
    #[error("{0}")]
    OutOfRange(String),
    /// A required request field is empty.
    #[error("{field} is required")]
    MissingField { field: &'static str },
    /// The request asks for something this pool, format or node cannot do;
    /// the message says what to use instead.
    #[error("{0}")]
    Invalid(String),
    /// A request field or parameter has a value that cannot be used.
    #[error("{field} {value:?}: {why}")]
    InvalidField {
        field: &'static str,
        value: String,
        why: String,
    },
    /// The volume is in use where the operation needs it idle.
    #[error("{what} is in use: {by}")]
    InUse { what: String, by: String },
    /// The operation conflicts with the volume's current state.
    #[error("{0}")]
    Precondition(String),
    /// A file or image pool-csi reads is damaged.
    #[error("{path} is corrupt: {why}")]
    Corrupt { path: PathBuf, why: String },
    /// The volume is attached through something that cannot do the
    /// operation online.
    #[error("{what} is attached through {by}, which cannot {action}; {instead}")]
    AttachedThrough {
        what: String,
        by: String,
        action: &'static str,
        instead: &'static str,
    },
    /// A device already holds data; nothing was formatted.
    #[error("refusing to format {device}: it already holds {found}")]
    NotBlank { device: PathBuf, found: String },
    /// The volume's loop device was detached by another program and its
    /// number given to another file while this call used it (retry).
    #[error("loop device {device} stopped being backed by {file} while this call used it (another program detached it); nothing was formatted or detached; retry")]
    LoopTaken { device: PathBuf, file: PathBuf },
    /// A filesystem call failed.
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An external command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A LUN's persistent reservations could not be read or changed.
    #[error(transparent)]
    Reservation(#[from] PrError),
    /// A shared volume is not released for a node that could not be fenced
    /// off it.
    #[error("volume {name:?} stays published on node {holder}: {why}")]
    NotFenced {
        name: String,
        holder: String,
        why: String,
    },
    /// A shared volume's LUN cannot be reached from this node to fence its
    /// holder off it (another node may).
    #[error("volume {name:?} stays published on node {holder}: its LUN cannot be reached from node {node} to fence it off: {why}")]
    FenceUnreachable {
        name: String,
        holder: String,
        node: String,
        why: String,
    },
    /// qemu-storage-daemon refused a QMP command.
    #[error(transparent)]
    Qmp(#[from] crate::tools::qsd::QmpError),
    /// Another operation on the same volume is running.
    #[error(transparent)]
    Busy(#[from] pool_csi_common::oplock::Busy),
    /// Other nodes kept changing the LUN claims this operation needs (retry).
    #[error("the LUN claims of pool {pool:?} ({place}) changed {attempts} times in a row under this request; retry")]
    Contended {
        pool: String,
        place: String,
        attempts: u32,
    },
    /// The LUN at a claimed volume's address is another LUN now (replaced
    /// on the storage side): attaching or wiping it would hit someone
    /// else's data.
    #[error("{at} of {origin} is another LUN now (handed out as {claimed}, now {found}): it was replaced on the storage side and the volume's data is not there; delete the volume")]
    LunChanged {
        at: String,
        origin: String,
        claimed: String,
        found: String,
    },
    /// The Kubernetes API server did not answer as needed.
    #[error("cannot reach {what} in the Kubernetes API")]
    Cluster {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the volume is not on this node at all (gone, or elsewhere).
    pub fn is_volume_gone(&self) -> bool {
        matches!(
            self,
            Self::VolumeNotFound { .. } | Self::VolumeElsewhere { .. }
        )
    }

    /// The node has not read its pools yet: nothing can be judged absent.
    pub fn is_pools_not_read(&self) -> bool {
        matches!(self, Self::PoolsNotRead { .. })
    }

    /// INVALID_ARGUMENT naming the field, its value and what is wrong.
    pub fn invalid(field: &'static str, value: &str, why: impl std::fmt::Display) -> Self {
        Self::InvalidField {
            field,
            value: value.into(),
            why: why.to_string(),
        }
    }
}

impl GrpcCode for Error {
    fn grpc_code(&self) -> Code {
        match self {
            Self::PoolNotFound { .. } => Code::NotFound,
            Self::PoolNotRunning { .. } => Code::FailedPrecondition,
            Self::VolumeNotFound { .. }
            | Self::VolumeElsewhere { .. }
            | Self::UnknownVolumeId { .. }
            | Self::VolumeNotAt { .. }
            | Self::SnapshotNotFound { .. } => Code::NotFound,
            Self::NameTaken { .. } => Code::AlreadyExists,
            Self::NoSpace { .. } | Self::OutOfSpace { .. } => Code::ResourceExhausted, // the provisioner tries another node
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Invalid(_) | Self::InvalidField { .. } | Self::MissingField { .. } => {
                Code::InvalidArgument
            }
            Self::InUse { .. }
            | Self::Precondition(_)
            | Self::NotBlank { .. }
            | Self::NotStaged { .. }
            | Self::NotMounted { .. }
            | Self::Corrupt { .. }
            | Self::LunChanged { .. }
            | Self::NotFenced { .. }
            | Self::AttachedThrough { .. } => Code::FailedPrecondition,
            Self::Reservation(e) => match e {
                PrError::Unsupported { .. } | PrError::Conflict { .. } => Code::FailedPrecondition,
                PrError::Parse { .. } => Code::Internal,
                PrError::Exec(e) => e.grpc_code(),
            },
            Self::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                Code::ResourceExhausted
            }
            // A network filesystem that stopped answering (netfs pools):
            // the pool's storage is unavailable, not broken.
            Self::Io { source, .. } if unreachable(source) => Code::Unavailable,
            Self::Io { .. } => Code::Internal,
            Self::Exec(e) => e.grpc_code(),
            Self::Qmp(_) => Code::Internal,
            Self::Busy(_) | Self::Contended { .. } | Self::LoopTaken { .. } => Code::Aborted,
            Self::Cluster { .. } | Self::FenceUnreachable { .. } | Self::PoolsNotRead { .. } => {
                Code::Unavailable
            }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        pool_csi_common::status_from(e)
    }
}

/// `map_err` helper: `.map_err(io("create", &path))`.
pub fn io<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A network filesystem that stopped answering (netfs pools): the pool's
/// storage is unavailable, not broken.
fn unreachable(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOTCONN | Errno::STALE | Errno::HOSTDOWN | Errno::HOSTUNREACH)
    )
}
