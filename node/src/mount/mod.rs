//! Mounts: the mount table parser, the mount system calls, and freezing
//! mounted filesystems for a copy.

mod fifreeze;
pub mod mounter;
pub mod mountinfo;
pub mod quiesce;
