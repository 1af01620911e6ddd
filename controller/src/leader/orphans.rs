//! Orphans: what storage holds that Kubernetes does not know of, and what
//! Kubernetes holds that storage lost. The leader's round compares every
//! answering agent's volumes and snapshots with the driver's
//! PersistentVolumes and the VolumeSnapshotContents:
//!
//! - a volume no PV names (by volume handle, whatever the PV's driver or
//!   kind — a bound static PV names its claimed LUN) is an orphaned volume;
//! - a snapshot no VolumeSnapshotContent names is an orphaned snapshot
//!   (judged only where the snapshot API exists);
//! - a PV whose volume its pool no longer lists is a lost volume — judged
//!   only when the node that holds it answered with the pool running (a
//!   silent node proves nothing), and never for the static PVs of free LUNs
//!   (a LUN becomes a volume when first staged).
//!
//! Each is first seen, then reported once it stayed so for the grace period
//! (a volume whose PV is being made, or being deleted with its PV, is never
//! reported). Reported ones get an Event and count in
//! `pool_csi_orphaned_volumes`, `pool_csi_orphaned_snapshots` and
//! `pool_csi_lost_volumes`; all of them are kept, with when they were first
//! seen, in the ConfigMap `pool-csi-orphans` (so a new leader keeps the
//! ages), where `poolctl orphans` reads them. Nothing here deletes
//! anything: `poolctl orphans --delete` is the operator's.

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use pool_csi_common::VolumeId;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

/// The ConfigMap (in the controller's namespace) that keeps them.
pub const CONFIGMAP: &str = "pool-csi-orphans";
/// Its data key: a JSON list of [`Orphan`]s in id order.
pub const KEY: &str = "orphans.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// On storage, named by no PersistentVolume.
    Volume,
    /// On storage, named by no VolumeSnapshotContent.
    Snapshot,
    /// A PersistentVolume whose volume is gone from storage.
    LostVolume,
}

impl Kind {
    /// The Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Kind::Volume => "OrphanedVolume",
            Kind::Snapshot => "OrphanedSnapshot",
            Kind::LostVolume => "VolumeLost",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
            Kind::LostVolume => "lost",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Orphan {
    pub kind: Kind,
    /// The volume or snapshot id (CSI handle).
    pub id: String,
    pub pool: String,
    /// The node that holds it; none for a shared pool's volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Bytes (0 for a lost volume: nothing is left).
    pub size: u64,
    /// The PersistentVolume of a lost volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    /// When it was first seen so (RFC 3339).
    pub since: String,
    /// Past the grace period: reported (Event, metric, `poolctl orphans`).
    pub reported: bool,
}

impl Orphan {
    /// The one-line message of its Event.
    pub fn message(&self) -> String {
        let at = self
            .node
            .as_deref()
            .map(|n| format!(" on node {n}"))
            .unwrap_or_default();
        match self.kind {
            Kind::Volume => format!(
                "volume {} ({} bytes) in pool {:?}{at} has no PersistentVolume since {}; if nothing needs it, delete it with `poolctl orphans --delete {}`",
                self.id, self.size, self.pool, self.since, self.id
            ),
            Kind::Snapshot => format!(
                "snapshot {} ({} bytes) in pool {:?}{at} has no VolumeSnapshotContent since {}; if nothing needs it, delete it with `poolctl orphans --delete {}`",
                self.id, self.size, self.pool, self.since, self.id
            ),
            Kind::LostVolume => format!(
                "PersistentVolume {} names volume {}, which pool {:?}{at} no longer holds (since {}); its data is gone: restore it from a snapshot or delete the PV",
                self.pv.as_deref().unwrap_or("?"),
                self.id,
                self.pool,
                self.since
            ),
        }
    }
}

/// Something storage holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub id: String,
    pub pool: String,
    pub node: Option<String>,
    pub size: u64,
}

/// What the answering agents hold.
#[derive(Debug, Default)]
pub struct Storage {
    pub volumes: Vec<Held>,
    pub snapshots: Vec<Held>,
    /// Listings that are whole: (pool, node) for node-local pools, (pool,
    /// None) for shared ones — the node (one of the pool's) answered with
    /// the pool running.
    pub complete: BTreeSet<(String, Option<String>)>,
}

