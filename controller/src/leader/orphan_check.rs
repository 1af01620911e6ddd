//! The leader's orphan check, after the status in each round: gathers what
//! the answering agents hold and what Kubernetes names, judges it
//! ([`super::orphans`]), keeps the findings in the ConfigMap
//! `pool-csi-orphans`, records an Event for each newly reported one and
//! leaves the latest findings for `/metrics`.

use super::{
    events::{pool_ref, Recorder},
    orphans::{self, Held, Kind, Known, Orphan, Storage},
    reports::Reports,
    round_pvs::RoundPvs,
    static_pvs::POOL_LABEL,
};
use crate::{agents::Agents, join::join_all};
use k8s_openapi::{
    api::core::v1::{ConfigMap, PersistentVolume},
    jiff::Timestamp,
};
use kube::{
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams},
    core::ObjectMeta,
};
use pool_csi_common::{pool_spec::StoragePool, SnapshotId, VolumeId};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

/// How long one agent may take to list its volumes and snapshots.
const LIST_TIMEOUT: Duration = Duration::from_secs(20);
/// A check lists every volume of every node: at most this often (or once
/// per grace period, when that is shorter), however often the round runs.
const EVERY: Duration = Duration::from_secs(60);

pub struct OrphanCheck {
    client: kube::Client,
    /// Where the ConfigMap lives (the controller's namespace).
    namespace: String,
    driver: String,
    grace: Duration,
    events: Recorder,
    /// The last round's findings (for `/metrics`).
    pub latest: Arc<Mutex<Vec<Orphan>>>,
    /// When the last check ran.
    last: Mutex<Option<tokio::time::Instant>>,
}

impl OrphanCheck {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        driver: &str,
        grace: Duration,
        instance: &str,
    ) -> Self {
        Self {
            events: Recorder::new(client.clone(), instance),
            client,
            namespace: namespace.into(),
            driver: driver.into(),
            grace,
            latest: Default::default(),
            last: Default::default(),
        }
    }

    /// One check, unless the last good one was less than a minute (or a
    /// grace period) ago; returns how many findings are reported.
    pub async fn run(
        &self,
        agents: &Agents,
        reports: &Reports,
        round_pvs: &RoundPvs,
        now: Timestamp,
    ) -> Result<usize, kube::Error> {
        let started = tokio::time::Instant::now();
        let due = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= EVERY.min(self.grace));
        if !due {
            return Ok(self.reported());
        }
        let storage = gather(agents, reports).await;
        // The round's PVs may have been listed before the storage was (by
        // node loss, at most `SHARE_FOR` ago): a volume made or deleted with
        // its PV in between is only first seen here, and the grace period
        // keeps it unreported.
        let mut known = known_in(&round_pvs.get().await?, Some(&self.driver));
        known.contents = contents(&self.client).await?;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let (cm, before) = read(&api).await?;
        let found = orphans::judge(&storage, &known, &before, now, self.grace);
        // Kept first: a write that fails is retried, and its Events are
        // not sent twice.
        if found != before {
            self.keep(&api, cm, &found).await?;
        }
        for o in found.iter().filter(|o| o.reported) {
            let was = before
                .iter()
                .any(|b| b.kind == o.kind && b.id == o.id && b.reported);
            if !was {
                self.report(o, now).await;
            }
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = found;
        // A check that failed on the way is retried at the next round.
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(self.reported())
    }

    /// Forgets the findings (this replica stopped leading: its gauges
    /// would count what the new leader reports too).
    pub fn forget(&self) {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn reported(&self) -> usize {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.iter().filter(|o| o.reported).count()
    }

    /// Stores the findings (create, or replace at the version read: a
    /// second leader's write in between makes this round's fail, not mix).
    async fn keep(
        &self,
        api: &Api<ConfigMap>,
        cm: Option<ConfigMap>,
        found: &[Orphan],
    ) -> Result<(), kube::Error> {
        let text = serde_json::to_string_pretty(found).expect("findings serialize");
        let data = BTreeMap::from([(orphans::KEY.to_string(), text)]);
        match cm {
            Some(mut cm) => {
                cm.data = Some(data);
                api.replace(orphans::CONFIGMAP, &PostParams::default(), &cm)
                    .await?;
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(orphans::CONFIGMAP.into()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/part-of".into(),
                            "pool-csi".into(),
                        )])),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await?;
            }
        }
        Ok(())
    }

    /// The Event of a newly reported finding: on its StoragePool, and for a
    /// lost volume on its PersistentVolume too.
    async fn report(&self, o: &Orphan, now: Timestamp) {
        tracing::warn!(kind = o.kind.word(), id = %o.id, pool = %o.pool, "{}", o.message());
        let pools: Api<StoragePool> = Api::all(self.client.clone());
        if let Ok(Some(sp)) = pools.get_opt(&o.pool).await {
            self.events
                .warn(pool_ref(&sp), o.kind.reason(), &o.message(), now)
                .await;
        }
        if let (Kind::LostVolume, Some(pv)) = (o.kind, &o.pv) {
            let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
            if let Ok(Some(p)) = pvs.get_opt(pv).await {
                let about = super::events::pv_ref(pv, p.metadata.uid.clone());
                self.events
                    .warn(about, o.kind.reason(), &o.message(), now)
                    .await;
            }
        }
    }
}

