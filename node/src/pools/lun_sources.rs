//! Where LUN pools find their LUNs: an iSCSI target (libiscsi's tools for
//! the inventory, iscsiadm to log in), a SCSI HBA (sysfs), or the host's
//! multipath maps (sysfs and multipathd).

use super::{lun::LunSource, lun_claims::Claim};
use crate::{
    error::{io, Error, Result},
    exec::CommandRunner,
    tools::{
        iscsi::{self, Chap, Portal},
        multipath,
        persist::{Reservations, SgPersist},
        scsi::{self, Lun},
    },
    Config,
};
use pool_csi_common::{pool_spec::AdapterWwn, PoolDefinition, PoolType};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

pub struct IscsiSource {
    /// One per portal of the target (`source.host`, or each of
    /// `source.hosts`), passwords not read yet.
    portals: Vec<Portal>,
    secret_file: Option<PathBuf>,
    /// Mutual CHAP: the target's password.
    target_secret_file: Option<PathBuf>,
    runner: Arc<dyn CommandRunner>,
    sysfs: PathBuf,
}

impl IscsiSource {
    pub fn new(def: &PoolDefinition, cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        let s = &def.spec.source;
        let target = s
            .auth
            .as_ref()
            .and_then(|a| Some((a.target_username.clone()?, a.target_secret_ref.as_ref()?)));
        let hosts = match s.hosts.is_empty() {
            true => vec![s.host.clone().unwrap_or_default()],
            false => s.hosts.clone(),
        };
        let portals = hosts
            .iter()
            .map(|host| {
                let mut portal = Portal::new(host, s.device.as_deref().unwrap_or(""));
                portal.initiator = s.initiator.clone();
                // Passwords are read from the Secrets at each use (`portals()`).
                portal.chap = s.auth.as_ref().map(|a| Chap {
                    username: a.username.clone(),
                    password: String::new(),
                });
                portal.target_chap = target.as_ref().map(|(u, _)| Chap {
                    username: u.clone(),
                    password: String::new(),
                });
                portal
            })
            .collect();
        let password = |secret: &str| cfg.secrets_dir.join(secret).join("password");
        Self {
            secret_file: s.auth.as_ref().map(|a| password(&a.secret_ref)),
            target_secret_file: target.map(|(_, r)| password(r)),
            portals,
            runner,
            sysfs: cfg.sysfs_root.clone(),
        }
    }

    fn target(&self) -> &str {
        &self.portals[0].target
    }

    /// The portals with the CHAP passwords read now (Secrets rotate).
    pub fn portals(&self) -> Result<Vec<Portal>> {
        let read = |file: &Path, field: &str| {
            std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches('\n').to_string())
                .map_err(|e| {
                    Error::Precondition(format!(
                        "the CHAP secret for {} is not readable at {}: {e}; mount the Secret named in source.auth.{field}",
                        self.target(),
                        file.display()
                    ))
                })
        };
        let password = self
            .secret_file
            .as_deref()
            .map(|f| read(f, "secretRef"))
            .transpose()?;
        let target = (self.target_secret_file.as_deref())
            .map(|f| read(f, "targetSecretRef"))
            .transpose()?;
        let mut out = self.portals.clone();
        for p in &mut out {
            if let (Some(chap), Some(pw)) = (p.chap.as_mut(), &password) {
                chap.password = pw.clone();
            }
            if let (Some(chap), Some(pw)) = (p.target_chap.as_mut(), &target) {
                chap.password = pw.clone();
            }
        }
        Ok(out)
    }

    /// The unit of the claim's LUN in this node's session through `portal`
    /// (logged in first), its serial read again through the kernel.
    async fn unit_via(&self, portal: &Portal, c: &Claim) -> Result<PathBuf> {
        let at = format!("LUN {}", c.lun);
        iscsi::login(self.runner.as_ref(), &self.sysfs, portal).await?;
        let session = iscsi::session_of(&self.sysfs, portal).ok_or_else(|| {
            Error::Precondition(format!(
                "iscsiadm logged in, but no session to {} at {} shows in sysfs",
                portal.target, portal.address
            ))
        })?;
        // A LUN the target added after the login needs a scan of the session.
        if iscsi::lun_unit(&self.sysfs, &session, c.lun).is_none() {
            iscsi::rescan(self.runner.as_ref(), &session).await?;
        }
        let unit = iscsi::lun_unit(&self.sysfs, &session, c.lun).ok_or_else(|| {
            Error::Precondition(format!(
                "{at} of {} has no SCSI unit in {session}: it vanished from the target or the initiator has not scanned it",
                portal.target
            ))
        })?;
        // The kernel caches inquiry data from its scan: read it afresh.
        if let Err(e) = scsi::rescan_unit(&unit) {
            tracing::debug!(unit = %unit.display(), error = %e, "unit rescan refused; comparing the cached serial");
        }
        let kernel = scsi::unit_serial(&unit).map_err(io("read the serial number of", &unit))?;
        if let Some(serial) = kernel {
            same_lun(
                c,
                &format!("{at} (as {session} sees it)"),
                &self.origin(),
                &serial,
            )?;
        }
        Ok(unit)
    }
}

