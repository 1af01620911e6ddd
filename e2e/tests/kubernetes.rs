//! The driver on a real cluster, driven the way its users drive it: `helm`
//! and `kubectl`. Runs only when KUBECONFIG is set (kind, k3d or any test
//! cluster where the pool-csi image can run privileged; see docs/install.md "Testing
//! on a cluster"); otherwise it is skipped with a message.
//!
//! It installs the chart (image from POOL_CSI_IMAGE, default
//! `pool-csi:dev`), defines a dir StoragePool and a StorageClass, and takes
//! a PVC through pod → write → read → expand → snapshot → restore → delete,
//! checks `kubectl get storagepools`, then uninstalls.

use pool_csi_e2e::{tool, which};
use std::time::{Duration, Instant};

const NS: &str = "pool-csi-e2e";
const RELEASE: &str = "pool-csi-e2e";

fn run(program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl(args: &[&str]) -> String {
    run("kubectl", args)
}

/// `kubectl apply` of a manifest given inline.
fn apply(manifest: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("m.yaml");
    std::fs::write(&f, manifest).unwrap();
    kubectl(&["apply", "-n", NS, "-f", f.to_str().unwrap()]);
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let since = Instant::now();
    while !check() {
        assert!(
            since.elapsed() < timeout,
            "{what}: timed out after {timeout:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn pod_with(name: &str, claim: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{ name: {name} }}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [sh, -c, {command:?}]\n    volumeMounts: [{{ name: v, mountPath: /data }}]\n  volumes:\n  - name: v\n    persistentVolumeClaim: {{ claimName: {claim} }}\n"
    )
}

fn pod_succeeds(name: &str) {
    wait_for(&format!("pod {name}"), Duration::from_secs(180), || {
        let phase = kubectl(&[
            "get",
            "pod",
            name,
            "-n",
            NS,
            "-o",
            "jsonpath={.status.phase}",
        ]);
        assert_ne!(
            phase,
            "Failed",
            "pod {name} failed: {}",
            kubectl(&["logs", name, "-n", NS])
        );
        phase == "Succeeded"
    });
}

#[test]
fn a_pvc_lives_its_whole_life_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        pool_csi_e2e::skip(
            "kubeconfig",
            "KUBECONFIG is not set (see docs/install.md: Testing on a cluster)",
        );
        return;
    }
    for t in ["kubectl", "helm"] {
        assert!(which(t).is_some(), "KUBECONFIG is set but {t} is missing");
    }
    let image = std::env::var("POOL_CSI_IMAGE").unwrap_or_else(|_| "pool-csi:dev".into());
    let (repo, tag) = image.rsplit_once(':').unwrap_or((&image, "dev"));
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/pool-csi");
    let _ = tool("kubectl", &["create", "namespace", NS]);
    run(
        "helm",
        &[
            "upgrade",
            "--install",
            RELEASE,
            chart,
            "-n",
            NS,
            "--wait",
            "--timeout",
            "5m",
            "--set",
            &format!("image.repository={repo}"),
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            "controller.replicas=1",
        ],
    );

    apply(
        "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: e2e-dir }\nspec: { type: dir, target: { path: /var/lib/pool-csi/pools/e2e-dir }, autoBuild: true }\n---\napiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: { name: pool-csi-e2e }\nprovisioner: pool-csi.io\nallowVolumeExpansion: true\nvolumeBindingMode: WaitForFirstConsumer\nparameters: { pool: e2e-dir, volumeFormat: raw, csi.storage.k8s.io/fstype: ext4 }\n",
    );
    wait_for("StoragePool status", Duration::from_secs(120), || {
        kubectl(&[
            "get",
            "storagepools",
            "e2e-dir",
            "-o",
            "jsonpath={.status.state}",
        ]) == "Running"
    });
    let list = kubectl(&["get", "storagepools"]);
    assert!(
        list.contains("e2e-dir") && list.contains("Running"),
        "{list}"
    );

    apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: { name: data }\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: pool-csi-e2e\n  resources: { requests: { storage: 64Mi } }\n");
    apply(&pod_with(
        "writer",
        "data",
        "echo hello-pool-csi > /data/f && sync",
    ));
    pod_succeeds("writer");
    apply(&pod_with(
        "reader",
        "data",
        "grep -q hello-pool-csi /data/f",
    ));
    pod_succeeds("reader");

    // Expand: the PVC grows, and the filesystem with it at the next mount.
    kubectl(&[
        "patch",
        "pvc",
        "data",
        "-n",
        NS,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}"#,
    ]);
    wait_for("PVC expansion", Duration::from_secs(120), || {
        kubectl(&[
            "get",
            "pvc",
            "data",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.capacity.storage}",
        ]) == "128Mi"
    });

    // Snapshot and restore, where the cluster serves the snapshot API.
    let has_snapshots = tool(
        "kubectl",
        &["get", "crd", "volumesnapshots.snapshot.storage.k8s.io"],
    )
    .status
    .success();
    if has_snapshots {
        apply("apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: { name: snap }\nspec: { volumeSnapshotClassName: pool-csi, source: { persistentVolumeClaimName: data } }\n");
        wait_for("snapshot ready", Duration::from_secs(120), || {
            kubectl(&[
                "get",
                "volumesnapshot",
                "snap",
                "-n",
                NS,
                "-o",
                "jsonpath={.status.readyToUse}",
            ]) == "true"
        });
        apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: { name: restored }\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: pool-csi-e2e\n  dataSource: { name: snap, kind: VolumeSnapshot, apiGroup: snapshot.storage.k8s.io }\n  resources: { requests: { storage: 128Mi } }\n");
        apply(&pod_with(
            "restore-reader",
            "restored",
            "grep -q hello-pool-csi /data/f",
        ));
        pod_succeeds("restore-reader");
    } else {
        pool_csi_e2e::skip(
            "snapshot-crds",
            "snapshot/restore: the cluster has no VolumeSnapshot CRDs",
        );
    }

    // Delete everything; the PVs go with the claims (reclaimPolicy Delete).
    kubectl(&["delete", "pod", "--all", "-n", NS, "--wait=true"]);
    if has_snapshots {
        kubectl(&["delete", "pvc", "restored", "-n", NS, "--wait=true"]);
        kubectl(&["delete", "volumesnapshot", "snap", "-n", NS, "--wait=true"]);
    }
    kubectl(&["delete", "pvc", "data", "-n", NS, "--wait=true"]);
    wait_for("PVs deleted", Duration::from_secs(120), || {
        !kubectl(&[
            "get",
            "pv",
            "-o",
            "jsonpath={.items[*].spec.storageClassName}",
        ])
        .contains("pool-csi-e2e")
    });
    kubectl(&["delete", "storageclass", "pool-csi-e2e"]);
    kubectl(&["delete", "storagepool", "e2e-dir"]);
    run("helm", &["uninstall", RELEASE, "-n", NS, "--wait"]);
    let _ = tool("kubectl", &["delete", "namespace", NS]);
}
