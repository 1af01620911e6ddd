//! Where a LUN pool records which LUN belongs to which volume.
//!
//! - [`FileClaims`]: `<state-dir>/luns/<pool>.json` on this node. Right when
//!   one node serves the pool (outside a cluster, or a nodeSelector picking
//!   one node): the pool's own lock serialises every change.
//! - [`ClusterClaims`]: the ConfigMap `pool-csi-luns-<pool>` in the driver's
//!   namespace, one key per volume. Every node that reaches the LUNs hands
//!   them out through it; a change is a replace carrying the resourceVersion
//!   it read, so of two nodes (or two controllers' requests) racing for one
//!   LUN exactly one write lands and the other reloads and picks again. No
//!   leader is needed to decide, and there is no window around a Lease
//!   handover in which two deciders could both hand a LUN out.
//!
//! Both are read and written whole: [`ClaimStore::save`] answers `false` when
//! the claims changed since [`ClaimStore::load`], and the caller redoes its
//! change on a fresh load.

use crate::{
    error::{Error, Result},
    fsutil::{read_json, write_json},
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::PathBuf};

/// A LUN handed to a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub identity: String,
    pub lun: u32,
    pub size: u64,
    #[serde(default)]
    pub wipe: bool,
    /// Where the LUN was when it was handed out (for messages).
    #[serde(default)]
    pub address: String,
    /// The node the volume is published on (ControllerPublish of a shared
    /// pool's volume; every access mode pool-csi offers is single-node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// Whether the LUN takes SCSI-3 persistent reservations, as the last
    /// node that fenced with them found (None: not tried yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<bool>,
}

/// Volume name → the LUN it holds.
pub type Claims = BTreeMap<String, Claim>;

/// The version a load saw (a resourceVersion; `None`: nothing stored yet).
pub type Version = Option<String>;

#[tonic::async_trait]
pub trait ClaimStore: Send + Sync {
    async fn load(&self) -> Result<(Claims, Version)>;
    /// Stores `claims` if nothing changed since the load that returned
    /// `version`; `Ok(false)` when something did (reload and redo).
    async fn save(&self, claims: &Claims, version: &Version) -> Result<bool>;
    /// Whether every node of the pool sees the same claims.
    fn shared(&self) -> bool;
    /// Where the claims live, for messages.
    fn place(&self) -> String;
}

/// Claims in a file on this node.
pub struct FileClaims {
    file: PathBuf,
}

impl FileClaims {
    pub fn new(file: PathBuf) -> Self {
        Self { file }
    }
}

#[tonic::async_trait]
impl ClaimStore for FileClaims {
    async fn load(&self) -> Result<(Claims, Version)> {
        Ok((read_json(&self.file)?.unwrap_or_default(), None))
    }

    async fn save(&self, claims: &Claims, _version: &Version) -> Result<bool> {
        write_json(&self.file, claims).map(|()| true)
    }

    fn shared(&self) -> bool {
        false
    }

    fn place(&self) -> String {
        self.file.display().to_string()
    }
}

/// Claims in a ConfigMap every node of the pool reads and writes.
pub struct ClusterClaims {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    pool: String,
    /// This node's claims file from before the pool's claims moved into the
    /// cluster: they seed the ConfigMap when it is first made.
    legacy: PathBuf,
}

/// Label on the claims ConfigMaps: the pool they belong to.
pub const POOL_LABEL: &str = "pool-csi.io/lun-claims-of";

impl ClusterClaims {
    pub fn new(client: kube::Client, namespace: &str, pool: &str, legacy: PathBuf) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.into(),
            name: format!("pool-csi-luns-{pool}"),
            pool: pool.into(),
            legacy,
        }
    }

    fn unavailable(&self, e: kube::Error) -> Error {
        Error::Cluster {
            what: format!(
                "the LUN claims of pool {:?} (ConfigMap {}/{})",
                self.pool, self.namespace, self.name
            ),
            source: Box::new(e),
        }
    }

    fn corrupt(&self, key: &str, e: serde_json::Error) -> Error {
        Error::Precondition(format!(
            "ConfigMap {}/{} key {key:?} is not a LUN claim ({e}); fix or remove the key",
            self.namespace, self.name
        ))
    }
}

