//! Crash trials: a storage call is interrupted by SIGKILL of the node plugin
//! (and sometimes the controller) at a random moment inside it; the
//! binaries restart, the call is retried until it converges, data written
//! and synced before the crash must read back, and once everything is
//! deleted nothing may be left: no volume, temp file or export in the pool,
//! no loop device, mount or qemu-storage-daemon, no partition.
//!
//! Used by `e2e/tests/crash.rs` (a few dozen trials in CI) and by
//! `pool-csi-crash-trials` (`dev/crash-trials N`).

use crate::{clients::Clients, req, Driver, LoopDisk, Options};
use pool_csi_proto::csi;
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tonic::Code;

const MIB: i64 = 1 << 20;

/// What a volume is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    Raw,
    Qcow2,
    Ploop,
    /// A partition of a gpt disk pool.
    Disk,
    /// A directory volume of a netfs pool on a GlusterFS share.
    Directory,
}

/// The call a crash interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Stage,
    Publish,
    Expand,
    Unstage,
    Delete,
    Snapshot,
    Clone,
}

pub const BACKINGS: [Backing; 5] = [
    Backing::Raw,
    Backing::Qcow2,
    Backing::Ploop,
    Backing::Disk,
    Backing::Directory,
];
pub const OPS: [Op; 8] = [
    Op::Create,
    Op::Stage,
    Op::Publish,
    Op::Expand,
    Op::Unstage,
    Op::Delete,
    Op::Snapshot,
    Op::Clone,
];

/// One trial.
#[derive(Debug, Clone, Copy)]
pub struct Trial {
    pub backing: Backing,
    pub op: Op,
    /// From the start of the call to the kill.
    pub delay: Duration,
    /// Kill the controller too (it holds nothing; it must not matter).
    pub kill_controller: bool,
}

impl Trial {
    /// Trial `i` of a run seeded `seed`: scenarios in turn, the kill moment
    /// drawn within the call's usual length.
    pub fn nth(seed: u64, i: u64) -> Self {
        let mut x = seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = i as usize;
        let backing = BACKINGS[n % BACKINGS.len()];
        let op = OPS[(n / BACKINGS.len()) % OPS.len()];
        let span = typical(backing, op).as_micros() as u64;
        let delay = Duration::from_micros(next() % (span + 1));
        Trial {
            backing,
            op,
            delay,
            kill_controller: next() % 4 == 0,
        }
    }
}

/// How long a call usually takes here: the kill lands within it.
fn typical(b: Backing, op: Op) -> Duration {
    let ms = match (b, op) {
        (Backing::Raw, Op::Create | Op::Delete) => 5,
        (Backing::Directory, Op::Stage | Op::Unstage | Op::Publish) => 20,
        (_, Op::Create | Op::Delete) => 60,
        (Backing::Raw | Backing::Disk, Op::Stage) => 120,
        (_, Op::Stage) => 400,
        (_, Op::Publish) => 10,
        (_, Op::Expand) => 80,
        (Backing::Raw | Backing::Disk, Op::Unstage) => 60,
        (_, Op::Unstage) => 300,
        (_, Op::Snapshot | Op::Clone) => 120,
    };
    Duration::from_millis(ms)
}

/// The trial's driver and what stands under it.
struct Rig {
    d: Driver,
    c: Clients,
    params: Vec<(&'static str, &'static str)>,
    _disk: Option<LoopDisk>,
    /// Stopped after the driver (declared after it).
    gluster: Option<crate::gluster::Gluster>,
    scratch: PathBuf,
}

