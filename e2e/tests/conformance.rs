//! The CSI spec's required behaviours, checked against the real binaries:
//! error codes for missing and bad fields, idempotent create and delete,
//! capacity ranges, access modes, pagination, capabilities and identity.

use pool_csi_e2e::{clients::Clients, req, require, Driver, Options};
use pool_csi_proto::csi::{self, volume_capability::access_mode::Mode};
use tonic::Code;

async fn driver() -> (Driver, Clients) {
    let d = Driver::start(Options::default()).await;
    let c = d.clients().await;
    (d, c)
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reports_name_capabilities_and_readiness() {
    require!(false);
    let (_d, mut c) = driver().await;
    let info = c
        .ctrl_identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "pool-csi.io");
    assert!(!info.vendor_version.is_empty());
    let caps = c
        .ctrl_identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    use csi::plugin_capability::{service, volume_expansion, Type as P};
    let plugin: Vec<P> = caps
        .capabilities
        .into_iter()
        .filter_map(|c| c.r#type)
        .collect();
    let svc = |t: service::Type| P::Service(csi::plugin_capability::Service { r#type: t as i32 });
    let exp = |t: volume_expansion::Type| {
        P::VolumeExpansion(csi::plugin_capability::VolumeExpansion { r#type: t as i32 })
    };
    assert_eq!(
        plugin,
        [
            svc(service::Type::VolumeAccessibilityConstraints),
            svc(service::Type::ControllerService),
            exp(volume_expansion::Type::Online),
            exp(volume_expansion::Type::Offline),
        ]
    );
    // Exactly what the controller and node services advertise, no more:
    // each is an RPC the conformance suite then exercises.
    use csi::controller_service_capability::rpc::Type as C;
    let controller: Vec<i32> = c
        .controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| {
            c.r#type
                .map(|csi::controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    let want: Vec<i32> = [
        C::CreateDeleteVolume,
        C::PublishUnpublishVolume,
        C::ListVolumes,
        C::GetCapacity,
        C::CreateDeleteSnapshot,
        C::ListSnapshots,
        C::CloneVolume,
        C::ExpandVolume,
        C::VolumeCondition,
        C::GetVolume,
        C::ListVolumesPublishedNodes,
        C::SingleNodeMultiWriter,
    ]
    .map(|t| t as i32)
    .into();
    assert_eq!(controller, want);
    use csi::node_service_capability::rpc::Type as N;
    let node: Vec<i32> = c
        .node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| {
            c.r#type
                .map(|csi::node_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    let want: Vec<i32> = [
        N::StageUnstageVolume,
        N::GetVolumeStats,
        N::ExpandVolume,
        N::VolumeCondition,
        N::SingleNodeMultiWriter,
    ]
    .map(|t| t as i32)
    .into();
    assert_eq!(node, want);
    let probe = c
        .node_identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let info = c
        .node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    assert_eq!(
        info.accessible_topology.unwrap().segments["pool-csi.io/node"],
        "node-1"
    );
}

/// The controller's Probe says ready only once a node agent answers:
/// before that every call would fail, and the provisioner waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_is_ready_once_an_agent_answers() {
    require!(false);
    let mut d = pool_csi_e2e::Driver::start(pool_csi_e2e::Options::default()).await;
    d.kill_node();
    d.kill_controller();
    d.restart_controller();
    let sock = d.ctrl_sock.clone();
    let probe = || async {
        let ch = pool_csi_e2e::clients::uds_channel(&sock).await.ok()?;
        csi::identity_client::IdentityClient::new(ch)
            .probe(csi::ProbeRequest {})
            .await
            .ok()
            .map(|r| r.into_inner().ready)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut answers = Vec::new();
    while answers.len() < 5 {
        if let Some(ready) = probe().await {
            answers.push(ready);
        }
        assert!(std::time::Instant::now() < deadline, "no probe answer");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(answers.iter().all(|r| *r == Some(false)), "{answers:?}");
    d.start_node();
    d.wait_ready().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while probe().await != Some(Some(true)) {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready after the agent answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_fields_are_invalid_argument() {
    require!(false);
    let (d, mut c) = driver().await;
    let mut no_name = req::create("", req::MIB, &[]);
    no_name.name.clear();
    assert_eq!(
        code(c.controller.create_volume(no_name).await),
        Code::InvalidArgument
    );
    let mut no_caps = req::create("v", req::MIB, &[]);
    no_caps.volume_capabilities.clear();
    assert_eq!(
        code(c.controller.create_volume(no_caps).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller
                .delete_volume(csi::DeleteVolumeRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller
                .controller_expand_volume(req::expand("", req::MIB))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.controller.create_snapshot(req::snapshot("", "x")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.controller.create_snapshot(req::snapshot("s", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller
                .delete_snapshot(csi::DeleteSnapshotRequest::default())
                .await
        ),
        Code::InvalidArgument
    );
    let p = d.path("x");
    assert_eq!(
        code(
            c.node
                .node_stage_volume(req::stage("", &p, req::mount_cap("ext4")))
                .await
        ),
        Code::InvalidArgument
    );
    let mut no_cap = req::stage("v1:scratch:node-1:v", &p, req::mount_cap("ext4"));
    no_cap.volume_capability = None;
    assert_eq!(
        code(c.node.node_stage_volume(no_cap).await),
        Code::InvalidArgument
    );
    let mut bad_ctx = req::stage("v1:scratch:node-1:v", &p, req::mount_cap(""));
    bad_ctx
        .volume_context
        .insert("fsType".into(), "ext4/../../evil".into());
    assert_eq!(
        code(c.node.node_stage_volume(bad_ctx).await),
        Code::InvalidArgument
    );
    let mut no_path = req::stage("v1:scratch:node-1:v", &p, req::mount_cap("ext4"));
    no_path.staging_target_path.clear();
    assert_eq!(
        code(c.node.node_stage_volume(no_path).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.node.node_unpublish_volume(req::unpublish("", &p)).await),
        Code::InvalidArgument
    );
    let mut no_target = req::unpublish("v1:scratch:node-1:v", &p);
    no_target.target_path.clear();
    assert_eq!(
        code(c.node.node_unpublish_volume(no_target).await),
        Code::InvalidArgument
    );
}

/// csi-sanity's cases: a request for an id this driver never made that
/// also lacks a required field is INVALID_ARGUMENT (the field), not
/// NOT_FOUND (the id) — every field is checked before anything is looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_fields_are_checked_before_the_volume_is_looked_up() {
    require!(false);
    let (d, mut c) = driver().await;
    let fake = "fake-vol-id-1";
    let p = d.path("staging");
    let t = d.path("target");
    let mut no_target = req::publish(fake, &p, &t, req::mount_cap("ext4"), false);
    no_target.target_path.clear();
    let mut no_cap = req::publish(fake, &p, &t, req::mount_cap("ext4"), false);
    no_cap.volume_capability = None;
    let mut no_staging = req::stage(fake, &p, req::mount_cap("ext4"));
    no_staging.staging_target_path.clear();
    let mut no_unstage_path = req::unstage(fake, &p);
    no_unstage_path.staging_target_path.clear();
    let no_volume_path = csi::NodeGetVolumeStatsRequest {
        volume_id: fake.into(),
        ..Default::default()
    };
    assert_eq!(
        code(c.node.node_publish_volume(no_target).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.node.node_publish_volume(no_cap).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.node.node_stage_volume(no_staging).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.node.node_unstage_volume(no_unstage_path).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.node.node_get_volume_stats(no_volume_path).await),
        Code::InvalidArgument
    );
    let publish =
        |node: &str, cap: Option<csi::VolumeCapability>| csi::ControllerPublishVolumeRequest {
            volume_id: fake.into(),
            node_id: node.into(),
            volume_capability: cap,
            ..Default::default()
        };
    assert_eq!(
        code(
            c.controller
                .controller_publish_volume(publish("", Some(req::mount_cap("ext4"))))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.controller
                .controller_publish_volume(publish("node-1", None))
                .await
        ),
        Code::InvalidArgument
    );
    // With every field there, the unknown id is what is wrong.
    assert_eq!(
        code(
            c.controller
                .controller_publish_volume(publish("node-1", Some(req::mount_cap("ext4"))))
                .await
        ),
        Code::NotFound
    );
}

/// Hostile requests are refused before anything is made: a control
/// character in a name, and paths outside the kubelet directory, whether
/// plainly or through a link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_paths_are_refused_and_touch_nothing() {
    require!(false);
    let (d, mut c) = driver().await;
    for bad in ["nul\0byte", "new\nline", "tab\there"] {
        let before = std::fs::read_dir(&d.pool_dir).unwrap().count();
        let e = c
            .controller
            .create_volume(req::create(bad, req::MIB, &[]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().contains("control character"), "{e:?}");
        assert_eq!(std::fs::read_dir(&d.pool_dir).unwrap().count(), before);
        let e = c
            .controller
            .create_snapshot(req::snapshot(bad, "v1:scratch:node-1:v"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let id = c
        .controller
        .create_volume(req::create("hostile", 16 * req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let victim =
        std::path::Path::new("/etc").join(format!("pool-csi-hostile-{}", std::process::id()));
    let e = c
        .node
        .node_stage_volume(req::stage(&id, &victim, req::mount_cap("ext4")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("kubelet directory"), "{e:?}");
    assert!(
        !victim.exists(),
        "nothing is made outside the kubelet directory"
    );
    // A link inside the kubelet directory that leads out of it.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), d.path("escape")).unwrap();
    let through = d.path("escape/staging");
    let e = c
        .node
        .node_stage_volume(req::stage(&id, &through, req::mount_cap("ext4")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(!outside.path().join("staging").exists());
    let e = c
        .node
        .node_publish_volume(req::publish(
            &id,
            &d.path("staging"),
            std::path::Path::new("/tmp/../etc/x"),
            req::mount_cap("ext4"),
            false,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_volumes_are_not_found_and_deletes_are_ok() {
    require!(false);
    let (d, mut c) = driver().await;
    // (A pool the node does not define: its volume counts as deleted.)
    for id in [
        "v1:scratch:node-1:nope",
        "v1:gone:node-1:nope",
        "garbage-id",
    ] {
        let get = c
            .controller
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: id.into(),
            })
            .await;
        assert_eq!(code(get), Code::NotFound, "{id}");
        assert_eq!(
            code(
                c.controller
                    .controller_expand_volume(req::expand(id, req::MIB))
                    .await
            ),
            Code::NotFound,
            "{id}"
        );
        let v = csi::ValidateVolumeCapabilitiesRequest {
            volume_id: id.into(),
            volume_capabilities: vec![req::mount_cap("")],
            ..Default::default()
        };
        assert_eq!(
            code(c.controller.validate_volume_capabilities(v).await),
            Code::NotFound,
            "{id}"
        );
        assert_eq!(
            code(c.controller.create_snapshot(req::snapshot("s", id)).await),
            Code::NotFound,
            "{id}"
        );
        assert_eq!(
            code(
                c.node
                    .node_stage_volume(req::stage(id, &d.path("s"), req::mount_cap("ext4")))
                    .await
            ),
            Code::NotFound,
            "{id}"
        );
        assert_eq!(
            code(
                c.controller
                    .delete_volume(csi::DeleteVolumeRequest {
                        volume_id: id.into(),
                        ..Default::default()
                    })
                    .await
            ),
            Code::Ok
        );
        assert_eq!(
            code(
                c.node
                    .node_unpublish_volume(req::unpublish(id, &d.path("t")))
                    .await
            ),
            Code::Ok
        );
    }
    // A well-formed id that names nothing: already unstaged. A malformed one
    // cannot name anything to detach: NOT_FOUND.
    assert_eq!(
        code(
            c.node
                .node_unstage_volume(req::unstage("v1:scratch:node-1:nope", &d.path("s")))
                .await
        ),
        Code::Ok
    );
    assert_eq!(
        code(
            c.node
                .node_unstage_volume(req::unstage("garbage-id", &d.path("s")))
                .await
        ),
        Code::NotFound
    );
    let snap = csi::DeleteSnapshotRequest {
        snapshot_id: "s1:scratch:node-1:nope".into(),
        ..Default::default()
    };
    assert_eq!(code(c.controller.delete_snapshot(snap).await), Code::Ok);
    assert_eq!(
        code(
            c.controller
                .create_volume(req::restore_of("r", req::MIB, "s1:scratch:node-1:nope"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.controller
                .create_volume(req::clone_of("r", req::MIB, "v1:scratch:node-1:nope"))
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_incompatible_recreate_is_already_exists() {
    require!(false);
    let (d, mut c) = driver().await;
    let a = c
        .controller
        .create_volume(req::create("same", 10 * req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let b = c
        .controller
        .create_volume(req::create("same", 10 * req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(
        code(
            c.controller
                .create_volume(req::create("same", 20 * req::MIB, &[]))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            c.controller
                .create_volume(req::create(
                    "same",
                    10 * req::MIB,
                    &[("volumeFormat", "qcow2")]
                ))
                .await
        ),
        Code::AlreadyExists
    );
    // Names that are not storage names map deterministically and stay inside the pool.
    let odd = c
        .controller
        .create_volume(req::create("../../etc/Passwd Volume", req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let again = c
        .controller
        .create_volume(req::create("../../etc/Passwd Volume", req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(odd.volume_id, again.volume_id);
    let files: Vec<String> = std::fs::read_dir(&d.pool_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().any(|f| f.starts_with("etc-passwd-volume-")),
        "{files:?}"
    );
}

/// The node keeps a pool's names by watching its directory: a volume an
/// operator makes or removes there by hand counts at once, no settling wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_made_or_removed_beside_the_driver_count_at_once() {
    require!(true);
    let (d, mut c) = driver().await;
    let create = |name: &str| req::create(name, 10 * req::MIB, &[]);
    c.controller.create_volume(create("first")).await.unwrap();
    let by_hand = d.pool_dir.join("hand.qcow2");
    pool_csi_e2e::sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            by_hand.to_str().unwrap(),
            "10M",
        ],
    );
    assert_eq!(
        code(c.controller.create_volume(create("hand")).await),
        Code::AlreadyExists,
        "a qcow2 volume of that name is there"
    );
    std::fs::remove_file(&by_hand).unwrap();
    let made = c.controller.create_volume(create("hand")).await.unwrap();
    let id = made.into_inner().volume.unwrap().volume_id;
    assert!(d.pool_dir.join("hand.raw").exists());
    // A raw file made by hand is a volume DeleteVolume removes.
    let raw = d.pool_dir.join("other.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(req::MIB as u64)
        .unwrap();
    let other = id.replace(":hand", ":other");
    c.controller
        .delete_volume(req::delete(&other))
        .await
        .unwrap();
    assert!(!raw.exists(), "DeleteVolume found and removed other.raw");
    c.controller.delete_volume(req::delete(&id)).await.unwrap();
    assert!(!d.pool_dir.join("hand.raw").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_ranges_are_honoured() {
    require!(false);
    let (_d, mut c) = driver().await;
    let mut r = req::create("exact", 5 * req::MIB, &[]);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 5 * req::MIB,
        limit_bytes: 5 * req::MIB,
    });
    assert_eq!(
        c.controller
            .create_volume(r)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .capacity_bytes,
        5 * req::MIB
    );
    let mut r = req::create("rounded", req::MIB + 1, &[]);
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: req::MIB + 1,
        limit_bytes: 0,
    });
    assert_eq!(
        c.controller
            .create_volume(r)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .capacity_bytes,
        2 * req::MIB
    );
    let mut inverted = req::create("inverted", 0, &[]);
    inverted.capacity_range = Some(csi::CapacityRange {
        required_bytes: 2 * req::MIB,
        limit_bytes: req::MIB,
    });
    assert_eq!(
        code(c.controller.create_volume(inverted).await),
        Code::OutOfRange
    );
    let mut negative = req::create("neg", 0, &[]);
    negative.capacity_range = Some(csi::CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    assert_eq!(
        code(c.controller.create_volume(negative).await),
        Code::InvalidArgument
    );
    let mut none = req::create("default", 0, &[]);
    none.capacity_range = None;
    assert_eq!(
        c.controller
            .create_volume(none)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .capacity_bytes,
        1 << 30
    );
    // Larger than the pool's tmpfs (4 GiB): RESOURCE_EXHAUSTED, and nothing left behind.
    assert_eq!(
        code(
            c.controller
                .create_volume(req::create("huge", 64 * req::GIB, &[]))
                .await
        ),
        Code::ResourceExhausted
    );
    let get = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: "v1:scratch:node-1:huge".into(),
        })
        .await;
    assert_eq!(code(get), Code::NotFound);
    // Expansion beyond the limit is OUT_OF_RANGE; shrinking is a no-op.
    let id = "v1:scratch:node-1:exact";
    let mut e = req::expand(id, 8 * req::MIB);
    e.capacity_range.as_mut().unwrap().limit_bytes = 6 * req::MIB;
    assert_eq!(
        code(c.controller.controller_expand_volume(e).await),
        Code::OutOfRange
    );
    let shrink = c
        .controller
        .controller_expand_volume(req::expand(id, req::MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shrink.capacity_bytes, 5 * req::MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_capabilities_are_refused_by_name() {
    require!(false);
    let (_d, mut c) = driver().await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("volumFormat", "raw")], "volumFormat"),
        (&[("volumeFormat", "qcow3")], "qcow3"),
        (&[("allocation", "thin")], "allocation=thin"),
        (&[("pool", "nowhere")], "nowhere"),
    ];
    for (params, named) in cases {
        let e = c
            .controller
            .create_volume(req::create("p", req::MIB, params))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{params:?}: {e:?}");
        assert!(e.message().contains(named), "{params:?}: {}", e.message());
    }
    for mode in [
        Mode::MultiNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::Unknown,
    ] {
        let mut r = req::create("m", req::MIB, &[]);
        r.volume_capabilities = vec![req::cap_with_mode(mode)];
        assert_eq!(
            code(c.controller.create_volume(r).await),
            Code::InvalidArgument,
            "{mode:?}"
        );
    }
    let id = c
        .controller
        .create_volume(req::create("ok", req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let v = |caps| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let good = c
        .controller
        .validate_volume_capabilities(v(vec![req::mount_cap("xfs"), req::block_cap()]))
        .await
        .unwrap()
        .into_inner();
    assert!(good.confirmed.is_some());
    let bad = c
        .controller
        .validate_volume_capabilities(v(vec![req::cap_with_mode(Mode::MultiNodeMultiWriter)]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        bad.confirmed.is_none() && bad.message.contains("MULTI_NODE_MULTI_WRITER"),
        "{bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_paginate_without_gaps_or_repeats() {
    require!(false);
    let (_d, mut c) = driver().await;
    let mut want: Vec<String> = Vec::new();
    for i in 0..7 {
        let v = c
            .controller
            .create_volume(req::create(&format!("vol-{i}"), req::MIB, &[]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        want.push(v.volume_id);
    }
    want.sort();
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = c
            .controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 3,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 3);
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
    assert_eq!(seen, want);
    let bad = c
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 0,
            starting_token: "not-a-token".into(),
        })
        .await;
    assert_eq!(code(bad), Code::Aborted);
    let neg = c
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await;
    assert_eq!(code(neg), Code::InvalidArgument);

    for (i, v) in want.iter().take(3).enumerate() {
        c.controller
            .create_snapshot(req::snapshot(&format!("snap-{i}"), v))
            .await
            .unwrap();
    }
    let all = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            max_entries: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 2);
    let rest = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            starting_token: all.next_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 1);
    let of_one = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: want[1].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_one.entries.len(), 1);
    assert_eq!(
        of_one.entries[0]
            .snapshot
            .as_ref()
            .unwrap()
            .source_volume_id,
        want[1]
    );
    let by_id = c
        .controller
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: "s1:scratch:node-1:snap-2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    // The same snapshot name for another volume is taken.
    assert_eq!(
        code(
            c.controller
                .create_snapshot(req::snapshot("snap-0", &want[4]))
                .await
        ),
        Code::AlreadyExists
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_reported_per_node_segment() {
    require!(false);
    let (_d, mut c) = driver().await;
    let ask = |seg: Option<(&str, &str)>| csi::GetCapacityRequest {
        parameters: [("pool".to_string(), "scratch".to_string())].into(),
        accessible_topology: seg.map(|(k, v)| csi::Topology {
            segments: [(k.to_string(), v.to_string())].into(),
        }),
        ..Default::default()
    };
    let here = c
        .controller
        .get_capacity(ask(Some(("pool-csi.io/node", "node-1"))))
        .await
        .unwrap()
        .into_inner();
    assert!(
        here.available_capacity > 3 << 30 && here.available_capacity <= 4 << 30,
        "{here:?}"
    );
    assert_eq!(here.maximum_volume_size, Some(here.available_capacity));
    let elsewhere = c
        .controller
        .get_capacity(ask(Some(("pool-csi.io/node", "node-9"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(elsewhere.available_capacity, 0);
    let foreign = c
        .controller
        .get_capacity(ask(Some(("topology.kubernetes.io/zone", "z"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(foreign.available_capacity, 0);
    let everywhere = c
        .controller
        .get_capacity(ask(None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everywhere.available_capacity, here.available_capacity);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_requirements_pick_the_node_or_refuse() {
    require!(false);
    let (_d, mut c) = driver().await;
    let topo = |n: &str| csi::Topology {
        segments: [("pool-csi.io/node".to_string(), n.to_string())].into(),
    };
    let mut r = req::create("t1", req::MIB, &[]);
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![topo("node-1")],
        preferred: vec![topo("node-1")],
    });
    let v = c
        .controller
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.accessible_topology, vec![topo("node-1")]);
    let mut r = req::create("t2", req::MIB, &[]);
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![topo("node-2")],
        preferred: vec![],
    });
    assert_eq!(
        code(c.controller.create_volume(r).await),
        Code::ResourceExhausted
    );
}

/// Two CreateVolume calls for one name while the first is held inside its
/// write (the pool's filesystem frozen): the second is ABORTED at once, never
/// queued behind the first, and the first completes once the pool thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_on_one_volume_are_aborted_not_queued() {
    require!(false);
    // The pool's filesystem frozen: the first create stalls inside its
    // write, holding the volume, for as long as the test wants.
    let scratch = tempfile::tempdir().unwrap();
    let dev = pool_csi_e2e::LoopDisk::new(scratch.path(), "fs.img", 128, false);
    let out = pool_csi_e2e::tool("mkfs.ext4", &["-q", dev.path()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Driver::start(Options {
        extra_pools: format!(
            "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: frozen }}\nspec:\n  type: fs\n  source: {{ device: {}, format: ext4 }}\n  target: {{ path: \"{{dir}}/frozen\" }}\n",
            dev.path()
        ),
        ..Default::default()
    })
    .await;
    let c = d.clients().await;
    struct Thaw(String);
    impl Drop for Thaw {
        fn drop(&mut self) {
            pool_csi_e2e::tool("fsfreeze", &["--unfreeze", &self.0]);
        }
    }
    let mount = d.dir.path().join("frozen").display().to_string();
    let out = pool_csi_e2e::tool("fsfreeze", &["--freeze", &mount]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let thaw = Thaw(mount);
    let mk = || {
        let mut c = c.clone();
        tokio::spawn(async move {
            c.controller
                .create_volume(req::create("held", 16 * req::MIB, &[("pool", "frozen")]))
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        })
    };
    let (mut a, mut b) = (mk(), mk());
    // One call stalls in the frozen write; the other meets it and is
    // ABORTED at once, whichever arrived first.
    let first = tokio::select! {
        r = &mut a => (r.unwrap(), b),
        r = &mut b => (r.unwrap(), a),
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => panic!("neither call answered"),
    };
    let (answered, stalled) = first;
    assert_eq!(
        answered,
        Err(Code::Aborted),
        "the call that met the held volume"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!stalled.is_finished(), "the first call waits for the thaw");
    drop(thaw);
    assert_eq!(stalled.await.unwrap(), Ok(()), "the held call completes");
    let mut c = c.clone();
    let again = c
        .controller
        .create_volume(req::create("held", 16 * req::MIB, &[("pool", "frozen")]))
        .await;
    assert_eq!(code(again), Code::Ok, "a retry now finds the volume");
}

/// A slow operation (zeroing 2 GiB before deleting, ~2 s) whose caller gives up
/// runs to its end: a retry meanwhile is ABORTED, never a second wipe, and
/// a retry afterwards finds the volume gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_outlives_its_caller_and_a_retry_meanwhile_is_aborted() {
    require!(false);
    let (d, mut c) = driver().await;
    let id = c
        .controller
        .create_volume(req::create(
            "wiped",
            2 * req::GIB,
            &[("allocation", "full"), ("wipeOnDelete", "true")],
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let file = d.pool_dir.join("wiped.raw");
    // Data to zero: preallocated tmpfs pages read as holes, which a wipe skips.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..2048 {
            f.write_all(&chunk).unwrap();
        }
    }
    let delete = || csi::DeleteVolumeRequest {
        volume_id: id.clone(),
        ..Default::default()
    };
    // The caller's deadline passes after the wipe started, long before it ends.
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        c.controller.delete_volume(delete()),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the wipe finished within 300 ms: {gave_up:?}"
    );
    let retry = c.controller.delete_volume(delete()).await;
    assert_eq!(code(retry), Code::Aborted, "the first wipe still runs");
    let mut deleted = false;
    for _ in 0..200 {
        if code(c.controller.delete_volume(delete()).await) == Code::Ok {
            deleted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(deleted && !file.exists(), "the abandoned delete completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_finds_agents_through_dns() {
    require!(false);
    let d = Driver::start(Options {
        discover_agents: true,
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let v = c
        .controller
        .create_volume(req::create("found", req::MIB, &[]))
        .await
        .expect("create via a discovered agent")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        v.accessible_topology[0].segments["pool-csi.io/node"], "node-1",
        "the agent told its node name"
    );
}

fn attach(
    id: &str,
    node: &str,
    cap: Option<csi::VolumeCapability>,
) -> csi::ControllerPublishVolumeRequest {
    csi::ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: cap,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_publish_checks_the_volume_and_its_node() {
    require!(false);
    let d = Driver::start(Options {
        extra_nodes: vec![("node-2".into(), 64 << 20)],
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let id = c
        .create_volume_id(req::create("attach-me", req::MIB, &[]))
        .await;
    let home = if id.contains(":node-1:") {
        "node-1"
    } else {
        "node-2"
    };
    let other = if home == "node-1" { "node-2" } else { "node-1" };
    let cap = || Some(req::mount_cap("ext4"));
    for _ in 0..2 {
        let r = c
            .controller
            .controller_publish_volume(attach(&id, home, cap()))
            .await;
        assert!(
            r.unwrap().into_inner().publish_context.is_empty(),
            "idempotent"
        );
    }
    let elsewhere = c
        .controller
        .controller_publish_volume(attach(&id, other, cap()))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::FailedPrecondition, "{elsewhere:?}");
    assert!(
        elsewhere
            .message()
            .contains(&format!("lives on node {home}")),
        "{elsewhere:?}"
    );
    for (req, want) in [
        (attach(&id, "no-such-node", cap()), Code::NotFound),
        (
            attach(&id.replace("attach-me", "ghost"), home, cap()),
            Code::NotFound,
        ),
        (attach("garbage", home, cap()), Code::NotFound),
        (attach("", home, cap()), Code::InvalidArgument),
        (attach(&id, "", cap()), Code::InvalidArgument),
        (attach(&id, home, None), Code::InvalidArgument),
        (
            attach(
                &id,
                home,
                Some(req::cap_with_mode(Mode::MultiNodeMultiWriter)),
            ),
            Code::InvalidArgument,
        ),
    ] {
        assert_eq!(
            code(c.controller.controller_publish_volume(req.clone()).await),
            want,
            "{req:?}"
        );
    }
    for node in [home, other, ""] {
        c.controller
            .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
                volume_id: id.clone(),
                node_id: node.into(),
                ..Default::default()
            })
            .await
            .expect("unpublish is always done");
    }
    let e = c
        .controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// A pool that is defined but not running here (its target missing), and a
/// netfs pool whose share no server answers for: a call on a volume of either is
/// FAILED_PRECONDITION naming why; provisioning in either is
/// RESOURCE_EXHAUSTED (no node can take it, so the provisioner may try
/// elsewhere), with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_that_do_not_run_refuse_with_the_reason() {
    require!(false);
    let extra = pool_csi_e2e::manifests::NOT_RUNNING;
    let d = Driver::start(Options {
        extra_pools: extra.into(),
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    for (pool, why) in [
        ("later", "does not exist"),
        ("nfs0", "could not be mounted"),
    ] {
        let mut r = req::create("v", req::MIB, &[]);
        r.parameters.insert("pool".into(), pool.into());
        let e = c.controller.create_volume(r).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{pool}: {e:?}");
        assert!(e.message().contains(pool), "{pool}: {e:?}");
        let id = format!("v1:{pool}:node-1:v");
        let e = c
            .node
            .node_stage_volume(req::stage(&id, &d.path("st"), req::mount_cap("ext4")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{pool}: {e:?}");
        assert!(
            e.message().contains("not running") && e.message().contains(why),
            "{pool}: {e:?}"
        );
    }
}

/// The published node of each volume (LIST_VOLUMES_PUBLISHED_NODES): what
/// ControllerPublish recorded, in ListVolumes and ControllerGetVolume,
/// kept across a node plugin restart, gone with an unpublish or with the
/// volume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_nodes_are_recorded_listed_and_forgotten() {
    require!(false);
    let (mut d, mut c) = driver().await;
    let id = c.create_volume_id(req::create("pub", req::MIB, &[])).await;
    let cap = || Some(req::mount_cap("ext4"));
    let published = |c: &Clients| {
        let (mut ctl, id) = (c.controller.clone(), id.clone());
        async move {
            let got = ctl
                .controller_get_volume(csi::ControllerGetVolumeRequest {
                    volume_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
                .published_node_ids;
            let entries = ctl
                .list_volumes(csi::ListVolumesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .entries;
            let listed = entries
                .iter()
                .find(|e| e.volume.as_ref().unwrap().volume_id == id)
                .expect("the volume is listed")
                .status
                .clone()
                .unwrap()
                .published_node_ids;
            assert_eq!(got, listed, "ControllerGetVolume and ListVolumes agree");
            got
        }
    };
    assert!(published(&c).await.is_empty(), "not published yet");
    c.controller
        .controller_publish_volume(attach(&id, "node-1", cap()))
        .await
        .unwrap();
    assert_eq!(published(&c).await, ["node-1"]);

    d.kill_node();
    d.start_node();
    d.wait_ready().await;
    let mut c = d.clients().await;
    assert_eq!(published(&c).await, ["node-1"], "kept across a restart");

    let unpublish = |node: &str| csi::ControllerUnpublishVolumeRequest {
        volume_id: id.clone(),
        node_id: node.into(),
        ..Default::default()
    };
    c.controller
        .controller_unpublish_volume(unpublish("node-2"))
        .await
        .expect("never published there: done");
    assert_eq!(published(&c).await, ["node-1"]);
    c.controller
        .controller_unpublish_volume(unpublish("node-1"))
        .await
        .unwrap();
    assert!(published(&c).await.is_empty());

    // A record goes with its volume: a new volume of the same name starts
    // unpublished.
    c.controller
        .controller_publish_volume(attach(&id, "node-1", cap()))
        .await
        .unwrap();
    c.controller.delete_volume(req::delete(&id)).await.unwrap();
    let again = c.create_volume_id(req::create("pub", req::MIB, &[])).await;
    assert_eq!(again, id);
    assert!(
        published(&c).await.is_empty(),
        "not the old volume's record"
    );
}

/// While a volume's node does not answer (docs/operations.md, node loss):
/// DeleteVolume is UNAVAILABLE (the provisioner retries) and the volume
/// stays; ControllerUnpublish of that node-local volume is OK, so its
/// VolumeAttachment is not held forever, and leaves the node's record,
/// which the node still reports once it is back; the delete then goes
/// through and takes the record with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_whose_node_does_not_answer_is_kept_until_it_does() {
    require!(false);
    let (mut d, mut c) = driver().await;
    let id = c.create_volume_id(req::create("away", req::MIB, &[])).await;
    let get = |c: &Clients| {
        let (mut ctl, id) = (c.controller.clone(), id.clone());
        async move {
            ctl.controller_get_volume(csi::ControllerGetVolumeRequest { volume_id: id })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
                .published_node_ids
        }
    };
    c.controller
        .controller_publish_volume(attach(&id, "node-1", Some(req::mount_cap("ext4"))))
        .await
        .unwrap();
    let image = d.pool_dir.join("away.raw");
    let ready = |c: &Clients| {
        let mut identity = c.ctrl_identity.clone();
        async move {
            let probe = identity.probe(csi::ProbeRequest {}).await.unwrap();
            probe.into_inner().ready == Some(true)
        }
    };
    // Ready once its first inventory round found the agent (within 1 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ready(&c).await {
        assert!(std::time::Instant::now() < deadline, "controller not ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    d.kill_node();
    let err = c
        .controller
        .delete_volume(req::delete(&id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("node-1"), "{err:?}");
    assert!(image.exists(), "kept");
    // The controller stays ready (README: Probe), so no liveness probe
    // restarts it over a node's outage.
    assert!(ready(&c).await, "the controller stays ready");
    c.controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: "node-1".into(),
            ..Default::default()
        })
        .await
        .expect("a node that does not answer holds no attachment");

    d.start_node();
    d.wait_ready().await;
    let mut c = d.clients().await;
    assert_eq!(get(&c).await, ["node-1"], "the node's record stays");
    c.controller.delete_volume(req::delete(&id)).await.unwrap();
    assert!(!image.exists());
    let again = c.create_volume_id(req::create("away", req::MIB, &[])).await;
    assert_eq!(again, id);
    assert!(get(&c).await.is_empty(), "the record went with the volume");
}
