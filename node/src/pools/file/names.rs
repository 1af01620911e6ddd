//! The names in a file pool's directory that may be volumes
//! (`<name>.<format>`), kept while the directory is unchanged
//! ([`DirIndex`]).

use super::layout;
use crate::dir_index::{DirIndex, Scan};
use pool_csi_common::VolumeFormat;
use std::{fs::FileType, io, path::Path, sync::Arc};

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

impl NameIndex {
    /// The entries of `dir` whose names parse as `<name>.<format>`, sorted
    /// by name (nothing opened or probed).
    pub fn sorted(&self, dir: &Path) -> io::Result<Arc<Vec<Entry>>> {
        let read = |e: &std::fs::DirEntry| {
            let Some((name, format)) = layout::parse_file_name(Path::new(&e.file_name())) else {
                return Scan::Skip;
            };
            match e.file_type() {
                Ok(kind) => Scan::Entry(Entry { name, format, kind }),
                Err(_) => Scan::Unsure,
            }
        };
        self.0.entries(dir, read, |e| &e.name)
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