/// What Kubernetes names: every CSI PV's volume handle, the driver's PVs
/// that can be judged lost (`driver`: none for only the names), and the
/// VolumeSnapshotContents' handles where that API answers.
pub async fn known(client: &kube::Client, driver: Option<&str>) -> Result<Known, kube::Error> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut known = known_in(&pvs.list(&ListParams::default()).await?.items, driver);
    known.contents = contents(client).await?;
    Ok(known)
}

/// What `pvs` name (see [`known`]); the contents are left unknown.
fn known_in(pvs: &[PersistentVolume], driver: Option<&str>) -> Known {
    let mut known = Known::default();
    for pv in pvs {
        let Some(csi) = pv.spec.as_ref().and_then(|s| s.csi.as_ref()) else {
            continue;
        };
        let name = pv.metadata.name.clone().unwrap_or_default();
        known.named.insert(csi.volume_handle.clone(), name.clone());
        let is_static = pv
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(POOL_LABEL));
        if driver == Some(csi.driver.as_str()) && !is_static {
            known.pvs.insert(csi.volume_handle.clone(), name);
        }
    }
    known
}

/// Every VolumeSnapshotContent's snapshot handle, or `None` where the
/// snapshot API does not answer.
async fn contents(client: &kube::Client) -> Result<Option<BTreeSet<String>>, kube::Error> {
    let gvk = GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent");
    let contents: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    Ok(match contents.list(&ListParams::default()).await {
        // Every content's handle, whatever its driver: a name is a name.
        Ok(list) => Some(
            list.items
                .iter()
                .filter_map(|c| {
                    c.data["status"]["snapshotHandle"]
                        .as_str()
                        .or(c.data["spec"]["source"]["snapshotHandle"].as_str())
                        .map(str::to_string)
                })
                .collect(),
        ),
        // The snapshot CRDs are not installed (or the chart grants no
        // access: snapshots off): snapshots are not judged.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => None,
        Err(e) => return Err(e),
    })
}

/// The ConfigMap and the findings it keeps (none when it does not exist).
pub async fn read(api: &Api<ConfigMap>) -> Result<(Option<ConfigMap>, Vec<Orphan>), kube::Error> {
    let cm = api.get_opt(orphans::CONFIGMAP).await?;
    let found = orphans::parse(
        cm.as_ref()
            .and_then(|c| c.data.as_ref()?.get(orphans::KEY))
            .map(String::as_str),
    );
    Ok((cm, found))
}

/// Runs `call` through the node `node` names, or, for a shared pool's
/// volume or snapshot (no node), through each node until one succeeds.
async fn through_holder<F, Fut>(
    agents: &Agents,
    node: &Option<String>,
    id: &str,
    mut call: F,
) -> Result<(), String>
where
    F: FnMut(crate::agents::client::AgentClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::agents::client::AgentError>>,
{
    let nodes = match node {
        Some(n) => vec![n.clone()],
        None => agents.nodes(),
    };
    let mut last = Err(format!("no node agent to delete {id} through"));
    for n in nodes {
        let c = agents.client(&n).map_err(|e| e.to_string())?;
        match call(c).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Err(format!("{n}: {}", e.message)),
        }
    }
    last
}

