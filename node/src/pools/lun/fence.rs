//! Fencing a shared LUN with SCSI-3 persistent reservations, as
//! pacemaker's fence_scsi does: the node using a LUN is its only registrant
//! and holds a Write Exclusive – Registrants Only reservation, so nobody
//! else can write to it; taking the LUN pre-empts (and aborts the commands
//! of) every other key. A node that attaches a shared volume takes its LUN;
//! a node that releases a volume for a node it is not (ControllerUnpublish
//! for a lost node, answered elsewhere) takes it first, so the lost node —
//! if it is only partitioned, not down — can no longer write. The last user
//! keeps its registration after a clean detach: dropping it would drop the
//! reservation, and with it the fence on any node pre-empted before.

use super::LunPool;
use crate::{
    error::{Error, Result},
    pools::lun_claims::Claim,
    tools::persist::{node_key, PrError, Reservations},
};
use pool_csi_common::pool_spec::Fencing;
use std::path::Path;

/// Makes `mine` the LUN's only key and the reservation's holder; returns
/// the keys it pre-empted.
pub async fn take(pr: &dyn Reservations, mine: u64) -> Result<Vec<u64>, PrError> {
    pr.register(mine).await?;
    let mut removed = Vec::new();
    for k in pr.keys().await? {
        if k != mine {
            // PREEMPT AND ABORT is optional (tgt lacks it); PREEMPT alone
            // still removes the key, and the target refuses its next write.
            match pr.preempt(mine, k, true).await {
                Err(PrError::Unsupported { .. }) => pr.preempt(mine, k, false).await?,
                r => r?,
            }
            removed.push(k);
        }
    }
    match pr.reservation().await? {
        None => pr.reserve(mine).await?,
        Some(r) if r.key == mine => {}
        Some(r) => {
            return Err(PrError::Conflict {
                device: pr.device(),
                what: format!("taking the reservation: key {:#x} still holds it", r.key),
            })
        }
    }
    // What the target says now, not what the commands meant.
    let left: Vec<u64> = pr
        .keys()
        .await?
        .into_iter()
        .filter(|k| *k != mine)
        .collect();
    if !left.is_empty() {
        return Err(PrError::Conflict {
            device: pr.device(),
            what: format!("pre-empting: keys {left:#x?} are still registered"),
        });
    }
    Ok(removed)
}

/// Drops the reservation an earlier user left, and every registration with
/// it: a LUN that a pool not fencing uses must not keep one (every write
/// would be refused). Registrations alone block nothing and are left.
/// Returns whether it cleared.
pub async fn clear(pr: &dyn Reservations, mine: u64) -> Result<bool, PrError> {
    if pr.reservation().await?.is_none() {
        return Ok(false);
    }
    pr.register(mine).await?;
    pr.clear(mine).await?;
    Ok(true)
}

/// How a LUN pool fences (or, not fencing, keeps a LUN writable).
impl LunPool {
    /// Whether this pool fences: its volumes move between nodes (claims
    /// in the cluster) and `fencing` is not `none`.
    pub(super) fn fences(&self) -> bool {
        self.fencing == Fencing::Reservations && self.claims.shared()
    }

    /// This node takes the LUN of `name` at `device` (see [`take`]):
    /// afterwards no other node can write to it. The claim records whether
    /// the LUN has reservations at all; one without them is used unfenced.
    /// A pool that does not fence drops any reservation an earlier user
    /// left instead (its writes would be refused).
    pub(super) async fn take_here(&self, name: &str, device: &Path) -> Result<()> {
        let pr = self.source.reservations(device);
        match self.become_writer(name, pr.as_ref()).await? {
            Some(supported) => self.record_reservations(name, supported).await,
            None => Ok(()),
        }
    }

