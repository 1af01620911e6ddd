//! The pool's lvm shell against the real lvm2 on a volume group on a loop
//! device (metadata only: activation is off, as this kernel has no
//! device-mapper): answers and errors as separate commands give them, one
//! shell for all of them, a restart after the shell is killed, and a command
//! held up by LVM's own lock (another tool's) timing out and taking the
//! shell with it.

use pool_csi_node::{
    exec::{real::RealRunner, Cmd, CommandRunner, ExecError},
    tools::{lvm::Lvm, lvm_label, lvm_shell::LvmShell, lvm_system},
};
use std::{path::PathBuf, time::Duration};

const NO_ACTIVATION: &str = "global{activation=0}";

/// A VG on a loop device; removed (with its PV and the device) on drop.
struct TestVg {
    runner: RealRunner,
    name: String,
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestVg {
    async fn new() -> Result<TestVg, String> {
        let runner = RealRunner::default();
        runner
            .run_ok(&Cmd::new("lvm").arg("version"))
            .await
            .map_err(|e| format!("needs lvm2 (run dev/setup): {e}"))?;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pv");
        std::fs::File::create(&file)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let out = runner
            .run_ok(&Cmd::new("losetup").args(["--find", "--show"]).arg(&file))
            .await
            .map_err(|e| format!("needs loop devices: {e}"))?;
        let dev = PathBuf::from(out.stdout_str().trim());
        let name = format!("pcsishell{}", std::process::id());
        let vg = TestVg {
            runner,
            name,
            dev,
            _dir: dir,
        };
        let lvm = |sub: &str| {
            Cmd::new("lvm")
                .arg(sub)
                .args(["--config", NO_ACTIVATION])
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        };
        vg.runner
            .run_ok(&lvm("pvcreate").arg("--yes").arg(&vg.dev))
            .await
            .unwrap();
        vg.runner
            .run_ok(&lvm("vgcreate").arg(&vg.name).arg(&vg.dev))
            .await
            .unwrap();
        Ok(vg)
    }
}

impl Drop for TestVg {
    fn drop(&mut self) {
        let (name, dev) = (self.name.clone(), self.dev.clone());
        let runner = self.runner.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let lvm = |args: &[&str]| {
                    Cmd::new("lvm")
                        .args(args.iter().copied())
                        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                };
                let _ = runner
                    .run(&lvm(&[
                        "vgremove",
                        "--config",
                        NO_ACTIVATION,
                        "-f",
                        "-y",
                        &name,
                    ]))
                    .await;
                let dev = dev.display().to_string();
                let _ = runner
                    .run(&lvm(&["pvremove", "--config", NO_ACTIVATION, "-y", &dev]))
                    .await;
                let _ = runner.run(&Cmd::new("losetup").args(["-d", &dev])).await;
                // The metadata history lvm keeps of every VG change.
                let _ = std::fs::remove_file(format!("/etc/lvm/backup/{name}"));
                for e in std::fs::read_dir("/etc/lvm/archive")
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{name}_"))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            });
        })
        .join()
        .unwrap();
    }
}

