//! `/proc/self/mountinfo`, parsed. The mount table is the node's record of
//! what is staged and published: nothing else is stored.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// major:minor of the mounted device.
    pub dev: (u32, u32),
    /// The path inside the source filesystem that is mounted (binds: a subdir).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (ro/rw, nosuid …).
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

impl MountEntry {
    pub fn is_read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Parses the whole table; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let mut it = line.split(' ');
    let _id = it.next()?;
    let _parent = it.next()?;
    let (maj, min) = it.next()?.split_once(':')?;
    let root = unescape(it.next()?);
    let mount_point = unescape(it.next()?);
    let options = it.next()?.to_string();
    // optional fields until "-"
    for f in it.by_ref() {
        if f == "-" {
            break;
        }
    }
    let fs_type = it.next()?.to_string();
    let source = unescape(it.next()?).to_string_lossy().into_owned();
    Some(MountEntry {
        dev: (maj.parse().ok()?, min.parse().ok()?),
        root,
        mount_point,
        options,
        fs_type,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Reads and parses a mountinfo file.
pub fn read(path: &Path) -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string(path)?))
}

/// The topmost mount at exactly `mount_point`.
pub fn find_at<'a>(table: &'a [MountEntry], mount_point: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|m| m.mount_point == mount_point)
}

/// The mount `path` (absolute, without links) is under: the topmost of
/// the deepest mount points it starts with.
pub fn under<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
43 22 7:0 / /var/lib/kubelet/plugins/kubernetes.io/csi/pool-csi.io/abc/globalmount rw,relatime shared:30 - ext4 /dev/loop0 rw
44 22 7:0 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1/mount ro,relatime shared:30 - ext4 /dev/loop0 rw
45 22 0:5 /loop3 /var/lib/kubelet/plugins/x/block rw,nosuid master:2 - devtmpfs udev rw,size=1k
46 22 0:40 / /tmp/with\\040space rw - fuse /dev/fuse rw
";

    #[test]
    fn parses_real_lines() {
        let t = parse(TABLE);
        assert_eq!(t.len(), 5);
        assert_eq!(t[1].dev, (7, 0));
        assert_eq!(t[1].source, "/dev/loop0");
        assert_eq!(t[1].fs_type, "ext4");
        assert!(!t[1].is_read_only());
        assert!(t[2].is_read_only());
        assert_eq!(t[3].root, Path::new("/loop3"));
        assert_eq!(t[4].mount_point, Path::new("/tmp/with space"));
        assert!(find_at(&t, Path::new("/tmp/with space")).is_some());
        assert!(find_at(&t, Path::new("/tmp/with")).is_none());
    }

    #[test]
    fn a_path_is_under_the_topmost_of_its_deepest_mount_points() {
        let mut t = parse(TABLE);
        let at = |t: &[MountEntry], p: &str| under(t, Path::new(p)).map(|m| m.dev);
        assert_eq!(at(&t, "/etc/hosts"), Some((253, 1)));
        assert_eq!(at(&t, "/tmp/with space/x"), Some((0, 40)));
        assert_eq!(at(&t, "/tmp/with"), Some((253, 1)), "whole components only");
        // Another filesystem mounted over the same point hides the first.
        t.extend(parse(
            "47 46 0:41 / /tmp/with\\040space rw - tmpfs tmpfs rw\n",
        ));
        assert_eq!(at(&t, "/tmp/with space/x"), Some((0, 41)));
        assert_eq!(under(&[], Path::new("/x")).map(|m| m.dev), None);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        assert!(parse("garbage\n1 2 x / / rw - ext4 /dev/a rw\n").is_empty());
    }
}
