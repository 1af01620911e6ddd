//! The leader's round: while this replica leads, every few seconds, gather
//! the agents' reports, write each StoragePool's status from them, publish
//! or withdraw static PersistentVolumes for free LUNs, mark the PVs of
//! lost nodes, and look for orphans. The round drives them; none knows the others.

use super::{
    node_loss::NodeLoss, orphan_check::OrphanCheck, recycle::Recycler, reports,
    round_pvs::RoundPvs, static_pvs::StaticPvs, status::StatusWriter,
};
use crate::agents::Agents;
use k8s_openapi::jiff::Timestamp;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;

/// The next round comes this soon when an agent or the API did not answer.
const RETRY: Duration = Duration::from_secs(5);

pub struct Round {
    /// Lists the cluster's PersistentVolumes for node loss and the orphan
    /// check, shared between them within a round (`round_pvs`).
    pub client: kube::Client,
    pub status: StatusWriter,
    /// Publishes free LUNs as static PersistentVolumes after each round.
    pub static_pvs: Option<StaticPvs>,
    /// Wipes and re-offers the LUNs of Released static PVs (`reclaim: wipe`).
    pub recycle: Option<Recycler>,
    /// Finds orphaned volumes and snapshots, and lost volumes.
    pub orphans: Option<OrphanCheck>,
    /// Marks the PVs of lost nodes' volumes.
    pub node_loss: Option<NodeLoss>,
}

