//! iscsi pools: the volumes are LUNs that already exist on a target; refresh
//! discovers them (libiscsi's tools, no kernel initiator needed) and
//! CreateVolume hands out the smallest free LUN that satisfies the request.
//!
//! Which LUN belongs to which volume is recorded in
//! `<state-dir>/luns/<pool>.json` (volume name → LUN identity), written
//! whole by rename before the volume is reported, so a LUN is never handed
//! out twice by this node, also across restarts. (Serve one iscsi pool from
//! one node, or — once the Kubernetes integration lands — let the Lease
//! holder decide; see README.)

use super::{
    AttachSource, CreateRequest, Expanded, Pool, PoolState, PoolStatus, Snapshot, Source, Volume,
};
use crate::{
    error::{io, Error, Result},
    exec::CommandRunner,
    tools::iscsi::{self, Chap, Lun, Portal},
    Config,
};
use pool_csi_proto::{PoolDefinition, PoolType, VolumeFormat};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    identity: String,
    lun: u32,
    size: u64,
    #[serde(default)]
    wipe: bool,
}

pub struct IscsiPool {
    name: String,
    portal: Portal,
    secret_file: Option<PathBuf>,
    claims_file: PathBuf,
    runner: Arc<dyn CommandRunner>,
    sysfs: PathBuf,
    state: super::StateCell,
    /// Serialises hand-outs and releases (read, pick, write the claims).
    lock: tokio::sync::Mutex<()>,
}

impl IscsiPool {
    pub fn new(def: &PoolDefinition, cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        let s = &def.spec.source;
        let mut portal = Portal::new(
            s.host.as_deref().unwrap_or(""),
            s.device.as_deref().unwrap_or(""),
        );
        portal.initiator = s.initiator.clone();
        // The password is read from the Secret at each use (see `portal()`).
        portal.chap = s.auth.as_ref().map(|a| Chap {
            username: a.username.clone(),
            password: String::new(),
        });
        Self {
            name: def.name.clone(),
            secret_file: s
                .auth
                .as_ref()
                .map(|a| cfg.secrets_dir.join(&a.secret_ref).join("password")),
            portal,
            claims_file: cfg
                .state_dir
                .join("luns")
                .join(format!("{}.json", def.name)),
            runner,
            sysfs: cfg.sysfs_root.clone(),
            state: super::StateCell::new(&def.name),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The portal with the CHAP password read now (Secrets rotate).
    fn portal(&self) -> Result<Portal> {
        let mut p = self.portal.clone();
        if let (Some(chap), Some(file)) = (p.chap.as_mut(), &self.secret_file) {
            chap.password = std::fs::read_to_string(file)
                .map_err(|e| {
                    Error::Precondition(format!(
                        "the CHAP secret of pool {} is not readable at {}: {e}; mount the Secret named in source.auth.secretRef",
                        self.name,
                        file.display()
                    ))
                })?
                .trim_end_matches('\n')
                .to_string();
        }
        Ok(p)
    }

    async fn luns(&self) -> Result<Vec<Lun>> {
        Ok(iscsi::inventory(self.runner.as_ref(), &self.portal()?).await?)
    }

    fn claims(&self) -> Result<BTreeMap<String, Claim>> {
        match std::fs::read(&self.claims_file) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::Precondition(format!("{} is corrupt: {e}", self.claims_file.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(io("read", &self.claims_file)(e)),
        }
    }

    fn write_claims(&self, c: &BTreeMap<String, Claim>) -> Result<()> {
        let f = &self.claims_file;
        let dir = f.parent().expect("claims live in a directory");
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let tmp = f.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(c).expect("claims serialise"),
        )
        .map_err(io("write", &tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|x| x.sync_all())
            .map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, f).map_err(io("rename", &tmp))?;
        super::fsutil::sync_dir(dir)
    }

    fn volume(name: &str, c: &Claim, luns: &[Lun]) -> Volume {
        let seen = luns.iter().any(|l| l.identity == c.identity);
        Volume {
            name: name.into(),
            format: VolumeFormat::Raw,
            capacity: c.size,
            allocation: c.size,
            abnormal: (!seen)
                .then(|| format!("LUN {} ({}) vanished from the target", c.lun, c.identity)),
        }
    }
}

/// The smallest LUN in `free` that fits `[required, limit]` (best fit).
fn best_fit<'a>(free: impl Iterator<Item = &'a Lun>, required: u64, limit: u64) -> Option<&'a Lun> {
    free.filter(|l| l.size >= required && (limit == 0 || l.size <= limit))
        .min_by_key(|l| (l.size, l.number))
}

