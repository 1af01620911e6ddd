//! The chart ships the CRD `crdgen` prints; they must never drift apart.
//! To update the chart: cargo run -p pool-csi-common --bin crdgen > charts/pool-csi/crds/storagepools.pool-csi.io.yaml

#[test]
fn chart_crd_equals_the_crd_generated_from_code() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/pool-csi/crds/storagepools.pool-csi.io.yaml"
    );
    let chart = std::fs::read_to_string(path).expect("the chart's CRD file");
    assert!(
        chart == pool_csi_common::crd_yaml(),
        "charts/pool-csi/crds/storagepools.pool-csi.io.yaml is stale: regenerate it with crdgen"
    );
}

#[test]
fn storage_pool_manifests_parse_as_the_cluster_resource_too() {
    let yaml = "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: scratch }\nspec: { type: dir, target: { path: /srv/pool } }\n";
    let sp: pool_csi_common::pool_spec::StoragePool = serde_yaml_ng::from_str(yaml).unwrap();
    let file = pool_csi_common::PoolDefinition::parse_documents(yaml, "t").unwrap();
    assert_eq!(sp.spec, file[0].spec);
}