impl Rig {
    async fn start(b: Backing) -> Rig {
        let scratch = std::env::temp_dir().join(format!(
            "pool-csi-crash-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_seed()
        ));
        std::fs::create_dir_all(&scratch).unwrap();
        let mut gluster = None;
        let (pool, params, disk) = match b {
            Backing::Directory => {
                let g = crate::gluster::Gluster::start(&scratch, "crash");
                let pool = format!(
                    "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: p }}\nspec: {{ type: netfs, source: {{ host: \"{}\", dir: {}, format: glusterfs }}, target: {{ path: \"{{dir}}/p\" }} }}\n",
                    g.host, g.volume
                );
                gluster = Some(g);
                (pool, vec![("volumeFormat", "directory")], None)
            }
            Backing::Disk => {
                let disk = LoopDisk::new(&scratch, "disk.img", 512, true);
                let pool = format!(
                    "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: p }}\nspec: {{ type: disk, source: {{ device: {}, format: gpt }}, autoBuild: true }}\n",
                    disk.path()
                );
                (pool, vec![], Some(disk))
            }
            _ => {
                let f = match b {
                    Backing::Qcow2 => "qcow2",
                    Backing::Ploop => "ploop",
                    _ => "raw",
                };
                let pool = "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: p }\nspec: { type: dir, target: { path: \"{dir}/p\" }, autoBuild: true }\n".to_string();
                (pool, vec![("volumeFormat", f)], None)
            }
        };
        let d = Driver::start(Options {
            extra_pools: pool,
            log_filter: "error".into(),
            ..Default::default()
        })
        .await;
        let c = d.clients().await;
        Rig {
            d,
            c,
            params,
            _disk: disk,
            gluster,
            scratch,
        }
    }

    fn create_req(&self, name: &str, mib: i64) -> csi::CreateVolumeRequest {
        let mut r = req::create(name, mib * MIB, &self.params);
        r.parameters.insert("pool".into(), "p".into());
        r
    }

    /// SIGKILL the node plugin (and the controller), start them again.
    async fn crash(&mut self, controller: bool) {
        self.d.kill_node();
        if controller {
            self.d.kill_controller();
        }
        self.d.start_node();
        if controller {
            self.d.restart_controller();
        }
        self.d.wait_ready().await;
        self.c = self.d.clients().await;
    }
}

