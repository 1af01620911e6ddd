//! What only the leading controller replica does: win and keep the Lease
//! ([`election`]), and run the round ([`round`]) that gathers the agents'
//! [`reports`] and drives the StoragePool [`status`], the
//! [`static_pvs`] of LUN pools (and the [`recycle`] of Released ones),
//! [`node_loss`] and the [`orphan_check`] ([`orphans`]), which share one
//! list of the cluster's PersistentVolumes per round ([`round_pvs`]).

pub mod election;
pub mod events;
pub mod node_loss;
pub mod orphan_check;
pub mod orphans;
pub mod recycle;
pub mod reports;
pub mod round;
pub mod round_pvs;
pub mod static_pvs;
pub mod status;
