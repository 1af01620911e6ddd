//! The driver's main job on an embedded default: a node plugin and a
//! controller on a dir pool under a scratch directory, one volume walked
//! through its whole life, each step printed. Needs root (loop devices,
//! mkfs, mounts); run it through `dev/demo`.

use pool_csi_e2e::{req, Driver, Options};
use pool_csi_proto::csi;
use std::time::Instant;

fn step(n: &mut u32, what: &str, t: Instant) {
    *n += 1;
    println!(
        "{n:>2}. {what:<64} {:>8.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(why) = pool_csi_e2e::missing_requirements(false) {
        return Err(format!("the demo {why}").into());
    }
    let fs = std::env::args().nth(1).unwrap_or_else(|| "xfs".into());
    let mut n = 0;
    let t = Instant::now();
    let d = Driver::start(Options {
        tmpfs_bytes: Some(2 << 30),
        log_filter: "error".into(),
        ..Default::default()
    })
    .await;
    println!(
        "pool-csi demo: node plugin + controller, dir pool 'scratch' at {}\n",
        d.pool_dir.display()
    );
    step(
        &mut n,
        "started pool-csi-node and pool-csi-controller; both ready",
        t,
    );
    let mut c = d.clients().await;
    let cap = req::mount_cap(&fs);

    let t = Instant::now();
    let vol = c
        .controller
        .create_volume(req::create("pvc-demo", 512 * req::MIB, &[]))
        .await?
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();
    step(
        &mut n,
        &format!("CreateVolume 512 MiB sparse raw -> {id}"),
        t,
    );

    let (staging, target) = (d.path("globalmount"), d.path("pods/demo/volume"));
    let t = Instant::now();
    c.node
        .node_stage_volume(req::stage(&id, &staging, cap.clone()))
        .await?;
    step(
        &mut n,
        &format!("NodeStageVolume: loop device, mkfs.{fs}, mount"),
        t,
    );
    let t = Instant::now();
    c.node
        .node_publish_volume(req::publish(&id, &staging, &target, cap.clone(), false))
        .await?;
    step(
        &mut n,
        "NodePublishVolume: bind mount into the pod's path",
        t,
    );

    let t = Instant::now();
    std::fs::write(target.join("greeting.txt"), b"hello from pool-csi\n")?;
    let back = std::fs::read_to_string(target.join("greeting.txt"))?;
    step(
        &mut n,
        &format!("wrote and read back: {:?}", back.trim()),
        t,
    );

    let t = Instant::now();
    let e = c
        .controller
        .controller_expand_volume(req::expand(&id, req::GIB))
        .await?
        .into_inner();
    step(
        &mut n,
        &format!("ControllerExpandVolume -> {} MiB", e.capacity_bytes >> 20),
        t,
    );
    let t = Instant::now();
    match c.node.node_expand_volume(req::node_expand(&id, &target, req::GIB)).await {
        Ok(r) => step(&mut n, &format!("NodeExpandVolume: loop refreshed, {fs} grown online -> {} MiB", r.into_inner().capacity_bytes >> 20), t),
        Err(e) => step(&mut n, &format!("NodeExpandVolume: {} (this machine denies online ext4 resize; xfs grows online here: `dev/demo xfs`)", e.code()), t),
    }

    let t = Instant::now();
    let snap = c
        .controller
        .create_snapshot(req::snapshot("snap-demo", &id))
        .await?
        .into_inner()
        .snapshot
        .unwrap();
    step(
        &mut n,
        &format!(
            "CreateSnapshot -> {} ({} MiB)",
            snap.snapshot_id,
            snap.size_bytes >> 20
        ),
        t,
    );
    let t = Instant::now();
    let clone = c
        .controller
        .create_volume(req::restore_of("pvc-restored", req::GIB, &snap.snapshot_id))
        .await?
        .into_inner()
        .volume
        .unwrap();
    step(
        &mut n,
        &format!("CreateVolume from the snapshot -> {}", clone.volume_id),
        t,
    );
    let t = Instant::now();
    let st2 = d.path("globalmount-restored");
    c.node
        .node_stage_volume(req::stage(&clone.volume_id, &st2, cap.clone()))
        .await?;
    let copied = std::fs::read_to_string(st2.join("greeting.txt"))?;
    c.node
        .node_unstage_volume(req::unstage(&clone.volume_id, &st2))
        .await?;
    step(
        &mut n,
        &format!("staged the restored volume; it holds {:?}", copied.trim()),
        t,
    );

    let t = Instant::now();
    let stats = c
        .node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let b = &stats.usage[0];
    step(
        &mut n,
        &format!(
            "NodeGetVolumeStats: {} KiB used of {} KiB, condition ok: {}",
            b.used >> 10,
            b.total >> 10,
            !stats.volume_condition.unwrap_or_default().abnormal
        ),
        t,
    );

    let t = Instant::now();
    c.node
        .node_unpublish_volume(req::unpublish(&id, &target))
        .await?;
    step(&mut n, "NodeUnpublishVolume", t);
    let t = Instant::now();
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await?;
    step(
        &mut n,
        "NodeUnstageVolume: unmounted, loop device detached",
        t,
    );
    let t = Instant::now();
    for v in [&clone.volume_id, &id] {
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.clone(),
                ..Default::default()
            })
            .await?;
    }
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await?;
    step(&mut n, "DeleteVolume x2, DeleteSnapshot", t);
    let left = std::fs::read_dir(&d.pool_dir)?
        .flatten()
        .filter(|e| e.file_name() != ".pool-csi")
        .count();
    println!("\ndone: the pool holds {left} volumes; everything was cleaned up");
    Ok(())
}