fn rand_seed() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Calls `call` until it answers OK: transient answers (ABORTED while the
/// interrupted work finishes, UNAVAILABLE while a binary restarts) are
/// retried; anything else for longer than the deadline is a failure.
async fn converge<T, F, Fut>(what: &str, mut call: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => {
                if Instant::now() > deadline {
                    let earlier = last.map(|l| format!(" (earlier: {l})")).unwrap_or_default();
                    return Err(format!(
                        "{what} did not converge: {:?} {}{earlier}",
                        s.code(),
                        s.message()
                    ));
                }
                let transient = matches!(
                    s.code(),
                    Code::Aborted | Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
                );
                // Anything else is retried too (a CO would), but remembered.
                if !transient {
                    last = Some(format!("{:?} {}", s.code(), s.message()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// [`converge`] on one CSI call: `retry!("what", rig, service.method(request))`.
macro_rules! retry {
    ($what:expr, $rig:expr, $svc:ident . $method:ident ( $req:expr )) => {{
        let base = $rig.c.clone();
        converge($what, || {
            let mut c = base.clone();
            let r = $req;
            async move { c.$svc.$method(r).await }
        })
        .await
    }};
}

/// The token written into a volume before the crash.
fn token(t: &Trial) -> String {
    format!("{:?}-{:?}-{}", t.backing, t.op, t.delay.as_micros())
}

fn write_synced(dir: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("data")).map_err(|e| e.to_string())?;
    f.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())
}

fn read_back(dir: &Path, want: &str) -> Result<(), String> {
    let got = std::fs::read_to_string(dir.join("data")).map_err(|e| format!("read back: {e}"))?;
    (got == want)
        .then_some(())
        .ok_or_else(|| format!("read back {got:?}, wrote {want:?}"))
}

/// Runs one trial; Err says what went wrong.
pub async fn run(t: &Trial) -> Result<(), String> {
    let mut rig = Rig::start(t.backing).await;
    let r = scenario(&mut rig, t).await;
    let leaks = match &r {
        Ok(()) => leaks(&rig),
        Err(_) => Vec::new(),
    };
    crate::cleanup::release_everything_under(rig.d.dir.path());
    drop(rig.d);
    drop(rig.gluster);
    crate::cleanup::release_everything_under(&rig.scratch);
    let _ = std::fs::remove_dir_all(&rig.scratch);
    r?;
    match leaks.is_empty() {
        true => Ok(()),
        false => Err(format!("left behind: {}", leaks.join("; "))),
    }
}

async fn scenario(rig: &mut Rig, t: &Trial) -> Result<(), String> {
    let cap = req::mount_cap("ext4");
    let staging = rig.d.path("staging");
    let target = rig.d.path("target");
    let tok = token(t);
    // What must exist before the interrupted call.
    let needs_volume = t.op != Op::Create;
    let needs_stage = matches!(
        t.op,
        Op::Publish | Op::Expand | Op::Unstage | Op::Snapshot | Op::Clone
    );
    let mut id = String::new();
    if needs_volume {
        let r = rig.create_req("v", 64);
        id = rig
            .c
            .controller
            .create_volume(r)
            .await
            .map_err(|e| format!("set-up create: {e:?}"))?
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
    }
    if needs_stage {
        rig.c
            .node
            .node_stage_volume(req::stage(&id, &staging, cap.clone()))
            .await
            .map_err(|e| format!("set-up stage: {e:?}"))?;
        write_synced(&staging, &tok)?;
    }

    // The call, and the crash inside it.
    let mut c = rig.c.clone();
    let (id2, staging2, target2, cap2) = (id.clone(), staging.clone(), target.clone(), cap.clone());
    let create = rig.create_req("v", 64);
    let snap_req = req::snapshot("s", &id);
    let mut clone_req = rig.create_req("w", 64);
    clone_req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: id.clone(),
            },
        )),
    });
    let op = t.op;
    let (create2, snap2, clone2) = (create.clone(), snap_req.clone(), clone_req.clone());
    let call = tokio::spawn(async move {
        let r = match op {
            Op::Create => c.controller.create_volume(create2).await.map(|_| ()),
            Op::Stage => c
                .node
                .node_stage_volume(req::stage(&id2, &staging2, cap2))
                .await
                .map(|_| ()),
            Op::Publish => c
                .node
                .node_publish_volume(req::publish(&id2, &staging2, &target2, cap2, false))
                .await
                .map(|_| ()),
            Op::Expand => c
                .controller
                .controller_expand_volume(req::expand(&id2, 128 * MIB))
                .await
                .map(|_| ()),
            Op::Unstage => c
                .node
                .node_unstage_volume(req::unstage(&id2, &staging2))
                .await
                .map(|_| ()),
            Op::Delete => c
                .controller
                .delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id2,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            Op::Snapshot => c.controller.create_snapshot(snap2).await.map(|_| ()),
            Op::Clone => c.controller.create_volume(clone2).await.map(|_| ()),
        };
        r.map_err(|s| s.code())
    });
    tokio::time::sleep(t.delay).await;
    rig.crash(t.kill_controller).await;
    let _ = call.await;

    // Retried until it converges, then checked.
    match t.op {
        Op::Create => {
            let v = retry!("create", rig, controller.create_volume(create.clone()))?;
            id = v.volume.unwrap().volume_id;
            stage_write_unstage(rig, &id, &tok).await?;
        }
        Op::Stage => {
            retry!(
                "stage",
                rig,
                node.node_stage_volume(req::stage(&id, &staging, cap.clone()))
            )?;
            write_synced(&staging, &tok)?;
            unstage(rig, &id, &staging).await?;
            stage_read_unstage(rig, &id, &tok).await?;
        }
        Op::Publish => {
            retry!(
                "publish",
                rig,
                node.node_publish_volume(req::publish(&id, &staging, &target, cap.clone(), false,))
            )?;
            read_back(&target, &tok)?;
            retry!(
                "unpublish",
                rig,
                node.node_unpublish_volume(req::unpublish(&id, &target))
            )?;
            unstage(rig, &id, &staging).await?;
        }
        Op::Expand => {
            let e = retry!(
                "expand",
                rig,
                controller.controller_expand_volume(req::expand(&id, 128 * MIB))
            )?;
            if e.capacity_bytes < 128 * MIB {
                return Err(format!("expanded to {} bytes only", e.capacity_bytes));
            }
            retry!(
                "node expand",
                rig,
                node.node_expand_volume(req::node_expand(&id, &staging, 128 * MIB))
            )
            .ok(); // online ext4 growth may be refused in a sandbox; the data must survive
            read_back(&staging, &tok)?;
            unstage(rig, &id, &staging).await?;
            stage_read_unstage(rig, &id, &tok).await?;
        }
        Op::Unstage => {
            unstage(rig, &id, &staging).await?;
            stage_read_unstage(rig, &id, &tok).await?;
        }
        Op::Delete => {
            retry!(
                "delete",
                rig,
                controller.delete_volume(csi::DeleteVolumeRequest {
                    volume_id: id.clone(),
                    ..Default::default()
                })
            )?;
            id.clear();
        }
        Op::Snapshot => {
            let s = retry!(
                "snapshot",
                rig,
                controller.create_snapshot(snap_req.clone())
            )?
            .snapshot
            .unwrap();
            unstage(rig, &id, &staging).await?;
            let mut restore = rig.create_req("r", 64);
            restore.volume_content_source = Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: s.snapshot_id.clone(),
                    },
                )),
            });
            let r = retry!("restore", rig, controller.create_volume(restore.clone()))?
                .volume
                .unwrap()
                .volume_id;
            stage_read_unstage(rig, &r, &tok).await?;
            delete(rig, &r).await?;
            retry!(
                "delete snapshot",
                rig,
                controller.delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: s.snapshot_id.clone(),
                    ..Default::default()
                })
            )?;
        }
        Op::Clone => {
            let w = retry!("clone", rig, controller.create_volume(clone_req.clone()))?
                .volume
                .unwrap()
                .volume_id;
            unstage(rig, &id, &staging).await?;
            stage_read_unstage(rig, &w, &tok).await?;
            delete(rig, &w).await?;
        }
    }
    if !id.is_empty() {
        delete(rig, &id).await?;
    }
    Ok(())
}

