//! The CSI services the sidecars talk to.

pub mod controller;
mod convert;
