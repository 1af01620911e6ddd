//! Holding a volume still for a copy: its block devices are flushed and the
//! filesystems mounted from them frozen (`fsfreeze`) until the copy is done,
//! so a snapshot or clone holds every write made before it. Used by every
//! pool that copies a volume in use (file images, partitions, LVs).
//!
//! A frozen filesystem blocks every writer until it is thawed, so a freeze
//! must never outlive a crash of the node plugin: each one is written to a
//! journal (`<state-dir>/frozen/`, one file per mount point holding its
//! path) before the freeze and removed after the thaw, and the node thaws
//! whatever the journal still holds when it starts ([`Quiescer::recover`]),
//! before it serves anything. The freeze is an ioctl of the plugin itself
//! (see [`super::fifreeze`] for why not an `fsfreeze` child).

use super::{fifreeze, mountinfo};
use crate::{
    error::{io, Result},
    fsutil::{is_same_device, remove_if_exists, replace_file},
    Config,
};
use pool_csi_common::volume_id::fnv1a64;
use std::{
    fs::File,
    path::{Path, PathBuf},
};

/// Freezes and thaws filesystems, journaled.
#[derive(Clone)]
pub struct Quiescer {
    mountinfo: PathBuf,
    journal: PathBuf,
}

impl Quiescer {
    /// The mount table this node reads.
    pub fn mount_table(&self) -> &std::path::Path {
        &self.mountinfo
    }
}

/// Filesystems frozen for a copy; [`Frozen::thaw`] them when it is done.
#[must_use = "frozen filesystems must be thawed"]
pub struct Frozen(Vec<PathBuf>);

impl Frozen {
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Thaws every filesystem (a failure is logged: the operator must act).
    pub async fn thaw(self, q: &Quiescer) {
        for mp in &self.0 {
            q.thaw(mp).await;
        }
    }
}

/// Runs a blocking filesystem call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

impl Quiescer {
    pub fn new(cfg: &Config) -> Self {
        Self {
            mountinfo: cfg.mountinfo.clone(),
            journal: cfg.state_dir.join("frozen"),
        }
    }

    fn entry(&self, mount_point: &Path) -> PathBuf {
        let key = fnv1a64(mount_point.as_os_str().as_encoded_bytes());
        self.journal.join(format!("{key:016x}"))
    }

    /// Flushes `devices` and freezes the filesystems mounted from them (one
    /// mount per filesystem: binds share the superblock). On failure
    /// whatever was frozen is thawed again.
    pub async fn freeze(&self, devices: &[PathBuf]) -> Result<Frozen> {
        let mut frozen = Frozen::none();
        if devices.is_empty() {
            return Ok(frozen);
        }
        let table = mountinfo::read(&self.mountinfo).map_err(io("read", &self.mountinfo))?;
        for dev in devices {
            let step = async {
                let d = dev.clone();
                blocking(move || File::open(&d).and_then(|f| f.sync_all()))
                    .await
                    .map_err(io("flush", dev))?;
                let Some(m) = table
                    .iter()
                    .find(|m| is_same_device(Path::new(&m.source), dev))
                else {
                    return Ok(());
                };
                std::fs::create_dir_all(&self.journal).map_err(io("create", &self.journal))?;
                let entry = self.entry(&m.mount_point);
                let text = m.mount_point.as_os_str().as_encoded_bytes();
                replace_file(&entry, &entry.with_extension("tmp"), text)?;
                let mp = m.mount_point.clone();
                if let Err(e) = blocking(move || fifreeze::freeze(&mp)).await {
                    let _ = remove_if_exists(&entry);
                    return Err(io("freeze the filesystem mounted at", &m.mount_point)(e));
                }
                frozen.0.push(m.mount_point.clone());
                Ok::<_, crate::error::Error>(())
            };
            if let Err(e) = step.await {
                frozen.thaw(self).await;
                return Err(e);
            }
        }
        Ok(frozen)
    }

    async fn thaw(&self, mp: &Path) {
        let at = mp.to_path_buf();
        match blocking(move || fifreeze::thaw(&at)).await {
            Ok(()) => {
                let _ = remove_if_exists(&self.entry(mp));
            }
            Err(e) => {
                tracing::error!(mount = %mp.display(), error = %e, "failed to thaw a frozen filesystem; run fsfreeze --unfreeze on it (the node tries again when it restarts)")
            }
        }
    }

    /// Thaws every filesystem a crashed earlier run left frozen. Run at
    /// start-up, before anything is served.
    pub async fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.journal) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(text) = std::fs::read(e.path()) else {
                continue;
            };
            let mp = PathBuf::from(String::from_utf8_lossy(&text).into_owned());
            let at = mp.clone();
            match blocking(move || fifreeze::thaw(&at)).await {
                Ok(()) => {
                    tracing::warn!(mount = %mp.display(), "thawed a filesystem a crash left frozen")
                }
                // Never frozen (the crash came first), or unmounted since.
                Err(err) if fifreeze::was_not_frozen(&err) || !mp.exists() => {}
                Err(err) => {
                    tracing::error!(mount = %mp.display(), error = %err, "failed to thaw a filesystem a crash left frozen; run fsfreeze --unfreeze on it");
                    continue;
                }
            }
            let _ = remove_if_exists(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal entry for a filesystem that is not frozen (the crash came
    /// before the freeze) or no longer there is cleared at start-up; real
    /// freezes are in the e2e crash tests (they need root and ext4).
    #[tokio::test]
    async fn recovery_clears_entries_for_filesystems_not_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::local("n", dir.path().join("state"));
        let q = Quiescer::new(&cfg);
        std::fs::create_dir_all(&q.journal).unwrap();
        let gone = dir.path().join("gone");
        std::fs::write(q.entry(&gone), gone.as_os_str().as_encoded_bytes()).unwrap();
        // A directory on a filesystem that is not frozen.
        let here = dir.path().to_path_buf();
        std::fs::write(q.entry(&here), here.as_os_str().as_encoded_bytes()).unwrap();
        q.recover().await;
        assert_eq!(std::fs::read_dir(&q.journal).unwrap().count(), 0);
    }

    /// Devices no filesystem is mounted from are flushed, not frozen.
    #[tokio::test]
    async fn unmounted_devices_are_only_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        std::fs::write(&dev, b"").unwrap();
        let mut cfg = Config::local("n", dir.path().join("state"));
        cfg.mountinfo = dir.path().join("mountinfo");
        std::fs::write(
            &cfg.mountinfo,
            "36 25 7:3 / /mnt/v rw - ext4 /dev/loop9 rw\n",
        )
        .unwrap();
        let q = Quiescer::new(&cfg);
        let frozen = q.freeze(&[dev]).await.unwrap();
        assert!(frozen.0.is_empty());
        assert!(!q.journal.exists());
        frozen.thaw(&q).await;
    }
}