#[tonic::async_trait]
impl ClaimStore for ClusterClaims {
    async fn load(&self) -> Result<(Claims, Version)> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(cm)) => {
                let mut claims = Claims::new();
                for (k, v) in cm.data.unwrap_or_default() {
                    let c = serde_json::from_str(&v).map_err(|e| self.corrupt(&k, e))?;
                    claims.insert(k, c);
                }
                Ok((claims, cm.metadata.resource_version))
            }
            Ok(None) => Ok((read_json(&self.legacy)?.unwrap_or_default(), None)),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn save(&self, claims: &Claims, version: &Version) -> Result<bool> {
        let mut cm = ConfigMap {
            data: Some(
                claims
                    .iter()
                    .map(|(k, c)| {
                        (
                            k.clone(),
                            serde_json::to_string(c).expect("claims serialise"),
                        )
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        cm.metadata.name = Some(self.name.clone());
        cm.metadata.labels = Some(BTreeMap::from([
            (POOL_LABEL.to_string(), self.pool.clone()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "pool-csi".to_string(),
            ),
        ]));
        cm.metadata.resource_version = version.clone();
        let r = match version {
            None => self.api.create(&PostParams::default(), &cm).await,
            Some(_) => {
                self.api
                    .replace(&self.name, &PostParams::default(), &cm)
                    .await
            }
        };
        match r {
            Ok(_) => {
                if version.is_none() {
                    // The cluster holds them now; the old file would only mislead.
                    let _ = std::fs::rename(&self.legacy, self.legacy.with_extension("json.moved"));
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    fn shared(&self) -> bool {
        true
    }

    fn place(&self) -> String {
        format!("ConfigMap {}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_testkit::fake_api::FakeApi;

    fn claim(identity: &str) -> Claim {
        Claim {
            identity: identity.into(),
            lun: 1,
            size: 1 << 20,
            wipe: false,
            address: String::new(),
            published: None,
            reservations: None,
        }
    }

    const CM: &str = "/api/v1/namespaces/pool-csi/configmaps/pool-csi-luns-san";

    #[tokio::test]
    async fn a_stale_save_is_refused_and_a_fresh_one_lands() {
        let t = tempfile::tempdir().unwrap();
        let fake = FakeApi::new();
        let store = |node: &str| {
            ClusterClaims::new(
                fake.client(),
                "pool-csi",
                "san",
                t.path().join(format!("{node}.json")),
            )
        };
        let (a, b) = (store("a"), store("b"));
        let (mut ca, va) = a.load().await.unwrap();
        let (mut cb, vb) = b.load().await.unwrap();
        assert!(ca.is_empty() && va.is_none());
        ca.insert("v1".into(), claim("lun-1"));
        cb.insert("v2".into(), claim("lun-1"));
        assert!(a.save(&ca, &va).await.unwrap());
        assert!(!b.save(&cb, &vb).await.unwrap(), "both saw nothing stored");

        let (mut cb, vb) = b.load().await.unwrap();
        assert_eq!(cb["v1"].identity, "lun-1");
        cb.insert("v2".into(), claim("lun-2"));
        assert!(b.save(&cb, &vb).await.unwrap());
        assert!(!a.save(&ca, &va).await.unwrap(), "a's view is stale now");
        let cm = fake.object(CM).unwrap();
        assert_eq!(cm["metadata"]["labels"][POOL_LABEL], "san");
        let v2: Claim = serde_json::from_str(cm["data"]["v2"].as_str().unwrap()).unwrap();
        assert_eq!(v2.identity, "lun-2");
    }

    #[tokio::test]
    async fn a_node_s_old_claims_file_seeds_the_configmap_once() {
        let t = tempfile::tempdir().unwrap();
        let fake = FakeApi::new();
        let legacy = t.path().join("san.json");
        write_json(
            &legacy,
            &Claims::from([("old".to_string(), claim("lun-9"))]),
        )
        .unwrap();
        let s = ClusterClaims::new(fake.client(), "pool-csi", "san", legacy.clone());
        let (c, v) = s.load().await.unwrap();
        assert_eq!(c["old"].identity, "lun-9");
        assert!(s.save(&c, &v).await.unwrap());
        assert!(!legacy.exists() && legacy.with_extension("json.moved").exists());
        assert!(fake.object(CM).unwrap()["data"]["old"].is_string());
    }

    #[tokio::test]
    async fn an_unreachable_api_and_a_corrupt_key_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let fake = FakeApi::new();
        let s = ClusterClaims::new(fake.client(), "pool-csi", "san", t.path().join("x.json"));
        fake.fail_next(503);
        let e = s.load().await.unwrap_err();
        assert_eq!(
            pool_csi_common::GrpcCode::grpc_code(&e),
            tonic::Code::Unavailable
        );
        assert!(
            e.to_string()
                .contains("ConfigMap pool-csi/pool-csi-luns-san"),
            "{e}"
        );

        fake.insert(
            CM,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "pool-csi-luns-san", "namespace": "pool-csi"},
                "data": {"v1": "not json"}}),
        );
        let e = s.load().await.unwrap_err().to_string();
        assert!(e.contains("key \"v1\" is not a LUN claim"), "{e}");
    }
}
