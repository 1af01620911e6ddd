//! Distributed provisioning: with `--controller-service` the node plugin
//! serves the CSI Controller service on its own socket, for its own pools,
//! calling its agent in process. A volume's life through it, and that it
//! answers as pool-csi-controller does where the two can both answer, and
//! touches nothing of another node.

use pool_csi_e2e::{clients::Clients, req, require, Driver, Options};
use pool_csi_proto::csi;
use std::collections::HashMap;

fn topo(node: &str) -> csi::Topology {
    csi::Topology {
        segments: HashMap::from([("pool-csi.io/node".to_string(), node.to_string())]),
    }
}

/// A 1 MiB volume `name`, required on `node` (as the node-deployment
/// provisioner asks: the scheduler's node).
fn on(name: &str, node: &str) -> csi::CreateVolumeRequest {
    let mut r = req::create(name, req::MIB, &[]);
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![topo(node)],
        preferred: vec![topo(node)],
    });
    r
}

/// Whether the controller lists volume `id`.
async fn listed(c: &mut Clients, id: &str) -> bool {
    let got = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    got.entries
        .iter()
        .any(|e| e.volume.as_ref().is_some_and(|v| v.volume_id == id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_makes_its_own_volumes_through_its_controller_service() {
    require!(false);
    let d = Driver::start(Options {
        controller_service_in_node: true,
        extra_nodes: vec![("node-2".into(), 1 << 30)],
        // A shared pool and a LUN pool (neither needs to run here).
        extra_pools: format!(
            "{}---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: luns }}\nspec: {{ type: scsi, source: {{ adapter: host999 }} }}\n",
            pool_csi_e2e::manifests::NOT_RUNNING
        ),
        ..Default::default()
    })
    .await;
    let mut central = d.clients().await;
    let mut here = Clients::connect(&d.node_sock, &d.node_sock).await.unwrap();

    // It says so (only when asked), and offers what the controller offers.
    assert!(here.node_serves_controller().await);
    let mut plain = Clients::connect(&d.extra[0].node_sock, &d.extra[0].node_sock)
        .await
        .unwrap();
    assert!(!plain.node_serves_controller().await);
    let ours = here
        .controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let theirs = central
        .controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ours, theirs);

    // Create (twice: the same volume), stage, publish, write, expand, delete.
    let vol = here
        .controller
        .create_volume(on("here", "node-1"))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.accessible_topology, vec![topo("node-1")]);
    let again = here
        .controller
        .create_volume(on("here", "node-1"))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, vol.volume_id);
    let id = vol.volume_id;
    let image = d.pool_dir.join("here.raw");
    assert!(image.exists(), "made in node-1's pool");
    assert!(
        listed(&mut central, &id).await,
        "the controller sees the same volume"
    );
    let cap = req::mount_cap("ext4");
    let (staging, target) = (d.path("staging"), d.path("pod/mount"));
    here.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await
        .expect("stage");
    here.node
        .node_publish_volume(req::publish(&id, &staging, &target, cap, false))
        .await
        .expect("publish");
    std::fs::write(target.join("f"), b"made by the node itself").unwrap();
    let grown = here
        .controller
        .controller_expand_volume(req::expand(&id, 64 * req::MIB))
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    assert_eq!(grown.capacity_bytes, 64 * req::MIB);
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        64 * req::MIB as u64
    );
    here.node
        .node_unpublish_volume(req::unpublish(&id, &target))
        .await
        .unwrap();
    here.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .unwrap();
    here.controller
        .delete_volume(req::delete(&id))
        .await
        .expect("DeleteVolume");
    assert!(!image.exists(), "deleted");
    here.controller
        .delete_volume(req::delete(&id))
        .await
        .expect("a second delete is OK");

    // What only a view of every node can tell is left to the controller:
    // shared pools (which nodes reach a volume) and LUN pools (whether a
    // LUN went to another volume). A pool not here is RESOURCE_EXHAUSTED:
    // the scheduler tries another node.
    for (pool, why) in [
        ("nfs0", "is shared by several nodes"),
        ("luns", "hands out LUNs"),
    ] {
        let e = here
            .controller
            .create_volume(req::create("elsewhere", req::MIB, &[("pool", pool)]))
            .await
            .expect_err(pool);
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains(why) && e.message().contains("provisioning: controller"),
            "{e:?}"
        );
    }
    let e = here
        .controller
        .create_volume(req::create("elsewhere", req::MIB, &[("pool", "nowhere")]))
        .await
        .expect_err("no such pool here");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let gone = pool_csi_common::VolumeId::new("nowhere", None, "x").to_string();
    let e = here
        .controller
        .delete_volume(req::delete(&gone))
        .await
        .expect_err("a pool not here is not a pool that is gone");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // Ids do not depend on who made the volume: one the controller made is
    // deleted here, as after switching modes.
    let made = central
        .create_volume_id(on("made-centrally", "node-1"))
        .await;
    here.controller
        .delete_volume(req::delete(&made))
        .await
        .expect("DeleteVolume of the controller's volume");
    assert!(!d.pool_dir.join("made-centrally.raw").exists());

    // Another node's volumes are not this node's to make or delete.
    let far = here
        .controller
        .create_volume(on("far", "node-2"))
        .await
        .expect_err("node-2 is not served here");
    // The scheduler tries another node on RESOURCE_EXHAUSTED.
    assert_eq!(far.code(), tonic::Code::ResourceExhausted, "{far:?}");
    let far_dir = d.path("node-2/pool");
    assert!(
        !far_dir.join("far.raw").exists(),
        "nothing made on node-2: {far:?}"
    );
    let theirs = central.create_volume_id(on("theirs", "node-2")).await;
    let refused = here
        .controller
        .delete_volume(req::delete(&theirs))
        .await
        .expect_err("a volume of node-2 is never reported deleted here");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("node-2")
            && refused.message().contains("serves that node's pools only"),
        "{refused:?}"
    );
    assert!(
        listed(&mut central, &theirs).await,
        "node-2's volume is still there"
    );
}
