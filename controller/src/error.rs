//! The controller's error type and its gRPC codes.

use pool_csi_common::{params::ParamError, GrpcCode};
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field is missing or a value is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A StorageClass parameter cannot be used.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The volume or snapshot does not exist.
    #[error("{0}")]
    NotFound(String),
    /// No agent is known for the node a volume lives on.
    #[error("no node agent is known for node {node:?}; is pool-csi-node running there?")]
    UnknownNode { node: String },
    /// A node plugin's own Controller service (distributed provisioning)
    /// asked about what is not on its node.
    #[error("{what}: this Controller service is node {here:?}'s own (distributed provisioning) and serves that node's pools only")]
    NotHere { what: String, here: String },
    /// No node reports the pool.
    #[error("pool {pool:?} is not defined on any node{}", if *.reachable { "" } else { " that answered (some agents are unreachable)" })]
    NoPool { pool: String, reachable: bool },
    /// The pool is starting on its nodes (their plugins just started): retry.
    #[error("pool {pool:?} is still starting on node(s) {nodes}; retry in a moment")]
    Starting { pool: String, nodes: String },
    /// No candidate node had room.
    #[error("no node can hold {needed} bytes in pool {pool:?}: {why}")]
    NoCapacity {
        pool: String,
        needed: u64,
        why: String,
    },
    /// The request cannot be served as things are; the message says what to change.
    #[error("{0}")]
    Precondition(String),
    /// The size does not fit the request's range.
    #[error("{0}")]
    OutOfRange(String),
    /// A name is taken by something incompatible.
    #[error("{0}")]
    AlreadyExists(String),
    /// A pagination token we did not hand out.
    #[error("invalid starting_token {0:?}: start the listing again")]
    BadToken(String),
    /// Another operation on the same volume is running.
    #[error(transparent)]
    Busy(#[from] pool_csi_common::oplock::Busy),
    /// The agent answered with an error (or did not answer): its code
    /// passes through.
    #[error(transparent)]
    Agent(#[from] crate::agents::client::AgentError),
}

impl GrpcCode for Error {
    fn grpc_code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Param(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::UnknownNode { .. } | Self::NotHere { .. } => Code::Unavailable,
            Self::NoPool {
                reachable: true, ..
            } => Code::InvalidArgument,
            Self::NoPool {
                reachable: false, ..
            } => Code::Unavailable,
            Self::NoCapacity { .. } => Code::ResourceExhausted,
            Self::Starting { .. } => Code::Unavailable, // the provisioner retries with backoff
            Self::OutOfRange(_) => Code::OutOfRange,
            Self::Precondition(_) => Code::FailedPrecondition,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::BadToken(_) => Code::Aborted, // CSI: an invalid starting_token is ABORTED
            Self::Busy(_) => Code::Aborted,
            Self::Agent(e) => e.grpc_code(),
        }
    }
}

impl Error {
    /// Another operation on the same volume is running (here or on its
    /// node): the same call later may succeed.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Busy(_) => true,
            Self::Agent(e) => e.is_busy(),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
