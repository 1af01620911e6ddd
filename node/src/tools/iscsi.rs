//! iSCSI from userspace: LUN inventory through libiscsi's tools (`iscsi-ls`,
//! `iscsi-readcapacity16`, `iscsi-inq`), which need no kernel initiator, and
//! node attachment through open-iscsi's `iscsiadm` with the LUN's block
//! device resolved from sysfs (session → target → LUN → block), not from
//! udev links.
//!
//! CHAP passwords go to libiscsi through its environment variables
//! (`LIBISCSI_CHAP_USERNAME` / `LIBISCSI_CHAP_PASSWORD`, and for mutual CHAP
//! `LIBISCSI_CHAP_TARGET_USERNAME` / `…_PASSWORD`), never in argv. Mutual
//! CHAP covers the sessions that reach LUNs (libiscsi's per-LUN inquiries
//! and the node's login), not SendTargets discovery: targets such as tgt
//! do not authenticate themselves there, and discovery carries no data.

use crate::exec::{Cmd, CommandRunner, ExecError};
use std::net::IpAddr;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Where and how to reach a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// host:port (port 3260 added when missing).
    pub address: String,
    pub target: String,
    pub initiator: Option<String>,
    pub chap: Option<Chap>,
    /// Mutual CHAP: what the target must answer with.
    pub target_chap: Option<Chap>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chap({}, ***)", self.username)
    }
}

impl Portal {
    pub fn new(host: &str, target: &str) -> Self {
        let address = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']')
        {
            host.to_string()
        } else {
            format!("{host}:3260")
        };
        Self {
            address,
            target: target.into(),
            initiator: None,
            chap: None,
            target_chap: None,
        }
    }

    fn url(&self, lun: Option<u32>) -> String {
        match lun {
            None => format!("iscsi://{}", self.address),
            Some(l) => format!("iscsi://{}/{}/{l}", self.address, self.target),
        }
    }

    /// A libiscsi tool that logs in to the target (mutual CHAP, when the
    /// pool has it) …
    fn cmd(&self, program: &str) -> Cmd {
        let c = self.discovery_cmd(program);
        match &self.target_chap {
            Some(t) => c
                .secret_env("LIBISCSI_CHAP_TARGET_USERNAME", &t.username)
                .secret_env("LIBISCSI_CHAP_TARGET_PASSWORD", &t.password),
            None => c,
        }
    }

    /// … or that discovers (one-way CHAP).
    fn discovery_cmd(&self, program: &str) -> Cmd {
        let mut c = Cmd::new(program).timeout(Duration::from_secs(20));
        if let Some(i) = &self.initiator {
            c = c.arg(format!("--initiator-name={i}"));
        }
        if let Some(chap) = &self.chap {
            c = c
                .secret_env("LIBISCSI_CHAP_USERNAME", &chap.username)
                .secret_env("LIBISCSI_CHAP_PASSWORD", &chap.password);
        }
        c
    }
}

/// A logical unit of the target; its identity is the unit serial number
/// (VPD page 0x80) where the target reports one, else `<target>:lun<N>`.
pub use super::scsi::Lun;

/// The identity of LUN `number` as the target reports it now: `serial:<unit
/// serial number>`, or `<target>:lun<N>` when the target has no serial
/// number page (or an empty serial). Any other failure is an error, never
/// another identity: a claimed LUN must not look like a free one because
/// one inquiry failed.
pub async fn lun_identity(
    runner: &dyn CommandRunner,
    portal: &Portal,
    number: u32,
) -> Result<String, ExecError> {
    let cmd = portal
        .cmd("iscsi-inq")
        .args(["-e", "1", "-c", "128"])
        .arg(portal.url(Some(number)));
    let out = runner.run(&cmd).await?;
    let fallback = || format!("{}:lun{number}", portal.target);
    if out.status == 0 {
        if let Some(serial) = out
            .stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix("Unit Serial Number:["))
        {
            let v = serial.trim_end_matches(']').trim();
            return Ok(match v.is_empty() {
                true => fallback(),
                false => format!("serial:{v}"),
            });
        }
    } else if out.stderr_str().contains("INVALID_FIELD_IN_CDB") {
        // The target has no serial number page: a stable answer.
        return Ok(fallback());
    }
    let stderr = match out.stderr_str() {
        e if e.is_empty() => "no unit serial number in the answer".to_string(),
        e => e,
    };
    Err(ExecError::Failed {
        cmd: cmd.to_string(),
        status: out.status,
        stderr,
    })
}

