//! A volume's whole life through the real binaries: create, stage (real loop
//! device, mkfs, mount), publish, write and read back, expand online,
//! snapshot, clone and restore with content checks, unpublish, unstage,
//! delete — for ext4, xfs, raw block, qcow2 and ploop.

use pool_csi_e2e::{req, require, Driver, Options};
use pool_csi_proto::csi;
use std::path::Path;

async fn create(
    c: &mut pool_csi_e2e::clients::Clients,
    r: csi::CreateVolumeRequest,
) -> csi::Volume {
    c.controller
        .create_volume(r)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .unwrap()
}

/// The source and filesystem type of the mount at `path`.
fn mounted_at(path: &Path) -> (String, String) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let at = path.display().to_string();
    table
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            (f[4] == at).then(|| (f[sep + 2].to_string(), f[sep + 1].to_string()))
        })
        .unwrap_or_else(|| panic!("nothing mounted at {at}"))
}

fn write_file(dir: &Path, name: &str, data: &[u8]) {
    std::fs::write(dir.join(name), data).unwrap();
    std::fs::File::open(dir.join(name))
        .unwrap()
        .sync_all()
        .unwrap();
}

async fn fs_lifecycle(fs: &str, format: &str, size: i64) {
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let cap = req::mount_cap(fs);
    let vol = create(
        &mut c,
        req::create("data", size, &[("volumeFormat", format)]),
    )
    .await;
    assert_eq!(vol.capacity_bytes, size);
    assert_eq!(
        vol.accessible_topology[0].segments["pool-csi.io/node"],
        "node-1"
    );
    let id = vol.volume_id.clone();

    let (staging, target) = (d.path("staging"), d.path("pod/mount"));
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await
        .expect("stage");
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await
        .expect("stage is idempotent");
    c.node
        .node_publish_volume(req::publish(&id, &staging, &target, cap.clone(), false))
        .await
        .expect("publish");
    c.node
        .node_publish_volume(req::publish(&id, &staging, &target, cap.clone(), false))
        .await
        .expect("publish is idempotent");
    write_file(&target, "hello.txt", b"written through the volume");
    assert_eq!(
        std::fs::read(target.join("hello.txt")).unwrap(),
        b"written through the volume"
    );
    let (source, fstype) = mounted_at(&staging);
    assert_eq!(fstype, fs, "the staging mount is the requested filesystem");
    if format == "raw" {
        // A raw file is attached through a loop device with direct I/O, so
        // the page cache does not hold every block twice.
        let dev = source.trim_start_matches("/dev/");
        let dio = std::fs::read_to_string(format!("/sys/block/{dev}/loop/dio")).unwrap();
        assert_eq!(dio.trim(), "1", "{source} without direct I/O");
        let backing =
            std::fs::read_to_string(format!("/sys/block/{dev}/loop/backing_file")).unwrap();
        assert_eq!(Path::new(backing.trim()), d.pool_dir.join("data.raw"));
    }

    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.usage.len(), 2, "bytes and inodes");
    assert!(
        stats.usage[0].total > size / 2 && stats.usage[0].total <= size,
        "{:?}",
        stats.usage[0]
    );
    assert!(!stats.volume_condition.unwrap().abnormal);

    // Online expansion: the controller grows the image, the node the filesystem.
    let grown = 2 * size;
    let e = c
        .controller
        .controller_expand_volume(req::expand(&id, grown))
        .await
        .expect("expand")
        .into_inner();
    assert_eq!(e.capacity_bytes, grown);
    assert!(e.node_expansion_required);
    let ne = c
        .node
        .node_expand_volume(req::node_expand(&id, &target, grown))
        .await;
    if fs.starts_with("ext") && !pool_csi_e2e::can_resize_ext4_online() {
        // The image and the loop device grew; only the ext resize ioctl is denied here.
        let e = ne.unwrap_err();
        assert!(e.message().contains("resize2fs"), "{e:?}");
        pool_csi_e2e::skip(
            "cap-sys-resource",
            "online ext4 growth needs CAP_SYS_RESOURCE, which this machine drops (the error is checked)",
        );
    } else {
        assert_eq!(ne.expect("node expand").into_inner().capacity_bytes, grown);
        let after = rustix::fs::statvfs(&target).unwrap();
        assert!(
            after.f_blocks * after.f_frsize > (size as u64) * 3 / 2,
            "filesystem did not grow: {}",
            after.f_blocks * after.f_frsize
        );
    }
    assert_eq!(
        std::fs::read(target.join("hello.txt")).unwrap(),
        b"written through the volume"
    );

    // Snapshot, then change the volume: the snapshot keeps the old content.
    let snap = c
        .controller
        .create_snapshot(req::snapshot("snap-1", &id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.source_volume_id, id);
    assert!(snap.ready_to_use);
    write_file(&target, "hello.txt", b"changed after the snapshot");

    let clone = create(&mut c, req::clone_of("clone", grown, &id)).await;
    let restored = create(
        &mut c,
        req::restore_of("restored", grown, &snap.snapshot_id),
    )
    .await;
    for (v, want) in [
        (&clone, &b"changed after the snapshot"[..]),
        (&restored, &b"written through the volume"[..]),
    ] {
        let st = d.path(&format!(
            "staging-{}",
            v.volume_id.rsplit(':').next().unwrap()
        ));
        c.node
            .node_stage_volume(req::stage(&v.volume_id, &st, cap.clone()))
            .await
            .expect("stage copy");
        assert_eq!(
            std::fs::read(st.join("hello.txt")).unwrap(),
            want,
            "content of {}",
            v.volume_id
        );
        c.node
            .node_unstage_volume(req::unstage(&v.volume_id, &st))
            .await
            .expect("unstage copy");
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.volume_id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete copy");
    }

    // Deleting a staged volume is refused: the data is in use.
    let busy = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition, "{busy:?}");
    // Unstaging while still published is refused too.
    let busy = c
        .node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition, "{busy:?}");

    c.node
        .node_unpublish_volume(req::unpublish(&id, &target))
        .await
        .expect("unpublish");
    c.node
        .node_unpublish_volume(req::unpublish(&id, &target))
        .await
        .expect("unpublish is idempotent");
    assert!(!target.exists(), "target path removed");
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage is idempotent");
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete snapshot");
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .expect("delete is idempotent");
    let left: Vec<_> = std::fs::read_dir(&d.pool_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".pool-csi")
        .collect();
    assert!(left.is_empty(), "pool not empty after delete: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_raw_volume_lives_and_dies() {
    require!(false);
    fs_lifecycle("ext4", "raw", 64 * req::MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext3_raw_volume_lives_and_dies() {
    require!(false);
    fs_lifecycle("ext3", "raw", 64 * req::MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_raw_volume_lives_and_dies() {
    require!(false);
    pool_csi_e2e::require_tool!("mkfs.xfs", "needs mkfs.xfs (xfsprogs; run dev/setup)");
    fs_lifecycle("xfs", "raw", 320 * req::MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_qcow2_volume_lives_and_dies_through_qemu_storage_daemon() {
    require!(true);
    fs_lifecycle("ext4", "qcow2", 64 * req::MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext4_ploop_volume_lives_and_dies_through_qemu_storage_daemon() {
    require!(true);
    fs_lifecycle("ext4", "ploop", 64 * req::MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_ploop_volume_grows_online_through_a_pushed_delta() {
    require!(true);
    pool_csi_e2e::require_tool!("mkfs.xfs", "needs mkfs.xfs (xfsprogs; run dev/setup)");
    fs_lifecycle("xfs", "ploop", 320 * req::MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_is_the_raw_device() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let mut r = req::create("blk", 32 * req::MIB, &[]);
    r.volume_capabilities = vec![req::block_cap()];
    let id = create(&mut c, r).await.volume_id;
    let (staging, target) = (d.path("staging"), d.path("pod/dev"));
    c.node
        .node_stage_volume(req::stage(&id, &staging, req::block_cap()))
        .await
        .expect("stage block");
    c.node
        .node_publish_volume(req::publish(
            &id,
            &staging,
            &target,
            req::block_cap(),
            false,
        ))
        .await
        .expect("publish block");
    {
        use std::os::unix::fs::FileExt;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target)
            .unwrap();
        dev.write_all_at(b"raw bytes", 4096).unwrap();
        dev.sync_all().unwrap();
    }
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.usage[0].total, 32 * req::MIB);
    c.node
        .node_unpublish_volume(req::unpublish(&id, &target))
        .await
        .expect("unpublish");
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
    // The bytes went to the volume file itself.
    let file = std::fs::read(d.pool_dir.join("blk.raw")).unwrap();
    assert_eq!(&file[4096..4105], b"raw bytes");
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_publish_refuses_writes() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(&mut c, req::create("ro", 32 * req::MIB, &[]))
        .await
        .volume_id;
    let cap = req::mount_cap("ext4");
    let (staging, rw, ro) = (d.path("staging"), d.path("rw"), d.path("ro"));
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await
        .expect("stage");
    c.node
        .node_publish_volume(req::publish(&id, &staging, &rw, cap.clone(), false))
        .await
        .expect("publish rw");
    c.node
        .node_publish_volume(req::publish(&id, &staging, &ro, cap.clone(), true))
        .await
        .expect("publish ro");
    write_file(&rw, "a", b"x");
    let err = std::fs::write(ro.join("b"), b"y").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS expected, got {err}");
    // The same target with another read-only mode is a conflict.
    let e = c
        .node
        .node_publish_volume(req::publish(&id, &staging, &ro, cap.clone(), false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    for t in [&rw, &ro] {
        c.node
            .node_unpublish_volume(req::unpublish(&id, t))
            .await
            .expect("unpublish");
    }
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_clone_of_a_mounted_volume_see_unsynced_writes() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let cap = req::mount_cap("ext4");
    let id = create(&mut c, req::create("live", 64 * req::MIB, &[]))
        .await
        .volume_id;
    let staging = d.path("staging");
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await
        .expect("stage");
    // No fsync: the data sits in the page cache until the filesystem is frozen.
    std::fs::write(staging.join("dirty.txt"), b"not yet on disk").unwrap();
    let snap = c
        .controller
        .create_snapshot(req::snapshot("live-snap", &id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    std::fs::write(staging.join("dirty2.txt"), b"also not on disk").unwrap();
    let clone = create(&mut c, req::clone_of("live-clone", 64 * req::MIB, &id)).await;
    // The volume stays writable: the freeze ended with the copy.
    std::fs::write(staging.join("after.txt"), b"thawed").unwrap();
    let restored = create(
        &mut c,
        req::restore_of("live-restored", 64 * req::MIB, &snap.snapshot_id),
    )
    .await;
    for (v, file, want) in [
        (&restored, "dirty.txt", &b"not yet on disk"[..]),
        (&clone, "dirty2.txt", &b"also not on disk"[..]),
    ] {
        let st = d.path(&format!("st-{}", v.volume_id.rsplit(':').next().unwrap()));
        c.node
            .node_stage_volume(req::stage(&v.volume_id, &st, cap.clone()))
            .await
            .expect("stage copy");
        assert_eq!(
            std::fs::read(st.join(file)).unwrap(),
            want,
            "{}",
            v.volume_id
        );
        c.node
            .node_unstage_volume(req::unstage(&v.volume_id, &st))
            .await
            .expect("unstage copy");
    }
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
}

/// SINGLE_NODE_SINGLE_WRITER: one read/write publication at a time, in
/// either order; read-only ones may join; after an unpublish another may
/// write. (SINGLE_NODE_WRITER publications share.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_volumes_are_published_read_write_once() {
    use csi::volume_capability::{access_mode::Mode, AccessMode};
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(&mut c, req::create("one", 32 * req::MIB, &[]))
        .await
        .volume_id;
    let shared = req::mount_cap("ext4");
    let mut single = shared.clone();
    single.access_mode = Some(AccessMode {
        mode: Mode::SingleNodeSingleWriter as i32,
    });
    let staging = d.path("staging");
    let [a, b, r, s] = ["a", "b", "r", "s"].map(|t| d.path(t));
    c.node
        .node_stage_volume(req::stage(&id, &staging, single.clone()))
        .await
        .expect("stage");
    let node = c.node.clone();
    let publish = |t: &Path, cap: &csi::VolumeCapability, ro: bool| {
        let mut node = node.clone();
        let r = req::publish(&id, &staging, t, cap.clone(), ro);
        async move { node.node_publish_volume(r).await }
    };
    publish(&a, &single, false).await.expect("the first writer");
    publish(&a, &single, false).await.expect("idempotent");
    let e = publish(&b, &single, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("published read/write at"),
        "{}",
        e.message()
    );
    let e = publish(&s, &shared, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("SINGLE_NODE_SINGLE_WRITER at"),
        "{}",
        e.message()
    );
    publish(&r, &single, true).await.expect("a reader may join");
    c.node
        .node_unpublish_volume(req::unpublish(&id, &a))
        .await
        .expect("unpublish the writer");
    publish(&b, &single, false).await.expect("the next writer");
    for t in [&b, &r] {
        c.node
            .node_unpublish_volume(req::unpublish(&id, t))
            .await
            .expect("unpublish");
    }
    // Without the single writer, SINGLE_NODE_WRITER publications share.
    publish(&a, &shared, false).await.expect("shared writer");
    publish(&s, &shared, false)
        .await
        .expect("another shared writer");
    let e = publish(&b, &single, false).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    for t in [&a, &s] {
        c.node
            .node_unpublish_volume(req::unpublish(&id, t))
            .await
            .expect("unpublish");
    }
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
}
