//! The CSI behaviours the community sanity suite checks, run against every
//! pool type these machines can hold: dir pools with raw, qcow2 and ploop
//! volumes, an fs pool, gpt and dos disk pools, and a logical pool (LVM
//! without activation: no device-mapper here, so its snapshots, copies and
//! stages answer FAILED_PRECONDITION naming device-mapper, and undoing what
//! was never done is OK), and a netfs pool on a real GlusterFS share with
//! raw and with directory volumes. csi-sanity itself runs through
//! `dev/sanity`; this is its guard in CI.

use pool_csi_e2e::{clients::Clients, gluster, req, require, Driver, LoopDisk, Options};
use pool_csi_proto::csi;
use tonic::Code;

const MIB: i64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Raw,
    Qcow2,
    Ploop,
    Fs,
    Gpt,
    Dos,
    Logical,
    Netfs,
    NetfsDirectory,
}

/// A driver with one pool `p` of `kind`, and what it stands on.
struct Setup {
    d: Driver,
    c: Clients,
    params: Vec<(&'static str, &'static str)>,
    /// Volumes can be attached and copied (false: LVM without activation).
    device_mapper_free: bool,
    _disks: Vec<LoopDisk>,
    _vg: Option<Vg>,
    _gluster: Option<gluster::Gluster>,
    _scratch: tempfile::TempDir,
}

/// A volume group on loop devices, removed on drop.
struct Vg(String, Vec<String>);

impl Drop for Vg {
    fn drop(&mut self) {
        let pvs: Vec<&str> = self.1.iter().map(String::as_str).collect();
        pool_csi_e2e::remove_vg(&self.0, &pvs);
    }
}

fn manifest(spec: &str) -> String {
    format!("---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: p }}\nspec: {spec}\n")
}

async fn setup(kind: Kind) -> Setup {
    let scratch = tempfile::Builder::new()
        .prefix("pool-csi-conf-")
        .tempdir()
        .unwrap();
    let mut disks = Vec::new();
    let mut vg = None;
    let mut server = None;
    let dir_pool = "{ type: dir, target: { path: {dir}/p }, autoBuild: true }".to_string();
    let (pool, params): (String, Vec<(&str, &str)>) = match kind {
        Kind::Raw => (dir_pool, vec![]),
        Kind::Qcow2 => (dir_pool, vec![("volumeFormat", "qcow2")]),
        Kind::Ploop => (dir_pool, vec![("volumeFormat", "ploop")]),
        Kind::Fs => {
            let d = LoopDisk::new(scratch.path(), "fs.img", 512, false);
            let p = format!(
                "{{ type: fs, source: {{ device: {}, format: ext4 }}, target: {{ path: {{dir}}/p }}, autoBuild: true }}",
                d.path()
            );
            disks.push(d);
            (p, vec![])
        }
        Kind::Gpt | Kind::Dos => {
            let d = LoopDisk::new(scratch.path(), "disk.img", 512, true);
            let label = if kind == Kind::Gpt { "gpt" } else { "dos" };
            let p = format!(
                "{{ type: disk, source: {{ device: {}, format: {label} }}, autoBuild: true }}",
                d.path()
            );
            disks.push(d);
            (p, vec![])
        }
        Kind::Logical => {
            let (a, b) = (
                LoopDisk::new(scratch.path(), "pv0.img", 256, false),
                LoopDisk::new(scratch.path(), "pv1.img", 256, false),
            );
            let name = format!("conf{}", std::process::id());
            let off = "global{activation=0}";
            for args in [
                vec!["pvcreate", "--config", off, "-y", a.path(), b.path()],
                vec!["vgcreate", "--config", off, &name, a.path(), b.path()],
            ] {
                let out = pool_csi_e2e::tool("lvm", &args);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let p = format!(
                "{{ type: logical, source: {{ name: {name}, devices: [{}, {}] }}, lvm: {{ noActivation: true }} }}",
                a.path(),
                b.path()
            );
            vg = Some(Vg(name, vec![a.path().into(), b.path().into()]));
            disks.extend([a, b]);
            (p, vec![])
        }
        Kind::Netfs | Kind::NetfsDirectory => {
            let g = gluster::Gluster::start(scratch.path(), "conf");
            let p = format!(
                "{{ type: netfs, source: {{ host: \"{}\", dir: {}, format: glusterfs }}, target: {{ path: {{dir}}/p }} }}",
                g.host, g.volume
            );
            server = Some(g);
            let params = match kind {
                Kind::Netfs => vec![],
                _ => vec![("volumeFormat", "directory")],
            };
            (p, params)
        }
    };
    let d = Driver::start(Options {
        extra_pools: manifest(&pool),
        ..Default::default()
    })
    .await;
    let c = d.clients().await;
    Setup {
        d,
        c,
        params,
        device_mapper_free: kind != Kind::Logical,
        _disks: disks,
        _vg: vg,
        _gluster: server,
        _scratch: scratch,
    }
}

impl Setup {
    fn create(&self, name: &str, bytes: i64) -> csi::CreateVolumeRequest {
        let mut r = req::create(name, bytes, &self.params);
        r.parameters.insert("pool".into(), "p".into());
        r
    }

    async fn make(&mut self, r: csi::CreateVolumeRequest) -> Result<csi::Volume, tonic::Status> {
        self.c
            .controller
            .create_volume(r)
            .await
            .map(|r| r.into_inner().volume.unwrap())
    }

    async fn delete(&mut self, id: &str) -> Code {
        code(
            self.c
                .controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id.into(),
                    ..Default::default()
                })
                .await,
        )
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map_or_else(|s| s.code(), |_| Code::Ok)
}

