//! The kernel's SG_IO path to an iSCSI LUN, in userspace, for the fencing
//! tests: `e2e/shim/sg_iscsi.c` built into `sg_iscsid` (one node's iSCSI
//! session, a daemon) and `sg_iscsi.so` (preloaded into sg_persist and
//! sg_raw, it sends their SCSI commands through that session). The target
//! is a real tgtd; only the kernel initiator is replaced.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/shim/sg_iscsi.c");

pub struct Shim {
    /// The preload library.
    pub lib: PathBuf,
    daemon: PathBuf,
}

impl Shim {
    /// Builds both parts into `dir`; `Err` says what is missing.
    pub fn build(dir: &Path) -> Result<Shim, String> {
        if !Path::new("/usr/include/iscsi/iscsi.h").exists() || crate::which("cc").is_none() {
            return Err("needs a C compiler and libiscsi-dev; run dev/setup".into());
        }
        let shim = Shim {
            lib: dir.join("sg_iscsi.so"),
            daemon: dir.join("sg_iscsid"),
        };
        let lib = shim.lib.to_str().unwrap();
        let daemon = shim.daemon.to_str().unwrap();
        for args in [
            vec!["-shared", "-fPIC", "-o", lib, SOURCE],
            vec!["-DSG_ISCSI_DAEMON", "-o", daemon, SOURCE, "-liscsi"],
        ] {
            let out = crate::tool("cc", &args);
            if !out.status.success() {
                return Err(format!(
                    "cc {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(shim)
    }

    /// A node's session to `url` (`iscsi://host:port/<iqn>/<lun>`) as
    /// `initiator`, serving on `socket` until dropped; `Err` says why the
    /// login failed.
    pub fn session(&self, socket: &Path, url: &str, initiator: &str) -> Result<Session, String> {
        #[allow(clippy::disallowed_methods)] // the tests' own initiator daemon
        let mut child = std::process::Command::new(&self.daemon)
            .arg(socket)
            .args([url, initiator])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sg_iscsid");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() == "ready" {
            return Ok(Session { child });
        }
        let out = child.wait_with_output().unwrap();
        Err(format!(
            "{initiator} cannot log in to {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One node's iSCSI session (an I_T nexus for as long as it lives).
pub struct Session {
    child: Child,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
