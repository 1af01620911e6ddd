//! Keeps `StoragePool.status` current from the node agents' reports, and
//! tells users through Events when a pool stops running on a node or no
//! node serves it. Driven by the leader's round (`round.rs`); writes a
//! status only when it changed, so a quiet cluster costs one LIST per round.

use super::{
    events::{pool_ref, Recorder},
    reports::Reports,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use pool_csi_common::{
    pool_spec::StoragePool,
    pool_status::{quantity, ExtentStatus, NodePoolStatus, PoolCondition, StoragePoolStatus},
};

/// The status of pool `name` from the reports; `previous` keeps condition
/// transition times that did not change.
pub fn summarize(
    name: &str,
    reports: &Reports,
    previous: Option<&StoragePoolStatus>,
    now: Timestamp,
) -> StoragePoolStatus {
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    let mut lun_pool = false;
    // Nodes whose pool records its LUN hand-outs on its own (not shared).
    let mut on_own = Vec::new();
    for (node, r) in reports {
        match r {
            Ok(pools) => {
                if let Some(p) = pools.iter().find(|p| p.name == name) {
                    lun_pool |= p.pool_type.is_lun_pool();
                    if !p.shared {
                        on_own.push(node.clone());
                    }
                    nodes.push(NodePoolStatus {
                        node: node.clone(),
                        state: p.state.as_str().into(),
                        capacity_bytes: p.capacity,
                        allocation_bytes: p.allocation,
                        available_bytes: p.available,
                        volumes: p.volume_count,
                        free_extents: p
                            .free_extents
                            .iter()
                            .map(|e| ExtentStatus {
                                start: e.start,
                                end: e.end,
                                size: e.size(),
                            })
                            .collect(),
                        message: (!p.message.is_empty()).then(|| p.message.clone()),
                    });
                }
            }
            Err(why) => unreachable.push(format!("{node} ({why})")),
        }
    }
    let running: Vec<&NodePoolStatus> = nodes.iter().filter(|n| n.state == "running").collect();
    // A shared pool's nodes all report the same storage: count it once.
    let shared = on_own.is_empty();
    let sum = |f: fn(&NodePoolStatus) -> u64| {
        let each = running.iter().map(|n| f(n));
        match shared {
            true => each.max().unwrap_or(0),
            false => each.sum::<u64>(),
        }
    };
    let (state, reason, message) = if nodes.is_empty() && !unreachable.is_empty() {
        // Whether an unreachable node serves it is unknown: no alarm yet.
        (
            "Unknown",
            "NodesUnreachable",
            "no reachable node serves this pool".to_string(),
        )
    } else if nodes.is_empty() {
        (
            "Pending",
            "NoNodes",
            "no node serves this pool: check spec.nodeSelector and that the node plugin runs there"
                .to_string(),
        )
    } else if running.len() == nodes.len() {
        (
            "Running",
            "AllNodesRunning",
            format!("running on {} node(s)", nodes.len()),
        )
    } else {
        let down: Vec<String> = nodes
            .iter()
            .filter(|n| n.state != "running")
            .map(|n| {
                format!(
                    "{}: {} ({})",
                    n.node,
                    n.state,
                    n.message.as_deref().unwrap_or("no reason given")
                )
            })
            .collect();
        (
            if running.is_empty() {
                "Inactive"
            } else {
                "Degraded"
            },
            "NodesNotRunning",
            down.join("; "),
        )
    };
    let mut message = message;
    if !unreachable.is_empty() {
        message = format!("{message}; not reachable: {}", unreachable.join(", "));
    }
    let ready = if state == "Running" { "True" } else { "False" };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == ready)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    let mut conditions = vec![PoolCondition {
        type_: "Ready".into(),
        status: ready.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
    }];
    if lun_pool && !nodes.is_empty() {
        conditions.push(dynamic_condition(&nodes, &on_own, previous, now));
    }
    StoragePoolStatus {
        state: Some(state.into()),
        capacity: Some(quantity(sum(|n| n.capacity_bytes))),
        allocation: Some(quantity(sum(|n| n.allocation_bytes))),
        available: Some(quantity(sum(|n| n.available_bytes))),
        nodes_ready: Some(format!("{}/{}", running.len(), nodes.len())),
        nodes,
        conditions,
    }
}

