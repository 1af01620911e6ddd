//! Group commit of one directory's fsync. A create or delete in a pool is
//! durable once the pool directory is synced after its rename or unlink;
//! callers that change the directory while a sync runs share the next one
//! instead of each paying its own (at concurrency 8 on a disk, one sync
//! where there were eight). A caller is answered only by a sync that began
//! after it asked, so every acknowledged change is on disk; a failed sync
//! fails every caller it covered.
//!
//! The sync runs on the blocking pool, off the node's one runtime thread (a
//! disk or a network filesystem can take long). On tmpfs and ramfs there is
//! nothing to sync: the kernel's fsync there does nothing (their files live
//! in memory only, and a process that dies loses none of them), so neither
//! the directory nor a file is opened for it.

use crate::error::{io, Result};
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex,
    },
};
use tokio::sync::watch;

/// The outcome of one sync, for every caller it covered.
type Outcome = Option<std::result::Result<(), (std::io::ErrorKind, String)>>;

/// Syncs of one directory, grouped.
#[derive(Debug, Clone)]
pub struct DirSync(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    /// Whether the directory is on tmpfs or ramfs: 0 not asked yet, 1 yes,
    /// 2 no. Asked again after [`DirSync::look_again`].
    volatile: AtomicU8,
    /// Tests hold runs back with this.
    #[cfg(test)]
    hold: tokio::sync::RwLock<()>,
}

#[derive(Debug, Default)]
struct State {
    /// Callers so far; each caller's ticket is its number.
    asked: u64,
    /// Every ticket up to this one is synced.
    synced: u64,
    /// The sync running now: the last ticket it covers, and its outcome.
    running: Option<(u64, watch::Receiver<Outcome>)>,
    /// Syncs begun.
    runs: u64,
}

