//! Static PersistentVolumes for the free LUNs of LUN pools (iscsi, scsi,
//! mpath), as local-static-provisioner does for local disks: each free LUN
//! becomes an Available PV of the pool's StorageClass (the class whose
//! `pool` parameter names it), with node affinity to the node that sees it
//! — or, for a shared pool (claims in the cluster), to every node serving
//! the pool, with a volume handle naming no node — so Kubernetes binds PVCs
//! of that class to LUNs of the right size. A PV
//! whose LUN was handed out dynamically meanwhile or vanished is withdrawn
//! while it is still Available; a bound PV is never touched (the DELETE
//! carries the uid and resourceVersion read, so a PV bound between the
//! read and the delete is kept). The LUN is
//! claimed on the node when the PV's volume is first staged. Driven by the
//! leader's round (`round.rs`), after the status is written.

use super::reports::LunReport;
use crate::agents::model::Lun;
use k8s_openapi::{
    api::{
        core::v1::{
            CSIPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
            PersistentVolume, PersistentVolumeSpec, VolumeNodeAffinity,
        },
        storage::v1::StorageClass,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use pool_csi_common::{
    params::{KEY_FSTYPE, KEY_POOL},
    VolumeId, TOPOLOGY_NODE_KEY,
};
use std::collections::{BTreeMap, BTreeSet};

/// Label on every static PV: the pool it belongs to.
pub const POOL_LABEL: &str = "pool-csi.io/static-pool";
/// Label on every static PV: the node that sees the LUN (empty for a
/// shared pool's LUN).
pub const NODE_LABEL: &str = "pool-csi.io/static-node";

/// The LUNs of one pool as PVs see them: from one node, or for a shared
/// pool from all its nodes at once.
struct Seen<'a> {
    pool: &'a str,
    /// The node in the volume handle and the PV's label; None: shared.
    node: Option<&'a str>,
    /// Each LUN with the nodes that see it (its PV's node affinity).
    luns: Vec<(&'a Lun, Vec<&'a str>)>,
}

/// Reports as PVs see them: a shared pool's reports merged (its nodes list
/// the same claims), LUNs in the order first reported, each with the nodes
/// that list it — a LUN masked from some nodes is bound where it is seen.
fn merge(reports: &[LunReport]) -> Vec<Seen<'_>> {
    let mut out: Vec<Seen> = Vec::new();
    for r in reports {
        let at = out
            .iter()
            .position(|s| r.shared && s.node.is_none() && s.pool == r.pool)
            .unwrap_or_else(|| {
                out.push(Seen {
                    pool: &r.pool,
                    node: (!r.shared).then_some(r.node.as_str()),
                    luns: Vec::new(),
                });
                out.len() - 1
            });
        let s = &mut out[at];
        for l in &r.luns {
            match s.luns.iter_mut().find(|(x, _)| x.identity == l.identity) {
                Some((_, nodes)) => nodes.push(&r.node),
                None => s.luns.push((l, vec![&r.node])),
            }
        }
    }
    out
}

/// What a round changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub created: Vec<String>,
    pub deleted: Vec<String>,
}

pub struct StaticPvs {
    client: kube::Client,
    driver: String,
}

fn pv_name(pool: &str, static_name: &str) -> String {
    format!("{pool}-{static_name}")
}

impl StaticPvs {
    pub fn new(client: kube::Client, driver: &str) -> Self {
        Self {
            client,
            driver: driver.into(),
        }
    }

    /// The class for each pool: the first (by name) of this driver's
    /// StorageClasses whose `pool` parameter names it.
    async fn classes(&self) -> Result<BTreeMap<String, StorageClass>, kube::Error> {
        let mut out = BTreeMap::new();
        let mut all = Api::<StorageClass>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for sc in all.into_iter().filter(|sc| sc.provisioner == self.driver) {
            if let Some(pool) = sc
                .parameters
                .as_ref()
                .and_then(|p| p.get(KEY_POOL))
                .cloned()
            {
                out.entry(pool).or_insert(sc);
            }
        }
        Ok(out)
    }

