//! The benchmark: drives the running binaries through their sockets and
//! prints one JSON line per scenario. Run it through `dev/bench` (release
//! build). The pool is on tmpfs unless POOL_CSI_BENCH_DISK=1, which shows
//! the cost of durable writes (every create and delete fsyncs).

use pool_csi_e2e::{clients::Clients, req, Driver, Options};
use pool_csi_proto::csi;
use serde_json::json;
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    sync::Arc,
    time::{Duration, Instant},
};

const RUN_FOR: Duration = Duration::from_secs(3);

struct Lat(Vec<u32>);

impl Lat {
    fn pct(&mut self, p: f64) -> u32 {
        self.0.sort_unstable();
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0.get(i).copied().unwrap_or(0)
    }
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

async fn probe(c: &Clients) -> serde_json::Value {
    let mut c = c.clone();
    for _ in 0..200 {
        c.node_identity.probe(csi::ProbeRequest {}).await.unwrap();
    }
    let mut lat = Lat(Vec::new());
    let start = Instant::now();
    while start.elapsed() < RUN_FOR {
        let t = Instant::now();
        c.node_identity.probe(csi::ProbeRequest {}).await.unwrap();
        lat.0.push(us(t.elapsed()));
    }
    let n = lat.0.len();
    json!({"scenario": "probe", "concurrency": 1, "calls": n, "ops_per_s": (n as f64 / start.elapsed().as_secs_f64()).round(),
           "p50_us": lat.pct(0.5), "p99_us": lat.pct(0.99)})
}

async fn create_delete(c: &Clients, concurrency: usize, pool: &str) -> serde_json::Value {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut c, next) = (c.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < RUN_FOR {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let v = c
                        .controller
                        .create_volume(req::create(
                            &format!("bench-{concurrency}-{i}"),
                            req::GIB,
                            &[],
                        ))
                        .await
                        .unwrap();
                    let id = v.into_inner().volume.unwrap().volume_id;
                    c.controller
                        .delete_volume(csi::DeleteVolumeRequest {
                            volume_id: id,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    lat.push(us(t.elapsed()));
                }
                lat
            })
        })
        .collect();
    let mut lat = Lat(Vec::new());
    for w in workers {
        lat.0.extend(w.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    let n = lat.0.len();
    json!({"scenario": "create_delete_1GiB_sparse_raw", "pool": pool, "concurrency": concurrency, "pairs": n,
           "pairs_per_s": (n as f64 / secs).round(), "p50_us": lat.pct(0.5), "p99_us": lat.pct(0.99)})
}

/// The same pairs straight to the node agent (one hop instead of two), to
/// show how the time splits between the controller hop and the storage work.
async fn agent_create_delete(d: &Driver) -> serde_json::Value {
    use pool_csi_proto::agent::{
        agent_client::AgentClient, CreateVolumeRequest, DeleteVolumeRequest,
    };
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", d.agent_addr))
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();
    let mut a = AgentClient::new(ch);
    let mut lat = Lat(Vec::new());
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < RUN_FOR {
        i += 1;
        let name = format!("direct-{i}");
        let t = Instant::now();
        let req = CreateVolumeRequest {
            pool: "scratch".into(),
            name: name.clone(),
            required_bytes: 1 << 30,
            ..Default::default()
        };
        a.create_volume(req).await.unwrap();
        a.delete_volume(DeleteVolumeRequest {
            pool: "scratch".into(),
            name,
            wipe: false,
        })
        .await
        .unwrap();
        lat.0.push(us(t.elapsed()));
    }
    let n = lat.0.len();
    json!({"scenario": "agent_create_delete_1GiB_sparse_raw", "concurrency": 1, "pairs": n,
           "pairs_per_s": (n as f64 / start.elapsed().as_secs_f64()).round(), "p50_us": lat.pct(0.5), "p99_us": lat.pct(0.99)})
}

async fn publish_unpublish(d: &Driver, c: &Clients, concurrency: usize) -> serde_json::Value {
    let cap = req::mount_cap("ext4");
    let mut vols = Vec::new();
    for w in 0..concurrency {
        let mut c = c.clone();
        let id = c
            .controller
            .create_volume(req::create(
                &format!("pub-{concurrency}-{w}"),
                64 * req::MIB,
                &[],
            ))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let staging = d.path(&format!("staging-{concurrency}-{w}"));
        c.node
            .node_stage_volume(req::stage(&id, &staging, cap.clone()))
            .await
            .unwrap();
        vols.push((id, staging));
    }
    let start = Instant::now();
    let workers: Vec<_> = vols
        .iter()
        .enumerate()
        .map(|(w, (id, staging))| {
            let (mut c, id, staging, cap) = (c.clone(), id.clone(), staging.clone(), cap.clone());
            let target = d.path(&format!("target-{concurrency}-{w}"));
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < RUN_FOR {
                    let t = Instant::now();
                    c.node
                        .node_publish_volume(req::publish(
                            &id,
                            &staging,
                            &target,
                            cap.clone(),
                            false,
                        ))
                        .await
                        .unwrap();
                    c.node
                        .node_unpublish_volume(req::unpublish(&id, &target))
                        .await
                        .unwrap();
                    lat.push(us(t.elapsed()));
                }
                lat
            })
        })
        .collect();
    let mut lat = Lat(Vec::new());
    for w in workers {
        lat.0.extend(w.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    let mut c = c.clone();
    for (id, staging) in vols {
        c.node
            .node_unstage_volume(req::unstage(&id, &staging))
            .await
            .unwrap();
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let n = lat.0.len();
    json!({"scenario": "node_publish_unpublish_bind", "concurrency": concurrency, "pairs": n,
           "pairs_per_s": (n as f64 / secs).round(), "p50_us": lat.pct(0.5), "p99_us": lat.pct(0.99)})
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(why) = pool_csi_e2e::missing_requirements(false) {
        return Err(format!("the benchmark {why}").into());
    }
    let on_disk = std::env::var_os("POOL_CSI_BENCH_DISK").is_some_and(|v| v == "1");
    let pool = if on_disk { "disk" } else { "tmpfs" };
    let d = Driver::start(Options {
        tmpfs_bytes: (!on_disk).then_some(8 << 30),
        log_filter: "error".into(),
        ..Default::default()
    })
    .await;
    let c = d.clients().await;
    let (node_pid, ctrl_pid) = d.pids();
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "{}",
        json!({"scenario": "idle_rss", "node_kib": rss_kib(node_pid), "controller_kib": rss_kib(ctrl_pid)})
    );
    println!("{}", probe(&c).await);
    println!("{}", agent_create_delete(&d).await);
    for conc in [1, 8, 32] {
        println!("{}", create_delete(&c, conc, pool).await);
    }
    for conc in [1, 4] {
        println!("{}", publish_unpublish(&d, &c, conc).await);
    }
    println!(
        "{}",
        json!({"scenario": "rss_after_load", "node_kib": rss_kib(node_pid), "controller_kib": rss_kib(ctrl_pid)})
    );
    Ok(())
}
