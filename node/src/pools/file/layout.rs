//! Where things live inside a file pool. The only code that turns names into
//! paths, and it takes only checked storage names, so nothing it returns can
//! leave the pool:
//!
//! ```text
//! <target>/<name>.<format>                  a volume (raw, qcow2, vmdk …)
//! <target>/.pool-csi/tmp/{v,s}.<name>.<format>  a volume or snapshot being made
//!                                           (shared pools: tmp/<node>/…, each node its own)
//! <target>/.pool-csi/snapshots/<name>.<format>  a snapshot copy (its record: formats::records)
//! ```
//! The leading dot keeps driver state out of the volume namespace: storage
//! names never start with '.'.

use crate::error::{Error, Result};
use pool_csi_common::{volume_id::check_storage_name, VolumeFormat};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    /// Shared pools: the node whose work in progress goes to `tmp/<node>`,
    /// so that a node clearing its leftovers never touches another's.
    node: Option<String>,
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Self { root, node: None }
    }

    /// The layout of a pool every node of which works in `root` at once.
    pub fn shared(root: PathBuf, node: &str) -> Self {
        Self {
            root,
            node: Some(node.into()),
        }
    }

    pub fn meta_dir(&self) -> PathBuf {
        self.root.join(".pool-csi")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        let tmp = self.meta_dir().join("tmp");
        match &self.node {
            Some(node) => tmp.join(node),
            None => tmp,
        }
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.meta_dir().join("snapshots")
    }

    pub fn volume(&self, name: &str, format: VolumeFormat) -> Result<PathBuf> {
        Ok(self.root.join(file_name(name, format)?))
    }

    /// A temp path for a volume (`kind` 'v') or snapshot ('s') being made;
    /// the kind keeps a volume and a snapshot of the same name apart.
    pub fn tmp(&self, kind: char, name: &str, format: VolumeFormat) -> Result<PathBuf> {
        Ok(self
            .tmp_dir()
            .join(format!("{kind}.{}", file_name(name, format)?)))
    }

    pub fn snapshot(&self, name: &str, format: VolumeFormat) -> Result<PathBuf> {
        Ok(self.snapshot_dir().join(file_name(name, format)?))
    }
}

fn check(name: &str) -> Result<()> {
    check_storage_name(name)
        .map_err(|why| Error::Invalid(format!("invalid volume name {name:?}: {why}")))
}

fn file_name(name: &str, format: VolumeFormat) -> Result<String> {
    check(name)?;
    Ok(format!("{name}.{}", format.as_str()))
}

/// Splits `<name>.<format>` back; None for anything that is not a volume file.
pub fn parse_file_name(file: &Path) -> Option<(String, VolumeFormat)> {
    let s = file.to_str()?;
    let (name, ext) = s.rsplit_once('.')?;
    let format: VolumeFormat = ext.parse().ok()?;
    check_storage_name(name).ok()?;
    Some((name.to_string(), format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_paths_inside_the_pool() {
        let l = Layout::new("/pool".into());
        assert_eq!(
            l.volume("pvc-1", VolumeFormat::Qcow2).unwrap(),
            Path::new("/pool/pvc-1.qcow2")
        );
        assert_eq!(
            l.snapshot("s", VolumeFormat::Raw).unwrap(),
            Path::new("/pool/.pool-csi/snapshots/s.raw")
        );
        for bad in ["../x", "a/b", "", ".hidden", "A"] {
            assert!(l.volume(bad, VolumeFormat::Raw).is_err(), "{bad}");
        }
        let shared = Layout::shared("/share".into(), "node-a");
        assert_eq!(
            shared.tmp('v', "v", VolumeFormat::Raw).unwrap(),
            Path::new("/share/.pool-csi/tmp/node-a/v.v.raw")
        );
    }

    #[test]
    fn only_volume_files_parse() {
        assert_eq!(
            parse_file_name(Path::new("pvc-1.raw")),
            Some(("pvc-1".into(), VolumeFormat::Raw))
        );
        assert_eq!(parse_file_name(Path::new("a.b.qcow2")), None);
        assert_eq!(parse_file_name(Path::new("notes.txt")), None);
        assert_eq!(parse_file_name(Path::new(".pool-csi")), None);
        assert_eq!(parse_file_name(Path::new("disk.iso")), None);
    }
}
