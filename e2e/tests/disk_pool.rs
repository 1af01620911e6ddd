//! disk pools on real partition tables: loop devices with partition scanning,
//! the real sfdisk and partx, real mkfs and mounts on the partitions.

use pool_csi_e2e::{req, require, sh, Driver, LoopDisk, Options};
use pool_csi_proto::csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

fn disk_pool(name: &str, disk: &LoopDisk, format: &str) -> String {
    pool_csi_e2e::manifests::disk_pool(name, disk.path(), format)
}

fn on(pool: &str, name: &str, bytes: i64, params: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    let mut r = req::create(name, bytes, params);
    r.parameters.insert("pool".into(), pool.into());
    r.volume_capabilities = vec![req::mount_cap("ext4")];
    r
}

async fn create(
    c: &mut pool_csi_e2e::clients::Clients,
    r: csi::CreateVolumeRequest,
) -> Result<csi::Volume, tonic::Status> {
    c.controller
        .create_volume(r)
        .await
        .map(|r| r.into_inner().volume.unwrap())
}

fn partitions(disk: &LoopDisk) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&sh("sfdisk", &["--json", disk.path()])).unwrap()
        ["partitiontable"]["partitions"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt_disk_pool_allocates_expands_and_frees_partitions() {
    require!(false);
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-disk-")
        .tempdir()
        .unwrap();
    let disk = LoopDisk::new(scratch.path(), "disk.img", 64, true);
    let mut d = Driver::start(Options {
        extra_pools: disk_pool("disk1", &disk, "gpt"),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;

    // No table yet: the pool waits to be built and says so.
    let e = create(&mut c, on("disk1", "v", 8 * MIB, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let (_, out) = d.poolctl(&["pool-list"]);
    assert!(
        out.lines().any(|l| l.contains("disk1")
            && l.contains("inactive")
            && l.contains("no partition table")),
        "{out}"
    );
    let (ok, out) = d.poolctl(&["pool-build", "disk1"]);
    assert!(ok && out.contains("running"), "{out}");

    // 62 MiB usable (GPT headers, 1 MiB alignment): seven 8 MiB volumes fit, the eighth does not.
    let mut ids = Vec::new();
    for i in 1..=7 {
        ids.push(
            create(&mut c, on("disk1", &format!("vol-{i}"), 8 * MIB, &[]))
                .await
                .expect("create")
                .volume_id,
        );
    }
    let full = create(&mut c, on("disk1", "vol-8", 8 * MIB, &[]))
        .await
        .unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert_eq!(partitions(&disk).as_array().unwrap().len(), 7);
    let (_, info) = d.poolctl(&["pool-info", "disk1"]);
    assert!(
        info.contains("Free extents") && info.contains("6.00 MiB"),
        "{info}"
    );

    // Free two extents in the middle: 22 MiB free in three extents, none of 10 MiB.
    for id in [&ids[1], &ids[3]] {
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete");
    }
    let split = create(&mut c, on("disk1", "too-big", 10 * MIB, &[]))
        .await
        .unwrap_err();
    assert_eq!(split.code(), Code::ResourceExhausted);
    assert!(
        split.message().contains("no single free extent"),
        "{}",
        split.message()
    );
    // Best fit: an 8 MiB volume takes one of the 8 MiB holes, never the 6 MiB tail.
    let fits = create(&mut c, on("disk1", "fits", 6 * MIB, &[]))
        .await
        .expect("6 MiB fits the tail");
    assert!(fits.volume_id.ends_with(":fits"));
    let parts = partitions(&disk);
    let fits_start = parts
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "fits")
        .unwrap()["start"]
        .as_u64()
        .unwrap();
    assert!(
        fits_start > 100_000,
        "6 MiB went into the 6 MiB tail extent (start {fits_start})"
    );

    // Expansion only into space directly after the partition.
    let grown = c
        .controller
        .controller_expand_volume(req::expand(&ids[0], 16 * MIB))
        .await
        .expect("vol-1 grows into the hole of vol-2")
        .into_inner();
    assert_eq!(grown.capacity_bytes, 16 * MIB);
    let blocked = c
        .controller
        .controller_expand_volume(req::expand(&ids[4], 12 * MIB))
        .await
        .unwrap_err();
    assert_eq!(blocked.code(), Code::OutOfRange, "{blocked:?}");
    assert!(
        blocked.message().contains("can grow to at most"),
        "{}",
        blocked.message()
    );

    // Idempotent re-create, and a long CSI name shortened to fit GPT.
    let again = create(&mut c, on("disk1", "vol-1", 8 * MIB, &[]))
        .await
        .expect("vol-1 is 16 MiB now, still >= 8");
    assert_eq!(again.volume_id, ids[0]);
    let taken = create(
        &mut c,
        on(
            "disk1",
            "fits",
            7 * MIB,
            &[("csi.storage.k8s.io/fstype", "ext4")],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let long = create(
        &mut c,
        on(
            "disk1",
            "pvc-0d7c5b8e-4d7e-4bfe-9d45-3c1a9d1e2f3a",
            8 * MIB,
            &[],
        ),
    )
    .await
    .expect("long name");
    let short = long.volume_id.rsplit(':').next().unwrap().to_string();
    assert_eq!(short.len(), 36);
    let listed = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .entries
        .iter()
        .any(|e| e.volume.as_ref().unwrap().volume_id == long.volume_id));
    let retried = create(
        &mut c,
        on(
            "disk1",
            "pvc-0d7c5b8e-4d7e-4bfe-9d45-3c1a9d1e2f3a",
            8 * MIB,
            &[],
        ),
    )
    .await
    .unwrap();
    assert_eq!(retried.volume_id, long.volume_id);

    // A partition is a real block device: stage it with a filesystem, use it.
    let staging = d.path("staging");
    c.node
        .node_stage_volume(req::stage(&ids[0], &staging, req::mount_cap("ext4")))
        .await
        .expect("stage partition");
    std::fs::write(staging.join("f"), b"on a partition").unwrap();
    let busy = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        busy.code(),
        Code::FailedPrecondition,
        "a mounted partition is never deleted"
    );

    // The agent dies and comes back: the table is the only state it needs.
    d.kill_node();
    d.start_node();
    d.wait_ready().await;
    let mut c = d.clients().await;
    let after = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.entries.len(), listed.entries.len());
    c.node
        .node_stage_volume(req::stage(&ids[0], &staging, req::mount_cap("ext4")))
        .await
        .expect("stage is idempotent after restart");
    assert_eq!(std::fs::read(staging.join("f")).unwrap(), b"on a partition");
    c.node
        .node_unstage_volume(req::unstage(&ids[0], &staging))
        .await
        .expect("unstage");

    // Bad input: an unknown partition type, a clone request.
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: fits.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let bad = create(
        &mut c,
        on("disk1", "typed", MIB, &[("partitionType", "zfs")]),
    )
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("zfs") && bad.message().contains("linux-lvm"),
        "{}",
        bad.message()
    );
    let lvm = create(
        &mut c,
        on("disk1", "typed", MIB, &[("partitionType", "linux-lvm")]),
    )
    .await
    .expect("lvm type");
    let parts = partitions(&disk);
    let t = parts
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "typed")
        .unwrap()["type"]
        .clone();
    assert_eq!(t, "E6D6D379-F507-44C2-A23C-238F2A3DF928");
    // A clone into another pool (the default class's) is refused: volumes
    // are copied within one pool.
    let clone = create(&mut c, req::clone_of("copy", 8 * MIB, &lvm.volume_id)).await;
    let e = clone.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("copied within one pool"), "{e:?}");
    drop(c);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_partitions_never_show_old_data_and_full_disks_are_refused() {
    require!(false);
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-disk-")
        .tempdir()
        .unwrap();
    let dos = LoopDisk::new(scratch.path(), "dos.img", 64, true);
    let holds_fs = LoopDisk::new(scratch.path(), "fs.img", 16, true);
    sh("mkfs.ext4", &["-q", "-L", "keepme", holds_fs.path()]);
    let pools = format!(
        "{}{}",
        disk_pool("dos1", &dos, "dos"),
        disk_pool("taken", &holds_fs, "gpt")
    );
    let d = Driver::start(Options {
        extra_pools: pools,
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;

    // A disk with a filesystem and no table is never partitioned.
    let (ok, out) = d.poolctl(&["pool-build", "taken"]);
    assert!(!ok && out.contains("ext4"), "{out}");
    assert_eq!(
        sh("blkid", &["-o", "value", "-s", "LABEL", holds_fs.path()]),
        "keepme"
    );

    assert!(d.poolctl(&["pool-build", "dos1"]).0);
    let first = create(&mut c, on("dos1", "one", 8 * MIB, &[]))
        .await
        .expect("dos primary");
    // Put a filesystem on it, delete it, make a new volume at the same place.
    let staging = d.path("st");
    c.node
        .node_stage_volume(req::stage(
            &first.volume_id,
            &staging,
            req::mount_cap("ext4"),
        ))
        .await
        .unwrap();
    c.node
        .node_unstage_volume(req::unstage(&first.volume_id, &staging))
        .await
        .unwrap();
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: first.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let second = create(&mut c, on("dos1", "two", 8 * MIB, &[]))
        .await
        .unwrap();
    let node = partitions(&dos)
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] != "5")
        .expect("a volume's partition")["node"]
        .as_str()
        .unwrap()
        .to_string();
    // blkid shows the partition entry itself, but no content TYPE: blank.
    let probe = String::from_utf8_lossy(
        &pool_csi_e2e::tool("blkid", &["-p", "-o", "export", &node]).stdout,
    )
    .into_owned();
    assert!(
        !probe.lines().any(|l| l.starts_with("TYPE=")),
        "the new partition shows old data: {probe}"
    );
    // dos names live in the node's record: the volume keeps its name.
    let listed = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .entries
        .iter()
        .any(|e| e.volume.as_ref().unwrap().volume_id == second.volume_id));
    // pool-build made one extended partition: volumes are logical
    // partitions in it, more than the four a dos table has primaries for.
    for n in ["three", "four", "five", "six", "seven"] {
        create(&mut c, on("dos1", n, 4 * MIB, &[]))
            .await
            .unwrap_or_else(|e| panic!("{n}: {e:?}"));
    }
    let parts = partitions(&dos);
    let parts = parts.as_array().unwrap();
    let types: Vec<&str> = parts.iter().map(|p| p["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "5").count(), 1, "{types:?}");
    assert_eq!(parts.len(), 7, "the extended one and 6 logical: {types:?}");
    // Until no extent holds a volume: refused, clearly.
    let too_big = create(&mut c, on("dos1", "big", 60 * MIB, &[]))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), Code::ResourceExhausted);
    assert!(too_big.message().contains("free"), "{}", too_big.message());
    // A size of zero means "the default" (1 GiB), which no extent here holds.
    let mut zero = on("dos1", "zero", 0, &[]);
    zero.capacity_range = None;
    assert_eq!(
        create(&mut c, zero).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_one_disk_never_overlap() {
    require!(false);
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-disk-")
        .tempdir()
        .unwrap();
    let disk = LoopDisk::new(scratch.path(), "disk.img", 128, true);
    let pool =
        disk_pool("par", &disk, "gpt").replace("format: gpt }", "format: gpt }\n  autoBuild: true");
    let d = Driver::start(Options {
        extra_pools: pool,
        ..Default::default()
    })
    .await;
    let c = d.clients().await;
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                create(&mut c, on("par", &format!("p-{i}"), 8 * MIB, &[]))
                    .await
                    .map(|v| v.volume_id)
            })
        })
        .collect();
    let mut made = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => made += 1,
            Err(e) => panic!("a parallel create failed: {e:?}"),
        }
    }
    assert_eq!(made, 12);
    let parts = partitions(&disk);
    let mut spans: Vec<(u64, u64)> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (s, n) = (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap());
            (s, s + n)
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 12);
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "partitions overlap: {spans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_xfs_partition_grows_online() {
    require!(false);
    pool_csi_e2e::require_tool!("mkfs.xfs", "needs mkfs.xfs (xfsprogs; run dev/setup)");
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-disk-")
        .tempdir()
        .unwrap();
    let disk = LoopDisk::new(scratch.path(), "disk.img", 1024, true);
    let pool =
        disk_pool("big", &disk, "gpt").replace("format: gpt }", "format: gpt }\n  autoBuild: true");
    let d = Driver::start(Options {
        extra_pools: pool,
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let mut r = on("big", "xfs-vol", 320 * MIB, &[]);
    r.volume_capabilities = vec![req::mount_cap("xfs")];
    let id = create(&mut c, r).await.unwrap().volume_id;
    let staging = d.path("staging");
    c.node
        .node_stage_volume(req::stage(&id, &staging, req::mount_cap("xfs")))
        .await
        .expect("stage xfs");
    std::fs::write(staging.join("keep"), b"data").unwrap();
    c.controller
        .controller_expand_volume(req::expand(&id, 512 * MIB))
        .await
        .expect("grow the partition");
    let grown = c
        .node
        .node_expand_volume(req::node_expand(&id, &staging, 512 * MIB))
        .await
        .expect("grow xfs")
        .into_inner();
    assert_eq!(grown.capacity_bytes, 512 * MIB);
    let fs = rustix::fs::statvfs(&staging).unwrap();
    assert!(
        fs.f_blocks * fs.f_frsize > 400 << 20,
        "xfs did not grow past its 320 MiB start: {}",
        fs.f_blocks * fs.f_frsize
    );
    assert_eq!(std::fs::read(staging.join("keep")).unwrap(), b"data");
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
}

/// Snapshots, clones and restores on gpt and dos tables: each a partition
/// holding a block copy, the source frozen while it is mounted, listed and
/// counted, and a copy a crash left half-made cleaned up on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_snapshot_clone_and_restore_by_block_copy() {
    require!(false);
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-disk-")
        .tempdir()
        .unwrap();
    let gpt = LoopDisk::new(scratch.path(), "gpt.img", 256, true);
    let dos = LoopDisk::new(scratch.path(), "dos.img", 256, true);
    let build = |p: String, f: &str| {
        p.replace(
            &format!("format: {f} }}"),
            &format!("format: {f} }}\n  autoBuild: true"),
        )
    };
    let d = Driver::start(Options {
        extra_pools: format!(
            "{}{}",
            build(disk_pool("g", &gpt, "gpt"), "gpt"),
            build(disk_pool("m", &dos, "dos"), "dos")
        ),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    for (pool, disk) in [("g", &gpt), ("m", &dos)] {
        let id = create(&mut c, on(pool, &format!("{pool}-src"), 32 * MIB, &[]))
            .await
            .unwrap()
            .volume_id;
        let staging = d.path(&format!("{pool}-src"));
        c.node
            .node_stage_volume(req::stage(&id, &staging, req::mount_cap("ext4")))
            .await
            .unwrap();
        std::fs::write(staging.join("file"), b"before the snapshot").unwrap();
        // Mounted: the snapshot freezes the filesystem, so the unsynced write is in it.
        let snap = c
            .controller
            .create_snapshot(req::snapshot(&format!("{pool}-snap"), &id))
            .await
            .expect("snapshot of a mounted partition")
            .into_inner()
            .snapshot
            .unwrap();
        assert!(snap.ready_to_use);
        assert_eq!(snap.size_bytes, 32 * MIB);
        std::fs::write(staging.join("file"), b"after the snapshot").unwrap();
        let clone = create(&mut c, {
            let mut r = req::clone_of(&format!("{pool}-clone"), 64 * MIB, &id);
            r.parameters.insert("pool".into(), pool.into());
            r
        })
        .await
        .expect("clone of a mounted partition");
        assert_eq!(clone.capacity_bytes, 64 * MIB, "a clone may be larger");
        let restored = create(&mut c, {
            let mut r = req::restore_of(&format!("{pool}-restored"), 32 * MIB, &snap.snapshot_id);
            r.parameters.insert("pool".into(), pool.into());
            r
        })
        .await
        .expect("restore");
        // Idempotent: the same copy asked again is the same volume.
        let again = create(&mut c, {
            let mut r = req::restore_of(&format!("{pool}-restored"), 32 * MIB, &snap.snapshot_id);
            r.parameters.insert("pool".into(), pool.into());
            r
        })
        .await
        .unwrap();
        assert_eq!(again.volume_id, restored.volume_id);
        for (v, want) in [
            (&restored.volume_id, "before the snapshot"),
            (&clone.volume_id, "after the snapshot"),
        ] {
            let st = d.path(&format!("st-{}", v.rsplit(':').next().unwrap()));
            c.node
                .node_stage_volume(req::stage(v, &st, req::mount_cap("ext4")))
                .await
                .unwrap_or_else(|e| panic!("stage {v}: {e:?}"));
            assert_eq!(
                std::fs::read_to_string(st.join("file")).unwrap(),
                want,
                "{v}"
            );
            c.node
                .node_unstage_volume(req::unstage(v, &st))
                .await
                .unwrap();
        }
        // Listed as a snapshot of its volume, never as a volume.
        let snaps = c
            .controller
            .list_snapshots(csi::ListSnapshotsRequest {
                source_volume_id: id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(snaps.entries.len(), 1, "{snaps:?}");
        let vols = c
            .controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(!vols.entries.iter().any(|e| e
            .volume
            .as_ref()
            .unwrap()
            .volume_id
            .contains("snap")));
        c.node
            .node_unstage_volume(req::unstage(&id, &staging))
            .await
            .unwrap();
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let count = partitions(disk).as_array().unwrap().len();
        // A snapshot's partition goes with it; deleting it again is fine.
        c.controller
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(partitions(disk).as_array().unwrap().len(), count);
    }
    // A clone a crash interrupted: a pending partition named t.<name>. A
    // retry removes it and makes the volume; so does deleting the name.
    let half = |name: &str| {
        let out = pool_csi_e2e::tool_with_input(
            "sfdisk",
            &[
                "--quiet",
                "--no-reread",
                "--no-tell-kernel",
                "--append",
                gpt.path(),
            ],
            format!("size=8MiB, name=\"t.{name}\"\n").as_bytes(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let named = |name: &str| {
        partitions(&gpt)
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == name)
            .count()
    };
    half("g-again");
    half("g-ghost");
    assert_eq!(named("t.g-again"), 1);
    let src = create(&mut c, on("g", "g-src", 32 * MIB, &[]))
        .await
        .unwrap();
    create(&mut c, {
        let mut r = req::clone_of("g-again", 32 * MIB, &src.volume_id);
        r.parameters.insert("pool".into(), "g".into());
        r
    })
    .await
    .expect("clone over a half-made one");
    assert_eq!((named("t.g-again"), named("g-again")), (0, 1));
    let ghost = "v1:g:node-1:g-ghost".to_string();
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: ghost,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        named("t.g-ghost"),
        0,
        "deleting the name removes the half-made copy"
    );
}
