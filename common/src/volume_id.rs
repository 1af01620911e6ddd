//! Volume and snapshot ids, and the CSI name → storage name mapping. The only
//! place ids are built or parsed.
//!
//! A volume id is self-describing — `v1:<pool>:<node>:<name>` (snapshots:
//! `s1:…`) — so every later call routes to the right agent and pool without a
//! lookup table. `<node>` is empty for pools every node reaches. Every part is
//! checked on parse: a name can never carry `/`, `..` or anything but
//! `[a-z0-9-]`, so no id can name a path outside its pool.

use std::fmt;

const VOLUME_PREFIX: &str = "v1";
const SNAPSHOT_PREFIX: &str = "s1";
/// Longest storage name: an LVM-, partition-label- and filename-safe length.
pub const MAX_NAME: usize = 63;

/// Where a volume lives and what it is called on the storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId {
    pub pool: String,
    /// None for pools that every node reaches.
    pub node: Option<String>,
    pub name: String,
}

/// Where a snapshot lives; same shape as a volume id, another prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    pub pool: String,
    pub node: Option<String>,
    pub name: String,
}

/// An id that is not one of ours (INVALID_ARGUMENT, or NOT_FOUND where the
/// CSI spec treats an unknown id as a missing volume).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} id {id:?}: {why}")]
pub struct BadId {
    pub what: &'static str,
    pub id: String,
    pub why: &'static str,
}

impl crate::GrpcCode for BadId {
    fn grpc_code(&self) -> tonic::Code {
        tonic::Code::NotFound
    }
}

fn parse_parts(
    id: &str,
    prefix: &str,
    what: &'static str,
) -> Result<(String, Option<String>, String), BadId> {
    let bad = |why| BadId {
        what,
        id: id.chars().take(200).collect(),
        why,
    };
    let mut parts = id.split(':');
    let (Some(p), Some(pool), Some(node), Some(name), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad("expected four ':'-separated parts"));
    };
    if p != prefix {
        return Err(bad("unknown prefix"));
    }
    crate::pool_spec::check_pool_name(pool).map_err(|_| bad("invalid pool name"))?;
    if !node.is_empty() {
        check_node_name(node).map_err(|_| bad("invalid node name"))?;
    }
    check_storage_name(name).map_err(|_| bad("invalid volume name"))?;
    Ok((
        pool.to_string(),
        (!node.is_empty()).then(|| node.to_string()),
        name.to_string(),
    ))
}

impl VolumeId {
    pub fn new(pool: &str, node: Option<&str>, name: &str) -> Self {
        Self {
            pool: pool.into(),
            node: node.map(Into::into),
            name: name.into(),
        }
    }

    pub fn parse(id: &str) -> Result<Self, BadId> {
        let (pool, node, name) = parse_parts(id, VOLUME_PREFIX, "volume")?;
        Ok(Self { pool, node, name })
    }

    /// The lock key for operations on this volume.
    pub fn lock_key(&self) -> crate::oplock::LockKey {
        crate::oplock::LockKey::volume(&self.pool, &self.name)
    }
}

impl SnapshotId {
    pub fn new(pool: &str, node: Option<&str>, name: &str) -> Self {
        Self {
            pool: pool.into(),
            node: node.map(Into::into),
            name: name.into(),
        }
    }

    pub fn parse(id: &str) -> Result<Self, BadId> {
        let (pool, node, name) = parse_parts(id, SNAPSHOT_PREFIX, "snapshot")?;
        Ok(Self { pool, node, name })
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = self.node.as_deref().unwrap_or("");
        write!(f, "{VOLUME_PREFIX}:{}:{node}:{}", self.pool, self.name)
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = self.node.as_deref().unwrap_or("");
        write!(f, "{SNAPSHOT_PREFIX}:{}:{node}:{}", self.pool, self.name)
    }
}

/// A storage name: `[a-z0-9-]`, 1..=63 chars, starting and ending with a
/// letter or digit. Safe as a file name, LV name, GPT partition label.
pub fn check_storage_name(name: &str) -> Result<(), &'static str> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME {
        return Err("must be 1 to 63 characters");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Err("may hold only a-z, 0-9 and -");
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// A Kubernetes node name: a DNS subdomain (lowercase, digits, '-', '.').
pub fn check_node_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
        && !name.contains("..");
    ok.then_some(())
        .ok_or("must be a DNS subdomain: a-z, 0-9, '-' and '.'")
}

/// The on-storage name for a CSI request name: the name itself when it is
/// already a valid storage name; otherwise lowercased, every other character
/// mapped to '-', cut to fit, and suffixed with a hash of the original so
/// distinct request names never meet. Deterministic: a retry finds its work.
pub fn storage_name(request_name: &str) -> String {
    if check_storage_name(request_name).is_ok() {
        return request_name.to_string();
    }
    let mut base: String = request_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    base.truncate(MAX_NAME - 9);
    let base = base.trim_matches('-');
    let hash = fnv1a64(request_name.as_bytes()) as u32;
    if base.is_empty() {
        format!("v-{hash:08x}")
    } else {
        format!("{base}-{hash:08x}")
    }
}

/// FNV-1a, 64 bit: stable across releases and platforms (unlike std's hasher).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_id_round_trips() {
        let id = VolumeId::new("fast", Some("node-1.example"), "pvc-5f1c");
        assert_eq!(id.to_string(), "v1:fast:node-1.example:pvc-5f1c");
        assert_eq!(VolumeId::parse(&id.to_string()).unwrap(), id);
        let shared = VolumeId::new("san", None, "lun-3");
        assert_eq!(VolumeId::parse(&shared.to_string()).unwrap(), shared);
    }

    #[test]
    fn snapshot_and_volume_ids_do_not_mix() {
        let s = SnapshotId::new("p", Some("n"), "snap-1");
        assert!(VolumeId::parse(&s.to_string()).is_err());
        assert_eq!(SnapshotId::parse(&s.to_string()).unwrap(), s);
    }

    #[test]
    fn ids_that_could_escape_the_pool_are_refused() {
        for bad in [
            "",
            "v1:p:n:../x",
            "v1:p:n:a/b",
            "v1:../p:n:x",
            "v1:p:n:x:y",
            "v1:p:n:X",
            "v2:p:n:x",
            "v1:p:n:",
            "v1:p:../n:x",
            "v1:p:n:.x",
            "some-volume",
        ] {
            assert!(VolumeId::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn valid_names_map_to_themselves() {
        assert_eq!(
            storage_name("pvc-0d7c5b8e-4d7e-4bfe-9d45-3c1a9d1e2f3a"),
            "pvc-0d7c5b8e-4d7e-4bfe-9d45-3c1a9d1e2f3a"
        );
    }

    #[test]
    fn other_names_are_sanitised_with_a_stable_hash() {
        let a = storage_name("My Volume/../etc");
        assert!(check_storage_name(&a).is_ok(), "{a}");
        assert!(a.starts_with("my-volume----etc-"), "{a}");
        assert_eq!(a, storage_name("My Volume/../etc"));
        assert_ne!(storage_name("PVC-1"), storage_name("pvc-1"));
        assert_ne!(storage_name("a_b"), storage_name("a.b"));
        let long = "x".repeat(300);
        let n = storage_name(&long);
        assert!(n.len() <= MAX_NAME && check_storage_name(&n).is_ok(), "{n}");
        assert_ne!(n, storage_name(&"x".repeat(301)));
        assert!(check_storage_name(&storage_name("!!!")).is_ok());
        assert!(check_storage_name(&storage_name("ünïcödé")).is_ok());
    }
}