/// Whether `e` says the target has no LUN of that number (any more).
pub fn is_no_such_lun(e: &ExecError) -> bool {
    matches!(e, ExecError::Failed { stderr, .. } if stderr.contains("LOGICAL_UNIT_NOT_SUPPORTED"))
}

/// Lists the target's disk LUNs with exact sizes and identities.
pub async fn inventory(runner: &dyn CommandRunner, portal: &Portal) -> Result<Vec<Lun>, ExecError> {
    let cmd = portal
        .discovery_cmd("iscsi-ls")
        .arg("--show-luns")
        .arg(portal.url(None));
    let out = runner.run(&cmd).await?;
    let text = out.stdout_str();
    let targets = parse_ls(&text);
    // iscsi-ls logs in to every target of the portal in turn and stops at
    // the first it cannot enter (another target's CHAP). Ours counts as
    // listed only if a later target's header follows it, or all went well.
    let ours = targets.iter().position(|(t, _)| *t == portal.target);
    let complete = out.status == 0 || ours.is_some_and(|i| i + 1 < targets.len());
    if !complete {
        let why = text
            .lines()
            .chain(out.stderr_str().lines())
            .find(|l| !l.starts_with("Target:") && !l.trim_start().starts_with("Lun:"))
            .unwrap_or("no reason given")
            .to_string();
        return Err(ExecError::Failed {
            cmd: cmd.to_string(),
            status: out.status,
            stderr: why,
        });
    }
    let Some((_, luns)) = ours.map(|i| &targets[i]) else {
        let offered: Vec<&str> = targets.iter().map(|(t, _)| t.as_str()).collect();
        return Err(ExecError::Failed {
            cmd: cmd.to_string(),
            status: 0,
            stderr: format!(
                "the portal does not offer target {} (it offers: {})",
                portal.target,
                if offered.is_empty() {
                    "none".into()
                } else {
                    offered.join(", ")
                }
            ),
        });
    };
    let mut out = Vec::new();
    for &number in luns {
        let cap = runner
            .run_ok(
                &portal
                    .cmd("iscsi-readcapacity16")
                    .arg(portal.url(Some(number))),
            )
            .await?;
        let size = parse_capacity(&cap.stdout_str()).ok_or_else(|| ExecError::Failed {
            cmd: format!("iscsi-readcapacity16 {}", portal.url(Some(number))),
            status: 0,
            stderr: "no \"Total size\" in the output".into(),
        })?;
        out.push(Lun {
            number,
            size,
            identity: lun_identity(runner, portal, number).await?,
            address: format!("LUN {number}"),
            device: None,
        });
    }
    Ok(out)
}

/// `iscsi-ls -s` output → (target, disk LUN numbers) in order.
fn parse_ls(text: &str) -> Vec<(String, Vec<u32>)> {
    let mut out: Vec<(String, Vec<u32>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Target:") {
            let name = rest.split_whitespace().next().unwrap_or("").to_string();
            out.push((name, Vec::new()));
        } else if let Some(rest) = line.trim_start().strip_prefix("Lun:") {
            let mut it = rest.split_whitespace();
            let n = it.next().and_then(|n| n.parse().ok());
            let disk = line.contains("Type:DIRECT_ACCESS");
            if let (Some(n), true, Some(last)) = (n, disk, out.last_mut()) {
                last.1.push(n);
            }
        }
    }
    out
}

