//! Snapshot records of a file pool: one small JSON file per snapshot in
//! `.pool-csi/snapshots/<name>.json`. A snapshot exists exactly when its
//! record does: the record is written last, whole, by rename, so a crash
//! while a snapshot is made leaves no half snapshot, and deleting one
//! removes the record first.
//!
//! Most formats keep a snapshot as a read-only copy beside its record (a
//! reflink where the filesystem shares extents, else a sparse copy). Why a
//! copy and not a backing chain: a copy is independent of its volume (either
//! can be deleted, resized or attached without the other), works for every
//! format, and a restore is again a copy. ploop keeps its snapshots inside
//! the volume as deltas; the record then names the delta.

use crate::{
    dir_index::{DirIndex, Scan},
    error::{io, Error, Result},
    fsutil::{remove_if_exists, replace_file},
};
use pool_csi_common::{volume_id::check_storage_name, VolumeFormat};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

/// What a snapshot is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub source_volume: String,
    pub format: VolumeFormat,
    pub size: u64,
    pub created_unix_nanos: i64,
    /// Where the data is when it lives inside the source volume (a ploop
    /// delta's GUID); None for a copy. Stored as `delta` on disk.
    #[serde(default, rename = "delta", skip_serializing_if = "Option::is_none")]
    pub inside: Option<String>,
}

impl Record {
    /// A record of a snapshot of `source_volume` taken now.
    pub fn new(source_volume: &str, format: VolumeFormat, size: u64) -> Self {
        Self {
            source_volume: source_volume.into(),
            format,
            size,
            created_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            inside: None,
        }
    }
}

/// The snapshot a file in the records directory is the record of.
fn record_name(file: &std::ffi::OsStr) -> Option<&str> {
    file.to_str()?.strip_suffix(".json")
}

/// The records of one pool.
#[derive(Debug, Clone)]
pub struct SnapshotRecords {
    dir: PathBuf,
    tmp_dir: PathBuf,
    /// Every record, kept while the directory is unchanged (records are
    /// only ever replaced by rename, which moves its timestamps).
    index: Arc<DirIndex<(String, Record)>>,
}

impl SnapshotRecords {
    /// Records in `dir`, written through `tmp_dir` (same filesystem).
    pub fn new(dir: PathBuf, tmp_dir: PathBuf) -> Self {
        Self {
            dir,
            tmp_dir,
            index: Arc::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_storage_name(name)
            .map_err(|why| Error::Invalid(format!("invalid snapshot name {name:?}: {why}")))?;
        Ok(self.dir.join(format!("{name}.json")))
    }

    /// The record of snapshot `name`; None when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Record>> {
        let path = self.path(name)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::Corrupt {
                path,
                why: format!("not a snapshot record: {e}"),
            })
    }

    /// Commits a snapshot: its record appears whole, by rename, or not at all.
    pub fn commit(&self, name: &str, record: &Record) -> Result<()> {
        let path = self.path(name)?;
        let tmp = self.tmp_dir.join(format!("s.{name}.json"));
        let bytes = serde_json::to_vec(record).expect("record serialises");
        replace_file(&path, &tmp, &bytes)
    }

    /// Uncommits snapshot `name`: from here on it does not exist. The
    /// caller syncs [`Self::dir`] once it has removed the data too.
    pub fn remove(&self, name: &str) -> Result<()> {
        remove_if_exists(&self.path(name)?).map(|_| ())
    }

    /// Every record, sorted by snapshot name, for listings: unreadable
    /// ones are left out (and the scan is then not kept); read again only
    /// when the directory changed.
    pub fn all(&self) -> Result<Arc<Vec<(String, Record)>>> {
        let mut read = |file: &std::ffi::OsStr, _: std::io::Result<std::fs::FileType>| {
            let Some(name) = record_name(file) else {
                return Scan::Skip;
            };
            match self.read(name) {
                Ok(Some(r)) => Scan::Entry((name.to_string(), r)),
                Ok(None) => Scan::Skip, // removed since the directory was read
                Err(_) => Scan::Unsure,
            }
        };
        self.index
            .entries(&self.dir, &mut read, |(name, _)| name)
            .map_err(io("read", &self.dir))
    }

    /// The snapshots whose data lives inside `volume`: (name, reference).
    /// Read afresh, and an unreadable record is an error, not a snapshot
    /// less: what is inside a volume decides what may be merged away.
    pub fn inside(&self, volume: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
            let file = e.map_err(io("read", &self.dir))?.file_name();
            let Some(name) = record_name(&file) else {
                continue;
            };
            if let Some(r) = self.read(name)? {
                if let (true, Some(inside)) = (r.source_volume == volume, r.inside) {
                    out.push((name.to_string(), inside));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The references inside `volume` that snapshots still use.
    pub fn kept_inside(&self, volume: &str) -> Result<HashSet<String>> {
        Ok(self.inside(volume)?.into_iter().map(|(_, r)| r).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_commit_whole_and_keep_their_on_disk_names() {
        let t = tempfile::tempdir().unwrap();
        let (dir, tmp) = (t.path().join("snapshots"), t.path().join("tmp"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let recs = SnapshotRecords::new(dir.clone(), tmp);
        let mut r = Record::new("vol", VolumeFormat::Ploop, 4096);
        r.inside = Some("{abc}".into());
        recs.commit("s1", &r).unwrap();
        recs.commit("s2", &Record::new("vol", VolumeFormat::Raw, 1))
            .unwrap();
        let text = std::fs::read_to_string(dir.join("s1.json")).unwrap();
        assert!(text.contains("\"delta\":\"{abc}\""), "{text}");
        assert_eq!(recs.read("s1").unwrap(), Some(r));
        assert_eq!(recs.inside("vol").unwrap(), [("s1".into(), "{abc}".into())]);
        assert_eq!(recs.all().unwrap().len(), 2);
        let all = recs.all().unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["s1", "s2"]);
        recs.remove("s1").unwrap();
        assert_eq!(recs.read("s1").unwrap(), None);
        assert!(recs.read("../x").is_err());
    }
}
