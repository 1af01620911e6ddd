//! The agent API the controller calls: pool and volume operations on this node.

mod convert;
mod paging;
pub mod server;
