//! `lvm`: volume groups and logical volumes. Reports are read as JSON
//! (`--reportformat json`, sizes in bytes), never as human output. Exit code
//! 5 with "not found" means the VG or LV does not exist.
//!
//! Where the kernel has no device-mapper, a pool can run LVM with
//! `global{activation=0}` (the pool's `lvm.noActivation`): metadata work —
//! create, tag, extend, remove, report — still happens for real; nothing can
//! be activated, so such LVs cannot be attached on that node.

use crate::exec::{Cmd, CommandRunner, ExecError};
use serde::Deserialize;
use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// The columns `vgs` reports (`-o`).
pub const VGS_FIELDS: &str = "vg_name,vg_size,vg_free,vg_extent_size";
/// The columns `lvs` reports (`-o`).
pub const LVS_FIELDS: &str =
    "lv_name,lv_size,lv_tags,lv_attr,pool_lv,origin,data_percent,metadata_percent,segtype";
/// The LV columns of `fullreport`, whose LV subreport takes no segment
/// column (`segtype`).
pub const FULL_LV_FIELDS: &str =
    "lv_name,lv_size,lv_tags,lv_attr,pool_lv,origin,data_percent,metadata_percent";

/// Runs lvm subcommands for one pool.
pub struct Lvm<'a> {
    pub runner: &'a dyn CommandRunner,
    pub no_activation: bool,
    /// When known, the VG's PVs: lvm then scans only these (each call is
    /// ~40% faster than scanning every block device of the node).
    pub devices: &'a [std::path::PathBuf],
    /// `LVM_SYSTEM_DIR` (see [`super::lvm_system`]); None: the host's.
    pub system_dir: Option<&'a Path>,
    /// The pool's long-lived shell, for the commands that may go there.
    pub shell: Option<&'a super::lvm_shell::LvmShell>,
}

/// One VG's space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vg {
    pub name: String,
    pub size: u64,
    pub free: u64,
    pub extent_size: u64,
}

/// One LV as lvs reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Lv {
    pub lv_name: String,
    #[serde(deserialize_with = "bytes")]
    pub lv_size: u64,
    #[serde(default)]
    pub lv_tags: String,
    #[serde(default)]
    pub lv_attr: String,
    #[serde(default)]
    pub pool_lv: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub data_percent: String,
    #[serde(default)]
    pub metadata_percent: String,
    #[serde(default)]
    pub segtype: String,
}

impl Lv {
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.lv_tags.split(',').filter(|t| !t.is_empty())
    }

    /// The value of a `key=value` tag.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags()
            .find_map(|t| t.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags().any(|t| t == tag)
    }

    /// Percent as a fraction (thin pool data/metadata use).
    pub fn data_used(&self) -> f64 {
        self.data_percent.parse::<f64>().unwrap_or(0.0) / 100.0
    }
}

fn bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

#[derive(Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Deserialize)]
struct LvSection {
    lv: Vec<Lv>,
}

#[derive(Deserialize)]
struct VgSection {
    vg: Vec<VgRaw>,
}

#[derive(Deserialize)]
struct VgRaw {
    vg_name: String,
    vg_size: String,
    vg_free: String,
    vg_extent_size: String,
}

pub fn parse_lvs(json: &[u8]) -> Result<Vec<Lv>, serde_json::Error> {
    let r: Report<LvSection> = serde_json::from_slice(json)?;
    Ok(r.report.into_iter().flat_map(|s| s.lv).collect())
}

pub fn parse_vgs(json: &[u8]) -> Result<Vec<Vg>, String> {
    let r: Report<VgSection> = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    vgs_of(r.report.into_iter().flat_map(|s| s.vg))
}

#[derive(Deserialize)]
struct FullSection {
    #[serde(default)]
    vg: Vec<VgRaw>,
    #[serde(default)]
    lv: Vec<Lv>,
}

/// `lvm fullreport` of one VG: the VG and its LVs from one scan (None: no
/// such VG in the report).
pub fn parse_fullreport(json: &[u8]) -> Result<Option<(Vg, Vec<Lv>)>, String> {
    let r: Report<FullSection> = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let Some(section) = r.report.into_iter().next() else {
        return Ok(None);
    };
    Ok(vgs_of(section.vg)?
        .into_iter()
        .next()
        .map(|vg| (vg, section.lv)))
}

fn vgs_of(raw: impl IntoIterator<Item = VgRaw>) -> Result<Vec<Vg>, String> {
    raw.into_iter()
        .map(|v| {
            let n = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
            Ok(Vg {
                size: n(&v.vg_size)?,
                free: n(&v.vg_free)?,
                extent_size: n(&v.vg_extent_size)?,
                name: v.vg_name,
            })
        })
        .collect()
}