#[tonic::async_trait]
impl Pool for IscsiPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn pool_type(&self) -> PoolType {
        PoolType::Iscsi
    }

    async fn start(&self) -> Result<()> {
        let r = self.luns().await.map(|_| ());
        self.state.record_start(r)
    }

    async fn build(&self, _overwrite: bool) -> Result<()> {
        Ok(()) // nothing to build: the target owns its LUNs (as in libvirt)
    }

    async fn status(&self, count_volumes: bool) -> PoolStatus {
        let mut st = self.state.status();
        if st.state != PoolState::Running {
            return st;
        }
        let (luns, claims) = match (self.luns().await, self.claims()) {
            (Ok(l), Ok(c)) => (l, c),
            (Err(e), _) | (_, Err(e)) => {
                st.state = PoolState::Degraded;
                st.message = pool_csi_proto::full_message(&e);
                return st;
            }
        };
        let taken: Vec<&str> = claims.values().map(|c| c.identity.as_str()).collect();
        let free: Vec<&Lun> = luns
            .iter()
            .filter(|l| !taken.contains(&l.identity.as_str()))
            .collect();
        st.capacity = luns.iter().map(|l| l.size).sum();
        st.available = free.iter().map(|l| l.size).sum();
        st.allocation = st.capacity - st.available;
        st.max_volume = free.iter().map(|l| l.size).max().unwrap_or(0);
        if count_volumes {
            st.volume_count = Some(claims.len() as u32);
        }
        st
    }

    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        self.state.ensure_running()?;
        if req.source != Source::Empty {
            return Err(Error::Invalid(
                "iscsi pools hand out existing LUNs: they cannot be cloned or restored".into(),
            ));
        }
        if req.format.is_some_and(|f| f != VolumeFormat::Raw) {
            return Err(Error::Invalid("iscsi volumes are raw LUNs".into()));
        }
        let _held = self.lock.lock().await;
        let luns = self.luns().await?;
        let mut claims = self.claims()?;
        if let Some(c) = claims.get(&req.name) {
            let fits = c.size >= req.required && (req.limit == 0 || c.size <= req.limit);
            if !fits {
                return Err(Error::NameTaken {
                    what: "volume",
                    pool: self.name.clone(),
                    name: req.name.clone(),
                    why: format!("LUN {} of {} bytes", c.lun, c.size),
                });
            }
            return Ok(Self::volume(&req.name, c, &luns));
        }
        let taken: Vec<String> = claims.values().map(|c| c.identity.clone()).collect();
        let free = luns.iter().filter(|l| !taken.contains(&l.identity));
        let lun = best_fit(free, req.required, req.limit).ok_or_else(|| Error::OutOfSpace {
            pool: self.name.clone(),
            why: format!(
                "no free LUN of {} bytes or more{} on {} ({} LUNs, {} handed out)",
                req.required,
                if req.limit != 0 {
                    format!(" and at most {}", req.limit)
                } else {
                    String::new()
                },
                self.portal.target,
                luns.len(),
                taken.len()
            ),
        })?;
        let claim = Claim {
            identity: lun.identity.clone(),
            lun: lun.number,
            size: lun.size,
            wipe: req.wipe_on_delete,
        };
        claims.insert(req.name.clone(), claim.clone());
        self.write_claims(&claims)?;
        Ok(Self::volume(&req.name, &claim, &luns))
    }

    async fn delete_volume(&self, name: &str, wipe: bool) -> Result<()> {
        self.state.ensure_running()?;
        let _held = self.lock.lock().await;
        let mut claims = self.claims()?;
        let Some(c) = claims.get(name).cloned() else {
            return Ok(());
        };
        if wipe || c.wipe {
            // Zero the LUN through this node's initiator before it is free again.
            let AttachSource::Block { device } = self.attach_source(name).await? else {
                unreachable!("LUNs attach as block devices")
            };
            let d = device.clone();
            tokio::task::spawn_blocking(move || super::fsutil::zero_device(&d))
                .await
                .map_err(|e| io("wipe", &device)(std::io::Error::other(e)))?
                .map_err(io("wipe", &device))?;
        }
        claims.remove(name);
        self.write_claims(&claims)
    }

    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded> {
        let v = self.get_volume(name).await?;
        if v.capacity >= required && (limit == 0 || v.capacity <= limit) {
            return Ok(Expanded {
                capacity: v.capacity,
                node_expansion_required: true,
            });
        }
        Err(Error::OutOfRange(format!(
            "volume {name} is a LUN of {} bytes; LUN sizes are set on the target, not by pool-csi",
            v.capacity
        )))
    }

    async fn get_volume(&self, name: &str) -> Result<Volume> {
        self.state.ensure_running()?;
        let c = self
            .claims()?
            .remove(name)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.into(),
            })?;
        let luns = self.luns().await.unwrap_or_default();
        Ok(Self::volume(name, &c, &luns))
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.state.ensure_running()?;
        let luns = self.luns().await.unwrap_or_default();
        Ok(self
            .claims()?
            .iter()
            .map(|(n, c)| Self::volume(n, c, &luns))
            .collect())
    }

    async fn create_snapshot(&self, _source: &str, _name: &str) -> Result<Snapshot> {
        Err(Error::Invalid(
            "iscsi pools have no snapshots: LUNs are managed on the target".into(),
        ))
    }

    async fn delete_snapshot(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        Ok(Vec::new())
    }

    /// Logs in (once per target and node) and finds the LUN's block device in sysfs.
    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        self.state.ensure_running()?;
        let c = self
            .claims()?
            .remove(name)
            .ok_or_else(|| Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.into(),
            })?;
        let portal = self.portal()?;
        iscsi::login(self.runner.as_ref(), &self.sysfs, &portal).await?;
        let session = iscsi::session_of(&self.sysfs, &portal.target).ok_or_else(|| {
            Error::Precondition(format!(
                "iscsiadm logged in, but no session to {} shows in sysfs",
                portal.target
            ))
        })?;
        let device = iscsi::lun_device(&self.sysfs, &session, c.lun).ok_or_else(|| {
            Error::Precondition(format!(
                "LUN {} of {} has no block device in {session}: it vanished from the target or the initiator has not scanned it",
                c.lun, portal.target
            ))
        })?;
        Ok(AttachSource::Block { device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lun(number: u32, mib: u64) -> Lun {
        Lun {
            number,
            size: mib << 20,
            identity: format!("serial:{number}"),
        }
    }

    #[test]
    fn best_fit_takes_the_smallest_lun_in_range() {
        let luns = [lun(1, 100), lun(2, 50), lun(3, 200), lun(4, 50)];
        let pick =
            |req: u64, lim: u64| best_fit(luns.iter(), req << 20, lim << 20).map(|l| l.number);
        assert_eq!(pick(40, 0), Some(2), "smallest, lowest number first");
        assert_eq!(pick(60, 0), Some(1));
        assert_eq!(pick(60, 150), Some(1));
        assert_eq!(pick(150, 0), Some(3));
        assert_eq!(pick(300, 0), None);
        assert_eq!(pick(60, 90), None, "no LUN between 60 and 90 MiB");
    }
}
