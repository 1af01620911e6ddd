//! Which ploop stack this host has, decided once at start-up. Debian ships
//! the `ploop` tool, but without the kernel module even `ploop init`
//! crashes, so a host only counts as having the tool when a probe image it
//! writes is one this driver can read back.

use super::{disk::Disk, xml::BASE_IMAGE};
use crate::{exec::CommandRunner, tools::ploop::init};
use std::{path::Path, time::Duration};

/// What this host's ploop stack can do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PloopHost {
    /// `ploop init` made a valid image in the start-up probe.
    pub tool: bool,
    /// The ploop kernel module is loaded (`<sysfs>/module/ploop`).
    pub module: bool,
    /// Why the tool is not used, for the log and the table in docs/pools.md.
    pub why_not: Option<String>,
}

impl PloopHost {
    /// Images are made with `ploop init`.
    pub fn creates(&self) -> bool {
        self.tool
    }

    /// Disks are attached with `ploop mount` and grown with `ploop resize`
    /// (both need the module).
    pub fn mounts(&self) -> bool {
        self.tool && self.module
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Tries the tool once: `ploop init` of a 1 MiB image without a filesystem
/// in `scratch` (removed again), which must open as a valid disk.
pub async fn probe(runner: &dyn CommandRunner, sysfs: &Path, scratch: &Path) -> PloopHost {
    let module = sysfs.join("module/ploop").is_dir();
    let _ = std::fs::remove_dir_all(scratch);
    let why_not = match std::fs::create_dir_all(scratch) {
        Err(e) => Some(format!("cannot create {}: {e}", scratch.display())),
        Ok(()) => {
            let made = init(runner, &scratch.join(BASE_IMAGE), 1 << 20, PROBE_TIMEOUT).await;
            let checked = made.map_err(|e| e.to_string()).and_then(|()| {
                Disk::open(scratch)
                    .and_then(|d| d.check())
                    .map_err(|e| format!("its probe image is unreadable: {e}"))
            });
            checked.err()
        }
    };
    let _ = std::fs::remove_dir_all(scratch);
    PloopHost {
        tool: why_not.is_none(),
        module,
        why_not,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{
        fake::{FakeRunner, Reply},
        Cmd,
    };

    /// The probe's `ploop init` (1 MiB, no filesystem, into a scratch dir).
    const PROBE_INIT: [&str; 11] = [
        "ploop", "init", "-s", "1024K", "-f", "ploop1", "-v", "2", "-t", "none", "*",
    ];

    #[tokio::test]
    async fn a_crashing_tool_is_reported_as_such() {
        let t = tempfile::tempdir().unwrap();
        let scratch = t.path().join("probe");
        let runner = FakeRunner::new().expect(PROBE_INIT, Reply::exit(-1));
        let host = probe(&runner, t.path(), &scratch).await;
        assert!(!host.tool && !host.module && !host.mounts());
        let why = host.why_not.unwrap();
        assert!(why.contains("crashed"), "{why}");
        assert!(!scratch.exists(), "the probe cleans up");
    }

    #[tokio::test]
    async fn the_tool_counts_only_when_its_image_reads_back() {
        let t = tempfile::tempdir().unwrap();
        let scratch = t.path().join("probe");
        // Exit 0 but nothing written: not a working tool.
        let runner = FakeRunner::new().expect(PROBE_INIT, Reply::ok());
        let host = probe(&runner, t.path(), &scratch).await;
        assert!(!host.tool);
        assert!(host.why_not.unwrap().contains("unreadable"));
    }

    /// The real tool on this machine: the probe's verdict must be what the
    /// tool really does, seen independently here — `ploop init` run by
    /// hand, then its image read by qemu-img. (On the machines this project
    /// is built on, the tool's init dies of a signal without the module:
    /// the verdict must then say "crashed" and the driver writes ploop
    /// images itself.) Neither outcome may hang or leave files.
    #[tokio::test]
    async fn the_real_tool_s_verdict_is_what_the_tool_does() {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("ploop").is_file()));
        if !on_path {
            pool_csi_testkit::skip::skip("ploop", "the ploop tool is not installed (dev/setup)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let by_hand = t.path().join("by-hand");
        std::fs::create_dir(&by_hand).unwrap();
        let image = by_hand.join(BASE_IMAGE);
        let runner = crate::exec::real::RealRunner::new(Vec::new());
        let init = Cmd::new("ploop")
            .args([
                "init", "-s", "1024K", "-f", "ploop1", "-v", "2", "-t", "none",
            ])
            .arg(&image);
        let ran = runner.run(&init).await.unwrap();
        let check = Cmd::new("qemu-img")
            .args(["check", "-f", "parallels"])
            .arg(&image);
        let readable = ran.status == 0 && runner.run(&check).await.unwrap().status == 0;
        let host = probe(&runner, Path::new("/sys"), &t.path().join("probe")).await;
        assert_eq!(
            host.tool,
            readable,
            "verdict {:?} for exit {} ({})",
            host.why_not,
            ran.status,
            ran.stderr_str()
        );
        match (&host.why_not, ran.status) {
            (None, _) => assert!(readable),
            (Some(why), code) if code < 0 => {
                assert!(why.contains("crashed"), "killed by a signal: {why}")
            }
            (Some(why), 0) => assert!(why.contains("unreadable"), "{why}"),
            (Some(why), code) => assert!(why.contains(&format!("exit code {code}")), "{why}"),
        }
        assert!(!t.path().join("probe").exists(), "the probe cleans up");
    }
}
