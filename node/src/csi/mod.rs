//! The CSI services kubelet talks to.

pub mod node;
