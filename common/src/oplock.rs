//! One operation per volume at a time. A second concurrent call gets ABORTED
//! (CSI spec: "Operation pending for volume"), never a wait: the caller
//! retries with backoff. The lock is never held across an `.await`; the
//! guard is, and releases on every return path.

use std::{
    collections::HashSet,
    fmt,
    sync::{Arc, Mutex},
};

/// What an operation locks. Every service of a binary locks through these,
/// so the CSI and agent services of one node collide on the same volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// A volume, by pool and storage name (whatever node it is on).
    Volume { pool: String, name: String },
    /// A snapshot, by pool and storage name.
    Snapshot { pool: String, name: String },
    /// A CSI snapshot name, whichever pool it lands in: snapshot names are
    /// cluster-wide in CSI.
    SnapshotName(String),
    /// The publish record of a node-local volume: publish and unpublish
    /// take it (not the volume's, so a long snapshot or clone does not hold
    /// a pod's start up), and DeleteVolume takes it with the volume's.
    Published { pool: String, name: String },
    /// A pool as a whole (pool-build).
    Pool(String),
    /// An id this driver cannot parse, locked as given (unpublishing works
    /// on the target path alone).
    Unparsed(String),
    /// NodeGetVolumeStats of a volume at a path, where it can wait on a
    /// share: one at a time, apart from the volume's other calls, so a
    /// stats call waiting on a share that does not answer holds one thread
    /// while kubelet's next ones are ABORTED.
    Stats(String),
}

impl LockKey {
    pub fn volume(pool: &str, name: &str) -> Self {
        Self::Volume {
            pool: pool.into(),
            name: name.into(),
        }
    }

    pub fn published(pool: &str, name: &str) -> Self {
        Self::Published {
            pool: pool.into(),
            name: name.into(),
        }
    }

    pub fn snapshot(pool: &str, name: &str) -> Self {
        Self::Snapshot {
            pool: pool.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for LockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Volume { pool, name } => write!(f, "volume {name} of pool {pool}"),
            Self::Snapshot { pool, name } => write!(f, "snapshot {name} of pool {pool}"),
            Self::Published { pool, name } => {
                write!(f, "the publish record of volume {name} of pool {pool}")
            }
            Self::SnapshotName(name) => write!(f, "snapshot {name}"),
            Self::Pool(pool) => write!(f, "pool {pool}"),
            Self::Unparsed(id) => write!(f, "{id}"),
            Self::Stats(id) => write!(f, "the statistics of {id}"),
        }
    }
}

/// A table of keys with an operation in flight.
#[derive(Clone, Default)]
pub struct OpLocks {
    held: Arc<Mutex<HashSet<LockKey>>>,
}

/// Held while an operation runs; dropping it frees the key.
pub struct OpGuard {
    held: Arc<Mutex<HashSet<LockKey>>>,
    key: LockKey,
}

/// The key is busy: map to ABORTED.
#[derive(Debug, thiserror::Error)]
#[error("an operation is already in progress for {key}; retry later")]
pub struct Busy {
    pub key: String,
}

impl crate::GrpcCode for Busy {
    fn grpc_code(&self) -> tonic::Code {
        tonic::Code::Aborted
    }
}

impl From<Busy> for tonic::Status {
    fn from(b: Busy) -> Self {
        crate::status_from(b)
    }
}

impl OpLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `key` or fails at once with [`Busy`].
    pub fn try_acquire(&self, key: LockKey) -> Result<OpGuard, Busy> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if !held.insert(key.clone()) {
            return Err(Busy {
                key: key.to_string(),
            });
        }
        Ok(OpGuard {
            held: self.held.clone(),
            key,
        })
    }

    /// Runs `op` holding `key` (see [`detach`]). Busy → `E::from(Busy)`.
    pub async fn run<T, E, F>(&self, key: LockKey, op: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Busy> + Send + 'static,
    {
        let guard = self.try_acquire(key)?;
        detach(guard, op).await
    }

    /// [`Self::run`] with `op` on a thread of the blocking pool
    /// ([`on_blocking_thread`]): for operations whose plain file calls can
    /// wait as long as a share does not answer. While one hangs, retries
    /// are ABORTED at once and take no thread of their own.
    pub async fn run_off_thread<T, E, F>(&self, key: LockKey, op: F) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Busy> + Send + 'static,
    {
        self.run(key, on_blocking_thread(op)).await
    }

    /// Whether `key` is held now (for tests and diagnostics).
    pub fn is_held(&self, key: &LockKey) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }
}

