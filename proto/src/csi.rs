//! CSI v1 types and services, generated from `proto/csi/v1/csi.proto`.
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("csi.v1");
