//! LUN pools (iscsi, scsi, mpath): the volumes are LUNs that already exist
//! — on an iSCSI target, behind a SCSI HBA, or as multipath maps — and
//! refresh discovers them through a [`LunSource`]. CreateVolume hands out the
//! smallest free LUN that satisfies the request; DeleteVolume returns it.
//!
//! Which LUN belongs to which volume is recorded in a [`ClaimStore`] before
//! the volume is reported: a file on this node, or — with the node in a
//! cluster — a ConfigMap that every node of the pool changes only with the
//! resourceVersion it read. So a LUN is never handed out twice, also across
//! restarts and with several nodes handing out LUNs of one target at once.
//! A pool whose claims live in the cluster is *shared*: its volumes are not
//! tied to a node, and the claim records the node a volume is published on.

use super::{
    lun_claims::{Claim, ClaimStore, Claims, ClusterClaims, FileClaims, Version},
    CreateRequest, Expanded, LunEntry, Pool, PoolState, PoolStatus, Snapshot, Source, Volume,
};
use crate::attach::AttachSource;
use crate::fsutil::{read_json, write_json};
use crate::{
    error::{io, Error, Result},
    tools::{persist::Reservations, scsi::Lun},
    Config,
};
use pool_csi_common::{pool_spec::Fencing, PoolDefinition, PoolType, VolumeFormat};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub(crate) mod fence;

/// Where a LUN pool's LUNs come from.
#[tonic::async_trait]
pub trait LunSource: Send + Sync {
    fn pool_type(&self) -> PoolType;
    /// For messages: "target iqn.…", "HBA host2", "the multipath maps".
    fn origin(&self) -> String;
    /// The LUNs there now.
    async fn inventory(&self) -> Result<Vec<Lun>>;
    /// Asks the transport to look for new LUNs (a SCSI bus scan); the next
    /// inventory shows them.
    async fn rescan(&self) -> Result<()> {
        Ok(())
    }
    /// The claimed LUN's block device on this node, connecting first where
    /// the transport needs it (iSCSI login).
    async fn device(&self, claim: &Claim) -> Result<PathBuf>;
    /// The persistent reservations of a LUN's `device` on this node.
    fn reservations<'a>(&'a self, device: &Path) -> Box<dyn Reservations + 'a>;
    /// No volume of this pool is in use on this node any more (iSCSI logout).
    async fn disconnect(&self) -> Result<()> {
        Ok(())
    }
}

/// How long a status or listing may reuse an inventory (GetCapacity polls;
/// an iSCSI inventory costs 1 + 2×LUNs process runs). Hand-outs always
/// take a fresh one.
const INVENTORY_TTL: Duration = Duration::from_secs(5);

/// How often a change to the claims is redone after losing a race to
/// another node before the caller is told to retry (ABORTED).
const SAVE_ATTEMPTS: usize = 8;

pub struct LunPool {
    name: String,
    /// This node (a shared volume published elsewhere is not attached here).
    node: String,
    source: Box<dyn LunSource>,
    claims: Box<dyn ClaimStore>,
    /// The volumes this node has attached (a JSON list of names): the
    /// connection goes when the last one is detached, also after restarts.
    users_file: PathBuf,
    state: super::StateCell,
    /// Serialises hand-outs and releases (read, pick, write the claims).
    lock: tokio::sync::Mutex<()>,
    cache: std::sync::Mutex<Option<(Instant, Vec<Lun>)>>,
    ttl: Duration,
    fencing: Fencing,
}

impl LunPool {
    pub fn new(def: &PoolDefinition, cfg: &Config, source: Box<dyn LunSource>) -> Self {
        let file = cfg
            .state_dir
            .join("luns")
            .join(format!("{}.json", def.name));
        let claims: Box<dyn ClaimStore> = match &cfg.cluster {
            Some(c) => Box::new(ClusterClaims::new(
                c.client.clone(),
                &c.namespace,
                &def.name,
                file,
            )),
            None => Box::new(FileClaims::new(file)),
        };
        Self {
            name: def.name.clone(),
            node: cfg.node_name.clone(),
            source,
            claims,
            users_file: cfg
                .state_dir
                .join("luns")
                .join(format!("{}.attached.json", def.name)),
            state: super::StateCell::new(&def.name),
            lock: tokio::sync::Mutex::new(()),
            cache: std::sync::Mutex::new(None),
            ttl: INVENTORY_TTL,
            fencing: def.spec.fencing.unwrap_or_default(),
        }
    }

    /// How long listings may reuse an inventory (tests: zero).
    pub fn with_inventory_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn kind(&self) -> PoolType {
        self.source.pool_type()
    }

    /// A fresh inventory (remembered for listings).
    async fn fresh_luns(&self) -> Result<Vec<Lun>> {
        let luns = self.source.inventory().await?;
        *self.cache.lock().expect("cache lock") = Some((Instant::now(), luns.clone()));
        Ok(luns)
    }

    /// An inventory at most `ttl` old.
    async fn recent_luns(&self) -> Result<Vec<Lun>> {
        if let Some((at, luns)) = self.cache.lock().expect("cache lock").as_ref() {
            if at.elapsed() < self.ttl {
                return Ok(luns.clone());
            }
        }
        self.fresh_luns().await
    }

    async fn claims(&self) -> Result<Claims> {
        Ok(self.claims.load().await?.0)
    }