    /// Makes this node the one that may write to the LUN behind `pr`: takes
    /// it where the pool fences (`Some(whether the LUN has reservations)`),
    /// else drops a reservation an earlier user left (`None`).
    pub(super) async fn become_writer(
        &self,
        name: &str,
        pr: &dyn Reservations,
    ) -> Result<Option<bool>> {
        if !self.fences() {
            self.clear_left(name, pr).await;
            return Ok(None);
        }
        match take(pr, node_key(&self.node)).await {
            Ok(removed) => {
                if !removed.is_empty() {
                    tracing::warn!(pool.name = %self.name, volume = %name, keys = ?removed, "pre-empted the reservation keys of the LUN's earlier users");
                }
                Ok(Some(true))
            }
            Err(e @ PrError::Unsupported { .. }) => {
                tracing::warn!(pool.name = %self.name, volume = %name, error = %e, "used unfenced");
                Ok(Some(false))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A pool that does not fence drops a reservation an earlier user left
    /// (its writes would be refused). Best effort: a LUN without
    /// reservations, or a tool that fails, leaves the attach as it was.
    async fn clear_left(&self, name: &str, pr: &dyn Reservations) {
        match clear(pr, node_key(&self.node)).await {
            Ok(true) => {
                tracing::warn!(pool.name = %self.name, volume = %name, "dropped the reservation an earlier user left on the LUN (this pool does not fence)")
            }
            Ok(false) | Err(PrError::Unsupported { .. }) => {}
            Err(e) => {
                tracing::warn!(pool.name = %self.name, volume = %name, error = %e, "could not check the LUN for a reservation an earlier user left")
            }
        }
    }

    async fn record_reservations(&self, name: &str, supported: bool) -> Result<()> {
        self.update(None, |claims| match claims.get_mut(name) {
            Some(c) if c.reservations != Some(supported) => {
                c.reservations = Some(supported);
                Ok(((), true))
            }
            _ => Ok(((), false)),
        })
        .await
    }

    /// Before this node releases `name` for `holder`, another node: takes
    /// the LUN here, which pre-empts `holder`'s key, so `holder` cannot
    /// write to it any more if it is still running. A LUN that cannot be
    /// fenced is not released (unless the pool says `fencing: none`); one
    /// this node cannot reach is UNAVAILABLE, so another node is asked.
    pub(super) async fn fence_off(&self, name: &str, c: &Claim, holder: &str) -> Result<()> {
        if !self.fences() {
            return Ok(());
        }
        let refused = |why: String| Error::NotFenced {
            name: name.into(),
            holder: holder.into(),
            why,
        };
        // In use here already (a stale record): keep it so.
        let here = self.users()?.contains(name);
        if !here {
            self.set_user(name, true)?;
        }
        let fenced = async {
            let device = self.source.device(c).await?;
            let pr = self.source.reservations(&device);
            Ok::<_, Error>(take(pr.as_ref(), node_key(&self.node)).await)
        }
        .await;
        if !here && self.set_user(name, false)? == 0 {
            if let Err(e) = self.source.disconnect().await {
                tracing::warn!(pool.name = %self.name, error = %e, "disconnect after fencing failed");
            }
        }
        match fenced {
            Ok(Ok(removed)) => {
                let gone = removed.contains(&node_key(holder));
                tracing::warn!(pool.name = %self.name, volume = %name, node = %holder, key_removed = gone, "fenced the node off the volume's LUN before releasing it");
                self.record_reservations(name, true).await
            }
            Ok(Err(e @ PrError::Unsupported { .. })) => {
                self.record_reservations(name, false).await?;
                Err(refused(format!(
                    "{e}, so that node cannot be fenced off it before the volume moves. If node {holder} is powered off, set `fencing: none` on pool {:?} to move volumes without fencing",
                    self.name
                )))
            }
            Ok(Err(e)) => Err(refused(format!("fencing it off failed: {e}"))),
            // This node sees another LUN at the claim's place, or cannot
            // reach it: it cannot fence what it cannot see (UNAVAILABLE, so
            // a node that sees the volume's LUN is asked instead).
            Err(e) => Err(Error::FenceUnreachable {
                name: name.into(),
                holder: holder.into(),
                node: self.node.clone(),
                why: pool_csi_common::full_message(&e),
            }),
        }
    }
}
