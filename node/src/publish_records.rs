//! ControllerPublish records of node-local volumes: which of this node's
//! volumes the control plane has published here (a VolumeAttachment is
//! attached). ListVolumes and ControllerGetVolume report them as the
//! volume's published node (LIST_VOLUMES_PUBLISHED_NODES), so the
//! attacher's reconciler sees what Kubernetes believes. A shared pool's
//! volumes keep theirs in the pool's cluster-wide claims instead.
//!
//! One empty file per published volume, `<state>/published/<pool>/<name>`
//! (pool and volume names are checked storage names before they get here),
//! made and removed with the directory synced before the call answers: an
//! acknowledged publish or unpublish survives a crash. A record outlives
//! nothing: deleting the volume removes it.

use crate::error::{io, Result};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

#[derive(Debug, Clone)]
pub struct PublishRecords {
    dir: PathBuf,
}

impl PublishRecords {
    /// Records under `<state_dir>/published`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("published"),
        }
    }

    fn pool_dir(&self, pool: &str) -> PathBuf {
        self.dir.join(pool)
    }

    /// Records that volume `name` of `pool` is published on this node.
    /// Idempotent.
    pub fn record(&self, pool: &str, name: &str) -> Result<()> {
        let dir = self.pool_dir(pool);
        let path = dir.join(name);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        if !path.exists() {
            std::fs::File::create(&path).map_err(io("record the publish in", &path))?;
        }
        // Every time, parents included: a crash may have come between a
        // create and its sync (a publish is rare; three fsyncs are cheap).
        sync_dir(&dir)?;
        sync_dir(&self.dir)?;
        match self.dir.parent() {
            Some(state) => sync_dir(state),
            None => Ok(()),
        }
    }

    /// Forgets the record. Idempotent.
    pub fn forget(&self, pool: &str, name: &str) -> Result<()> {
        let dir = self.pool_dir(pool);
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove the publish record", &path)(e)),
        }
    }

    /// Whether volume `name` of `pool` is published here.
    pub fn is_published(&self, pool: &str, name: &str) -> bool {
        self.pool_dir(pool).join(name).exists()
    }

    /// The published volumes of `pool` (one directory read).
    pub fn of_pool(&self, pool: &str) -> Result<BTreeSet<String>> {
        let dir = self.pool_dir(pool);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(e) => return Err(io("read the publish records in", &dir)(e)),
        };
        let mut names = BTreeSet::new();
        for e in entries {
            let e = e.map_err(io("read the publish records in", &dir))?;
            if let Ok(n) = e.file_name().into_string() {
                names.insert(n);
            }
        }
        Ok(names)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_kept_per_pool_and_forgotten() {
        let state = tempfile::tempdir().unwrap();
        let r = PublishRecords::new(state.path());
        assert!(r.of_pool("p").unwrap().is_empty(), "no directory yet");
        r.record("p", "a").unwrap();
        r.record("p", "a").unwrap();
        r.record("p", "b").unwrap();
        r.record("q", "a").unwrap();
        assert_eq!(
            r.of_pool("p").unwrap().into_iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(r.is_published("q", "a"));
        assert!(!r.is_published("q", "b"));
        r.forget("p", "a").unwrap();
        r.forget("p", "a").unwrap();
        assert_eq!(
            r.of_pool("p").unwrap().into_iter().collect::<Vec<_>>(),
            ["b"]
        );
        // A fresh view of the same state directory (a restarted node) sees them.
        let again = PublishRecords::new(state.path());
        assert!(again.is_published("p", "b") && again.is_published("q", "a"));
        assert!(!again.is_published("p", "a"));
    }
}
