//! The agent API the controller calls: pool and volume operations on this node.

mod convert;
pub mod server;
