//! One operation per volume at a time. A second concurrent call gets ABORTED
//! (CSI spec: "Operation pending for volume"), never a wait: the caller
//! retries with backoff. The lock is never held across an `.await`; the
//! guard is, and releases on every return path.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

/// A table of keys with an operation in flight.
#[derive(Clone, Default)]
pub struct OpLocks {
    held: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs; dropping it frees the key.
pub struct OpGuard {
    held: Arc<Mutex<HashSet<String>>>,
    key: String,
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
    pub fn try_acquire(&self, key: impl Into<String>) -> Result<OpGuard, Busy> {
        let key = key.into();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if !held.insert(key.clone()) {
            return Err(Busy { key });
        }
        Ok(OpGuard {
            held: self.held.clone(),
            key,
        })
    }

    /// Whether `key` is held now (for tests and diagnostics).
    pub fn is_held(&self, key: &str) -> bool {
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
        let g = locks.try_acquire("v").unwrap();
        let err = locks.try_acquire("v").err().unwrap();
        assert_eq!(err.key, "v");
        assert!(locks.try_acquire("other").is_ok());
        drop(g);
        assert!(!locks.is_held("v"));
        assert!(locks.try_acquire("v").is_ok());
    }
}
