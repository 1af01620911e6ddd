//! The StoragePool spec: one schema whether a pool comes from the cluster
//! resource or from a pools file. The file holds StoragePool manifests, the
//! same YAML `kubectl apply` takes:
//!
//! ```yaml
//! apiVersion: pool-csi.io/v1alpha1
//! kind: StoragePool
//! metadata: { name: scratch }
//! spec: { type: dir, target: { path: /var/lib/pool-csi/scratch } }
//! ```

use crate::PoolType;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, path::Path};

pub const API_GROUP: &str = "pool-csi.io";
pub const API_VERSION: &str = "pool-csi.io/v1alpha1";
pub const KIND: &str = "StoragePool";

/// What a pool is made of and where it lives, as in libvirt's pool XML.
/// The cluster resource `StoragePool` (group pool-csi.io, short name `sp`)
/// is derived from this struct; `crdgen` prints its CRD for the chart.
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "pool-csi.io",
    version = "v1alpha1",
    kind = "StoragePool",
    plural = "storagepools",
    shortname = "sp",
    status = "crate::pool_status::StoragePoolStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Capacity","type":"string","jsonPath":".status.capacity"}"#,
    printcolumn = r#"{"name":"Allocation","type":"string","jsonPath":".status.allocation"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.available"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.nodesReady","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoragePoolSpec {
    #[serde(rename = "type")]
    pub pool_type: PoolType,
    #[serde(default)]
    pub source: PoolSource,
    #[serde(default)]
    pub target: PoolTarget,
    /// Build the pool at start when it is not built yet (mkdir; mkfs only on a
    /// blank device). Off by default, as `virsh pool-build` is explicit.
    #[serde(default)]
    pub auto_build: bool,
    /// logical pools: LVM settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmOptions>,
    /// Node labels a node must carry to hold this pool (empty: every node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// iscsi, scsi, mpath pools shared by several nodes: how a volume is
    /// kept from a lost node before it moves (default `reservations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing: Option<Fencing>,
    /// iscsi, scsi, mpath pools: what becomes of the LUN of a static
    /// PersistentVolume that was Released (default `retain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim: Option<Reclaim>,
}

/// What the leader does with a Released static PersistentVolume's LUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Reclaim {
    /// Nothing: the PV stays Released, its data on the LUN, for the
    /// operator (the PVs' reclaim policy is Retain).
    #[default]
    Retain,
    /// The LUN is zeroed through a node of the pool and freed, the PV
    /// deleted, and the LUN offered again as a new Available PV.
    Wipe,
}

/// How a shared LUN pool keeps a node it releases a volume from off that
/// volume's LUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Fencing {
    /// SCSI-3 persistent reservations: the node using a LUN registers its
    /// key and holds Write Exclusive – Registrants Only; a node releasing
    /// the volume for a lost node pre-empts and aborts that node's key
    /// first. A LUN without reservations is not moved off a lost node.
    #[default]
    Reservations,
    /// No fencing: a volume moves off a lost node unfenced. Only safe when
    /// lost nodes are powered off before they are tainted out of service.
    None,
}

/// libvirt's `<source>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSource {
    /// fs: the block device; disk: the whole disk; iscsi: the target IQN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// logical: the physical volumes `build` turns into the VG.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// netfs: the server (a host name or address); iscsi: the portal, host[:port].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// iscsi, instead of `host`: several portals of the target, each an IP
    /// address[:port], all logged in for multipath (multipathd on the node
    /// joins the paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// netfs: the exported directory (nfs), the volume (`/gv0`, glusterfs)
    /// or the share (`/share`, cifs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// netfs: mount options, one per entry (`vers=4.2`, `noatime`); cifs
    /// credentials go in `auth`, never here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// logical: the VG name (default: the pool name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// fs: filesystem (auto, ext4, xfs …); disk: table type (gpt, dos …);
    /// netfs: auto, nfs, glusterfs or cifs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// scsi: the HBA by its kernel name (`hostN`; the number can change
    /// across reboots — prefer `adapterWwn` for Fibre Channel HBAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// scsi: a Fibre Channel HBA (or NPIV vHBA) by its port names, stable
    /// across reboots (libvirt's `<adapter type='fc_host' …>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter_wwn: Option<AdapterWwn>,
    /// iscsi: the initiator IQN the pool presents to the target: in the LUN
    /// inventory (libiscsi) and in the node's login (iscsiadm, through an
    /// iface `pool-csi-<hash>` with that initiator name). Unset: the node's
    /// own name from /etc/iscsi/initiatorname.iscsi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// iscsi: CHAP credentials; netfs with format cifs: the share's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PoolAuth>,
}

