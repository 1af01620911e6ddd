//! netfs pools on a real GlusterFS share (glusterd in a network namespace,
//! mounted over FUSE by two real node plugins): ReadWriteMany directory
//! volumes written on one node and read on the other, single-node image
//! volumes claimed by one node at a time, creates from both nodes at once
//! never making a name twice, onDelete=archive, and the share going away
//! and coming back. NFS and CIFS mounts (no kernel client here) run on
//! recorded argv in `node/tests/netfs_fake.rs`.

use pool_csi_e2e::{clients::uds_channel, gluster, req, require, Driver, Options};
use pool_csi_proto::{
    agent::{self as pb, agent_client::AgentClient},
    csi::{self, node_client::NodeClient, volume_capability::access_mode::Mode},
};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tonic::{transport::Channel, Code};

const MIB: i64 = 1 << 20;

fn pools(host: &str, volume: &str) -> String {
    let pool = |name: &str, source: &str| {
        format!(
            "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: {name} }}\nspec:\n  type: netfs\n  target: {{ path: \"{{dir}}/{name}\" }}\n  source: {source}\n"
        )
    };
    [
        pool(
            "share",
            &format!("{{ host: \"{host}\", dir: {volume}, format: glusterfs }}"),
        ),
        // auto: nfs first (this kernel has no NFS client), then glusterfs.
        pool(
            "share-auto",
            &format!("{{ host: \"{host}\", dir: {volume} }}"),
        ),
        pool(
            "share-missing",
            &format!("{{ host: \"{host}\", dir: /nope, format: glusterfs }}"),
        ),
    ]
    .concat()
}

fn poolctl(agent: &str, args: &[&str]) -> String {
    #[allow(clippy::disallowed_methods)] // the binary under test
    let out = std::process::Command::new(pool_csi_e2e::bin_dir().join("poolctl"))
        .arg(format!("--agent={agent}"))
        .args(args)
        .output()
        .expect("run poolctl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The pool-list line of `pool`.
fn pool_line(agent: &str, pool: &str) -> String {
    poolctl(agent, &["pool-list"])
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(pool))
        .unwrap_or_default()
        .to_string()
}

/// Waits (up to `limit`) until `pool`'s line on `agent` contains `want`.
async fn wait_pool(agent: &str, pool: &str, want: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let line = pool_line(agent, pool);
        if line.contains(want) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "{pool} never became {want}: {line}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn on_share(name: &str, mode: Mode, params: &[(&str, &str)]) -> csi::CreateVolumeRequest {
    let mut r = req::create(name, 64 * MIB, params);
    r.parameters.insert("pool".into(), "share".into());
    r.volume_capabilities = vec![req::cap_with_mode(mode)];
    r
}

async fn stage_and_publish(
    node: &mut NodeClient<Channel>,
    id: &str,
    base: &Path,
    tag: &str,
    mode: Mode,
) -> PathBuf {
    let (staging, target) = (
        base.join(format!("stage-{tag}")),
        base.join(format!("pub-{tag}")),
    );
    node.node_stage_volume(req::stage(id, &staging, req::cap_with_mode(mode)))
        .await
        .unwrap_or_else(|e| panic!("stage {id} on {tag}: {e}"));
    node.node_publish_volume(req::publish(
        id,
        &staging,
        &target,
        req::cap_with_mode(mode),
        false,
    ))
    .await
    .unwrap_or_else(|e| panic!("publish {id} on {tag}: {e}"));
    target
}

async fn unpublish_and_unstage(node: &mut NodeClient<Channel>, id: &str, base: &Path, tag: &str) {
    let (staging, target) = (
        base.join(format!("stage-{tag}")),
        base.join(format!("pub-{tag}")),
    );
    node.node_unpublish_volume(req::unpublish(id, &target))
        .await
        .unwrap();
    node.node_unstage_volume(req::unstage(id, &staging))
        .await
        .unwrap();
}

fn controller_publish(id: &str, node: &str, mode: Mode) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(req::cap_with_mode(mode)),
        ..Default::default()
    }
}

