//! Both binaries in cluster mode against the fake Kubernetes API served over
//! HTTP on loopback (`pool_csi_e2e::fake_cluster`): the node serves the
//! StoragePool objects whose nodeSelector matches its Node's labels, the
//! controller finds the agent from the node pod, wins the Lease, writes
//! StoragePool status and Events, and gives the Lease up when stopped. (A
//! real API server is exercised by `kubernetes.rs` when KUBECONFIG is set.)

use pool_csi_e2e::{fake_cluster::FakeCluster, req, require, Driver, Options};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SP: &str = "/apis/pool-csi.io/v1alpha1/storagepools";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/pool-csi-controller";

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let since = Instant::now();
    while !check() {
        assert!(
            since.elapsed() < Duration::from_secs(15),
            "{what}: timed out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
/// there) says so: CreateVolume is UNAVAILABLE ("starting", retry) instead
/// of a final refusal, and succeeds as soon as the pool runs.
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
}
