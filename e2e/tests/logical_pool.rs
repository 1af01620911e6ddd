//! logical pools on a real volume group: PVs on loop devices, the real lvm2
//! commands. This kernel has no device-mapper, so the pool runs LVM with
//! activation disabled (its documented `lvm.noActivation` setting): create,
//! tag, extend, remove and refresh happen for real; attaching an LV,
//! snapshots and thin pools need device-mapper and are checked for the clear
//! error they give here (the skip names what is missing).

use pool_csi_e2e::{req, require, scrape, tool, Driver, LoopDisk, Options};
use pool_csi_proto::csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

/// Removes the test's VG and PVs (before the loop devices go).
struct Vg<'a>(String, Vec<&'a LoopDisk>);

impl Drop for Vg<'_> {
    fn drop(&mut self) {
        let pvs: Vec<&str> = self.1.iter().map(|d| d.path()).collect();
        pool_csi_e2e::remove_vg(&self.0, &pvs);
    }
}

fn lvs(vg: &str) -> serde_json::Value {
    let out = tool(
        "lvm",
        &[
            "lvs",
            "--config",
            "global{activation=0}",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            "lv_name,lv_size,lv_tags,stripes,stripe_size",
            vg,
        ],
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["report"][0]["lv"].clone()
}

fn on(pool: &str, name: &str, bytes: i64, params: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    let mut r = req::create(name, bytes, params);
    r.parameters.insert("pool".into(), pool.into());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_pool_builds_provisions_extends_and_removes_real_lvs() {
    require!(false);
    pool_csi_e2e::require_tool!("lvm", "needs lvm2 (run dev/setup)");
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-lvm-")
        .tempdir()
        .unwrap();
    let (a, b, used) = (
        LoopDisk::new(scratch.path(), "a.img", 64, false),
        LoopDisk::new(scratch.path(), "b.img", 64, false),
        LoopDisk::new(scratch.path(), "c.img", 16, false),
    );
    tool("mkfs.ext4", &["-q", "-L", "precious", used.path()]);
    let vg = format!("pcsi{}", std::process::id());
    let _cleanup = Vg(vg.clone(), vec![&a, &b]);
    let _cleanup_x = Vg(format!("{vg}x"), vec![&used]);
    let pools = format!(
        "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: lvm1 }}\nspec:\n  type: logical\n  source: {{ name: {vg}, devices: [{}, {}] }}\n  lvm: {{ noActivation: true }}\n---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: lvm2 }}\nspec:\n  type: logical\n  source: {{ name: {vg}x, devices: [{}] }}\n  lvm: {{ noActivation: true }}\n",
        a.path(), b.path(), used.path()
    );
    let d = Driver::start(Options {
        extra_pools: pools,
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;

    // A VG that does not exist yet: a clear condition; building over data is refused.
    let (_, out) = d.poolctl(&["pool-list"]);
    assert!(
        out.lines()
            .any(|l| l.contains("lvm1") && l.contains("inactive") && l.contains("does not exist")),
        "{out}"
    );
    let (ok, out) = d.poolctl(&["pool-build", "lvm2"]);
    assert!(!ok && out.contains("ext4"), "{out}");
    assert_eq!(
        String::from_utf8_lossy(
            &tool("blkid", &["-o", "value", "-s", "LABEL", used.path()]).stdout
        )
        .trim(),
        "precious"
    );
    // --overwrite is the operator's yes: the device becomes a PV of the VG.
    let (ok, out) = d.poolctl(&["pool-build", "lvm2", "--overwrite"]);
    assert!(ok && out.contains("running"), "{out}");
    assert_eq!(
        String::from_utf8_lossy(&tool("blkid", &["-o", "value", "-s", "TYPE", used.path()]).stdout)
            .trim(),
        "LVM2_member"
    );
    let (ok, out) = d.poolctl(&["pool-build", "lvm1"]);
    assert!(ok && out.contains("running"), "{out}");

    // Create: a tagged LV named after the volume, sized to whole extents.
    let v = c
        .controller
        .create_volume(on("lvm1", "pvc-one", 10 * MIB, &[]))
        .await
        .expect("create")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        v.capacity_bytes,
        12 * MIB,
        "10 MiB rounded up to 4 MiB extents"
    );
    let lv = lvs(&vg)
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lv_name"] == "pvc-one")
        .cloned()
        .expect("LV exists");
    assert!(
        lv["lv_tags"]
            .as_str()
            .unwrap()
            .contains("pool-csi.io/kind=volume"),
        "{lv}"
    );
    let again = c
        .controller
        .create_volume(on("lvm1", "pvc-one", 10 * MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    assert_eq!(
        c.controller
            .create_volume(on("lvm1", "pvc-one", 20 * MIB, &[]))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );

    // An administrator's LV in the same VG is invisible to CSI and never removed.
    tool(
        "lvm",
        &[
            "lvcreate",
            "--config",
            "global{activation=0}",
            "-an",
            "-Zn",
            "-y",
            "-n",
            "admin-data",
            "-L",
            "4m",
            &vg,
        ],
    );
    let listed = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.entries.iter().any(|e| e
        .volume
        .as_ref()
        .unwrap()
        .volume_id
        .ends_with(":admin-data")));
    let admin_id = v.volume_id.replace("pvc-one", "admin-data");
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: admin_id,
            ..Default::default()
        })
        .await
        .expect("OK: not ours");
    assert!(
        lvs(&vg)
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["lv_name"] == "admin-data"),
        "the admin LV survived"
    );
    assert_eq!(
        c.controller
            .create_volume(on("lvm1", "admin-data", 4 * MIB, &[]))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );

    // Expand within the VG; beyond it nothing changes.
    let e = c
        .controller
        .controller_expand_volume(req::expand(&v.volume_id, 40 * MIB))
        .await
        .expect("extend")
        .into_inner();
    assert_eq!(
        (e.capacity_bytes, e.node_expansion_required),
        (40 * MIB, true)
    );
    let too_far = c
        .controller
        .controller_expand_volume(req::expand(&v.volume_id, 400 * MIB))
        .await
        .unwrap_err();
    assert_eq!(too_far.code(), Code::ResourceExhausted, "{too_far:?}");
    let size = lvs(&vg)
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lv_name"] == "pvc-one")
        .unwrap()["lv_size"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(size, (40 * MIB).to_string());

    // Capacity follows the VG; a volume larger than the free space is refused.
    let cap = c
        .controller
        .get_capacity(csi::GetCapacityRequest {
            parameters: [("pool".to_string(), "lvm1".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cap.available_capacity, (120 - 40 - 4) * MIB, "{cap:?}");
    // Reports are reused while the PVs' metadata headers are unchanged; an
    // administrator's change at once (well inside the reuse window) shows.
    let capacity = |c: &pool_csi_e2e::clients::Clients| {
        let mut c = c.clone();
        async move {
            c.controller
                .get_capacity(csi::GetCapacityRequest {
                    parameters: [("pool".to_string(), "lvm1".to_string())].into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .available_capacity
        }
    };
    let off = "global{activation=0}";
    tool(
        "lvm",
        &[
            "lvcreate",
            "--config",
            off,
            "-an",
            "-Zn",
            "-y",
            "-n",
            "admin-more",
            "-L",
            "8m",
            &vg,
        ],
    );
    assert_eq!(capacity(&c).await, (120 - 40 - 4 - 8) * MIB);
    tool(
        "lvm",
        &[
            "lvremove",
            "--config",
            off,
            "-y",
            &format!("{vg}/admin-more"),
        ],
    );
    assert_eq!(capacity(&c).await, (120 - 40 - 4) * MIB);
    // A reused report runs no lvm command; one older than 5 s is taken
    // afresh. Each scrape of the node's metrics reads the pool's report.
    let reports = || {
        let m = scrape(&d.node_metrics);
        let line = m
            .lines()
            .find_map(|l| l.strip_prefix(r#"pool_csi_lvm_commands_total{kind="report"} "#))
            .unwrap_or_else(|| panic!("no lvm report count in {m}"));
        line.trim().parse::<u64>().unwrap()
    };
    let first = reports();
    assert_eq!(reports(), first, "a reused report runs no lvm command");
    tokio::time::sleep(std::time::Duration::from_millis(5_300)).await;
    assert!(reports() > first, "a report older than 5 s is taken afresh");
    assert_eq!(
        c.controller
            .create_volume(on("lvm1", "huge", 200 * MIB, &[]))
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );
    let stripes = c
        .controller
        .create_volume(on(
            "lvm1",
            "striped",
            8 * MIB,
            &[("stripes", "2"), ("stripeSize", "64Ki")],
        ))
        .await
        .expect("striped LV");
    assert_eq!(stripes.into_inner().volume.unwrap().capacity_bytes, 8 * MIB);
    let striped = lvs(&vg)
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lv_name"] == "striped")
        .cloned()
        .unwrap();
    assert_eq!(
        (striped["stripes"].as_str(), striped["stripe_size"].as_str()),
        (Some("2"), Some("65536")),
        "two stripes of 64 KiB across the two PVs: {striped}"
    );

    // Bad input: reserved LV names, formats and allocations a VG cannot hold.
    let reserved = c
        .controller
        .create_volume(on("lvm1", "snapshot-1", 4 * MIB, &[]))
        .await
        .unwrap_err();
    assert_eq!(reserved.code(), Code::InvalidArgument);
    assert!(
        reserved.message().contains("reserves"),
        "{}",
        reserved.message()
    );
    assert_eq!(
        c.controller
            .create_volume(on("lvm1", "q", 4 * MIB, &[("volumeFormat", "qcow2")]))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let thin = c
        .controller
        .create_volume(on("lvm1", "t", 4 * MIB, &[("allocation", "thin")]))
        .await
        .unwrap_err();
    assert_eq!(thin.code(), Code::InvalidArgument);
    assert!(thin.message().contains("thinPool"), "{}", thin.message());

    // What needs device-mapper fails clearly and changes nothing.
    let snap = c
        .controller
        .create_snapshot(req::snapshot("s1", &v.volume_id))
        .await
        .unwrap_err();
    assert!(snap.message().contains("device-mapper"), "{snap:?}");
    // The kernel's own word (a /dev/mapper/control node can exist without
    // the driver): device-mapper registers the misc device "device-mapper".
    if !std::path::Path::new("/sys/class/misc/device-mapper").exists() {
        // The errors are checked here; the paths themselves run on
        // recorded lvm output (node/tests/logical_fake.rs).
        pool_csi_e2e::skip(
            "device-mapper",
            "activated LVs (snapshots, thin pools, attach) need device-mapper, which this kernel lacks",
        );
    }
    let stage = c
        .node
        .node_stage_volume(req::stage(
            &v.volume_id,
            &d.path("st"),
            req::mount_cap("ext4"),
        ))
        .await
        .unwrap_err();
    assert_eq!(stage.code(), Code::FailedPrecondition);
    assert!(
        stage.message().contains("noActivation"),
        "{}",
        stage.message()
    );

    // An LV to be wiped on delete is never removed unwiped: without
    // activation it cannot be zeroed, so delete fails clearly and keeps it.
    let wiped = c
        .controller
        .create_volume(on("lvm1", "wiped", 4 * MIB, &[("wipeOnDelete", "true")]))
        .await
        .expect("LV with wipeOnDelete")
        .into_inner()
        .volume
        .unwrap();
    let kept = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: wiped.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(kept.code(), Code::FailedPrecondition, "{kept:?}");
    assert!(kept.message().contains("noActivation"), "{kept:?}");
    assert!(
        lvs(&vg)
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["lv_name"] == "wiped"),
        "the LV stays until it can be wiped"
    );
    tool(
        "lvm",
        &[
            "lvremove",
            "-q",
            "-y",
            "--config",
            "global{activation=0}",
            &format!("{vg}/wiped"),
        ],
    );

    // Delete removes exactly the LV.
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id,
            ..Default::default()
        })
        .await
        .expect("delete twice");
    let names: Vec<String> = lvs(&vg)
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lv_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["admin-data".to_string(), "striped".to_string()]);

    // The pool's changes went through lvm's metadata history; the test's
    // VGs leave none behind (each later VG change lists that directory).
    let history = |vg: &str| {
        std::fs::read_dir("/etc/lvm/archive")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{vg}_"))
            })
            .count()
    };
    assert!(history(&vg) > 0, "lvm archived the VG's changes");
    drop(d);
    drop((_cleanup, _cleanup_x));
    assert_eq!(history(&vg) + history(&format!("{vg}x")), 0);
}

/// Retries `call` until it answers OK (a CO retries the same way); the last
/// error after 30 s fails the test.
async fn until_ok<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match call().await {
            Ok(r) => return r.into_inner(),
            Err(e) if std::time::Instant::now() > deadline => panic!("{what}: {e:?}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// `lvm` shells started for this driver's state directory that still run.
fn shells_of(d: &Driver) -> Vec<u32> {
    let want = format!(
        "LVM_SYSTEM_DIR={}",
        d.dir.path().join("state/lvm-shell").display()
    );
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "lvm")
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
        })
        .collect()
}

/// The node plugin is SIGKILLed inside logical creates and deletes (while
/// its lvm shell may be mid-command): retried, each converges to exactly one
/// tagged LV of the asked size, then to none; a killed node's shell exits
/// with it (its stdin ends), so shells never pile up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_creates_and_deletes_converge_when_the_node_is_killed_inside_them() {
    require!(false);
    pool_csi_e2e::require_tool!("lvm", "needs lvm2 (run dev/setup)");
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-lvm-crash-")
        .tempdir()
        .unwrap();
    let (a, b) = (
        LoopDisk::new(scratch.path(), "a.img", 64, false),
        LoopDisk::new(scratch.path(), "b.img", 64, false),
    );
    let vg = format!("pcsik{}", std::process::id());
    let _cleanup = Vg(vg.clone(), vec![&a, &b]);
    let pools = format!(
        "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: lvmk }}\nspec:\n  type: logical\n  autoBuild: true\n  source: {{ name: {vg}, devices: [{}, {}] }}\n  lvm: {{ noActivation: true }}\n",
        a.path(),
        b.path()
    );
    let mut d = Driver::start(Options {
        extra_pools: pools,
        log_filter: "error".into(),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let ours = |name: &str| -> Vec<serde_json::Value> {
        lvs(&vg)
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["lv_name"] == name)
            .cloned()
            .collect()
    };
    for i in 0..10u64 {
        let name = format!("crash-{i}");
        // Spread over the ~25 ms a create or delete takes.
        let delay = std::time::Duration::from_millis((i * 7) % 30);
        let mut k = c.clone();
        let r = on("lvmk", &name, 8 * MIB, &[]);
        let call = tokio::spawn(async move { k.controller.create_volume(r).await });
        tokio::time::sleep(delay).await;
        d.kill_node();
        d.start_node();
        d.wait_ready().await;
        c = d.clients().await;
        let _ = call.await;
        let base = c.clone();
        let v = until_ok("create", || {
            let mut c = base.clone();
            let r = on("lvmk", &name, 8 * MIB, &[]);
            async move { c.controller.create_volume(r).await }
        })
        .await
        .volume
        .unwrap();
        let lv = ours(&name);
        assert_eq!(lv.len(), 1, "{name}: {lv:?}");
        assert_eq!(lv[0]["lv_size"], (8 * MIB).to_string(), "{lv:?}");
        assert!(
            lv[0]["lv_tags"].as_str().unwrap().contains("pool-csi"),
            "{lv:?}"
        );

        let mut k = c.clone();
        let del = req::delete(&v.volume_id);
        let call = tokio::spawn(async move { k.controller.delete_volume(del).await });
        tokio::time::sleep(delay).await;
        d.kill_node();
        d.start_node();
        d.wait_ready().await;
        c = d.clients().await;
        let _ = call.await;
        let base = c.clone();
        until_ok("delete", || {
            let mut c = base.clone();
            let del = req::delete(&v.volume_id);
            async move { c.controller.delete_volume(del).await }
        })
        .await;
        assert!(ours(&name).is_empty(), "{name} is gone");
    }
    // Only the running node's shell is left (killed nodes' shells ended).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while shells_of(&d).len() > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let shells = shells_of(&d);
    assert_eq!(shells.len(), 1, "one shell, the running node's: {shells:?}");
    drop(d);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !shells
        .iter()
        .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for p in &shells {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "the shell ends with its node"
        );
    }
}
