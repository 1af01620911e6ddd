//! Both binaries in cluster mode against the fake Kubernetes API served over
//! HTTP on loopback (`pool_csi_e2e::fake_cluster`): the node serves the
//! StoragePool objects whose nodeSelector matches its Node's labels, the
//! controller finds the agent from the node pod, wins the Lease, writes
//! StoragePool status and Events, and gives the Lease up when stopped. (A
//! real API server is exercised by `kubernetes.rs` when KUBECONFIG is set.)

use pool_csi_e2e::{eventually, fake_cluster::FakeCluster, req, require, Driver, Options};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SP: &str = "/apis/pool-csi.io/v1alpha1/storagepools";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/pool-csi-controller";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_controller_run_from_the_cluster() {
    require!(false);
    let scratch = tempfile::tempdir().unwrap();
    let cluster = FakeCluster::start(scratch.path()).await;
    let api = cluster.api.clone();
    cluster.node("node-1", json!({"storage": "local"}));
    cluster.agent_pod("node-1");
    let pool_dir = scratch.path().join("cluster-pool");
    cluster.storage_pool(
        "local",
        json!({"type": "dir", "target": {"path": pool_dir.display().to_string()}, "autoBuild": true,
               "nodeSelector": {"storage": "local"}}),
    );
    cluster.storage_pool(
        "elsewhere",
        json!({"type": "dir", "target": {"path": "/nonexistent"}, "nodeSelector": {"storage": "san"}}),
    );
    let mut d = Driver::start(Options {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;

    // The pool came from the cluster; the agent was found from its pod.
    let v = c
        .controller
        .create_volume(req::create("from-cluster", req::MIB, &[("pool", "local")]))
        .await
        .expect("create on a pool defined only in the cluster")
        .into_inner()
        .volume
        .unwrap();
    let name = v.volume_id.rsplit(':').next().unwrap();
    assert!(
        pool_dir.join(format!("{name}.raw")).is_file(),
        "the volume file is in the pool the StoragePool object defines"
    );
    let other = c
        .controller
        .create_volume(req::create("nowhere", req::MIB, &[("pool", "elsewhere")]))
        .await
        .unwrap_err();
    assert!(
        other
            .message()
            .contains("\"elsewhere\" is not defined on any node"),
        "its nodeSelector matches no node: {other:?}"
    );

    // The controller leads and writes status; Events say what is wrong.
    let lease = |api: &pool_csi_testkit::fake_api::FakeApi| -> Option<String> {
        api.object(LEASE)?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)
    };
    eventually("the controller takes the Lease", || {
        lease(&api).as_deref() == Some("pool-csi-controller-0")
    })
    .await;
    let status =
        |name: &str| -> Value { api.object(&format!("{SP}/{name}")).unwrap()["status"].clone() };
    eventually("status of the served pool, with its volume", || {
        status("local")["state"] == "Running" && status("local")["nodes"][0]["volumes"] == 1
    })
    .await;
    let local = status("local");
    assert_eq!(local["nodesReady"], "1/1");
    assert_eq!(local["nodes"][0]["node"], "node-1");
    assert_eq!(local["nodes"][0]["volumes"], 1);
    eventually("status of the pool no node serves", || {
        status("elsewhere")["state"] == "Pending"
    })
    .await;
    let events = api.objects("/api/v1/namespaces/default/events");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "NoNodes" && e["involvedObject"]["name"] == "elsewhere"),
        "{events:?}"
    );

    // Stopped, the controller gives the Lease up for a standby.
    d.stop_controller().await;
    assert_eq!(lease(&api), None, "released on shutdown");
}