/// LUN pools: whether CreateVolume can hand LUNs out — not while the pool
/// is defined on several nodes and some of them (`on_own`) record their
/// hand-outs on their own rather than in the cluster.
fn dynamic_condition(
    nodes: &[NodePoolStatus],
    on_own: &[String],
    previous: Option<&StoragePoolStatus>,
    now: Timestamp,
) -> PoolCondition {
    let (status, reason, message) = if nodes.len() > 1 && !on_own.is_empty() {
        (
            "False",
            "DefinedOnSeveralNodes",
            format!(
                "defined on {} nodes, and {} record LUN hand-outs on their own: CreateVolume is refused; run the node plugins with --pools-from-cluster so hand-outs are recorded in the cluster, or give the pool a nodeSelector for one node (static PersistentVolumes still work)",
                nodes.len(),
                on_own.join(", ")
            ),
        )
    } else if nodes.len() > 1 {
        (
            "True",
            "SharedClaims",
            format!(
                "free LUNs are handed out by best fit from any of its {} nodes; hand-outs are recorded in the cluster",
                nodes.len()
            ),
        )
    } else {
        (
            "True",
            "OneNode",
            "free LUNs are handed out by best fit".to_string(),
        )
    };
    let since = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == DYNAMIC))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    PoolCondition {
        type_: DYNAMIC.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
    }
}

/// The condition type saying whether a LUN pool provisions dynamically.
const DYNAMIC: &str = "DynamicProvisioning";

/// Nodes whose pool state left "running" between `old` and `new` (or that
/// appeared not running), with their message.
fn newly_down(old: Option<&StoragePoolStatus>, new: &StoragePoolStatus) -> Vec<(String, String)> {
    new.nodes
        .iter()
        // A pool still starting (its node plugin just started) is no alarm.
        .filter(|n| n.state != "running" && n.state != "starting")
        .filter(|n| {
            !old.is_some_and(|o| {
                o.nodes
                    .iter()
                    .any(|p| p.node == n.node && p.state == n.state && p.message == n.message)
            })
        })
        .map(|n| {
            (
                n.node.clone(),
                format!(
                    "pool is {} on node {}: {}",
                    n.state,
                    n.node,
                    n.message.as_deref().unwrap_or("no reason given")
                ),
            )
        })
        .collect()
}

pub struct StatusWriter {
    client: kube::Client,
    events: Recorder,
}

impl StatusWriter {
    pub fn new(client: kube::Client, instance: &str) -> Self {
        Self {
            events: Recorder::new(client.clone(), instance),
            client,
        }
    }

    /// One round: every StoragePool's status from `reports`, written where
    /// it changed; Events for pools that stopped running somewhere or that
    /// no node serves. Returns how many statuses were written.
    pub async fn reconcile(&self, reports: &Reports, now: Timestamp) -> Result<usize, kube::Error> {
        let api: Api<StoragePool> = Api::all(self.client.clone());
        let mut written = 0;
        for sp in api.list(&ListParams::default()).await?.items {
            let name = sp.metadata.name.clone().unwrap_or_default();
            let old = sp.status.as_ref();
            let new = summarize(&name, reports, old, now);
            if old == Some(&new) {
                continue;
            }
            for (_, why) in newly_down(old, &new) {
                self.event(&sp, "PoolNotRunning", &why, now).await;
            }
            if new.state.as_deref() == Some("Pending")
                && old.and_then(|o| o.state.as_deref()) != Some("Pending")
            {
                let why = &new.conditions[0].message;
                self.event(&sp, "NoNodes", why, now).await;
            }
            let patch = serde_json::json!({ "status": new });
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            written += 1;
        }
        Ok(written)
    }