    fn pv(&self, r: &Seen, l: &Lun, nodes: &[&str], sc: &StorageClass) -> PersistentVolume {
        let class = sc.metadata.name.clone().unwrap_or_default();
        let fs = sc
            .parameters
            .as_ref()
            .and_then(|p| p.get(KEY_FSTYPE))
            .cloned()
            .unwrap_or_else(|| "ext4".into());
        let handle = VolumeId::new(r.pool, r.node, &l.static_name);
        let mut pv = PersistentVolume {
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(l.size.to_string()),
                )])),
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                persistent_volume_reclaim_policy: Some("Retain".into()),
                storage_class_name: Some(class),
                volume_mode: Some("Filesystem".into()),
                csi: Some(CSIPersistentVolumeSource {
                    driver: self.driver.clone(),
                    volume_handle: handle.to_string(),
                    fs_type: Some(fs),
                    ..Default::default()
                }),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: TOPOLOGY_NODE_KEY.into(),
                                operator: "In".into(),
                                values: Some(nodes.iter().map(|n| n.to_string()).collect()),
                            }]),
                            ..Default::default()
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        pv.metadata.name = Some(pv_name(r.pool, &l.static_name));
        pv.metadata.labels = Some(BTreeMap::from([
            (POOL_LABEL.to_string(), r.pool.to_string()),
            (
                NODE_LABEL.to_string(),
                r.node.unwrap_or_default().to_string(),
            ),
        ]));
        pv.metadata.annotations = Some(BTreeMap::from([
            (
                "pv.kubernetes.io/provisioned-by".to_string(),
                self.driver.clone(),
            ),
            ("pool-csi.io/lun".to_string(), l.address.clone()),
            ("pool-csi.io/lun-identity".to_string(), l.identity.clone()),
        ]));
        pv
    }

    /// One round over the LUN pools that reported: PVs for free LUNs made,
    /// Available PVs whose LUN is gone or taken withdrawn.
    pub async fn reconcile(&self, reports: &[LunReport]) -> Result<Changes, kube::Error> {
        let classes = self.classes().await?;
        let api: Api<PersistentVolume> = Api::all(self.client.clone());
        let existing = api
            .list(&ListParams::default().labels(POOL_LABEL))
            .await?
            .items;
        let names: BTreeSet<String> = existing
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let mut changes = Changes::default();
        let mut wanted = BTreeSet::new();
        let seen = merge(reports);
        for r in &seen {
            let Some(sc) = classes.get(r.pool) else {
                continue; // no StorageClass names this pool: nothing to publish
            };
            for (l, nodes) in &r.luns {
                let name = pv_name(r.pool, &l.static_name);
                let free = l.volume.is_none();
                if free || l.volume.as_deref() == Some(l.static_name.as_str()) {
                    wanted.insert(name.clone());
                }
                if free && !names.contains(&name) {
                    match api
                        .create(&PostParams::default(), &self.pv(r, l, nodes, sc))
                        .await
                    {
                        Ok(_) => changes.created.push(name),
                        Err(kube::Error::Api(s)) if s.code == 409 => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let reported: BTreeSet<(&str, &str)> = seen
            .iter()
            .map(|r| (r.pool, r.node.unwrap_or_default()))
            .collect();
        for pv in &existing {
            let labels = pv.metadata.labels.clone().unwrap_or_default();
            let key = (
                labels.get(POOL_LABEL).map(String::as_str).unwrap_or(""),
                labels.get(NODE_LABEL).map(String::as_str).unwrap_or(""),
            );
            let name = pv.metadata.name.clone().unwrap_or_default();
            // Available and claimed by nobody: the PV controller sets
            // claimRef before the phase, and a PV already being deleted
            // (held by its protection finalizer) is not deleted again.
            let available = pv.status.as_ref().and_then(|s| s.phase.as_deref())
                == Some("Available")
                && pv.spec.as_ref().is_none_or(|s| s.claim_ref.is_none())
                && pv.metadata.deletion_timestamp.is_none();
            if reported.contains(&key) && !wanted.contains(&name) && available {
                // Only the PV as read: one bound meanwhile (a new
                // resourceVersion) answers 409 and is kept.
                let exactly = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: pv.metadata.uid.clone(),
                        resource_version: pv.metadata.resource_version.clone(),
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &exactly).await {
                    Ok(_) => changes.deleted.push(name),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                        tracing::debug!(pv = %name, code = s.code, "static PV changed or gone before its withdrawal; kept for the next round");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_testkit::fake_api::FakeApi;
    use serde_json::json;

    const PVS: &str = "/api/v1/persistentvolumes";

    fn lun(id: &str, mib: u64, volume: &str) -> Lun {
        Lun {
            identity: id.into(),
            size: mib << 20,
            address: format!("LUN {id}"),
            volume: (!volume.is_empty()).then(|| volume.into()),
            static_name: format!("static-{id}"),
        }
    }

    fn class(fake: &FakeApi, name: &str, pool: &str, provisioner: &str) {
        fake.insert(
            &format!("/apis/storage.k8s.io/v1/storageclasses/{name}"),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                   "provisioner": provisioner, "parameters": {"pool": pool, "csi.storage.k8s.io/fstype": "xfs"}}),
        );
    }

    fn names(fake: &FakeApi) -> Vec<String> {
        fake.objects(PVS)
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[tokio::test]
    async fn free_luns_become_pvs_and_taken_ones_are_withdrawn() {
        let fake = FakeApi::new();
        class(&fake, "san-b", "san", "pool-csi.io");
        class(&fake, "san-a", "san", "pool-csi.io");
        class(&fake, "theirs", "san", "other.example.com");
        let s = StaticPvs::new(fake.client(), "pool-csi.io");
        let mut reports = vec![
            LunReport {
                pool: "san".into(),
                node: "n1".into(),
                shared: false,
                luns: vec![
                    lun("1", 64, ""),
                    lun("2", 128, "pvc-dynamic"),
                    lun("3", 32, ""),
                ],
            },
            LunReport {
                pool: "nosc".into(),
                node: "n1".into(),
                shared: false,
                luns: vec![lun("9", 8, "")],
            },
        ];
        let c = s.reconcile(&reports).await.unwrap();
        assert_eq!(c.created, ["san-static-1", "san-static-3"]);
        let pv = fake.object(&format!("{PVS}/san-static-1")).unwrap();
        assert_eq!(
            pv["spec"]["storageClassName"], "san-a",
            "first class by name"
        );
        assert_eq!(pv["spec"]["capacity"]["storage"], (64u64 << 20).to_string());
        let handle = VolumeId {
            pool: "san".into(),
            node: Some("n1".into()),
            name: "static-1".into(),
        };
        assert_eq!(pv["spec"]["csi"]["volumeHandle"], handle.to_string());
        assert_eq!(pv["spec"]["csi"]["fsType"], "xfs");
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        let term =
            &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!(
            (term["key"].as_str(), term["values"][0].as_str()),
            (Some(TOPOLOGY_NODE_KEY), Some("n1"))
        );
        assert_eq!(pv["metadata"]["labels"][POOL_LABEL], "san");

        // Idempotent.
        assert_eq!(s.reconcile(&reports).await.unwrap(), Changes::default());

        // LUN 1 bound through its PV (claimed under its static name): kept.
        // LUN 3 handed out dynamically meanwhile: its Available PV goes.
        fake.modify(&format!("{PVS}/san-static-1"), |p| {
            p["status"] = json!({"phase": "Bound"})
        });
        fake.modify(&format!("{PVS}/san-static-3"), |p| {
            p["status"] = json!({"phase": "Available"})
        });
        reports[0].luns = vec![
            lun("1", 64, "static-1"),
            lun("2", 128, "pvc-dynamic"),
            lun("3", 32, "pvc-other"),
        ];
        let c = s.reconcile(&reports).await.unwrap();
        assert_eq!(c.deleted, ["san-static-3"]);
        assert_eq!(names(&fake), ["san-static-1"]);

        // A bound PV whose LUN vanished stays (the volume shows abnormal);
        // a node that did not report keeps its PVs.
        reports[0].luns.clear();
        assert_eq!(s.reconcile(&reports).await.unwrap(), Changes::default());
        assert_eq!(s.reconcile(&[]).await.unwrap(), Changes::default());
        assert_eq!(names(&fake), ["san-static-1"]);
    }

    /// The PV is read Available, then bound by Kubernetes before the
    /// withdrawal lands: the DELETE carries the uid and resourceVersion
    /// read, so the bound PV is kept (409) and the round goes on.
    #[tokio::test]
    async fn a_pv_bound_between_the_read_and_the_withdrawal_is_kept() {
        let fake = FakeApi::new();
        class(&fake, "san", "san", "pool-csi.io");
        let s = StaticPvs::new(fake.client(), "pool-csi.io");
        let mut reports = vec![LunReport {
            pool: "san".into(),
            node: "n1".into(),
            shared: false,
            luns: vec![lun("1", 64, ""), lun("2", 64, "")],
        }];
        s.reconcile(&reports).await.unwrap();
        for n in ["1", "2"] {
            fake.modify(&format!("{PVS}/san-static-{n}"), |p| {
                p["status"] = json!({"phase": "Available"})
            });
        }
        // Both LUNs taken on the node; PV 1 is bound meanwhile.
        reports[0].luns = vec![lun("1", 64, "pvc-x"), lun("2", 64, "pvc-y")];
        fake.before(&format!("DELETE {PVS}/san-static-1"), |f| {
            f.modify(&format!("{PVS}/san-static-1"), |p| {
                p["status"] = json!({"phase": "Bound"});
                p["spec"]["claimRef"] = json!({"namespace": "app", "name": "data"});
            })
        });
        let c = s.reconcile(&reports).await.unwrap();
        assert_eq!(c.deleted, ["san-static-2"], "the bound PV is not withdrawn");
        assert_eq!(names(&fake), ["san-static-1"]);

        // Still Available but already claimed (the PV controller writes
        // claimRef before the phase), or already being deleted: left alone.
        reports[0].luns = vec![lun("1", 64, "pvc-x"), lun("3", 64, "")];
        s.reconcile(&reports).await.unwrap();
        fake.modify(&format!("{PVS}/san-static-1"), |p| {
            p["status"] = json!({"phase": "Available"})
        });
        fake.modify(&format!("{PVS}/san-static-3"), |p| {
            p["status"] = json!({"phase": "Available"});
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        });
        reports[0].luns = vec![lun("1", 64, "pvc-x"), lun("3", 64, "pvc-z")];
        assert_eq!(s.reconcile(&reports).await.unwrap(), Changes::default());
        assert_eq!(names(&fake), ["san-static-1", "san-static-3"]);
    }

    #[tokio::test]
    async fn a_shared_pool_s_lun_is_one_pv_usable_on_all_its_nodes() {
        let fake = FakeApi::new();
        class(&fake, "san", "san", "pool-csi.io");
        let s = StaticPvs::new(fake.client(), "pool-csi.io");
        let report = |node: &str, luns: Vec<Lun>| LunReport {
            pool: "san".into(),
            node: node.into(),
            shared: true,
            luns,
        };
        let mut reports = vec![
            report("n1", vec![lun("1", 64, ""), lun("2", 32, "pvc-a")]),
            report(
                "n2",
                vec![lun("1", 64, ""), lun("2", 32, "pvc-a"), lun("3", 16, "")],
            ),
        ];
        let c = s.reconcile(&reports).await.unwrap();
        assert_eq!(
            c.created,
            ["san-static-1", "san-static-3"],
            "one PV per LUN, not per node"
        );
        let masked = fake.object(&format!("{PVS}/san-static-3")).unwrap();
        let term = &masked["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
            ["matchExpressions"][0];
        assert_eq!(term["values"], json!(["n2"]), "only n2 sees LUN 3");
        fake.remove(&format!("{PVS}/san-static-3"));
        reports[1].luns.pop();
        let pv = fake.object(&format!("{PVS}/san-static-1")).unwrap();
        let handle = VolumeId::new("san", None, "static-1");
        assert_eq!(pv["spec"]["csi"]["volumeHandle"], handle.to_string());
        let term =
            &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
        assert_eq!(term["values"], json!(["n1", "n2"]));
        assert_eq!(pv["metadata"]["labels"][NODE_LABEL], "");

        // Taken (from any node): withdrawn while still Available.
        fake.modify(&format!("{PVS}/san-static-1"), |p| {
            p["status"] = json!({"phase": "Available"})
        });
        for r in &mut reports {
            r.luns[0].volume = Some("pvc-b".into());
        }
        assert_eq!(
            s.reconcile(&reports).await.unwrap().deleted,
            ["san-static-1"]
        );
        assert!(names(&fake).is_empty());
    }
}
