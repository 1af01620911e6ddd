//! The network share a netfs pool mounts at its target: found already
//! mounted (by type and source, not by what is at the path), or mounted
//! with the share's helper, type by type for `format: auto`. A share that
//! stops answering (a FUSE client whose server went away: ENOTCONN; an NFS
//! server that hangs) makes the pool not running with the reason; the
//! node's restart round mounts it again. Stopping the pool unmounts the
//! share only when this pool mounted it (a marker in the state directory
//! says so across restarts of the node plugin).

use crate::{
    error::{io, Error, Result},
    exec::CommandRunner,
    mount::{mounter, mountinfo},
    tools::netmount::{self, Credentials, NetFs},
    Config,
};
use pool_csi_common::PoolDefinition;
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// A statfs of the share that takes longer than this: not answering (short:
/// a status is asked every few seconds and must not stall the inventory).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct NetShare {
    host: String,
    dir: String,
    format: Option<String>,
    options: Vec<String>,
    /// cifs: the user and the file holding the password (from the Secret).
    auth: Option<(String, PathBuf)>,
    /// Where cifs credentials exist during a mount.
    credentials: PathBuf,
    /// Present while this pool's mount of the share stands.
    marker: PathBuf,
    /// statfs of the mount, one at a time.
    probe: Probe,
}

/// The space figures of a filesystem.
#[derive(Debug)]
pub struct Space {
    pub capacity: u64,
    pub available: u64,
    pub allocation: u64,
}

/// statfs of one share's mount, off the runtime's thread and bounded in
/// time: a share whose server is gone may never answer. Callers take turns
/// (a second status waits for the first's answer instead of failing), and
/// a statfs that never returned is not repeated on the same mount, so a
/// hung server costs one blocked thread, not one per status. Detaching the
/// mount starts a new generation: a hung statfs of the old mount says
/// nothing of the new one.
#[derive(Debug, Default)]
struct Probe {
    turn: tokio::sync::Mutex<()>,
    /// The statfs running or hung: its mount generation and start.
    running: Arc<Mutex<Option<(u64, Instant)>>>,
    generation: AtomicU64,
}

