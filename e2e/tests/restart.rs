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

/// A node killed between freezing a filesystem for a snapshot and thawing
/// it: the freeze is in the node's journal (`<state>/frozen/`, one file per
/// mount holding its path, written before the freeze), and the restarted
/// node thaws it before serving. The crash is staged by hand here (the
/// freeze with `fsfreeze`, the entry as the node writes it); the crash
/// trials (`crash.rs`) hit the same window at random.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_a_crash_left_frozen_is_thawed_at_start_up() {
    require!(false);
    let mut d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = c
        .controller
        .create_volume(req::create("frozen", 64 * req::MIB, &[]))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id;
    let staging = d.path("staging");
    c.node
        .node_stage_volume(req::stage(&id, &staging, req::mount_cap("ext4")))
        .await
        .expect("stage");
    d.kill_node();
    let journal = d.dir.path().join("state/frozen");
    std::fs::create_dir_all(&journal).unwrap();
    std::fs::write(journal.join("0123456789abcdef"), staging.to_str().unwrap()).unwrap();
    let out = pool_csi_e2e::tool("fsfreeze", &["--freeze", staging.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    d.start_node();
    d.wait_ready().await;
    // A write completes only on a thawed filesystem; never hang the run.
    let file = staging.join("after");
    let wrote = std::thread::spawn(move || std::fs::write(&file, b"thawed"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !wrote.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if !wrote.is_finished() {
        pool_csi_e2e::tool("fsfreeze", &["--unfreeze", staging.to_str().unwrap()]);
        panic!("the restarted node left the staged filesystem frozen");
    }
    wrote.join().unwrap().expect("write after the restart");
    assert_eq!(
        std::fs::read_dir(&journal).unwrap().count(),
        0,
        "journal not cleared"
    );
    let mut c = d.clients().await;
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .expect("unstage");
}
