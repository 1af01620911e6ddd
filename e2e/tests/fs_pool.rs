//! fs pools on a real block device (a loop device over a scratch file):
//! a blank device stays inactive until built; build makes a filesystem only
//! on a blank device; a device holding data is never formatted.

use pool_csi_e2e::{req, require, sh, Driver, LoopDisk, Options};
use pool_csi_proto::csi;
use std::path::Path;

fn fs_pool(name: &str, dev: &Path, format: &str) -> String {
    pool_csi_e2e::manifests::fs_pool(name, &dev.display().to_string(), format)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_pool_builds_only_blank_devices_and_serves_volumes() {
    require!(false);
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-fsdev-")
        .tempdir()
        .unwrap();
    let blank = LoopDisk::new(scratch.path(), "blank.img", 256, false);
    let holds_data = LoopDisk::new(scratch.path(), "data.img", 256, false);
    sh("mkfs.ext4", &["-q", "-L", "precious", holds_data.path()]);
    let pools = format!(
        "{}{}",
        fs_pool("fresh", Path::new(blank.path()), "ext4"),
        fs_pool("taken", Path::new(holds_data.path()), "xfs")
    );
    let d = Driver::start(Options {
        extra_pools: pools,
        ..Default::default()
    })
    .await;

    let (_, out) = d.poolctl(&["pool-list"]);
    let fresh = out.lines().find(|l| l.contains("fresh")).unwrap();
    assert!(
        fresh.contains("inactive") && fresh.contains("holds no filesystem"),
        "{fresh}"
    );
    let taken = out.lines().find(|l| l.contains("taken")).unwrap();
    assert!(
        taken.contains("inactive") && taken.contains("holds ext4") && taken.contains("xfs"),
        "{taken}"
    );

    // Building over a device that holds a filesystem of another type is refused without --overwrite.
    let (ok, out) = d.poolctl(&["pool-build", "taken"]);
    assert!(!ok, "{out}");
    assert_eq!(
        sh("blkid", &["-o", "value", "-s", "LABEL", holds_data.path()]),
        "precious",
        "the data survived"
    );

    let (ok, out) = d.poolctl(&["pool-build", "fresh"]);
    assert!(ok && out.contains("running"), "{out}");
    assert_eq!(
        sh("blkid", &["-o", "value", "-s", "TYPE", blank.path()]),
        "ext4"
    );
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mounted
            .lines()
            .any(|l| l.contains(&format!("{}/fresh", d.dir.path().display()))),
        "pool device not mounted"
    );

    let mut c = d.clients().await;
    let mut r = req::create("in-fs-pool", 16 * req::MIB, &[]);
    r.parameters.insert("pool".into(), "fresh".into());
    let v = c
        .controller
        .create_volume(r)
        .await
        .expect("create in fs pool")
        .into_inner()
        .volume
        .unwrap();
    assert!(d.dir.path().join("fresh/in-fs-pool.raw").is_file());
    let cap = c
        .controller
        .get_capacity(csi::GetCapacityRequest {
            parameters: [("pool".to_string(), "fresh".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        cap.available_capacity > 100 << 20 && cap.available_capacity < 256 << 20,
        "{cap:?}"
    );
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(d); // unmounts the pool before the loop devices are detached
}
