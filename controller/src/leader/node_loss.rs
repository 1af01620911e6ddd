//! Lost nodes, in fence_virtd's model: the cluster keeps working when a
//! member disappears, and one member — the leader — acts for what the lost
//! one held. A node is lost when it carries the
//! `node.kubernetes.io/out-of-service` taint (the operator's word that it is
//! down and will not come back as it was), or when its Node object is gone
//! while PersistentVolumes of the driver still name it.
//!
//! A lost node's node-local volumes live on it only: they are never deleted
//! or moved. Their PVs get the label `pool-csi.io/node-lost=true` and a
//! `NodeLost` Warning Event (on the PV and on its StoragePool), so
//! `kubectl get pv -l pool-csi.io/node-lost` lists what is stranded; when the
//! node is back (taint removed, Node object there) the label goes, with a
//! `NodeBack` Event.
//!
//! A shared pool's volume published on a node tainted out of service is
//! released by the leader, as fence_virtd's highest member acts for the
//! domains of a member that is gone: another node of the pool drops the
//! lost node from the volume's claim, after fencing it off the LUN (SCSI-3
//! persistent reservations, unless the pool says `fencing: none`); a
//! volume whose node cannot be fenced stays where it is. Either way an
//! Event on the PV and its StoragePool says what happened. Kubernetes' own
//! out-of-service handling (and the detach of a deleted Node's volumes)
//! goes the same way: ControllerUnpublishVolume for the lost node is
//! answered by another node of the pool, which fences first.

use super::{
    events::{Recorder, Told},
    round_pvs::RoundPvs,
    static_pvs::POOL_LABEL,
};
use crate::{ops, Ctx};
use k8s_openapi::{
    api::{
        core::v1::{Node, PersistentVolume},
        storage::v1::VolumeAttachment,
    },
    jiff::Timestamp,
};
use kube::api::{Api, ListParams, Patch, PatchParams};
use pool_csi_common::{pool_spec::StoragePool, VolumeId};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

/// The label on the PVs of a lost node's volumes.
pub const LOST_LABEL: &str = "pool-csi.io/node-lost";
/// The taint that says a node is out of service.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

/// A PersistentVolume of a node-local volume, as node loss sees it.
#[derive(Debug, Clone)]
pub struct LocalPv {
    pub name: String,
    pub uid: Option<String>,
    pub node: String,
    pub pool: String,
    pub marked: bool,
}

/// The lost nodes among those `pvs` name, with why: tainted out of service,
/// or no Node object while its agent did not answer this round (`answered`).
/// Callers judge nothing from an empty Node list (it says more about the
/// API than about the nodes).
pub fn lost_nodes(
    nodes: &[Node],
    pvs: &[LocalPv],
    answered: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut lost = out_of_service(nodes);
    let present: BTreeSet<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    for pv in pvs {
        if !present.contains(&pv.node) && !answered.contains(&pv.node) {
            lost.entry(pv.node.clone())
                .or_insert_with(|| format!("node {} was removed from the cluster", pv.node));
        }
    }
    lost
}

/// The PVs to mark (Some(why)) and to unmark (None).
pub fn changes<'a>(
    pvs: &'a [LocalPv],
    lost: &BTreeMap<String, String>,
) -> Vec<(&'a LocalPv, Option<String>)> {
    pvs.iter()
        .filter_map(|pv| match (lost.get(&pv.node), pv.marked) {
            (Some(why), false) => Some((pv, Some(why.clone()))),
            (None, true) => Some((pv, None)),
            _ => None,
        })
        .collect()
}

/// A bound PersistentVolume of a shared pool's volume (its id names no node).
#[derive(Debug, Clone)]
pub struct SharedPv {
    pub name: String,
    pub uid: Option<String>,
    pub id: VolumeId,
}

/// The nodes tainted out of service (the operator's word that they are
/// down), with why.
pub fn out_of_service(nodes: &[Node]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .filter(|n| {
            n.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE))
        })
        .filter_map(|n| n.metadata.name.clone())
        .map(|name| {
            let why = format!("node {name} is tainted {OUT_OF_SERVICE}");
            (name, why)
        })
        .collect()
}

pub struct NodeLoss {
    client: kube::Client,
    events: Recorder,
    ctx: Arc<Ctx>,
    /// The last outcome told about each shared PV's release.
    told: Told,
}

/// How long a release may take (a fence logs in to the LUN) before the
/// round moves on.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// How soon a refused release is tried again (each try may log in to the
/// LUN from another node).
const REFUSED_RETRY: std::time::Duration = std::time::Duration::from_secs(300);

impl NodeLoss {
    pub fn new(client: kube::Client, ctx: Arc<Ctx>, instance: &str) -> Self {
        Self {
            events: Recorder::new(client.clone(), instance),
            client,
            ctx,
            told: Told::default(),
        }
    }

