//! Multipath maps: device-mapper devices whose uuid starts with `mpath-`
//! (`<sysfs>/block/dm-N/dm/{uuid,name}`, size from `dm-N/size`), joined with
//! `multipathd show maps` where the daemon runs. Configuring multipath stays
//! with the administrator, as in libvirt.

use super::scsi::Lun;
use crate::exec::{Cmd, CommandRunner, ExecError};
use std::{collections::BTreeMap, io, path::Path, time::Duration};

/// One map as multipathd names it: (name, dm device, wwid).
type Named = (String, String, String);

/// `multipathd show maps raw format "%n %d %w"`; None when multipathd is
/// not installed or not running (sysfs alone then lists the maps).
pub async fn multipathd_maps(runner: &dyn CommandRunner) -> Option<Vec<Named>> {
    let cmd = Cmd::new("multipathd")
        .args(["show", "maps", "raw", "format", "%n %d %w"])
        .timeout(Duration::from_secs(10));
    match runner.run(&cmd).await {
        Ok(out) if out.status == 0 => Some(parse_maps(&out.stdout_str())),
        Ok(out) => {
            tracing::debug!(status = out.status, stderr = %out.stderr_str(), "multipathd is not answering; listing maps from sysfs");
            None
        }
        Err(ExecError::Spawn { .. }) => None,
        Err(e) => {
            tracing::debug!(error = %e, "multipathd failed; listing maps from sysfs");
            None
        }
    }
}

fn parse_maps(text: &str) -> Vec<Named> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (n, d, w) = (f.next()?, f.next()?, f.next()?);
            let dm_ok = d
                .strip_prefix("dm-")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            dm_ok.then(|| (n.to_string(), d.to_string(), w.to_string()))
        })
        .collect()
}

/// Every multipath map with its size; `named` (from multipathd) adds maps
/// and names sysfs alone would not give. Sorted by name. A map that goes
/// away while it is read is left out; any other read error fails the
/// listing.
pub fn maps(sysfs: &Path, named: Option<&[Named]>) -> io::Result<Vec<Lun>> {
    // NotFound: the map went away meanwhile (or has no such attribute).
    let read = |p: &Path| match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
    };
    let mut by_wwid: BTreeMap<String, (String, String)> = BTreeMap::new();
    let entries = match std::fs::read_dir(sysfs.join("block")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        r => Some(r?),
    };
    for e in entries.into_iter().flatten() {
        let e = e?;
        let dm = e.file_name().to_string_lossy().into_owned();
        if !dm.starts_with("dm-") {
            continue;
        }
        let uuid = read(&e.path().join("dm/uuid"))?.unwrap_or_default();
        if let Some(wwid) = uuid.strip_prefix("mpath-") {
            let name = read(&e.path().join("dm/name"))?.unwrap_or_default();
            by_wwid.insert(wwid.to_string(), (name, dm));
        }
    }
    for (name, dm, wwid) in named.unwrap_or_default() {
        by_wwid
            .entry(wwid.clone())
            .or_insert_with(|| (name.clone(), dm.clone()));
    }
    let mut out = Vec::new();
    // The name becomes /dev/mapper/<name>: a plain file name only.
    for (wwid, (name, dm)) in by_wwid.into_iter().filter(|(_, (n, _))| is_map_name(n)) {
        let size_file = sysfs.join("block").join(&dm).join("size");
        let Some(size) = read(&size_file)? else {
            continue;
        };
        let sectors: u64 = size.parse().map_err(|_| {
            io::Error::other(format!("{}: {size:?} is not a number", size_file.display()))
        })?;
        out.push(Lun {
            number: 0,
            size: sectors * 512,
            identity: wwid,
            address: format!("{name} ({dm})"),
            device: Some(Path::new("/dev/mapper").join(&name)),
        });
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(out)
}

/// The multipath map that holds disk `disk` (`sdX`): its name, from
/// `<sysfs>/block/<disk>/holders/dm-N` whose uuid starts `mpath-`.
pub fn holder(sysfs: &Path, disk: &str) -> Option<String> {
    let holders = std::fs::read_dir(sysfs.join("block").join(disk).join("holders")).ok()?;
    holders.flatten().find_map(|h| {
        let dm = sysfs.join("block").join(h.file_name()).join("dm");
        let uuid = std::fs::read_to_string(dm.join("uuid")).ok()?;
        let name = std::fs::read_to_string(dm.join("name")).ok()?;
        let name = name.trim();
        (uuid.starts_with("mpath-") && is_map_name(name)).then(|| name.to_string())
    })
}