async fn specs(kind: Kind) {
    require!(matches!(kind, Kind::Qcow2 | Kind::Ploop));
    let mut s = setup(kind).await;

    // CreateVolume: idempotent for the same arguments, ALREADY_EXISTS for others.
    let a = s.make(s.create("a", 64 * MIB)).await.expect("create");
    assert!(a.capacity_bytes >= 64 * MIB, "{kind:?}: {a:?}");
    let again = s.make(s.create("a", 64 * MIB)).await.expect("create again");
    assert_eq!(again.volume_id, a.volume_id);
    let bigger = s.make(s.create("a", 200 * MIB)).await.unwrap_err();
    assert_eq!(bigger.code(), Code::AlreadyExists, "{kind:?}: {bigger:?}");
    // Capacity ranges: the least the range allows, refused when none fits.
    let mut ranged = s.create("b", 10 * MIB);
    ranged.capacity_range.as_mut().unwrap().limit_bytes = 64 * MIB;
    let b = s.make(ranged).await.expect("ranged create");
    assert!(
        (10 * MIB..=64 * MIB).contains(&b.capacity_bytes),
        "{kind:?}: {b:?}"
    );
    let mut inverted = s.create("c", 64 * MIB);
    inverted.capacity_range.as_mut().unwrap().limit_bytes = 32 * MIB;
    assert_eq!(s.make(inverted).await.unwrap_err().code(), Code::OutOfRange);

    // ListVolumes walks page by page; GetCapacity answers for the pool.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page =
            s.c.controller
                .list_volumes(csi::ListVolumesRequest {
                    max_entries: 1,
                    starting_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
        seen.extend(
            page.entries
                .into_iter()
                .map(|e| e.volume.unwrap().volume_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    seen.sort();
    let mut want = vec![a.volume_id.clone(), b.volume_id.clone()];
    want.sort();
    assert_eq!(seen, want, "{kind:?}");
    let cap =
        s.c.controller
            .get_capacity(csi::GetCapacityRequest {
                parameters: [("pool".to_string(), "p".to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    assert!(cap.available_capacity > 0, "{kind:?}: {cap:?}");

    // ControllerExpandVolume: grows, and asking again is done.
    let grown =
        s.c.controller
            .controller_expand_volume(req::expand(&b.volume_id, 96 * MIB))
            .await
            .expect("expand")
            .into_inner();
    assert!(grown.capacity_bytes >= 96 * MIB, "{kind:?}: {grown:?}");
    let again =
        s.c.controller
            .controller_expand_volume(req::expand(&b.volume_id, 96 * MIB))
            .await
            .expect("expand again")
            .into_inner();
    assert_eq!(again.capacity_bytes, grown.capacity_bytes);

    // Snapshots, restores and clones (copies need device-mapper for LVs).
    let snap =
        s.c.controller
            .create_snapshot(req::snapshot("snap-a", &a.volume_id))
            .await;
    match s.device_mapper_free {
        true => {
            let snap = snap.expect("snapshot").into_inner().snapshot.unwrap();
            let again =
                s.c.controller
                    .create_snapshot(req::snapshot("snap-a", &a.volume_id))
                    .await
                    .expect("snapshot again")
                    .into_inner()
                    .snapshot
                    .unwrap();
            assert_eq!(again.snapshot_id, snap.snapshot_id);
            let other =
                s.c.controller
                    .create_snapshot(req::snapshot("snap-a", &b.volume_id))
                    .await
                    .unwrap_err();
            assert_eq!(other.code(), Code::AlreadyExists, "{kind:?}");
            let listed =
                s.c.controller
                    .list_snapshots(csi::ListSnapshotsRequest {
                        source_volume_id: a.volume_id.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
            assert_eq!(listed.entries.len(), 1, "{kind:?}: {listed:?}");
            let mut restore = req::restore_of("r", 64 * MIB, &snap.snapshot_id);
            restore.parameters = s.create("r", 0).parameters;
            let r = s.make(restore).await.expect("restore");
            let mut clone = req::clone_of("cl", 64 * MIB, &a.volume_id);
            clone.parameters = s.create("cl", 0).parameters;
            let cl = s.make(clone).await.expect("clone");
            for v in [&r.volume_id, &cl.volume_id] {
                assert_eq!(s.delete(v).await, Code::Ok);
            }
            for _ in 0..2 {
                let deleted =
                    s.c.controller
                        .delete_snapshot(csi::DeleteSnapshotRequest {
                            snapshot_id: snap.snapshot_id.clone(),
                            ..Default::default()
                        })
                        .await;
                assert_eq!(code(deleted), Code::Ok, "{kind:?}");
            }
        }
        false => {
            let e = snap.unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{kind:?}: {e:?}");
            assert!(e.message().contains("device-mapper"), "{e:?}");
            let mut clone = req::clone_of("cl", 64 * MIB, &a.volume_id);
            clone.parameters = s.create("cl", 0).parameters;
            let e = s.make(clone).await.unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{kind:?}: {e:?}");
        }
    }

    // The node side: stage, publish, stats, unpublish, unstage — each twice.
    let staging = s.d.path("staging");
    let target = s.d.path("target");
    let cap = req::mount_cap("ext4");
    let stage = req::stage(&a.volume_id, &staging, cap.clone());
    if s.device_mapper_free {
        for _ in 0..2 {
            s.c.node
                .node_stage_volume(stage.clone())
                .await
                .expect("stage");
        }
        let publish = req::publish(&a.volume_id, &staging, &target, cap.clone(), false);
        for _ in 0..2 {
            s.c.node
                .node_publish_volume(publish.clone())
                .await
                .expect("publish");
        }
        let stats =
            s.c.node
                .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                    volume_id: a.volume_id.clone(),
                    volume_path: target.display().to_string(),
                    ..Default::default()
                })
                .await
                .expect("stats")
                .into_inner();
        assert!(!stats.volume_condition.unwrap().abnormal, "{kind:?}");
        let missing =
            s.c.node
                .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                    volume_id: a.volume_id.clone(),
                    volume_path: s.d.path("nowhere").display().to_string(),
                    ..Default::default()
                })
                .await;
        assert_eq!(code(missing), Code::NotFound, "{kind:?}");
        // In use: not deleted.
        assert_eq!(
            s.delete(&a.volume_id).await,
            Code::FailedPrecondition,
            "{kind:?}"
        );
    } else {
        let e = s.c.node.node_stage_volume(stage).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{kind:?}: {e:?}");
    }
    // Undoing, also what was never done, is OK, twice.
    for _ in 0..2 {
        let unpublished =
            s.c.node
                .node_unpublish_volume(req::unpublish(&a.volume_id, &target))
                .await;
        assert_eq!(code(unpublished), Code::Ok, "{kind:?}");
        let unstaged =
            s.c.node
                .node_unstage_volume(req::unstage(&a.volume_id, &staging))
                .await;
        assert_eq!(code(unstaged), Code::Ok, "{kind:?}");
    }

    // DeleteVolume: gone, and gone again is OK.
    for v in [&a.volume_id, &b.volume_id] {
        assert_eq!(s.delete(v).await, Code::Ok, "{kind:?}");
        assert_eq!(s.delete(v).await, Code::Ok, "{kind:?}");
    }
    let left =
        s.c.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert!(left.entries.is_empty(), "{kind:?}: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_pool_raw_volumes() {
    specs(Kind::Raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_pool_qcow2_volumes() {
    specs(Kind::Qcow2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_pool_ploop_volumes() {
    specs(Kind::Ploop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_pool() {
    specs(Kind::Fs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt_disk_pool() {
    specs(Kind::Gpt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dos_disk_pool() {
    specs(Kind::Dos).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_pool_without_device_mapper() {
    specs(Kind::Logical).await;
}

/// netfs pools need a GlusterFS server (glusterfs-server, FUSE); skipped,
/// saying so, where there is none.
fn no_gluster() -> bool {
    match gluster::missing() {
        Some(why) => {
            pool_csi_e2e::skip("glusterfs", &why);
            true
        }
        None => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netfs_pool_raw_volumes() {
    require!(false);
    if no_gluster() {
        return;
    }
    specs(Kind::Netfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netfs_pool_directory_volumes() {
    require!(false);
    if no_gluster() {
        return;
    }
    specs(Kind::NetfsDirectory).await;
}
