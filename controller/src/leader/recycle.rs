//! Released static PersistentVolumes of pools that say `reclaim: wipe`.
//! A static PV (a free LUN offered by `static_pvs.rs`) has reclaim policy
//! Retain: when its claim is deleted it turns Released and keeps the data.
//! Where the pool says so, the leader has a node of the pool zero the LUN
//! and free it (DeleteVolume of the static volume, wiping), then deletes
//! the PV — the DELETE carrying the uid and resourceVersion read just
//! before the wipe — and the next round offers the LUN again as a new
//! Available PV.
//!
//! A wipe waits while a VolumeAttachment still names the PV (its detach is
//! running), runs in the background (zeroing a large LUN takes long; the
//! round does not wait), one at a time per PV. One that fails leaves the PV
//! Released, says why once in a Warning Event, and is tried again after
//! [`RETRY`].

use super::events::{pv_ref, Recorder, Told};
use super::static_pvs::POOL_LABEL;
use crate::{ops, Ctx};
use k8s_openapi::{
    api::{core::v1::PersistentVolume, storage::v1::VolumeAttachment},
    jiff::Timestamp,
};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use pool_csi_common::{
    pool_spec::{Reclaim, StoragePool},
    VolumeId,
};
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

/// How soon a failed wipe is tried again.
const RETRY: Duration = Duration::from_secs(300);

pub struct Recycler {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    ctx: Arc<Ctx>,
    events: Recorder,
    /// The PVs whose wipe runs now.
    running: Mutex<BTreeSet<String>>,
    /// The last failure of each PV: what was told, and when.
    failed: Told,
}

fn released(pv: &PersistentVolume) -> bool {
    pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
        && pv.metadata.deletion_timestamp.is_none()
}

impl Recycler {
    pub fn new(client: kube::Client, ctx: Arc<Ctx>, instance: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                events: Recorder::new(client.clone(), instance),
                client,
                ctx,
                running: Mutex::default(),
                failed: Told::default(),
            }),
        }
    }

    /// One pass: starts the wipes that are due; returns how many.
    pub async fn run(&self) -> Result<usize, kube::Error> {
        let me = &self.inner;
        let api: Api<PersistentVolume> = Api::all(me.client.clone());
        let pvs: Vec<PersistentVolume> = api
            .list(&ListParams::default().labels(POOL_LABEL))
            .await?
            .items
            .into_iter()
            .filter(released)
            .collect();
        me.failed
            .retain(|n| pvs.iter().any(|p| p.metadata.name.as_deref() == Some(n)));
        if pvs.is_empty() {
            return Ok(0);
        }
        let pools: Api<StoragePool> = Api::all(me.client.clone());
        let wiping: BTreeSet<String> = pools
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|sp| sp.spec.reclaim == Some(Reclaim::Wipe))
            .filter_map(|sp| sp.metadata.name)
            .collect();
        let vas: Api<VolumeAttachment> = Api::all(me.client.clone());
        let attached: BTreeSet<String> = vas
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|va| va.spec.source.persistent_volume_name)
            .collect();
        let mut started = 0;
        for pv in pvs {
            let name = pv.metadata.name.clone().unwrap_or_default();
            let handle = pv.spec.as_ref().and_then(|s| s.csi.as_ref());
            let Some(id) = handle.and_then(|c| VolumeId::parse(&c.volume_handle).ok()) else {
                continue;
            };
            let due = !me.failed.failed_within(&name, RETRY);
            if !wiping.contains(&id.pool) || attached.contains(&name) || !due {
                continue;
            }
            if !me.running.lock().unwrap().insert(name.clone()) {
                continue; // its wipe is still running
            }
            started += 1;
            let me = self.inner.clone();
            tokio::spawn(async move {
                me.recycle(&name, &id).await;
                me.running.lock().unwrap().remove(&name);
            });
        }
        Ok(started)
    }
}

impl Inner {
    /// Wipes the LUN of Released static PV `name` (volume `id`) and deletes
    /// the PV, or says why not.
    async fn recycle(&self, name: &str, id: &VolumeId) {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        // Read again: the operator may have bound it anew meanwhile.
        let pv = match api.get_opt(name).await {
            Ok(Some(pv)) if released(&pv) => pv,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(pv = %name, error = %e, "released static PV: cannot read it; next round");
                return;
            }
        };
        if let Err(e) = ops::volumes::wipe(&self.ctx, id).await {
            if e.is_busy() {
                return;
            }
            let message = format!(
                "PersistentVolume {name} was released and pool {:?} says reclaim: wipe, but its LUN (volume {id}) could not be wiped: {e}; the PV stays Released and the wipe is tried again in {} minutes",
                id.pool,
                RETRY.as_secs() / 60
            );
            if self.failed.record(name, &message, true) {
                tracing::warn!(pv = %name, "{message}");
                let about = pv_ref(name, pv.metadata.uid.clone());
                self.events
                    .warn(about, "WipeFailed", &message, Timestamp::now())
                    .await;
            }
            return;
        }
        self.failed.forget(name);
        // The PV as read before the wipe only: its LUN is free now, and the
        // next round offers it again under the same name.
        let exactly = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pv.metadata.uid.clone(),
                resource_version: pv.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        match api.delete(name, &exactly).await {
            Ok(_) => {
                tracing::info!(pv = %name, volume = %id, "released static PV: LUN wiped, offered again")
            }
            Err(e) => {
                tracing::warn!(pv = %name, error = %e, "released static PV: LUN wiped, but the PV changed or could not be deleted; next round")
            }
        }
    }
}
