//! A real iSCSI target for tests and the benchmark: tgtd on loopback with
//! file-backed LUNs.

use crate::tool;
use std::{path::Path, process::Child};

/// A tgtd serving on 127.0.0.1:<port>, stopped on drop.
pub struct Target {
    child: Child,
    pub port: u16,
    control: u16,
}

impl Target {
    pub fn start(dir: &Path) -> Target {
        // (tgtd takes control ports up to 32767 only: these are.)
        let (port, control) = (crate::unused_port(), crate::unused_port());
        #[allow(clippy::disallowed_methods)] // the tests' own target daemon
        let child = std::process::Command::new("tgtd")
            .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}")])
            .args(["--control-port", &control.to_string()])
            .stdout(std::fs::File::create(dir.join("tgtd.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("tgtd.err")).unwrap())
            .spawn()
            .expect("start tgtd");
        let t = Target {
            child,
            port,
            control,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return t;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "tgtd did not listen on {port}: {}",
            std::fs::read_to_string(dir.join("tgtd.err")).unwrap_or_default()
        );
    }

    pub fn adm(&self, args: &[&str]) {
        let ctl = self.control.to_string();
        let mut all = vec!["-C", &ctl, "--lld", "iscsi"];
        all.extend_from_slice(args);
        let out = tool("tgtadm", &all);
        assert!(
            out.status.success(),
            "tgtadm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn target(&self, tid: &str, iqn: &str) {
        self.adm(&["--op", "new", "--mode", "target", "--tid", tid, "-T", iqn]);
        self.adm(&[
            "--op", "bind", "--mode", "target", "--tid", tid, "-I", "ALL",
        ]);
    }

    pub fn lun(&self, dir: &Path, tid: &str, lun: &str, mib: u64) {
        self.lun_from(&dir.join(format!("lun-{tid}-{lun}")), tid, lun, mib);
    }

    /// A LUN backed by the new file `f`.
    pub fn lun_from(&self, f: &Path, tid: &str, lun: &str, mib: u64) {
        std::fs::File::create(f)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        self.adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            tid,
            "--lun",
            lun,
            "-b",
            f.to_str().unwrap(),
        ]);
    }
}

impl Target {
    /// Sets a LUN's unit serial number (tgtd's default, `beaf<tid><lun>`,
    /// repeats for a LUN re-made at the same number; real arrays do not).
    pub fn serial(&self, tid: &str, lun: &str, sn: &str) {
        self.adm(&[
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            tid,
            "--lun",
            lun,
            "--params",
            &format!("scsi_sn={sn}"),
        ]);
    }

    pub fn delete_lun(&self, tid: &str, lun: &str) {
        self.adm(&[
            "--op",
            "delete",
            "--mode",
            "logicalunit",
            "--tid",
            tid,
            "--lun",
            lun,
        ]);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL: tgtd ignores SIGTERM while it serves targets
        let _ = self.child.wait();
    }
}