/// libvirt's `<auth type='chap' username=…><secret …/></auth>`: the
/// password lives in a Secret, mounted into the node plugin at
/// `<secrets-dir>/<secretRef>/password`; it never appears in the spec,
/// status, logs or volume ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolAuth {
    pub username: String,
    /// Name of the Secret (key `password`) in the driver's namespace.
    pub secret_ref: String,
    /// iscsi, mutual CHAP: the name the target proves itself with (its
    /// outgoing account) …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_username: Option<String>,
    /// … and the Secret (key `password`) holding the target's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_secret_ref: Option<String>,
}

impl PoolAuth {
    /// Both credentials name something, and nothing a secret file path
    /// could escape through; `mutual`: whether the target's may be given.
    fn check(&self, mutual: bool) -> Result<(), String> {
        let name_ok = |n: &str| !n.is_empty() && !n.bytes().any(|b| b.is_ascii_control());
        if !name_ok(&self.username) || check_pool_name(&self.secret_ref).is_err() {
            return Err("source.auth needs a username and a secretRef naming a Secret".into());
        }
        match (&self.target_username, &self.target_secret_ref, mutual) {
            (None, None, _) => Ok(()),
            (Some(_), Some(_), false) => Err(
                "source.auth.targetUsername and targetSecretRef (mutual CHAP) are for iscsi pools"
                    .into(),
            ),
            (Some(u), Some(r), true) if name_ok(u) && check_pool_name(r).is_ok() => Ok(()),
            _ => Err(
                "mutual CHAP needs both source.auth.targetUsername and a targetSecretRef naming a Secret"
                    .into(),
            ),
        }
    }
}

/// A Fibre Channel HBA by its names: `0x` and 16 hex digits each, as in
/// `/sys/class/fc_host/hostN/node_name` and `port_name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdapterWwn {
    pub wwnn: String,
    pub wwpn: String,
    /// The HBA a vHBA hangs off (`hostN`); when set, the matched host must
    /// be its child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// LVM settings of a logical pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LvmOptions {
    /// The thin pool LV that `allocation: thin` volumes live in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_pool: Option<String>,
    /// When set, `build` also creates the thin pool with this percent of the VG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_pool_percent: Option<u8>,
    /// Thin provisioning overcommit: space offered for thin volumes, as a
    /// percent of the thin pool's free data space (100: no overcommit).
    #[serde(default = "default_overcommit")]
    pub overcommit_percent: u32,
    /// Copy-on-write space of a snapshot of a thick LV, percent of the origin.
    #[serde(default = "default_snapshot_percent")]
    pub snapshot_percent: u32,
    /// Run LVM with `global{activation=0}`: for machines without
    /// device-mapper. Volumes can be created, resized, snapshotted in metadata
    /// and removed, but not attached on this node. Off by default.
    #[serde(default)]
    pub no_activation: bool,
}

fn default_overcommit() -> u32 {
    100
}

fn default_snapshot_percent() -> u32 {
    20
}

impl Default for LvmOptions {
    fn default() -> Self {
        Self {
            thin_pool: None,
            thin_pool_percent: None,
            overcommit_percent: default_overcommit(),
            snapshot_percent: default_snapshot_percent(),
            no_activation: false,
        }
    }
}

/// libvirt's `<target>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolTarget {
    /// Where volumes live (file pools) or are found (/dev/VG …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The fields of a netfs pool's source, checked before anything is mounted:
