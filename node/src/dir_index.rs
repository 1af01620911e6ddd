//! The entries of a directory, read once and kept while the directory is
//! unchanged, so a listing page costs the page and not a scan of the whole
//! directory (a tmpfs readdir of 10,000 entries costs ~10 ms, reading
//! 10,000 small files ~100 ms).
//!
//! Two ways of knowing the directory is unchanged:
//!
//! - **Watched** ([`DirIndex::watched`], for directories only this node
//!   changes through a local filesystem): an inotify watch, added before the
//!   scan, reports every name created, removed or renamed in the directory,
//!   by anyone on this machine; each call re-reads just those
//!   names. Churn then costs the changed names, not a rescan, and a name can
//!   be looked up ([`DirIndex::lookup`]) without probing the filesystem.
//!   The kernel queues the event inside the system call that made the
//!   change, so a lookup after that call returned sees it. A lost event
//!   (queue overflow), the directory removed, moved or unmounted, or another
//!   directory now at the path (its device and inode) start a new scan. A
//!   directory on a filesystem other machines may share (anything but
//!   ext2/3/4, xfs, btrfs, zfs, f2fs, tmpfs and ramfs), or a watch the
//!   kernel's limits refuse, keeps to the timestamps, and a lookup then
//!   answers `None` (ask the directory) without a scan; a watch is tried
//!   again after [`WATCH_RETRY`].
//! - **Timestamps** (the default; for shared directories other machines
//!   change, which inotify does not report): the directory's inode, mtime
//!   and ctime are those seen at the scan. Whoever adds, removes or renames
//!   an entry moves mtime and ctime. Timestamps are coarse (one kernel clock
//!   tick; whole seconds on filesystems that keep no nanoseconds), so a scan
//!   taken within [`SETTLE`] plus that granularity of the last change is used
//!   once and not kept: a change in the same tick as the scan could
//!   otherwise leave the timestamps equal ("racy git"). A file rewritten in
//!   place does not move its directory's timestamps: what is kept this way
//!   must come from files that are replaced by rename, never rewritten.
//!
//! Either way kept entries are dropped after [`MAX_AGE`], which bounds what
//! a filesystem with lazier timestamps or notifications could hide.

use rustix::fs::inotify;
use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::{OsStr, OsString},
    fs::FileType,
    io,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
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

    /// Whether the last change was older, at `at`, than the timestamps'
    /// granularity plus [`SETTLE`]. Without nanoseconds the granularity is
    /// a second.
    fn settled_at(&self, at: SystemTime) -> bool {
        let coarse = self.mtime.1 == 0 && self.ctime.1 == 0;
        let wait = SETTLE
            + if coarse {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
        let time = |(s, ns): (i64, i64)| {
            SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
        };
        let last = time(self.mtime).max(time(self.ctime));
        at.duration_since(last).is_ok_and(|age| age >= wait)
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
    /// Watch the directory with inotify (else: timestamps).
    watch: bool,
    /// No watch could be had: not tried again before this.
    unwatched_until: Mutex<Option<Instant>>,
}

/// How long a directory that could not be watched keeps to timestamps.
pub const WATCH_RETRY: Duration = Duration::from_secs(60);

impl<T> Default for DirIndex<T> {
    fn default() -> Self {
        Self {
            kept: Mutex::new(None),
            watch: false,
            unwatched_until: Mutex::new(None),
        }
    }
}

impl<T> std::fmt::Debug for DirIndex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.lock().as_ref().map(|k| match &k.watched {
            Some((_, files)) => files.len(),
            None => k.sorted.as_ref().map_or(0, |s| s.len()),
        });
        f.debug_struct("DirIndex")
            .field("kept", &kept)
            .field("watch", &self.watch)
            .finish()
    }
}

/// Entries kept from one scan.
struct Kept<T> {
    stamp: Stamp,
    at: Instant,
    /// Sorted by key; `None` after a watched change, until a listing
    /// sorts `files` again (lookups need no order).
    sorted: Option<Arc<Vec<T>>>,
    /// Watched: the inotify descriptor, and every entry by its file name.
    watched: Option<(OwnedFd, BTreeMap<OsString, T>)>,
}