    /// One pass: marks and unmarks PVs; returns how many it changed.
    /// `answered`: the nodes whose agents answered this round.
    pub async fn run(
        &self,
        answered: &BTreeSet<String>,
        round_pvs: &RoundPvs,
        now: Timestamp,
    ) -> Result<usize, kube::Error> {
        // PVs first: a node that registers between the two lists is then
        // in the Node list, not judged removed.
        let all = round_pvs.get().await?;
        let all = all.as_slice();
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let pvs: Vec<LocalPv> = all.iter().filter_map(|pv| self.local_pv(pv)).collect();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let nodes = nodes.list(&ListParams::default()).await?.items;
        if nodes.is_empty() {
            return Ok(0); // no judgement, and no mark taken off
        }
        let tainted = out_of_service(&nodes);
        let mut released = 0;
        if tainted.is_empty() {
            self.told.retain(|_| false);
        } else {
            let attached = self.attached_on(&tainted).await?;
            let shared: Vec<(SharedPv, String)> = all
                .iter()
                .filter_map(|pv| {
                    let s = self.shared_pv(pv)?;
                    let node = attached.get(&s.name)?.clone();
                    Some((s, node))
                })
                .collect();
            released = self.release_shared(&shared, &tainted, now).await;
        }
        let lost = lost_nodes(&nodes, &pvs, answered);
        let todo = changes(&pvs, &lost);
        let mut told_pools = BTreeSet::new();
        for (pv, why) in &todo {
            let value = why.as_ref().map(|_| "true");
            let patch = serde_json::json!({"metadata": {"labels": {LOST_LABEL: value}}});
            match api
                .patch(&pv.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {}
                // Deleted meanwhile: nothing to mark.
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(e),
            }
            let (reason, message) = match why {
                Some(why) => ("NodeLost", format!(
                    "{why}: volume of PersistentVolume {} in pool {:?} lives on that node only; it is kept (never deleted or moved) and comes back with the node; labelled {LOST_LABEL}=true",
                    pv.name, pv.pool
                )),
                None => ("NodeBack", format!(
                    "node {} is back: PersistentVolume {} can be used there again if the node kept its disks; label {LOST_LABEL} removed",
                    pv.node, pv.name
                )),
            };
            tracing::warn!(pv = %pv.name, node = %pv.node, "{message}");
            let about = super::events::pv_ref(&pv.name, pv.uid.clone());
            self.events.warn(about, reason, &message, now).await;
            // One Event per pool, node and change, however many PVs.
            if told_pools.insert((pv.pool.clone(), pv.node.clone(), reason)) {
                let pools: Api<StoragePool> = Api::all(self.client.clone());
                if let Ok(Some(sp)) = pools.get_opt(&pv.pool).await {
                    let text = match why {
                        Some(why) => format!("{why}: the pool's volumes there are kept; `kubectl get pv -l {LOST_LABEL}=true` lists them"),
                        None => format!("node {} is back: the label {LOST_LABEL} is taken off its PVs", pv.node),
                    };
                    self.events
                        .warn(super::events::pool_ref(&sp), reason, &text, now)
                        .await;
                }
            }
        }
        Ok(todo.len() + released)
    }

