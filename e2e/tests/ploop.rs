//! ploop volumes through the real binaries: images this driver writes are
//! checked by qemu-img and by the ploop tools' own `ploop check`; data survives detach/re-attach, offline and online
//! growth, snapshots (deltas) and their merge; clones and restores read the
//! right content; broken ploop directories get clear errors and nothing
//! outside a volume is ever touched.

use pool_csi_e2e::{req, require, tool, Driver, Options};
use pool_csi_proto::csi;
use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

const MIB: u64 = 1 << 20;

async fn create(c: &mut pool_csi_e2e::clients::Clients, r: csi::CreateVolumeRequest) -> String {
    let mut r = r;
    r.volume_capabilities = vec![req::block_cap()];
    c.controller
        .create_volume(r)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

fn name_of(id: &str) -> &str {
    id.rsplit(':').next().unwrap()
}

fn write_at(dev: &Path, at: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(data, at).unwrap();
    f.sync_all().unwrap();
}

fn read_at(dev: &Path, at: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact_at(&mut buf, at)
        .unwrap();
    buf
}

/// qemu-img's and the ploop tool's verdicts on one image file (the tool's
/// read-only forced check works without the ploop module), and the virtual
/// size.
fn image_check(image: &Path) -> u64 {
    match pool_csi_e2e::which("ploop") {
        Some(_) => {
            let out = tool(
                "ploop",
                &["check", "-f", "-r", "-c", image.to_str().unwrap()],
            );
            assert!(
                out.status.success(),
                "ploop check {}: {}{}",
                image.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => pool_csi_e2e::skip(
            "ploop",
            "ploop check: the ploop tool is not installed (dev/setup)",
        ),
    }
    let out = tool(
        "qemu-img",
        &["check", "-f", "parallels", image.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tool(
        "qemu-img",
        &[
            "info",
            "--output=json",
            "-f",
            "parallels",
            image.to_str().unwrap(),
        ],
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

fn images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("root.hds")
        })
        .collect();
    v.sort();
    v
}

struct Staged<'a> {
    d: &'a Driver,
    id: String,
    staging: PathBuf,
}

impl Staged<'_> {
    fn dev(&self) -> PathBuf {
        self.staging.join("device")
    }
}

async fn stage<'a>(d: &'a Driver, c: &mut pool_csi_e2e::clients::Clients, id: &str) -> Staged<'a> {
    let staging = d.path(&format!("staging-{}", name_of(id)));
    c.node
        .node_stage_volume(req::stage(id, &staging, req::block_cap()))
        .await
        .expect("stage");
    Staged {
        d,
        id: id.into(),
        staging,
    }
}