/// The block device (`/dev/sdX`) of `unit`, waiting a little for the disk
/// driver a rescan just started to bind it.
async fn block_of(unit: &Path, what: &str) -> Result<PathBuf> {
    for _ in 0..20 {
        if let Some(b) = iscsi::block_of(unit) {
            return Ok(b);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(Error::Precondition(format!(
        "{what} ({}) has no block device yet: the initiator has not bound it",
        unit.display()
    )))
}

#[tonic::async_trait]
impl LunSource for IscsiSource {
    fn pool_type(&self) -> PoolType {
        PoolType::Iscsi
    }

    /// One portal: the disk. Several: the multipath map, through
    /// mpathpersist, which registers the key on every path (sg_persist
    /// would reach one, and the others' writes would conflict).
    fn reservations<'a>(&'a self, device: &Path) -> Box<dyn Reservations + 'a> {
        let runner = self.runner.as_ref();
        match self.portals.len() {
            1 => Box::new(SgPersist::disk(runner, device.to_path_buf())),
            _ => Box::new(SgPersist::multipath(runner, device.to_path_buf())),
        }
    }

    fn origin(&self) -> String {
        format!("target {}", self.target())
    }

    /// Through the first portal that answers.
    async fn inventory(&self) -> Result<Vec<Lun>> {
        let portals = self.portals()?;
        let mut failed = Vec::new();
        for p in &portals {
            match iscsi::inventory(self.runner.as_ref(), p).await {
                Ok(luns) => return Ok(luns),
                Err(e) if portals.len() == 1 => return Err(e.into()),
                Err(e) => failed.push(format!("{}: {e}", p.address)),
            }
        }
        Err(Error::Precondition(format!(
            "no portal of {} answered: {}",
            self.origin(),
            failed.join("; ")
        )))
    }

    /// Asks the target whether LUN `c.lun` is still the LUN handed out,
    /// logs in (once per portal and node), reads the unit's serial number
    /// again through the kernel and compares once more, then answers the
    /// unit's block device — with several portals, the multipath map that
    /// joins their paths. A LUN replaced at the same number is never
    /// attached (nor wiped).
    async fn device(&self, c: &Claim) -> Result<PathBuf> {
        let portals = self.portals()?;
        let at = format!("LUN {}", c.lun);
        // The first portal that answers (a "no such LUN" is an answer).
        let mut asked = None;
        for p in &portals {
            let r = iscsi::lun_identity(self.runner.as_ref(), p, c.lun).await;
            let unanswered = r.as_ref().is_err_and(|e| !iscsi::is_no_such_lun(e));
            asked = Some(r);
            if !unanswered {
                break;
            }
        }
        let now =
            asked
                .expect("a pool has a portal")
                .map_err(|e| match iscsi::is_no_such_lun(&e) {
                    true => Error::Precondition(format!(
                        "{at} ({}) vanished from {}",
                        c.identity,
                        self.origin()
                    )),
                    false => e.into(),
                })?;
        same_lun(c, &at, &self.origin(), &now)?;
        if let [portal] = portals.as_slice() {
            let unit = self.unit_via(portal, c).await?;
            return block_of(&unit, &format!("{at} of {}", portal.target)).await;
        }
        // Several portals: a session through each, one path each.
        let mut disks = Vec::new();
        let mut failed = Vec::new();
        for p in &portals {
            let path = async {
                let unit = self.unit_via(p, c).await?;
                block_of(&unit, &format!("{at} at {}", p.address)).await
            };
            match path.await {
                Ok(disk) => disks.push(disk),
                Err(e @ Error::LunChanged { .. }) => return Err(e),
                Err(e) => failed.push(format!(
                    "{}: {}",
                    p.address,
                    pool_csi_common::full_message(&e)
                )),
            }
        }
        if disks.is_empty() {
            return Err(Error::Precondition(format!(
                "no portal of {} reached {at}: {}",
                self.origin(),
                failed.join("; ")
            )));
        }
        if !failed.is_empty() {
            tracing::warn!(target = %self.target(), lun = c.lun, failed = %failed.join("; "), "some paths are down");
        }
        let names: Vec<String> = disks
            .iter()
            .filter_map(|d| Some(d.file_name()?.to_string_lossy().into_owned()))
            .collect();
        // multipathd joins the paths asynchronously after the logins.
        for _ in 0..30 {
            if let Some(map) = names.iter().find_map(|d| multipath::holder(&self.sysfs, d)) {
                return Ok(Path::new("/dev/mapper").join(map));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(Error::Precondition(format!(
            "{at} of {} has {} path(s) ({}), but no multipath map holds them: run multipathd on the node, or give the pool one portal (source.host)",
            self.origin(),
            names.len(),
            names.join(", ")
        )))
    }

    async fn disconnect(&self) -> Result<()> {
        let mut first = None;
        for p in self.portals()? {
            if let Err(e) = iscsi::logout(self.runner.as_ref(), &self.sysfs, &p).await {
                tracing::warn!(portal = %p.address, error = %e, "logout failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// The disks behind one SCSI HBA.
pub struct ScsiSource {
    runner: Arc<dyn CommandRunner>,
    adapter: Option<String>,
    wwn: Option<AdapterWwn>,
    sysfs: PathBuf,
}

impl ScsiSource {
    pub fn new(def: &PoolDefinition, cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        Self {
            runner,
            adapter: def.spec.source.adapter.clone(),
            wwn: def.spec.source.adapter_wwn.clone(),
            sysfs: cfg.sysfs_root.clone(),
        }
    }

    /// `hostN` now: an HBA named by its WWNs is looked up each time (host
    /// numbers change when HBAs come and go). An NPIV vHBA that does not
    /// exist but names its `parent` is created there first (libvirt's
    /// `vport_create`), and then found by its names.
    fn host(&self) -> Result<String> {
        let found = scsi::resolve_adapter(&self.sysfs, self.adapter.as_deref(), self.wwn.as_ref());
        let w = match (&found, &self.wwn) {
            (Err(_), Some(w)) if w.parent.is_some() && self.adapter.is_none() => w,
            _ => return found.map_err(Error::Precondition),
        };
        // Only an HBA that is missing altogether is made (not one found
        // elsewhere than under its parent).
        let missing = scsi::resolve_adapter(
            &self.sysfs,
            None,
            Some(&AdapterWwn {
                parent: None,
                ..w.clone()
            }),
        )
        .is_err();
        if !missing {
            return found.map_err(Error::Precondition);
        }
        scsi::create_vport(&self.sysfs, w).map_err(Error::Precondition)?;
        tracing::info!(wwpn = %w.wwpn, parent = ?w.parent, "NPIV vHBA created");
        scsi::resolve_adapter(&self.sysfs, None, Some(w)).map_err(|e| {
            Error::Precondition(format!("the vHBA was created on its parent, but {e}"))
        })
    }
}

#[tonic::async_trait]
impl LunSource for ScsiSource {
    fn pool_type(&self) -> PoolType {
        PoolType::Scsi
    }

    fn reservations<'a>(&'a self, device: &Path) -> Box<dyn Reservations + 'a> {
        Box::new(SgPersist::disk(self.runner.as_ref(), device.to_path_buf()))
    }

    fn origin(&self) -> String {
        match (&self.adapter, &self.wwn) {
            (Some(a), _) => format!("HBA {a}"),
            (None, Some(w)) => format!("the HBA with wwpn {}", w.wwpn),
            (None, None) => "no HBA".into(),
        }
    }

    async fn inventory(&self) -> Result<Vec<Lun>> {
        let host = self.host()?;
        scsi::disks(&self.sysfs, &host).map_err(io("list the disks in", &self.sysfs))
    }

    async fn rescan(&self) -> Result<()> {
        let host = self.host()?;
        let sysfs = self.sysfs.clone();
        let scan = self.sysfs.join("class/scsi_host").join(&host).join("scan");
        tokio::task::spawn_blocking(move || scsi::rescan(&sysfs, &host))
            .await
            .map_err(|e| crate::error::io("scan", &scan)(std::io::Error::other(e)))?
            .map_err(crate::error::io("scan", &scan))
    }

    /// The disk with the claimed identity, its identity read again after
    /// the kernel rereads the unit (a disk replaced at the same address
    /// keeps the old cached wwid until then).
    async fn device(&self, c: &Claim) -> Result<PathBuf> {
        let host = self.host()?;
        let found = scsi::find(&self.sysfs, &host, &c.identity)
            .map_err(io("list the disks in", &self.sysfs))?;
        let Some((unit, lun)) = found else {
            return Err(Error::Precondition(format!(
                "the disk {} ({}) is not on {host} any more: it vanished or moved",
                c.identity, c.address
            )));
        };
        if let Err(e) = scsi::rescan_unit(&unit) {
            tracing::debug!(unit = %unit.display(), error = %e, "unit rescan refused; comparing the cached wwid");
        }
        let now = scsi::unit_wwid(&unit)
            .map_err(io("read the wwid of", &unit))?
            .unwrap_or_else(|| c.identity.clone());
        same_lun(c, &lun.address, &self.origin(), &now)?;
        lun.device
            .ok_or_else(|| Error::Precondition(format!("{} has no block device", lun.address)))
    }
}

/// The host's multipath maps.
pub struct MpathSource {
    runner: Arc<dyn CommandRunner>,
    sysfs: PathBuf,
}

impl MpathSource {
    pub fn new(cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        Self {
            runner,
            sysfs: cfg.sysfs_root.clone(),
        }
    }
}

#[tonic::async_trait]
impl LunSource for MpathSource {
    fn pool_type(&self) -> PoolType {
        PoolType::Mpath
    }

    fn reservations<'a>(&'a self, device: &Path) -> Box<dyn Reservations + 'a> {
        Box::new(SgPersist::multipath(
            self.runner.as_ref(),
            device.to_path_buf(),
        ))
    }

    fn origin(&self) -> String {
        "the multipath maps of this node".into()
    }

    async fn inventory(&self) -> Result<Vec<Lun>> {
        let named = multipath::multipathd_maps(self.runner.as_ref()).await;
        multipath::maps(&self.sysfs, named.as_deref())
            .map_err(io("list the multipath maps in", &self.sysfs))
    }

    async fn device(&self, c: &Claim) -> Result<PathBuf> {
        self.inventory()
            .await?
            .into_iter()
            .find(|m| m.identity == c.identity)
            .and_then(|m| m.device)
            .ok_or_else(|| {
                Error::Precondition(format!(
                    "multipath map {} ({}) is gone from this node",
                    c.identity, c.address
                ))
            })
    }
}

/// `Ok` when `found`, the identity of what is at `at` now, is the claim's.
fn same_lun(c: &Claim, at: &str, origin: &str, found: &str) -> Result<()> {
    if found == c.identity {
        return Ok(());
    }
    Err(Error::LunChanged {
        at: at.into(),
        origin: origin.into(),
        claimed: c.identity.clone(),
        found: found.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attach::AttachSource,
        exec::fake::{FakeRunner, Reply},
        pools::{lun::LunPool, CreateRequest, Pool},
        tools::{multipath::fixture::dm, scsi::fixture},
    };
    use std::time::Duration;

    const MIB: u64 = 1 << 20;

    fn def(yaml_spec: &str) -> PoolDefinition {
        PoolDefinition::parse_documents(
            &format!("apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: p }}\nspec:\n{yaml_spec}"),
            "t",
        )
        .unwrap()
        .remove(0)
    }

    fn cfg(t: &tempfile::TempDir) -> Config {
        let mut c = Config::local("n1", t.path().join("state"));
        c.sysfs_root = t.path().join("sys");
        c
    }

    /// What an attach of a pool that does not fence runs: a check that no
    /// earlier user left a reservation on `dev` (none: sg_persist's answer
    /// recorded on tgtd).
    fn no_reservations_left(runner: FakeRunner, dev: &str) -> FakeRunner {
        let pr = |what: &str| ["sg_persist", "--in", "--no-inquiry", what, dev].map(String::from);
        runner.expect(
            pr("--read-reservation"),
            Reply::recorded("sg_persist/reservation_none"),
        )
    }

    /// A scsi source whose tests expect no command.
    fn scsi(d: &PoolDefinition, c: &Config) -> ScsiSource {
        ScsiSource::new(d, c, Arc::new(FakeRunner::new()))
    }

    async fn device(p: &LunPool, name: &str) -> String {
        match p.attach_source(name).await.unwrap() {
            AttachSource::Block { device } => device.display().to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn scsi_disks_are_handed_out_best_fit_and_followed_by_identity() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        fixture::hba(&sys, 2, None);
        fixture::lun(&sys, [2, 0, 0, 0], 0, "sdb", 32, Some("naa.aaaa"));
        fixture::lun(&sys, [2, 0, 0, 1], 0, "sdc", 64, Some("naa.bbbb"));
        fixture::lun(&sys, [2, 0, 0, 2], 5, "sr0", 1, None); // a CD-ROM
        let c = cfg(&t);
        let d = def("  type: scsi\n  source: { adapter: host2 }\n");
        let runner = no_reservations_left(FakeRunner::new(), "/dev/sdc");
        let runner = Arc::new(no_reservations_left(runner, "/dev/sdf"));
        let p = LunPool::new(&d, &c, Box::new(ScsiSource::new(&d, &c, runner)))
            .with_inventory_ttl(Duration::ZERO);
        p.start().await.unwrap();
        let st = p.status(true).await;
        assert_eq!((st.capacity, st.available), (96 * MIB, 96 * MIB));

        let a = p
            .create_volume(&CreateRequest::sized("a", 20))
            .await
            .unwrap();
        assert_eq!(a.capacity, 32 * MIB, "best fit: the 32 MiB disk");
        assert_eq!(
            p.create_volume(&CreateRequest::sized("a", 20))
                .await
                .unwrap(),
            a
        );
        assert_eq!(
            p.create_volume(&CreateRequest::sized("b", 40))
                .await
                .unwrap()
                .capacity,
            64 * MIB
        );
        assert_eq!(device(&p, "b").await, "/dev/sdc");

        // Nothing fits: the HBA is rescanned once, then RESOURCE_EXHAUSTED.
        let e = p
            .create_volume(&CreateRequest::sized("c", 8))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::OutOfSpace { .. }), "{e}");
        assert!(e.to_string().contains("HBA host2"), "{e}");
        let scan = sys.join("class/scsi_host/host2/scan");
        assert_eq!(std::fs::read_to_string(&scan).unwrap(), "- - -");
        // A disk that appears (after the scan) is found by the next create.
        fixture::lun(&sys, [2, 0, 0, 3], 0, "sdd", 16, Some("naa.dddd"));
        assert_eq!(
            p.create_volume(&CreateRequest::sized("c", 8))
                .await
                .unwrap()
                .capacity,
            16 * MIB
        );

        // The kernel renames the disk (sdc -> sdf after a rescan): followed by WWN.
        let old = sys.join("devices/pci0000:00/0000:00:1f.2/host2/target2:0:0/2:0:0:1/block");
        std::fs::rename(old.join("sdc"), old.join("sdf")).unwrap();
        assert_eq!(device(&p, "b").await, "/dev/sdf");

        // A disk that vanishes: the volume turns abnormal, attach says why.
        std::fs::remove_file(sys.join("bus/scsi/devices/2:0:0:1")).unwrap();
        let gone = p.get_volume("b").await.unwrap();
        let why = gone.abnormal.unwrap();
        assert!(
            why.contains("naa.bbbb") && why.contains("vanished from HBA host2"),
            "{why}"
        );
        let e = p.attach_source("b").await.unwrap_err().to_string();
        assert!(e.contains("not on host2"), "{e}");

        // Release: the disk is free for the next volume.
        p.delete_volume("a", false).await.unwrap();
        p.delete_volume("a", false).await.unwrap();
        assert_eq!(
            p.create_volume(&CreateRequest::sized("e", 30))
                .await
                .unwrap()
                .capacity,
            32 * MIB
        );
        assert!(
            p.expand_volume("e", 33 * MIB, 0).await.is_err(),
            "LUNs do not grow"
        );
    }

    /// The disk at 2:0:0:1 is replaced by another (a new wwid at the same
    /// address): the old volume is not attached to it, says so, and the
    /// new disk is not handed out while the old volume exists.
    #[tokio::test]
    async fn a_scsi_disk_replaced_at_its_address_is_held_for_the_old_volume() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        fixture::hba(&sys, 2, None);
        fixture::lun(&sys, [2, 0, 0, 1], 0, "sdc", 64, Some("naa.bbbb"));
        let c = cfg(&t);
        let d = def("  type: scsi\n  source: { adapter: host2 }\n");
        let runner = FakeRunner::new();
        let runner = no_reservations_left(no_reservations_left(runner, "/dev/sdc"), "/dev/sdc");
        let runner = Arc::new(runner);
        let p = LunPool::new(&d, &c, Box::new(ScsiSource::new(&d, &c, runner)))
            .with_inventory_ttl(Duration::ZERO);
        p.start().await.unwrap();
        p.create_volume(&CreateRequest::sized("b", 40))
            .await
            .unwrap();
        assert_eq!(device(&p, "b").await, "/dev/sdc");
        p.detached("b").await.unwrap();
        let unit = sys.join("bus/scsi/devices/2:0:0:1");
        assert_eq!(std::fs::read_to_string(unit.join("rescan")).unwrap(), "1");
        std::fs::write(unit.join("wwid"), "naa.cccc\n").unwrap();

        let why = p.get_volume("b").await.unwrap().abnormal.unwrap();
        assert!(
            why.contains("2:0:0:1 is another LUN (naa.cccc) now"),
            "{why}"
        );
        let e = p.attach_source("b").await.unwrap_err().to_string();
        assert!(e.contains("naa.bbbb") && e.contains("not on host2"), "{e}");
        let e = p
            .create_volume(&CreateRequest::sized("c", 40))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::OutOfSpace { .. }), "{e}");
        p.delete_volume("b", false).await.unwrap();
        p.create_volume(&CreateRequest::sized("c", 40))
            .await
            .unwrap();
        assert_eq!(device(&p, "c").await, "/dev/sdc");
    }

    /// An iSCSI session with LUN 1 bound to sdb, whose cached serial number
    /// page says `serial`.
    fn iscsi_session(sys: &std::path::Path, serial: &str) {
        let unit = sys.join("class/iscsi_session/session3/device/target4:0:0/4:0:0:1");
        std::fs::create_dir_all(unit.join("block/sdb")).unwrap();
        std::fs::write(
            sys.join("class/iscsi_session/session3/targetname"),
            "iqn.2026-11.io.pool-csi:rec\n",
        )
        .unwrap();
        let mut page = vec![0u8, 0x80, 0, serial.len() as u8];
        page.extend_from_slice(serial.as_bytes());
        std::fs::write(unit.join("vpd_pg80"), page).unwrap();
    }

    /// LUN 1 as handed out, with the serial the fixtures' target reports.
    fn lun1_claim() -> Claim {
        Claim {
            identity: "serial:orig0001".into(),
            lun: 1,
            size: 32 * MIB,
            wipe: false,
            address: "LUN 1".into(),
            published: None,
            reservations: None,
        }
    }

    /// iSCSI attach checks the LUN's serial with the target before logging
    /// in, and through the kernel after: a LUN replaced at its number is
    /// refused at either check.
    #[tokio::test]
    async fn iscsi_attach_checks_the_luns_serial_before_and_after_login() {
        let t = tempfile::tempdir().unwrap();
        let c = cfg(&t);
        let sys = c.sysfs_root.clone();
        let d = def("  type: iscsi\n  source: { host: \"127.0.0.1:3299\", device: \"iqn.2026-11.io.pool-csi:rec\" }\n");
        let claim = lun1_claim();
        let inq = ["iscsi-inq", "-e", "1", "-c", "128", "*"];
        let source = |replies: Vec<Reply>| {
            let runner = replies
                .into_iter()
                .fold(FakeRunner::new(), |r, reply| r.expect(inq, reply));
            let runner = Arc::new(runner);
            (IscsiSource::new(&d, &c, runner.clone()), runner)
        };

        // The target answers another serial: refused before any login.
        let (s, runner) = source(vec![Reply::ok().stdout("Unit Serial Number:[ new0002]\n")]);
        let e = s.device(&claim).await.unwrap_err();
        assert!(matches!(e, Error::LunChanged { .. }), "{e}");
        assert!(e.to_string().contains("now serial:new0002"), "{e}");
        assert!(runner.calls().iter().all(|c| !c.starts_with("iscsiadm")));

        // The LUN is gone from the target.
        let (s, _) = source(vec![Reply::recorded("iscsi/inq_no_such_lun")]);
        let e = s.device(&claim).await.unwrap_err().to_string();
        assert!(e.contains("LUN 1 (serial:orig0001) vanished"), "{e}");

        // The target agrees, the kernel's fresh read of the unit does not.
        iscsi_session(&sys, "new0002");
        let (s, _) = source(vec![Reply::recorded("iscsi/inq_serial")]);
        let e = s.device(&claim).await.unwrap_err().to_string();
        assert!(e.contains("as session3 sees it"), "{e}");

        // Both agree: the unit's block device (logged in already).
        iscsi_session(&sys, "    orig0001");
        let (s, runner) = source(vec![Reply::recorded("iscsi/inq_serial")]);
        assert_eq!(s.device(&claim).await.unwrap(), PathBuf::from("/dev/sdb"));
        assert_eq!(runner.calls().len(), 1, "no login: the session exists");
    }

    /// Sessions `sessionN` to the fixtures' target at `address`:`port`, with
    /// LUN 1 as disk `disk` and serial orig0001.
    fn session_at(sys: &std::path::Path, n: u32, address: &str, port: u16, disk: &str) {
        let s = sys.join(format!("class/iscsi_session/session{n}"));
        let unit = s.join(format!("device/target{n}:0:0/{n}:0:0:1"));
        std::fs::create_dir_all(unit.join("block").join(disk)).unwrap();
        std::fs::write(s.join("targetname"), "iqn.2026-11.io.pool-csi:rec\n").unwrap();
        let mut page = vec![0u8, 0x80, 0, 8];
        page.extend_from_slice(b"orig0001");
        std::fs::write(unit.join("vpd_pg80"), page).unwrap();
        let conn = sys.join(format!("class/iscsi_connection/connection{n}:0"));
        std::fs::create_dir_all(&conn).unwrap();
        std::fs::write(conn.join("persistent_address"), format!("{address}\n")).unwrap();
        std::fs::write(conn.join("persistent_port"), format!("{port}\n")).unwrap();
    }

    /// A pool with two portals: the inventory comes from the first that
    /// answers; attach logs in through both (one session each, told apart
    /// by address) and answers the multipath map holding the two paths, or
    /// says multipathd is missing.
    #[tokio::test]
    async fn several_portals_are_paths_joined_by_multipath() {
        let t = tempfile::tempdir().unwrap();
        let c = cfg(&t);
        let sys = c.sysfs_root.clone();
        let d = def("  type: iscsi\n  source: { hosts: [\"10.0.0.5:3260\", \"10.0.1.5:3260\"], device: \"iqn.2026-11.io.pool-csi:rec\" }\n");
        let ls =
            |addr: &str| ["iscsi-ls", "--show-luns", &format!("iscsi://{addr}")].map(String::from);
        let inq = ["iscsi-inq", "-e", "1", "-c", "128", "*"];
        let runner = Arc::new(
            FakeRunner::new()
                .expect(ls("10.0.0.5:3260"), Reply::recorded("iscsi/inq_unreachable"))
                .expect(ls("10.0.1.5:3260"), Reply::ok().stdout("Target:iqn.2026-11.io.pool-csi:rec Portal:10.0.1.5:3260,1\nLun:1    Type:DIRECT_ACCESS (Size:31M)\n"))
                .expect(["iscsi-readcapacity16", "*"], Reply::ok().stdout("Total size:33554432\n"))
                .expect(inq, Reply::recorded("iscsi/inq_serial"))
                .expect(inq, Reply::recorded("iscsi/inq_serial"))
                .expect(inq, Reply::recorded("iscsi/inq_serial")),
        );
        let s = IscsiSource::new(&d, &c, runner.clone());
        let luns = s.inventory().await.unwrap();
        assert_eq!(luns.len(), 1, "from the second portal");

        // Logged in through both already; multipathd has not joined them.
        session_at(&sys, 3, "10.0.0.5", 3260, "sdb");
        session_at(&sys, 4, "10.0.1.5", 3260, "sdc");
        let e = s.device(&lun1_claim()).await.unwrap_err().to_string();
        assert!(
            e.contains("2 path(s) (sdb, sdc)") && e.contains("run multipathd"),
            "{e}"
        );
        // Its map holds both paths.
        crate::tools::multipath::fixture::dm(&sys, 0, "mpatha", "mpath-3600a", 32);
        for disk in ["sdb", "sdc"] {
            std::fs::create_dir_all(sys.join("block").join(disk).join("holders/dm-0")).unwrap();
        }
        assert_eq!(
            s.device(&lun1_claim()).await.unwrap(),
            PathBuf::from("/dev/mapper/mpatha")
        );
        assert!(
            runner.calls().iter().all(|c| !c.starts_with("iscsiadm")),
            "no login: both sessions exist"
        );
        let one = crate::tools::iscsi::Portal::new("10.0.1.5:3260", "iqn.2026-11.io.pool-csi:rec");
        assert_eq!(
            crate::tools::iscsi::session_of(&sys, &one).as_deref(),
            Some("session4")
        );
    }

    /// A LUN the target added after the login: the session is rescanned,
    /// and the unit the scan brings is attached.
    #[tokio::test]
    async fn a_lun_added_after_the_login_is_found_by_a_rescan() {
        let t = tempfile::tempdir().unwrap();
        let c = cfg(&t);
        let sys = c.sysfs_root.clone();
        iscsi_session(&sys, "    orig0001");
        let unit = sys.join("class/iscsi_session/session3/device/target4:0:0/4:0:0:1");
        let scanned = t.path().join("scanned-unit");
        std::fs::rename(&unit, &scanned).unwrap(); // not scanned yet
        let d = def("  type: iscsi\n  source: { host: \"127.0.0.1:3299\", device: \"iqn.2026-11.io.pool-csi:rec\" }\n");
        let claim = lun1_claim();
        let runner = Arc::new(
            FakeRunner::new()
                .expect(
                    ["iscsi-inq", "-e", "1", "-c", "128", "*"],
                    Reply::recorded("iscsi/inq_serial"),
                )
                .expect(
                    ["iscsiadm", "--mode", "session", "--sid", "3", "--rescan"],
                    Reply::ok().effect(move |_| std::fs::rename(&scanned, &unit).unwrap()),
                ),
        );
        let s = IscsiSource::new(&d, &c, runner.clone());
        assert_eq!(s.device(&claim).await.unwrap(), PathBuf::from("/dev/sdb"));
        assert!(
            runner.calls().iter().any(|c| c.contains("--rescan")),
            "{:?}",
            runner.calls()
        );
    }

    /// A vHBA named with its parent and missing is created there (the
    /// fixture has no kernel to make the new host: the write is checked,
    /// and the start says the vHBA did not show).
    #[tokio::test]
    async fn a_missing_vhba_is_created_on_its_parent() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        fixture::hba(&sys, 5, None);
        fixture::fc_names(&sys, 5, "0x20000000c9831b4a", "0x10000000c9831b4a");
        std::fs::write(sys.join("class/fc_host/host5/vport_create"), "").unwrap();
        let c = cfg(&t);
        let d = def("  type: scsi\n  source: { adapterWwn: { wwnn: \"0x20000000c9831b4b\", wwpn: \"0x10000000c9831b4b\", parent: host5 } }\n");
        let p = LunPool::new(&d, &c, Box::new(scsi(&d, &c)));
        let e = p.start().await.unwrap_err().to_string();
        assert!(e.contains("the vHBA was created on its parent"), "{e}");
        assert_eq!(
            std::fs::read_to_string(sys.join("class/fc_host/host5/vport_create")).unwrap(),
            "10000000c9831b4b:20000000c9831b4b"
        );
    }

    #[tokio::test]
    async fn a_missing_hba_is_a_clear_start_failure() {
        let t = tempfile::tempdir().unwrap();
        fixture::hba(&t.path().join("sys"), 2, None);
        let c = cfg(&t);
        let d = def("  type: scsi\n  source: { adapterWwn: { wwnn: \"0x20000000c9831b4b\", wwpn: \"0x10000000c9831b4b\" } }\n");
        let p = LunPool::new(&d, &c, Box::new(scsi(&d, &c)));
        let e = p.start().await.unwrap_err().to_string();
        assert!(e.contains("no Fibre Channel HBAs"), "{e}");
        let d = def("  type: scsi\n  source: { adapter: host9 }\n");
        let p = LunPool::new(&d, &c, Box::new(scsi(&d, &c)));
        let e = p.start().await.unwrap_err().to_string();
        assert!(e.contains("host9 does not exist"), "{e}");
    }

    #[tokio::test]
    async fn multipath_maps_are_handed_out_and_attach_by_name() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys");
        dm(&sys, 0, "mpatha", "mpath-3600a", 100);
        dm(&sys, 1, "mpathb", "mpath-3600b", 50);
        dm(&sys, 2, "vg-lv", "LVM-xyz", 10);
        let show = ["multipathd", "show", "maps", "raw", "format", "%n %d %w"];
        let maps = "mpatha dm-0 3600a\nmpathb dm-1 3600b\n";
        let pr = |what: &'static str| ["mpathpersist", "--in", what, "/dev/mapper/mpathb"];
        let runner = Arc::new(
            FakeRunner::new()
                .expect(show, Reply::ok().stdout(maps)) // start
                .expect(show, Reply::ok().stdout(maps)) // create
                .expect(show, Reply::ok().stdout(maps)) // attach
                // … which finds no reservation an earlier user left
                .expect(
                    pr("--read-reservation"),
                    Reply::ok().stdout("  PR generation=0x0, there is NO reservation held \n"),
                )
                .expect(show, Reply::exit(1)), // status, daemon gone: sysfs alone
        );
        let c = cfg(&t);
        let d = def("  type: mpath\n");
        let p = LunPool::new(&d, &c, Box::new(MpathSource::new(&c, runner)))
            .with_inventory_ttl(Duration::ZERO);
        p.start().await.unwrap();
        let v = p
            .create_volume(&CreateRequest::sized("v", 40))
            .await
            .unwrap();
        assert_eq!(v.capacity, 50 * MIB);
        assert_eq!(device(&p, "v").await, "/dev/mapper/mpathb");
        let st = p.status(true).await;
        assert_eq!((st.capacity, st.available), (150 * MIB, 100 * MIB));
        let e = p.create_snapshot("v", "s").await.unwrap_err();
        assert!(
            matches!(e, Error::Invalid(ref m) if m.contains("snapshot")),
            "{e}"
        );
    }
}