/// A device-mapper name that stays inside /dev/mapper.
fn is_map_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

#[cfg(test)]
pub(crate) mod fixture {
    use std::path::Path;

    /// `<sysfs>/block/dm-N` with dm/name, dm/uuid and size, as the kernel shows it.
    pub fn dm(sysfs: &Path, n: u32, name: &str, uuid: &str, mib: u64) {
        let d = sysfs.join(format!("block/dm-{n}"));
        std::fs::create_dir_all(d.join("dm")).unwrap();
        std::fs::write(d.join("dm/name"), format!("{name}\n")).unwrap();
        std::fs::write(d.join("dm/uuid"), format!("{uuid}\n")).unwrap();
        std::fs::write(d.join("size"), format!("{}\n", mib * 2048)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::{fixture::dm, *};
    use crate::exec::fake::{FakeRunner, Reply};

    const SHOW_MAPS: &str = "mpatha dm-0 3600140512345678901234567890abcd0\nmpathb dm-2 3600140598765432109876543210dcba0\n";

    #[tokio::test]
    async fn maps_come_from_sysfs_and_multipathd() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        dm(
            s,
            0,
            "mpatha",
            "mpath-3600140512345678901234567890abcd0",
            100,
        );
        dm(s, 1, "vg0-lv0", "LVM-abc", 50); // not a multipath map
        dm(s, 3, "mpathc", "mpath-36001405aaaa", 10); // multipathd does not list it
                                                      // multipathd also knows mpathb, whose dm-2 shows no uuid here.
        let d2 = s.join("block/dm-2");
        std::fs::create_dir_all(&d2).unwrap();
        std::fs::write(d2.join("size"), "40960\n").unwrap();
        let runner = FakeRunner::new().expect(
            ["multipathd", "show", "maps", "raw", "format", "%n %d %w"],
            Reply::ok().stdout(SHOW_MAPS),
        );
        let named = multipathd_maps(&runner).await;
        let got = maps(s, named.as_deref()).unwrap();
        let summary: Vec<(&str, u64, &str)> = got
            .iter()
            .map(|l| (l.address.as_str(), l.size >> 20, l.identity.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("mpatha (dm-0)", 100, "3600140512345678901234567890abcd0"),
                ("mpathb (dm-2)", 20, "3600140598765432109876543210dcba0"),
                ("mpathc (dm-3)", 10, "36001405aaaa"),
            ]
        );
        assert_eq!(
            got[0].device.as_deref(),
            Some(Path::new("/dev/mapper/mpatha"))
        );
    }

    #[tokio::test]
    async fn without_multipathd_sysfs_is_enough() {
        let t = tempfile::tempdir().unwrap();
        dm(t.path(), 0, "mpatha", "mpath-3600a", 8);
        let runner = FakeRunner::new().expect(
            ["multipathd", "show", "maps", "raw", "format", "%n %d %w"],
            Reply::exit(1).stderr("error -104 receiving packet\n"),
        );
        let named = multipathd_maps(&runner).await;
        assert!(named.is_none());
        assert_eq!(maps(t.path(), None).unwrap().len(), 1);
        assert!(maps(&t.path().join("nothing"), None).unwrap().is_empty());
        let odd: Vec<Named> = vec![("../x".into(), "dm-0".into(), "3600c".into())];
        dm(t.path(), 1, "..", "mpath-3600b", 8);
        assert_eq!(
            maps(t.path(), Some(&odd)).unwrap().len(),
            1,
            "names that leave /dev/mapper are skipped"
        );
        // A uuid that cannot be read fails the listing.
        std::fs::remove_file(t.path().join("block/dm-0/dm/uuid")).unwrap();
        std::fs::create_dir(t.path().join("block/dm-0/dm/uuid")).unwrap();
        let e = maps(t.path(), None).unwrap_err();
        assert!(e.to_string().contains("dm-0"), "{e}");
    }
}