/// they end up in mount's argument vector.
pub mod netfs {
    use super::PoolSource;

    /// `source.format` values, `auto` first (the default).
    pub const FORMATS: [&str; 4] = ["auto", "nfs", "glusterfs", "cifs"];
    /// Options that carry credentials: those come from `source.auth`.
    const SECRET_OPTIONS: [&str; 7] = [
        "credentials",
        "cred",
        "password",
        "password2",
        "pass",
        "username",
        "user",
    ];

    pub fn check(s: &PoolSource) -> Result<(), String> {
        let host = s.host.as_deref().unwrap_or("");
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && !host.starts_with('-')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            return Err(format!(
                "source.host {host:?} must be the server's host name or address (letters, digits, '.', '-', ':', '[]')"
            ));
        }
        let format = s.format.as_deref().unwrap_or("auto");
        if !FORMATS.contains(&format) {
            return Err(format!(
                "source.format {format:?} is not a netfs format; expected one of {}",
                FORMATS.join(", ")
            ));
        }
        if let Some(d) = &s.dir {
            if d.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b',')
            {
                return Err(format!(
                    "source.dir {d:?} must not hold spaces, control characters or ','"
                ));
            }
        }
        for o in &s.options {
            let (key, _) = o.split_once('=').unwrap_or((o, ""));
            let ok = !o.is_empty()
                && o.len() <= 256
                && o.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && o.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.=:/+-".contains(&b));
            if !ok {
                return Err(format!(
                    "source.options entry {o:?} must be one mount option (letters, digits and _.=:/+-, starting with a letter or digit; no ',' or spaces)"
                ));
            }
            if SECRET_OPTIONS.contains(&key) {
                return Err(format!(
                    "source.options must not carry credentials ({key}); give source.auth {{username, secretRef}}"
                ));
            }
        }
        match (&s.auth, format) {
            (Some(a), "cifs") => a.check(false)?,
            (Some(_), f) => {
                return Err(format!(
                    "source.auth is for cifs shares; a {f} share takes no credentials"
                ))
            }
            (None, _) => {}
        }
        Ok(())
    }
}

/// A named pool: a StoragePool manifest's metadata.name and spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDefinition {
    pub name: String,
    pub spec: StoragePoolSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: StoragePoolSpec,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

/// A pool definition that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The pools file cannot be read.
    #[error("failed to read pools file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML or not a StoragePool.
    #[error("failed to parse StoragePool document {index} of {path}")]
    Parse {
        path: String,
        index: usize,
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// Wrong apiVersion/kind.
    #[error("document {index} of {path} is {kind} {api_version}, expected {KIND} {API_VERSION}")]
    WrongKind {
        path: String,
        index: usize,
        kind: String,
        api_version: String,
    },
    /// A field is missing or invalid for the pool type.
    #[error("pool {pool:?}: {why}")]
    Invalid { pool: String, why: String },
}

/// An LVM VG or LV name: `[A-Za-z0-9+_.-]`, not starting with '-', not "."
/// or "..", and not one of the names LVM reserves.
pub fn is_lvm_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 127
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+_.-".contains(&c))
        && !n.starts_with('-')
        && n != "."
        && n != ".."
        && !n.starts_with("snapshot")
        && !n.starts_with("pvmove")
}

/// An iSCSI portal given by address: `10.0.0.5`, `10.0.0.5:3260`,
/// `[fd00::5]` or `[fd00::5]:3260`.
pub fn is_ip_portal(p: &str) -> bool {
    use std::net::{IpAddr, SocketAddr};
    p.parse::<IpAddr>().is_ok_and(|a| a.is_ipv4())
        || p.parse::<SocketAddr>().is_ok()
        || p.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
}

/// A pool name: a DNS label (it appears in volume ids, StorageClasses, paths).
pub fn check_pool_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ok.then_some(())
        .ok_or("must be a DNS label: 1-63 of a-z, 0-9 and '-'")
}

