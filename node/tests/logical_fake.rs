//! Logical-pool paths that need device-mapper (thin volumes, snapshots,
//! clones, activation), driven through the real pool code with recorded lvm
//! output. The same operations run for real where device-mapper exists.

use pool_csi_common::{Allocation, PoolDefinition};
use pool_csi_node::{
    exec::fake::{FakeRunner, Reply},
    pools::{logical::LogicalPool, CreateRequest, Pool, Source},
    tools::lvm,
};
use std::sync::Arc;

fn report(cmd: &'static str, fields: &'static str) -> Vec<&'static str> {
    vec![
        "lvm",
        cmd,
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "-o",
        fields,
        "vg0",
    ]
}

fn vgs() -> Vec<&'static str> {
    report("vgs", lvm::VGS_FIELDS)
}

fn lvs() -> Vec<&'static str> {
    report("lvs", lvm::LVS_FIELDS)
}

/// The create path's one scan: `lvm fullreport` of vg0.
fn full() -> Vec<&'static str> {
    vec![
        "lvm",
        "fullreport",
        "--reportformat",
        "json",
        "--units",
        "b",
        "--nosuffix",
        "--configreport",
        "vg",
        "-o",
        lvm::VGS_FIELDS,
        "--configreport",
        "lv",
        "-o",
        lvm::FULL_LV_FIELDS,
        "--configreport",
        "pv",
        "-o",
        "pv_name",
        "--configreport",
        "pvseg",
        "-o",
        "pvseg_start",
        "--configreport",
        "seg",
        "-o",
        "segtype",
        "vg0",
    ]
}

/// A fullreport holding the VG of `vgs_json` and the LVs of `lvs_json`, in
/// the shape fullreport_two_lvs.json (recorded) shows.
fn full_json(vgs_json: &str, lvs_json: &str) -> String {
    let section = |json: &str, key: &str| {
        serde_json::from_str::<serde_json::Value>(json).unwrap()["report"][0][key].clone()
    };
    serde_json::json!({"report": [{"vg": section(vgs_json, "vg"), "lv": section(lvs_json, "lv")}]})
        .to_string()
}

/// vg0 as the real `vgs` reports it (recorded by record.sh): 20 GiB, 10 GiB free.
const VG_JSON: &str = include_str!("fixtures/commands/lvm/vgs_vg0.json");

fn thin_lvs() -> &'static str {
    include_str!("fixtures/commands/lvm/lvs_thin_written_by_hand.json")
}

fn pool(runner: FakeRunner, overcommit: u32) -> LogicalPool {
    pool_with(Arc::new(runner), overcommit)
}

fn pool_with(runner: Arc<FakeRunner>, overcommit: u32) -> LogicalPool {
    let def = PoolDefinition::parse_documents(
        &format!("apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: vg0 }}\nspec:\n  type: logical\n  lvm: {{ thinPool: thin0, overcommitPercent: {overcommit} }}\n"),
        "test",
    )
    .unwrap()
    .remove(0);
    let cfg = pool_csi_node::Config::local("n1", "/nonexistent".into());
    LogicalPool::new(&def, &cfg, runner)
}

fn req(name: &str, bytes: u64, source: Source) -> CreateRequest {
    CreateRequest {
        required: bytes,
        allocation: Some(Allocation::Thin),
        source,
        ..CreateRequest::sized(name, 0)
    }
}

