//! What each partition of a disk pool is: a volume, a snapshot, or a copy
//! still being made. GPT keeps it in the partition name (`<name>` for a
//! volume, `s.<name>` for a snapshot, `t.<final name>` while content is
//! copied in — storage names never hold a '.', so neither prefix can be a
//! volume's name); the node also keeps `<state-dir>/disks/<pool>.json`
//! (partition start sector → record), written before a partition is made,
//! which is all a dos table has, and which holds what a GPT name cannot:
//! a snapshot's source and time, wipeOnDelete, names past 36 characters.

use super::layout::gpt_name;
use crate::tools::sfdisk::Partition;
use pool_csi_common::volume_id::check_storage_name;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// GPT name prefix of a snapshot partition.
pub const SNAPSHOT_PREFIX: &str = "s.";
/// GPT name prefix of a partition whose content is still being copied.
pub const PENDING_PREFIX: &str = "t.";

/// What the node remembers about one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The volume's (or snapshot's) storage name, in full.
    pub name: String,
    #[serde(default)]
    pub wipe_on_delete: bool,
    /// Set when the partition is a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotOf>,
    /// Content is still being copied in: not a volume (or snapshot) yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// A snapshot's origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotOf {
    pub source: String,
    pub created_unix_nanos: i64,
}

/// Partition start sector → record.
pub type Records = BTreeMap<u64, Record>;

/// What a partition is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Snapshot,
    /// Being made; its final name and whether it will be a snapshot.
    Pending {
        snapshot: bool,
    },
}

/// One partition of the pool, classified.
#[derive(Debug, Clone)]
pub struct Entry<'t> {
    pub kind: Kind,
    /// Its full storage name (for a pending one: the name it will get).
    pub name: String,
    pub part: &'t Partition,
    pub record: Option<&'t Record>,
}

/// The GPT name a partition gets: kind prefix plus storage name, shortened
/// with a hash past GPT's 36 characters.
pub fn gpt_label(kind: &Kind, name: &str) -> String {
    gpt_name(&match kind {
        Kind::Volume => name.to_string(),
        Kind::Snapshot => format!("{SNAPSHOT_PREFIX}{name}"),
        Kind::Pending { snapshot: false } => format!("{PENDING_PREFIX}{name}"),
        Kind::Pending { snapshot: true } => format!("{PENDING_PREFIX}{SNAPSHOT_PREFIX}{name}"),
    })
}

/// Every partition (extended containers excluded) as what it is. The
/// record wins where there is one; else the GPT name tells; else it is a
/// volume pool-csi did not make, listed as `part<N>`.
pub fn classify<'t>(parts: &'t [Partition], records: &'t Records) -> Vec<Entry<'t>> {
    parts
        .iter()
        .filter(|p| !super::layout::is_extended(p))
        .map(|p| {
            let record = records.get(&p.start);
            let (kind, name) = match (record, p.name.as_deref()) {
                (Some(r), _) => (kind_of(r), r.name.clone()),
                (None, Some(n)) => from_gpt_name(n).unwrap_or_else(|| (Kind::Volume, part_name(p))),
                (None, None) => (Kind::Volume, part_name(p)),
            };
            Entry {
                kind,
                name,
                part: p,
                record,
            }
        })
        .collect()
}

fn kind_of(r: &Record) -> Kind {
    match (r.pending, r.snapshot.is_some()) {
        (true, snapshot) => Kind::Pending { snapshot },
        (false, true) => Kind::Snapshot,
        (false, false) => Kind::Volume,
    }
}

/// A GPT name read back: None when it is not one pool-csi writes.
fn from_gpt_name(n: &str) -> Option<(Kind, String)> {
    if let Some(rest) = n.strip_prefix(PENDING_PREFIX) {
        let (snapshot, name) = match rest.strip_prefix(SNAPSHOT_PREFIX) {
            Some(s) => (true, s),
            None => (false, rest),
        };
        return Some((Kind::Pending { snapshot }, name.to_string()));
    }
    if let Some(name) = n.strip_prefix(SNAPSHOT_PREFIX) {
        return Some((Kind::Snapshot, name.to_string()));
    }
    check_storage_name(n)
        .is_ok()
        .then(|| (Kind::Volume, n.to_string()))
}

fn part_name(p: &Partition) -> String {
    format!("part{}", p.number().unwrap_or(0))
}

/// The entry of kind `kind` named `name` (its full name, or the shortened
/// GPT form a volume id carries).
pub fn find<'e, 't>(entries: &'e [Entry<'t>], kind: &Kind, name: &str) -> Option<&'e Entry<'t>> {
    let label = gpt_label(kind, name);
    entries.iter().find(|e| {
        e.kind == *kind
            && (e.name == name
                || e.part.name.as_deref() == Some(label.as_str())
                || (*kind == Kind::Volume && e.part.name.as_deref() == Some(name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(n: u32, start: u64, name: Option<&str>) -> Partition {
        Partition {
            node: format!("/dev/loop0p{n}"),
            start,
            size: 2048,
            type_code: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into(),
            name: name.map(Into::into),
            uuid: None,
        }
    }

    #[test]
    fn partitions_are_volumes_snapshots_or_pending_copies() {
        let long = "a-snapshot-with-a-name-much-longer-than-gpt-allows";
        let parts = vec![
            part(1, 2048, Some("vol-a")),
            part(2, 4096, Some("s.snap-a")),
            part(3, 6144, Some("t.vol-b")),
            part(4, 8192, Some(&gpt_label(&Kind::Snapshot, long))),
            part(5, 10240, None),
            part(6, 12288, Some("Windows data")),
        ];
        let mut records = Records::new();
        records.insert(
            8192,
            Record {
                name: long.into(),
                snapshot: Some(SnapshotOf {
                    source: "vol-a".into(),
                    created_unix_nanos: 1,
                }),
                ..Default::default()
            },
        );
        let e = classify(&parts, &records);
        let kinds: Vec<(Kind, &str)> = e
            .iter()
            .map(|e| (e.kind.clone(), e.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (Kind::Volume, "vol-a"),
                (Kind::Snapshot, "snap-a"),
                (Kind::Pending { snapshot: false }, "vol-b"),
                (Kind::Snapshot, long),
                (Kind::Volume, "part5"),
                (Kind::Volume, "part6"),
            ]
        );
        assert_eq!(find(&e, &Kind::Snapshot, long).unwrap().part.start, 8192);
        assert_eq!(
            find(&e, &Kind::Snapshot, "snap-a").unwrap().part.start,
            4096
        );
        assert!(
            find(&e, &Kind::Volume, "snap-a").is_none(),
            "kinds never mix"
        );
        assert!(gpt_label(&Kind::Pending { snapshot: true }, long).len() <= 36);
    }
}