/// A node plugin that has not read its pools yet (its Node object is not
/// there) says so: CreateVolume and DeleteVolume are UNAVAILABLE
/// ("starting", retry) instead of a final answer, and succeed as soon as
/// the pool runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_makes_create_retry_not_fail() {
    require!(false);
    let scratch = tempfile::tempdir().unwrap();
    let cluster = FakeCluster::start(scratch.path()).await;
    cluster.agent_pod("node-1");
    let pool_dir = scratch.path().join("late-pool");
    cluster.storage_pool(
        "late",
        json!({"type": "dir", "target": {"path": pool_dir.display().to_string()}, "autoBuild": true,
               "nodeSelector": {"storage": "late"}}),
    );
    let d = Driver::start(Options {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        no_ready_wait: true,
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let create = || req::create("early", req::MIB, &[("pool", "late")]);
    let mut refused = None;
    let since = Instant::now();
    // The controller finds the agent from its pod first (it re-lists pods).
    while since.elapsed() < Duration::from_secs(15) {
        match c.controller.create_volume(create()).await {
            Err(e) if e.code() == tonic::Code::Unavailable && e.message().contains("starting") => {
                refused = Some(e);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(v) => panic!("created before the node read its pools: {v:?}"),
        }
    }
    let refused = refused.expect("UNAVAILABLE while the node starts");
    assert!(refused.message().contains("node-1"), "{refused:?}");
    // A delete meanwhile is told to come back: "no such pool here" cannot
    // be told yet, and taking it for "gone" would drop the PV and leak the
    // volume.
    let id = pool_csi_common::VolumeId::new("late", Some("node-1"), "made-before").to_string();
    std::fs::create_dir_all(&pool_dir).unwrap();
    std::fs::write(pool_dir.join("made-before.raw"), b"").unwrap();
    let e = c
        .controller
        .delete_volume(req::delete(&id))
        .await
        .expect_err("not deleted while the node has not read its pools");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("starting"), "{e:?}");
    // The same for a shared pool's volume (its id names no node): no node
    // defines the pool yet, but one that has not read its pools may.
    let shared = pool_csi_common::VolumeId::new("late", None, "shared-one").to_string();
    let e = c
        .controller
        .delete_volume(req::delete(&shared))
        .await
        .expect_err("not taken as gone while a node starts");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("starting"), "{e:?}");
    // The Node object appears; the node reads its pools and starts them.
    cluster.node("node-1", json!({"storage": "late"}));
    let since = Instant::now();
    loop {
        match c.controller.create_volume(create()).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    e.code() == tonic::Code::Unavailable
                        && since.elapsed() < Duration::from_secs(20),
                    "{e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Once the pools are read the delete goes through.
    c.controller.delete_volume(req::delete(&id)).await.unwrap();
    assert!(!pool_dir.join("made-before.raw").exists());
}

/// A fake cluster whose node-1 (with its agent pod) serves the dir pool
/// `local` at `<scratch>/local-pool`, and the driver on it in cluster mode.
async fn local_pool_cluster(
    scratch: &std::path::Path,
    opts: Options,
) -> (FakeCluster, Driver, std::path::PathBuf) {
    let cluster = FakeCluster::start(scratch).await;
    cluster.node("node-1", json!({"storage": "local"}));
    cluster.agent_pod("node-1");
    let pool_dir = scratch.join("local-pool");
    cluster.storage_pool(
        "local",
        json!({"type": "dir", "target": {"path": pool_dir.display().to_string()}, "autoBuild": true,
               "nodeSelector": {"storage": "local"}}),
    );
    let d = Driver::start(Options {
        kubeconfig: Some(cluster.kubeconfig.clone()),
        ..opts
    })
    .await;
    (cluster, d, pool_dir)
}

/// Orphans (issue: nothing is forgotten): a volume no PV names, a snapshot
/// no VolumeSnapshotContent names and a PV whose volume is gone are
/// reported after the grace period — ConfigMap, Events, metrics, `poolctl
/// orphans` — and nothing is deleted until the operator says so, and then
/// only what nothing in Kubernetes names at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reported_and_deleted_only_by_the_operator() {
    require!(false);
    let scratch = tempfile::tempdir().unwrap();
    let (cluster, d, pool_dir) = local_pool_cluster(
        scratch.path(),
        Options {
            orphan_grace_seconds: Some(1),
            ..Default::default()
        },
    )
    .await;
    let api = cluster.api.clone();
    let mut c = d.clients().await;
    let create = |name: &str| req::create(name, req::MIB, &[("pool", "local")]);
    let kept = c.create_volume_id(create("kept")).await;
    let orphan = c.create_volume_id(create("orphan")).await;
    let snap = c
        .controller
        .create_snapshot(req::snapshot("snap", &kept))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
        .snapshot_id;
    let ghost = kept.replace(":kept", ":ghost");
    let pv = |name: &str, handle: &str| {
        api.insert(
            &format!("/api/v1/persistentvolumes/{name}"),
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": name, "uid": format!("uid-{name}")},
                   "spec": {"csi": {"driver": "pool-csi.io", "volumeHandle": handle}}}),
        )
    };
    pv("pv-kept", &kept);
    pv("pv-lost", &ghost);

    let findings = |api: &pool_csi_testkit::fake_api::FakeApi| -> Vec<Value> {
        api.object("/api/v1/namespaces/kube-system/configmaps/pool-csi-orphans")
            .and_then(|cm| serde_json::from_str(cm["data"]["orphans.json"].as_str()?).ok())
            .unwrap_or_default()
    };
    let reported = |api: &pool_csi_testkit::fake_api::FakeApi, kind: &str, id: &str| {
        findings(api)
            .iter()
            .any(|o| o["kind"] == kind && o["id"] == id && o["reported"] == true)
    };
    eventually(
        "the orphaned volume, snapshot and lost volume are reported",
        || {
            reported(&api, "volume", &orphan)
                && reported(&api, "snapshot", &snap)
                && reported(&api, "lostVolume", &ghost)
        },
    )
    .await;
    let all = findings(&api);
    assert_eq!(all.len(), 3, "the volume with a PV is no orphan: {all:?}");
    let lost = all.iter().find(|o| o["kind"] == "lostVolume").unwrap();
    assert_eq!(lost["pv"], "pv-lost");
    // The findings are kept first, then the Events go out and the gauges
    // follow: wait for them.
    let has_event = |api: &pool_csi_testkit::fake_api::FakeApi, reason: &str, object: &str| {
        api.objects("/api/v1/namespaces/default/events")
            .iter()
            .any(|e| e["reason"] == reason && e["involvedObject"]["name"] == object)
    };
    for (reason, object) in [
        ("OrphanedVolume", "local"),
        ("OrphanedSnapshot", "local"),
        ("VolumeLost", "local"),
        ("VolumeLost", "pv-lost"),
    ] {
        eventually(&format!("{reason} on {object}"), || {
            has_event(&api, reason, object)
        })
        .await;
    }
    let gauges = [
        "pool_csi_orphaned_volumes{pool=\"local\"} 1",
        "pool_csi_orphaned_snapshots{pool=\"local\"} 1",
        "pool_csi_lost_volumes{pool=\"local\"} 1",
    ];
    eventually("the gauges count them", || {
        let m = pool_csi_e2e::scrape(&d.ctrl_metrics);
        gauges.iter().all(|line| m.contains(line))
    })
    .await;

    // poolctl lists them with age and size.
    let (ok, out) = d.poolctl(&["orphans"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&orphan) && out.contains(&snap) && out.contains("pv-lost"),
        "{out}"
    );
    assert!(out.contains("1.00 MiB"), "{out}");

    // Only reported orphans, and only while nothing names them.
    let (ok, out) = d.poolctl(&["orphans", "--delete", &kept]);
    assert!(
        !ok && out.contains("not an orphaned volume or snapshot"),
        "{out}"
    );
    let (ok, out) = d.poolctl(&["orphans", "--delete", &ghost]);
    assert!(!ok, "a lost volume is a PV to delete, not storage: {out}");
    let file = pool_dir.join("orphan.raw");
    assert!(file.exists());
    api.before("GET /api/v1/persistentvolumes", {
        let orphan = orphan.clone();
        move |api| {
            api.insert(
                "/api/v1/persistentvolumes/pv-late",
                json!({"apiVersion": "v1", "kind": "PersistentVolume",
                       "metadata": {"name": "pv-late", "uid": "uid-pv-late"},
                       "spec": {"csi": {"driver": "pool-csi.io", "volumeHandle": orphan}}}),
            )
        }
    });
    let (ok, out) = d.poolctl(&["orphans", "--delete", &orphan]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("PersistentVolume pv-late names") || out.contains("not an orphaned volume"),
        "{out}"
    );
    assert!(file.exists(), "a volume a PV names is never deleted");
    api.remove("/api/v1/persistentvolumes/pv-late");
    eventually("reported again after its grace period", || {
        reported(&api, "volume", &orphan)
    })
    .await;
    let (ok, out) = d.poolctl(&["orphans", "--delete", &orphan]);
    assert!(ok, "{out}");
    assert!(!file.exists(), "deleted by the operator");
    let (ok, out) = d.poolctl(&["orphans", "--delete", &snap]);
    assert!(ok, "{out}");
    eventually("the deleted ones are no longer found", || {
        let f = findings(&api);
        f.len() == 1 && f[0]["kind"] == "lostVolume"
    })
    .await;
}

