//! Snapshots in file pools: a read-only copy of the volume file (a reflink
//! where the filesystem shares extents, else a sparse copy) plus a small JSON
//! record. The record is written last, by rename: a snapshot exists exactly
//! when its record does, so a crash mid-copy leaves no half snapshot.
//!
//! Why a copy and not a qcow2 backing chain: a copy is independent of its
//! volume (either can be deleted, resized or attached without the other),
//! works for every format, and a restore is again a copy. Snapshots of a
//! volume in use are crash-consistent only to the extent the copy is atomic:
//! with reflink it is; without, quiesce the application first.
//!
//! ploop volumes are the exception: their snapshots are deltas inside the
//! volume directory (`ploop_volume.rs`); the record then names the delta.

use super::{file::FilePool, Snapshot};
use crate::fsutil::{remove_if_exists, rename_noreplace, sync_dir};
use crate::{
    error::{io, Error, Result},
    formats,
};
use pool_csi_common::VolumeFormat;
use serde::{Deserialize, Serialize};
use std::{
    os::unix::fs::PermissionsExt,
    time::{SystemTime, UNIX_EPOCH},
};

#[derive(Serialize, Deserialize)]
pub(super) struct Record {
    pub source_volume: String,
    pub format: VolumeFormat,
    pub size: u64,
    pub created_unix_nanos: i64,
    /// ploop: the GUID of the volume's delta that holds this snapshot
    /// (its data lives in the volume's directory, not in a copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<String>,
}

impl Record {
    pub(super) fn new(source_volume: &str, format: VolumeFormat, size: u64) -> Self {
        Self {
            source_volume: source_volume.into(),
            format,
            size,
            created_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            delta: None,
        }
    }

    fn snapshot(&self, name: &str) -> Snapshot {
        Snapshot {
            name: name.into(),
            source_volume: self.source_volume.clone(),
            format: self.format,
            size: self.size,
            created_unix_nanos: self.created_unix_nanos,
        }
    }
}

impl FilePool {
    pub(super) fn read_snapshot(&self, name: &str) -> Result<Option<Snapshot>> {
        Ok(self.read_record(name)?.map(|r| r.snapshot(name)))
    }

    pub(super) fn read_record(&self, name: &str) -> Result<Option<Record>> {
        let path = self.layout.snapshot_meta(name)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let r: Record = serde_json::from_slice(&text).map_err(|e| {
            Error::Precondition(format!(
                "snapshot record {} is corrupt: {e}",
                path.display()
            ))
        })?;
        Ok(Some(r))
    }

    /// Commits a snapshot: its record appears whole, by rename, or not at all.
    pub(super) fn write_record(&self, name: &str, record: &Record) -> Result<()> {
        let meta = self.layout.snapshot_meta(name)?;
        let meta_tmp = self
            .layout
            .tmp('s', name, VolumeFormat::Raw)?
            .with_extension("json");
        let bytes = serde_json::to_vec(record).expect("record serialises");
        crate::fsutil::replace_file(&meta, &meta_tmp, &bytes)
    }

    pub(super) async fn snapshot_volume(&self, source: &str, name: &str) -> Result<Snapshot> {
        if let Some(s) = self.read_snapshot(name)? {
            if s.source_volume == source {
                return Ok(s);
            }
            return Err(Error::NameTaken {
                what: "snapshot",
                pool: self.name.clone(),
                name: name.into(),
                why: format!("source volume {}", s.source_volume),
            });
        }
        let (src, format) = self.find(source)?.ok_or_else(|| Error::VolumeNotFound {
            pool: self.name.clone(),
            name: source.into(),
        })?;
        if format == VolumeFormat::Ploop {
            return self.snapshot_ploop(source, &src, name).await;
        }
        let size = formats::virtual_size(self.runner.as_ref(), format, &src).await?;
        let data = self.layout.snapshot(name, format)?;
        let tmp = self.layout.tmp('s', name, format)?;
        remove_if_exists(&tmp)?;
        remove_if_exists(&data)?; // data without a record: an interrupted earlier attempt
        let record = Record::new(source, format, size);
        let made = async {
            self.copy_quiesced(source, &src, &tmp).await?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))
                .map_err(io("protect", &tmp))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &tmp))?;
            rename_noreplace(&tmp, &data)?;
            self.write_record(name, &record)
        }
        .await;
        if let Err(e) = made {
            let _ = remove_if_exists(&tmp);
            let _ = remove_if_exists(&data);
            return Err(e);
        }
        Ok(record.snapshot(name))
    }

    pub(super) async fn remove_snapshot(&self, name: &str) -> Result<()> {
        let meta = self.layout.snapshot_meta(name)?;
        let record = self.read_record(name).ok().flatten();
        remove_if_exists(&meta)?; // uncommit first: from here on the snapshot does not exist
        for f in VolumeFormat::ALL
            .into_iter()
            .filter(|f| *f != VolumeFormat::Ploop)
        {
            remove_if_exists(&self.layout.snapshot(name, f)?)?;
        }
        sync_dir(&self.layout.snapshot_dir())?;
        if let Some(r) = record.filter(|r| r.delta.is_some()) {
            // Its delta is now unreferenced: merge it away unless the volume is in use.
            self.compact_ploop_if_idle(&r.source_volume).await;
        }
        Ok(())
    }

    /// Every snapshot record (unreadable ones skipped).
    pub(super) fn read_records(&self) -> Result<Vec<(String, Record)>> {
        let dir = self.layout.snapshot_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io("read", &dir))?.flatten() {
            let file = e.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(Some(r)) = self.read_record(name) {
                out.push((name.to_string(), r));
            }
        }
        Ok(out)
    }

    pub(super) fn read_snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut out: Vec<Snapshot> = self
            .read_records()?
            .iter()
            .map(|(name, r)| r.snapshot(name))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
