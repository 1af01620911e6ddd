//! pool-csi's wire contracts, and nothing else: the CSI v1 services and the
//! controller ↔ node agent API, generated from `proto/` by tonic and prost.
//! Everything built on top of them (ids, parameters, the pool spec, the
//! serving helpers) lives in `pool-csi-common`.
#![forbid(unsafe_code)]

pub mod agent;
pub mod csi;
