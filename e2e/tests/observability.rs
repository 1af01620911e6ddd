//! Metrics an operator scrapes, and wipe-on-delete doing what it says.

use pool_csi_e2e::{req, require, scrape, Driver, Options};
use pool_csi_proto::csi;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_metrics_count_rpcs_by_code_and_report_pool_space() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    c.node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap();
    let _ = c
        .node
        .node_stage_volume(req::stage(
            "v1:scratch:node-1:missing",
            &d.path("s"),
            req::mount_cap("ext4"),
        ))
        .await;
    let m = scrape(&d.node_metrics);
    assert!(
        m.contains(
            r#"pool_csi_rpc_total{component="node",method="/csi.v1.Node/NodeGetInfo",code="Ok"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"method="/csi.v1.Node/NodeStageVolume",code="NotFound"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"pool_csi_pool_running{pool="scratch",type="dir"} 1"#),
        "{m}"
    );
    let avail = m
        .lines()
        .find(|l| {
            l.starts_with(r#"pool_csi_pool_bytes{pool="scratch",type="dir",kind="available"}"#)
        })
        .unwrap();
    let bytes: u64 = avail.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes > 3 << 30, "{avail}");
}

/// The driver after a 16 MiB ext4 volume was staged and unstaged (it
/// stays).
async fn staged_and_unstaged() -> Driver {
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = c
        .create_volume_id(req::create("parts", 16 * req::MIB, &[]))
        .await;
    let staging = d.path("staging");
    c.node
        .node_stage_volume(req::stage(&id, &staging, req::mount_cap("ext4")))
        .await
        .unwrap();
    c.node
        .node_unstage_volume(req::unstage(&id, &staging))
        .await
        .unwrap();
    d
}

/// Staging reports its parts: a raw volume's first stage attaches a loop
/// device, probes, formats and mounts; unstaging unmounts and detaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_and_unstage_report_the_time_of_each_part() {
    require!(false);
    let d = staged_and_unstaged().await;
    let m = scrape(&d.node_metrics);
    for step in [
        "attach", "loop", "probe", "mkfs", "mount", "unmount", "detach",
    ] {
        let count = format!("pool_csi_stage_step_seconds_count{{step=\"{step}\"}} 1");
        assert!(m.contains(&count), "{count} in {m}");
        let sum = m
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "pool_csi_stage_step_seconds_sum{{step=\"{step}\"}} "
                ))
            })
            .unwrap_or_else(|| panic!("{step}'s sum in {m}"));
        let secs: f64 = sum.parse().unwrap();
        assert!(secs > 0.0 && secs < 30.0, "{step}: {secs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wipe_on_delete_zeroes_the_data_before_it_is_freed() {
    require!(false);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    for (name, wipe) in [("wiped", "true"), ("kept", "false")] {
        let id = c
            .controller
            .create_volume(req::create(name, 4 * req::MIB, &[("wipeOnDelete", wipe)]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let file = d.pool_dir.join(format!("{name}.raw"));
        std::fs::write(&file, vec![0xabu8; 4 << 20]).unwrap();
        // A second name for the same inode shows what happens to the bytes.
        let witness = d.pool_dir.join(format!(".pool-csi/witness-{name}"));
        std::fs::hard_link(&file, &witness).unwrap();
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(!file.exists());
        let bytes = std::fs::read(&witness).unwrap();
        let all_zero = bytes.iter().all(|b| *b == 0);
        assert_eq!(all_zero, wipe == "true", "{name}: wiped={all_zero}");
    }
}

/// The chart's Grafana dashboard and alerts query only metrics the driver
/// serves: each `pool_csi_*` name in `charts/pool-csi/files/dashboard.json`
/// and `templates/monitoring.yaml` is in a node plugin's scrape after a
/// stage and unstage, with the `kind` values the queries select.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_query_only_metrics_the_driver_serves() {
    require!(false);
    let d = staged_and_unstaged().await;
    let m = scrape(&d.node_metrics);
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/pool-csi");
    let mut queried = std::collections::BTreeSet::new();
    for file in ["files/dashboard.json", "templates/monitoring.yaml"] {
        let text = std::fs::read_to_string(chart.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("pool_csi_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            queried.insert(name);
        }
    }
    assert!(queried.len() >= 6, "{queried:?}");
    for name in &queried {
        let served = m
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(
            served,
            "{name} is queried by the chart but not served:\n{m}"
        );
    }
    // The pool panels and alerts select these kinds; the volume gauge counts.
    for kind in ["capacity", "allocation", "available"] {
        assert!(m.contains(&format!(r#"kind="{kind}"}}"#)), "{kind} in {m}");
    }
    assert!(
        m.contains(r#"pool_csi_pool_volumes{pool="scratch",type="dir",shared="false"} 1"#),
        "{m}"
    );
}