fn parse_capacity(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Total size:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `iscsiadm --mode node` for the portal's target through the pool's iface
/// (`default` unless the pool names an initiator: never every iface's
/// records at once), to add an operation to.
fn node_cmd(portal: &Portal) -> Cmd {
    Cmd::new("iscsiadm")
        .args(["--mode", "node", "--targetname"])
        .arg(&portal.target)
        .args(["--portal", &portal.address])
        .args(["--interface", &iface_name(portal)])
}

/// The iface a pool's sessions go through: its own, or `default`.
fn iface_name(portal: &Portal) -> String {
    iface_of(portal).unwrap_or_else(|| "default".into())
}

/// The open-iscsi iface that logs in as the pool's initiator name:
/// `pool-csi-<hash of the IQN>` (an IQN's characters are not all allowed
/// in an iface name). None: the node's own name
/// (/etc/iscsi/initiatorname.iscsi, the default iface).
pub fn iface_of(portal: &Portal) -> Option<String> {
    let iqn = portal.initiator.as_deref()?;
    let h = pool_csi_common::volume_id::fnv1a64(iqn.as_bytes());
    Some(format!("pool-csi-{h:016x}"))
}

/// Makes the pool's iface (if it names an initiator) with that initiator
/// name. Idempotent. `--op new` rewrites an existing iface with defaults
/// (initiator name included), so it runs only for a missing one; pools of
/// one initiator share the iface, and its set-up is serialised on the node
/// so no discovery copies it half-made.
async fn ensure_iface(runner: &dyn CommandRunner, portal: &Portal) -> Result<(), ExecError> {
    static SETUP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let (Some(iface), Some(iqn)) = (iface_of(portal), portal.initiator.as_deref()) else {
        return Ok(());
    };
    let _one_at_a_time = SETUP.lock().await;
    let iface_cmd = || Cmd::new("iscsiadm").args(["--mode", "iface", "--interface", &iface]);
    let shown = runner.run(&iface_cmd().args(["--op", "show"])).await?;
    if shown.status != 0 {
        let made = runner.run(&iface_cmd().args(["--op", "new"])).await?;
        // 15 (ISCSI_ERR_SESS_EXISTS): a session runs through it already.
        if made.status != 0 && made.status != 15 {
            return Err(ExecError::Failed {
                cmd: format!("iscsiadm --mode iface --interface {iface} --op new"),
                status: made.status,
                stderr: made.stderr_str(),
            });
        }
    }
    runner
        .run_ok(&iface_cmd().args([
            "--op",
            "update",
            "--name",
            "iface.initiatorname",
            "--value",
            iqn,
        ]))
        .await?;
    Ok(())
}

/// Has the kernel scan session `session` (`sessionN`) for LUNs the target
/// added since the login.
pub async fn rescan(runner: &dyn CommandRunner, session: &str) -> Result<(), ExecError> {
    let sid = session.trim_start_matches("session");
    runner
        .run_ok(&Cmd::new("iscsiadm").args(["--mode", "session", "--sid", sid, "--rescan"]))
        .await?;
    Ok(())
}

/// Logs in to the target with iscsiadm unless a session exists (found in
/// sysfs, so it survives a node plugin restart).
pub async fn login(
    runner: &dyn CommandRunner,
    sysfs: &Path,
    portal: &Portal,
) -> Result<(), ExecError> {
    if session_of(sysfs, portal).is_some() {
        return Ok(());
    }
    let node = || node_cmd(portal);
    ensure_iface(runner, portal).await?;
    let mut discover = Cmd::new("iscsiadm").args([
        "--mode",
        "discoverydb",
        "--type",
        "sendtargets",
        "--portal",
        &portal.address,
    ]);
    discover = discover.args(["--interface", &iface_name(portal)]);
    runner.run_ok(&discover.arg("--discover")).await?;
    if let Some(chap) = &portal.chap {
        let update = |name: &str, value: &str| {
            node().args(["--op", "update", "--name", name, "--value", value])
        };
        runner
            .run_ok(&update("node.session.auth.authmethod", "CHAP"))
            .await?;
        // iscsiadm takes passwords only as arguments (stored in its node
        // database); each shows in the process list for this one call, but
        // never in an error or a log (`secret_arg`).
        let mut settings = vec![
            ("node.session.auth.username", chap),
            ("node.session.auth.password", chap),
        ];
        if let Some(target) = &portal.target_chap {
            settings.push(("node.session.auth.username_in", target));
            settings.push(("node.session.auth.password_in", target));
        }
        for (name, c) in settings {
            let cmd = match name.starts_with("node.session.auth.username") {
                true => update(name, &c.username),
                false => node()
                    .args(["--op", "update", "--name", name, "--value"])
                    .secret_arg(&c.password),
            };
            runner.run_ok(&cmd).await?;
        }
    }
    runner.run_ok(&node().arg("--login")).await?;
    Ok(())
}

/// Logs out of the target's session, if there is one.
pub async fn logout(
    runner: &dyn CommandRunner,
    sysfs: &Path,
    portal: &Portal,
) -> Result<(), ExecError> {
    let Some(session) = session_of(sysfs, portal) else {
        return Ok(());
    };
    // By its number: only this pool's session, whatever iface it came through.
    let sid = session.trim_start_matches("session");
    runner
        .run_ok(&Cmd::new("iscsiadm").args(["--mode", "session", "--sid", sid, "--logout"]))
        .await?;
    Ok(())
}

/// The session (`sessionN` under `class/iscsi_session`) to the portal's
/// target through the pool's iface (`ifacename`; where the kernel does not
/// show it, by target alone). A portal given by IP address must also be
/// the session's connection's (`class/iscsi_connection/connectionN:0/
/// persistent_address` and `_port`): a pool with several portals has one
/// session to each.
pub fn session_of(sysfs: &Path, portal: &Portal) -> Option<String> {
    let dir = sysfs.join("class/iscsi_session");
    let iface = iface_name(portal);
    let at: Option<std::net::SocketAddr> = portal.address.parse().ok();
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let session = e.file_name().to_string_lossy().into_owned();
        let name = read(e.path().join("targetname"))?;
        let through = read(e.path().join("ifacename")).is_none_or(|i| i == iface);
        let conn = sysfs.join("class/iscsi_connection").join(format!(
            "connection{}:0",
            session.trim_start_matches("session")
        ));
        // What the kernel shows, where it shows something this can read;
        // anything else counts as unknown (a match), as before addresses.
        let addr = read(conn.join("persistent_address")).and_then(|a| a.parse::<IpAddr>().ok());
        let port = read(conn.join("persistent_port")).and_then(|p| p.parse::<u16>().ok());
        let there = match (at, addr, port) {
            (Some(at), Some(addr), Some(port)) => addr == at.ip() && port == at.port(),
            _ => true,
        };
        (name == portal.target && through && there).then_some(session)
    })
}

