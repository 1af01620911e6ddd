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
    /// Why the tool is not used, for the log and the README's table.
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
    use crate::exec::fake::{FakeRunner, Reply};

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

    /// The real tool on this machine, whatever it does: the probe must give a
    /// verdict without hanging or leaving files, and a "works" verdict must
    /// mean a valid image was written.
    #[tokio::test]
    async fn the_real_tool_gets_a_verdict() {
        let t = tempfile::tempdir().unwrap();
        let runner = crate::exec::real::RealRunner::new(Vec::new());
        let host = probe(&runner, Path::new("/sys"), &t.path().join("probe")).await;
        match &host.why_not {
            None => assert!(host.tool),
            Some(why) => {
                assert!(!host.tool);
                eprintln!("ploop tool not usable here: {why}");
            }
        }
        assert!(!t.path().join("probe").exists());
    }
}
