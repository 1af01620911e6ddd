//! The agent API the controller calls: pool and volume operations on this node.

pub mod server;
