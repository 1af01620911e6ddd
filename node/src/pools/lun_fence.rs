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

use crate::tools::persist::{PrError, Reservations};

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
