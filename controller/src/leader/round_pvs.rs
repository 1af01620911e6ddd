//! The cluster's PersistentVolumes as one round reads them: listed once,
//! when the first step asks (node loss, then the orphan check when it is
//! due), and shared by the steps after it, so a round lists every PV of
//! the cluster at most once, not once per step.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, ListParams};
use tokio::sync::OnceCell;

pub struct RoundPvs {
    client: kube::Client,
    list: OnceCell<Vec<PersistentVolume>>,
}

impl RoundPvs {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            list: OnceCell::new(),
        }
    }

    /// Every PersistentVolume, as listed at the first ask of this round (a
    /// failed list is tried again at the next ask).
    pub async fn get(&self) -> Result<&[PersistentVolume], kube::Error> {
        self.list
            .get_or_try_init(|| async {
                let api: Api<PersistentVolume> = Api::all(self.client.clone());
                Ok(api.list(&ListParams::default()).await?.items)
            })
            .await
            .map(Vec::as_slice)
    }
}