fn controller_unpublish(id: &str, node: &str) -> csi::ControllerUnpublishVolumeRequest {
    csi::ControllerUnpublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glusterfs_share_serves_every_node_of_its_pool() {
    require!(false);
    if let Some(why) = gluster::missing() {
        pool_csi_e2e::skip("glusterfs", &why);
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let g = gluster::Gluster::start(scratch.path(), "gv0");
    let d = Driver::start(Options {
        extra_nodes: vec![("node-2".into(), 64 << 20)],
        extra_pools: pools(&g.host, &g.volume),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let mut node2 = NodeClient::new(uds_channel(&d.extra[0].node_sock).await.unwrap());
    let agent1 = format!("node-1={}", d.agent_addr);
    let agent2 = format!("node-2={}", d.extra[0].agent_addr);
    let base = d.dir.path();
    let agent = |addr: String| async move {
        AgentClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    };
    let (a1, a2) = (
        agent(d.agent_addr.clone()).await,
        agent(d.extra[0].agent_addr.clone()).await,
    );

    // Both nodes mount the share; auto found it after nfs failed; a share
    // that cannot be mounted leaves its pool down, saying why.
    for agent in [&agent1, &agent2] {
        wait_pool(agent, "share", "running", Duration::from_secs(20)).await;
        wait_pool(agent, "share-auto", "running", Duration::from_secs(20)).await;
    }
    let line = wait_pool(
        &agent1,
        "share-missing",
        "inactive",
        Duration::from_secs(20),
    )
    .await;
    let info = poolctl(&agent1, &["pool-info", "share-missing"]);
    assert!(info.contains("could not be mounted"), "{line}\n{info}");
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let share_mounts = table
        .lines()
        .filter(|l| l.contains("fuse.glusterfs") && l.contains(base.to_str().unwrap()))
        .count();
    assert_eq!(
        share_mounts, 4,
        "share and share-auto on each node:\n{table}"
    );

    // The pool's space is counted once, not once per node.
    let capacity = |segment: Option<&str>| {
        let mut c = c.clone();
        let segment = segment.map(|n| csi::Topology {
            segments: [("pool-csi.io/node".to_string(), n.to_string())].into(),
        });
        async move {
            c.controller
                .get_capacity(csi::GetCapacityRequest {
                    parameters: [("pool".to_string(), "share".to_string())].into(),
                    accessible_topology: segment,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .available_capacity
        }
    };
    let (all, one) = (capacity(None).await, capacity(Some("node-2")).await);
    assert!(one > 0 && all < one + one / 2, "all {all}, one node {one}");

    // MULTI_NODE needs a directory volume of a shared pool.
    let e = c
        .controller
        .create_volume(on_share("raw-rwx", Mode::MultiNodeMultiWriter, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut local = on_share(
        "local-rwx",
        Mode::MultiNodeMultiWriter,
        &[("volumeFormat", "directory")],
    );
    local.parameters.insert("pool".into(), "scratch".into());
    let e = c.controller.create_volume(local).await.unwrap_err();
    assert!(e.message().contains("netfs"), "{e:?}");

    // A ReadWriteMany directory volume: written on one node, read on the other.
    let rwx = Mode::MultiNodeMultiWriter;
    let v = c
        .controller
        .create_volume(on_share("rwx", rwx, &[("volumeFormat", "directory")]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.volume_id, "v1:share::rwx");
    assert_eq!(
        v.accessible_topology.len(),
        2,
        "{:?}",
        v.accessible_topology
    );
    for n in ["node-1", "node-2"] {
        c.controller
            .controller_publish_volume(controller_publish(&v.volume_id, n, rwx))
            .await
            .unwrap();
    }
    let t1 = stage_and_publish(&mut c.node, &v.volume_id, base, "1", rwx).await;
    let t2 = stage_and_publish(&mut node2, &v.volume_id, base, "2", rwx).await;
    std::fs::write(t1.join("from-1"), b"written on node-1").unwrap();
    std::fs::write(t2.join("from-2"), vec![7u8; 1 << 20]).unwrap();
    assert_eq!(
        std::fs::read(t2.join("from-1")).unwrap(),
        b"written on node-1"
    );
    assert_eq!(std::fs::read(t1.join("from-2")).unwrap().len(), 1 << 20);
    let stats = node2
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: t2.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert_eq!(bytes.total, 64 * MIB);
    assert!(
        bytes.used >= 1 << 20 && bytes.available <= 63 * MIB,
        "{bytes:?}"
    );
    // Growing records the new capacity; there is no filesystem to grow.
    // A snapshot of it is one snapshot of the pool (its id names no node,
    // whichever node lists it); a restore from it is ReadWriteMany too.
    let snap = c
        .controller
        .create_snapshot(req::snapshot("rwx-snap", &v.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap.snapshot_id, "s1:share::rwx-snap");
    let listed = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1, "{listed:?}");
    let mut restore = req::restore_of("rwx-restored", 64 * MIB, &snap.snapshot_id);
    restore.parameters = on_share("x", rwx, &[("volumeFormat", "directory")]).parameters;
    restore.volume_capabilities = vec![req::cap_with_mode(rwx)];
    let restored = c.create_volume_id(restore).await;
    let tr = stage_and_publish(&mut node2, &restored, base, "r", rwx).await;
    assert_eq!(
        std::fs::read(tr.join("from-1")).unwrap(),
        b"written on node-1"
    );
    unpublish_and_unstage(&mut node2, &restored, base, "r").await;
    c.controller
        .delete_volume(req::delete(&restored))
        .await
        .unwrap();
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let grown = c
        .controller
        .controller_expand_volume(req::expand(&v.volume_id, 128 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (grown.capacity_bytes, grown.node_expansion_required),
        (128 * MIB, false)
    );
    for (node, tag) in [(&mut c.node, "1"), (&mut node2, "2")] {
        unpublish_and_unstage(node, &v.volume_id, base, tag).await;
    }
    for n in ["node-1", "node-2"] {
        c.controller
            .controller_unpublish_volume(controller_unpublish(&v.volume_id, n))
            .await
            .unwrap();
    }
    c.controller
        .delete_volume(req::delete(&v.volume_id))
        .await
        .unwrap();
    assert!(!base.join("share/rwx.directory").exists());

    // onDelete=archive keeps the data under a dated name.
    let keep = c
        .create_volume_id(on_share(
            "keep",
            Mode::SingleNodeWriter,
            &[("volumeFormat", "directory"), ("onDelete", "archive")],
        ))
        .await;
    let t = stage_and_publish(&mut node2, &keep, base, "k", Mode::SingleNodeWriter).await;
    std::fs::write(t.join("report.txt"), b"keep me").unwrap();
    unpublish_and_unstage(&mut node2, &keep, base, "k").await;
    c.controller
        .delete_volume(req::delete(&keep))
        .await
        .unwrap();
    let archived: Vec<PathBuf> = std::fs::read_dir(base.join("share"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("archived-keep-")
        })
        .collect();
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(
        std::fs::read(archived[0].join("data/report.txt")).unwrap(),
        b"keep me"
    );

    // An image volume is used on one node at a time: its claim is on the share.
    let one = Mode::SingleNodeWriter;
    let img = c
        .create_volume_id(on_share("img", one, &[("volumeFormat", "raw")]))
        .await;
    c.controller
        .controller_publish_volume(controller_publish(&img, "node-1", one))
        .await
        .unwrap();
    let e = c
        .controller
        .controller_publish_volume(controller_publish(&img, "node-2", one))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("published on node node-1"), "{e:?}");
    // Its image is grown only where it is published: node-2 refuses, and
    // the controller sends the call to node-1.
    let e = a2
        .clone()
        .expand_volume(pb::ExpandVolumeRequest {
            pool: "share".into(),
            name: "img".into(),
            required_bytes: 96 << 20,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("published on node node-1"), "{e:?}");
    let grown = c
        .controller
        .controller_expand_volume(req::expand(&img, 96 * MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grown.capacity_bytes, 96 * MIB);
    let listed = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let entry = listed
        .entries
        .iter()
        .find(|e| e.volume.as_ref().unwrap().volume_id == img)
        .unwrap();
    assert_eq!(
        entry.status.as_ref().unwrap().published_node_ids,
        ["node-1"]
    );
    c.controller
        .controller_unpublish_volume(controller_unpublish(&img, "node-1"))
        .await
        .unwrap();
    // Another node's FUSE client may see the released claim up to its
    // entry timeout (1 s) late: a refusal then is retried, as the
    // external-attacher retries.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = c
        .controller
        .controller_publish_volume(controller_publish(&img, "node-2", one))
        .await
    {
        assert!(
            e.code() == Code::FailedPrecondition && Instant::now() < deadline,
            "{e:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let t = stage_and_publish(&mut node2, &img, base, "i", one).await;
    std::fs::write(t.join("on-ext4"), b"a loop device over a FUSE file").unwrap();
    unpublish_and_unstage(&mut node2, &img, base, "i").await;
    c.controller
        .controller_unpublish_volume(controller_unpublish(&img, "node-2"))
        .await
        .unwrap();
    c.controller.delete_volume(req::delete(&img)).await.unwrap();

    // Both nodes create the same names at once: each name is made once,
    // both calls answer it, and no node's work in progress is left.
    let create = |mut a: AgentClient<Channel>, name: String, format: pb::VolumeFormat| async move {
        a.create_volume(pb::CreateVolumeRequest {
            pool: "share".into(),
            name,
            required_bytes: 4 << 20,
            options: Some(pb::VolumeOptions {
                format: format as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    };
    for i in 0..12 {
        let format = match i % 2 {
            0 => pb::VolumeFormat::Raw,
            _ => pb::VolumeFormat::Directory,
        };
        let name = format!("race-{i}");
        let (r1, r2) = tokio::join!(
            create(a1.clone(), name.clone(), format),
            create(a2.clone(), name.clone(), format)
        );
        r1.unwrap_or_else(|e| panic!("node-1 {name}: {e:?}"));
        r2.unwrap_or_else(|e| panic!("node-2 {name}: {e:?}"));
    }
    let names: Vec<String> = std::fs::read_dir(base.join("share"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("race-"))
        .collect();
    assert_eq!(names.len(), 12, "{names:?}");
    for n in ["node-1", "node-2"] {
        let tmp = base.join("share/.pool-csi/tmp").join(n);
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "{}",
            tmp.display()
        );
    }

    // The share's server hangs (frozen, not gone: as an NFS server that
    // stops answering). A call on the share waits for it; the node keeps
    // serving everything else meanwhile, kubelet's stats of a volume on
    // the share included.
    let hv = c
        .create_volume_id(on_share("hang", rwx, &[("volumeFormat", "directory")]))
        .await;
    c.controller
        .controller_publish_volume(controller_publish(&hv, "node-1", rwx))
        .await
        .unwrap();
    let ht = stage_and_publish(&mut c.node, &hv, base, "h", rwx).await;
    let stats = |n: &NodeClient<Channel>| {
        let (mut n, hv, ht) = (n.clone(), hv.clone(), ht.clone());
        async move {
            n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: hv,
                volume_path: ht.to_str().unwrap().into(),
                ..Default::default()
            })
            .await
        }
    };
    stats(&c.node).await.expect("stats while the share answers");
    let paused = g.pause_server();
    // Past what the kernel and the FUSE client keep of the share (1 s):
    // from here every look at it waits for the server.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck_stats = tokio::spawn(stats(&c.node));
    let frozen = {
        let mut a1 = a1.clone();
        tokio::spawn(async move {
            // A name never made: its lookup cannot come from a cache.
            a1.get_volume(pb::VolumeRef {
                pool: "share".into(),
                name: "frozen".into(),
            })
            .await
        })
    };
    // Both calls reach node-1 and wait (the stats holding its lock).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let others = tokio::time::timeout(Duration::from_secs(5), async {
        c.node_identity.probe(csi::ProbeRequest {}).await?;
        // kubelet's next stats of it: refused at once, no second thread waits.
        let again = stats(&c.node).await.unwrap_err();
        assert_eq!(again.code(), Code::Aborted, "{again:?}");
        a1.clone()
            .create_volume(pb::CreateVolumeRequest {
                pool: "scratch".into(),
                name: "beside-the-hang".into(),
                required_bytes: MIB as u64,
                ..Default::default()
            })
            .await
    })
    .await;
    let (waited, waiting) = (
        t.elapsed(),
        !frozen.is_finished() && !stuck_stats.is_finished(),
    );
    drop(paused);
    others
        .expect("node-1 answers other calls while a share hangs")
        .expect("Probe and a local pool's create succeed");
    assert!(
        waited < Duration::from_secs(2),
        "node-1 answered other calls only after {waited:?}"
    );
    assert!(waiting, "the call on the share waits for it");
    // It ends once the server answers again.
    let looked = tokio::time::timeout(Duration::from_secs(60), frozen)
        .await
        .expect("the call on the share ends once its server answers")
        .unwrap();
    assert!(looked.is_err(), "never made: {looked:?}");
    tokio::time::timeout(Duration::from_secs(60), stuck_stats)
        .await
        .expect("the stats end once the server answers")
        .unwrap()
        .ok();
    unpublish_and_unstage(&mut c.node, &hv, base, "h").await;
    a1.clone()
        .delete_volume(pb::DeleteVolumeRequest {
            pool: "scratch".into(),
            name: "beside-the-hang".into(),
            wipe: false,
        })
        .await
        .unwrap();

    // The share goes away: the pool stops with why, and comes back with it.
    g.stop_server();
    let down = wait_pool(&agent2, "share", "inactive", Duration::from_secs(20)).await;
    let info = poolctl(&agent2, &["pool-info", "share"]);
    // Why: the share stopped answering, then (the retry) cannot be mounted.
    assert!(
        ["not connected", "does not answer", "could not be mounted"]
            .iter()
            .any(|w| info.contains(w)),
        "{down}\n{info}"
    );
    let e = c
        .controller
        .create_volume(on_share("while-down", one, &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::ResourceExhausted | Code::FailedPrecondition | Code::Unavailable
        ),
        "{e:?}"
    );
    g.start_server();
    for agent in [&agent1, &agent2] {
        // The node's restart round backs off to once a minute.
        wait_pool(agent, "share", "running", Duration::from_secs(120)).await;
    }
    c.create_volume_id(on_share("after", one, &[])).await;
    drop(d);
}
