//! Data safety on real devices: staging never formats a volume that holds
//! data, wipeOnDelete zeroes a partition (and only then is it zeroed),
//! `pool-build --overwrite` is what it takes to build over data, a mount
//! that vanished shows as an abnormal volume, and clones on a filesystem
//! that shares extents are reflinks.

use pool_csi_e2e::{
    manifests::{disk_pool, fs_pool},
    req, require, sh, Driver, LoopDisk, Options,
};
use pool_csi_proto::csi;
use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};
use tonic::Code;

const MIB: u64 = 1 << 20;

async fn create(
    c: &mut pool_csi_e2e::clients::Clients,
    pool: &str,
    name: &str,
    params: &[(&str, &str)],
) -> String {
    let mut r = req::create(name, 16 * MIB as i64, params);
    r.parameters.insert("pool".into(), pool.into());
    c.controller
        .create_volume(r)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e:?}"))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

fn write_sync(path: &Path, at: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, at).unwrap();
    f.sync_all().unwrap();
}

fn read(path: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    buf
}

/// A volume that holds data the request did not ask for — a filesystem of
/// another type, or something that is no filesystem — is refused with
/// FAILED_PRECONDITION at stage, and left exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_never_formats_a_volume_that_holds_data() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    for (name, mkfs, found) in [
        ("ext2-data", &["mkfs.ext2", "-q", "-L", "keep"][..], "ext2"),
        ("swap-data", &["mkswap", "-L", "keep"][..], "swap"),
    ] {
        let id = create(&mut c, "scratch", name, &[]).await;
        let file = d.pool_dir.join(format!("{name}.raw"));
        let mut args = mkfs[1..].to_vec();
        let path = file.display().to_string();
        args.push(&path);
        sh(mkfs[0], &args);
        let staging = d.path(&format!("staging-{name}"));
        let e = c
            .node
            .node_stage_volume(req::stage(&id, &staging, req::mount_cap("ext4")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{name}: {e:?}");
        assert!(e.message().contains(found), "{name}: {e:?}");
        assert_eq!(
            sh("blkid", &["-o", "value", "-s", "TYPE", &path]),
            found,
            "{name}: nothing was formatted"
        );
        assert_eq!(sh("blkid", &["-o", "value", "-s", "LABEL", &path]), "keep");
    }
}

/// Deletion asks the kernel whether anything holds the image open (one
/// write-lease call) before it looks for who: a loop device someone else
/// attached, read-only, through a path of their own, keeps the volume; a
/// reader that is no attachment does not, and after the detach the delete
/// goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_attached_behind_the_drivers_back_is_not_deleted() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(&mut c, "scratch", "held", &[]).await;
    let file = d.pool_dir.join("held.raw");
    let delete = |c: &mut pool_csi_e2e::clients::Clients| {
        let mut c = c.clone();
        let r = req::delete(&id);
        async move { c.controller.delete_volume(r).await }
    };
    let link = d.path("elsewhere.raw");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let dev = sh(
        "losetup",
        &["-r", "--find", "--show", &link.display().to_string()],
    );
    let e = delete(&mut c).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(&format!("loop device {dev}")), "{e:?}");
    assert!(file.exists(), "the attached image is still there");
    sh("losetup", &["-d", &dev]);
    // A plain reader holds it open too, but is no attachment.
    let reader = std::fs::File::open(&file).unwrap();
    delete(&mut c).await.expect("delete after the detach");
    assert!(!file.exists());
    drop(reader);
}

/// A volume's image swapped for a symlink behind the driver's back (after
/// the pool's name index knew it as a file) is no volume any more: delete
/// and expand refuse it, and neither the link nor what it points to is
/// touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_swapped_for_a_symlink_is_refused_and_left_alone() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(&mut c, "scratch", "swapped", &[]).await;
    let file = d.pool_dir.join("swapped.raw");
    let outside = d.path("precious");
    std::fs::write(&outside, b"not the driver's").unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&outside, &file).unwrap();
    let e = c
        .controller
        .controller_expand_volume(req::expand(&id, 32 * MIB as i64))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c
        .controller
        .delete_volume(req::delete(&id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not a volume pool-csi made"), "{e:?}");
    assert!(file.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&outside).unwrap(), b"not the driver's");
}

