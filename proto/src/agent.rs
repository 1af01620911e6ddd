//! Controller ↔ node agent API, generated from `proto/agent/v1/agent.proto`.
#![allow(clippy::all, missing_docs)]
tonic::include_proto!("poolcsi.agent.v1");
