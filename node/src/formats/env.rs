//! What image formats get from the node and their pool: the command runner,
//! sysfs, the pool's qemu-storage-daemon exports and snapshot records, and
//! the one answer to "who has this image open here, and how is it held
//! still for a copy".

use super::records::SnapshotRecords;
use crate::{
    copy,
    dir_sync::DirSync,
    error::{io, Error, Result},
    exec::CommandRunner,
    mount::quiesce::{Frozen, Quiescer},
    tools::{losetup, ploop, qemu_nbd::NbdState, qsd::Export},
};
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

pub struct ImageEnv {
    runner: Arc<dyn CommandRunner>,
    sysfs: PathBuf,
    quiescer: Quiescer,
    /// `<state>/exports/<pool>`: one qemu-storage-daemon export per volume.
    exports: PathBuf,
    /// The pool's scratch directory (same filesystem, cleared at start).
    scratch: PathBuf,
    pub records: SnapshotRecords,
    /// The pool directory's syncs, grouped.
    pub root_sync: DirSync,
}

impl ImageEnv {
    pub fn new(
        runner: Arc<dyn CommandRunner>,
        sysfs: PathBuf,
        quiescer: Quiescer,
        exports: PathBuf,
        scratch: PathBuf,
        records: SnapshotRecords,
        root: PathBuf,
    ) -> Self {
        Self {
            runner,
            sysfs,
            quiescer,
            exports,
            scratch,
            records,
            root_sync: DirSync::new(root),
        }
    }

    /// Syncs `dir` after a change in it: grouped with other callers when
    /// it is the pool directory.
    pub async fn sync_dir(&self, dir: &Path) -> Result<()> {
        if dir == self.root_sync.dir() {
            self.root_sync.sync().await
        } else {
            crate::fsutil::sync_dir(dir)
        }
    }

    pub fn runner(&self) -> &dyn CommandRunner {
        self.runner.as_ref()
    }

    pub fn sysfs(&self) -> &Path {
        &self.sysfs
    }

    /// The node's mount table.
    pub fn mount_table(&self) -> &Path {
        self.quiescer.mount_table()
    }

    pub fn exports_dir(&self) -> &Path {
        &self.exports
    }

    /// Where work in progress goes: on the pool's filesystem, out of the
    /// volume namespace, and cleared when the pool starts.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// The qemu-storage-daemon export of volume `name`.
    pub fn export_of(&self, name: &str) -> Export {
        Export::at(self.exports.join(name))
    }

    /// What has volume `name`'s image (at `path`) open on this node, if
    /// anything: a loop device, the ploop module, qemu-nbd or a
    /// qemu-storage-daemon.
    pub fn user_of(&self, name: &str, path: &Path) -> Option<String> {
        // Every such user holds the image file open: when a write lease is
        // granted, none exists, and the sysfs scan below is skipped.
        if crate::lease::open_nowhere_else(path) {
            return None;
        }
        if let Some(l) = losetup::find_by_backing_file(&self.sysfs, path).first() {
            return Some(format!("loop device {}", l.display()));
        }
        if let Some(dev) = ploop::device_of(&self.sysfs, path) {
            return Some(format!("ploop device {}", dev.display()));
        }
        let export = self.export_of(name);
        if let Some(dev) = NbdState::beside(&export.file).attached(&self.sysfs) {
            return Some(format!("qemu-nbd on {}", dev.display()));
        }
        export
            .running_pid()
            .map(|pid| format!("qemu-storage-daemon pid {pid}"))
    }

    /// Copies `src` (volume `name`'s image) to the new file `dst` while it
    /// is consistent: when the volume is attached on this node, its block
    /// device is flushed and a filesystem mounted from it is frozen for the
    /// copy, then thawed whatever the copy's outcome.
    pub async fn copy_quiesced(&self, name: &str, src: &Path, dst: &Path) -> Result<()> {
        let frozen = self.freeze_users(name, src).await?;
        let copied = self.copy_plain(src, dst).await;
        frozen.thaw(&self.quiescer).await;
        copied
    }

    /// Copies `src` to the new file `dst` (reflink or sparse copy).
    pub async fn copy_plain(&self, src: &Path, dst: &Path) -> Result<()> {
        let (from, to) = (src.to_path_buf(), dst.to_path_buf());
        blocking(src, move || {
            copy::copy_file(&from, &to)
                .map(|_| ())
                .map_err(io("copy", &from))
        })
        .await
    }

    /// Flushes the block devices attached for volume `name` on this node
    /// and freezes the filesystems mounted from them; thaw them after.
    pub async fn freeze_users(&self, name: &str, src: &Path) -> Result<Frozen> {
        let export = self.export_of(name);
        if NbdState::beside(&export.file)
            .attached(&self.sysfs)
            .is_some()
        {
            return Err(Error::AttachedThrough {
                what: format!("volume {name}"),
                by: "qemu-nbd".into(),
                action: "be quiesced for a copy",
                instead: "do it while unstaged",
            });
        }
        let devices: Vec<PathBuf> = [src, export.file.as_path()]
            .iter()
            .flat_map(|f| losetup::find_by_backing_file(&self.sysfs, f))
            .chain(ploop::device_of(&self.sysfs, src))
            .collect();
        self.quiescer.freeze(&devices).await
    }

    /// Thaws what [`Self::freeze_users`] froze.
    pub async fn thaw(&self, frozen: Frozen) {
        frozen.thaw(&self.quiescer).await
    }
}

/// Runs image I/O on the blocking pool; `about` names it in errors.
pub async fn blocking<T: Send + 'static>(
    about: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io("work on", about)(std::io::Error::other(e)))?
}
