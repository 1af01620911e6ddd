//! pool-csi contracts: everything the controller, the node agent, the CLI and
//! the tests must agree on. Generated CSI and agent gRPC code, the pool spec
//! (one schema for the cluster resource and the pools file), StorageClass
//! parameter parsing, the volume-id codec, error-code mapping, per-volume
//! operation locks and the serving helpers both binaries share.
#![forbid(unsafe_code)]

pub mod agent;
pub mod caps;
pub mod codes;
pub mod csi;
pub mod identity;
pub mod metrics;
pub mod oplock;
pub mod params;
pub mod pool_spec;
pub mod pool_type;
pub mod serve;
pub mod volume_id;

/// Turns a handler's result into a gRPC response: an error is logged once,
/// here at the RPC boundary, and its code recorded on the RPC's span.
pub fn respond<T, E: GrpcCode + std::error::Error>(
    r: Result<T, E>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let span = tracing::Span::current();
    match r {
        Ok(v) => {
            span.record("rpc.code", "OK");
            Ok(tonic::Response::new(v))
        }
        Err(e) => {
            let status = status_from(e);
            span.record("rpc.code", tracing::field::debug(status.code()));
            tracing::warn!(code = ?status.code(), "{}", status.message());
            Err(status)
        }
    }
}

/// The CSI driver name reported by GetPluginInfo unless configured otherwise.
pub const DEFAULT_DRIVER_NAME: &str = "pool-csi.io";
/// Topology key for node-local pools.
pub const TOPOLOGY_NODE_KEY: &str = "pool-csi.io/node";
/// Version of the whole project, reported as vendor_version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use codes::{full_message, status_from, GrpcCode};
pub use oplock::{OpGuard, OpLocks};
pub use params::VolumeParams;
pub use pool_spec::{PoolDefinition, StoragePoolSpec};
pub use pool_type::{Allocation, PoolType, VolumeFormat};
pub use volume_id::{storage_name, SnapshotId, VolumeId};