/// Node loss: the PVs of a node tainted out-of-service, or of a node gone
/// from the cluster, are labelled `pool-csi.io/node-lost` with NodeLost
/// Events (on the PV and its StoragePool), never deleted; the label goes
/// with a NodeBack Event when the node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_volumes_are_marked_and_kept() {
    require!(false);
    let scratch = tempfile::tempdir().unwrap();
    let (cluster, d, pool_dir) = local_pool_cluster(scratch.path(), Options::default()).await;
    let api = cluster.api.clone();
    let mut c = d.clients().await;
    let id = c
        .create_volume_id(req::create("stays", req::MIB, &[("pool", "local")]))
        .await;
    let far = id.replace(":node-1:", ":node-9:");
    for (name, handle) in [("pv-here", id.as_str()), ("pv-far", far.as_str())] {
        api.insert(
            &format!("/api/v1/persistentvolumes/{name}"),
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": name, "uid": format!("uid-{name}")},
                   "spec": {"csi": {"driver": "pool-csi.io", "volumeHandle": handle}}}),
        );
    }
    let marked = |api: &pool_csi_testkit::fake_api::FakeApi, pv: &str| {
        api.object(&format!("/api/v1/persistentvolumes/{pv}"))
            .is_some_and(|p| p["metadata"]["labels"]["pool-csi.io/node-lost"] == "true")
    };
    let event = |api: &pool_csi_testkit::fake_api::FakeApi, reason: &str, object: &str| {
        api.objects("/api/v1/namespaces/default/events")
            .iter()
            .any(|e| e["reason"] == reason && e["involvedObject"]["name"] == object)
    };
    eventually("the PV of a node gone from the cluster is marked", || {
        marked(&api, "pv-far")
    })
    .await;
    assert!(!marked(&api, "pv-here"), "node-1 is there and in service");

    let node = "/api/v1/nodes/node-1";
    api.modify(node, |n| {
        n["spec"]["taints"] = json!([{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}]);
    });
    eventually("the tainted node's PV is marked, with Events", || {
        marked(&api, "pv-here")
            && event(&api, "NodeLost", "pv-here")
            && event(&api, "NodeLost", "local")
    })
    .await;
    assert!(
        pool_dir.join("stays.raw").exists()
            && api.object("/api/v1/persistentvolumes/pv-here").is_some(),
        "nothing is deleted"
    );

    api.modify(node, |n| {
        n["spec"]["taints"] = json!([]);
    });
    eventually("the node is back: the mark goes", || {
        !marked(&api, "pv-here") && event(&api, "NodeBack", "pv-here")
    })
    .await;
    assert!(marked(&api, "pv-far"), "node-9 is still gone");
}