/// The SCSI unit (`…/target*/H:C:T:L`) of LUN `lun` in `session`:
/// `class/iscsi_session/sessionN/device/target*/H:C:T:L`.
pub fn lun_unit(sysfs: &Path, session: &str, lun: u32) -> Option<PathBuf> {
    let dev = sysfs
        .join("class/iscsi_session")
        .join(session)
        .join("device");
    for t in std::fs::read_dir(&dev).ok()?.flatten() {
        if !t.file_name().to_string_lossy().starts_with("target") {
            continue;
        }
        for unit in std::fs::read_dir(t.path()).ok()?.flatten() {
            let name = unit.file_name().to_string_lossy().into_owned();
            if name.rsplit(':').next().and_then(|l| l.parse::<u32>().ok()) == Some(lun)
                && name.split(':').count() == 4
            {
                return Some(unit.path());
            }
        }
    }
    None
}

/// The block device (`/dev/sdX`) of a SCSI unit, once sd has bound it.
pub fn block_of(unit: &Path) -> Option<PathBuf> {
    let block = std::fs::read_dir(unit.join("block"))
        .ok()?
        .flatten()
        .next()?;
    Some(Path::new("/dev").join(block.file_name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fake::{FakeRunner, Reply};

    // Recorded from libiscsi 1.19 against tgt 1.0.85.
    const LS: &str = "Target:iqn.2026-11.io.pool-csi:chap Portal:127.0.0.1:3270,1
Lun:0    Type:STORAGE_ARRAY_CONTROLLER
Lun:1    Type:DIRECT_ACCESS (Size:31M)
Target:iqn.2026-11.io.pool-csi:t1 Portal:127.0.0.1:3270,1
Lun:0    Type:STORAGE_ARRAY_CONTROLLER
Lun:1    Type:DIRECT_ACCESS (Size:63M)
Lun:2    Type:DIRECT_ACCESS (Size:127M)
";
    const CAP: &str = "RETURNED LOGICAL BLOCK ADDRESS:131071
LOGICAL BLOCK LENGTH IN BYTES:512
P_TYPE:0 PROT_EN:0
Total size:67108864
";

    #[test]
    fn parses_targets_luns_sizes_and_serials() {
        let t = parse_ls(LS);
        assert_eq!(t.len(), 2);
        assert_eq!(t[1], ("iqn.2026-11.io.pool-csi:t1".into(), vec![1, 2]));
        assert_eq!(parse_capacity(CAP), Some(64 << 20));
    }

    /// An identity is the serial, or the LUN's place where the target has
    /// no serial page; a failed inquiry is an error, never another identity.
    #[tokio::test]
    async fn identities_come_from_the_serial_page_and_failures_are_errors() {
        let p = Portal::new("127.0.0.1:3299", "iqn.2026-11.io.pool-csi:rec");
        let inq = ["iscsi-inq", "-e", "1", "-c", "128", "*"];
        let runner = FakeRunner::new()
            .expect(inq, Reply::recorded("iscsi/inq_serial"))
            .expect(inq, Reply::recorded("iscsi/inq_page_unsupported"))
            .expect(inq, Reply::ok().stdout("Unit Serial Number:[    ]\n"))
            .expect(inq, Reply::recorded("iscsi/inq_no_such_lun"))
            .expect(inq, Reply::recorded("iscsi/inq_unreachable"))
            .expect(inq, Reply::ok());
        let id = |n| lun_identity(&runner, &p, n);
        assert_eq!(id(1).await.unwrap(), "serial:orig0001");
        assert_eq!(id(1).await.unwrap(), "iqn.2026-11.io.pool-csi:rec:lun1");
        assert_eq!(id(1).await.unwrap(), "iqn.2026-11.io.pool-csi:rec:lun1");
        let gone = id(7).await.unwrap_err();
        assert!(is_no_such_lun(&gone), "{gone}");
        let down = id(1).await.unwrap_err();
        assert!(!is_no_such_lun(&down));
        assert!(down.to_string().contains("Login Failed"), "{down}");
        let silent = id(1).await.unwrap_err().to_string();
        assert!(silent.contains("no unit serial number"), "{silent}");
    }

    #[test]
    fn portals_get_the_default_port() {
        assert_eq!(Portal::new("10.0.0.5", "iqn.x").address, "10.0.0.5:3260");
        assert_eq!(Portal::new("san:3270", "iqn.x").address, "san:3270");
        assert_eq!(Portal::new("[fd00::1]", "iqn.x").address, "[fd00::1]:3260");
    }

    #[tokio::test]
    async fn inventory_reads_exact_sizes_and_keeps_secrets_out_of_argv() {
        let mut p = Portal::new("127.0.0.1:3270", "iqn.2026-11.io.pool-csi:t1");
        p.chap = Some(Chap {
            username: "alice".into(),
            password: "s3cret".into(),
        });
        let runner = FakeRunner::new()
            .expect(
                ["iscsi-ls", "--show-luns", "iscsi://127.0.0.1:3270"],
                Reply::ok().stdout(LS),
            )
            .expect(["iscsi-readcapacity16", "*"], Reply::ok().stdout(CAP))
            .expect(
                ["iscsi-inq", "-e", "1", "-c", "128", "*"],
                Reply::ok().stdout("Unit Serial Number:[ beaf11]"),
            )
            .expect(
                ["iscsi-readcapacity16", "*"],
                Reply::ok().stdout("Total size:134217728"),
            )
            .expect(
                ["iscsi-inq", "-e", "1", "-c", "128", "*"],
                Reply::recorded("iscsi/inq_page_unsupported"),
            );
        let luns = inventory(&runner, &p).await.unwrap();
        assert_eq!(
            luns,
            vec![
                Lun {
                    number: 1,
                    size: 64 << 20,
                    identity: "serial:beaf11".into(),
                    address: "LUN 1".into(),
                    device: None,
                },
                Lun {
                    number: 2,
                    size: 128 << 20,
                    identity: "iqn.2026-11.io.pool-csi:t1:lun2".into(),
                    address: "LUN 2".into(),
                    device: None,
                },
            ]
        );
        assert!(runner.calls().iter().all(|c| !c.contains("s3cret")));

        p.target = "iqn.wrong".into();
        let runner = FakeRunner::new().expect(["iscsi-ls", "*", "*"], Reply::ok().stdout(LS));
        let e = inventory(&runner, &p).await.unwrap_err().to_string();
        assert!(e.contains("does not offer target iqn.wrong"), "{e}");
    }

    /// One failed inquiry fails the inventory: LUN 1 must not turn into
    /// `<target>:lun1`, which no claim names (it would look free).
    #[tokio::test]
    async fn a_failed_inquiry_fails_the_inventory() {
        let p = Portal::new("127.0.0.1:3270", "iqn.2026-11.io.pool-csi:t1");
        let runner = FakeRunner::new()
            .expect(["iscsi-ls", "*", "*"], Reply::ok().stdout(LS))
            .expect(["iscsi-readcapacity16", "*"], Reply::ok().stdout(CAP))
            .expect(
                ["iscsi-inq", "-e", "1", "-c", "128", "*"],
                Reply::recorded("iscsi/inq_unreachable"),
            );
        let e = inventory(&runner, &p).await.unwrap_err().to_string();
        assert!(e.contains("iscsi-inq") && e.contains("Login Failed"), "{e}");
    }

    /// sysfs as the kernel lays it out for one session with two LUNs.
    /// SendTargets discovery of the test portal through `iface`.
    fn discover(iface: &str) -> Vec<String> {
        [
            "iscsiadm",
            "--mode",
            "discoverydb",
            "--type",
            "sendtargets",
            "--portal",
            "127.0.0.1:3260",
            "--interface",
            iface,
            "--discover",
        ]
        .map(String::from)
        .to_vec()
    }

    fn session_tree() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let s = root.path().join("class/iscsi_session/session3");
        std::fs::create_dir_all(&s).unwrap();
        std::fs::write(s.join("targetname"), "iqn.2026-11.io.pool-csi:t1\n").unwrap();
        for (hctl, dev) in [("4:0:0:1", "sdb"), ("4:0:0:2", "sdc")] {
            let b = s
                .join("device/target4:0:0")
                .join(hctl)
                .join("block")
                .join(dev);
            std::fs::create_dir_all(b).unwrap();
        }
        root
    }

    #[test]
    fn finds_the_session_and_the_luns_block_device_in_sysfs() {
        let sys = session_tree();
        assert_eq!(
            session_of(
                sys.path(),
                &Portal::new("127.0.0.1", "iqn.2026-11.io.pool-csi:t1")
            )
            .as_deref(),
            Some("session3")
        );
        assert_eq!(
            session_of(sys.path(), &Portal::new("127.0.0.1", "iqn.other")),
            None
        );
        // Through another iface: not this pool's session.
        std::fs::write(
            sys.path().join("class/iscsi_session/session3/ifacename"),
            "pool-csi-0123456789abcdef\n",
        )
        .unwrap();
        let p = Portal::new("127.0.0.1", "iqn.2026-11.io.pool-csi:t1");
        assert_eq!(session_of(sys.path(), &p), None, "the default iface's pool");
        let unit = lun_unit(sys.path(), "session3", 2).unwrap();
        assert!(unit.ends_with("target4:0:0/4:0:0:2"), "{}", unit.display());
        assert_eq!(block_of(&unit), Some(PathBuf::from("/dev/sdc")));
        assert_eq!(lun_unit(sys.path(), "session3", 7), None, "a vanished LUN");
    }

    #[tokio::test]
    async fn login_is_skipped_when_a_session_exists_and_runs_iscsiadm_otherwise() {
        let sys = session_tree();
        let p = Portal::new("127.0.0.1", "iqn.2026-11.io.pool-csi:t1");
        let none = FakeRunner::new();
        login(&none, sys.path(), &p).await.unwrap();
        assert!(none.calls().is_empty());

        let empty = tempfile::tempdir().unwrap();
        let runner = FakeRunner::new()
            .expect(discover("default"), Reply::ok())
            .expect(node(&["--login"]), Reply::ok());
        login(&runner, empty.path(), &p).await.unwrap();
        assert_eq!(runner.calls().len(), 2);
    }

    /// `iscsiadm --mode node` for t1 at 127.0.0.1 through the default iface,
    /// then `rest`.
    fn node(rest: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = [
            "iscsiadm",
            "--mode",
            "node",
            "--targetname",
            "iqn.2026-11.io.pool-csi:t1",
            "--portal",
            "127.0.0.1:3260",
            "--interface",
            "default",
        ]
        .map(String::from)
        .to_vec();
        v.extend(rest.iter().map(|s| s.to_string()));
        v
    }

    /// CHAP (and the target's side of mutual CHAP) go into the node record
    /// before the login; iscsiadm takes them no other way.
    #[tokio::test]
    async fn chap_and_mutual_chap_are_set_before_the_login() {
        let mut p = Portal::new("127.0.0.1", "iqn.2026-11.io.pool-csi:t1");
        let chap = |u: &str, pw: &str| {
            Some(Chap {
                username: u.into(),
                password: pw.into(),
            })
        };
        p.chap = chap("alice", "s3cret-pass");
        p.target_chap = chap("tgt-bob", "tgt-secret-1");
        let set = |k: &str, v: &str| node(&["--op", "update", "--name", k, "--value", v]);
        let runner = FakeRunner::new()
            .expect(discover("default"), Reply::ok())
            .expect(set("node.session.auth.authmethod", "CHAP"), Reply::ok())
            .expect(set("node.session.auth.username", "alice"), Reply::ok())
            .expect(
                set("node.session.auth.password", "s3cret-pass"),
                Reply::ok(),
            )
            .expect(set("node.session.auth.username_in", "tgt-bob"), Reply::ok())
            .expect(
                set("node.session.auth.password_in", "tgt-secret-1"),
                Reply::ok(),
            )
            .expect(node(&["--login"]), Reply::ok());
        let empty = tempfile::tempdir().unwrap();
        login(&runner, empty.path(), &p).await.unwrap();
    }

    #[tokio::test]
    async fn logout_runs_only_while_a_session_exists() {
        let sys = session_tree();
        let p = Portal::new("127.0.0.1", "iqn.2026-11.io.pool-csi:t1");
        let runner = FakeRunner::new().expect(
            ["iscsiadm", "--mode", "session", "--sid", "3", "--logout"],
            Reply::ok(),
        );
        logout(&runner, sys.path(), &p).await.unwrap();
        let none = FakeRunner::new();
        let empty = tempfile::tempdir().unwrap();
        logout(&none, empty.path(), &p).await.unwrap();
        assert!(none.calls().is_empty(), "no session, no command");
    }

    /// A pool that names its initiator logs in through its own iface with
    /// that name (made when missing, then given the name), and only its own
    /// session is logged out.
    #[tokio::test]
    async fn a_pools_initiator_logs_in_through_its_own_iface() {
        let mut p = Portal::new("127.0.0.1", "iqn.2026-11.io.pool-csi:t1");
        p.initiator = Some("iqn.2026-11.io.example:node-a".into());
        let iface = iface_of(&p).unwrap();
        assert!(
            iface.starts_with("pool-csi-") && iface.len() == 25,
            "{iface}"
        );
        let other = Portal {
            initiator: Some("iqn.2026-11.io.example:node-b".into()),
            ..p.clone()
        };
        assert_ne!(iface_of(&other), Some(iface.clone()));
        let node = |op: &str| {
            vec![
                "iscsiadm".to_string(),
                "--mode".into(),
                "node".into(),
                "--targetname".into(),
                "iqn.2026-11.io.pool-csi:t1".into(),
                "--portal".into(),
                "127.0.0.1:3260".into(),
                "--interface".into(),
                iface.clone(),
                op.into(),
            ]
        };
        let iface_cmd = |rest: &[&str]| {
            let mut v: Vec<String> = ["iscsiadm", "--mode", "iface", "--interface", iface.as_str()]
                .map(String::from)
                .to_vec();
            v.extend(rest.iter().map(|s| s.to_string()));
            v
        };
        let empty = tempfile::tempdir().unwrap();
        // After the iface is there: its name, discovery and login through it.
        let rest = |r: FakeRunner| {
            r.expect(
                iface_cmd(&[
                    "--op",
                    "update",
                    "--name",
                    "iface.initiatorname",
                    "--value",
                    "iqn.2026-11.io.example:node-a",
                ]),
                Reply::ok(),
            )
            .expect(discover(&iface), Reply::ok())
            .expect(node("--login"), Reply::ok())
        };
        let runner = rest(
            FakeRunner::new()
                .expect(iface_cmd(&["--op", "show"]), Reply::exit(21))
                .expect(iface_cmd(&["--op", "new"]), Reply::ok()),
        );
        login(&runner, empty.path(), &p).await.unwrap();
        assert_eq!(runner.calls().len(), 5, "{:?}", runner.calls());

        // An iface that exists is not made again (`new` would reset its
        // initiator name), only updated.
        let existing = rest(FakeRunner::new().expect(iface_cmd(&["--op", "show"]), Reply::ok()));
        login(&existing, empty.path(), &p).await.unwrap();
        assert_eq!(existing.calls().len(), 4, "{:?}", existing.calls());
        assert!(existing.calls().iter().all(|c| !c.contains("--op new")));

        // Any other failure to make the iface stops the login.
        let failing = FakeRunner::new()
            .expect(iface_cmd(&["--op", "show"]), Reply::exit(21))
            .expect(
                iface_cmd(&["--op", "new"]),
                Reply::exit(7).stderr("iscsiadm: cannot open iface db"),
            );
        let e = login(&failing, empty.path(), &p).await.unwrap_err();
        assert!(e.to_string().contains("cannot open iface db"), "{e}");

        // Its session is found through its iface, and logged out by number.
        let sys = session_tree();
        let s3 = sys.path().join("class/iscsi_session/session3");
        std::fs::write(s3.join("ifacename"), "default\n").unwrap();
        let none = FakeRunner::new();
        logout(&none, sys.path(), &p).await.unwrap();
        assert!(
            none.calls().is_empty(),
            "the default iface's session is another pool's"
        );
        std::fs::write(s3.join("ifacename"), format!("{iface}\n")).unwrap();
        let runner = FakeRunner::new().expect(
            ["iscsiadm", "--mode", "session", "--sid", "3", "--logout"],
            Reply::ok(),
        );
        logout(&runner, sys.path(), &p).await.unwrap();
        assert_eq!(runner.calls().len(), 1);
    }

    #[tokio::test]
    async fn a_session_is_rescanned_by_its_number() {
        let runner = FakeRunner::new().expect(
            ["iscsiadm", "--mode", "session", "--sid", "3", "--rescan"],
            Reply::ok(),
        );
        rescan(&runner, "session3").await.unwrap();
        assert_eq!(runner.calls().len(), 1);
    }
}