#[tokio::test]
async fn thin_volumes_snapshots_and_clones_are_thin_lvs() {
    let runner = FakeRunner::new()
        // start: VG exists, thin pool exists
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(lvs(), Reply::ok().stdout(thin_lvs()))
        // create a thin volume
        .expect(full(), Reply::ok().stdout(full_json(VG_JSON, thin_lvs())))
        .expect(
            [
                "lvm",
                "lvcreate",
                "--yes",
                "-n",
                "pvc-b",
                "-V",
                "1073741824b",
                "--thinpool",
                "vg0/thin0",
                "--addtag",
                "pool-csi",
                "--addtag",
                "pool-csi.io/kind=volume",
            ],
            Reply::ok(),
        )
        // snapshot of the thin volume pvc-a: a thin snapshot, no size
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(lvs(), Reply::ok().stdout(thin_lvs()))
        .expect(
            [
                "lvm",
                "lvcreate",
                "--yes",
                "--snapshot",
                "-n",
                "snap_s2",
                "--setactivationskip",
                "n",
                "--addtag",
                "pool-csi",
                "--addtag",
                "pool-csi.io/kind=snapshot",
                "--addtag",
                "pool-csi.io/source=pvc-a",
                "--addtag",
                "pool-csi.io/size=2147483648",
                "--addtag",
                "*",
                "vg0/pvc-a",
            ],
            Reply::ok(),
        )
        .expect(
            lvs(),
            Reply::ok().stdout(thin_lvs().replace("snap_s1", "snap_s2")),
        )
        // restore from snapshot s1: a thin snapshot of the snapshot LV
        .expect(full(), Reply::ok().stdout(full_json(VG_JSON, thin_lvs())))
        .expect(
            [
                "lvm",
                "lvcreate",
                "--yes",
                "--snapshot",
                "-n",
                "pvc-r",
                "--setactivationskip",
                "n",
                "--addtag",
                "pool-csi",
                "--addtag",
                "pool-csi.io/kind=volume",
                "vg0/snap_s1",
            ],
            Reply::ok(),
        );
    let p = pool(runner, 400);
    p.start().await.unwrap();
    p.create_volume(&req("pvc-b", 1 << 30, Source::Empty))
        .await
        .unwrap();
    let s = p.create_snapshot("pvc-a", "s2").await.unwrap();
    assert_eq!((s.name.as_str(), s.source_volume.as_str()), ("s2", "pvc-a"));
    p.create_volume(&req("pvc-r", 1 << 30, Source::Snapshot("s1".into())))
        .await
        .unwrap();
}

#[tokio::test]
async fn thin_overcommit_bounds_what_thin_volumes_may_promise() {
    // thin0 is 1 GiB, 12.5 % used, overcommit 200 %: 2 GiB offered, pvc-a
    // promises 2 GiB already (the snapshot does not count): nothing left.
    let runner = FakeRunner::new()
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(lvs(), Reply::ok().stdout(thin_lvs()))
        .expect(full(), Reply::ok().stdout(full_json(VG_JSON, thin_lvs())));
    let p = pool(runner, 200);
    p.start().await.unwrap();
    let e = p
        .create_volume(&req("pvc-c", 1 << 20, Source::Empty))
        .await
        .unwrap_err();
    assert!(
        matches!(e, pool_csi_node::error::Error::NoSpace { available: 0, .. }),
        "{e}"
    );
}

/// The status (and so the node's metrics) reports the thin pool's size,
/// the data in it and what thin volumes may still be promised.
#[tokio::test]
async fn the_status_reports_the_thin_pool_s_use_and_what_it_may_still_promise() {
    // thin0 is 1 GiB, 12.5 % used; pvc-a promises 2 GiB. At 400 %: 4 GiB
    // offered, 2 GiB left (free data 0.875 GiB x 4 = 3.5 GiB bounds it not).
    let runner = FakeRunner::new()
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(lvs(), Reply::ok().stdout(thin_lvs()))
        .expect(full(), Reply::ok().stdout(full_json(VG_JSON, thin_lvs())));
    let p = pool(runner, 400);
    p.start().await.unwrap();
    let st = p.status(false).await;
    let thin = st.thin_pool.expect("the thin pool's use");
    assert_eq!(thin.size, 1 << 30);
    assert_eq!(thin.data_used, (1 << 30) / 8);
    assert_eq!(st.thin_available, 2 << 30);
}

