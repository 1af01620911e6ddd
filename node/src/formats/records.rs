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
    /// only ever replaced by rename, which moves its timestamps); where
    /// only this node writes them, kept current by an inotify watch, so a
    /// change costs its record and not a read of every record.
    index: Arc<DirIndex<(String, Record)>>,
    /// Only this node writes the records (the pool is not shared). With
    /// the directory on a local filesystem, the watch (or, where the
    /// kernel refuses one, this machine's clock on the directory's
    /// timestamps) sees every change, so the kept records can decide what
    /// is inside a volume.
    only_here: bool,
}

impl SnapshotRecords {
    /// Records in `dir`, written through `tmp_dir` (same filesystem);
    /// `only_here` when no other node writes them.
    pub fn new(dir: PathBuf, tmp_dir: PathBuf, only_here: bool) -> Self {
        Self {
            dir,
            tmp_dir,
            index: Arc::new(match only_here {
                true => DirIndex::watched(),
                false => DirIndex::default(),
            }),
            only_here,
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
        self.index
            .entries(&self.dir, &mut |f, _| self.scan(f), |(name, _)| name)
            .map_err(io("read", &self.dir))
    }

    /// What a scan of the directory makes of file `file`.
    fn scan(&self, file: &std::ffi::OsStr) -> Scan<(String, Record)> {
        let Some(name) = record_name(file) else {
            return Scan::Skip;
        };
        match self.read(name) {
            Ok(Some(r)) => Scan::Entry((name.to_string(), r)),
            Ok(None) => Scan::Skip, // removed since the directory was read
            Err(_) => Scan::Unsure,
        }
    }

    /// The snapshots whose data lives inside `volume`: (name, reference).
    /// An unreadable record is an error, not a snapshot less: what is
    /// inside a volume decides what may be merged away. The kept records
    /// serve when only this node writes them, on a local filesystem, and
    /// every one was read; otherwise (a shared pool, or a directory on a
    /// network filesystem, whose timestamps another clock makes and a
    /// cache may hold back) each is read again.
    pub fn inside(&self, volume: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut take = |name: &str, r: &Record| {
            if let (true, Some(inside)) = (r.source_volume == volume, &r.inside) {
                out.push((name.to_string(), inside.clone()));
            }
        };
        use crate::fsutil::{filesystem_of, FsKind};
        let local = || {
            matches!(
                filesystem_of(&self.dir),
                Some(FsKind::Memory | FsKind::LocalDisk)
            )
        };
        let whole = match self.only_here && local() {
            true => self
                .index
                .whole_entries(&self.dir, &mut |f, _| self.scan(f), |(name, _)| name)
                .map_err(io("read", &self.dir))?,
            false => None,
        };
        match whole {
            Some(all) => all.iter().for_each(|(name, r)| take(name, r)),
            None => {
                for e in std::fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
                    let file = e.map_err(io("read", &self.dir))?.file_name();
                    let Some(name) = record_name(&file) else {
                        continue;
                    };
                    if let Some(r) = self.read(name)? {
                        take(name, &r);
                    }
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
        let recs = SnapshotRecords::new(dir.clone(), tmp, true);
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

    /// `dir` with records s1 (inside vol), s2 (inside other) and s3 (a
    /// copy of vol), settled so that a scan of it is kept also where
    /// timestamps tell the changes (`only_here` false).
    fn three_records(t: &tempfile::TempDir, only_here: bool) -> SnapshotRecords {
        let (dir, tmp) = (t.path().join("snapshots"), t.path().join("tmp"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&tmp).unwrap();
        let recs = SnapshotRecords::new(dir, tmp, only_here);
        for (name, source, inside) in [
            ("s1", "vol", Some("{a}")),
            ("s2", "other", Some("{b}")),
            ("s3", "vol", None),
        ] {
            let mut r = Record::new(source, VolumeFormat::Ploop, 4096);
            r.inside = inside.map(Into::into);
            recs.commit(name, &r).unwrap();
        }
        std::thread::sleep(crate::dir_index::SETTLE);
        recs
    }

    /// A volume's snapshots come from the kept records while the
    /// directory is unchanged: s1 rewritten in place (which records never
    /// are) is not read again. A shared pool's records are.
    #[test]
    fn what_is_inside_a_volume_is_read_once_while_the_records_are_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let recs = three_records(&t, true);
        let inside = [("s1".to_string(), "{a}".to_string())];
        assert_eq!(recs.inside("vol").unwrap(), inside);
        std::fs::write(recs.dir().join("s1.json"), b"not json").unwrap();
        assert_eq!(recs.inside("vol").unwrap(), inside, "kept, not read again");
        let shared = SnapshotRecords::new(recs.dir().into(), t.path().join("tmp"), false);
        let err = shared.inside("vol").unwrap_err().to_string();
        assert!(err.contains("s1.json"), "{err}");
        // Changes (records are written by rename) are seen at once, also
        // one made right after the records were kept.
        let mut r = Record::new("vol", VolumeFormat::Ploop, 4096);
        r.inside = Some("{a}".into());
        recs.commit("s1", &r).unwrap();
        std::thread::sleep(crate::dir_index::SETTLE);
        assert_eq!(recs.inside("vol").unwrap(), inside);
        r.inside = Some("{d}".into());
        recs.commit("s4", &r).unwrap();
        let s4 = ("s4".to_string(), "{d}".to_string());
        assert_eq!(recs.inside("vol").unwrap(), [inside[0].clone(), s4.clone()]);
        recs.remove("s1").unwrap();
        assert_eq!(recs.inside("vol").unwrap(), [s4]);
    }

    /// Where only this node writes the records, a change costs its own
    /// record: after s4 is committed, s2 (rewritten in place meanwhile,
    /// which records never are) is not read again. Where others write
    /// them, the change reads every record again (and leaves the
    /// unreadable s2 out of the listing).
    #[test]
    fn a_change_reads_only_its_record_where_only_this_node_writes() {
        for only_here in [true, false] {
            let t = tempfile::tempdir().unwrap();
            let recs = three_records(&t, only_here);
            assert_eq!(recs.all().unwrap().len(), 3);
            std::fs::write(recs.dir().join("s2.json"), b"not json").unwrap();
            recs.commit("s4", &Record::new("vol", VolumeFormat::Raw, 1))
                .unwrap();
            let all = recs.all().unwrap();
            let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
            match only_here {
                true => assert_eq!(names, ["s1", "s2", "s3", "s4"]),
                false => assert_eq!(names, ["s1", "s3", "s4"]),
            }
        }
    }

    /// A record that cannot be read fails the question, also when the
    /// records are kept: it might hold a volume's snapshot.
    #[test]
    fn an_unreadable_record_fails_what_is_inside() {
        let t = tempfile::tempdir().unwrap();
        let recs = three_records(&t, true);
        assert_eq!(recs.inside("vol").unwrap().len(), 1, "kept");
        std::fs::write(recs.dir().join("bad.json"), b"{").unwrap();
        std::thread::sleep(crate::dir_index::SETTLE);
        for _ in 0..2 {
            let err = recs.inside("vol").unwrap_err().to_string();
            assert!(err.contains("bad.json"), "{err}");
            assert!(recs.kept_inside("other").is_err());
        }
        assert_eq!(recs.all().unwrap().len(), 3, "listings leave it out");
    }
}
