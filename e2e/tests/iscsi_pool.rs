//! iscsi pools against a real target: tgtd on loopback with file-backed
//! LUNs, discovered through libiscsi's tools by the real node plugin.
//! Inventory, sizes and identities; best-fit hand-out and release; a LUN
//! added and removed on the target; CHAP accepted and refused; an
//! unreachable portal and a wrong IQN. (Logging a node in needs the kernel
//! initiator: that part runs on recorded iscsiadm output and sysfs trees in
//! `node/src/tools/iscsi.rs`.)

use pool_csi_e2e::{eventually, req, tgt::Target, which, Driver, Options};
use pool_csi_proto::csi;
use std::{collections::HashMap, time::Duration};
use tonic::Code;

const MIB: i64 = 1 << 20;
const IQN: &str = "iqn.2026-11.io.pool-csi:store";
const CHAP_IQN: &str = "iqn.2026-11.io.pool-csi:locked";

/// A target serving IQN with LUNs 1, 2, … of the given sizes (MiB).
fn store(dir: &std::path::Path, mib: &[u64]) -> Target {
    let t = Target::start(dir);
    t.target("1", IQN);
    for (i, m) in mib.iter().enumerate() {
        t.lun(dir, "1", &(i + 1).to_string(), *m);
    }
    t
}

/// Whether the target tools are missing (then the test is skipped, saying so).
fn no_target_tools() -> bool {
    let missing = which("tgtd").is_none() || which("iscsi-ls").is_none();
    if missing {
        pool_csi_e2e::skip(
            "tgtd",
            "needs tgtd (tgt) and iscsi-ls (libiscsi-bin); run dev/setup",
        );
    }
    missing
}

fn pool(name: &str, port: u16, iqn: &str, auth: &str) -> String {
    format!(
        "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: {name} }}\nspec:\n  type: iscsi\n  source:\n    host: 127.0.0.1:{port}\n    device: {iqn}\n{auth}"
    )
}

fn on(pool: &str, name: &str, bytes: i64, limit: i64) -> csi::CreateVolumeRequest {
    let mut r = req::create(name, bytes, &[("pool", pool)]);
    r.capacity_range.as_mut().unwrap().limit_bytes = limit;
    r.volume_capabilities = vec![req::block_cap()];
    r
}

