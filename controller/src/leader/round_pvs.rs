//! The cluster's PersistentVolumes as one round reads them: listed once,
//! when the first step asks (node loss, then the orphan check when it is
//! due), and shared by the steps after it, so a round lists every PV of
//! the cluster at most once, not once per step — unless a step ran long
//! (node loss releasing volumes can take minutes): a list older than
//! [`SHARE_FOR`] is taken again.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, ListParams};
use std::time::Duration;
use tokio::{sync::Mutex, time::Instant};

/// How long a list serves later steps of the round.
pub const SHARE_FOR: Duration = Duration::from_secs(10);

pub struct RoundPvs {
    client: kube::Client,
    list: Mutex<Option<(Instant, std::sync::Arc<Vec<PersistentVolume>>)>>,
}

impl RoundPvs {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            list: Mutex::new(None),
        }
    }

    /// Every PersistentVolume, as listed at most [`SHARE_FOR`] ago in this
    /// round (a failed list is tried again at the next ask).
    pub async fn get(&self) -> Result<std::sync::Arc<Vec<PersistentVolume>>, kube::Error> {
        let mut list = self.list.lock().await;
        if let Some((at, pvs)) = &*list {
            if at.elapsed() < SHARE_FOR {
                return Ok(pvs.clone());
            }
        }
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let pvs = std::sync::Arc::new(api.list(&ListParams::default()).await?.items);
        *list = Some((Instant::now(), pvs.clone()));
        Ok(pvs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_testkit::fake_api::FakeApi;

    /// Steps close together share a list; a step after a long one (node
    /// loss releasing volumes) reads the PVs again.
    #[tokio::test(start_paused = true)]
    async fn a_list_serves_the_round_while_it_is_fresh() {
        let fake = FakeApi::new();
        let pvs = RoundPvs::new(fake.client());
        let lists = || {
            fake.requests()
                .iter()
                .filter(|r| *r == "GET /api/v1/persistentvolumes")
                .count()
        };
        pvs.get().await.unwrap();
        pvs.get().await.unwrap();
        assert_eq!(lists(), 1);
        tokio::time::advance(SHARE_FOR).await;
        pvs.get().await.unwrap();
        assert_eq!(lists(), 2);
    }
}