    /// The PVs attached (VolumeAttachments of this driver) on `tainted`
    /// nodes, with their node.
    async fn attached_on(
        &self,
        tainted: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, kube::Error> {
        let api: Api<VolumeAttachment> = Api::all(self.client.clone());
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|va| {
                va.spec.attacher == self.ctx.driver_name && tainted.contains_key(&va.spec.node_name)
            })
            .filter_map(|va| Some((va.spec.source.persistent_volume_name?, va.spec.node_name)))
            .collect())
    }

    /// Releases the shared volumes attached on tainted nodes (`shared`:
    /// each PV with its node; see the module's doc); returns how many were
    /// released. A volume refused is asked about again after
    /// [`REFUSED_RETRY`]; each outcome is told once.
    async fn release_shared(
        &self,
        shared: &[(SharedPv, String)],
        tainted: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> usize {
        self.told
            .retain(|pv| shared.iter().any(|(s, _)| s.name == pv));
        let mut released = 0;
        for (pv, node) in shared {
            if self.told.failed_within(&pv.name, REFUSED_RETRY) {
                continue;
            }
            let v = match ops::volumes::get(&self.ctx, &pv.id).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(pv = %pv.name, error = %e, "node loss: cannot read the volume; next round");
                    continue;
                }
            };
            if !v.published.contains(node) {
                continue; // released already (Kubernetes' own detach, or an earlier round)
            }
            let why = &tainted[node];
            let asked = ops::publish::release_from_lost(&self.ctx, &pv.id, node);
            let (reason, message) = match tokio::time::timeout(RELEASE_TIMEOUT, asked).await {
                Ok(Ok(by)) => {
                    released += 1;
                    ("VolumeReleased", format!(
                        "{why}: volume {} of PersistentVolume {} was released from that node by node {by}, which fenced {node} off it first unless the pool says fencing: none; Kubernetes can attach it elsewhere",
                        pv.id, pv.name
                    ))
                }
                // Another call on the volume is running (Kubernetes' own
                // detach, perhaps): the next round looks again.
                Ok(Err(e)) if e.is_busy() => continue,
                Ok(Err(e)) => ("ReleaseRefused", format!(
                    "{why}: volume {} of PersistentVolume {} cannot be released from that node yet: {e}",
                    pv.id, pv.name
                )),
                Err(_) => ("ReleaseRefused", format!(
                    "{why}: volume {} of PersistentVolume {} cannot be released from that node yet: the pool's nodes did not answer within {RELEASE_TIMEOUT:?}",
                    pv.id, pv.name
                )),
            };
            let refused = reason == "ReleaseRefused";
            if !self.told.record(&pv.name, &message, refused) {
                continue;
            }
            tracing::warn!(pv = %pv.name, node = %node, "{message}");
            let about = super::events::pv_ref(&pv.name, pv.uid.clone());
            self.events.warn(about, reason, &message, now).await;
            let pools: Api<StoragePool> = Api::all(self.client.clone());
            if let Ok(Some(sp)) = pools.get_opt(&pv.id.pool).await {
                self.events
                    .warn(super::events::pool_ref(&sp), reason, &message, now)
                    .await;
            }
        }
        released
    }

    /// A bound PV of the driver for a shared pool's volume.
    fn shared_pv(&self, pv: &PersistentVolume) -> Option<SharedPv> {
        let spec = pv.spec.as_ref()?;
        spec.claim_ref.as_ref()?;
        let csi = spec
            .csi
            .as_ref()
            .filter(|c| c.driver == self.ctx.driver_name)?;
        let id = VolumeId::parse(&csi.volume_handle).ok()?;
        id.node.is_none().then(|| SharedPv {
            name: pv.metadata.name.clone().unwrap_or_default(),
            uid: pv.metadata.uid.clone(),
            id,
        })
    }

    /// A PV of the driver for a node-local volume (static LUN PVs not yet
    /// bound aside: their LUN is no volume yet).
    fn local_pv(&self, pv: &PersistentVolume) -> Option<LocalPv> {
        let labels = pv.metadata.labels.as_ref();
        let bound = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_some());
        if labels.is_some_and(|l| l.contains_key(POOL_LABEL)) && !bound {
            return None;
        }
        let csi = pv.spec.as_ref()?.csi.as_ref()?;
        if csi.driver != self.ctx.driver_name {
            return None;
        }
        let id = VolumeId::parse(&csi.volume_handle).ok()?;
        Some(LocalPv {
            name: pv.metadata.name.clone()?,
            uid: pv.metadata.uid.clone(),
            node: id.node?,
            pool: id.pool,
            marked: labels.is_some_and(|l| l.contains_key(LOST_LABEL)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};

    fn node(name: &str, taint: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec = Some(NodeSpec {
            taints: taint.map(|k| {
                vec![Taint {
                    key: k.into(),
                    effect: "NoExecute".into(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        n
    }

    fn pv(name: &str, node: &str, marked: bool) -> LocalPv {
        LocalPv {
            name: name.into(),
            uid: None,
            node: node.into(),
            pool: "p".into(),
            marked,
        }
    }

    #[test]
    fn tainted_and_removed_nodes_are_lost_and_come_back() {
        let pvs = [
            pv("a", "n1", false),
            pv("b", "n2", false),
            pv("c", "gone", false),
            pv("d", "n3", true),
        ];
        let nodes = [
            node("n1", Some(OUT_OF_SERVICE)),
            node("n2", Some("node.kubernetes.io/unreachable")),
            node("n3", None),
        ];
        let none = BTreeSet::new();
        let lost = lost_nodes(&nodes, &pvs, &none);
        assert_eq!(lost.keys().collect::<Vec<_>>(), ["gone", "n1"]);
        // A node whose agent answers is not removed, whatever the Node list says.
        let answering = BTreeSet::from(["gone".to_string()]);
        assert!(!lost_nodes(&nodes, &pvs, &answering).contains_key("gone"));
        assert!(lost["n1"].contains("out-of-service"));
        assert!(lost["gone"].contains("removed"));
        let todo: Vec<(&str, bool)> = changes(&pvs, &lost)
            .iter()
            .map(|(p, why)| (p.name.as_str(), why.is_some()))
            .collect();
        // Marked: the tainted and the removed node's; unmarked: n3's, back.
        // An unreachable node is not lost (it may come back by itself).
        assert_eq!(todo, [("a", true), ("c", true), ("d", false)]);
        // Already marked and still lost: nothing to do.
        let again = [pv("a", "n1", true)];
        assert!(changes(&again, &lost).is_empty());
    }
}
