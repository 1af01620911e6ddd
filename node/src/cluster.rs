//! The node plugin in a cluster: which StoragePool objects apply to this
//! node (their `spec.nodeSelector` against the Node's labels), read-only,
//! re-read periodically so pools added, changed or removed with kubectl
//! take effect without a restart.

use crate::{pools, NodeCtx};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use pool_csi_common::{pool_spec::StoragePool, PoolDefinition};
use std::{collections::BTreeMap, time::Duration};

/// Whether a pool with `selector` belongs on a node with `labels`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The valid StoragePools that select `node`. Invalid ones are left out
/// with a warning naming the problem (the controller's status shows them
/// as served by no node).
pub async fn pools_for_node(
    client: &kube::Client,
    node: &str,
) -> Result<Vec<PoolDefinition>, kube::Error> {
    let labels = Api::<Node>::all(client.clone())
        .get(node)
        .await?
        .metadata
        .labels
        .unwrap_or_default();
    let mut out = Vec::new();
    for sp in Api::<StoragePool>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let def = PoolDefinition {
            name: sp.metadata.name.clone().unwrap_or_default(),
            spec: sp.spec,
        };
        if !selects(&def.spec.node_selector, &labels) {
            continue;
        }
        match def.validate() {
            Ok(()) => out.push(def),
            Err(e) => {
                tracing::warn!(pool.name = %def.name, error = %pool_csi_common::full_message(&e), "StoragePool ignored: invalid")
            }
        }
    }
    Ok(out)
}

/// Brings the node's pools in line with the cluster once; new and changed
/// pools are started. Returns how many pools the node serves.
pub async fn sync_once(ctx: &NodeCtx, client: &kube::Client) -> Result<usize, kube::Error> {
    let defs = pools_for_node(client, &ctx.cfg.node_name).await?;
    let (fresh, dropped) = ctx.pools.sync(&defs, &ctx.cfg, ctx.runner.clone());
    pools::registry::stop(&dropped).await;
    pools::registry::start(&fresh).await;
    Ok(defs.len())
}

/// [`sync_once`] every `every`, forever, backing off (up to a minute)
/// while the API server does not answer; the pools in hand keep serving.
pub async fn keep_syncing(ctx: std::sync::Arc<NodeCtx>, client: kube::Client, every: Duration) {
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        match sync_once(&ctx, &client).await {
            Ok(_) => wait = every,
            Err(e) => {
                wait = (wait * 2).min(Duration::from_secs(60));
                tracing::warn!(error = %e, retry_in = ?wait, "reading StoragePools failed; the pools in hand keep serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{exec::fake::FakeRunner, pools::registry::PoolRegistry, Config};
    use pool_csi_common::GrpcCode;
    use pool_csi_testkit::fake_api::FakeApi;
    use serde_json::json;
    use std::sync::{atomic::AtomicBool, Arc};

    const SP: &str = "/apis/pool-csi.io/v1alpha1/storagepools";

    fn sp(fake: &FakeApi, name: &str, spec: serde_json::Value) {
        fake.insert(
            &format!("{SP}/{name}"),
            json!({"apiVersion": "pool-csi.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": name}, "spec": spec}),
        );
    }

    #[tokio::test]
    async fn the_node_serves_the_pools_that_select_it_and_follows_changes() {
        let t = tempfile::tempdir().unwrap();
        let fake = FakeApi::new();
        fake.insert(
            "/api/v1/nodes/n1",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"disk": "ssd", "zone": "a"}}}),
        );
        let dir = |n: &str| t.path().join(n).display().to_string();
        sp(
            &fake,
            "all",
            json!({"type": "dir", "target": {"path": dir("all")}, "autoBuild": true}),
        );
        sp(
            &fake,
            "ssd",
            json!({"type": "dir", "target": {"path": dir("ssd")}, "autoBuild": true, "nodeSelector": {"disk": "ssd"}}),
        );
        sp(
            &fake,
            "hdd",
            json!({"type": "dir", "target": {"path": dir("hdd")}, "nodeSelector": {"disk": "hdd"}}),
        );
        sp(
            &fake,
            "broken",
            json!({"type": "iscsi", "source": {"host": "x"}}),
        );
        let ctx = NodeCtx {
            cfg: Config::local("n1", t.path().join("state")),
            runner: Arc::new(FakeRunner::new()),
            pools: PoolRegistry::default(),
            locks: Default::default(),
            ready: Arc::new(AtomicBool::new(false)),
            held: Default::default(),
        };
        // Before the first read no pool is known to be absent: a delete
        // must be told to come back, not that its pool is gone.
        let e = ctx.pools.get("ssd", "n1").err().expect("nothing read yet");
        assert!(matches!(e, crate::error::Error::PoolsNotRead { .. }), "{e}");
        assert_eq!(e.grpc_code(), tonic::Code::Unavailable);
        let client = fake.client();
        assert_eq!(sync_once(&ctx, &client).await.unwrap(), 2);
        let names = |ctx: &NodeCtx| -> Vec<String> {
            ctx.pools
                .all()
                .iter()
                .map(|p| p.name().to_string())
                .collect()
        };
        assert_eq!(names(&ctx), ["all", "ssd"]);
        let ssd = ctx.pools.get("ssd", "n1").unwrap();
        assert!(
            t.path().join("ssd").is_dir(),
            "started (autoBuild made the directory)"
        );

        // Unchanged definitions keep their pool object; a changed one is
        // rebuilt; a deleted one goes; a relabelled node gains a pool.
        sync_once(&ctx, &client).await.unwrap();
        assert!(Arc::ptr_eq(&ssd, &ctx.pools.get("ssd", "n1").unwrap()));
        fake.modify(&format!("{SP}/all"), |o| {
            o["spec"]["autoBuild"] = json!(false)
        });
        fake.remove(&format!("{SP}/ssd"));
        fake.modify("/api/v1/nodes/n1", |o| {
            o["metadata"]["labels"]["disk"] = json!("hdd")
        });
        assert_eq!(sync_once(&ctx, &client).await.unwrap(), 2);
        assert_eq!(names(&ctx), ["all", "hdd"]);
        let e = ctx.pools.get("ssd", "n1").err().expect("ssd is gone");
        assert!(
            matches!(e, crate::error::Error::PoolNotFound { ref pool, .. } if pool == "ssd"),
            "{e}"
        );

        // The API server down: an error, the pools in hand stay.
        fake.fail_next(503);
        assert!(sync_once(&ctx, &client).await.is_err());
        assert_eq!(names(&ctx), ["all", "hdd"]);
    }

    #[test]
    fn selectors_match_all_their_labels() {
        let l = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
        assert!(selects(&BTreeMap::new(), &l));
        assert!(selects(&BTreeMap::from([("a".into(), "1".into())]), &l));
        assert!(!selects(&BTreeMap::from([("a".into(), "2".into())]), &l));
        assert!(!selects(&BTreeMap::from([("c".into(), "1".into())]), &l));
    }
}
