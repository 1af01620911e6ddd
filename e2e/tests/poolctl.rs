//! The operator CLI against a running node agent.

use pool_csi_e2e::{require, Driver, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poolctl_lists_creates_resizes_and_deletes() {
    require!(false);
    let extra = pool_csi_e2e::manifests::NOT_RUNNING;
    let d = Driver::start(Options {
        extra_pools: extra.into(),
        ..Default::default()
    })
    .await;
    let (ok, out) = d.poolctl(&["pool-list"]);
    assert!(ok, "{out}");
    let scratch = out
        .lines()
        .find(|l| l.contains("scratch"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        scratch.contains("dir") && scratch.contains("running") && scratch.contains("GiB"),
        "{scratch}"
    );
    let later = out.lines().find(|l| l.contains("later")).unwrap();
    assert!(
        later.contains("inactive") && later.contains("does not exist"),
        "{later}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("nfs0") && l.contains("could not be mounted")),
        "{out}"
    );

    let (ok, out) = d.poolctl(&[
        "vol-create",
        "scratch",
        "disk-1",
        "64M",
        "--format",
        "qcow2",
    ]);
    assert!(
        ok && out.contains("qcow2") && out.contains("64.00 MiB"),
        "{out}"
    );
    let (ok, out) = d.poolctl(&["vol-resize", "scratch", "disk-1", "128M"]);
    assert!(ok && out.contains("128.00 MiB"), "{out}");
    let (ok, out) = d.poolctl(&["vol-list", "scratch"]);
    assert!(
        ok && out.lines().any(|l| l.contains("disk-1")
            && l.contains("qcow2")
            && l.contains("128.00 MiB")
            && l.ends_with("ok")),
        "{out}"
    );
    let (ok, out) = d.poolctl(&["vol-create", "scratch", "Bad/Name", "1M"]);
    assert!(!ok && out.contains("InvalidArgument"), "{out}");
    let (ok, out) = d.poolctl(&["vol-create", "later", "x", "1M"]);
    assert!(
        !ok && out.contains("FailedPrecondition") && out.contains("not running"),
        "{out}"
    );
    let (ok, out) = d.poolctl(&["vol-delete", "scratch", "disk-1"]);
    assert!(ok, "{out}");
    assert!(!d.pool_dir.join("disk-1.qcow2").exists());
    // pool-build makes the missing target and starts the pool.
    let (ok, out) = d.poolctl(&["pool-build", "later"]);
    assert!(ok && out.contains("running"), "{out}");
    let (ok, out) = d.poolctl(&["vol-create", "later", "x", "1M"]);
    assert!(ok, "{out}");
    assert!(d.dir.path().join("later/x.raw").is_file());
}
