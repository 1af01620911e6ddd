//! The node plugin dies (SIGKILL) with volumes staged and published; the new
//! process finds everything again from the mount table, sysfs and pid files.

use pool_csi_e2e::{req, require, Driver, Options};
use pool_csi_proto::csi;

async fn survives_restart(format: &str) {
    let mut d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let cap = req::mount_cap("ext4");
    let id = c
        .controller
        .create_volume(req::create(
            "keep",
            64 * req::MIB,
            &[("volumeFormat", format)],
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let (staging, target) = (d.path("staging"), d.path("target"));
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await
        .expect("stage");
    c.node
        .node_publish_volume(req::publish(&id, &staging, &target, cap.clone(), false))
        .await
        .expect("publish");
    std::fs::write(target.join("f"), b"before the crash").unwrap();

    d.kill_node();
    d.start_node();
    d.wait_ready().await;
    let mut c = d.clients().await;

    // Retries after the crash converge: same mounts, same device, no duplicates.
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await
        .expect("stage after restart");
    c.node
        .node_publish_volume(req::publish(&id, &staging, &target, cap.clone(), false))
        .await
        .expect("publish after restart");
    assert_eq!(
        std::fs::read(target.join("f")).unwrap(),
        b"before the crash"
    );
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.volume_condition.unwrap().abnormal);
    c.node
        .node_unpublish_volume(req::unpublish(&id, &target))
        .await
        .expect("unpublish");
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
    // Nothing is left attached: the volume can be deleted.
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .expect("delete after unstage");
    let loops = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| b.starts_with(d.dir.path().to_str().unwrap()))
        })
        .count();
    assert_eq!(loops, 0, "loop devices left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_volume_survives_a_node_plugin_crash() {
    require!(false);
    survives_restart("raw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_volume_and_its_daemon_survive_a_node_plugin_crash() {
    require!(true);
    survives_restart("qcow2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ploop_volume_and_its_daemon_survive_a_node_plugin_crash() {
    require!(true);
    survives_restart("ploop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_backing_file_is_an_abnormal_condition() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let cap = req::mount_cap("ext4");
    let id = c
        .controller
        .create_volume(req::create("gone", 64 * req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let staging = d.path("staging");
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap))
        .await
        .expect("stage");
    std::fs::remove_file(d.pool_dir.join("gone.raw")).unwrap();
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: staging.display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cond = stats.volume_condition.unwrap();
    assert!(cond.abnormal && cond.message.contains("gone"), "{cond:?}");
    let get = c
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(get.code(), tonic::Code::NotFound);
    // Unstage still cleans up: unmount and free the loop device of the deleted file.
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
}
