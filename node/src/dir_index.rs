//! The entries of a directory, read once and kept while the directory is
//! unchanged, so a listing page costs the page and not a scan of the whole
//! directory (a tmpfs readdir of 10,000 entries costs ~10 ms, reading
//! 10,000 small files ~100 ms).
//!
//! Unchanged means: the directory's inode, mtime and ctime are those seen at
//! the scan. Whoever adds, removes or renames an entry — this node or an
//! administrator beside it — moves mtime and ctime. Timestamps are coarse
//! (one kernel clock tick; whole seconds on filesystems that keep no
//! nanoseconds), so a scan taken within [`SETTLE`] plus that granularity of
//! the last change is used once and not kept: a change in the same tick as
//! the scan could otherwise leave the timestamps equal ("racy git"). Kept
//! entries are dropped after [`MAX_AGE`] whatever the timestamps say, which
//! bounds what a filesystem with lazier timestamps could hide. A file
//! rewritten in place does not move its directory's timestamps: what is
//! kept must come from files that are replaced by rename, never rewritten.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

/// Longer than any kernel clock tick.
pub const SETTLE: Duration = Duration::from_millis(50);
/// How long kept entries are trusted at most.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// What identifies one state of the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether the last change is older than the timestamps' granularity
    /// plus [`SETTLE`]. Without nanoseconds the granularity is a second.
    fn settled(&self) -> bool {
        let coarse = self.mtime.1 == 0 && self.ctime.1 == 0;
        let wait = SETTLE
            + if coarse {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
        let at = |(s, ns): (i64, i64)| {
            SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
        };
        let last = at(self.mtime).max(at(self.ctime));
        SystemTime::now()
            .duration_since(last)
            .is_ok_and(|age| age >= wait)
    }
}

/// What a scan makes of one directory entry.
pub enum Scan<T> {
    /// It is one.
    Entry(T),
    /// It is none (another kind of file).
    Skip,
    /// It could not be read: left out of this scan, which is not kept.
    Unsure,
}

/// The entries of one directory, sorted, kept while it is unchanged.
pub struct DirIndex<T> {
    kept: Mutex<Option<Kept<T>>>,
}

impl<T> Default for DirIndex<T> {
    fn default() -> Self {
        Self {
            kept: Mutex::new(None),
        }
    }
}

impl<T> std::fmt::Debug for DirIndex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.lock().as_ref().map(|k| k.entries.len());
        f.debug_struct("DirIndex").field("kept", &kept).finish()
    }
}

/// Entries kept from one scan.
struct Kept<T> {
    stamp: Stamp,
    at: Instant,
    entries: Arc<Vec<T>>,
}

impl<T> DirIndex<T> {
    /// What `read` makes of each entry of `dir`, sorted by `key`: kept
    /// ones when the directory is unchanged, else a new scan. A scan in
    /// which `read` was [`Scan::Unsure`] of an entry is used once and not
    /// kept.
    pub fn entries(
        &self,
        dir: &Path,
        mut read: impl FnMut(&std::fs::DirEntry) -> Scan<T>,
        key: impl Fn(&T) -> &str,
    ) -> io::Result<Arc<Vec<T>>> {
        let stamp = Stamp::of(&std::fs::metadata(dir)?);
        if let Some(k) = &*self.lock() {
            if k.stamp == stamp && k.at.elapsed() < MAX_AGE {
                return Ok(k.entries.clone());
            }
        }
        let mut unsure = false;
        let mut entries = Vec::new();
        for e in std::fs::read_dir(dir)? {
            match e.map(|e| read(&e)) {
                Ok(Scan::Entry(t)) => entries.push(t),
                Ok(Scan::Skip) => {}
                Ok(Scan::Unsure) | Err(_) => unsure = true,
            }
        }
        entries.sort_by(|a, b| key(a).cmp(key(b)));
        let entries = Arc::new(entries);
        // Kept only if the directory did not change during the scan and
        // its last change is older than a clock tick.
        let after = Stamp::of(&std::fs::metadata(dir)?);
        *self.lock() = (after == stamp && stamp.settled() && !unsure).then(|| Kept {
            stamp,
            at: Instant::now(),
            entries: entries.clone(),
        });
        Ok(entries)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept<T>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(e: &std::fs::DirEntry) -> Scan<String> {
        let n = e.file_name().into_string().unwrap();
        match n.strip_suffix(".raw") {
            Some(n) => Scan::Entry(n.to_string()),
            None => Scan::Skip,
        }
    }

    fn any(e: &std::fs::DirEntry) -> Scan<String> {
        Scan::Entry(e.file_name().into_string().unwrap())
    }

    fn names(i: &DirIndex<String>, dir: &Path) -> Vec<String> {
        i.entries(dir, raw, |n| n).unwrap().to_vec()
    }

    #[test]
    fn kept_while_unchanged_and_rescanned_after_any_change() {
        let t = tempfile::tempdir().unwrap();
        let touch = |n: &str| std::fs::write(t.path().join(n), b"").unwrap();
        for n in ["b.raw", "a.raw", "not a volume", "c.txt"] {
            touch(n);
        }
        let i = DirIndex::default();
        assert_eq!(names(&i, t.path()), ["a", "b"]);
        std::thread::sleep(SETTLE);
        let first = i.entries(t.path(), any, |n| n).unwrap();
        assert!(
            Arc::ptr_eq(&first, &i.entries(t.path(), any, |n| n).unwrap()),
            "kept once settled"
        );
        // A change beside the driver, even at once, is seen.
        touch("0.raw");
        assert_eq!(names(&i, t.path()), ["0", "a", "b"]);
        std::fs::remove_file(t.path().join("a.raw")).unwrap();
        assert_eq!(names(&i, t.path()), ["0", "b"]);
        std::fs::rename(t.path().join("b.raw"), t.path().join("z.raw")).unwrap();
        assert_eq!(names(&i, t.path()), ["0", "z"]);
    }

    #[test]
    fn whole_second_timestamps_wait_a_second() {
        let at = |s: i64, ns: i64| Stamp {
            dev: 1,
            ino: 1,
            mtime: (s, ns),
            ctime: (s, ns),
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let secs = now.as_secs() as i64;
        // 200 ms old with nanoseconds: settled; a whole-second stamp of the
        // second before may be up to 1.99 s old but also just 0.01 s: not.
        let fine = now - Duration::from_millis(200);
        assert!(at(fine.as_secs() as i64, fine.subsec_nanos() as i64).settled());
        assert!(!at(secs, 0).settled());
        assert!(at(secs - 3, 0).settled());
    }

    #[test]
    fn a_scan_right_after_a_change_is_not_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.raw"), b"").unwrap();
        let i = DirIndex::default();
        let first = i.entries(t.path(), any, |n| n).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &i.entries(t.path(), any, |n| n).unwrap()),
            "too fresh to keep"
        );
    }

    #[test]
    fn a_scan_that_could_not_read_an_entry_is_not_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.raw"), b"").unwrap();
        std::thread::sleep(SETTLE);
        let i = DirIndex::default();
        let unsure = |_: &std::fs::DirEntry| Scan::<String>::Unsure;
        assert!(i.entries(t.path(), unsure, |n| n).unwrap().is_empty());
        // Read again (not the unsure answer kept): now it is there.
        assert_eq!(names(&i, t.path()), ["a"]);
    }
}