/// Runs `op` in a task of its own, holding `guards` (one or more
/// [`OpGuard`]s) until it ends: when the caller goes away (its deadline
/// passed, the connection dropped) the operation still runs to its end and
/// keeps its keys until then. A retry in the meantime gets ABORTED instead of
/// starting a second copy or wipe, and afterwards finds the work done.
pub async fn detach<T, E, F, G>(guards: G, op: F) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    G: Send + 'static,
{
    let task = tokio::spawn(async move {
        let r = op.await;
        drop(guards);
        r
    });
    match task.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => unreachable!("operation tasks are never cancelled: {e}"),
    }
}

/// Runs `op` to its end on a thread of the blocking pool, driving its I/O
/// and timers through the current runtime as on the runtime's own thread
/// (the runtime keeps running on that one meanwhile), even when the caller
/// goes away. A plain file call in `op` that blocks — on a share whose
/// server stopped answering, for as long as it does — then holds that
/// thread, not the runtime's. A panic in `op` is the caller's.
pub async fn on_blocking_thread<T, F>(op: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || rt.block_on(op)).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only at shutdown: the runtime no longer runs blocking tasks.
        Err(e) => panic!("the runtime is shutting down: {e}"),
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An operation blocked in a plain call (as on a share that does not
    /// answer) holds a blocking thread and its key, not the runtime's one
    /// thread: a retry is Busy at once, and the key is free once it ends.
    #[tokio::test(flavor = "current_thread")]
    async fn an_operation_blocked_off_thread_keeps_its_key_and_the_runtime_free() {
        let locks = OpLocks::new();
        let k = LockKey::volume("share", "v");
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let blocked = {
            let (locks, k) = (locks.clone(), k.clone());
            tokio::spawn(async move {
                locks
                    .run_off_thread(k, async move {
                        wait.recv().unwrap();
                        Ok::<_, Busy>("answered")
                    })
                    .await
            })
        };
        // The answer comes a second later, from a thread of its own; the
        // runtime's thread runs timers and other calls meanwhile.
        let answer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(1));
            go.send(()).unwrap();
        });
        let t = std::time::Instant::now();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            t.elapsed().as_millis() < 500,
            "blocked for {:?}",
            t.elapsed()
        );
        assert!(locks.is_held(&k));
        let retry = locks.run_off_thread(k.clone(), async { Ok::<_, Busy>("twice") });
        assert!(retry.await.is_err(), "a retry while it waits is Busy");
        answer.join().unwrap();
        assert_eq!(blocked.await.unwrap().unwrap(), "answered");
        assert!(!locks.is_held(&k), "free once it ended");
    }

    /// The caller gives up (its future is dropped): the operation goes on,
    /// holding its key, and a second call is Busy until it ends.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_abandoned_operation_keeps_its_key_until_it_ends() {
        let locks = OpLocks::new();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let k = LockKey::volume("p", "v");
        let slow = locks.run(k.clone(), async move {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            d.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, Busy>(())
        });
        // The caller's deadline: it stops waiting after a second.
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(1), slow)
                .await
                .is_err()
        );
        assert!(locks.is_held(&k), "the abandoned operation still runs");
        let again = locks.run(k.clone(), async { Ok::<_, Busy>(()) }).await;
        assert!(
            matches!(again, Err(Busy { .. })),
            "a retry meanwhile is Busy"
        );
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!locks.is_held(&k));
        locks.run(k, async { Ok::<_, Busy>(()) }).await.unwrap();
    }

    #[test]
    fn second_acquire_is_busy_until_guard_drops() {
        let locks = OpLocks::new();
        let v = LockKey::volume("p", "v");
        let g = locks.try_acquire(v.clone()).unwrap();
        let err = locks.try_acquire(v.clone()).err().unwrap();
        assert_eq!(err.key, "volume v of pool p");
        assert!(locks.try_acquire(LockKey::snapshot("p", "v")).is_ok());
        drop(g);
        assert!(!locks.is_held(&v));
        assert!(locks.try_acquire(v).is_ok());
    }
}
