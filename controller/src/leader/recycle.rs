//! Released static PersistentVolumes of pools that say `reclaim: wipe`.
//! A static PV (a free LUN offered by `static_pvs.rs`) has reclaim policy
//! Retain: when its claim is deleted it turns Released and keeps the data.
//! Where the pool says so, the leader has a node of the pool zero the LUN
//! and free it (DeleteVolume of the static volume, wiping), then deletes
//! the PV — the DELETE carrying the uid read — and the next round offers
//! the LUN again as a new Available PV. A wipe that fails leaves the PV
//! Released, says why once in a Warning Event, and is tried again every
//! round.

use super::events::{pv_ref, Recorder};
use super::static_pvs::POOL_LABEL;
use crate::{ops, Ctx};
use k8s_openapi::{api::core::v1::PersistentVolume, jiff::Timestamp};
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use pool_csi_common::{
    pool_spec::{Reclaim, StoragePool},
    VolumeId,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

pub struct Recycler {
    client: kube::Client,
    ctx: Arc<Ctx>,
    events: Recorder,
    /// The last failure told about each PV (told once).
    told: Mutex<BTreeMap<String, String>>,
}

impl Recycler {
    pub fn new(client: kube::Client, ctx: Arc<Ctx>, instance: &str) -> Self {
        Self {
            events: Recorder::new(client.clone(), instance),
            client,
            ctx,
            told: Mutex::default(),
        }
    }

    /// One pass; returns the PVs whose LUN was wiped and freed.
    pub async fn run(&self, now: Timestamp) -> Result<Vec<String>, kube::Error> {
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let released: Vec<PersistentVolume> = api
            .list(&ListParams::default().labels(POOL_LABEL))
            .await?
            .items
            .into_iter()
            .filter(|pv| {
                pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
                    && pv.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if released.is_empty() {
            self.told.lock().unwrap().clear();
            return Ok(Vec::new());
        }
        let pools: Api<StoragePool> = Api::all(self.client.clone());
        let wiping: BTreeSet<String> = pools
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|sp| sp.spec.reclaim == Some(Reclaim::Wipe))
            .filter_map(|sp| sp.metadata.name)
            .collect();
        let mut done = Vec::new();
        for pv in &released {
            let name = pv.metadata.name.clone().unwrap_or_default();
            let handle = pv.spec.as_ref().and_then(|s| s.csi.as_ref());
            let Some(id) = handle.and_then(|c| VolumeId::parse(&c.volume_handle).ok()) else {
                continue;
            };
            if !wiping.contains(&id.pool) {
                continue;
            }
            if let Err(e) = ops::volumes::delete_wiping(&self.ctx, &id, true).await {
                if e.is_busy() {
                    continue;
                }
                let message = format!(
                    "PersistentVolume {name} was released and pool {:?} says reclaim: wipe, but its LUN (volume {id}) could not be wiped: {e}; the PV stays Released and the wipe is tried again",
                    id.pool
                );
                let before = self
                    .told
                    .lock()
                    .unwrap()
                    .insert(name.clone(), message.clone());
                if before.as_ref() != Some(&message) {
                    tracing::warn!(pv = %name, "{message}");
                    let about = pv_ref(&name, pv.metadata.uid.clone());
                    self.events.warn(about, "WipeFailed", &message, now).await;
                }
                continue;
            }
            self.told.lock().unwrap().remove(&name);
            // The PV as read only: its LUN is free now, and the next round
            // offers it again under the same name.
            let exactly = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: pv.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &exactly).await {
                Ok(_) => {
                    tracing::info!(pv = %name, volume = %id, "released static PV: LUN wiped and offered again");
                    done.push(name);
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}
