//! The in-process fake Kubernetes API served over real HTTP on loopback,
//! with a kubeconfig pointing at it: the real binaries run their cluster
//! mode (`--cluster`, `--pools-from-cluster`) against it unchanged.

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use pool_csi_testkit::fake_api::FakeApi;
use std::path::{Path, PathBuf};
use tower::ServiceExt;

pub struct FakeCluster {
    pub api: FakeApi,
    /// A kubeconfig for `KUBECONFIG` (namespace kube-system).
    pub kubeconfig: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCluster {
    /// Serves a fresh fake API on 127.0.0.1 and writes its kubeconfig into `dir`.
    pub async fn start(dir: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API");
        let addr = listener.local_addr().unwrap();
        let api = FakeApi::new();
        let served = api.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let api = served.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let api = api.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let req = hyper::Request::from_parts(
                                    parts,
                                    kube::client::Body::from(bytes.to_vec()),
                                );
                                api.oneshot(req).await
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{ server: \"http://{addr}\" }}\nusers:\n- name: e2e\n  user: {{ token: e2e }}\ncontexts:\n- name: fake\n  context: {{ cluster: fake, user: e2e, namespace: kube-system }}\ncurrent-context: fake\n"
            ),
        )
        .unwrap();
        Self {
            api,
            kubeconfig,
            task,
        }
    }
}

impl FakeCluster {
    /// A Node object with `labels`.
    pub fn node(&self, name: &str, labels: serde_json::Value) {
        self.api.insert(
            &format!("/api/v1/nodes/{name}"),
            serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}),
        );
    }

    /// The running node-plugin pod of `node` at 127.0.0.1, labelled as the
    /// harness's controller looks for (`app=pool-csi-node`).
    pub fn agent_pod(&self, node: &str) {
        self.agent_pod_at(node, "127.0.0.1")
    }

    /// The running node-plugin pod of `node` at `ip`.
    pub fn agent_pod_at(&self, node: &str, ip: &str) {
        self.api.insert(
            &format!("/api/v1/namespaces/kube-system/pods/pool-csi-node-{node}"),
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("pool-csi-node-{node}"), "namespace": "kube-system", "labels": {"app": "pool-csi-node"}},
                   "spec": {"nodeName": node, "containers": []},
                   "status": {"phase": "Running", "podIP": ip}}),
        );
    }

    /// A StoragePool object.
    pub fn storage_pool(&self, name: &str, spec: serde_json::Value) {
        self.api.insert(
            &format!("/apis/pool-csi.io/v1alpha1/storagepools/{name}"),
            serde_json::json!({"apiVersion": "pool-csi.io/v1alpha1", "kind": "StoragePool",
                   "metadata": {"name": name, "uid": format!("uid-{name}")}, "spec": spec}),
        );
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.task.abort();
    }
}