    /// A Warning Event on `sp` (best effort: a failure is logged).
    async fn event(&self, sp: &StoragePool, reason: &str, message: &str, now: Timestamp) {
        self.events.warn(pool_ref(sp), reason, message, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::model::{Extent, PoolReport, PoolState};
    use pool_csi_common::PoolType;
    use pool_csi_testkit::fake_api::FakeApi;
    use serde_json::json;
    use std::collections::BTreeMap;

    const SP: &str = "/apis/pool-csi.io/v1alpha1/storagepools";

    fn info(name: &str, state: PoolState, cap_mib: u64, message: &str) -> PoolReport {
        PoolReport {
            state,
            capacity: cap_mib << 20,
            allocation: (cap_mib / 4) << 20,
            available: (cap_mib - cap_mib / 4) << 20,
            volume_count: 3,
            message: message.into(),
            free_extents: vec![Extent {
                start: 1 << 20,
                end: 9 << 20,
            }],
            ..PoolReport::running(name, PoolType::Disk)
        }
    }

    fn pool(fake: &FakeApi, name: &str) {
        fake.insert(
            &format!("{SP}/{name}"),
            json!({"apiVersion": "pool-csi.io/v1alpha1", "kind": "StoragePool",
                   "metadata": {"name": name, "uid": format!("u-{name}")},
                   "spec": {"type": "disk", "source": {"device": "/dev/vdb"}}}),
        );
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn events(fake: &FakeApi) -> Vec<String> {
        fake.requests()
            .into_iter()
            .filter(|r| r.starts_with("POST /api/v1/namespaces/default/events"))
            .collect()
    }

    #[test]
    fn the_summary_reads_like_virsh_pool_list() {
        let reports: Reports = BTreeMap::from([
            (
                "n1".into(),
                Ok(vec![info("d", PoolState::Running, 1024, "")]),
            ),
            (
                "n2".into(),
                Ok(vec![info(
                    "d",
                    PoolState::Inactive,
                    0,
                    "disk /dev/vdb is missing",
                )]),
            ),
            ("n3".into(), Ok(vec![])),
            ("n4".into(), Err("connection refused".into())),
        ]);
        let s = summarize("d", &reports, None, now());
        assert_eq!(s.state.as_deref(), Some("Degraded"));
        assert_eq!(s.capacity.as_deref(), Some("1Gi"));
        assert_eq!(s.allocation.as_deref(), Some("256Mi"));
        assert_eq!(s.available.as_deref(), Some("768Mi"));
        assert_eq!(s.nodes_ready.as_deref(), Some("1/2"));
        assert_eq!(s.nodes[0].free_extents.len(), 1);
        assert_eq!(s.nodes[0].volumes, 3);
        let c = &s.conditions[0];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NodesNotRunning")
        );
        assert!(
            c.message
                .contains("n2: inactive (disk /dev/vdb is missing)"),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("n4 (connection refused)"),
            "{}",
            c.message
        );

        assert_eq!(s.conditions.len(), 1, "not a LUN pool");
        let lun_on = |node: &str, shared: bool| {
            (
                node.to_string(),
                Ok(vec![PoolReport {
                    pool_type: PoolType::Iscsi,
                    shared,
                    ..info("san", PoolState::Running, 64, "")
                }]),
            )
        };
        let lun = |node: &str| lun_on(node, false);
        let one = summarize("san", &BTreeMap::from([lun("n1")]), None, now());
        assert_eq!(one.conditions[1].status, "True");
        let two = summarize("san", &BTreeMap::from([lun("n1"), lun("n2")]), None, now());
        let c = &two.conditions[1];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("DynamicProvisioning", "False", "DefinedOnSeveralNodes")
        );
        assert!(
            c.message.contains("n1, n2 record") && c.message.contains("nodeSelector"),
            "{}",
            c.message
        );
        let later = summarize(
            "san",
            &BTreeMap::from([lun("n1"), lun("n2")]),
            Some(&two),
            now() + k8s_openapi::jiff::SignedDuration::from_secs(60),
        );
        assert_eq!(
            later.conditions[1].last_transition_time, c.last_transition_time,
            "unchanged: same time"
        );
        // Claims in the cluster: any node hands LUNs out, and the one
        // target's space is counted once.
        let shared = summarize(
            "san",
            &BTreeMap::from([lun_on("n1", true), lun_on("n2", true)]),
            Some(&two),
            now(),
        );
        let c = &shared.conditions[1];
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SharedClaims")
        );
        assert_eq!(shared.capacity, one.capacity);
        let mixed = summarize(
            "san",
            &BTreeMap::from([lun_on("n1", true), lun_on("n2", false)]),
            None,
            now(),
        );
        let c = &mixed.conditions[1];
        assert_eq!(c.status, "False");
        assert!(c.message.contains("and n2 record"), "{}", c.message);
        let unknown = summarize("other", &reports, None, now());
        assert_eq!(
            unknown.state.as_deref(),
            Some("Unknown"),
            "n4 might serve it"
        );
        let mut all_up = reports.clone();
        all_up.remove("n4");
        let none = summarize("other", &all_up, None, now());
        assert_eq!(none.state.as_deref(), Some("Pending"));
        assert!(none.conditions[0].message.contains("nodeSelector"));
    }