    /// Applies `change` to the claims (first to `loaded`, when the caller
    /// has just read them) and stores the result when it says it changed
    /// something, redoing it on a fresh load when another node changed the
    /// claims meanwhile. Callers hold the pool's lock, so one node's own
    /// changes never race (a claims file has no version to check).
    async fn update<T>(
        &self,
        mut loaded: Option<(Claims, Version)>,
        mut change: impl FnMut(&mut Claims) -> Result<(T, bool)>,
    ) -> Result<T> {
        for _ in 0..SAVE_ATTEMPTS {
            let (mut claims, version) = match loaded.take() {
                Some(l) => l,
                None => self.claims.load().await?,
            };
            let (answer, changed) = change(&mut claims)?;
            if !changed || self.claims.save(&claims, &version).await? {
                return Ok(answer);
            }
        }
        Err(self.contended())
    }

    fn contended(&self) -> Error {
        Error::Contended {
            pool: self.name.clone(),
            place: self.claims.place(),
            attempts: SAVE_ATTEMPTS as u32,
        }
    }

    fn users(&self) -> Result<BTreeSet<String>> {
        Ok(read_json(&self.users_file)?.unwrap_or_default())
    }

    /// Records that this node uses (`true`) or stopped using `name`;
    /// returns how many volumes it uses now.
    fn set_user(&self, name: &str, on: bool) -> Result<usize> {
        let mut users = self.users()?;
        let changed = if on {
            users.insert(name.to_string())
        } else {
            users.remove(name)
        };
        if changed {
            write_json(&self.users_file, &users)?;
        }
        Ok(users.len())
    }
}

impl LunPool {
    /// The claim of volume `name` in `claims`. A static PersistentVolume's
    /// name (`static-…`) that nobody claimed yet answers with the free LUN
    /// it names, unclaimed (see [`Self::ensure_claimed`]).
    async fn claim_in(&self, claims: &Claims, name: &str) -> Result<Claim> {
        if let Some(c) = claims.get(name) {
            return Ok(c.clone());
        }
        let not_found = || Error::VolumeNotFound {
            pool: self.name.clone(),
            name: name.into(),
        };
        if !name.starts_with(STATIC_PREFIX) {
            return Err(not_found());
        }
        let luns = self.recent_luns().await?;
        let lun = luns
            .iter()
            .find(|l| static_name(&l.identity) == name)
            .ok_or_else(not_found)?;
        if let Some(holder) = holder(claims, &luns, lun) {
            return Err(Error::Precondition(format!(
                "the LUN of static volume {name} ({}) is held by volume {holder}",
                lun.address
            )));
        }
        Ok(Claim {
            identity: lun.identity.clone(),
            lun: lun.number,
            size: lun.size,
            wipe: false,
            address: lun.address.clone(),
            published: None,
            reservations: None,
        })
    }

    /// The claim of `name` in `claims`, made there from `found` (what
    /// [`Self::claim_in`] answered) for a static volume's first use, so no
    /// CreateVolume hands its LUN out. `Ok(true)`: it was made now.
    fn ensure_claimed(&self, claims: &mut Claims, name: &str, found: &Claim) -> Result<bool> {
        if claims.contains_key(name) {
            return Ok(false);
        }
        if !name.starts_with(STATIC_PREFIX) {
            return Err(Error::VolumeNotFound {
                pool: self.name.clone(),
                name: name.into(),
            });
        }
        if let Some((holder, _)) = claims.iter().find(|(_, x)| x.identity == found.identity) {
            return Err(Error::Precondition(format!(
                "the LUN of static volume {name} ({}) was handed to volume {holder} meanwhile",
                found.address
            )));
        }
        claims.insert(name.to_string(), found.clone());
        Ok(true)
    }

    /// Volume `name` of claim `c`, abnormal when the inventory (`luns`, or
    /// why there is none) does not show its LUN.
    fn volume(&self, name: &str, c: &Claim, luns: std::result::Result<&[Lun], &str>) -> Volume {
        let at = place(c);
        let abnormal = match luns {
            Err(why) => Some(format!(
                "cannot tell whether {at} ({}) is there: {why}",
                c.identity
            )),
            Ok(luns) if luns.iter().any(|l| l.identity == c.identity) => None,
            Ok(luns) => Some(match luns.iter().find(|l| slot(&l.address) == at) {
                Some(l) => format!(
                    "{at} ({}) vanished from {}; {} is another LUN ({}) now",
                    c.identity,
                    self.source.origin(),
                    slot(&l.address),
                    l.identity
                ),
                None => format!(
                    "{at} ({}) vanished from {}",
                    c.identity,
                    self.source.origin()
                ),
            }),
        };
        Volume {
            name: name.into(),
            format: VolumeFormat::Raw,
            capacity: c.size,
            allocation: c.size,
            abnormal,
            published: c.published.clone(),
        }
    }

    /// An inventory at most `ttl` old, or why there is none (for volumes'
    /// conditions: a failed inventory is not a vanished LUN).
    async fn inventory_or_why(&self) -> std::result::Result<Vec<Lun>, String> {
        self.recent_luns()
            .await
            .map_err(|e| pool_csi_common::full_message(&e))
    }