/// lvm commands run by this process (reports, then changes), for the
/// node's metrics: a report reused costs none.
static COMMANDS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// `pool_csi_lvm_commands_total` in Prometheus text format.
pub fn render_metrics() -> String {
    let n = |i: usize| COMMANDS[i].load(Ordering::Relaxed);
    format!(
        "# HELP pool_csi_lvm_commands_total lvm commands run (in the pool's shell or alone), by kind.\n# TYPE pool_csi_lvm_commands_total counter\npool_csi_lvm_commands_total{{kind=\"report\"}} {}\npool_csi_lvm_commands_total{{kind=\"change\"}} {}\n",
        n(0),
        n(1)
    )
}

/// Whether an lvm failure says the object does not exist.
pub fn is_not_found(e: &ExecError) -> bool {
    matches!(e, ExecError::Failed { status: 5, stderr, .. } if stderr.contains("not found") || stderr.contains("Failed to find"))
}

impl Lvm<'_> {
    fn cmd(&self, sub: &str) -> Cmd {
        // Descriptors the node plugin inherited are not LVM's business; its
        // warning about each would end up in every error message.
        let mut c = Cmd::new("lvm")
            .arg(sub)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1");
        if let Some(dir) = self.system_dir {
            c = c.env("LVM_SYSTEM_DIR", &dir.display().to_string());
        }
        if self.no_activation {
            c = c.args(["--config", "global{activation=0}"]);
        }
        if !self.devices.is_empty() {
            let list: Vec<String> = self
                .devices
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            c = c.arg("--devices").arg(list.join(","));
        }
        c.timeout(Duration::from_secs(120))
    }

    /// Runs `cmd` in the shell when there is one (and it may go there),
    /// else on its own; a non-zero exit is [`ExecError::Failed`].
    async fn run_ok(&self, cmd: &Cmd) -> Result<crate::exec::Output, ExecError> {
        let report = matches!(
            cmd.argv().get(1).map(String::as_str),
            Some("vgs" | "lvs" | "pvs" | "fullreport")
        );
        COMMANDS[usize::from(!report)].fetch_add(1, Ordering::Relaxed);
        match self.shell {
            Some(shell) => shell.run(self.runner, cmd).await?.succeeded(cmd),
            None => self.runner.run_ok(cmd).await,
        }
    }

    fn bad_json(cmd: &Cmd, e: impl std::fmt::Display) -> ExecError {
        ExecError::Failed {
            cmd: cmd.to_string(),
            status: 0,
            stderr: format!("unreadable report: {e}"),
        }
    }

    /// The VG, or None when it does not exist.
    pub async fn vg(&self, vg: &str) -> Result<Option<Vg>, ExecError> {
        let cmd = self
            .cmd("vgs")
            .args([
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                VGS_FIELDS,
            ])
            .arg(vg);
        match self.run_ok(&cmd).await {
            Ok(out) => Ok(parse_vgs(&out.stdout)
                .map_err(|e| Self::bad_json(&cmd, e))?
                .into_iter()
                .next()),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The VG and its LVs from one scan (`fullreport`, the other sections
    /// cut to one column), or None when the VG does not exist: what
    /// [`Self::vg`] and [`Self::lvs`] give, for one command instead of two.
    pub async fn vg_and_lvs(&self, vg: &str) -> Result<Option<(Vg, Vec<Lv>)>, ExecError> {
        let cmd = self
            .cmd("fullreport")
            .args(["--reportformat", "json", "--units", "b", "--nosuffix"])
            .args(["--configreport", "vg", "-o", VGS_FIELDS])
            .args(["--configreport", "lv", "-o", FULL_LV_FIELDS])
            .args(["--configreport", "pv", "-o", "pv_name"])
            .args(["--configreport", "pvseg", "-o", "pvseg_start"])
            .args(["--configreport", "seg", "-o", "segtype"])
            .arg(vg);
        match self.run_ok(&cmd).await {
            Ok(out) => parse_fullreport(&out.stdout).map_err(|e| Self::bad_json(&cmd, e)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn lvs(&self, vg: &str) -> Result<Vec<Lv>, ExecError> {
        let cmd = self
            .cmd("lvs")
            .args(["--reportformat", "json", "--units", "b", "--nosuffix", "-o"])
            .arg(LVS_FIELDS)
            .arg(vg);
        let out = self.run_ok(&cmd).await?;
        parse_lvs(&out.stdout).map_err(|e| Self::bad_json(&cmd, e))
    }

    fn tagged(mut c: Cmd, tags: &[String]) -> Cmd {
        for t in tags {
            c = c.arg("--addtag").arg(t);
        }
        c
    }

    /// A linear (or striped) LV of `bytes`.
    pub async fn create_linear(
        &self,
        vg: &str,
        name: &str,
        bytes: u64,
        stripes: Option<(u32, u64)>,
        tags: &[String],
    ) -> Result<(), ExecError> {
        let mut c = self
            .cmd("lvcreate")
            .args(["--yes", "--wipesignatures", "y", "-n", name, "-L"])
            .arg(format!("{bytes}b"));
        if let Some((n, size)) = stripes {
            c = c
                .arg("-i")
                .arg(n.to_string())
                .arg("-I")
                .arg(format!("{}k", size / 1024));
        }
        if self.no_activation {
            c = c.args(["-an", "-Zn"]); // nothing can be activated, so nothing can be zeroed
        }
        self.run_ok(&Self::tagged(c, tags).arg(vg)).await?;
        Ok(())
    }

    /// A thin LV of virtual size `bytes` in `vg/pool`.
    pub async fn create_thin(
        &self,
        vg: &str,
        pool: &str,
        name: &str,
        bytes: u64,
        tags: &[String],
    ) -> Result<(), ExecError> {
        let c = self
            .cmd("lvcreate")
            .args(["--yes", "-n", name, "-V"])
            .arg(format!("{bytes}b"))
            .arg("--thinpool")
            .arg(format!("{vg}/{pool}"));
        self.run_ok(&Self::tagged(c, tags)).await?;
        Ok(())
    }

    /// A thin pool of `bytes` (pool-build).
    pub async fn create_thin_pool(
        &self,
        vg: &str,
        pool: &str,
        bytes: u64,
    ) -> Result<(), ExecError> {
        let c = self
            .cmd("lvcreate")
            .args(["--yes", "--type", "thin-pool", "-n", pool, "-L"])
            .arg(format!("{bytes}b"))
            .arg(vg);
        self.run_ok(&c).await?;
        Ok(())
    }

    /// A snapshot of `vg/origin`: thin (no size, activation not skipped) when
    /// `cow_bytes` is None, else a COW snapshot of that size.
    pub async fn create_snapshot(
        &self,
        vg: &str,
        origin: &str,
        name: &str,
        cow_bytes: Option<u64>,
        tags: &[String],
    ) -> Result<(), ExecError> {
        let mut c = self
            .cmd("lvcreate")
            .args(["--yes", "--snapshot", "-n", name]);
        c = match cow_bytes {
            Some(b) => c.arg("-L").arg(format!("{b}b")),
            None => c.args(["--setactivationskip", "n"]),
        };
        self.run_ok(&Self::tagged(c, tags).arg(format!("{vg}/{origin}")))
            .await?;
        Ok(())
    }

    pub async fn extend(&self, vg: &str, name: &str, bytes: u64) -> Result<(), ExecError> {
        let c = self
            .cmd("lvextend")
            .arg("-L")
            .arg(format!("{bytes}b"))
            .arg(format!("{vg}/{name}"));
        self.run_ok(&c).await?;
        Ok(())
    }

    /// Takes tag `tag` off LV `name`.
    pub async fn del_tag(&self, vg: &str, name: &str, tag: &str) -> Result<(), ExecError> {
        let c = self
            .cmd("lvchange")
            .arg("--deltag")
            .arg(tag)
            .arg(format!("{vg}/{name}"));
        self.run_ok(&c).await?;
        Ok(())
    }

    pub async fn remove(&self, vg: &str, name: &str) -> Result<(), ExecError> {
        match self
            .run_ok(
                &self
                    .cmd("lvremove")
                    .arg("--yes")
                    .arg(format!("{vg}/{name}")),
            )
            .await
        {
            Err(e) if is_not_found(&e) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    pub async fn activate(&self, vg: &str, name: &str) -> Result<(), ExecError> {
        self.run_ok(
            &self
                .cmd("lvchange")
                .args(["--activate", "y", "--ignoreactivationskip"])
                .arg(format!("{vg}/{name}")),
        )
        .await?;
        Ok(())
    }

    pub async fn pvcreate(&self, devices: &[&Path]) -> Result<(), ExecError> {
        self.run_ok(
            &self
                .cmd("pvcreate")
                .arg("--yes")
                .args(devices.iter().map(|d| d.as_os_str())),
        )
        .await?;
        Ok(())
    }

    pub async fn vgcreate(&self, vg: &str, devices: &[&Path]) -> Result<(), ExecError> {
        self.run_ok(
            &self
                .cmd("vgcreate")
                .arg(vg)
                .args(devices.iter().map(|d| d.as_os_str())),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::fake::{FakeRunner, Reply};

    #[test]
    fn parses_real_reports() {
        let lvs = parse_lvs(include_bytes!(
            "../../tests/fixtures/commands/lvm/lvs_two_lvs.json"
        ))
        .unwrap();
        assert_eq!(lvs.len(), 2);
        assert_eq!(lvs[0].lv_size, 16 << 20);
        assert!(lvs[0].has_tag("pool-csi"));
        assert_eq!(lvs[0].tag("pool-csi.io/kind"), Some("volume"));
        assert!(!lvs[1].has_tag("pool-csi"));
        let vgs = parse_vgs(include_bytes!("../../tests/fixtures/commands/lvm/vgs.json")).unwrap();
        assert_eq!(
            vgs[0],
            Vg {
                name: "vgtest".into(),
                size: 120 << 20,
                free: 96 << 20,
                extent_size: 4 << 20
            }
        );
    }

    #[test]
    fn a_fullreport_gives_what_vgs_and_lvs_give() {
        let full = include_bytes!("../../tests/fixtures/commands/lvm/fullreport_two_lvs.json");
        let (vg, lvs) = parse_fullreport(full).unwrap().expect("the VG");
        let vgs = parse_vgs(include_bytes!("../../tests/fixtures/commands/lvm/vgs.json")).unwrap();
        assert_eq!(vg, vgs[0]);
        let mut alone = parse_lvs(include_bytes!(
            "../../tests/fixtures/commands/lvm/lvs_two_lvs.json"
        ))
        .unwrap();
        for lv in &mut alone {
            lv.segtype.clear(); // a segment column, not in fullreport's LV subreport
        }
        assert_eq!(lvs, alone);
        // What a missing VG leaves: an empty report.
        assert_eq!(parse_fullreport(br#"{"report": []}"#).unwrap(), None);
    }

    #[test]
    fn parses_thin_pools_and_snapshots() {
        // Written by hand in lvs's format: thin pools need device-mapper, which
        // the machine that recorded the other fixtures lacks.
        let lvs = parse_lvs(include_bytes!(
            "../../tests/fixtures/commands/lvm/lvs_thin_written_by_hand.json"
        ))
        .unwrap();
        let pool = lvs.iter().find(|l| l.segtype == "thin-pool").unwrap();
        assert!((pool.data_used() - 0.125).abs() < 1e-9);
        let snap = lvs.iter().find(|l| l.origin == "pvc-a").unwrap();
        assert_eq!(snap.tag("pool-csi.io/source"), Some("pvc-a"));
        assert_eq!(snap.tag("pool-csi.io/created"), Some("1763776000000000000"));
    }

    #[tokio::test]
    async fn missing_vg_is_none_and_no_activation_is_passed_on() {
        let runner = FakeRunner::new().expect(
            [
                "lvm",
                "vgs",
                "--config",
                "global{activation=0}",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "vg_name,vg_size,vg_free,vg_extent_size",
                "vg9",
            ],
            Reply::exit(5)
                .stderr("  Volume group \"vg9\" not found\n  Cannot process volume group vg9\n"),
        );
        let lvm = Lvm {
            runner: &runner,
            no_activation: true,
            devices: &[],
            system_dir: None,
            shell: None,
        };
        assert_eq!(lvm.vg("vg9").await.unwrap(), None);
    }

    #[tokio::test]
    async fn thin_snapshots_have_no_size_and_cow_snapshots_do() {
        let runner = FakeRunner::new()
            .expect(
                [
                    "lvm",
                    "lvcreate",
                    "--yes",
                    "--snapshot",
                    "-n",
                    "snap_s",
                    "--setactivationskip",
                    "n",
                    "--addtag",
                    "pool-csi",
                    "vg/a",
                ],
                Reply::ok(),
            )
            .expect(
                [
                    "lvm",
                    "lvcreate",
                    "--yes",
                    "--snapshot",
                    "-n",
                    "snap_t",
                    "-L",
                    "4194304b",
                    "vg/a",
                ],
                Reply::ok(),
            );
        let lvm = Lvm {
            runner: &runner,
            no_activation: false,
            devices: &[],
            system_dir: None,
            shell: None,
        };
        lvm.create_snapshot("vg", "a", "snap_s", None, &["pool-csi".into()])
            .await
            .unwrap();
        lvm.create_snapshot("vg", "a", "snap_t", Some(4 << 20), &[])
            .await
            .unwrap();
    }
}
