//! Mounts: the mount table parser and the mount system calls.

pub mod mounter;
pub mod mountinfo;