/// What one entry of the directory is: its name and its type as the
/// directory (or, after an event, lstat) tells it.
pub type Read<'a, T> = &'a mut dyn FnMut(&OsStr, io::Result<FileType>) -> Scan<T>;

/// What an inotify watch reports: every way a name comes or goes, and the
/// directory itself going away.
fn watch_flags() -> inotify::WatchFlags {
    use inotify::WatchFlags as W;
    W::CREATE | W::DELETE | W::MOVED_FROM | W::MOVED_TO | W::DELETE_SELF | W::MOVE_SELF | W::ONLYDIR
}

impl<T: Clone> DirIndex<T> {
    /// An index kept current by an inotify watch on the directory: only for
    /// a directory no other machine changes (see the module's notes).
    pub fn watched() -> Self {
        Self {
            kept: Mutex::new(None),
            watch: true,
            unwatched_until: Mutex::new(None),
        }
    }

    /// What `read` makes of each entry of `dir`, sorted by `key`: kept
    /// ones when the directory is unchanged, else a new scan. A scan in
    /// which `read` was [`Scan::Unsure`] of an entry is used once and not
    /// kept.
    pub fn entries(
        &self,
        dir: &Path,
        read: Read<'_, T>,
        key: impl Fn(&T) -> &str,
    ) -> io::Result<Arc<Vec<T>>> {
        Ok(self.listing(dir, read, key)?.0)
    }

    /// Like [`Self::entries`], but `None` when `read` was
    /// [`Scan::Unsure`] of an entry: every entry of the directory, or
    /// nothing. Kept entries always are every entry.
    pub fn whole_entries(
        &self,
        dir: &Path,
        read: Read<'_, T>,
        key: impl Fn(&T) -> &str,
    ) -> io::Result<Option<Arc<Vec<T>>>> {
        let (entries, whole) = self.listing(dir, read, key)?;
        Ok(whole.then_some(entries))
    }

    /// The sorted entries, and whether they are every entry.
    fn listing(
        &self,
        dir: &Path,
        read: Read<'_, T>,
        key: impl Fn(&T) -> &str,
    ) -> io::Result<(Arc<Vec<T>>, bool)> {
        let stamp = Stamp::of(&std::fs::metadata(dir)?);
        let mut kept = self.lock();
        if let Some(k) = self.current(&mut kept, dir, stamp, read) {
            if let (None, Some((_, files))) = (&k.sorted, &k.watched) {
                k.sorted = Some(sorted(files, &key));
            }
            if let Some(s) = &k.sorted {
                return Ok((s.clone(), true));
            }
        }
        drop(kept);
        self.scan(dir, stamp, read, &key)
    }

    /// The entries whose key is `wanted`, when the index is watched and
    /// current (a new scan is made if needed); `None` when it is not
    /// watched, and the caller must look at the directory itself.
    pub fn lookup(
        &self,
        dir: &Path,
        read: Read<'_, T>,
        key: impl Fn(&T) -> &str,
        wanted: &str,
    ) -> io::Result<Option<Vec<T>>> {
        if !self.may_watch() {
            return Ok(None);
        }
        let stamp = Stamp::of(&std::fs::metadata(dir)?);
        let mut kept = self.lock();
        if self.current(&mut kept, dir, stamp, read).is_none() {
            drop(kept);
            self.scan(dir, stamp, read, &key)?;
            kept = self.lock();
        }
        // Entries' file names start with their key: `<key>.<suffix>`.
        Ok(kept
            .as_ref()
            .and_then(|k| k.watched.as_ref())
            .map(|(_, files)| {
                files
                    .range(OsString::from(wanted)..)
                    .take_while(|(f, _)| f.as_encoded_bytes().starts_with(wanted.as_bytes()))
                    .filter(|(_, t)| key(t) == wanted)
                    .map(|(_, t)| t.clone())
                    .collect()
            }))
    }