/// The kubelet's mount of a published volume disappears behind the
/// driver's back: NodeGetVolumeStats reports the volume abnormal, naming
/// the path that is not mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_whose_mount_vanished_is_reported_abnormal() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(&mut c, "scratch", "vanishing", &[]).await;
    let (staging, target) = (d.path("staging"), d.path("target"));
    c.node
        .node_stage_volume(req::stage(&id, &staging, req::mount_cap("ext4")))
        .await
        .unwrap();
    c.node
        .node_publish_volume(req::publish(
            &id,
            &staging,
            &target,
            req::mount_cap("ext4"),
            false,
        ))
        .await
        .unwrap();
    let stats = |c: &mut pool_csi_e2e::clients::Clients| {
        let mut c = c.clone();
        let r = csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        };
        async move { c.node.node_get_volume_stats(r).await.unwrap().into_inner() }
    };
    let healthy = stats(&mut c).await.volume_condition.unwrap();
    assert!(!healthy.abnormal, "{healthy:?}");
    sh("umount", &[&target.display().to_string()]);
    let sick = stats(&mut c).await.volume_condition.unwrap();
    assert!(sick.abnormal, "{sick:?}");
    assert_eq!(sick.message, format!("{} is not mounted", target.display()));
    c.node
        .node_unpublish_volume(req::unpublish(&id, &target))
        .await
        .expect("unpublish converges on a vanished mount");
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .unwrap();
}

/// The partition `name` of `disk` as sfdisk lists it: (node, byte offset).
fn partition(disk: &LoopDisk, name: &str) -> (PathBuf, u64) {
    let table: serde_json::Value =
        serde_json::from_str(&sh("sfdisk", &["--json", disk.path()])).unwrap();
    let p = table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no partition {name}: {table}"))
        .clone();
    (
        PathBuf::from(p["node"].as_str().unwrap()),
        p["start"].as_u64().unwrap() * 512,
    )
}

/// A partition deleted with wipeOnDelete reads back as zeros from the disk
/// itself; one deleted without it keeps its bytes (so the check can fail),
/// and a new partition over them has its first and last MiB zeroed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_on_delete_zeroes_a_partition_on_the_disk() {
    require!(false);
    let scratch = tempfile::tempdir().unwrap();
    let disk = LoopDisk::new(scratch.path(), "disk.img", 64, true);
    let backing = scratch.path().join("disk.img");
    let d = Driver::start(Options {
        extra_pools: disk_pool("parts", disk.path(), "gpt"),
        ..Default::default()
    })
    .await;
    assert!(d.poolctl(&["pool-build", "parts"]).0);
    let mut c = d.clients().await;
    let pattern = vec![0xa5u8; MIB as usize];
    let mut offsets = Vec::new();
    for (name, wipe, survives) in [("wiped", "true", false), ("kept", "false", true)] {
        let id = create(&mut c, "parts", name, &[("wipeOnDelete", wipe)]).await;
        let (node, offset) = partition(&disk, name);
        offsets.push(offset);
        write_sync(&node, 0, &pattern);
        write_sync(&node, 15 * MIB, &pattern);
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
        for at in [offset, offset + 15 * MIB] {
            let bytes = read(&backing, at, MIB as usize);
            assert!(
                (bytes == pattern) == survives,
                "{name} at {at}: wipeOnDelete={wipe}"
            );
            if !survives {
                assert!(bytes.iter().all(|b| *b == 0), "{name} at {at}: not zeroed");
            }
        }
    }
    // A new partition where the unwiped one was has its first and last MiB
    // zeroed before it is handed out: the old bytes never show through.
    create(&mut c, "parts", "again", &[]).await;
    let (_, offset) = partition(&disk, "again");
    assert_eq!(offset, offsets[1], "made at the unwiped volume's place");
    for at in [offset, offset + 15 * MIB] {
        let bytes = read(&backing, at, MIB as usize);
        assert!(
            bytes.iter().all(|b| *b == 0),
            "again at {at}: old data shows"
        );
    }
}

