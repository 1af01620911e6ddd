//! "Does anything else have this file open?" in one system call: the kernel
//! grants a write lease (`F_SETLEASE`, `F_WRLCK`) only when no other open
//! file description refers to the inode, whoever holds it: a loop device
//! (read-write or read-only), a qemu-storage-daemon or qemu-nbd, another
//! process, through any path or bind mount. A granted lease therefore
//! proves that no attachment exists, without scanning every loop device's
//! `backing_file` in sysfs; a refused one only says "look closer".
//!
//! The lease is dropped with the descriptor before this returns, so an
//! opener elsewhere waits at most for the close.
//!
//! The crate's other `unsafe`: one `fcntl` with an integer argument on a
//! descriptor we own.
#![allow(unsafe_code)]

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
};

/// True when `path` is a regular file that nothing but this call has open.
/// False when it is open elsewhere, and also whenever the answer is not
/// known (no such file, not a regular file, a filesystem without leases,
/// no CAP_LEASE and not the owner): the caller then looks the slow way.
pub fn open_nowhere_else(path: &Path) -> bool {
    if !lease_breaks_are_harmless() {
        return false;
    }
    // O_NONBLOCK: if someone holds a lease, fail instead of waiting for its
    // break; O_NOFOLLOW: a symlink is not a volume.
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    else {
        return false;
    };
    write_lease(&f)
}

/// A lease holder gets SIGIO when someone opens the file while it holds
/// the lease, and SIGIO's default action ends the process: the node needs
/// a handler first. tokio's stays installed for the life of the process
/// (and, being a handler, is reset in children at exec). Without a runtime
/// to install it, no lease is taken.
fn lease_breaks_are_harmless() -> bool {
    static HANDLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HANDLED.get_or_init(|| {
        tokio::runtime::Handle::try_current().is_ok()
            && tokio::signal::unix::signal(tokio::signal::unix::SignalKind::io()).is_ok()
    })
}

fn write_lease(f: &File) -> bool {
    // SAFETY: F_SETLEASE takes an int argument and touches no memory of
    // ours; `f` is open for the call's duration.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
    // Closing `f` releases the lease.
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_open_elsewhere_is_told_from_one_open_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.raw");
        std::fs::write(&p, b"x").unwrap();
        assert!(open_nowhere_else(&p), "a closed file");
        // Twice in a row: the first lease went with its descriptor.
        assert!(open_nowhere_else(&p));
        let held = File::open(&p).unwrap();
        assert!(!open_nowhere_else(&p), "open for reading elsewhere");
        drop(held);
        let held = OpenOptions::new().write(true).open(&p).unwrap();
        assert!(!open_nowhere_else(&p), "open for writing elsewhere");
        drop(held);
        assert!(open_nowhere_else(&p));
        // A lease broken while held signals SIGIO, which must not end us.
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::IO)
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn anything_but_a_regular_file_is_not_known_free() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!open_nowhere_else(dir.path()), "a directory");
        assert!(!open_nowhere_else(&dir.path().join("missing")));
        let target = dir.path().join("t");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(!open_nowhere_else(&link), "a symlink is not followed");
    }
}
