//! ploop volumes on a host where the ploop tool and kernel module work
//! (OpenVZ/Virtuozzo): create with `ploop init`, grow with `ploop resize`,
//! attach with `ploop mount`, snapshot a mounted disk with `ploop snapshot`.
//! This machine has no ploop module (and its tool crashes), so the tool is
//! scripted: each call answers as the tool does and leaves what the tool
//! leaves — for `init` the real tool's own recorded files, for `resize` and
//! `snapshot` (which cannot be recorded without device-mapper) image files
//! written by this crate's own writer — and the module's sysfs entries
//! (block/ploopN/pdelta/0/image). Everything around it
//! is the real pool and attach code on a real directory.

use pool_csi_common::{PoolDefinition, VolumeFormat};
use pool_csi_node::{
    attach::AttachSource,
    attach::Attacher,
    exec::fake::{FakeRunner, Reply},
    formats::ploop::disk::Disk,
    pools::{file::FilePool, CreateRequest, Pool},
    Config,
    {formats::ploop::host::PloopHost, tools::qsd::Export},
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

const MIB: u64 = 1 << 20;

struct Host {
    _t: tempfile::TempDir,
    pool_dir: PathBuf,
    sysfs: PathBuf,
    cfg: Config,
}

fn host() -> Host {
    let t = tempfile::tempdir().unwrap();
    let pool_dir = t.path().join("pool");
    let sysfs = t.path().join("sys");
    std::fs::create_dir_all(&pool_dir).unwrap();
    std::fs::create_dir_all(sysfs.join("block")).unwrap();
    std::fs::create_dir_all(sysfs.join("module/ploop")).unwrap();
    let mut cfg = Config::local("n1", t.path().join("state"));
    cfg.sysfs_root = sysfs.clone();
    cfg.ploop = PloopHost {
        tool: true,
        module: true,
        why_not: None,
    };
    Host {
        _t: t,
        pool_dir,
        sysfs,
        cfg,
    }
}

fn pool(h: &Host, runner: Arc<FakeRunner>) -> FilePool {
    let def = PoolDefinition::parse_documents(
        &format!(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: files }}\nspec:\n  type: dir\n  target: {{ path: {} }}\n",
            h.pool_dir.display()
        ),
        "test",
    )
    .unwrap()
    .remove(0);
    FilePool::new(&def, &h.cfg, runner)
}

fn ploop_req(name: &str, bytes: u64) -> CreateRequest {
    CreateRequest {
        format: Some(VolumeFormat::Ploop),
        required: bytes,
        ..CreateRequest::sized(name, 0)
    }
}

/// `ploop init`: leaves what the real tool leaves — its own recorded
/// output for a 64 MiB disk (tests/fixtures/commands/ploop/init_64M, made
/// by ploop 9 itself: DiskDescriptor.xml with <Virtuozzo_disk_image> and
/// its root.hds), so the driver reads files it did not write.
fn init_effect(size: u64) -> impl Fn(&[String]) + Send + Sync {
    assert_eq!(size, 64 * MIB, "only a 64 MiB init is recorded");
    move |argv: &[String]| {
        let dir = Path::new(argv.last().unwrap()).parent().unwrap();
        let recorded =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/commands/ploop/init_64M");
        for f in ["DiskDescriptor.xml", "root.hds"] {
            std::fs::copy(recorded.join(f), dir.join(f)).unwrap();
        }
    }
}