async fn capacity(c: &mut pool_csi_e2e::clients::Clients, pool: &str) -> i64 {
    c.controller
        .get_capacity(csi::GetCapacityRequest {
            parameters: HashMap::from([("pool".to_string(), pool.to_string())]),
            ..Default::default()
        })
        .await
        .expect("capacity")
        .into_inner()
        .maximum_volume_size
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn luns_of_a_real_target_are_discovered_handed_out_and_returned() {
    pool_csi_e2e::require!(false);
    if no_target_tools() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir(scratch.path().join("locked")).unwrap();
    let t = store(scratch.path(), &[32, 64, 128]);
    // The CHAP target gets its own portal: iscsi-ls logs in to every target
    // of a portal and stops at the first whose credentials it lacks.
    let locked = Target::start(&scratch.path().join("locked"));
    locked.target("1", CHAP_IQN);
    locked.lun(scratch.path(), "1", "1", 16);
    locked.adm(&[
        "--op",
        "new",
        "--mode",
        "account",
        "--user",
        "alice",
        "--password",
        "s3cret-pass",
    ]);
    locked.adm(&[
        "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice",
    ]);
    // Mutual CHAP: the target proves itself as tgt-bob.
    locked.adm(&[
        "--op",
        "new",
        "--mode",
        "account",
        "--user",
        "tgt-bob",
        "--password",
        "tgt-secret-1",
    ]);
    locked.adm(&[
        "--op",
        "bind",
        "--mode",
        "account",
        "--tid",
        "1",
        "--user",
        "tgt-bob",
        "--outgoing",
    ]);

    let auth = |secret: &str| format!("    auth: {{ username: alice, secretRef: {secret} }}\n");
    let mutual = |secret: &str| {
        format!("    auth: {{ username: alice, secretRef: chap-good, targetUsername: tgt-bob, targetSecretRef: {secret} }}\n")
    };
    let pools = [
        pool("san", t.port, IQN, ""),
        pool("chap-ok", locked.port, CHAP_IQN, &auth("chap-good")),
        pool("chap-bad", locked.port, CHAP_IQN, &auth("chap-wrong")),
        pool("mutual-ok", locked.port, CHAP_IQN, &mutual("target-good")),
        pool("mutual-bad", locked.port, CHAP_IQN, &mutual("target-wrong")),
        pool("no-portal", 1, IQN, ""),
        // Two portals, the first dead: the inventory comes from the second.
        format!("---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: two-portals }}\nspec:\n  type: iscsi\n  source:\n    hosts: [\"127.0.0.1:1\", \"127.0.0.1:{}\"]\n    device: {IQN}\n", t.port),
        pool("wrong-iqn", t.port, "iqn.2026-11.io.pool-csi:nope", ""),
    ]
    .concat();
    let d = Driver::start(Options {
        extra_pools: pools,
        secrets: vec![
            ("chap-good".into(), "s3cret-pass".into()),
            ("chap-wrong".into(), "guess".into()),
            ("target-good".into(), "tgt-secret-1".into()),
            ("target-wrong".into(), "impostor-pass".into()),
        ],
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let (_, out) = d.poolctl(&["pool-list"]);
    assert!(
        out.lines()
            .any(|l| l.contains("san") && l.contains("running")),
        "{out}"
    );
    for (pool, why) in [
        ("no-portal", "refused"),
        ("wrong-iqn", "does not offer target"),
    ] {
        let line = out.lines().find(|l| l.contains(pool)).unwrap_or_default();
        assert!(line.contains("inactive"), "{out}");
        let (_, info) = d.poolctl(&["pool-info", pool]);
        assert!(info.contains(why), "{pool}: {info}");
    }
    assert!(!out.contains("s3cret"), "a secret in pool-list: {out}");

    // Inventory: three LUNs, exact sizes.
    assert_eq!(capacity(&mut c, "san").await, 128 * MIB, "largest free LUN");
    assert_eq!(
        capacity(&mut c, "two-portals").await,
        128 * MIB,
        "through the live portal"
    );
    let (_, info) = d.poolctl(&["pool-info", "san"]);
    assert!(
        info.contains("224.00 MiB"),
        "capacity = 32 + 64 + 128 MiB: {info}"
    );

    // Best fit: 40 MiB gets the 64 MiB LUN; a range no LUN fits is refused.
    let v1 = c
        .controller
        .create_volume(on("san", "a", 40 * MIB, 0))
        .await
        .expect("a")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v1.capacity_bytes, 64 * MIB);
    let again = c
        .controller
        .create_volume(on("san", "a", 40 * MIB, 0))
        .await
        .expect("idempotent")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v1.volume_id);
    let e = c
        .controller
        .create_volume(on("san", "b", 40 * MIB, 100 * MIB))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("no free LUN"), "{e:?}");
    let v2 = c
        .controller
        .create_volume(on("san", "b", 1, 0))
        .await
        .expect("b")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v2.capacity_bytes, 32 * MIB, "smallest free LUN");
    assert_eq!(capacity(&mut c, "san").await, 128 * MIB);
    // Growing a LUN is the target's business.
    let e = c
        .controller
        .controller_expand_volume(req::expand(&v2.volume_id, 64 * MIB))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // A LUN added on the target shows at the next refresh (listings reuse an
    // inventory for up to 5 s); one removed that was handed out makes its
    // volume abnormal, nothing is lost.
    t.lun(scratch.path(), "1", "4", 256);
    let since = std::time::Instant::now();
    while capacity(&mut c, "san").await != 256 * MIB {
        assert!(
            since.elapsed() < Duration::from_secs(8),
            "LUN 4 never showed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.adm(&[
        "--op",
        "delete",
        "--mode",
        "logicalunit",
        "--tid",
        "1",
        "--lun",
        "1",
    ]);
    let since = std::time::Instant::now();
    let list = loop {
        let list = c
            .controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let abnormal = list.entries.iter().any(|e| {
            e.status
                .as_ref()
                .and_then(|s| s.volume_condition.as_ref())
                .is_some_and(|c| c.abnormal)
        });
        if abnormal || since.elapsed() > Duration::from_secs(8) {
            break list;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cond = |id: &str| {
        list.entries
            .iter()
            .find(|e| e.volume.as_ref().unwrap().volume_id == id)
            .unwrap()
            .status
            .clone()
            .unwrap()
            .volume_condition
            .unwrap()
    };
    let gone = cond(&v2.volume_id);
    assert!(
        gone.abnormal && gone.message.contains("vanished"),
        "{gone:?}"
    );
    assert!(!cond(&v1.volume_id).abnormal);

    // Release: the LUN is free again and handed out to the next request.
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v1.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let v3 = c
        .controller
        .create_volume(on("san", "c", 40 * MIB, 0))
        .await
        .expect("c")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v3.capacity_bytes, 64 * MIB, "the released LUN comes back");

    // CHAP: the right secret gets the LUN list, the wrong one a clear refusal.
    assert_eq!(capacity(&mut c, "chap-ok").await, 16 * MIB);
    let (_, info) = d.poolctl(&["pool-info", "chap-bad"]);
    assert!(info.contains("Authentication failure"), "{info}");
    let (_, all) = d.poolctl(&["pool-info", "chap-ok"]);
    assert!(
        !all.contains("s3cret") && !info.contains("guess"),
        "a secret leaked: {all}{info}"
    );
    // Mutual CHAP: the target that answers with the right secret is used;
    // one that cannot prove itself is refused, with why.
    assert_eq!(capacity(&mut c, "mutual-ok").await, 16 * MIB);
    let (_, info) = d.poolctl(&["pool-info", "mutual-bad"]);
    assert!(
        info.contains("Invalid CHAP_R response from the target"),
        "{info}"
    );
    let (_, list) = d.poolctl(&["pool-list"]);
    assert!(
        !list.contains("tgt-secret") && !info.contains("impostor"),
        "a secret leaked: {list}{info}"
    );
}