impl Round {
    /// While this replica leads: gathers every agent's report and
    /// reconciles, every `every` (every few seconds while an agent does not
    /// answer, e.g. at start-up), until `stop`.
    pub async fn run(
        self,
        agents: Arc<Agents>,
        mut leading: watch::Receiver<bool>,
        every: Duration,
        mut stop: watch::Receiver<()>,
    ) {
        loop {
            let mut wait = every;
            if *leading.borrow() {
                // A leader that loses its Lease mid-round stops there: what
                // is left is the next leader's (every step is redone from a
                // fresh read), and nothing more is written from here.
                let mut lost = leading.clone();
                tokio::select! {
                    w = self.once(&agents, every) => wait = w,
                    _ = lost.wait_for(|l| !*l) => {
                        tracing::warn!("leadership lost during a round: the rest of it is left to the next leader");
                    }
                }
            }
            if let (false, Some(check)) = (*leading.borrow(), &self.orphans) {
                check.forget();
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = leading.changed() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One round; returns how long to wait before the next.
    async fn once(&self, agents: &Agents, every: Duration) -> Duration {
        let mut wait = every;
        let round_pvs = RoundPvs::new(self.client.clone());
        let reports = reports::gather(agents).await;
        if reports.values().any(|r| r.is_err()) {
            wait = every.min(RETRY);
        }
        match self.status.reconcile(&reports, Timestamp::now()).await {
            Ok(n) if n > 0 => tracing::debug!(written = n, "StoragePool status updated"),
            Ok(_) => {}
            Err(e) => {
                wait = every.min(RETRY);
                tracing::warn!(error = %e, "StoragePool status: the API server refused or did not answer; retrying")
            }
        }
        if let Some(pvs) = &self.static_pvs {
            let luns = reports::gather_luns(agents, &reports).await;
            match pvs.reconcile(&luns).await {
                Ok(c) => {
                    for n in &c.created {
                        tracing::info!(pv = %n, "static PersistentVolume published for a free LUN");
                    }
                    for n in &c.deleted {
                        tracing::info!(pv = %n, "static PersistentVolume withdrawn: its LUN was taken or vanished");
                    }
                }
                Err(e) => {
                    wait = every.min(RETRY);
                    tracing::warn!(error = %e, "static PersistentVolumes: the API server refused or did not answer; retrying")
                }
            }
        }

        if let Some(n) = &self.node_loss {
            let answered = reports
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(node, _)| node.clone())
                .collect();
            if let Err(e) = n.run(&answered, &round_pvs, Timestamp::now()).await {
                wait = every.min(RETRY);
                tracing::warn!(error = %e, "node loss: the API server refused or did not answer; retrying")
            }
        }
        if let Some(r) = &self.recycle {
            if let Err(e) = r.run().await {
                wait = every.min(RETRY);
                tracing::warn!(error = %e, "released static PersistentVolumes: the API server refused or did not answer; retrying")
            }
        }
        if let Some(check) = &self.orphans {
            // The reports say which nodes answered: only their
            // listings are whole.
            match check
                .run(agents, &reports, &round_pvs, Timestamp::now())
                .await
            {
                Ok(n) if n > 0 => tracing::debug!(reported = n, "orphans"),
                Ok(_) => {}
                Err(e) => {
                    wait = every.min(RETRY);
                    tracing::warn!(error = %e, "orphans: the API server refused or did not answer; retrying")
                }
            }
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_testkit::fake_api::FakeApi;
    use std::collections::BTreeMap;

    /// A round (status only) over one agent that never answers, writing to
    /// `fake`, run every 30 s while `leading`, until the handle is aborted.
    fn run_round(fake: &FakeApi, leading: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let map = BTreeMap::from([("n1".to_string(), "127.0.0.1:1".to_string())]);
        let agents = Arc::new(Agents::new(&map, None).unwrap());
        let round = Round {
            client: fake.client(),
            status: StatusWriter::new(fake.client(), "x"),
            static_pvs: None,
            recycle: None,
            orphans: None,
            node_loss: None,
        };
        let (stop_tx, stop) = watch::channel(());
        tokio::spawn(async move {
            round
                .run(agents, leading, Duration::from_secs(30), stop)
                .await;
            drop(stop_tx);
        })
    }

    /// An agent that does not answer (yet) is asked again within seconds,
    /// not at the next regular round.
    #[tokio::test(start_paused = true)]
    async fn silent_agents_are_asked_again_soon() {
        let fake = FakeApi::new();
        let (_leading_tx, leading) = watch::channel(true);
        let h = run_round(&fake, leading);
        tokio::time::sleep(Duration::from_secs(12)).await;
        h.abort();
        let rounds = fake
            .requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/pool-csi.io"))
            .count();
        assert!(rounds >= 3, "{:?}", fake.requests());
    }

    /// Node loss and the orphan check read one list of the cluster's
    /// PersistentVolumes per round, not one each.
    #[tokio::test(start_paused = true)]
    async fn a_round_lists_the_clusters_pvs_once() {
        use super::super::{node_loss::NodeLoss, orphan_check::OrphanCheck};
        let fake = FakeApi::new();
        fake.insert(
            "/api/v1/nodes/n1",
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}),
        );
        fake.insert(
            "/api/v1/persistentvolumes/pv-1",
            serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": "pv-1", "uid": "uid-pv-1"},
                   "spec": {"csi": {"driver": "pool-csi.io", "volumeHandle": "local:n1:v"}}}),
        );
        let map = BTreeMap::from([("n1".to_string(), "127.0.0.1:1".to_string())]);
        let agents = Arc::new(Agents::new(&map, None).unwrap());
        let ctx = Arc::new(crate::Ctx {
            driver_name: "pool-csi.io".into(),
            default_pool: None,
            agents: agents.clone(),
            locks: Default::default(),
        });
        let client = fake.client();
        // A grace period of a second: the check is due at every round.
        let check = OrphanCheck::new(
            client.clone(),
            "x",
            "pool-csi.io",
            Duration::from_secs(1),
            "x",
        );
        let round = Round {
            client: client.clone(),
            status: StatusWriter::new(client.clone(), "x"),
            static_pvs: None,
            recycle: None,
            orphans: Some(check),
            node_loss: Some(NodeLoss::new(client, ctx, "x")),
        };
        let (_leading_tx, leading) = watch::channel(true);
        let (stop_tx, stop) = watch::channel(());
        let h = tokio::spawn(round.run(agents, leading, Duration::from_secs(30), stop));
        tokio::time::sleep(Duration::from_secs(12)).await;
        h.abort();
        drop(stop_tx);
        let count = |what: &str| fake.requests().iter().filter(|r| *r == what).count();
        let rounds = count("GET /api/v1/nodes");
        assert!(rounds >= 2, "{:?}", fake.requests());
        assert_eq!(
            count("GET /apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents"),
            rounds,
            "the orphan check ran in every round: {:?}",
            fake.requests()
        );
        assert_eq!(
            count("GET /api/v1/persistentvolumes"),
            rounds,
            "{:?}",
            fake.requests()
        );
    }

    /// A leader that loses its Lease in the middle of a round writes
    /// nothing more: the round stops there.
    #[tokio::test(start_paused = true)]
    async fn a_round_stops_where_leadership_is_lost() {
        let fake = FakeApi::new();
        let (leading_tx, leading) = watch::channel(true);
        // The API server answers nothing until the round is well under way.
        fake.stall(true);
        let h = run_round(&fake, leading);
        tokio::time::sleep(Duration::from_secs(2)).await;
        leading_tx.send(false).unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        fake.stall(false);
        tokio::time::sleep(Duration::from_secs(60)).await;
        h.abort();
        assert!(
            fake.requests().is_empty(),
            "nothing was served once leadership was lost: {:?}",
            fake.requests()
        );
    }
}