impl PoolDefinition {
    /// Checks the fields the pool type needs.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |why: String| SpecError::Invalid {
            pool: self.name.clone(),
            why,
        };
        check_pool_name(&self.name).map_err(|w| invalid(format!("name {:?} {w}", self.name)))?;
        let s = &self.spec;
        let abs = |field: &str, v: &Option<String>| match v {
            Some(p) if Path::new(p).is_absolute() && !p.split('/').any(|c| c == "..") => Ok(()),
            Some(p) => Err(invalid(format!(
                "{field} {p:?} must be an absolute path without '..'"
            ))),
            None => Err(invalid(format!(
                "{field} is required for {} pools",
                s.pool_type
            ))),
        };
        match s.pool_type {
            PoolType::Dir => abs("target.path", &s.target.path)?,
            PoolType::Fs => {
                abs("target.path", &s.target.path)?;
                abs("source.device", &s.source.device)?;
            }
            PoolType::Netfs => {
                abs("target.path", &s.target.path)?;
                netfs::check(&s.source).map_err(invalid)?;
                abs("source.dir", &s.source.dir)?;
            }
            PoolType::Disk => abs("source.device", &s.source.device)?,
            PoolType::Logical => {
                let vg = s.source.name.as_deref().unwrap_or(&self.name);
                if !is_lvm_name(vg) {
                    return Err(invalid(format!(
                        "source.name {vg:?} is not a valid volume group name"
                    )));
                }
                let o = s.lvm.clone().unwrap_or_default();
                if let Some(tp) = &o.thin_pool {
                    if !is_lvm_name(tp) {
                        return Err(invalid(format!(
                            "lvm.thinPool {tp:?} is not a valid LV name"
                        )));
                    }
                }
                if o.thin_pool_percent.is_some_and(|p| !(1..=95).contains(&p))
                    || (o.thin_pool_percent.is_some() && o.thin_pool.is_none())
                {
                    return Err(invalid(
                        "lvm.thinPoolPercent must be 1-95 and needs lvm.thinPool".into(),
                    ));
                }
                if o.overcommit_percent < 100 || o.snapshot_percent == 0 || o.snapshot_percent > 100
                {
                    return Err(invalid(
                        "lvm.overcommitPercent must be >= 100 and lvm.snapshotPercent 1-100".into(),
                    ));
                }
            }
            PoolType::Iscsi => {
                // An IPv6 address goes in brackets: `fd00::5` would read as
                // host `fd00:` and port 5.
                let portal_ok = |h: &str| {
                    !h.is_empty()
                        && !h.contains(['/', '@', ' ', ','])
                        && (h.starts_with('[') || h.matches(':').count() <= 1)
                };
                match (s.source.host.as_deref(), s.source.hosts.as_slice()) {
                    (Some(h), []) if portal_ok(h) => {}
                    (None, hosts) if !hosts.is_empty() => {
                        if let Some(h) = hosts.iter().find(|h| !is_ip_portal(h)) {
                            return Err(invalid(format!(
                                "source.hosts[] {h:?} is not an IP address[:port] (portals for multipath are named by address, as the kernel shows its sessions)"
                            )));
                        }
                    }
                    (Some(_), [_, ..]) => {
                        return Err(invalid(
                            "give source.host or source.hosts for an iscsi pool, not both".into(),
                        ))
                    }
                    _ => {
                        return Err(invalid(
                            "source.host (the portal: host[:port], an IPv6 address in brackets) is required for iscsi pools"
                                .into(),
                        ))
                    }
                }
                let iqn_ok = |v: &str| {
                    (v.starts_with("iqn.") || v.starts_with("eui.") || v.starts_with("naa."))
                        && v.len() <= 223
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
                };
                match s.source.device.as_deref() {
                    Some(t) if iqn_ok(t) => {}
                    other => {
                        return Err(invalid(format!(
                            "source.device must be the target's IQN (iqn.…, eui.… or naa.…), not {other:?}"
                        )))
                    }
                }
                if let Some(i) = s.source.initiator.as_deref().filter(|i| !iqn_ok(i)) {
                    return Err(invalid(format!("source.initiator {i:?} is not an IQN")));
                }
                if let Some(a) = &s.source.auth {
                    a.check(true).map_err(invalid)?;
                }
            }
            PoolType::Scsi => {
                let host_ok = |h: &str| {
                    h.strip_prefix("host").is_some_and(|n| {
                        !n.is_empty() && n.len() < 8 && n.bytes().all(|b| b.is_ascii_digit())
                    })
                };
                let wwn_ok = |w: &str| {
                    w.strip_prefix("0x")
                        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                };
                match (&s.source.adapter, &s.source.adapter_wwn) {
                    (Some(a), None) if host_ok(a) => {}
                    (None, Some(w)) if wwn_ok(&w.wwnn) && wwn_ok(&w.wwpn) => {
                        if let Some(p) = w.parent.as_deref().filter(|p| !host_ok(p)) {
                            return Err(invalid(format!(
                                "source.adapterWwn.parent must be an HBA name like host5, not {p:?}"
                            )));
                        }
                    }
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "give source.adapter or source.adapterWwn for a scsi pool, not both".into(),
                        ))
                    }
                    _ => {
                        return Err(invalid(
                            "a scsi pool needs source.adapter (hostN) or source.adapterWwn {wwnn, wwpn} (0x + 16 hex digits each)".into(),
                        ))
                    }
                }
            }
            PoolType::Mpath => {}
        }
        if !s.source.hosts.is_empty() && s.pool_type != PoolType::Iscsi {
            return Err(invalid("source.hosts is for iscsi pools".into()));
        }
        if s.reclaim.is_some() && !s.pool_type.is_lun_pool() {
            return Err(invalid(format!(
                "reclaim applies to the static PersistentVolumes of iscsi, scsi and mpath pools, not to {} pools",
                s.pool_type
            )));
        }
        if s.fencing.is_some() && !s.pool_type.is_lun_pool() {
            return Err(invalid(format!(
                "fencing applies to iscsi, scsi and mpath pools (SCSI-3 persistent reservations), not to {} pools",
                s.pool_type
            )));
        }
        for d in &s.source.devices {
            abs("source.devices[]", &Some(d.clone()))?;
        }
        Ok(())
    }

    /// Reads every StoragePool document of a pools file and validates it.
    /// Duplicate names are refused.
    pub fn load_file(path: &Path) -> Result<Vec<PoolDefinition>, SpecError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse_documents(&text, &p)
    }

    /// Parses multi-document YAML (`---` separated StoragePool manifests).
    pub fn parse_documents(text: &str, origin: &str) -> Result<Vec<PoolDefinition>, SpecError> {
        let mut out: Vec<PoolDefinition> = Vec::new();
        for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value =
                serde_yaml_ng::Value::deserialize(doc).map_err(|source| SpecError::Parse {
                    path: origin.into(),
                    index,
                    source,
                })?;
            if value.is_null() {
                continue;
            }
            let m: Manifest =
                serde_yaml_ng::from_value(value).map_err(|source| SpecError::Parse {
                    path: origin.into(),
                    index,
                    source,
                })?;
            if m.kind != KIND || m.api_version != API_VERSION {
                return Err(SpecError::WrongKind {
                    path: origin.into(),
                    index,
                    kind: m.kind,
                    api_version: m.api_version,
                });
            }
            let def = PoolDefinition {
                name: m.metadata.name,
                spec: m.spec,
            };
            def.validate()?;
            if out.iter().any(|d| d.name == def.name) {
                return Err(SpecError::Invalid {
                    pool: def.name,
                    why: "defined twice".into(),
                });
            }
            out.push(def);
        }
        Ok(out)
    }

    /// The manifest text for this pool (what `parse_documents` reads).
    pub fn to_manifest(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            api_version: &'a str,
            kind: &'a str,
            metadata: BTreeMap<&'a str, &'a str>,
            spec: &'a StoragePoolSpec,
        }
        let out = Out {
            api_version: API_VERSION,
            kind: KIND,
            metadata: BTreeMap::from([("name", self.name.as_str())]),
            spec: &self.spec,
        };
        serde_yaml_ng::to_string(&out).expect("a pool spec always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
apiVersion: pool-csi.io/v1alpha1
kind: StoragePool
metadata: { name: scratch }
spec:
  type: dir
  target: { path: /var/lib/pool-csi/scratch }
---
apiVersion: pool-csi.io/v1alpha1
kind: StoragePool
metadata: { name: data }
spec:
  type: fs
  source: { device: /dev/vdb, format: xfs }
  target: { path: /srv/data }
  autoBuild: true
---
apiVersion: pool-csi.io/v1alpha1
kind: StoragePool
metadata: { name: vg0 }
spec:
  type: logical
  source: { devices: [/dev/vdc, /dev/vdd] }
  lvm: { thinPool: thin0, thinPoolPercent: 80, noActivation: true }
"#;

    #[test]
    fn reads_every_document() {
        let pools = PoolDefinition::parse_documents(FILE, "t").unwrap();
        assert_eq!(pools.len(), 3);
        let lvm = pools[2].spec.lvm.clone().unwrap();
        assert_eq!(
            (
                lvm.thin_pool.as_deref(),
                lvm.overcommit_percent,
                lvm.no_activation
            ),
            (Some("thin0"), 100, true)
        );
        assert_eq!(pools[0].name, "scratch");
        assert_eq!(pools[1].spec.pool_type, PoolType::Fs);
        assert_eq!(pools[1].spec.source.format.as_deref(), Some("xfs"));
        assert!(pools[1].spec.auto_build);
    }

    #[test]
    fn manifest_round_trips() {
        let pools = PoolDefinition::parse_documents(FILE, "t").unwrap();
        for p in pools {
            let again = PoolDefinition::parse_documents(&p.to_manifest(), "t").unwrap();
            assert_eq!(again, vec![p]);
        }
    }

    #[test]
    fn unknown_fields_and_missing_paths_are_errors() {
        let bad = FILE.replace("autoBuild", "autoBiuld");
        let e = PoolDefinition::parse_documents(&bad, "t").unwrap_err();
        assert!(
            crate::full_message(&e).contains("autoBiuld"),
            "{}",
            crate::full_message(&e)
        );
        let rel = FILE.replace("/var/lib/pool-csi/scratch", "scratch");
        assert!(PoolDefinition::parse_documents(&rel, "t")
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        let dotdot = FILE.replace("/var/lib/pool-csi/scratch", "/var/../etc");
        assert!(PoolDefinition::parse_documents(&dotdot, "t").is_err());
        let nodev = FILE.replace("source: { device: /dev/vdb, format: xfs }", "");
        assert!(PoolDefinition::parse_documents(&nodev, "t")
            .unwrap_err()
            .to_string()
            .contains("source.device"));
    }

    #[test]
    fn scsi_pools_name_their_hba_one_way() {
        let scsi = |source: &str| {
            PoolDefinition::parse_documents(
                &format!("apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: hba }}\nspec:\n  type: scsi\n  source: {source}\n"),
                "t",
            )
            .map_err(|e| e.to_string())
        };
        assert!(scsi("{ adapter: host3 }").is_ok());
        let wwn = scsi("{ adapterWwn: { wwnn: \"0x20000000c9831b4b\", wwpn: \"0x10000000c9831b4b\", parent: host5 } }").unwrap();
        assert_eq!(
            wwn[0]
                .spec
                .source
                .adapter_wwn
                .as_ref()
                .unwrap()
                .parent
                .as_deref(),
            Some("host5")
        );
        for (bad, why) in [
            ("{}", "needs source.adapter"),
            ("{ adapter: sda }", "needs source.adapter"),
            ("{ adapter: \"host3/../x\" }", "needs source.adapter"),
            ("{ adapterWwn: { wwnn: \"0x20\", wwpn: \"0x10000000c9831b4b\" } }", "16 hex"),
            ("{ adapterWwn: { wwnn: \"0x20000000c9831b4b\", wwpn: \"0x10000000c9831b4b\", parent: \"../host5\" } }", "parent"),
            ("{ adapter: host3, adapterWwn: { wwnn: \"0x20000000c9831b4b\", wwpn: \"0x10000000c9831b4b\" } }", "not both"),
        ] {
            let e = scsi(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn mutual_chap_needs_both_halves_and_an_iscsi_pool() {
        let iscsi = |auth: &str| {
            PoolDefinition::parse_documents(
                &format!("apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: p }}\nspec:\n  type: iscsi\n  source: {{ host: san, device: iqn.2026-11.x:t, auth: {auth} }}\n"),
                "t",
            )
            .map_err(|e| crate::full_message(&e))
        };
        let ok =
            iscsi("{ username: a, secretRef: s, targetUsername: t, targetSecretRef: ts }").unwrap();
        let auth = ok[0].spec.source.auth.as_ref().unwrap();
        assert_eq!(auth.target_username.as_deref(), Some("t"));
        assert_eq!(auth.target_secret_ref.as_deref(), Some("ts"));
        for bad in [
            "{ username: a, secretRef: s, targetUsername: t }",
            "{ username: a, secretRef: s, targetSecretRef: ts }",
            "{ username: a, secretRef: s, targetUsername: t, targetSecretRef: \"../ts\" }",
            "{ username: a, secretRef: s, targetUsername: \"\", targetSecretRef: ts }",
        ] {
            let e = iscsi(bad).unwrap_err();
            assert!(e.contains("mutual CHAP needs both"), "{bad}: {e}");
        }
        let cifs = PoolDefinition::parse_documents(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: p }\nspec:\n  type: netfs\n  target: { path: /srv/p }\n  source: { host: f, dir: /s, format: cifs, auth: { username: a, secretRef: s, targetUsername: t, targetSecretRef: ts } }\n",
            "t",
        )
        .unwrap_err();
        assert!(
            crate::full_message(&cifs).contains("are for iscsi pools"),
            "{}",
            crate::full_message(&cifs)
        );
    }

    #[test]
    fn several_portals_are_addresses_and_exclude_host() {
        let iscsi = |source: &str| {
            PoolDefinition::parse_documents(
                &format!("apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: p }}\nspec:\n  type: iscsi\n  source: {source}\n"),
                "t",
            )
            .map_err(|e| crate::full_message(&e))
        };
        let ok = iscsi("{ hosts: [\"10.0.0.5\", \"10.0.1.5:3261\", \"[fd00::5]:3260\"], device: iqn.2026-11.x:t }").unwrap();
        assert_eq!(ok[0].spec.source.hosts.len(), 3);
        for (bad, why) in [
            (
                "{ hosts: [san-a.example.com], device: iqn.2026-11.x:t }",
                "not an IP address",
            ),
            (
                "{ host: san, hosts: [\"10.0.0.5\"], device: iqn.2026-11.x:t }",
                "not both",
            ),
            ("{ hosts: [], device: iqn.2026-11.x:t }", "source.host"),
        ] {
            let e = iscsi(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = PoolDefinition::parse_documents(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: p }\nspec:\n  type: netfs\n  target: { path: /srv/p }\n  source: { host: f, hosts: [\"10.0.0.5\"], dir: /s, format: nfs }\n",
            "t",
        )
        .unwrap_err();
        assert!(crate::full_message(&e).contains("source.hosts is for iscsi pools"));
    }

    #[test]
    fn fencing_and_reclaim_are_lun_pool_settings() {
        let pool = |kind: &str, rest: &str| {
            PoolDefinition::parse_documents(
                &format!("apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: p }}\nspec:\n  type: {kind}\n{rest}"),
                "t",
            )
            .map_err(|e| crate::full_message(&e))
        };
        let iscsi = "  source: { host: san, device: iqn.2026-11.x:t }\n";
        assert_eq!(pool("iscsi", iscsi).unwrap()[0].spec.fencing, None);
        let none = pool("iscsi", &format!("{iscsi}  fencing: none\n")).unwrap();
        assert_eq!(none[0].spec.fencing, Some(Fencing::None));
        let on = pool("mpath", "  fencing: reservations\n").unwrap();
        assert_eq!(on[0].spec.fencing, Some(Fencing::Reservations));
        let e = pool("iscsi", &format!("{iscsi}  fencing: stonith\n")).unwrap_err();
        assert!(e.contains("stonith"), "{e}");
        let e = pool("dir", "  target: { path: /srv/p }\n  fencing: none\n").unwrap_err();
        assert!(
            e.contains("fencing applies to iscsi, scsi and mpath pools"),
            "{e}"
        );
    }

    #[test]
    fn netfs_sources_are_checked_before_anything_is_mounted() {
        let netfs = |source: &str| {
            PoolDefinition::parse_documents(
                &format!("apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: share }}\nspec:\n  type: netfs\n  target: {{ path: /var/lib/pool-csi/share }}\n  source: {source}\n"),
                "t",
            )
            .map_err(|e| e.to_string())
        };
        let ok = netfs("{ host: nfs.example.com, dir: /export/k8s, format: nfs, options: [vers=4.2, noatime] }").unwrap();
        assert_eq!(ok[0].spec.source.options, ["vers=4.2", "noatime"]);
        netfs("{ host: \"10.250.0.2\", dir: /gv0, format: glusterfs }").unwrap();
        netfs("{ host: files, dir: /share, format: cifs, auth: { username: svc, secretRef: smb-creds } }").unwrap();
        for (bad, why) in [
            ("{ host: nfs, dir: /x, format: zfs }", "not a netfs format"),
            (
                "{ host: nfs, dir: /export/../etc, format: nfs }",
                "without '..'",
            ),
            ("{ host: nfs, format: nfs }", "source.dir is required"),
            ("{ host: \"nfs server\", dir: /x }", "source.host"),
            ("{ host: \"-oremount\", dir: /x }", "source.host"),
            ("{ dir: /x }", "source.host"),
            ("{ host: nfs, dir: \"/x y\" }", "spaces"),
            (
                "{ host: nfs, dir: /x, options: [\"ro,remount\"] }",
                "one mount option",
            ),
            (
                "{ host: nfs, dir: /x, options: [\"-o\"] }",
                "one mount option",
            ),
            (
                "{ host: nfs, dir: /x, options: [\"x y\"] }",
                "one mount option",
            ),
            (
                "{ host: f, dir: /s, format: cifs, options: [password=hunter2] }",
                "credentials",
            ),
            (
                "{ host: f, dir: /s, format: cifs, options: [credentials=/etc/x] }",
                "credentials",
            ),
            (
                "{ host: f, dir: /s, format: nfs, auth: { username: u, secretRef: s } }",
                "cifs shares",
            ),
            (
                "{ host: f, dir: /s, format: cifs, auth: { username: u, secretRef: \"../s\" } }",
                "secretRef",
            ),
        ] {
            let e = netfs(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn duplicate_and_wrong_kind_are_refused() {
        let bad_lvm = FILE.replace("thinPoolPercent: 80", "thinPoolPercent: 99");
        assert!(PoolDefinition::parse_documents(&bad_lvm, "t")
            .unwrap_err()
            .to_string()
            .contains("thinPoolPercent"));
        let bad_vg = FILE.replace(
            "source: { devices: [/dev/vdc, /dev/vdd] }",
            "source: { name: \"-vg\" }",
        );
        assert!(PoolDefinition::parse_documents(&bad_vg, "t")
            .unwrap_err()
            .to_string()
            .contains("volume group"));
        let twice = format!("{FILE}\n---\n{}", FILE.split("---").next().unwrap());
        assert!(PoolDefinition::parse_documents(&twice, "t")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let wrong = FILE.replace("kind: StoragePool", "kind: StorageClass");
        assert!(matches!(
            PoolDefinition::parse_documents(&wrong, "t"),
            Err(SpecError::WrongKind { .. })
        ));
    }
}