fn descriptor_of(argv: &[String]) -> PathBuf {
    PathBuf::from(argv.last().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

#[tokio::test]
async fn a_host_with_the_ploop_tool_and_module_uses_them_for_every_step() {
    let h = host();
    let dir = h.pool_dir.join("v.ploop");
    let desc = dir.join("DiskDescriptor.xml").display().to_string();
    let sys = h.sysfs.clone();
    let d2 = dir.clone();
    let runner = Arc::new(
        FakeRunner::new()
            .expect(
                [
                    "ploop", "init", "-s", "65536K", "-f", "ploop1", "-v", "2", "-t", "none", "*",
                ],
                Reply::ok().effect(init_effect(64 * MIB)),
            )
            // Offline growth: the tool's, not this crate's.
            .expect(
                ["ploop", "resize", "-s", "131072K", desc.as_str()],
                Reply::ok().effect(|argv| {
                    Disk::open(&descriptor_of(argv))
                        .unwrap()
                        .grow(128 * MIB)
                        .unwrap()
                }),
            )
            .expect(
                ["ploop", "mount", desc.as_str()],
                Reply::ok()
                    .stdout("Adding delta dev=/dev/ploop27 img=root.hds (rw)\n")
                    .effect(move |_| {
                        let lvl = sys.join("block/ploop27/pdelta/0");
                        std::fs::create_dir_all(&lvl).unwrap();
                        std::fs::write(
                            lvl.join("image"),
                            format!("{}\n", d2.join("root.hds").display()),
                        )
                        .unwrap();
                    }),
            )
            // A snapshot of the mounted disk: the tool switches the delta.
            .expect(
                ["ploop", "snapshot", desc.as_str()],
                Reply::ok().effect(|argv| {
                    Disk::open(&descriptor_of(argv))
                        .unwrap()
                        .push_delta(128 * MIB)
                        .unwrap();
                }),
            )
            // Online growth of the mounted disk.
            .expect(
                ["ploop", "resize", "-s", "196608K", desc.as_str()],
                Reply::ok().effect(|argv| {
                    Disk::open(&descriptor_of(argv))
                        .unwrap()
                        .grow(192 * MIB)
                        .unwrap()
                }),
            ),
    );
    let p = pool(&h, runner.clone());
    p.start().await.unwrap();

    let v = p.create_volume(&ploop_req("v", 64 * MIB)).await.unwrap();
    assert_eq!((v.capacity, v.format), (64 * MIB, VolumeFormat::Ploop));
    assert!(dir.join("root.hds").is_file());
    let e = p.expand_volume("v", 128 * MIB, 0).await.unwrap();
    assert_eq!(e.capacity, 128 * MIB);

    let src = p.attach_source("v").await.unwrap();
    assert!(matches!(src, AttachSource::PloopChain { .. }));
    let att = Attacher {
        runner: runner.as_ref(),
        sysfs: &h.sysfs,
        direct_io: true,
        ploop_mount: true,
        export: Export::at(h.cfg.state_dir.join("exports/files/v")),
    };
    let dev = att.attach(&src).await.unwrap();
    assert_eq!(dev, PathBuf::from("/dev/ploop27"));
    assert_eq!(
        att.attach(&src).await.unwrap(),
        dev,
        "found again, no second mount"
    );
    assert_eq!(att.attached(&src), Some(dev.clone()));

    // Mounted: delete is refused naming the device; a snapshot goes through the tool.
    let busy = p.delete_volume("v", false).await.unwrap_err().to_string();
    assert!(busy.contains("/dev/ploop27"), "{busy}");
    let top_before = Disk::open(&dir).unwrap().desc.top().guid.clone();
    let snap = p.create_snapshot("v", "s1").await.unwrap();
    assert_eq!(snap.size, 128 * MIB);
    let disk = Disk::open(&dir).unwrap();
    assert_eq!(disk.desc.chain.len(), 2);
    assert_eq!(
        disk.desc.chain[0].guid, top_before,
        "the frozen delta is the old top"
    );
    assert_ne!(disk.desc.top().guid, top_before);
    let e = p.expand_volume("v", 192 * MIB, 0).await.unwrap();
    assert_eq!(e.capacity, 192 * MIB);

    // Detach: ploop umount of the device the sysfs entry names.
    let sys = h.sysfs.clone();
    let detach_runner = FakeRunner::new().expect(
        ["ploop", "umount", "-d", "/dev/ploop27"],
        Reply::ok().effect(move |_| {
            std::fs::remove_dir_all(sys.join("block/ploop27")).unwrap();
        }),
    );
    let att = Attacher {
        runner: &detach_runner,
        ..att
    };
    att.detach(&src).await.unwrap();
    att.detach(&src).await.unwrap(); // idempotent: nothing left to umount
    assert_eq!(att.attached(&src), None);
    assert_eq!(p.list_snapshots().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_failing_ploop_init_leaves_nothing_behind() {
    let h = host();
    let runner = Arc::new(FakeRunner::new().expect(
        [
            "ploop", "init", "-s", "32768K", "-f", "ploop1", "-v", "2", "-t", "none", "*",
        ],
        Reply::exit(1).stderr("Error in ploop_init_image (ploop.c:1234): no space\n"),
    ));
    let p = pool(&h, runner);
    p.start().await.unwrap();
    let err = p
        .create_volume(&ploop_req("v", 32 * MIB))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no space"), "{err}");
    assert!(!h.pool_dir.join("v.ploop").exists());
    let tmp = h.pool_dir.join(".pool-csi/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "the half-made directory is removed"
    );
}