/// `pool-build` refuses a device that holds data; `--overwrite` is the
/// operator's explicit yes, for fs pools (a new filesystem) and disk pools
/// (a new partition table), and the pool then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_build_overwrites_data_only_when_told_to() {
    require!(false);
    let scratch = tempfile::tempdir().unwrap();
    let fs_dev = LoopDisk::new(scratch.path(), "fs.img", 64, false);
    let disk_dev = LoopDisk::new(scratch.path(), "disk.img", 64, true);
    for dev in [&fs_dev, &disk_dev] {
        sh("mkfs.ext2", &["-q", "-L", "precious", dev.path()]);
    }
    let d = Driver::start(Options {
        extra_pools: format!(
            "{}{}",
            fs_pool("fsp", fs_dev.path(), "ext4"),
            disk_pool("diskp", disk_dev.path(), "gpt")
        ),
        ..Default::default()
    })
    .await;
    for (pool, dev) in [("fsp", &fs_dev), ("diskp", &disk_dev)] {
        let (ok, out) = d.poolctl(&["pool-build", pool]);
        assert!(!ok && out.contains("ext2"), "{pool}: {out}");
        assert_eq!(
            sh("blkid", &["-o", "value", "-s", "LABEL", dev.path()]),
            "precious"
        );
        let (ok, out) = d.poolctl(&["pool-build", pool, "--overwrite"]);
        assert!(ok && out.contains("running"), "{pool}: {out}");
    }
    assert_eq!(
        sh("blkid", &["-o", "value", "-s", "TYPE", fs_dev.path()]),
        "ext4"
    );
    assert_eq!(
        sh("blkid", &["-o", "value", "-s", "PTTYPE", disk_dev.path()]),
        "gpt"
    );
}

/// On a filesystem that shares extents (xfs with reflink), a clone and a
/// snapshot are reflinks of their source: same bytes, every extent shared,
/// made without copying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_on_a_reflink_filesystem_share_their_extents() {
    require!(false);
    pool_csi_e2e::require_tool!("mkfs.xfs", "needs xfsprogs (dev/setup)");
    pool_csi_e2e::require_tool!("filefrag", "needs filefrag (e2fsprogs)");
    let scratch = tempfile::tempdir().unwrap();
    let dev = LoopDisk::new(scratch.path(), "xfs.img", 320, false);
    sh("mkfs.xfs", &["-q", "-m", "reflink=1", dev.path()]);
    let d = Driver::start(Options {
        extra_pools: fs_pool("rl", dev.path(), "xfs"),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let src = create(&mut c, "rl", "src", &[]).await;
    let src_file = d.dir.path().join("rl/src.raw");
    let data: Vec<u8> = (0..8 * MIB).map(|i| (i % 251) as u8).collect();
    write_sync(&src_file, 0, &data);
    let mut r = req::clone_of("copy", 16 * MIB as i64, &src);
    r.parameters.insert("pool".into(), "rl".into());
    c.controller.create_volume(r).await.expect("clone");
    c.controller
        .create_snapshot(req::snapshot("snap", &src))
        .await
        .expect("snapshot");
    let snap = d.dir.path().join("rl/.pool-csi/snapshots/snap.raw");
    for copy in [d.dir.path().join("rl/copy.raw"), snap] {
        assert_eq!(read(&copy, 0, data.len()), data);
        let frag = sh("filefrag", &["-v", &copy.display().to_string()]);
        let extents: Vec<&str> = frag
            .lines()
            .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        assert!(!extents.is_empty(), "{frag}");
        assert!(
            extents.iter().all(|l| l.contains("shared")),
            "every data extent of {} is shared with its source:\n{frag}",
            copy.display()
        );
    }
}
