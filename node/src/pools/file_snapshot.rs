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

use super::{
    file::FilePool,
    fsutil::{remove_if_exists, rename_noreplace, sync_dir},
    Snapshot,
};
use crate::{
    error::{io, Error, Result},
    formats,
};
use pool_csi_proto::VolumeFormat;
use serde::{Deserialize, Serialize};
use std::{
    os::unix::fs::PermissionsExt,
    time::{SystemTime, UNIX_EPOCH},
};

#[derive(Serialize, Deserialize)]
struct Record {
    source_volume: String,
    format: VolumeFormat,
    size: u64,
    created_unix_nanos: i64,
}

impl FilePool {
    pub(super) fn read_snapshot(&self, name: &str) -> Result<Option<Snapshot>> {
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
        Ok(Some(Snapshot {
            name: name.into(),
            source_volume: r.source_volume,
            format: r.format,
            size: r.size,
            created_unix_nanos: r.created_unix_nanos,
        }))
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
        let size = formats::virtual_size(self.runner.as_ref(), format, &src).await?;
        let data = self.layout.snapshot(name, format)?;
        let tmp = self.layout.tmp('s', name, format)?;
        remove_if_exists(&tmp)?;
        remove_if_exists(&data)?; // data without a record: an interrupted earlier attempt
        let record = Record {
            source_volume: source.into(),
            format,
            size,
            created_unix_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
        };
        let made = async {
            self.copy_quiesced(source, &src, &tmp).await?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))
                .map_err(io("protect", &tmp))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &tmp))?;
            rename_noreplace(&tmp, &data)?;
            let meta = self.layout.snapshot_meta(name)?;
            let meta_tmp = self
                .layout
                .tmp('s', name, VolumeFormat::Raw)?
                .with_extension("json");
            std::fs::write(
                &meta_tmp,
                serde_json::to_vec(&record).expect("record serialises"),
            )
            .map_err(io("write", &meta_tmp))?;
            std::fs::File::open(&meta_tmp)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &meta_tmp))?;
            std::fs::rename(&meta_tmp, &meta).map_err(io("rename", &meta_tmp))?;
            sync_dir(&self.layout.snapshot_dir())
        }
        .await;
        if let Err(e) = made {
            let _ = remove_if_exists(&tmp);
            let _ = remove_if_exists(&data);
            return Err(e);
        }
        Ok(Snapshot {
            name: name.into(),
            source_volume: record.source_volume,
            format,
            size,
            created_unix_nanos: record.created_unix_nanos,
        })
    }

    pub(super) fn remove_snapshot(&self, name: &str) -> Result<()> {
        let meta = self.layout.snapshot_meta(name)?;
        let format = self.read_snapshot(name).ok().flatten().map(|s| s.format);
        remove_if_exists(&meta)?; // uncommit first: from here on the snapshot does not exist
        for f in format.into_iter().chain(VolumeFormat::ALL) {
            remove_if_exists(&self.layout.snapshot(name, f)?)?;
        }
        sync_dir(&self.layout.snapshot_dir())
    }

    pub(super) fn read_snapshots(&self) -> Result<Vec<Snapshot>> {
        let dir = self.layout.snapshot_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io("read", &dir))?.flatten() {
            let file = e.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(Some(s)) = self.read_snapshot(name) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