async fn unstage(rig: &Rig, id: &str, staging: &Path) -> Result<(), String> {
    retry!(
        "unstage",
        rig,
        node.node_unstage_volume(req::unstage(id, staging))
    )
    .map(|_| ())
}

async fn delete(rig: &Rig, id: &str) -> Result<(), String> {
    retry!(
        "delete",
        rig,
        controller.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
    )
    .map(|_| ())
}

async fn stage_write_unstage(rig: &Rig, id: &str, tok: &str) -> Result<(), String> {
    let st = rig.d.path("check");
    retry!(
        "stage",
        rig,
        node.node_stage_volume(req::stage(id, &st, req::mount_cap("ext4")))
    )?;
    write_synced(&st, tok)?;
    unstage(rig, id, &st).await?;
    stage_read_unstage(rig, id, tok).await
}

async fn stage_read_unstage(rig: &Rig, id: &str, tok: &str) -> Result<(), String> {
    let st = rig.d.path("check");
    retry!(
        "stage",
        rig,
        node.node_stage_volume(req::stage(id, &st, req::mount_cap("ext4")))
    )?;
    let r = read_back(&st, tok);
    unstage(rig, id, &st).await?;
    r
}

/// What is left once every volume and snapshot of the trial is deleted.
fn leaks(rig: &Rig) -> Vec<String> {
    let dir = rig.d.dir.path();
    let mut out = Vec::new();
    let pool = rig.d.dir.path().join("p");
    if let Ok(entries) = std::fs::read_dir(&pool) {
        for e in entries.flatten() {
            if e.file_name() != ".pool-csi" {
                out.push(format!("pool entry {}", e.path().display()));
            }
        }
        // A shared pool's tmp is one directory per node.
        let tmp = match rig.gluster {
            Some(_) => "tmp/node-1",
            None => "tmp",
        };
        for sub in [tmp, "snapshots", "published"] {
            for e in std::fs::read_dir(pool.join(".pool-csi").join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(format!("{sub} entry {}", e.path().display()));
            }
        }
    }
    for e in std::fs::read_dir(dir.join("state/exports/p"))
        .into_iter()
        .flatten()
        .flatten()
    {
        out.push(format!("export {}", e.path().display()));
    }
    for l in crate::cleanup::loops_under(dir) {
        out.push(format!("loop device {l}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        // The pool directories themselves are the harness's tmpfs mounts.
        let m = Path::new(m);
        if m.starts_with(dir) && m != rig.d.pool_dir && m != pool {
            out.push(format!("mount {}", m.display()));
        }
    }
    for pid in crate::cleanup::daemons_under(dir) {
        out.push(format!("qemu-storage-daemon pid {pid}"));
    }
    if let Some(disk) = &rig._disk {
        let t = crate::tool("sfdisk", &["--json", disk.path()]);
        let v: serde_json::Value = serde_json::from_slice(&t.stdout).unwrap_or_default();
        let n = v["partitiontable"]["partitions"]
            .as_array()
            .map_or(0, Vec::len);
        if n > 0 {
            out.push(format!("{n} partition(s) on {}", disk.path()));
        }
    }
    out
}
