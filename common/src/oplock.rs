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
    /// A pool as a whole (pool-build).
    Pool(String),
    /// An id this driver cannot parse, locked as given (unpublishing works
    /// on the target path alone).
    Unparsed(String),
}

impl LockKey {
    pub fn volume(pool: &str, name: &str) -> Self {
        Self::Volume {
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
            Self::SnapshotName(name) => write!(f, "snapshot {name}"),
            Self::Pool(pool) => write!(f, "pool {pool}"),
            Self::Unparsed(id) => write!(f, "{id}"),
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

    /// Whether `key` is held now (for tests and diagnostics).
    pub fn is_held(&self, key: &LockKey) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
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