#[tokio::test]
async fn one_shell_answers_restarts_and_gives_way_to_lvms_own_lock() {
    let vg = match TestVg::new().await {
        Ok(vg) => vg,
        Err(why) => return pool_csi_testkit::skip::skip("lvm", &why),
    };
    let state = tempfile::tempdir().unwrap();
    let dirs = lvm_system::prepare(state.path(), std::path::Path::new("/etc/lvm")).unwrap();
    let shell = LvmShell::new(&dirs.shell);
    let devices = [vg.dev.clone()];
    let lvm = Lvm {
        runner: &vg.runner,
        no_activation: true,
        devices: &devices,
        system_dir: Some(&dirs.commands),
        shell: Some(&shell),
    };
    let tags = ["pool-csi.io/volume".to_string()];

    // The metadata headers tell a change from none, read off the device.
    let before = lvm_label::fingerprint(&devices).expect("a PV with metadata");

    // Answers and errors as separate lvm processes give them.
    let v = lvm.vg(&vg.name).await.unwrap().expect("the VG");
    assert_eq!(v.name, vg.name);
    assert!(v.free > 0 && v.free <= v.size, "{v:?}");
    assert_eq!(
        lvm.vg("pcsi-no-such-vg").await.unwrap(),
        None,
        "not found is None"
    );
    assert_eq!(
        lvm_label::fingerprint(&devices).as_ref(),
        Some(&before),
        "reports change nothing"
    );
    lvm.create_linear(&vg.name, "a", 8 << 20, None, &tags)
        .await
        .unwrap();
    let after = lvm_label::fingerprint(&devices).unwrap();
    assert_ne!(after, before, "a commit rewrites the headers");
    let e = lvm
        .create_linear(&vg.name, "a", 8 << 20, None, &tags)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ExecError::Failed { status: 5, stderr, .. } if stderr.contains("already exists")),
        "{e}"
    );
    let lvs = lvm.lvs(&vg.name).await.unwrap();
    assert_eq!(lvs.len(), 1, "{lvs:?}");
    assert_eq!((lvs[0].lv_name.as_str(), lvs[0].lv_size), ("a", 8 << 20));
    assert!(lvs[0].has_tag("pool-csi.io/volume"), "{lvs:?}");
    assert_eq!(shell.started(), 1, "every command went to one shell");
    assert_eq!(
        lvm_label::fingerprint(&devices),
        Some(after),
        "a refused create commits nothing"
    );

    // Killed: the next report is asked of a new shell.
    let pid = shell.pid().await.expect("a running shell");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    assert_eq!(lvm.lvs(&vg.name).await.unwrap().len(), 1);
    assert_eq!(shell.started(), 2);
    assert_ne!(shell.pid().await, Some(pid));

    // Another tool holds the VG's lock: the command waits for it as a
    // separate lvm would, times out, and the shell goes with it.
    let lock_path = format!("/run/lock/lvm/V_{}", vg.name);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let held = Cmd::new("lvm")
        .args(["lvs", "--config", NO_ACTIVATION, &vg.name])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .timeout(Duration::from_millis(700));
    let e = shell.run(&vg.runner, &held).await.unwrap_err();
    assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
    assert_eq!(shell.pid().await, None, "the hung shell was killed");
    // The caller goes away mid-command (a cancelled RPC): the shell goes
    // with it, so its late answer is never read as the next command's.
    let waiting = Cmd::new("lvm")
        .args(["lvs", "--config", NO_ACTIVATION, &vg.name])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1");
    let gone =
        tokio::time::timeout(Duration::from_millis(500), shell.run(&vg.runner, &waiting)).await;
    assert!(gone.is_err(), "held by the lock until cancelled");
    assert_eq!(
        shell.pid().await,
        None,
        "the cancelled command's shell was killed"
    );
    drop(lock);
    let vgs = lvm
        .vg(&vg.name)
        .await
        .unwrap()
        .expect("a vgs answer, not the lvs one");
    assert_eq!(vgs.name, vg.name);
    assert_eq!(lvm.lvs(&vg.name).await.unwrap().len(), 1);
    lvm.remove(&vg.name, "a").await.unwrap();
    lvm.remove(&vg.name, "a")
        .await
        .expect("removing what is gone is done");
    assert!(lvm.lvs(&vg.name).await.unwrap().is_empty());
    assert_eq!(shell.started(), 4);

    // An lvm that cannot serve the protocol (here: no shell at all): the
    // first command finds out, and every command runs on its own.
    let mute = LvmShell::with_program("true", &dirs.shell);
    let lvm = Lvm {
        shell: Some(&mute),
        ..lvm
    };
    assert_eq!(
        lvm.vg(&vg.name).await.unwrap().map(|v| v.name),
        Some(vg.name.clone())
    );
    assert!(lvm.lvs(&vg.name).await.unwrap().is_empty());
    assert_eq!(
        mute.started(),
        1,
        "tried once, then one process per command"
    );
}