    /// The free LUN that best fits the request, rescanning once when none does.
    async fn pick(&self, req: &CreateRequest, claims: &Claims) -> Result<Lun> {
        for attempt in 0..2 {
            if attempt == 1 {
                self.source.rescan().await?;
            }
            let luns = self.fresh_luns().await?;
            let taken = luns
                .iter()
                .filter(|l| holder(claims, &luns, l).is_some())
                .count();
            let free = luns.iter().filter(|l| holder(claims, &luns, l).is_none());
            if let Some(l) = best_fit(free, req.required, req.limit) {
                return Ok(l.clone());
            }
            if attempt == 1 {
                return Err(Error::OutOfSpace {
                    pool: self.name.clone(),
                    why: format!(
                        "no free LUN of {} bytes or more{} on {} ({} LUNs, {} handed out)",
                        req.required,
                        if req.limit != 0 {
                            format!(" and at most {}", req.limit)
                        } else {
                            String::new()
                        },
                        self.source.origin(),
                        luns.len(),
                        taken
                    ),
                });
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// Names of volumes that static PersistentVolumes give LUNs.
const STATIC_PREFIX: &str = "static-";

/// The volume name of the static PersistentVolume for the LUN `identity`:
/// stable, short, and a valid volume name whatever the identity holds
/// (FNV-1a, 64 bits).
pub fn static_name(identity: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{STATIC_PREFIX}{h:016x}")
}

/// Where a claimed LUN was: `LUN 3`, `2:0:1:3`, `mpatha`.
fn place(c: &Claim) -> String {
    match c.address.is_empty() {
        true => format!("LUN {}", c.lun),
        false => slot(&c.address).to_string(),
    }
}

/// An address without the block device it showed as (`2:0:1:3 (sdc)`
/// → `2:0:1:3`): the place, which a replacement LUN takes over.
fn slot(address: &str) -> &str {
    address.split(" (").next().unwrap_or(address)
}

/// The volume holding `lun`: the one it was handed to, or one whose LUN
/// vanished from the place `lun` is at now. That is most likely the old
/// LUN's replacement, and it stays out of hand-outs until the volume that
/// names its place is deleted: another volume must never get a LUN that
/// an old volume may still be taken to mean.
fn holder<'c>(claims: &'c Claims, luns: &[Lun], lun: &Lun) -> Option<&'c str> {
    let by_identity = claims.iter().find(|(_, c)| c.identity == lun.identity);
    let by_place = || {
        claims.iter().find(|(_, c)| {
            place(c) == slot(&lun.address) && !luns.iter().any(|l| l.identity == c.identity)
        })
    };
    by_identity.or_else(by_place).map(|(n, _)| n.as_str())
}

/// The smallest LUN in `free` that fits `[required, limit]` (best fit).
fn best_fit<'a>(free: impl Iterator<Item = &'a Lun>, required: u64, limit: u64) -> Option<&'a Lun> {
    free.filter(|l| l.size >= required && (limit == 0 || l.size <= limit))
        .min_by_key(|l| (l.size, l.number))
}

#[tonic::async_trait]
impl Pool for LunPool {
    fn name(&self) -> &str {
        &self.name
    }

    fn recorded_state(&self) -> PoolState {
        self.state.state()
    }

    fn pool_type(&self) -> PoolType {
        self.kind()
    }

    async fn start(&self) -> Result<()> {
        let r = self.fresh_luns().await.map(|_| ());
        self.state.record_start(r)
    }

    async fn build(&self, _overwrite: bool) -> Result<()> {
        Ok(()) // nothing to build: LUNs are made elsewhere (as in libvirt)
    }