    /// The kept entries if they still tell the directory, brought up to
    /// date with its watch's events; `None` (and nothing kept) if a new
    /// scan is needed.
    fn current<'k>(
        &self,
        kept: &'k mut Option<Kept<T>>,
        dir: &Path,
        stamp: Stamp,
        read: Read<'_, T>,
    ) -> Option<&'k mut Kept<T>> {
        let k = kept.as_mut()?;
        let fresh = k.at.elapsed() < MAX_AGE;
        let same = match &k.watched {
            // Another directory at the path (a mount over it, a new one).
            Some(_) => (k.stamp.dev, k.stamp.ino) == (stamp.dev, stamp.ino),
            None => k.stamp == stamp,
        };
        if !fresh || !same || (k.watched.is_some() && !apply_events(k, dir, read)) {
            *kept = None;
            return None;
        }
        kept.as_mut()
    }

    fn scan(
        &self,
        dir: &Path,
        stamp: Stamp,
        read: Read<'_, T>,
        key: &impl Fn(&T) -> &str,
    ) -> io::Result<(Arc<Vec<T>>, bool)> {
        // The watch first: a change during the scan is then an event too.
        let watch = if self.may_watch() {
            let w = add_watch(dir);
            if w.is_none() {
                *self
                    .unwatched_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + WATCH_RETRY);
            }
            w
        } else {
            None
        };
        // Whether the last change was a clock tick before the read began
        // (not before it ended): a change during a slow read in that same
        // tick would leave the timestamps as they are.
        let began = SystemTime::now();
        let mut unsure = false;
        let mut files = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let Ok(e) = e else {
                unsure = true;
                continue;
            };
            let name = e.file_name();
            match read(&name, e.file_type()) {
                Scan::Entry(t) => {
                    files.insert(name, t);
                }
                Scan::Skip => {}
                Scan::Unsure => unsure = true,
            }
        }
        let (keep, sorted) = match watch {
            Some(fd) if !unsure => {
                let sorted = sorted(&files, key);
                let kept = Kept {
                    stamp,
                    at: Instant::now(),
                    sorted: Some(sorted.clone()),
                    watched: Some((fd, files)),
                };
                (Some(kept), sorted)
            }
            // Kept only if the directory did not change during the scan
            // and its last change is older than a clock tick.
            _ => {
                let mut v: Vec<T> = files.into_values().collect();
                v.sort_by(|a, b| key(a).cmp(key(b)));
                let sorted = Arc::new(v);
                let after = Stamp::of(&std::fs::metadata(dir)?);
                let kept = (after == stamp && stamp.settled_at(began) && !unsure).then(|| Kept {
                    stamp,
                    at: Instant::now(),
                    sorted: Some(sorted.clone()),
                    watched: None,
                });
                (kept, sorted)
            }
        };
        *self.lock() = keep;
        Ok((sorted, !unsure))
    }
}

impl<T> DirIndex<T> {
    /// Watched, and not refused a watch lately.
    fn may_watch(&self) -> bool {
        self.watch
            && self
                .unwatched_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|t| Instant::now() >= t)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept<T>>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn sorted<T: Clone>(files: &BTreeMap<OsString, T>, key: &impl Fn(&T) -> &str) -> Arc<Vec<T>> {
    let mut v: Vec<T> = files.values().cloned().collect();
    v.sort_by(|a, b| key(a).cmp(key(b)));
    Arc::new(v)
}

/// A non-blocking inotify descriptor watching `dir`, or `None` when its
/// filesystem may be shared with other machines (inotify does not see
/// their changes) or the kernel gives none (its limits): the index then
/// keeps to timestamps.
fn add_watch(dir: &Path) -> Option<OwnedFd> {
    use crate::fsutil::{filesystem_of, FsKind};
    match filesystem_of(dir) {
        Some(FsKind::Memory | FsKind::LocalDisk) => {}
        Some(FsKind::Other(magic)) => {
            tracing::debug!(dir = %dir.display(), magic, "not watched: a filesystem other machines may change");
            return None;
        }
        None => return None,
    }
    let made = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
        .and_then(|fd| inotify::add_watch(&fd, dir, watch_flags()).map(|_| fd));
    match made {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "no inotify watch ({e}); the directory's timestamps tell its changes instead");
            None
        }
    }
}

/// The largest inotify event: its header and a name of NAME_MAX bytes
/// with its NUL.
const EVENT_MAX: usize = 16 + 256;