    #[tokio::test]
    async fn statuses_are_written_when_they_change_and_failures_become_events() {
        let fake = FakeApi::new();
        pool(&fake, "d");
        pool(&fake, "lonely");
        let w = StatusWriter::new(fake.client(), "controller-0");
        let mut reports: Reports = BTreeMap::from([(
            "n1".into(),
            Ok(vec![info("d", PoolState::Running, 1024, "")]),
        )]);
        assert_eq!(w.reconcile(&reports, now()).await.unwrap(), 2);
        let d = fake.object(&format!("{SP}/d")).unwrap();
        assert_eq!(d["status"]["state"], "Running");
        assert_eq!(d["status"]["capacity"], "1Gi");
        assert_eq!(d["status"]["nodes"][0]["freeExtents"][0]["size"], 8 << 20);
        assert_eq!(
            fake.object(&format!("{SP}/lonely")).unwrap()["status"]["state"],
            "Pending"
        );
        assert_eq!(events(&fake).len(), 1, "NoNodes for the pool nobody serves");

        // Nothing changed: no write, no Event.
        let before = fake.requests().len();
        assert_eq!(w.reconcile(&reports, now()).await.unwrap(), 0);
        assert_eq!(fake.requests().len(), before + 1, "one LIST only");

        // The pool stops on n1: status and one Warning Event, once.
        reports.insert(
            "n1".into(),
            Ok(vec![info(
                "d",
                PoolState::Degraded,
                1024,
                "target directory vanished",
            )]),
        );
        assert_eq!(w.reconcile(&reports, now()).await.unwrap(), 1);
        let d = fake.object(&format!("{SP}/d")).unwrap();
        assert_eq!(d["status"]["state"], "Inactive");
        assert_eq!(d["status"]["conditions"][0]["status"], "False");
        assert_eq!(events(&fake).len(), 2);
        let evs = fake.objects("/api/v1/namespaces/default/events");
        let down = evs
            .iter()
            .find(|e| e["reason"] == "PoolNotRunning")
            .unwrap();
        assert_eq!(down["type"], "Warning");
        assert_eq!(down["involvedObject"]["name"], "d");
        assert_eq!(down["involvedObject"]["uid"], "u-d");
        let msg = down["message"].as_str().unwrap();
        assert!(
            msg.contains("degraded on node n1: target directory vanished"),
            "{msg}"
        );
        w.reconcile(&reports, now()).await.unwrap();
        assert_eq!(events(&fake).len(), 2, "no repeat for the same failure");

        // The API server fails: the round reports it, nothing half-written.
        fake.fail_next(500);
        let e = w.reconcile(&reports, now()).await.unwrap_err();
        assert!(
            matches!(e, kube::Error::Api(ref s) if s.code == 500),
            "{e:?}"
        );
    }
}
