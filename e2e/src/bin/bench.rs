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
    create_delete_in(
        c,
        concurrency,
        pool,
        "scratch",
        "create_delete_1GiB_sparse_raw",
        req::GIB,
    )
    .await
}

/// Pairs of CreateVolume + DeleteVolume of `bytes` in StorageClass pool
/// `sc_pool`, from `concurrency` workers, for RUN_FOR.
async fn create_delete_in(
    c: &Clients,
    concurrency: usize,
    pool: &str,
    sc_pool: &'static str,
    scenario: &str,
    bytes: i64,
) -> serde_json::Value {
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
                    let mut r = req::create(&format!("bench-{concurrency}-{i}"), bytes, &[]);
                    r.parameters.insert("pool".into(), sc_pool.into());
                    let v = c.controller.create_volume(r).await.unwrap();
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
    json!({"scenario": scenario, "pool": pool, "concurrency": concurrency, "pairs": n,
           "pairs_per_s": (n as f64 / secs).round(), "p50_us": lat.pct(0.5), "p99_us": lat.pct(0.99)})
}

/// The same pairs through the Controller service of the node plugin itself
/// (`--controller-service`, distributed provisioning): one process hop, the
/// agent called in process. Builds whose node serves no Controller service
/// say so.
async fn create_delete_in_node(d: &Driver, pool: &str) -> Vec<serde_json::Value> {
    let mut c = Clients::connect(&d.node_sock, &d.node_sock)
        .await
        .expect("the node's socket");
    let serves = c.node_serves_controller().await;
    let mut out = Vec::new();
    for conc in [1, 8, 32] {
        let mut line = match serves {
            true => create_delete(&c, conc, pool).await,
            false => {
                json!({"scenario": "create_delete_1GiB_sparse_raw", "concurrency": conc, "pool": pool,
                            "skipped": "this build's node plugin serves no Controller service"})
            }
        };
        line["via"] = json!("node");
        out.push(line);
    }
    out
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

/// The iscsi pool's own inventory (the agent's ListLuns) on a real tgtd
/// with `luns` LUNs: fresh (iscsi-ls + 2 tool runs per LUN), then reused
/// within the pool's 5 s window, as listings and GetCapacity use it.
async fn iscsi_inventory(d: &Driver, luns: usize) -> serde_json::Value {
    use pool_csi_proto::agent::{agent_client::AgentClient, ListLunsRequest};
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", d.agent_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let a = AgentClient::new(ch);
    let call = |mut a: AgentClient<_>| async move {
        let t = Instant::now();
        let got = a
            .list_luns(ListLunsRequest { pool: "san".into() })
            .await
            .unwrap();
        assert_eq!(got.into_inner().luns.len(), luns);
        us(t.elapsed())
    };
    let mut fresh = Lat(Vec::new());
    for _ in 0..3 {
        // Past the reuse window: the next call takes a fresh inventory.
        tokio::time::sleep(Duration::from_millis(5100)).await;
        fresh.0.push(call(a.clone()).await);
    }
    let mut lat = Lat(Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        lat.0.push(call(a.clone()).await);
    }
    json!({"scenario": "iscsi_inventory", "luns": luns, "fresh_p50_us": fresh.pct(0.5),
           "reused_p50_us": lat.pct(0.5), "reused_p99_us": lat.pct(0.99)})
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

/// The node's `pool_csi_stage_step_seconds` as step -> (calls, seconds);
/// empty for a build that does not report them.
async fn stage_steps(d: &Driver) -> std::collections::BTreeMap<String, (f64, f64)> {
    let text = pool_csi_e2e::scrape(&d.node_metrics);
    let mut steps = std::collections::BTreeMap::new();
    for l in text.lines() {
        let Some((series, value)) = l.split_once(' ') else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        for (suffix, count) in [("_count", true), ("_sum", false)] {
            let Some(step) = series
                .strip_prefix(&format!("pool_csi_stage_step_seconds{suffix}{{step=\""))
                .and_then(|r| r.strip_suffix("\"}"))
            else {
                continue;
            };
            let e: &mut (f64, f64) = steps.entry(step.to_string()).or_default();
            match count {
                true => e.0 = value,
                false => e.1 = value,
            }
        }
    }
    steps
}

/// NodeStageVolume and NodeUnstageVolume of a 64 MiB `format` volume with
/// ext4 on it (formatted by a first stage not counted), for RUN_FOR: each
/// call's p50, and the stage's parts (mean ms per step, from the node's
/// metrics) where the build reports them.
async fn stage_unstage(d: &Driver, c: &Clients, format: &str) -> serde_json::Value {
    let mut c = c.clone();
    let cap = req::mount_cap("ext4");
    let id = c
        .create_volume_id(req::create(
            &format!("stage-{format}"),
            64 * req::MIB,
            &[("volumeFormat", format)],
        ))
        .await;
    let staging = d.path(&format!("staging-bench-{format}"));
    let (mut stage, mut unstage) = (Lat(Vec::new()), Lat(Vec::new()));
    let mut before = stage_steps(d).await;
    let start = Instant::now();
    for round in 0.. {
        if round > 0 && start.elapsed() >= RUN_FOR {
            break;
        }
        let t = Instant::now();
        c.node
            .node_stage_volume(req::stage(&id, &staging, cap.clone()))
            .await
            .unwrap();
        let staged = t.elapsed();
        let t = Instant::now();
        c.node
            .node_unstage_volume(req::unstage(&id, &staging))
            .await
            .unwrap();
        match round {
            0 => before = stage_steps(d).await, // the first one formats
            _ => {
                stage.0.push(us(staged));
                unstage.0.push(us(t.elapsed()));
            }
        }
    }
    let after = stage_steps(d).await;
    let parts: serde_json::Map<String, serde_json::Value> = after
        .iter()
        .filter_map(|(step, (n, secs))| {
            let (n0, s0) = before.get(step).copied().unwrap_or_default();
            (*n > n0).then(|| {
                let ms = (secs - s0) / (n - n0) * 1000.0;
                (step.clone(), json!((ms * 100.0).round() / 100.0))
            })
        })
        .collect();
    c.controller.delete_volume(req::delete(&id)).await.unwrap();
    json!({"scenario": "stage_unstage_ext4", "format": format, "rounds": stage.0.len(),
           "stage_p50_us": stage.pct(0.5), "unstage_p50_us": unstage.pct(0.5), "parts_ms": parts})
}

/// What a listing walk lists.
#[derive(Clone, Copy, PartialEq)]
enum Listed {
    Volumes,
    Snapshots,
}

/// Walks ListVolumes or ListSnapshots in pages of `page`: (pages, entries
/// seen).
async fn walk_pages(c: &Clients, listed: Listed, page: i32) -> (usize, usize) {
    let mut c = c.clone();
    let (mut token, mut pages, mut seen) = (String::new(), 0, 0);
    loop {
        let starting_token = std::mem::take(&mut token);
        let (n, next) = match listed {
            Listed::Volumes => {
                let r = c
                    .controller
                    .list_volumes(csi::ListVolumesRequest {
                        max_entries: page,
                        starting_token,
                    })
                    .await
                    .expect("ListVolumes")
                    .into_inner();
                (r.entries.len(), r.next_token)
            }
            Listed::Snapshots => {
                let r = c
                    .controller
                    .list_snapshots(csi::ListSnapshotsRequest {
                        max_entries: page,
                        starting_token,
                        ..Default::default()
                    })
                    .await
                    .expect("ListSnapshots")
                    .into_inner();
                (r.entries.len(), r.next_token)
            }
        };
        pages += 1;
        seen += n;
        token = next;
        if token.is_empty() {
            return (pages, seen);
        }
    }
}

/// Walks ListVolumes or ListSnapshots in pages of 500 over a pool holding
/// `n` of them, three times; reports the walk's median time and its pages.
/// Volumes are sparse raw files put in place beside the driver, as an
/// administrator's would be; snapshots are copies of one real snapshot's
/// record (a listing reads records only). They are removed afterwards.
async fn list_walk(d: &Driver, c: &Clients, listed: Listed, n: usize) -> serde_json::Value {
    let mut cc = c.clone();
    let (names, scenario, source): (Vec<std::path::PathBuf>, _, _) = match listed {
        Listed::Volumes => {
            let names = (0..n).map(|i| d.pool_dir.join(format!("walk-{i:05}.raw")));
            let names = names.collect();
            for p in &names {
                std::fs::File::create(p).unwrap().set_len(1 << 20).unwrap();
            }
            (names, "list_volumes_walk", None)
        }
        Listed::Snapshots => {
            let r = req::create("walk-source", req::MIB, &[]);
            let v = cc.controller.create_volume(r).await.unwrap().into_inner();
            let id = v.volume.unwrap().volume_id;
            let snap = cc
                .controller
                .create_snapshot(req::snapshot("walk-snap", &id))
                .await
                .expect("CreateSnapshot")
                .into_inner();
            let dir = d.pool_dir.join(".pool-csi/snapshots");
            let record = std::fs::read(dir.join("walk-snap.json")).expect("the snapshot record");
            let names = (0..n).map(|i| dir.join(format!("walk-{i:05}.json")));
            let names = names.collect();
            for p in &names {
                std::fs::write(p, &record).unwrap();
            }
            (
                names,
                "list_snapshots_walk",
                Some((id, snap.snapshot.unwrap().snapshot_id)),
            )
        }
    };
    let mut times = Vec::new();
    let mut pages = 0;
    let mut seen = 0;
    for _ in 0..3 {
        let start = Instant::now();
        (pages, seen) = walk_pages(c, listed, 500).await;
        times.push(start.elapsed());
    }
    for p in &names {
        let _ = std::fs::remove_file(p);
    }
    if let Some((id, snapshot_id)) = source {
        let snap = csi::DeleteSnapshotRequest {
            snapshot_id,
            ..Default::default()
        };
        cc.controller.delete_snapshot(snap).await.unwrap();
        cc.controller.delete_volume(req::delete(&id)).await.unwrap();
    }
    times.sort();
    assert!(seen >= n, "the walk saw {seen} of {n}");
    json!({"scenario": scenario, "entries": n, "pages": pages, "page_size": 500,
           "walk_ms": (times[1].as_secs_f64() * 1000.0 * 10.0).round() / 10.0})
}

/// A volume group prepared beforehand (`POOL_CSI_BENCH_VG=<vg>:<pv>[,<pv>]`,
/// LVs tagged `pool-csi`): making 1,000 LVs takes lvm about a minute, too
/// long for every run. Served as pool `lvbench` without activation.
fn prepared_vg() -> Option<(String, String)> {
    let v = std::env::var("POOL_CSI_BENCH_VG").ok()?;
    let (vg, pvs) = v.split_once(':')?;
    Some((vg.to_string(), pvs.replace(',', ", ")))
}

/// ListVolumes over the prepared VG: one call for everything right after
/// start (a fresh lvm report) and again (the report reused while the PVs'
/// metadata headers are unchanged), and the walk in pages of 500.
async fn list_logical(c: &Clients) -> serde_json::Value {
    let c = c.clone();
    let once = || {
        let mut c = c.clone();
        async move {
            let t = Instant::now();
            let n = c
                .controller
                .list_volumes(csi::ListVolumesRequest::default())
                .await
                .expect("ListVolumes")
                .into_inner()
                .entries
                .len();
            (t.elapsed(), n)
        }
    };
    let (cold, n) = once().await;
    let mut warm = Vec::new();
    for _ in 0..5 {
        warm.push(once().await.0);
    }
    warm.sort();
    let t = Instant::now();
    walk_pages(&c, Listed::Volumes, 500).await;
    let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    json!({"scenario": "list_volumes_logical", "volumes": n, "first_ms": ms(cold),
           "again_ms": ms(warm[2]), "walk_500_ms": ms(t.elapsed())})
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A volume group on two loop devices for the logical-pool scenario; removed
/// on drop. Their files are on tmpfs (`/dev/shm`), as the file pools are,
/// unless POOL_CSI_BENCH_DISK=1: the figures are then the driver's and
/// lvm's, not the disk's flush latency (each metadata commit flushes).
struct BenchVg {
    name: String,
    pvs: Vec<String>,
    _dir: tempfile::TempDir,
}

impl BenchVg {
    fn new(on_disk: bool) -> Option<BenchVg> {
        pool_csi_e2e::which("lvm")?;
        let mut b = tempfile::Builder::new();
        b.prefix("pool-csi-bench-vg-");
        let shm = std::path::Path::new("/dev/shm");
        let dir = match on_disk || !shm.is_dir() {
            true => b.tempdir(),
            false => b.tempdir_in(shm),
        }
        .ok()?;
        let mut pvs = Vec::new();
        for n in ["a", "b"] {
            let f = dir.path().join(n);
            std::fs::File::create(&f).ok()?.set_len(4 << 30).ok()?;
            let out = pool_csi_e2e::tool("losetup", &["--find", "--show", f.to_str()?]);
            pvs.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }
        let name = format!("pcsibench{}", std::process::id());
        let mut args = vec![
            "vgcreate",
            "--config",
            "global{activation=0}",
            name.as_str(),
        ];
        args.extend(pvs.iter().map(String::as_str));
        tool_ok(
            "lvm",
            &[
                "pvcreate",
                "--config",
                "global{activation=0}",
                "-y",
                &pvs[0],
                &pvs[1],
            ],
        )?;
        tool_ok("lvm", &args)?;
        Some(BenchVg {
            name,
            pvs,
            _dir: dir,
        })
    }

    fn pool_yaml(&self) -> String {
        format!("---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: lvm }}\nspec:\n  type: logical\n  source: {{ name: {}, devices: [{}] }}\n  lvm: {{ noActivation: true }}\n", self.name, self.pvs.join(", "))
    }
}

fn tool_ok(p: &str, a: &[&str]) -> Option<()> {
    pool_csi_e2e::tool(p, a).status.success().then_some(())
}

impl Drop for BenchVg {
    fn drop(&mut self) {
        let pvs: Vec<&str> = self.pvs.iter().map(String::as_str).collect();
        pool_csi_e2e::remove_vg(&self.name, &pvs);
        for pv in &self.pvs {
            pool_csi_e2e::tool("losetup", &["-d", pv]);
        }
    }
}

/// `n` loop devices attached, each over a 1 MiB file of its own in `dir`
/// (detached when dropped, only while still theirs).
fn attached_loops(dir: &std::path::Path, n: usize) -> Vec<pool_csi_e2e::LoopDisk> {
    (0..n)
        .map(|i| pool_csi_e2e::LoopDisk::new(dir, &format!("busy-{i}"), 1, false))
        .collect()
}

/// Every scenario against the binaries in `bin` (None: this build).
async fn matrix(
    bin: Option<std::path::PathBuf>,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let on_disk = std::env::var_os("POOL_CSI_BENCH_DISK").is_some_and(|v| v == "1");
    let pool = if on_disk { "disk" } else { "tmpfs" };
    // POOL_CSI_BENCH_ONLY=probe,publish: only the scenarios whose names start so.
    let only = std::env::var("POOL_CSI_BENCH_ONLY").unwrap_or_default();
    let want =
        |scenario: &str| only.is_empty() || only.split(',').any(|p| scenario.starts_with(p.trim()));
    let vg = want("create_delete_64MiB_logical")
        .then(|| BenchVg::new(on_disk))
        .flatten();
    let mut extra_pools = vg.as_ref().map(BenchVg::pool_yaml).unwrap_or_default();
    // A real iSCSI target with 8 LUNs, where tgtd and libiscsi are installed.
    let tgt_dir = tempfile::tempdir()?;
    const LUNS: usize = 8;
    let target = (want("iscsi_inventory")
        && pool_csi_e2e::which("tgtd").is_some()
        && pool_csi_e2e::which("iscsi-ls").is_some())
    .then(|| {
            let t = pool_csi_e2e::tgt::Target::start(tgt_dir.path());
            t.target("1", "iqn.2026-11.io.pool-csi:bench");
            for l in 1..=LUNS {
                t.lun(tgt_dir.path(), "1", &l.to_string(), 16);
            }
            extra_pools.push_str(&format!(
                "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: san }}\nspec:\n  type: iscsi\n  source: {{ host: \"127.0.0.1:{}\", device: iqn.2026-11.io.pool-csi:bench }}\n",
                t.port
            ));
            t
        });
    let prepared = want("list_volumes_logical").then(prepared_vg).flatten();
    if let Some((vg, pvs)) = &prepared {
        extra_pools.push_str(&format!(
            "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: lvbench }}\nspec:\n  type: logical\n  source: {{ name: {vg}, devices: [{pvs}] }}\n  lvm: {{ noActivation: true }}\n"
        ));
    }
    let opts = Options {
        tmpfs_bytes: (!on_disk).then_some(8 << 30),
        log_filter: "error".into(),
        extra_pools,
        bin_dir: bin,
        controller_service_in_node: true,
        ..Default::default()
    };
    let d = Driver::start(opts).await;
    let c = d.clients().await;
    let (node_pid, ctrl_pid) = d.pids();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = vec![
        json!({"scenario": "idle_rss", "node_kib": rss_kib(node_pid), "controller_kib": rss_kib(ctrl_pid)}),
    ];
    if want("probe") {
        out.push(probe(&c).await);
    }
    if want("agent_create_delete") {
        out.push(agent_create_delete(&d).await);
    }
    for conc in [1, 8, 32]
        .into_iter()
        .filter(|_| want("create_delete_1GiB"))
    {
        out.push(create_delete(&c, conc, pool).await);
    }
    if want("create_delete_1GiB") {
        out.extend(create_delete_in_node(&d, pool).await);
    }
    if !want("create_delete_64MiB_logical") {
    } else if vg.is_some() {
        for conc in [1, 8] {
            out.push(
                create_delete_in(
                    &c,
                    conc,
                    &format!("lvm-noactivation-{pool}"),
                    "lvm",
                    "create_delete_64MiB_logical",
                    64 * req::MIB,
                )
                .await,
            );
        }
    } else {
        out.push(
            json!({"scenario": "create_delete_64MiB_logical", "skipped": "needs lvm2 (dev/setup)"}),
        );
    }
    for (listed, scenario) in [
        (Listed::Volumes, "list_volumes_walk"),
        (Listed::Snapshots, "list_snapshots_walk"),
    ] {
        for n in [1_000, 10_000].into_iter().filter(|_| want(scenario)) {
            out.push(list_walk(&d, &c, listed, n).await);
        }
    }
    for format in ["raw", "qcow2", "ploop"]
        .into_iter()
        .filter(|_| want("stage_unstage"))
    {
        out.push(stage_unstage(&d, &c, format).await);
    }
    match &prepared {
        Some(_) => out.push(list_logical(&c).await),
        None if !want("list_volumes_logical") || !only.is_empty() => {}
        None => out.push(
            json!({"scenario": "list_volumes_logical", "skipped": "set POOL_CSI_BENCH_VG=<vg>:<pv>[,<pv>] to a VG with LVs tagged pool-csi"}),
        ),
    }
    for conc in [1, 4].into_iter().filter(|_| want("node_publish")) {
        out.push(publish_unpublish(&d, &c, conc).await);
    }
    match &target {
        Some(_) => out.push(iscsi_inventory(&d, LUNS).await),
        None if !want("iscsi_inventory") => {}
        None => out.push(
            json!({"scenario": "iscsi_inventory", "skipped": "needs tgtd and iscsi-ls (dev/setup)"}),
        ),
    }
    out.push(
        json!({"scenario": "rss_after_load", "node_kib": rss_kib(node_pid), "controller_kib": rss_kib(ctrl_pid)}),
    );
    Ok(out)
}

/// A scenario's identity: its name and the parameters that are not results.
fn key(v: &serde_json::Value) -> String {
    [
        "scenario",
        "concurrency",
        "pool",
        "luns",
        "volumes",
        "entries",
        "format",
        "via",
    ]
    .iter()
    .filter_map(|k| v.get(*k).map(|x| format!("{k}={x}")))
    .collect::<Vec<_>>()
    .join(",")
}

/// Each scenario's numeric results averaged over `runs`.
fn mean(runs: &[Vec<serde_json::Value>]) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = runs[0].clone();
    for v in &mut out {
        let k = key(v);
        let same: Vec<&serde_json::Value> = runs
            .iter()
            .filter_map(|r| r.iter().find(|x| key(x) == k))
            .collect();
        if let Some(obj) = v.as_object_mut() {
            for (name, val) in obj.iter_mut() {
                if val.is_number() {
                    let xs: Vec<f64> = same.iter().filter_map(|x| x[name].as_f64()).collect();
                    *val = json!(xs.iter().sum::<f64>() / xs.len() as f64);
                }
            }
        }
    }
    out
}

/// new / old for every numeric result the two runs share. A new build's
/// pairs through the node's own Controller service are also set against
/// the old build's pairs through pool-csi-controller (`against`), where
/// the old build has no such path.
fn ratios(old: &[serde_json::Value], new: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for n in new {
        let same = old
            .iter()
            .find(|o| key(o) == key(n) && o.get("skipped").is_none());
        let mut against = None;
        let o = match same {
            Some(o) => o,
            None if n["via"] == "node" => {
                let mut k = n.clone();
                k.as_object_mut().map(|m| m.remove("via"));
                let Some(o) = old.iter().find(|o| key(o) == key(&k)) else {
                    continue;
                };
                against = Some("the old build through pool-csi-controller");
                o
            }
            None => continue,
        };
        let mut r = serde_json::Map::new();
        for (k, v) in n.as_object().into_iter().flatten() {
            let (Some(a), Some(b)) = (v.as_f64(), o.get(k).and_then(|x| x.as_f64())) else {
                continue;
            };
            if b > 0.0 && !["concurrency", "luns", "calls", "pairs"].contains(&k.as_str()) {
                r.insert(k.clone(), json!((a / b * 100.0).round() / 100.0));
            }
        }
        if !r.is_empty() {
            let mut line = json!({"compare": key(n), "new_over_old": r});
            if let Some(a) = against {
                line["against"] = json!(a);
            }
            out.push(line);
        }
    }
    out
}

const USAGE: &str = "usage: pool-csi-bench [--compare OLD_BIN_DIR | --csi CONTROLLER_SOCKET]";

/// The create+delete scenarios against another driver's CSI controller on
/// the unix socket `socket` (the reference driver, say, started by hand),
/// with the same load generator: its figures stand beside this driver's.
async fn other_driver(
    socket: &std::path::Path,
) -> Result<Vec<serde_json::Value>, Box<dyn std::error::Error>> {
    let c = Clients::connect(socket, socket).await?;
    let mut out = Vec::new();
    for conc in [1, 8, 32] {
        let mut line = create_delete(&c, conc, "other").await;
        line["driver"] = json!(socket.display().to_string());
        out.push(line);
    }
    Ok(out)
}

/// `pool-csi-bench [--compare OLD_BIN_DIR | --csi CONTROLLER_SOCKET]`: one JSON line per scenario;
/// with `--compare`, the matrix runs four times in one go — the binaries in
/// OLD_BIN_DIR, this build, this build, the old ones — and the last lines
/// are the ratios new/old of the two builds' means.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(why) = pool_csi_e2e::missing_requirements(false) {
        return Err(format!("the benchmark {why}").into());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let old = match args.as_slice() {
        [] => None,
        [flag, dir] if flag == "--compare" => Some(std::path::PathBuf::from(dir)),
        [flag, socket] if flag == "--csi" => {
            for line in other_driver(std::path::Path::new(socket)).await? {
                println!("{line}");
            }
            return Ok(());
        }
        _ => return Err(USAGE.into()),
    };
    // POOL_CSI_BENCH_LOOPS=N: N loop devices stay attached for the run, as
    // on a node with N volumes staged (a delete that asks every loop device
    // about its backing file pays for each).
    let loops: usize = match std::env::var("POOL_CSI_BENCH_LOOPS") {
        Ok(n) => n.parse().map_err(|_| "POOL_CSI_BENCH_LOOPS is a count")?,
        Err(_) => 0,
    };
    let loop_dir = tempfile::tempdir()?;
    let _attached = attached_loops(loop_dir.path(), loops);
    if loops > 0 {
        println!(
            "{}",
            json!({"setup": "loop_devices_attached", "count": loops})
        );
    }
    let Some(old_dir) = old else {
        for line in matrix(None).await? {
            println!("{line}");
        }
        return Ok(());
    };
    // A B B A: the machine drifts during a run; each build's figures are
    // the mean of its two runs.
    let mut old = Vec::new();
    let mut new = Vec::new();
    for (i, build) in ["old", "new", "new", "old"].into_iter().enumerate() {
        let bin = (build == "old").then(|| old_dir.clone());
        let lines = matrix(bin).await?;
        for line in &lines {
            let mut l = line.clone();
            l["build"] = json!(build);
            l["round"] = json!(i);
            println!("{l}");
        }
        match build {
            "old" => old.push(lines),
            _ => new.push(lines),
        }
    }
    for r in ratios(&mean(&old), &mean(&new)) {
        println!("{r}");
    }
    Ok(())
}