/// The first event in `buf` (as read from an inotify descriptor): its mask,
/// its name without the NUL padding, and what follows it.
fn next_event(buf: &[u8]) -> Option<(u32, &[u8], &[u8])> {
    let word =
        |i: usize| -> Option<u32> { Some(u32::from_ne_bytes(buf.get(i..i + 4)?.try_into().ok()?)) };
    let (mask, len) = (word(4)?, word(12)? as usize);
    let name = buf.get(16..16 + len)?;
    let end = name.iter().position(|b| *b == 0).unwrap_or(len);
    Some((mask, &name[..end], &buf[16 + len..]))
}

/// Re-reads every name the watch reported since the last call. False when
/// the kept entries cannot be trusted any more (events lost, the directory
/// gone or unmounted, a name that could not be read, the watch broken).
fn apply_events<T>(k: &mut Kept<T>, dir: &Path, read: Read<'_, T>) -> bool {
    let Some((fd, files)) = k.watched.as_mut() else {
        return true;
    };
    use inotify::ReadFlags as R;
    let mut changed = BTreeSet::new();
    let gone = R::QUEUE_OVERFLOW | R::IGNORED | R::UNMOUNT | R::DELETE_SELF | R::MOVE_SELF;
    let mut buf = [0u8; 8192];
    loop {
        let n = match rustix::io::read(&*fd, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => break,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        };
        let mut at = &buf[..n];
        while let Some((mask, name, rest)) = next_event(at) {
            if R::from_bits_retain(mask).intersects(gone) {
                return false;
            }
            if !name.is_empty() {
                use std::os::unix::ffi::OsStrExt;
                changed.insert(OsStr::from_bytes(name).to_owned());
            }
            at = rest;
        }
        if !at.is_empty() {
            return false; // not whole events: read the directory again
        }
        // The kernel hands out whole events: when one more of the largest
        // kind would have fit, the queue was empty as this read took it,
        // and every change made before this call is in what was read.
        if n + EVENT_MAX <= buf.len() {
            break;
        }
    }
    if changed.is_empty() {
        return true;
    }
    for name in changed {
        let kind = std::fs::symlink_metadata(dir.join(&name)).map(|m| m.file_type());
        if matches!(&kind, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            files.remove(&name);
            continue;
        }
        match read(&name, kind) {
            Scan::Entry(t) => {
                files.insert(name, t);
            }
            Scan::Skip => {
                files.remove(&name);
            }
            Scan::Unsure => return false,
        }
    }
    k.sorted = None;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &OsStr, _: io::Result<FileType>) -> Scan<String> {
        let n = name.to_str().unwrap();
        match n.strip_suffix(".raw") {
            Some(n) => Scan::Entry(n.to_string()),
            None => Scan::Skip,
        }
    }

    fn any(name: &OsStr, _: io::Result<FileType>) -> Scan<String> {
        Scan::Entry(name.to_str().unwrap().to_string())
    }

    fn names(i: &DirIndex<String>, dir: &Path) -> Vec<String> {
        i.entries(dir, &mut raw, |n| n).unwrap().to_vec()
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
        let first = i.entries(t.path(), &mut any, |n| n).unwrap();
        assert!(
            Arc::ptr_eq(&first, &i.entries(t.path(), &mut any, |n| n).unwrap()),
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
        let now_ = SystemTime::now();
        assert!(at(fine.as_secs() as i64, fine.subsec_nanos() as i64).settled_at(now_));
        assert!(!at(secs, 0).settled_at(now_));
        assert!(at(secs - 3, 0).settled_at(now_));
        // Judged when the read began: the same stamp, a second earlier, was
        // fresh.
        assert!(!at(fine.as_secs() as i64, fine.subsec_nanos() as i64)
            .settled_at(now_ - Duration::from_secs(1)));
    }

    #[test]
    fn a_scan_right_after_a_change_is_not_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.raw"), b"").unwrap();
        let i = DirIndex::default();
        let first = i.entries(t.path(), &mut any, |n| n).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &i.entries(t.path(), &mut any, |n| n).unwrap()),
            "too fresh to keep"
        );
    }

    #[test]
    fn a_scan_that_could_not_read_an_entry_is_not_kept() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.raw"), b"").unwrap();
        std::thread::sleep(SETTLE);
        let i = DirIndex::default();
        let mut unsure = |_: &OsStr, _: io::Result<FileType>| Scan::<String>::Unsure;
        assert!(i.entries(t.path(), &mut unsure, |n| n).unwrap().is_empty());
        assert!(
            i.whole_entries(t.path(), &mut unsure, |n| n)
                .unwrap()
                .is_none(),
            "not every entry: nothing"
        );
        // Read again (not the unsure answer kept): now it is there.
        assert_eq!(names(&i, t.path()), ["a"]);
        let kept = i.whole_entries(t.path(), &mut unsure, |n| n).unwrap();
        assert_eq!(
            kept.unwrap().as_slice(),
            ["a"],
            "kept entries are every entry"
        );
    }

    /// A read that counts the entries it was asked about.
    fn counting(
        n: &std::cell::Cell<usize>,
    ) -> impl FnMut(&OsStr, io::Result<FileType>) -> Scan<String> + '_ {
        move |name, kind| {
            n.set(n.get() + 1);
            raw(name, kind)
        }
    }

    /// The index's entries of `dir`, counting the ones read.
    fn listed(i: &DirIndex<String>, dir: &Path, reads: &std::cell::Cell<usize>) -> Vec<String> {
        i.entries(dir, &mut counting(reads), |n| n)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_watched_index_rereads_only_the_names_that_changed() {
        let t = tempfile::tempdir().unwrap();
        let touch = |n: &str| std::fs::write(t.path().join(n), b"").unwrap();
        for i in 0..100 {
            touch(&format!("v{i:03}.raw"));
        }
        let i = DirIndex::watched();
        let reads = std::cell::Cell::new(0);
        let list = |reads: &std::cell::Cell<usize>| listed(&i, t.path(), reads);
        assert_eq!(list(&reads).len(), 100);
        assert_eq!(reads.get(), 100, "the first call scans");
        // No settling wait: a change at once is seen, and costs its name.
        reads.set(0);
        touch("new.raw");
        std::fs::remove_file(t.path().join("v000.raw")).unwrap();
        std::fs::rename(t.path().join("v001.raw"), t.path().join("moved.raw")).unwrap();
        let got = list(&reads);
        assert_eq!(got.len(), 100);
        assert!(got.contains(&"new".into()) && got.contains(&"moved".into()));
        assert!(!got.contains(&"v000".into()) && !got.contains(&"v001".into()));
        assert_eq!(
            reads.get(),
            2,
            "read again: new.raw and moved.raw (gone ones need no read)"
        );
        reads.set(0);
        assert_eq!(list(&reads).len(), 100);
        assert_eq!(reads.get(), 0, "unchanged: nothing read");
    }

    #[test]
    fn a_watched_index_takes_in_more_events_than_one_read_holds() {
        let t = tempfile::tempdir().unwrap();
        // 54-byte names make 80-byte events, which do not fill the 8 KiB
        // buffer exactly: a full read comes back 32 bytes short of it.
        let name = |n: usize| format!("a-rather-long-volume-name-that-goes-on-and-on-{n:04}.raw");
        for n in 1000..2000 {
            std::fs::write(t.path().join(name(n)), b"").unwrap();
        }
        let i = DirIndex::watched();
        let reads = std::cell::Cell::new(0);
        let list = |reads: &std::cell::Cell<usize>| listed(&i, t.path(), reads);
        assert_eq!(list(&reads).len(), 1000);
        // 1,000 creations and 500 removals queue about 120 KiB of events:
        // several reads of the 8 KiB buffer, every one of them taken in.
        reads.set(0);
        for n in 0..1000 {
            std::fs::write(t.path().join(name(n)), b"").unwrap();
        }
        for n in (0..1000).step_by(2) {
            std::fs::remove_file(t.path().join(name(n))).unwrap();
        }
        let got = list(&reads);
        let want: Vec<String> = (1..1000)
            .step_by(2)
            .chain(1000..2000)
            .map(|n| name(n).trim_end_matches(".raw").to_string())
            .collect();
        assert_eq!(got, want);
        assert_eq!(
            reads.get(),
            500,
            "the names that came and stayed are read, not the whole directory again"
        );
    }

    #[test]
    fn inotify_events_are_parsed_whole_and_padding_dropped() {
        let mut buf = Vec::new();
        for (mask, name) in [(0x100u32, &b"a.raw\0\0\0"[..]), (0x200, &b""[..])] {
            buf.extend_from_slice(&7i32.to_ne_bytes());
            buf.extend_from_slice(&mask.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            buf.extend_from_slice(name);
        }
        let (mask, name, rest) = next_event(&buf).unwrap();
        assert_eq!((mask, name), (0x100, &b"a.raw"[..]));
        let (mask, name, rest) = next_event(rest).unwrap();
        assert_eq!((mask, name, rest), (0x200, &b""[..], &b""[..]));
        assert!(next_event(&buf[..20]).is_none(), "a cut-off event is none");
    }

    #[test]
    fn a_lookup_finds_every_format_of_a_name_and_only_that_name() {
        let t = tempfile::tempdir().unwrap();
        for n in ["a.raw", "a.qcow2", "a.b.raw", "ab.raw", "b.raw"] {
            std::fs::write(t.path().join(n), b"").unwrap();
        }
        let format = |name: &OsStr, _: io::Result<FileType>| {
            let n = name.to_str().unwrap();
            match n.rsplit_once('.') {
                Some((stem, ext)) => Scan::Entry((stem.to_string(), ext.to_string())),
                None => Scan::Skip,
            }
        };
        let look = |i: &DirIndex<(String, String)>, name: &str| {
            let mut f = format;
            i.lookup(t.path(), &mut f, |(n, _)| n, name).unwrap()
        };
        assert_eq!(
            look(&DirIndex::default(), "a"),
            None,
            "not watched: ask the directory"
        );
        let i = DirIndex::watched();
        let mut got = look(&i, "a").unwrap();
        got.sort();
        assert_eq!(
            got,
            [("a".into(), "qcow2".into()), ("a".into(), "raw".into())]
        );
        assert_eq!(look(&i, "c").unwrap(), []);
        std::fs::write(t.path().join("c.vdi"), b"").unwrap();
        assert_eq!(look(&i, "c").unwrap(), [("c".into(), "vdi".into())]);
        std::fs::remove_file(t.path().join("c.vdi")).unwrap();
        assert_eq!(look(&i, "c").unwrap(), []);
    }

    #[test]
    fn a_watched_directory_replaced_or_flooded_is_scanned_again() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("pool");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.raw"), b"").unwrap();
        let i = DirIndex::watched();
        let reads = std::cell::Cell::new(0);
        let list = |reads: &std::cell::Cell<usize>| {
            i.entries(&dir, &mut counting(reads), |n| n)
                .unwrap()
                .to_vec()
        };
        assert_eq!(list(&reads), ["a"]);
        // Another directory at the path: its own entries, by a new scan.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("b.raw"), b"").unwrap();
        assert_eq!(list(&reads), ["b"]);
        // More events than the kernel queues (max_queued_events): the
        // overflow makes the next call scan, and nothing is missed.
        let queued: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .map_or(16384, |s| s.trim().parse().unwrap());
        if queued > 40_000 {
            pool_csi_testkit::skip::skip(
                "inotify-queue",
                &format!("max_queued_events is {queued}: too many files to make here"),
            );
            return;
        }
        for n in 0..queued + 10 {
            std::fs::write(dir.join(format!("f{n}.raw")), b"").unwrap();
        }
        reads.set(0);
        assert_eq!(list(&reads).len(), queued + 11);
        assert_eq!(reads.get(), queued + 11, "a whole new scan");
    }

    #[test]
    fn a_directory_other_machines_may_change_is_not_watched() {
        // procfs stands in for NFS, CIFS or FUSE: not a known local filesystem.
        let i = DirIndex::watched();
        let mut any = any;
        assert_eq!(
            i.lookup(Path::new("/proc/sys"), &mut any, |n| n, "kernel")
                .unwrap(),
            None,
            "ask the directory"
        );
        assert!(!i.may_watch(), "not tried again before WATCH_RETRY");
        // Listings still work, on timestamps.
        let listed = i.entries(Path::new("/proc/sys"), &mut any, |n| n).unwrap();
        assert!(listed.contains(&"kernel".to_string()));
    }
}