#[tokio::test]
async fn a_thick_volume_with_a_cow_snapshot_is_not_deleted() {
    // COW snapshots need device-mapper: written by hand in lvs's recorded format.
    let lvs_json = include_str!("fixtures/commands/lvm/lvs_cow_snapshot_written_by_hand.json");
    let runner = FakeRunner::new()
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(lvs(), Reply::ok().stdout(lvs_json))
        .expect(lvs(), Reply::ok().stdout(lvs_json));
    let p = pool(runner, 100);
    p.start().await.unwrap();
    let e = p.delete_volume("vol", false).await.unwrap_err();
    let msg = pool_csi_common::full_message(&e);
    assert!(msg.contains("snapshot x depends on it"), "{msg}");
}

/// A thick clone whose block copy a crash interrupted carries
/// `pool-csi.io/copying` (lvs_copying_clone.json, recorded by record.sh):
/// it is no volume; creating the name again removes it and starts over, and
/// deleting the name removes it.
#[tokio::test]
async fn a_half_copied_clone_is_removed_on_retry_and_on_delete() {
    let copying = include_str!("fixtures/commands/lvm/lvs_copying_clone.json");
    let runner = FakeRunner::new()
        // start
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(vgs(), Reply::ok().stdout(VG_JSON))
        .expect(lvs(), Reply::ok().stdout(thin_lvs()))
        // create pvc-c again: the leftover goes, a new LV is made
        .expect(full(), Reply::ok().stdout(full_json(VG_JSON, copying)))
        .expect(["lvm", "lvremove", "--yes", "vg0/pvc-c"], Reply::ok())
        .expect(
            [
                "lvm",
                "lvcreate",
                "--yes",
                "--wipesignatures",
                "y",
                "-n",
                "pvc-c",
                "-L",
                "16777216b",
                "--addtag",
                "pool-csi",
                "--addtag",
                "pool-csi.io/kind=volume",
                "vg0",
            ],
            Reply::ok(),
        )
        // delete of a name whose only LV is a half-made copy
        .expect(lvs(), Reply::ok().stdout(copying))
        .expect(["lvm", "lvremove", "--yes", "vg0/pvc-c"], Reply::ok());
    let runner = Arc::new(runner);
    let p = pool_with(runner.clone(), 100);
    p.start().await.unwrap();
    let mut r = req("pvc-c", 16 << 20, Source::Empty);
    r.allocation = Some(Allocation::Thick);
    let v = p.create_volume(&r).await.unwrap();
    assert_eq!(v.capacity, 16 << 20);
    p.delete_volume("pvc-c", false).await.unwrap();
}

/// Behind `--command-prefix` (lvm run in the host's namespaces) a logical
/// pool keeps the host's lvm configuration: the node writes no lvm
/// configuration directory of its own into its state directory, and every
/// report is one command through the runner (which adds the prefix), none
/// through the long-lived lvm shell.
#[tokio::test]
async fn behind_a_command_prefix_lvm_keeps_the_hosts_configuration() {
    let state = tempfile::tempdir().unwrap();
    let def = PoolDefinition::parse_documents(
        "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: vg0 }\nspec:\n  type: logical\n",
        "test",
    )
    .unwrap()
    .remove(0);
    let mut cfg = pool_csi_node::Config::local("n1", state.path().into());
    cfg.command_prefix = ["nsenter", "--target", "1", "--mount", "--"]
        .map(Into::into)
        .to_vec();
    let runner = Arc::new(
        FakeRunner::new()
            .expect(vgs(), Reply::ok().stdout(VG_JSON))
            .expect(vgs(), Reply::ok().stdout(VG_JSON)),
    );
    let p = LogicalPool::new(&def, &cfg, runner.clone());
    p.start().await.unwrap();
    assert_eq!(runner.calls().len(), 2, "{:?}", runner.calls());
    let written: Vec<_> = std::fs::read_dir(state.path()).unwrap().collect();
    assert!(written.is_empty(), "{written:?}");
}