/// What Kubernetes names.
#[derive(Debug, Default)]
pub struct Known {
    /// Volume handle → PersistentVolume, of every CSI PV whatever its
    /// driver (a handle any PV names is never an orphan; a bound static
    /// PV's LUN included).
    pub named: BTreeMap<String, String>,
    /// The driver's PVs that can be judged lost: static PVs of LUNs left
    /// out (a LUN becomes a volume only when first staged).
    pub pvs: BTreeMap<String, String>,
    /// Snapshot handles of the VolumeSnapshotContents; None where the
    /// snapshot API is not installed (snapshots are then not judged).
    pub contents: Option<BTreeSet<String>>,
}

/// This round's findings, from what storage holds, what Kubernetes names
/// and the previous findings (which keep when each was first seen).
pub fn judge(
    storage: &Storage,
    known: &Known,
    before: &[Orphan],
    now: Timestamp,
    grace: Duration,
) -> Vec<Orphan> {
    let mut found: BTreeMap<(String, Kind), Orphan> = BTreeMap::new();
    let mut add = |kind: Kind, h: &Held, pv: Option<&String>| {
        found.entry((h.id.clone(), kind)).or_insert_with(|| Orphan {
            kind,
            id: h.id.clone(),
            pool: h.pool.clone(),
            node: h.node.clone(),
            size: h.size,
            pv: pv.cloned(),
            since: String::new(),
            reported: false,
        });
    };
    for v in &storage.volumes {
        if !known.named.contains_key(&v.id) {
            add(Kind::Volume, v, None);
        }
    }
    if let Some(contents) = &known.contents {
        for s in &storage.snapshots {
            if !contents.contains(&s.id) {
                add(Kind::Snapshot, s, None);
            }
        }
    }
    let held: BTreeSet<&str> = storage.volumes.iter().map(|v| v.id.as_str()).collect();
    for (handle, pv) in &known.pvs {
        let Ok(id) = VolumeId::parse(handle) else {
            continue; // not a handle of ours
        };
        let whole = storage
            .complete
            .contains(&(id.pool.clone(), id.node.clone()));
        if whole && !held.contains(handle.as_str()) {
            let lost = Held {
                id: handle.clone(),
                pool: id.pool.clone(),
                node: id.node.clone(),
                size: 0,
            };
            add(Kind::LostVolume, &lost, Some(pv));
        }
    }
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    found
        .into_values()
        .map(|mut o| {
            let since = before
                .iter()
                .find(|b| b.kind == o.kind && b.id == o.id)
                .and_then(|b| b.since.parse::<Timestamp>().ok())
                .unwrap_or(now);
            o.since = since.to_string();
            o.reported = now.duration_since(since) >= grace;
            o
        })
        .collect()
}

/// Reads the ConfigMap's list; anything unreadable counts as none (the
/// next round writes a good one, and ages restart — later, never earlier).
pub fn parse(data: Option<&str>) -> Vec<Orphan> {
    data.and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_default()
}