/// In a cluster, the leader publishes every free LUN of the real target as
/// a static PersistentVolume of the pool's StorageClass, and withdraws the
/// Available PV of a LUN that CreateVolume hands out meanwhile. With
/// `reclaim: wipe`, a Released static PV's LUN is wiped and offered again;
/// a LUN that cannot be wiped keeps its PV Released, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_luns_become_static_persistent_volumes() {
    pool_csi_e2e::require!(false);
    if no_target_tools() {
        return;
    }
    use serde_json::json;
    let scratch = tempfile::tempdir().unwrap();
    let t = store(scratch.path(), &[32, 64]);
    let cluster = pool_csi_e2e::fake_cluster::FakeCluster::start(scratch.path()).await;
    let api = cluster.api.clone();
    cluster.node("node-1", json!({}));
    cluster.agent_pod("node-1");
    cluster.storage_pool(
        "san",
        json!({"type": "iscsi", "source": {"host": format!("127.0.0.1:{}", t.port), "device": IQN},
               "reclaim": "wipe"}),
    );
    api.insert(
        "/apis/storage.k8s.io/v1/storageclasses/san",
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "san"},
               "provisioner": "pool-csi.io", "parameters": {"pool": "san"}}),
    );
    let d = Driver::start(Options {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        ..Default::default()
    })
    .await;
    let pvs = || api.objects("/api/v1/persistentvolumes");
    let since = std::time::Instant::now();
    while pvs().len() < 2 {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "no static PVs: {:?}",
            api.requests()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut sizes: Vec<u64> = pvs()
        .iter()
        .map(|p| {
            p["spec"]["capacity"]["storage"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    sizes.sort();
    assert_eq!(
        sizes,
        [32 << 20, 64 << 20],
        "one PV per free LUN, exact sizes"
    );
    let pv = &pvs()[0];
    assert_eq!(pv["spec"]["storageClassName"], "san");
    assert!(
        pv["spec"]["csi"]["volumeHandle"]
            .as_str()
            .unwrap()
            .contains(":san::static-"),
        "in a cluster the claims are cluster-wide: the handle names no node"
    );
    let term =
        &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0];
    assert_eq!(
        term["values"],
        json!(["node-1"]),
        "usable where the pool is served"
    );

    // CreateVolume takes the 32 MiB LUN: its (Available) PV is withdrawn.
    for p in pvs() {
        let name = p["metadata"]["name"].as_str().unwrap().to_string();
        api.modify(&format!("/api/v1/persistentvolumes/{name}"), |o| {
            o["status"] = json!({"phase": "Available"})
        });
    }
    let mut c = d.clients().await;
    c.controller
        .create_volume(on("san", "dyn", 16 * MIB, 0))
        .await
        .expect("dynamic hand-out");
    let since = std::time::Instant::now();
    while pvs().len() != 1 {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "PV of the taken LUN stays: {:?}",
            pvs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        pvs()[0]["spec"]["capacity"]["storage"],
        (64u64 << 20).to_string()
    );

    // Its claim is deleted: Released. Nothing of pool-csi ever attached the
    // LUN (no claim), so there is nothing to zero: the PV goes and the LUN
    // comes back as a new Available PV.
    let name = pvs()[0]["metadata"]["name"].as_str().unwrap().to_string();
    let path = format!("/api/v1/persistentvolumes/{name}");
    let release = |api: &pool_csi_testkit::fake_api::FakeApi| {
        api.modify(&path, |o| {
            o["spec"]["claimRef"] = json!({"namespace": "default", "name": "gone"});
            o["status"] = json!({"phase": "Released"});
        })
    };
    release(&api);
    eventually("the released PV is offered again", || {
        api.object(&path)
            .is_some_and(|p| p["status"]["phase"] != "Released" && p["spec"]["claimRef"].is_null())
    })
    .await;
    // Published once (its LUN claimed, data possibly written), then
    // Released: the LUN must be zeroed first, through a login this machine
    // cannot make. The PV stays Released, and an Event says why, once.
    let handle = api.object(&path).unwrap()["spec"]["csi"]["volumeHandle"]
        .as_str()
        .unwrap()
        .to_string();
    let publish = csi::ControllerPublishVolumeRequest {
        volume_id: handle.clone(),
        node_id: "node-1".into(),
        volume_capability: Some(req::block_cap()),
        ..Default::default()
    };
    c.controller
        .controller_publish_volume(publish)
        .await
        .unwrap();
    c.controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: handle,
            node_id: "node-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    release(&api);
    let failed = || {
        api.objects("/api/v1/namespaces/default/events")
            .into_iter()
            .filter(|e| e["reason"] == "WipeFailed" && e["involvedObject"]["name"] == name.as_str())
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    eventually("a wipe that cannot run is told", || !failed().is_empty()).await;
    assert!(failed()[0].contains("could not be wiped"), "{:?}", failed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(failed().len(), 1, "told once");
    assert_eq!(api.object(&path).unwrap()["status"]["phase"], "Released");
}

/// One target, two nodes that both define the pool: each node records its
/// own hand-outs, so dynamic provisioning is refused with what to change
/// instead of risking one LUN for two volumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_pool_on_two_nodes_refuses_dynamic_volumes() {
    pool_csi_e2e::require!(false);
    if no_target_tools() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let t = store(scratch.path(), &[32]);
    let d = Driver::start(Options {
        extra_pools: pool("san", t.port, IQN, ""),
        extra_nodes: vec![("node-2".into(), 64 << 20)],
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let e = c
        .controller
        .create_volume(on("san", "v", 16 * MIB, 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("defined on 2 nodes") && e.message().contains("nodeSelector"),
        "{e:?}"
    );
}

/// A fake cluster with node-1 and node-2 (label `san: yes`), each with its
/// agent, serving `pools` (StoragePool specs, given that nodeSelector), and
/// the driver running against it.
async fn two_nodes(
    scratch: &std::path::Path,
    pools: &[(&str, serde_json::Value)],
) -> (pool_csi_e2e::fake_cluster::FakeCluster, Driver) {
    use serde_json::json;
    let cluster = pool_csi_e2e::fake_cluster::FakeCluster::start(scratch).await;
    for node in ["node-1", "node-2"] {
        cluster.node(node, json!({"san": "yes"}));
    }
    cluster.agent_pod_at("node-1", "127.0.0.1");
    cluster.agent_pod_at("node-2", "127.0.0.2");
    for (name, spec) in pools {
        let mut spec = spec.clone();
        spec["nodeSelector"] = json!({"san": "yes"});
        cluster.storage_pool(name, spec);
    }
    let d = Driver::start(Options {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        extra_nodes: vec![("node-2".into(), 16 << 20)],
        ..Default::default()
    })
    .await;
    (cluster, d)
}

/// One target that two nodes reach, in a cluster: both record hand-outs in
/// one ConfigMap, so dynamic volumes work from either node and no LUN goes
/// to two volumes even when the two agents hand out at the same moment. A
/// volume's id names no node; it can be published on one node at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_pool_shared_by_two_nodes_hands_each_lun_out_once() {
    pool_csi_e2e::require!(false);
    if no_target_tools() {
        return;
    }
    use pool_csi_common::VolumeId;
    use serde_json::json;
    let scratch = tempfile::tempdir().unwrap();
    let t = store(scratch.path(), &[32, 64, 128]);
    let portal = format!("127.0.0.1:{}", t.port);
    let san = json!({"type": "iscsi", "source": {"host": portal, "device": IQN}});
    let (cluster, mut d) = two_nodes(scratch.path(), &[("san", san)]).await;
    let api = cluster.api.clone();
    let status = || {
        api.object("/apis/pool-csi.io/v1alpha1/storagepools/san")
            .unwrap()["status"]
            .clone()
    };
    let since = std::time::Instant::now();
    while status()["nodesReady"] != "2/2" {
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "both nodes serve the pool: {}",
            status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dynamic = &status()["conditions"][1];
    assert_eq!(
        (&dynamic["status"], &dynamic["reason"]),
        (&json!("True"), &json!("SharedClaims")),
        "{dynamic}"
    );
    // The target's 224 MiB counted once, not once per node.
    assert_eq!(status()["capacity"], "224Mi");

    // Three creates at once, spread over both agents: three LUNs.
    let c = d.clients().await;
    let make = |name: &'static str| {
        let mut c = c.controller.clone();
        async move { c.create_volume(on("san", name, 16 * MIB, 0)).await }
    };
    let (a, b, e) = tokio::join!(make("a"), make("b"), make("e"));
    let vols: Vec<csi::Volume> = [a, b, e]
        .into_iter()
        .map(|r| r.expect("a LUN for each").into_inner().volume.unwrap())
        .collect();
    let mut sizes: Vec<i64> = vols.iter().map(|v| v.capacity_bytes).collect();
    sizes.sort();
    assert_eq!(sizes, [32 * MIB, 64 * MIB, 128 * MIB], "each LUN once");
    let id = VolumeId::parse(&vols[0].volume_id).unwrap();
    assert_eq!(id.node, None, "a shared volume is tied to no node");
    let reach: Vec<&str> = vols[0]
        .accessible_topology
        .iter()
        .map(|t| t.segments[pool_csi_common::TOPOLOGY_NODE_KEY].as_str())
        .collect();
    assert_eq!(reach, ["node-1", "node-2"]);
    let full = c
        .controller
        .clone()
        .create_volume(on("san", "f", 16 * MIB, 0))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    let cm = api
        .object("/api/v1/namespaces/kube-system/configmaps/pool-csi-luns-san")
        .expect("claims in the cluster");
    assert_eq!(cm["data"].as_object().unwrap().len(), 3, "{cm}");

    // Published on node-1, node-2 is refused until node-1 lets go; a
    // published volume is not deleted.
    let mut ctl = c.controller.clone();
    let publish = |node: &str| csi::ControllerPublishVolumeRequest {
        volume_id: vols[0].volume_id.clone(),
        node_id: node.into(),
        volume_capability: Some(req::block_cap()),
        ..Default::default()
    };
    let unpublish = |node: &str| csi::ControllerUnpublishVolumeRequest {
        volume_id: vols[0].volume_id.clone(),
        node_id: node.into(),
        ..Default::default()
    };
    ctl.controller_publish_volume(publish("node-1"))
        .await
        .expect("publish on node-1");
    ctl.controller_publish_volume(publish("node-1"))
        .await
        .expect("idempotent");
    let status = ctl
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: vols[0].volume_id.clone(),
        })
        .await
        .expect("get volume")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.published_node_ids, ["node-1"], "from the claim");
    let e = ctl
        .controller_publish_volume(publish("node-2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("published on node node-1"), "{e:?}");
    let delete = csi::DeleteVolumeRequest {
        volume_id: vols[0].volume_id.clone(),
        ..Default::default()
    };
    let e = ctl.delete_volume(delete.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    ctl.controller_unpublish_volume(unpublish("node-1"))
        .await
        .expect("unpublish");
    ctl.controller_publish_volume(publish("node-2"))
        .await
        .expect("now node-2");
    ctl.controller_unpublish_volume(unpublish("node-2"))
        .await
        .expect("unpublish");
    ctl.controller_unpublish_volume(unpublish("node-2"))
        .await
        .expect("idempotent");
    ctl.delete_volume(delete.clone()).await.expect("delete");
    ctl.delete_volume(delete).await.expect("delete again");
    let cm = api
        .object("/api/v1/namespaces/kube-system/configmaps/pool-csi-luns-san")
        .unwrap();
    assert_eq!(
        cm["data"].as_object().unwrap().len(),
        2,
        "the LUN is free again: {cm}"
    );

    // Listed once (not once per node), reaching both nodes.
    let listed = ctl
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .entries;
    let shared: Vec<&csi::Volume> = listed
        .iter()
        .filter_map(|e| e.volume.as_ref())
        .filter(|v| v.volume_id.contains(":san::"))
        .collect();
    assert_eq!(shared.len(), 2, "{listed:?}");
    assert!(shared.iter().all(|v| v.accessible_topology.len() == 2));

    // The node a volume is published on dies: node-2 answers for it, and
    // must fence node-1 off the LUN before it lets the volume move. It
    // would log in with iscsiadm to do that, which cannot succeed on this
    // machine (no kernel initiator): the volume stays published on node-1
    // and says why. (The fence itself: e2e/tests/fencing.rs.)
    let moving = csi::ControllerPublishVolumeRequest {
        volume_id: vols[1].volume_id.clone(),
        ..publish("node-1")
    };
    ctl.controller_publish_volume(moving.clone())
        .await
        .expect("publish on node-1");
    d.kill_node();
    let e = ctl
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: vols[1].volume_id.clone(),
            node_id: "node-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // UNAVAILABLE: neither node-1 (dead) nor node-2 (cannot reach the LUN
    // to fence) could release it; the attacher retries.
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("stays published on node node-1")
            && e.message()
                .contains("cannot be reached from node node-2 to fence it off"),
        "{e:?}"
    );
    let e = ctl
        .controller_publish_volume(csi::ControllerPublishVolumeRequest {
            node_id: "node-2".into(),
            ..moving
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("published on node node-1"), "{e:?}");
}

/// A node tainted out of service: the leader releases the shared volumes
/// published there through another node of their pool, which fences the
/// lost node off first. A pool with `fencing: none` lets its volume go
/// unfenced; one whose LUN cannot be fenced from node-2 here (no kernel
/// initiator) keeps it where it is. Each outcome is an Event on the PV and
/// the pool, told once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_releases_a_lost_nodes_shared_volumes_only_when_fenced() {
    pool_csi_e2e::require!(false);
    if no_target_tools() {
        return;
    }
    use serde_json::json;
    let scratch = tempfile::tempdir().unwrap();
    let t = store(scratch.path(), &[32]);
    const OPEN: &str = "iqn.2026-11.io.pool-csi:open";
    t.target("2", OPEN);
    t.lun(scratch.path(), "2", "1", 32);
    let portal = format!("127.0.0.1:{}", t.port);
    let pools = [
        (
            "san",
            json!({"type": "iscsi", "source": {"host": portal, "device": IQN}}),
        ),
        (
            "open",
            json!({"type": "iscsi", "source": {"host": portal, "device": OPEN}, "fencing": "none"}),
        ),
    ];
    let (cluster, d) = two_nodes(scratch.path(), &pools).await;
    let api = cluster.api.clone();
    let ready = |pool: &str| {
        api.object(&format!("/apis/pool-csi.io/v1alpha1/storagepools/{pool}"))
            .is_some_and(|p| p["status"]["nodesReady"] == "2/2")
    };
    eventually("both pools on both nodes", || ready("san") && ready("open")).await;
    let mut ctl = d.clients().await.controller;
    let mut ids = Vec::new();
    for pool in ["san", "open"] {
        let v = ctl
            .create_volume(on(pool, &format!("vol-{pool}"), 16 * MIB, 0))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        ctl.controller_publish_volume(csi::ControllerPublishVolumeRequest {
            volume_id: v.volume_id.clone(),
            node_id: "node-1".into(),
            volume_capability: Some(req::block_cap()),
            ..Default::default()
        })
        .await
        .unwrap();
        api.insert(
            &format!("/api/v1/persistentvolumes/pv-{pool}"),
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": format!("pv-{pool}"), "uid": format!("uid-{pool}")},
                   "spec": {"csi": {"driver": "pool-csi.io", "volumeHandle": v.volume_id},
                            "claimRef": {"namespace": "default", "name": format!("pvc-{pool}")}}}),
        );
        api.insert(
            &format!("/apis/storage.k8s.io/v1/volumeattachments/va-{pool}"),
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
                   "metadata": {"name": format!("va-{pool}")},
                   "spec": {"attacher": "pool-csi.io", "nodeName": "node-1",
                            "source": {"persistentVolumeName": format!("pv-{pool}")}}}),
        );
        ids.push(v.volume_id);
    }
    let published = |pool: &str| {
        api.object(&format!(
            "/api/v1/namespaces/kube-system/configmaps/pool-csi-luns-{pool}"
        ))
        .and_then(|cm| {
            cm["data"][format!("vol-{pool}")]
                .as_str()
                .map(str::to_string)
        })
        .is_some_and(|c| c.contains("\"published\":\"node-1\""))
    };
    assert!(published("san") && published("open"));
    let events = |reason: &str, object: &str| {
        api.objects("/api/v1/namespaces/default/events")
            .into_iter()
            .filter(|e| e["reason"] == reason && e["involvedObject"]["name"] == object)
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };

    api.modify("/api/v1/nodes/node-1", |n| {
        n["spec"]["taints"] = json!([{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}]);
    });
    eventually(
        "the unfenced pool's volume is released, with Events",
        || {
            !published("open")
                && !events("VolumeReleased", "pv-open").is_empty()
                && !events("VolumeReleased", "open").is_empty()
        },
    )
    .await;
    eventually("the fenced pool's volume stays, saying why", || {
        !events("ReleaseRefused", "pv-san").is_empty()
            && !events("ReleaseRefused", "san").is_empty()
    })
    .await;
    let why = &events("ReleaseRefused", "pv-san")[0];
    assert!(
        why.contains("node node-1 is tainted node.kubernetes.io/out-of-service"),
        "{why}"
    );
    assert!(why.contains("stays published on node node-1"), "{why}");
    assert!(why.contains("cannot be reached from node node-2"), "{why}");
    assert!(published("san"), "not released without a fence");
    let released = &events("VolumeReleased", "pv-open")[0];
    assert!(
        released.contains("released from that node by node node-2"),
        "{released}"
    );
    // Told once: later rounds (every few seconds here) add no Events.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(events("ReleaseRefused", "pv-san").len(), 1);
    assert_eq!(events("VolumeReleased", "pv-open").len(), 1);
    // node-2 can take the released volume now.
    ctl.controller_publish_volume(csi::ControllerPublishVolumeRequest {
        volume_id: ids[1].clone(),
        node_id: "node-2".into(),
        volume_capability: Some(req::block_cap()),
        ..Default::default()
    })
    .await
    .expect("the released volume on node-2");
}