async fn unstage(c: &mut pool_csi_e2e::clients::Clients, s: Staged<'_>) {
    c.node
        .node_unstage_volume(req::unstage(&s.id, &s.staging))
        .await
        .expect("unstage");
    let _ = s.d;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ploop_images_stay_valid_and_keep_data_through_their_life() {
    require!(true);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let size = 64 * MIB;
    let id = create(
        &mut c,
        req::create("disk", size as i64, &[("volumeFormat", "ploop")]),
    )
    .await;
    let dir = d.pool_dir.join("disk.ploop");
    assert!(dir.join("DiskDescriptor.xml").is_file());
    assert_eq!(image_check(&dir.join("root.hds")), size, "fresh image");

    // Data written through the attach path is there after detach and re-attach.
    let s = stage(&d, &mut c, &id).await;
    write_at(&s.dev(), 0, b"first block");
    write_at(&s.dev(), size - 4096, b"near the end");
    unstage(&mut c, s).await;
    assert_eq!(image_check(&dir.join("root.hds")), size, "after writes");
    let s = stage(&d, &mut c, &id).await;
    assert_eq!(read_at(&s.dev(), 0, 11), b"first block");
    assert_eq!(read_at(&s.dev(), size - 4096, 12), b"near the end");
    unstage(&mut c, s).await;

    // Offline growth (the node's own writer: qemu-img cannot resize ploop).
    let grown = 200 * MIB;
    let e = c
        .controller
        .controller_expand_volume(req::expand(&id, grown as i64))
        .await
        .expect("expand")
        .into_inner();
    assert_eq!(e.capacity_bytes as u64, grown);
    assert_eq!(image_check(&dir.join("root.hds")), grown, "after growth");
    let s = stage(&d, &mut c, &id).await;
    assert_eq!(read_at(&s.dev(), size - 4096, 12), b"near the end");
    write_at(&s.dev(), grown - 4096, b"in the new space");
    assert_eq!(read_at(&s.dev(), grown - 4096, 16), b"in the new space");

    // A snapshot of the attached volume is a new delta; later writes go to it.
    let snap = c
        .controller
        .create_snapshot(req::snapshot("before", &id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(images(&dir).len(), 2, "base + new top delta");
    write_at(&s.dev(), 0, b"after snap!");
    // Online growth pushes one more (internal) delta.
    let online = 256 * MIB;
    c.controller
        .controller_expand_volume(req::expand(&id, online as i64))
        .await
        .expect("online expand");
    let ne = c
        .node
        .node_expand_volume(csi::NodeExpandVolumeRequest {
            volume_id: id.clone(),
            volume_path: s.dev().display().to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: online as i64,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("node expand")
        .into_inner();
    assert_eq!(ne.capacity_bytes as u64, online);
    write_at(&s.dev(), online - 4096, b"online tail");
    assert_eq!(images(&dir).len(), 3);
    unstage(&mut c, s).await;
    for img in images(&dir) {
        image_check(&img);
    }

    // Restore reads the chain up to the snapshot; a clone reads all of it.
    let restored = create(&mut c, req::restore_of("restored", 0, &snap.snapshot_id)).await;
    let clone = create(&mut c, req::clone_of("copy", 0, &id)).await;
    for v in [&restored, &clone] {
        let vdir = d.pool_dir.join(format!("{}.ploop", name_of(v)));
        assert_eq!(images(&vdir).len(), 1, "a copy is one flat image");
        image_check(&vdir.join("root.hds"));
    }
    let r = stage(&d, &mut c, &restored).await;
    assert_eq!(read_at(&r.dev(), 0, 11), b"first block");
    assert_eq!(read_at(&r.dev(), grown - 4096, 16), b"in the new space");
    assert_eq!(
        device_size(&r.dev()),
        grown,
        "a restore has the snapshot's size"
    );
    unstage(&mut c, r).await;
    let k = stage(&d, &mut c, &clone).await;
    assert_eq!(read_at(&k.dev(), 0, 11), b"after snap!");
    assert_eq!(read_at(&k.dev(), online - 4096, 11), b"online tail");
    unstage(&mut c, k).await;

    // A volume whose deltas hold snapshots cannot be deleted.
    let busy = c
        .controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition, "{busy:?}");
    assert!(busy.message().contains("before"), "{busy:?}");

    // Deleting the snapshot of the idle volume merges every delta away.
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete snapshot");
    let left = images(&dir);
    assert_eq!(left.len(), 1, "merged: {left:?}");
    assert_eq!(image_check(&left[0]), online);
    let s = stage(&d, &mut c, &id).await;
    assert_eq!(read_at(&s.dev(), 0, 11), b"after snap!");
    assert_eq!(read_at(&s.dev(), size - 4096, 12), b"near the end");
    assert_eq!(read_at(&s.dev(), grown - 4096, 16), b"in the new space");
    assert_eq!(read_at(&s.dev(), online - 4096, 11), b"online tail");
    unstage(&mut c, s).await;

    for v in [&id, &restored, &clone] {
        c.controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.to_string(),
                ..Default::default()
            })
            .await
            .expect("delete");
    }
    let left: Vec<_> = std::fs::read_dir(&d.pool_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".pool-csi")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn device_size(dev: &Path) -> u64 {
    use std::io::Seek;
    std::fs::File::open(dev)
        .unwrap()
        .seek(std::io::SeekFrom::End(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_deleted_while_attached_is_merged_at_the_next_attach() {
    require!(true);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(
        &mut c,
        req::create("v", 32 << 20, &[("volumeFormat", "ploop")]),
    )
    .await;
    let dir = d.pool_dir.join("v.ploop");
    let s = stage(&d, &mut c, &id).await;
    write_at(&s.dev(), 0, b"one");
    let snap = c
        .controller
        .create_snapshot(req::snapshot("s1", &id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    write_at(&s.dev(), 4096, b"two");
    c.controller
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            ..Default::default()
        })
        .await
        .expect("delete snapshot while attached");
    assert_eq!(
        images(&dir).len(),
        2,
        "the delta stays while the daemon holds it"
    );
    unstage(&mut c, s).await;
    let s = stage(&d, &mut c, &id).await;
    assert_eq!(images(&dir).len(), 1, "merged before the new attach");
    assert_eq!(read_at(&s.dev(), 0, 3), b"one");
    assert_eq!(read_at(&s.dev(), 4096, 3), b"two");
    unstage(&mut c, s).await;
    // The merged image keeps whichever file held more data; the descriptor names it.
    let left = images(&dir);
    assert_eq!(left.len(), 1);
    image_check(&left[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_ploop_directories_get_clear_errors_and_nothing_outside_is_touched() {
    require!(true);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(
        &mut c,
        req::create("good", 16 << 20, &[("volumeFormat", "ploop")]),
    )
    .await;
    let good = d.pool_dir.join("good.ploop");

    // A truncated header: listed, abnormal, not crashing the refresh.
    let trunc = d.pool_dir.join("trunc.ploop");
    std::fs::create_dir(&trunc).unwrap();
    std::fs::copy(
        good.join("DiskDescriptor.xml"),
        trunc.join("DiskDescriptor.xml"),
    )
    .unwrap();
    std::fs::write(trunc.join("root.hds"), b"WithouFreSpacExt\x02\0\0\0").unwrap();
    // A descriptor pointing outside its directory, and a link out of it.
    let outside = d.dir.path().join("precious");
    std::fs::write(&outside, b"keep me").unwrap();
    let evil = d.pool_dir.join("evil.ploop");
    std::fs::create_dir(&evil).unwrap();
    let text = std::fs::read_to_string(good.join("DiskDescriptor.xml"))
        .unwrap()
        .replace("<File>root.hds</File>", "<File>../../precious</File>");
    std::fs::write(evil.join("DiskDescriptor.xml"), text).unwrap();
    std::os::unix::fs::symlink(&outside, evil.join("root.hds")).unwrap();
    // A directory that is not a ploop volume at all is left alone.
    let other = d.pool_dir.join("other.ploop");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes"), b"admin data").unwrap();

    let list = c
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .expect("list")
        .into_inner();
    let cond = |name: &str| {
        list.entries
            .iter()
            .find(|e| {
                e.volume
                    .as_ref()
                    .unwrap()
                    .volume_id
                    .ends_with(&format!(":{name}"))
            })
            .map(|e| e.status.as_ref().unwrap().volume_condition.clone().unwrap())
    };
    assert!(!cond("good").unwrap().abnormal);
    let t = cond("trunc").expect("the broken volume is listed");
    assert!(t.abnormal && t.message.contains("truncated"), "{t:?}");
    let e = cond("evil").expect("listed");
    assert!(e.abnormal && e.message.contains("plain file name"), "{e:?}");
    assert!(cond("other").is_none(), "not a ploop volume: not listed");

    // Operations on them are refused with the reason; nothing changes.
    let node = d.opts.node_name.clone();
    let trunc_id = format!("v1:scratch:{node}:trunc");
    let err = c
        .controller
        .controller_expand_volume(req::expand(&trunc_id, 64 << 20))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("truncated"), "{err:?}");
    let err = c
        .controller
        .create_snapshot(req::snapshot("s", &format!("v1:scratch:{node}:evil")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let err = c
        .controller
        .create_volume(req::create("other", 16 << 20, &[("volumeFormat", "ploop")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(std::fs::read(other.join("notes")).unwrap(), b"admin data");

    // Shrinking is refused and the image keeps its size.
    let err = c
        .controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 8 << 20,
                limit_bytes: 8 << 20,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert_eq!(image_check(&good.join("root.hds")), 16 << 20);

    // Deleting the evil volume removes its directory, never what it points at.
    c.controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: format!("v1:scratch:{node}:evil"),
            ..Default::default()
        })
        .await
        .expect("delete evil");
    assert!(!evil.exists());
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_creates_and_clones_leave_no_directory_behind() {
    require!(true);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let src = create(
        &mut c,
        req::create("src", 32 << 20, &[("volumeFormat", "ploop")]),
    )
    .await;
    let s = stage(&d, &mut c, &src).await;
    for i in 0..8u64 {
        write_at(&s.dev(), i * MIB, &vec![0x5a; MIB as usize]);
    }
    unstage(&mut c, s).await;

    // Volumes are made under .pool-csi/tmp and renamed into place. A tiny
    // filesystem mounted there makes every step fail for real: ENOSPC in
    // the middle of a copy, EXDEV at the final rename.
    let tmp = d.pool_dir.join(".pool-csi/tmp");
    let opts = std::ffi::CString::new("size=2m").unwrap();
    rustix::mount::mount(
        "tmpfs",
        &tmp,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        Some(opts.as_c_str()),
    )
    .expect("mount a tiny tmpfs over the pool's tmp dir");
    let fresh = c
        .controller
        .create_volume(req::create("fresh", 16 << 20, &[("volumeFormat", "ploop")]))
        .await;
    let clone = c
        .controller
        .create_volume(req::clone_of("copy", 0, &src))
        .await;
    let _ = rustix::mount::unmount(&tmp, rustix::mount::UnmountFlags::DETACH);
    let e = fresh.unwrap_err();
    assert!(
        e.message().contains("rename") || e.message().contains("cross-device"),
        "{e:?}"
    );
    let e = clone.unwrap_err();
    assert!(
        e.message().contains("No space") || e.message().contains("space"),
        "{e:?}"
    );
    for name in ["fresh.ploop", "copy.ploop"] {
        assert!(!d.pool_dir.join(name).exists(), "{name} left behind");
    }
    // Both succeed once the fault is gone.
    for r in [
        req::create("fresh", 16 << 20, &[("volumeFormat", "ploop")]),
        req::clone_of("copy", 0, &src),
    ] {
        create(&mut c, r).await;
    }
    image_check(&d.pool_dir.join("copy.ploop/root.hds"));
}

/// Says `commands` to the qemu-storage-daemon monitor at `socket`; every
/// reply must be a `return`.
fn qmp(socket: &Path, commands: &[String]) {
    use std::io::{BufRead, Write};
    let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut lines = std::io::BufReader::new(s.try_clone().unwrap()).lines();
    lines.next(); // greeting
    let mut w = s;
    for c in std::iter::once(r#"{"execute":"qmp_capabilities"}"#.to_string())
        .chain(commands.iter().cloned())
    {
        writeln!(w, "{c}").unwrap();
        let reply = loop {
            let l = lines.next().unwrap().unwrap();
            if !l.contains("\"event\"") {
                break l;
            }
        };
        assert!(reply.contains("\"return\""), "{c}: {reply}");
    }
}

/// A node killed inside a live snapshot can leave the daemon with a delta
/// it added but never put on top. The retried snapshot removes it and
/// switches cleanly; the data written before and after reads back, and the
/// snapshot holds what was there at the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_snapshot_finishes_what_a_killed_one_left_in_the_daemon() {
    require!(true);
    let d = Driver::start(Options::default()).await;
    let mut c = d.clients().await;
    let id = create(
        &mut c,
        req::create("v", 32 << 20, &[("volumeFormat", "ploop")]),
    )
    .await;
    let s = stage(&d, &mut c, &id).await;
    write_at(&s.dev(), 0, b"one");
    // What a killed attempt leaves: node d1 (file node f1) added, not on top.
    let stray = d.path("stray.hds");
    pool_csi_e2e::sh(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "parallels",
            stray.to_str().unwrap(),
            "32M",
        ],
    );
    let socket = d.dir.path().join("state/exports/scratch/v.qmp");
    qmp(
        &socket,
        &[format!(
            r#"{{"execute":"blockdev-add","arguments":{{"driver":"parallels","node-name":"d1","file":{{"driver":"file","node-name":"f1","filename":"{}"}}}}}}"#,
            stray.display()
        )],
    );
    let snap = c
        .controller
        .create_snapshot(req::snapshot("s1", &id))
        .await
        .expect("the retried snapshot switches despite the leftover")
        .into_inner()
        .snapshot
        .unwrap();
    write_at(&s.dev(), 4096, b"two");
    assert_eq!(read_at(&s.dev(), 0, 3), b"one");
    let restored = create(&mut c, req::restore_of("r", 32 << 20, &snap.snapshot_id)).await;
    unstage(&mut c, s).await;
    let s = stage(&d, &mut c, &id).await;
    assert_eq!(read_at(&s.dev(), 4096, 3), b"two", "written to the new top");
    unstage(&mut c, s).await;
    let r = stage(&d, &mut c, &restored).await;
    assert_eq!(read_at(&r.dev(), 0, 3), b"one");
    assert_eq!(
        read_at(&r.dev(), 4096, 3),
        [0, 0, 0],
        "after the snapshot: not in it"
    );
    unstage(&mut c, r).await;
}