    async fn status(&self, count_volumes: bool) -> PoolStatus {
        let mut st = self.state.status();
        if st.state != PoolState::Running {
            return st;
        }
        let (luns, claims) = match (self.recent_luns().await, self.claims().await) {
            (Ok(l), Ok(c)) => (l, c),
            (Err(e), _) | (_, Err(e)) => {
                st.state = PoolState::Degraded;
                st.message = pool_csi_common::full_message(&e);
                return st;
            }
        };
        let free: Vec<&Lun> = luns
            .iter()
            .filter(|l| holder(&claims, &luns, l).is_none())
            .collect();
        st.capacity = luns.iter().map(|l| l.size).sum();
        st.available = free.iter().map(|l| l.size).sum();
        st.allocation = st.capacity - st.available;
        st.max_volume = free.iter().map(|l| l.size).max().unwrap_or(0);
        if count_volumes {
            st.volume_count = Some(claims.len() as u32);
        }
        if self.fences() {
            let unfenced: Vec<&str> = claims
                .iter()
                .filter(|(_, c)| c.reservations == Some(false))
                .map(|(n, _)| n.as_str())
                .collect();
            if !unfenced.is_empty() {
                st.message = format!(
                    "the LUNs of volumes {} do not support SCSI-3 persistent reservations: they cannot be fenced, so they are not moved off a lost node (fencing: none on the pool allows that)",
                    unfenced.join(", ")
                );
            }
        }
        st
    }

    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        self.state.ensure_running()?;
        if req.source != Source::Empty {
            return Err(Error::Invalid(format!(
                "{} pools hand out existing LUNs: they cannot be cloned or restored",
                self.kind()
            )));
        }
        if req.format.is_some_and(|f| f != VolumeFormat::Raw) {
            return Err(Error::Invalid(format!(
                "{} volumes are raw LUNs",
                self.kind()
            )));
        }
        let _held = self.lock.lock().await;
        for _ in 0..SAVE_ATTEMPTS {
            let (mut claims, version) = self.claims.load().await?;
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
                let luns = self.inventory_or_why().await;
                return Ok(self.volume(&req.name, c, luns.as_deref().map_err(|e| e.as_str())));
            }
            let lun = self.pick(req, &claims).await?;
            let claim = Claim {
                identity: lun.identity.clone(),
                lun: lun.number,
                size: lun.size,
                wipe: req.wipe_on_delete,
                address: lun.address.clone(),
                published: None,
                reservations: None,
            };
            claims.insert(req.name.clone(), claim.clone());
            if self.claims.save(&claims, &version).await? {
                return Ok(self.volume(&req.name, &claim, Ok(std::slice::from_ref(&lun))));
            }
            // Another node claimed a LUN meanwhile: look again.
        }
        Err(self.contended())
    }

    async fn delete_volume(&self, name: &str, wipe: bool) -> Result<()> {
        self.state.ensure_running()?;
        let _held = self.lock.lock().await;
        let loaded = self.claims.load().await?;
        let Some(c) = loaded.0.get(name).cloned() else {
            return Ok(());
        };
        let idle = |c: &Claim| match &c.published {
            Some(node) => Err(Error::InUse {
                what: format!("volume {name}"),
                by: format!("node {node} (published); unpublish it first"),
            }),
            None => Ok(()),
        };
        idle(&c)?;
        if self.users()?.contains(name) {
            return Err(Error::InUse {
                what: format!("volume {name}"),
                by: "this node (staged); unstage it first".into(),
            });
        }
        if wipe || c.wipe {
            // Zero the LUN through this node before it is free again.
            self.set_user(name, true)?;
            let wiped = async {
                let device = self.source.device(&c).await?;
                // The last user's reservation keeps others from writing.
                self.become_writer(name, self.source.reservations(&device).as_ref())
                    .await?;
                let d = device.clone();
                tokio::task::spawn_blocking(move || crate::fsutil::zero_device(&d))
                    .await
                    .map_err(|e| io("wipe", &device)(std::io::Error::other(e)))?
                    .map_err(io("wipe", &device))
            }
            .await;
            if self.set_user(name, false)? == 0 {
                self.source.disconnect().await?;
            }
            match wiped {
                // The claimed LUN is gone from its place: there is nothing
                // of this volume to wipe, and what is there is not ours.
                Err(e @ Error::LunChanged { .. }) => {
                    tracing::warn!(pool.name = %self.name, volume = %name, error = %e, "not wiping: the LUN was replaced");
                }
                r => r?,
            }
        }
        self.update(Some(loaded), |claims| match claims.get(name) {
            Some(c) => idle(c).map(|()| ((), claims.remove(name).is_some())),
            None => Ok(((), false)),
        })
        .await
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
            "volume {name} is a LUN of {} bytes; LUN sizes are set on {}, not by pool-csi",
            v.capacity,
            self.source.origin()
        )))
    }

    async fn get_volume(&self, name: &str) -> Result<Volume> {
        self.state.ensure_running()?;
        let c = self.claim_in(&self.claims().await?, name).await?;
        let luns = self.inventory_or_why().await;
        Ok(self.volume(name, &c, luns.as_deref().map_err(|e| e.as_str())))
    }

    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.state.ensure_running()?;
        let luns = self.inventory_or_why().await;
        let luns = luns.as_deref().map_err(|e| e.as_str());
        Ok(self
            .claims()
            .await?
            .iter()
            .map(|(n, c)| self.volume(n, c, luns))
            .collect())
    }

    async fn create_snapshot(&self, _source: &str, _name: &str) -> Result<Snapshot> {
        Err(Error::Invalid(format!(
            "{} pools have no snapshots: LUNs are managed on {}",
            self.kind(),
            self.source.origin()
        )))
    }

    async fn delete_snapshot(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        Ok(Vec::new())
    }

    /// The LUN's block device on this node (an iSCSI pool logs in first).
    /// The volume counts as in use here from now until `detached`.
    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        self.state.ensure_running()?;
        let _held = self.lock.lock().await;
        let loaded = self.claims.load().await?;
        let c = self.claim_in(&loaded.0, name).await?;
        self.update(Some(loaded), |claims| {
            let made = self.ensure_claimed(claims, name, &c)?;
            // Two nodes writing one LUN corrupt it: whatever the CO does,
            // a volume published elsewhere is not attached here.
            match claims[name].published.as_deref() {
                Some(other) if other != self.node => Err(Error::Precondition(format!(
                    "volume {name} is published on node {other}, not on {}; it can be used on one node at a time",
                    self.node
                ))),
                _ => Ok(((), made)),
            }
        })
        .await?;
        self.set_user(name, true)?;
        let attached = match self.source.device(&c).await {
            Ok(device) => self.take_here(name, &device).await.map(|()| device),
            Err(e) => Err(e),
        };
        match attached {
            Ok(device) => Ok(AttachSource::Block { device }),
            Err(e) => {
                // Not attached: not in use here, and no connection kept for it.
                if self.set_user(name, false)? == 0 {
                    if let Err(d) = self.source.disconnect().await {
                        tracing::warn!(pool.name = %self.name, error = %d, "disconnect after a failed attach failed");
                    }
                }
                Err(e)
            }
        }
    }

    async fn luns(&self) -> Result<Vec<LunEntry>> {
        self.state.ensure_running()?;
        let luns = self.recent_luns().await?;
        let claims = self.claims().await?;
        Ok(luns
            .iter()
            .map(|l| LunEntry {
                volume: holder(&claims, &luns, l).map(str::to_string),
                static_name: static_name(&l.identity),
                identity: l.identity.clone(),
                size: l.size,
                address: l.address.clone(),
            })
            .collect())
    }

    fn shared(&self) -> bool {
        self.claims.shared()
    }

    /// Records `node` as the one using `name`; another node is refused
    /// until it unpublishes.
    async fn publish(&self, name: &str, node: &str) -> Result<()> {
        self.state.ensure_running()?;
        let _held = self.lock.lock().await;
        let loaded = self.claims.load().await?;
        let found = self.claim_in(&loaded.0, name).await?;
        self.update(Some(loaded), |claims| {
            let made = self.ensure_claimed(claims, name, &found)?;
            let c = claims.get_mut(name).expect("ensured");
            match c.published.as_deref() {
                Some(n) if n == node => Ok(((), made)),
                Some(other) => Err(Error::Precondition(format!(
                    "volume {name} is published on node {other}; it can be used on one node at a time (unpublish it there first)"
                ))),
                None => {
                    c.published = Some(node.to_string());
                    Ok(((), true))
                }
            }
        })
        .await
    }

    /// Releases `name` from `node` (every node when empty). Released for a
    /// node other than this one — which answers for a lost node — the
    /// holder is fenced off first.
    async fn unpublish(&self, name: &str, node: &str) -> Result<()> {
        self.state.ensure_running()?;
        let _held = self.lock.lock().await;
        let loaded = self.claims.load().await?;
        let holder = loaded.0.get(name).and_then(|c| {
            let h = c.published.as_deref()?;
            (node.is_empty() || h == node).then(|| (c.clone(), h.to_string()))
        });
        match holder {
            Some((c, holder)) if holder != self.node => self.fence_off(name, &c, &holder).await?,
            // Released by its own node while still attached here (a forced
            // detach): a node that takes it next pre-empts this one, but
            // only where the LUN has reservations.
            Some((c, holder))
                if self.fences()
                    && c.reservations != Some(true)
                    && self.users()?.contains(name) =>
            {
                return Err(Error::NotFenced {
                    name: name.into(),
                    holder,
                    why: "it is still staged on this node, and its LUN has no persistent reservations to fence this node off it once it moves; unstage it first (or set `fencing: none` on the pool)".into(),
                });
            }
            _ => {}
        }
        self.update(Some(loaded), |claims| match claims.get_mut(name) {
            Some(c)
                if c.published.is_some()
                    && (node.is_empty() || c.published.as_deref() == Some(node)) =>
            {
                c.published = None;
                Ok(((), true))
            }
            _ => Ok(((), false)),
        })
        .await
    }

    /// Disconnects (iSCSI logout) when the last volume of the pool on this
    /// node is detached.
    async fn detached(&self, name: &str) -> Result<()> {
        let _held = self.lock.lock().await;
        if self.set_user(name, false)? == 0 {
            self.source.disconnect().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::persist::PrError;
    use std::sync::{Arc, Mutex};

    /// What a [`Recording`] source's inventory answers (tests change it).
    type Inventory = Arc<Mutex<std::result::Result<Vec<Lun>, String>>>;

    /// A source whose LUNs a test sets, that records connects and
    /// disconnects and, like the real sources, refuses to attach a claim
    /// whose place now holds another LUN.
    struct Recording {
        luns: Inventory,
        log: Arc<Mutex<Vec<String>>>,
        /// Where LUN N's "device" is: `<devices>/lunN` (a file a test may make).
        devices: PathBuf,
    }

    #[tonic::async_trait]
    impl LunSource for Recording {
        fn pool_type(&self) -> PoolType {
            PoolType::Iscsi
        }
        fn origin(&self) -> String {
            "target t".into()
        }
        async fn inventory(&self) -> Result<Vec<Lun>> {
            self.luns
                .lock()
                .unwrap()
                .clone()
                .map_err(Error::Precondition)
        }
        async fn device(&self, c: &Claim) -> Result<PathBuf> {
            let luns = self.inventory().await?;
            let now = luns.iter().find(|l| l.number == c.lun);
            match now {
                Some(l) if l.identity != c.identity => {
                    return Err(Error::LunChanged {
                        at: place(c),
                        origin: self.origin(),
                        claimed: c.identity.clone(),
                        found: l.identity.clone(),
                    })
                }
                None => return Err(Error::Precondition(format!("{} vanished", place(c)))),
                Some(_) => {}
            }
            self.log.lock().unwrap().push(format!("connect {}", c.lun));
            Ok(self.devices.join(format!("lun{}", c.lun)))
        }
        async fn disconnect(&self) -> Result<()> {
            self.log.lock().unwrap().push("disconnect".into());
            Ok(())
        }
        fn reservations<'a>(&'a self, device: &Path) -> Box<dyn Reservations + 'a> {
            Box::new(NoReservations(device.display().to_string()))
        }
    }

    /// The reservations of a "LUN" that is a file: none (the real ones,
    /// against tgtd, are in e2e/tests/fencing.rs).
    struct NoReservations(String);

    impl NoReservations {
        fn no<T>(&self) -> std::result::Result<T, PrError> {
            Err(PrError::Unsupported {
                device: self.0.clone(),
                why: "a file".into(),
            })
        }
    }

    #[tonic::async_trait]
    impl Reservations for NoReservations {
        fn device(&self) -> String {
            self.0.clone()
        }
        async fn keys(&self) -> std::result::Result<Vec<u64>, PrError> {
            self.no()
        }
        async fn reservation(
            &self,
        ) -> std::result::Result<Option<crate::tools::persist::Reservation>, PrError> {
            self.no()
        }
        async fn register(&self, _: u64) -> std::result::Result<(), PrError> {
            self.no()
        }
        async fn reserve(&self, _: u64) -> std::result::Result<(), PrError> {
            self.no()
        }
        async fn clear(&self, _: u64) -> std::result::Result<(), PrError> {
            self.no()
        }
        async fn preempt(&self, _: u64, _: u64, _: bool) -> std::result::Result<(), PrError> {
            self.no()
        }
    }

    /// The iscsi pool `san` on the node of `cfg`, over LUNs of these sizes (MiB).
    fn san(cfg: &Config, mib: &[u64], log: &Arc<Mutex<Vec<String>>>) -> LunPool {
        san_with(cfg, mib, log).0
    }

    /// [`san`] and a handle on what its inventory answers.
    fn san_with(cfg: &Config, mib: &[u64], log: &Arc<Mutex<Vec<String>>>) -> (LunPool, Inventory) {
        let def = PoolDefinition::parse_documents(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: san }\nspec:\n  type: iscsi\n  source: { host: h, device: iqn.2026-11.x:t }\n",
            "t",
        )
        .unwrap()
        .remove(0);
        let luns: Inventory = Arc::new(Mutex::new(Ok(mib
            .iter()
            .zip(1..)
            .map(|(m, n)| lun(n, *m))
            .collect())));
        let pool = LunPool::new(
            &def,
            cfg,
            Box::new(Recording {
                luns: luns.clone(),
                log: log.clone(),
                devices: cfg.state_dir.clone(),
            }),
        )
        .with_inventory_ttl(Duration::ZERO);
        (pool, luns)
    }

    fn recording_pool(t: &tempfile::TempDir, log: &Arc<Mutex<Vec<String>>>) -> LunPool {
        san(&Config::local("n1", t.path().to_path_buf()), &[10, 20], log)
    }

    #[tokio::test]
    async fn static_volumes_claim_their_lun_at_first_use() {
        let t = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let p = recording_pool(&t, &log);
        p.start().await.unwrap();
        let luns = p.luns().await.unwrap();
        assert_eq!(luns.len(), 2);
        assert!(luns.iter().all(|l| l.volume.is_none()));
        let (s1, s2) = (luns[0].static_name.clone(), luns[1].static_name.clone());
        assert!(s1.starts_with("static-") && s1.len() == 23 && s1 != s2);
        assert_eq!(s1, static_name("serial:1"), "stable");
        pool_csi_common::volume_id::check_storage_name(&s1).unwrap();

        // Named by its static PV, the free LUN answers, unclaimed until used.
        assert_eq!(p.get_volume(&s1).await.unwrap().capacity, 10 << 20);
        assert!(p.luns().await.unwrap()[0].volume.is_none());
        p.attach_source(&s1).await.unwrap();
        assert_eq!(
            p.luns().await.unwrap()[0].volume.as_deref(),
            Some(s1.as_str())
        );
        // Now CreateVolume cannot have it: it takes the other LUN.
        let v = p
            .create_volume(&CreateRequest::sized("dyn", 5))
            .await
            .unwrap();
        assert_eq!(v.capacity, 20 << 20);
        let e = p.attach_source(&s2).await.unwrap_err().to_string();
        assert!(e.contains("held by volume dyn"), "{e}");
        assert!(matches!(
            p.get_volume("static-0000000000000000").await,
            Err(Error::VolumeNotFound { .. })
        ));
        // Released (a Delete-policy PV), the LUN is free for both again.
        p.detached(&s1).await.unwrap();
        p.delete_volume(&s1, false).await.unwrap();
        assert!(p.luns().await.unwrap()[0].volume.is_none());
    }

    /// wipeOnDelete zeroes the whole LUN through this node before the claim
    /// goes (connect, zero, disconnect); without it the LUN is freed as it is
    /// and never connected.
    #[tokio::test]
    async fn wipe_on_delete_zeroes_the_lun_before_it_is_free() {
        let t = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let p = san(&Config::local("n1", t.path().into()), &[1, 1], &log);
        p.start().await.unwrap();
        for (name, wipe) in [("wiped", true), ("kept", false)] {
            let mut req = CreateRequest::sized(name, 1);
            req.wipe_on_delete = wipe;
            p.create_volume(&req).await.unwrap();
        }
        let pattern = vec![0x5au8; 1 << 20];
        for n in [1, 2] {
            std::fs::write(t.path().join(format!("lun{n}")), &pattern).unwrap();
        }
        let luns = p.luns().await.unwrap();
        let lun_of = |name: &str| {
            luns.iter()
                .find(|l| l.volume.as_deref() == Some(name))
                .unwrap()
                .identity
                .trim_start_matches("serial:")
                .to_string()
        };
        let (wiped, kept) = (lun_of("wiped"), lun_of("kept"));
        log.lock().unwrap().clear();
        p.delete_volume("wiped", false).await.unwrap();
        let zeroed = std::fs::read(t.path().join(format!("lun{wiped}"))).unwrap();
        assert!(zeroed.len() == 1 << 20 && zeroed.iter().all(|b| *b == 0));
        assert_eq!(
            *log.lock().unwrap(),
            [format!("connect {wiped}"), "disconnect".into()]
        );
        log.lock().unwrap().clear();
        p.delete_volume("kept", false).await.unwrap();
        assert_eq!(
            std::fs::read(t.path().join(format!("lun{kept}"))).unwrap(),
            pattern
        );
        assert!(log.lock().unwrap().is_empty(), "never connected");
        assert!(p.luns().await.unwrap().iter().all(|l| l.volume.is_none()));
    }

    /// LUN 1 is deleted on the target and a new LUN made at number 1: the
    /// old volume neither attaches nor wipes it, says what happened, and
    /// the new LUN is handed out only once the old volume is deleted.
    #[tokio::test]
    async fn a_lun_replaced_at_its_number_is_never_taken_for_the_old_one() {
        let t = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (p, inv) = san_with(&Config::local("n1", t.path().into()), &[10], &log);
        p.start().await.unwrap();
        let mut req = CreateRequest::sized("old", 5);
        req.wipe_on_delete = true;
        p.create_volume(&req).await.unwrap();
        *inv.lock().unwrap() = Ok(vec![Lun {
            identity: "serial:new".into(),
            ..lun(1, 10)
        }]);
        let v = p.get_volume("old").await.unwrap();
        let why = v.abnormal.unwrap();
        assert!(
            why.contains("LUN 1 is another LUN (serial:new) now"),
            "{why}"
        );
        let e = p.attach_source("old").await.unwrap_err();
        assert!(matches!(e, Error::LunChanged { .. }), "{e}");
        assert_eq!(
            pool_csi_common::GrpcCode::grpc_code(&e),
            tonic::Code::FailedPrecondition
        );
        assert!(
            e.to_string()
                .contains("handed out as serial:1, now serial:new"),
            "{e}"
        );
        // The failed attach left the volume unused here: it can go.
        assert!(p.users().unwrap().is_empty());
        // Held for the old volume: not handed out, not offered as static.
        let full = p
            .create_volume(&CreateRequest::sized("next", 5))
            .await
            .unwrap_err();
        assert!(matches!(full, Error::OutOfSpace { .. }), "{full}");
        assert_eq!(p.luns().await.unwrap()[0].volume.as_deref(), Some("old"));
        assert_eq!(p.status(false).await.available, 0);
        // Deleting the old volume does not wipe the new LUN, and frees it.
        p.delete_volume("old", false).await.unwrap();
        assert!(log
            .lock()
            .unwrap()
            .iter()
            .all(|l| !l.starts_with("connect")));
        let v = p
            .create_volume(&CreateRequest::sized("next", 5))
            .await
            .unwrap();
        assert!(v.abnormal.is_none());
    }

    /// An inventory that fails is an error where a decision needs it and a
    /// condition on volumes; no claimed LUN ever looks free.
    #[tokio::test]
    async fn a_failed_inventory_fails_hand_outs_and_marks_volumes_unknown() {
        let t = tempfile::tempdir().unwrap();
        let (p, inv) = san_with(
            &Config::local("n1", t.path().into()),
            &[10, 20],
            &Default::default(),
        );
        p.start().await.unwrap();
        p.create_volume(&CreateRequest::sized("a", 5))
            .await
            .unwrap();
        *inv.lock().unwrap() = Err("iscsi-inq failed: Login Failed".into());
        let e = p
            .create_volume(&CreateRequest::sized("b", 5))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("Login Failed"), "{e}");
        let why = p.get_volume("a").await.unwrap().abnormal.unwrap();
        assert!(why.starts_with("cannot tell whether LUN 1"), "{why}");
        assert!(why.contains("Login Failed"), "{why}");
        let e = p.luns().await.unwrap_err().to_string();
        assert!(
            e.contains("Login Failed"),
            "the inventory fails with the login: {e}"
        );
        let st = p.status(false).await;
        assert_eq!(st.state, PoolState::Degraded);
        assert!(st.message.contains("Login Failed"), "{}", st.message);
        // Back: a is still a's, b gets the other LUN.
        *inv.lock().unwrap() = Ok(vec![lun(1, 10), lun(2, 20)]);
        let b = p
            .create_volume(&CreateRequest::sized("b", 5))
            .await
            .unwrap();
        assert_eq!(b.capacity, 20 << 20);
    }

    #[tokio::test]
    async fn the_connection_goes_with_the_last_volume_in_use_also_after_a_restart() {
        let t = tempfile::tempdir().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let pool = |log: &Arc<Mutex<Vec<String>>>| recording_pool(&t, log);
        let p = pool(&log);
        p.start().await.unwrap();
        p.create_volume(&CreateRequest::sized("a", 10))
            .await
            .unwrap();
        p.create_volume(&CreateRequest::sized("b", 10))
            .await
            .unwrap();
        p.attach_source("a").await.unwrap();
        p.attach_source("b").await.unwrap();
        p.attach_source("b").await.unwrap(); // stats, a second stage: still one user
        p.detached("a").await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["connect 1", "connect 2", "connect 2"]
        );
        let busy = p.delete_volume("b", false).await.unwrap_err().to_string();
        assert!(busy.contains("unstage it first"), "{busy}");

        // A restarted node plugin still knows b is in use here.
        drop(p);
        let p = pool(&log);
        p.start().await.unwrap();
        p.detached("b").await.unwrap();
        assert_eq!(log.lock().unwrap().last().unwrap(), "disconnect");
        p.detached("b").await.unwrap(); // idempotent: nothing left to drop
        let n = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| *l == "disconnect")
            .count();
        assert_eq!(n, 2, "a repeated detach only re-checks the (gone) session");
        p.delete_volume("b", false).await.unwrap();
    }

    /// Volumes `<p>0`, `<p>1`, `<p>2` created one after the other.
    async fn three(pool: &LunPool, p: &str) -> Vec<Result<Volume>> {
        let mut out = Vec::new();
        for i in 0..3 {
            let req = CreateRequest::sized(&format!("{p}{i}"), 5);
            out.push(pool.create_volume(&req).await);
        }
        out
    }

    /// Pools of the same four LUNs on nodes n1 and n2, with their claims in
    /// one (fake) cluster.
    fn shared_pools(
        t: &tempfile::TempDir,
        fake: &pool_csi_testkit::fake_api::FakeApi,
    ) -> (LunPool, LunPool) {
        let pool = |node: &str| {
            let mut cfg = Config::local(node, t.path().join(node));
            cfg.cluster = Some(crate::config::ClusterAccess {
                client: fake.client(),
                namespace: "pool-csi".into(),
            });
            san(&cfg, &[10, 20, 30, 40], &Default::default())
        };
        (pool("n1"), pool("n2"))
    }

    #[tokio::test]
    async fn two_nodes_racing_for_luns_of_one_target_never_share_one() {
        let t = tempfile::tempdir().unwrap();
        let fake = pool_csi_testkit::fake_api::FakeApi::new();
        let (a, b) = shared_pools(&t, &fake);
        a.start().await.unwrap();
        b.start().await.unwrap();
        assert!(a.shared() && b.shared());
        let (ra, rb) = tokio::join!(three(&a, "a"), three(&b, "b"));
        let writes = fake
            .requests()
            .iter()
            .filter(|r| !r.starts_with("GET"))
            .count();
        assert!(
            writes > 4,
            "the nodes raced: some writes lost and were redone"
        );
        let made = ra.iter().chain(&rb).filter(|r| r.is_ok()).count();
        assert_eq!(made, 4, "four LUNs, six requests: {ra:?} {rb:?}");
        for r in ra.iter().chain(&rb).filter_map(|r| r.as_ref().err()) {
            assert!(matches!(r, Error::OutOfSpace { .. }), "{r}");
        }
        // Both nodes see the same four claims, on four different LUNs.
        let claims = a.claims().await.unwrap();
        assert_eq!(claims, b.claims().await.unwrap());
        let ids: BTreeSet<&str> = claims.values().map(|c| c.identity.as_str()).collect();
        assert_eq!(ids.len(), 4);
        // A retried create answers from either node with the same LUN.
        let first = claims.keys().next().unwrap().clone();
        let again = b
            .create_volume(&CreateRequest::sized(&first, 5))
            .await
            .unwrap();
        assert_eq!(again.capacity, claims[&first].size);
    }

    #[tokio::test]
    async fn a_shared_volume_is_published_on_one_node_at_a_time() {
        let t = tempfile::tempdir().unwrap();
        let fake = pool_csi_testkit::fake_api::FakeApi::new();
        let (a, b) = shared_pools(&t, &fake);
        a.start().await.unwrap();
        b.start().await.unwrap();
        a.create_volume(&CreateRequest::sized("v", 5))
            .await
            .unwrap();
        a.publish("v", "n1").await.unwrap();
        b.publish("v", "n1").await.unwrap(); // idempotent, from any node
        let e = b.publish("v", "n2").await.unwrap_err();
        assert!(matches!(e, Error::Precondition(_)));
        assert!(e.to_string().contains("published on node n1"), "{e}");
        let e = b.delete_volume("v", false).await.unwrap_err().to_string();
        assert!(e.contains("node n1 (published); unpublish it first"), "{e}");
        b.unpublish("v", "n2").await.unwrap(); // not n2's: nothing changes
        let e = b.publish("v", "n2").await.unwrap_err();
        assert!(
            matches!(e, Error::Precondition(ref m) if m.contains("published on node n1")),
            "{e}"
        );
        // Released by another node for n1 (lost), a LUN without
        // reservations is not moved: n1 could not be fenced off it.
        let e = b.unpublish("v", "n1").await.unwrap_err();
        assert!(matches!(e, Error::NotFenced { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("stays published on node n1"), "{e}");
        assert!(
            e.contains("does not support SCSI-3 persistent reservations"),
            "{e}"
        );
        assert!(e.contains("set `fencing: none` on pool \"san\""), "{e}");
        let st = a.status(false).await;
        assert!(
            st.message.contains("volumes v do not support"),
            "{}",
            st.message
        );
        a.unpublish("v", "n1").await.unwrap(); // n1 itself: nothing to fence
        b.publish("v", "n2").await.unwrap();
        let e = a.attach_source("v").await.unwrap_err().to_string();
        assert!(e.contains("published on node n2, not on n1"), "{e}");
        b.attach_source("v").await.unwrap();
        // A forced detach while it is still staged on n2: n2 could keep
        // writing after it moves, and this LUN cannot fence it. Refused.
        let e = b.unpublish("v", "n2").await.unwrap_err().to_string();
        assert!(e.contains("still staged on this node"), "{e}");
        b.detached("v").await.unwrap();
        b.unpublish("v", "n2").await.unwrap();
        a.delete_volume("v", false).await.unwrap();
        assert!(matches!(
            b.publish("v", "n2").await,
            Err(Error::VolumeNotFound { .. })
        ));
        b.unpublish("v", "n2").await.unwrap(); // gone: nothing to do

        // A static volume is claimed by its first publish, from any node.
        let s = a.luns().await.unwrap()[0].static_name.clone();
        b.publish(&s, "n2").await.unwrap();
        assert_eq!(
            a.luns().await.unwrap()[0].volume.as_deref(),
            Some(s.as_str())
        );
        let e = a.publish(&s, "n1").await.unwrap_err();
        assert!(
            matches!(e, Error::Precondition(ref m) if m.contains("published on node n2")),
            "{e}"
        );
    }

    fn lun(number: u32, mib: u64) -> Lun {
        Lun {
            number,
            size: mib << 20,
            identity: format!("serial:{number}"),
            address: format!("LUN {number}"),
            device: None,
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