/// The Prometheus gauges of the reported findings, per pool (every pool
/// with a finding; absent means none).
pub fn gauges(found: &[Orphan]) -> String {
    let mut counts: BTreeMap<(&str, Kind), u64> = BTreeMap::new();
    for o in found.iter().filter(|o| o.reported) {
        *counts.entry((o.pool.as_str(), o.kind)).or_default() += 1;
    }
    let mut out = String::new();
    for (name, kind, help) in [
        (
            "pool_csi_orphaned_volumes",
            Kind::Volume,
            "Volumes on storage that no PersistentVolume names, past the grace period.",
        ),
        (
            "pool_csi_orphaned_snapshots",
            Kind::Snapshot,
            "Snapshots on storage that no VolumeSnapshotContent names, past the grace period.",
        ),
        (
            "pool_csi_lost_volumes",
            Kind::LostVolume,
            "PersistentVolumes whose volume is gone from storage, past the grace period.",
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for ((pool, k), n) in &counts {
            if *k == kind {
                out.push_str(&format!("{name}{{pool=\"{pool}\"}} {n}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: &str, size: u64) -> Held {
        let v = VolumeId::parse(id).unwrap();
        Held {
            id: id.into(),
            pool: v.pool,
            node: v.node,
            size,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn volumes_snapshots_and_lost_pvs_are_found_and_aged() {
        let a = VolumeId::new("p", Some("n1"), "a").to_string();
        let b = VolumeId::new("p", Some("n1"), "b").to_string();
        let gone = VolumeId::new("p", Some("n1"), "gone").to_string();
        let far = VolumeId::new("p", Some("n2"), "far").to_string();
        let snap = VolumeId::new("p", Some("n1"), "s").to_string();
        let storage = Storage {
            volumes: vec![held(&a, 10), held(&b, 20)],
            snapshots: vec![held(&snap, 5)],
            complete: BTreeSet::from([("p".into(), Some("n1".into()))]),
        };
        let pvs = BTreeMap::from([
            (a.clone(), "pv-a".into()),
            (gone.clone(), "pv-gone".into()),
            // Its node did not answer: nothing is judged there.
            (far.clone(), "pv-far".into()),
            ("not-ours".into(), "pv-x".into()),
        ]);
        let known = Known {
            named: pvs.clone(),
            pvs,
            contents: Some(BTreeSet::new()),
        };
        let t0 = at("2026-11-29T10:00:00Z");
        let first = judge(&storage, &known, &[], t0, GRACE);
        let kinds: Vec<(Kind, &str, bool)> = first
            .iter()
            .map(|o| (o.kind, o.id.as_str(), o.reported))
            .collect();
        assert_eq!(
            kinds,
            [
                (Kind::Volume, b.as_str(), false),
                (Kind::LostVolume, gone.as_str(), false),
                (Kind::Snapshot, snap.as_str(), false),
            ]
        );
        assert_eq!(first[1].pv.as_deref(), Some("pv-gone"));
        assert_eq!(first[0].size, 20);

        // Still so after the grace period: reported, first-seen kept.
        let later = judge(&storage, &known, &first, at("2026-11-29T10:10:00Z"), GRACE);
        assert!(later.iter().all(|o| o.reported), "{later:?}");
        assert!(later.iter().all(|o| o.since == t0.to_string()));
        assert!(later[0].message().contains("poolctl orphans --delete"));
        assert!(later[1].message().contains("PersistentVolume pv-gone"));

        // A PV made meanwhile (a static one, of a claimed LUN, too): no
        // longer an orphan.
        let mut known2 = Known {
            named: known.named.clone(),
            pvs: known.pvs.clone(),
            contents: None,
        };
        known2.named.insert(b.clone(), "static-lun-pv".into());
        let now = judge(&storage, &known2, &later, at("2026-11-29T10:11:00Z"), GRACE);
        assert_eq!(now.len(), 1, "snapshots unjudged without the API: {now:?}");
        assert_eq!(now[0].kind, Kind::LostVolume);

        // One that comes back later starts its grace again.
        let back = judge(&storage, &known, &now, at("2026-11-29T10:12:00Z"), GRACE);
        let b_again = back.iter().find(|o| o.id == b).unwrap();
        assert!(
            !b_again.reported && b_again.since == "2026-11-29T10:12:00Z",
            "{b_again:?}"
        );
    }

    #[test]
    fn shared_volumes_are_judged_by_their_pool_and_gauges_count_reported_ones() {
        let s = VolumeId::new("san", None, "lun").to_string();
        let storage = Storage {
            volumes: vec![held(&s, 1), held(&s, 1)],
            complete: BTreeSet::from([("san".into(), None)]),
            ..Default::default()
        };
        let found = judge(
            &storage,
            &Known::default(),
            &[],
            at("2026-11-29T10:00:00Z"),
            Duration::ZERO,
        );
        assert_eq!(found.len(), 1, "listed by two nodes, one finding");
        assert!(found[0].reported && found[0].node.is_none());
        let g = gauges(&found);
        assert!(
            g.contains("pool_csi_orphaned_volumes{pool=\"san\"} 1\n"),
            "{g}"
        );
        assert!(g.contains("# TYPE pool_csi_lost_volumes gauge\n"), "{g}");
        assert!(!g.contains("pool_csi_lost_volumes{"), "{g}");
        // The ConfigMap's form reads back.
        let text = serde_json::to_string(&found).unwrap();
        assert_eq!(parse(Some(&text)), found);
        assert!(parse(Some("garbage")).is_empty());
    }
}
