//! What only the leading controller replica does: win and keep the Lease
//! ([`election`]), and run the round ([`round`]) that gathers the agents'
//! [`reports`] and drives the StoragePool [`status`] and the
//! [`static_pvs`] of LUN pools.

pub mod election;
pub mod reports;
pub mod round;
pub mod static_pvs;
pub mod status;