/// LUN 1 is deleted on the target and another made at number 1: the old
/// volume turns abnormal naming both, is never staged (the check runs before
/// any login), and the new LUN goes to no other volume until the old one is
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lun_replaced_on_the_target_is_never_taken_for_the_old_one() {
    pool_csi_e2e::require!(false);
    if no_target_tools() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let t = store(scratch.path(), &[32]);
    t.serial("1", "1", "orig0001");
    let d = Driver::start(Options {
        extra_pools: pool("san", t.port, IQN, ""),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let old = c
        .controller
        .create_volume(on("san", "old", 16 * MIB, 0))
        .await
        .expect("create")
        .into_inner()
        .volume
        .unwrap()
        .volume_id;

    t.delete_lun("1", "1");
    t.lun_from(&scratch.path().join("replacement"), "1", "1", 32);
    t.serial("1", "1", "repl0001");

    // Listings reuse an inventory for up to 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let why = loop {
        let v = c
            .controller
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: old.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        let cond = v
            .status
            .and_then(|s| s.volume_condition)
            .unwrap_or_default();
        if cond.abnormal {
            break cond.message;
        }
        assert!(std::time::Instant::now() < deadline, "never abnormal");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        why.contains("serial:orig0001") && why.contains("another LUN (serial:repl0001)"),
        "{why}"
    );
    let e = c
        .node
        .node_stage_volume(req::stage(&old, &d.path("st"), req::block_cap()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message()
            .contains("handed out as serial:orig0001, now serial:repl0001"),
        "{}",
        e.message()
    );
    let held = c
        .controller
        .create_volume(on("san", "next", 16 * MIB, 0))
        .await
        .unwrap_err();
    assert_eq!(held.code(), Code::ResourceExhausted, "{held:?}");
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: old,
            ..Default::default()
        })
        .await
        .expect("delete the old volume");
    c.controller
        .create_volume(on("san", "next", 16 * MIB, 0))
        .await
        .expect("the replacement is free now");
}