impl Probe {
    async fn space(&self, root: &Path, limit: Duration) -> Result<Space> {
        let _turn = self.turn.lock().await;
        let generation = self.generation.load(Ordering::Acquire);
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((g, since)) = *running {
                if g == generation {
                    return Err(Error::Precondition(format!(
                        "{}: a statfs started {} s ago has not returned",
                        root.display(),
                        since.elapsed().as_secs()
                    )));
                }
            }
            *running = Some((generation, Instant::now()));
        }
        let (p, running) = (root.to_path_buf(), self.running.clone());
        let work = tokio::task::spawn_blocking(move || {
            let r = rustix::fs::statvfs(&p);
            let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
            if running.is_some_and(|(g, _)| g == generation) {
                *running = None;
            }
            r
        });
        match tokio::time::timeout(limit, work).await {
            Ok(Ok(Ok(s))) => Ok(Space {
                capacity: s.f_blocks * s.f_frsize,
                available: s.f_bavail * s.f_frsize,
                allocation: (s.f_blocks - s.f_bfree) * s.f_frsize,
            }),
            Ok(Ok(Err(e))) => Err(io("statfs", root)(e.into())),
            Ok(Err(e)) => Err(io("statfs", root)(std::io::Error::other(e))),
            Err(_) => Err(Error::Precondition(format!(
                "{} did not answer statfs in {} s",
                root.display(),
                limit.as_secs()
            ))),
        }
    }

    /// The mount was detached: what hangs on it no longer counts.
    fn detached(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

impl NetShare {
    pub fn new(def: &PoolDefinition, cfg: &Config) -> Self {
        let s = &def.spec.source;
        let dir = cfg.state_dir.join("netfs");
        Self {
            host: s.host.clone().unwrap_or_default(),
            dir: s.dir.clone().unwrap_or_default(),
            format: s.format.clone(),
            options: s.options.clone(),
            auth: s.auth.as_ref().map(|a| {
                (
                    a.username.clone(),
                    cfg.secrets_dir.join(&a.secret_ref).join("password"),
                )
            }),
            credentials: dir.join(format!("{}.credentials", def.name)),
            marker: dir.join(format!("{}.mounted", def.name)),
            probe: Probe::default(),
        }
    }

    /// What the share is called in messages: `host:/dir`.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.dir)
    }

    /// The share's entry at `root` in the mount table `table_path`; an
    /// error when something else is mounted there.
    fn mounted_at(&self, table_path: &Path, root: &Path) -> Result<bool> {
        let table = mountinfo::read(table_path).map_err(io("read", table_path))?;
        let Some(m) = mountinfo::find_at(&table, root) else {
            return Ok(false);
        };
        let ours = NetFs::tried_for(self.format.as_deref())
            .iter()
            .any(|fs| fs.is_mount_of(m, &self.host, &self.dir));
        if ours {
            return Ok(true);
        }
        Err(Error::Precondition(format!(
            "{} has {} ({}) mounted, not the pool's share {}; pool-csi will not mount over it",
            root.display(),
            m.source,
            m.fs_type,
            self.describe()
        )))
    }

    /// Whether the share is mounted at `root` and answers: the reason when not.
    pub async fn check(&self, table_path: &Path, root: &Path) -> Result<Space> {
        if !self.mounted_at(table_path, root)? {
            return Err(Error::Precondition(format!(
                "share {} is not mounted at {}",
                self.describe(),
                root.display()
            )));
        }
        self.probe.space(root, ANSWER_TIMEOUT).await.map_err(|e| {
            Error::Precondition(format!(
                "share {} at {} does not answer: {}",
                self.describe(),
                root.display(),
                pool_csi_common::full_message(&e)
            ))
        })
    }

    /// Mounts the share at `root` unless it is mounted there and answers.
    /// A mount of the share that stopped answering is detached first.
    pub async fn mount(
        &self,
        runner: &dyn CommandRunner,
        table_path: &Path,
        root: &Path,
    ) -> Result<()> {
        if self.mounted_at(table_path, root)? {
            match self.probe.space(root, ANSWER_TIMEOUT).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    tracing::warn!(share = %self.describe(), root = %root.display(), error = %pool_csi_common::full_message(&e), "the share's mount does not answer; detaching it to mount again");
                    rustix::mount::unmount(root, rustix::mount::UnmountFlags::DETACH)
                        .map_err(|e| io("detach", root)(e.into()))?;
                    self.probe.detached();
                }
            }
        }
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        // A share mounted over a directory with files would hide them (a
        // target.path pointing at the wrong place).
        if std::fs::read_dir(root)
            .map_err(io("read", root))?
            .next()
            .is_some()
        {
            return Err(Error::Precondition(format!(
                "{} is not empty: pool-csi mounts share {} only on an empty directory (point target.path at one)",
                root.display(),
                self.describe()
            )));
        }
        let creds = match &self.auth {
            None => None,
            Some((user, password_file)) => {
                let password = std::fs::read_to_string(password_file).map_err(|e| {
                    Error::Precondition(format!(
                        "the share's password cannot be read from {} (the Secret of source.auth.secretRef, key password): {e}",
                        password_file.display()
                    ))
                })?;
                let password = password.trim_end_matches(['\n', '\r']);
                if password.contains(['\n', '\r', '\0']) {
                    return Err(Error::Precondition(format!(
                        "the share's password in {} holds a line break or NUL: a credentials file cannot carry it",
                        password_file.display()
                    )));
                }
                Some(Credentials::write(&self.credentials, user, password)?)
            }
        };
        let mut failures = Vec::new();
        for &fs in NetFs::tried_for(self.format.as_deref()) {
            let mut options = self.options.clone();
            if let (NetFs::Cifs, Some(c)) = (fs, &creds) {
                options.push(format!("credentials={}", c.path().display()));
            }
            let source = fs.source(&self.host, &self.dir);
            match netmount::mount(runner, fs, &source, root, &options).await {
                Ok(()) => {
                    write_marker(&self.marker)?;
                    tracing::info!(share = %source, root = %root.display(), fs = fs.as_str(), "share mounted");
                    return Ok(());
                }
                Err(e) => failures.push(format!(
                    "{}: {}",
                    fs.as_str(),
                    pool_csi_common::full_message(&e)
                )),
            }
        }
        Err(Error::Precondition(format!(
            "share {} could not be mounted at {} ({})",
            self.describe(),
            root.display(),
            failures.join("; ")
        )))
    }

    /// Unmounts the share from `root` if this pool mounted it; a share
    /// mounted by someone else stays.
    pub fn unmount_if_ours(&self, table_path: &Path, root: &Path) -> Result<()> {
        // A credentials file a killed mount left behind goes with the pool.
        let _ = std::fs::remove_file(&self.credentials);
        if !self.marker.exists() {
            return Ok(());
        }
        if self.mounted_at(table_path, root).unwrap_or(false) {
            mounter::unmount(root).map_err(io("unmount", root))?;
            tracing::info!(share = %self.describe(), root = %root.display(), "share unmounted");
        }
        std::fs::remove_file(&self.marker).map_err(io("remove", &self.marker))
    }
}

fn write_marker(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    std::fs::write(path, b"").map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statuses_that_overlap_take_turns_instead_of_failing() {
        let t = tempfile::tempdir().unwrap();
        let probe = Probe::default();
        let limit = Duration::from_secs(3);
        let (a, b, c) = tokio::join!(
            probe.space(t.path(), limit),
            probe.space(t.path(), limit),
            probe.space(t.path(), limit)
        );
        for r in [a, b, c] {
            assert!(r.unwrap().capacity > 0);
        }
        // A statfs of the old mount that never returned: refused without a
        // new thread, until the mount is detached (a new generation).
        *probe.running.lock().unwrap() = Some((0, Instant::now()));
        let e = probe.space(t.path(), limit).await.unwrap_err().to_string();
        assert!(e.contains("has not returned"), "{e}");
        probe.detached();
        probe.space(t.path(), limit).await.unwrap();
    }
}