impl DirSync {
    pub fn new(dir: PathBuf) -> Self {
        Self(Arc::new(Inner {
            dir,
            state: Mutex::default(),
            volatile: AtomicU8::new(0),
            #[cfg(test)]
            hold: Default::default(),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// Returns once a sync of the directory that began after this call has
    /// succeeded.
    pub async fn sync(&self) -> Result<()> {
        let dir = &self.0.dir;
        if self.volatile() {
            return Ok(());
        }
        let ticket = {
            let mut s = self.lock();
            s.asked += 1;
            s.asked
        };
        loop {
            let (covers, mut outcome) = {
                let mut s = self.lock();
                if s.synced >= ticket {
                    return Ok(());
                }
                match &s.running {
                    Some((covers, rx)) => (*covers, rx.clone()),
                    None => {
                        let covers = s.asked;
                        let (tx, rx) = watch::channel(None);
                        s.running = Some((covers, rx.clone()));
                        s.runs += 1;
                        // Runs to its end whatever becomes of this caller.
                        let inner = self.0.clone();
                        tokio::task::spawn_blocking(move || inner.run(covers, tx));
                        (covers, rx)
                    }
                }
            };
            let waited = outcome.wait_for(Option::is_some).await.map(|v| v.clone());
            let done = match waited {
                Ok(v) => v,
                // The run ended without an answer (its task was lost): it
                // is no longer running, and this caller is not synced.
                Err(_) => {
                    let mut s = self.lock();
                    if s.running
                        .as_ref()
                        .is_some_and(|(c, rx)| *c == covers && rx.same_channel(&outcome))
                    {
                        s.running = None;
                    }
                    let lost =
                        std::io::Error::other("the directory sync was lost before it finished");
                    return Err(io("sync", dir)(lost));
                }
            };
            // A sync that began before this caller asked does not cover it.
            if covers < ticket {
                continue;
            }
            return match done {
                Some(Err((kind, why))) => Err(io("sync", dir)(std::io::Error::new(kind, why))),
                _ => Ok(()),
            };
        }
    }

    /// Syncs the file at `path`, in the directory, on the blocking pool;
    /// it is opened only there, and not at all on tmpfs (nothing to do).
    pub async fn sync_file_at(&self, path: &Path) -> Result<()> {
        if self.volatile() {
            return Ok(());
        }
        let at = path.to_path_buf();
        tokio::task::spawn_blocking(move || File::open(&at)?.sync_all())
            .await
            .map_err(|e| io("sync", path)(std::io::Error::other(e)))?
            .map_err(io("sync", path))
    }

    /// The directory is on tmpfs or ramfs: syncs there do nothing. Asked
    /// once, until [`Self::look_again`].
    fn volatile(&self) -> bool {
        match self.0.volatile.load(Ordering::Acquire) {
            1 => true,
            2 => false,
            _ => {
                let memory = crate::fsutil::filesystem_of(&self.0.dir)
                    == Some(crate::fsutil::FsKind::Memory);
                self.0
                    .volatile
                    .store(if memory { 1 } else { 2 }, Ordering::Release);
                memory
            }
        }
    }

    /// Something may have been mounted at the directory (a pool's start):
    /// its filesystem is asked again at the next sync.
    pub fn look_again(&self) {
        self.0.volatile.store(0, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One sync covering every ticket up to `covers`.
    fn run(&self, covers: u64, tx: watch::Sender<Outcome>) {
        // Whatever happens here (a panic included), the run ends: it is no
        // longer running, and its callers are told.
        struct End<'a>(&'a Inner, Option<watch::Sender<Outcome>>);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                if let Some(tx) = self.1.take() {
                    self.0.lock().running = None;
                    let _ = tx.send(Some(Err((
                        std::io::ErrorKind::Other,
                        "the directory sync did not finish".into(),
                    ))));
                }
            }
        }
        let mut end = End(self, Some(tx));
        #[cfg(test)]
        let _held = self.hold.blocking_read();
        let r = File::open(&self.dir).and_then(|d| d.sync_all());
        if r.is_ok() {
            let mut s = self.lock();
            s.synced = s.synced.max(covers);
        }
        if let Some(tx) = end.1.take() {
            self.lock().running = None;
            let _ = tx.send(Some(r.map_err(|e| (e.kind(), e.to_string()))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory on the machine's disk (not tmpfs), or none.
    fn on_disk() -> Option<tempfile::TempDir> {
        ["/var/tmp", "/tmp"].into_iter().find_map(|base| {
            let t = tempfile::tempdir_in(base).ok()?;
            (!DirSync::new(t.path().into()).volatile()).then_some(t)
        })
    }

    #[tokio::test]
    async fn concurrent_callers_share_syncs_and_each_is_answered_by_a_later_one() {
        let Some(t) = on_disk() else {
            pool_csi_testkit::skip::skip(
                "disk",
                "/var/tmp and /tmp are on tmpfs: no real fsync to group",
            );
            return;
        };
        let s = DirSync::new(t.path().into());
        // The first caller's sync is held until all 32 have asked.
        let held = s.0.hold.write().await;
        let calls: Vec<_> = (0..32)
            .map(|i| {
                let s = s.clone();
                let dir = t.path().to_path_buf();
                tokio::spawn(async move {
                    std::fs::write(dir.join(format!("f{i}")), b"x").unwrap();
                    s.sync().await
                })
            })
            .collect();
        while s.lock().asked < 32 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            s.lock().runs,
            1,
            "the first caller's sync runs, the others wait"
        );
        drop(held);
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let st = s.lock();
        assert_eq!(st.asked, 32);
        assert_eq!(st.synced, 32, "every ticket covered");
        assert!(st.running.is_none());
        // The first caller's sync, then one for the 31 that asked while it
        // ran (a sync that began before their change does not cover them).
        assert_eq!(st.runs, 2, "{} syncs for 32 callers", st.runs);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_callers_it_covered_and_the_next_one_runs_anew() {
        let Some(t) = on_disk() else {
            pool_csi_testkit::skip::skip(
                "disk",
                "/var/tmp and /tmp are on tmpfs: no real fsync to group",
            );
            return;
        };
        let gone = t.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let s = DirSync::new(gone.clone());
        assert!(!s.volatile());
        std::fs::remove_dir(&gone).unwrap();
        let e = s.sync().await.unwrap_err();
        assert!(e.to_string().contains("sync"), "{e}");
        assert_eq!(s.lock().synced, 0);
        std::fs::create_dir(&gone).unwrap();
        s.sync().await.unwrap();
        assert_eq!(s.lock().synced, 2);
    }

    #[tokio::test]
    async fn on_tmpfs_nothing_is_synced() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            pool_csi_testkit::skip::skip("dev-shm", "/dev/shm is missing");
            return;
        }
        let t = tempfile::tempdir_in(shm).unwrap();
        let s = DirSync::new(t.path().into());
        assert!(s.volatile());
        File::create(t.path().join("f")).unwrap();
        // Gone: a sync that opened the directory or the file would fail now.
        let path = t.path().to_path_buf();
        drop(t);
        assert!(!path.exists());
        s.sync().await.unwrap();
        s.sync_file_at(&path.join("f")).await.unwrap();
        assert_eq!(s.lock().asked, 0, "no ticket, no sync");
    }

    #[tokio::test]
    async fn a_filesystem_mounted_at_the_directory_is_asked_about_again() {
        let Some(t) = on_disk() else {
            pool_csi_testkit::skip::skip("disk", "/var/tmp and /tmp are on tmpfs");
            return;
        };
        let s = DirSync::new(t.path().into());
        assert!(!s.volatile());
        let flags = rustix::mount::MountFlags::empty();
        if let Err(e) = rustix::mount::mount("tmpfs", t.path(), "tmpfs", flags, None) {
            pool_csi_testkit::skip::skip("root", &format!("mounting a tmpfs needs root: {e}"));
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let _unmount = Unmount(t.path());
        assert!(!s.volatile(), "asked once, until told to look again");
        // A pool's start, after mounting its filesystem at the root.
        s.look_again();
        assert!(s.volatile());
    }
}