/// Deletes the reported orphan `id` (a volume or a snapshot) for the
/// operator (`poolctl orphans --delete`): only after checking again that
/// nothing in Kubernetes names it, through the agent of the node that
/// holds it; then drops it from the ConfigMap. Returns what was deleted.
pub async fn delete(
    client: &kube::Client,
    namespace: &str,
    agents: &Agents,
    id: &str,
) -> Result<Orphan, String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let (cm, found) = read(&api)
        .await
        .map_err(|e| format!("read the findings: {e}"))?;
    let o = found
        .iter()
        .find(|o| o.id == id && o.kind != Kind::LostVolume)
        .ok_or_else(|| format!("{id} is not an orphaned volume or snapshot the controller reported; `poolctl orphans` lists them"))?
        .clone();
    if !o.reported {
        return Err(format!(
            "{id} is still in its grace period (first seen {}): its PersistentVolume or VolumeSnapshotContent may be on its way; not deleted",
            o.since
        ));
    }
    let now = known(client, None)
        .await
        .map_err(|e| format!("check Kubernetes again: {e}"))?;
    if let Some(pv) = now.named.get(id) {
        return Err(format!("PersistentVolume {pv} names {id} now; not deleted"));
    }
    if o.kind == Kind::Snapshot {
        match &now.contents {
            Some(c) if c.contains(id) => {
                return Err(format!(
                    "a VolumeSnapshotContent names {id} now; not deleted"
                ))
            }
            Some(_) => {}
            None => {
                return Err(format!(
                    "cannot list VolumeSnapshotContents to check that none names {id}; not deleted"
                ))
            }
        }
    }
    let gone = match o.kind {
        Kind::Snapshot => {
            let s = SnapshotId::parse(id).map_err(|e| format!("{id}: {e}"))?;
            through_holder(agents, &s.node, id, |c| {
                let s = s.clone();
                async move { c.delete_snapshot(&s.pool, &s.name).await }
            })
            .await
        }
        _ => {
            let v = VolumeId::parse(id).map_err(|e| format!("{id}: {e}"))?;
            through_holder(agents, &v.node, id, |c| {
                let v = v.clone();
                async move { c.delete_volume(&v.pool, &v.name, false).await }
            })
            .await
        }
    };
    gone.map_err(|e| format!("delete {id}: {e}"))?;
    // Dropped from the findings (the next round would drop it too).
    if let Some(mut cm) = cm {
        let rest: Vec<&Orphan> = found.iter().filter(|f| f.id != id).collect();
        let text = serde_json::to_string_pretty(&rest).expect("findings serialize");
        cm.data = Some(BTreeMap::from([(orphans::KEY.to_string(), text)]));
        if let Err(e) = api
            .replace(orphans::CONFIGMAP, &PostParams::default(), &cm)
            .await
        {
            tracing::debug!(error = %e, "the findings changed meanwhile; the next round drops it");
        }
    }
    Ok(o)
}

/// Every volume and snapshot of the nodes that reported, and which
/// listings are whole (the node listed everything, the pool running).
async fn gather(agents: &Agents, reports: &Reports) -> Storage {
    let asked = reports.iter().filter_map(|(node, r)| {
        let pools = r.as_ref().ok()?;
        Some(async move {
            let c = agents.client(node).ok()?;
            let listed = tokio::time::timeout(LIST_TIMEOUT, async {
                let volumes = c.list_volumes(None).await?;
                let (snapshots, _) = c.list_snapshots(&Default::default()).await?;
                Ok::<_, crate::agents::client::AgentError>((volumes, snapshots))
            })
            .await;
            match listed {
                Ok(Ok(l)) => Some((node, pools, l)),
                Ok(Err(e)) => {
                    tracing::debug!(%node, error = %e.message, "orphans: the agent did not list");
                    None
                }
                Err(_) => None,
            }
        })
    });
    let mut s = Storage::default();
    for (node, pools, (volumes, snapshots)) in join_all(asked).await.into_iter().flatten() {
        for p in pools.iter().filter(|p| p.is_running()) {
            let at = (!p.shared).then(|| node.clone());
            s.complete.insert((p.name.clone(), at));
        }
        for v in volumes {
            let at = (!v.shared).then_some(node.as_str());
            s.volumes.push(Held {
                id: VolumeId::new(&v.pool, at, &v.name).to_string(),
                pool: v.pool,
                node: at.map(str::to_string),
                size: v.capacity,
            });
        }
        for sn in snapshots {
            let at = (!sn.shared).then_some(node.as_str());
            s.snapshots.push(Held {
                id: SnapshotId::new(&sn.pool, at, &sn.name).to_string(),
                pool: sn.pool,
                node: at.map(str::to_string),
                size: sn.size,
            });
        }
    }
    s
}
