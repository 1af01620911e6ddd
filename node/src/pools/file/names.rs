//! The names in a file pool's directory that may be volumes
//! (`<name>.<format>`), kept while the directory is unchanged
//! ([`DirIndex`]).

use super::layout;
use crate::dir_index::{DirIndex, Scan};
use pool_csi_common::VolumeFormat;
use std::{ffi::OsStr, fs::FileType, io, path::Path, sync::Arc};

/// One directory entry that may be a volume: `<name>.<format>`.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub format: VolumeFormat,
    pub kind: FileType,
}

/// The pool directory's entries that may be volumes.
#[derive(Debug, Default)]
pub struct NameIndex(DirIndex<Entry>);

/// What a directory entry is, if it may be a volume.
fn read(file: &OsStr, kind: io::Result<FileType>) -> Scan<Entry> {
    let Some((name, format)) = layout::parse_file_name(Path::new(file)) else {
        return Scan::Skip;
    };
    match kind {
        Ok(kind) => Scan::Entry(Entry { name, format, kind }),
        Err(_) => Scan::Unsure,
    }
}

impl NameIndex {
    /// Kept current by an inotify watch (a pool only this node changes):
    /// [`Self::lookup`] then answers without probing the directory.
    pub fn watched() -> Self {
        Self(DirIndex::watched())
    }

    /// The entries of `dir` whose names parse as `<name>.<format>`, sorted
    /// by name (nothing opened or probed).
    pub fn sorted(&self, dir: &Path) -> io::Result<Arc<Vec<Entry>>> {
        self.0.entries(dir, &mut read, |e| &e.name)
    }

    /// The entries named `name` (in any format) when the index is watched;
    /// `None` when it is not, and the directory must be asked.
    pub fn lookup(&self, dir: &Path, name: &str) -> io::Result<Option<Vec<Entry>>> {
        self.0.lookup(dir, &mut read, |e| &e.name, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_volume_files_sorted() {
        let t = tempfile::tempdir().unwrap();
        for n in ["b.raw", "a.qcow2", "not a volume", "c.txt"] {
            std::fs::write(t.path().join(n), b"").unwrap();
        }
        let i = NameIndex::default();
        let got = i.sorted(t.path()).unwrap();
        let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(got[0].format, VolumeFormat::Qcow2);
    }
}
