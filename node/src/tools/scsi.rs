//! SCSI disks as the kernel shows them in sysfs: HBAs
//! (`class/scsi_host/hostN`, Fibre Channel names in `class/fc_host/hostN`),
//! their LUNs (`bus/scsi/devices/H:C:T:L` with `type`, `wwid`, `state` and
//! `block/<sdX>/size`). No command is needed; a bus rescan is a write to the
//! host's `scan` file.

use pool_csi_common::pool_spec::AdapterWwn;
use std::{
    io,
    path::{Path, PathBuf},
};

/// A LUN, whichever transport found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    /// The LUN number on its target (the L of H:C:T:L).
    pub number: u32,
    pub size: u64,
    /// Stable identity: the device identifier (VPD 0x83 / WWN) or unit
    /// serial where the device reports one, else its address.
    pub identity: String,
    /// Where it is, for people: `LUN 3`, `2:0:1:3 (sdc)`, `mpatha (dm-0)`.
    pub address: String,
    /// Its block device on this node, where the listing shows one (SCSI
    /// disks, multipath maps; an iSCSI inventory is taken without logging in).
    pub device: Option<PathBuf>,
}

/// SCSI peripheral type of a disk (SBC); other types (enclosures, tapes,
/// CD-ROMs) are never handed out.
const TYPE_DISK: &str = "0";

/// The HBA a pool names: `hostN` as given, or the Fibre Channel host whose
/// node and port names match (and, with `parent`, that hangs off it).
pub fn resolve_adapter(
    sysfs: &Path,
    name: Option<&str>,
    wwn: Option<&AdapterWwn>,
) -> Result<String, String> {
    if let Some(n) = name {
        return if sysfs.join("class/scsi_host").join(n).exists() {
            Ok(n.to_string())
        } else {
            Err(format!(
                "SCSI host {n} does not exist on this node (no {})",
                sysfs.join("class/scsi_host").join(n).display()
            ))
        };
    }
    let w = wwn.ok_or("no adapter given")?;
    let fc = sysfs.join("class/fc_host");
    let read = |h: &Path, f: &str| {
        std::fs::read_to_string(h.join(f))
            .map(|s| s.trim().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let mut hosts: Vec<PathBuf> = std::fs::read_dir(&fc)
        .map_err(|e| format!("no Fibre Channel HBAs on this node ({}: {e})", fc.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    hosts.sort();
    let found = hosts.iter().find(|h| {
        read(h, "node_name") == w.wwnn.to_ascii_lowercase()
            && read(h, "port_name") == w.wwpn.to_ascii_lowercase()
    });
    let host = found.ok_or_else(|| {
        format!(
            "no Fibre Channel HBA with wwnn {} and wwpn {} on this node",
            w.wwnn, w.wwpn
        )
    })?;
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(parent) = &w.parent {
        // A vHBA's device sits below its parent's: …/host5/vport-5:0-0/host7.
        let real =
            std::fs::canonicalize(sysfs.join("class/scsi_host").join(&name)).unwrap_or_default();
        let under = real.components().any(|c| c.as_os_str() == parent.as_str());
        if !under {
            return Err(format!(
                "the HBA with wwpn {} is {name}, which is not a child of {parent}",
                w.wwpn
            ));
        }
    }
    Ok(name)
}

/// Creates the NPIV vHBA `w` on its `parent` HBA, as libvirt's
/// `vport_create` does: writes `wwpn:wwnn` (16 hex digits each) to
/// `class/fc_host/<parent>/vport_create`; the kernel makes the new fc_host
/// within the write. An HBA that cannot make virtual ports (no such file)
/// is said so.
pub fn create_vport(sysfs: &Path, w: &AdapterWwn) -> Result<(), String> {
    let parent = w.parent.as_deref().ok_or("no parent HBA given")?;
    let file = sysfs
        .join("class/fc_host")
        .join(parent)
        .join("vport_create");
    if !file.exists() {
        return Err(format!(
            "{parent} cannot create NPIV virtual ports (no {})",
            file.display()
        ));
    }
    let hex = |s: &str| s.trim_start_matches("0x").to_ascii_lowercase();
    std::fs::write(&file, format!("{}:{}", hex(&w.wwpn), hex(&w.wwnn)))
        .map_err(|e| format!("create the vHBA with wwpn {} on {parent}: {e}", w.wwpn))
}

/// Asks the kernel to rescan every channel, target and LUN of `host`
/// (blocking: the scan runs inside the write).
pub fn rescan(sysfs: &Path, host: &str) -> std::io::Result<()> {
    std::fs::write(
        sysfs.join("class/scsi_host").join(host).join("scan"),
        "- - -",
    )
}

/// The disks on `host` (`hostN`), sorted by address; offline ones are left
/// out (their data cannot be reached). A disk that goes away while it is
/// read is left out too; any other read error fails the listing, so a disk
/// never shows with another identity because one read failed.
pub fn disks(sysfs: &Path, host: &str) -> io::Result<Vec<Lun>> {
    let h: u32 = host
        .strip_prefix("host")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{host:?} is not a SCSI host name (hostN)")))?;
    let entries = match std::fs::read_dir(sysfs.join("bus/scsi/devices")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    };
    let mut out: Vec<(Vec<u32>, Lun)> = Vec::new();
    for e in entries {
        let e = e?;
        let addr = e.file_name().to_string_lossy().into_owned();
        let hctl: Vec<u32> = addr.split(':').filter_map(|p| p.parse().ok()).collect();
        if hctl.len() != 4 || hctl[0] != h {
            continue;
        }
        match disk(&e.path(), host, &addr, &hctl) {
            Ok(Some(lun)) => out.push((hctl, lun)),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // gone meanwhile
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("reading SCSI device {addr}: {e}"),
                ))
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out.into_iter().map(|(_, l)| l).collect())
}

/// One unit as a [`Lun`]; None when it is not a disk pool-csi may hand out.
fn disk(unit: &Path, host: &str, addr: &str, hctl: &[u32]) -> io::Result<Option<Lun>> {
    let attr = |f: &str| std::fs::read_to_string(unit.join(f)).map(|s| s.trim().to_string());
    if attr("type")? != TYPE_DISK || attr("state")? == "offline" {
        return Ok(None);
    }
    let Some(block) = first_entry(&unit.join("block")) else {
        return Ok(None); // not (yet) bound to sd
    };
    let size = std::fs::read_to_string(unit.join("block").join(&block).join("size"))?;
    let sectors: u64 = size
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("size {size:?} is not a number")))?;
    Ok(Some(Lun {
        number: hctl[3],
        size: sectors * 512,
        identity: unit_wwid(unit)?
            .unwrap_or_else(|| format!("{host}:{}:{}:{}", hctl[1], hctl[2], hctl[3])),
        address: format!("{addr} ({block})"),
        device: Some(Path::new("/dev").join(&block)),
    }))
}

/// A unit's device identifier (VPD page 0x83, the `wwid` attribute); None
/// when the device reports none (the kernel answers ENXIO or EINVAL, or an
/// old kernel has no attribute).
pub fn unit_wwid(unit: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(unit.join("wwid")) {
        Ok(w) => Ok(Some(w.trim().to_string()).filter(|w| !w.is_empty())),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || [rustix::io::Errno::NXIO, rustix::io::Errno::INVAL]
                    .iter()
                    .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A unit's serial number (VPD page 0x80 as the kernel cached it,
/// `vpd_pg80`) as an identity (`serial:<sn>`); None when the device
/// reports none.
pub fn unit_serial(unit: &Path) -> io::Result<Option<String>> {
    let page = match std::fs::read(unit.join("vpd_pg80")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        r => r?,
    };
    let len = page
        .get(2..4)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let sn = page.get(4..(4 + len).min(page.len())).unwrap_or_default();
    let sn = String::from_utf8_lossy(sn);
    let sn = sn.trim_matches(|c: char| c == ' ' || c == '\0');
    Ok((!sn.is_empty()).then(|| format!("serial:{sn}")))
}

/// Asks the kernel to read a unit's inquiry data and VPD pages again
/// (blocking), so identities read after it are the device's, not cached.
pub fn rescan_unit(unit: &Path) -> io::Result<()> {
    std::fs::write(unit.join("rescan"), "1")
}

/// The disk with `identity` on `host`, and its unit directory.
pub fn find(sysfs: &Path, host: &str, identity: &str) -> io::Result<Option<(PathBuf, Lun)>> {
    let lun = disks(sysfs, host)?
        .into_iter()
        .find(|l| l.identity == identity);
    Ok(lun.map(|l| {
        let addr = l.address.split(' ').next().unwrap_or_default().to_string();
        (sysfs.join("bus/scsi/devices").join(addr), l)
    }))
}

fn first_entry(dir: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}

#[cfg(test)]
pub(crate) mod fixture {
    use std::path::Path;

    /// Lays out an HBA and its LUNs as the kernel does:
    /// `devices/…/hostN/targetH:C:T/H:C:T:L` with `class/scsi_host/hostN`
    /// and `bus/scsi/devices/H:C:T:L` as links into it.
    pub fn hba(sysfs: &Path, host: u32, parent: Option<u32>) {
        let base = match parent {
            Some(p) => format!("devices/pci0000:00/0000:00:1f.2/host{p}/vport-{p}:0-0/host{host}"),
            None => format!("devices/pci0000:00/0000:00:1f.2/host{host}"),
        };
        let sh = sysfs.join(&base).join(format!("scsi_host/host{host}"));
        std::fs::create_dir_all(&sh).unwrap();
        std::fs::write(sh.join("scan"), "").unwrap();
        let class = sysfs.join("class/scsi_host");
        std::fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&sh, class.join(format!("host{host}"))).unwrap();
    }

    pub fn fc_names(sysfs: &Path, host: u32, wwnn: &str, wwpn: &str) {
        let d = sysfs.join(format!("class/fc_host/host{host}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("node_name"), format!("{wwnn}\n")).unwrap();
        std::fs::write(d.join("port_name"), format!("{wwpn}\n")).unwrap();
    }

    /// A LUN at `h:c:t:l` of SCSI type `kind` with block device `sd` of `mib` MiB.
    pub fn lun(sysfs: &Path, hctl: [u32; 4], kind: u8, sd: &str, mib: u64, wwid: Option<&str>) {
        let [h, c, t, l] = hctl;
        let addr = format!("{h}:{c}:{t}:{l}");
        let dev = sysfs.join(format!(
            "devices/pci0000:00/0000:00:1f.2/host{h}/target{h}:{c}:{t}/{addr}"
        ));
        std::fs::create_dir_all(dev.join("block").join(sd)).unwrap();
        std::fs::write(dev.join("type"), format!("{kind}\n")).unwrap();
        std::fs::write(dev.join("state"), "running\n").unwrap();
        if let Some(w) = wwid {
            std::fs::write(dev.join("wwid"), format!("{w}\n")).unwrap();
        }
        std::fs::write(
            dev.join("block").join(sd).join("size"),
            format!("{}\n", mib * 2048),
        )
        .unwrap();
        let bus = sysfs.join("bus/scsi/devices");
        std::fs::create_dir_all(&bus).unwrap();
        std::os::unix::fs::symlink(&dev, bus.join(addr)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::{fixture::*, *};

    #[test]
    fn disks_of_one_hba_with_sizes_and_identities() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        hba(s, 2, None);
        hba(s, 3, None);
        lun(
            s,
            [2, 0, 1, 3],
            0,
            "sdd",
            64,
            Some("naa.600140512345678901234567890abcd0"),
        );
        lun(s, [2, 0, 1, 0], 0, "sdc", 32, None);
        lun(s, [2, 0, 0, 0], 13, "sg9", 0, None); // an enclosure
        lun(s, [3, 0, 0, 0], 0, "sde", 16, Some("naa.other"));
        std::fs::write(
            s.join("devices/pci0000:00/0000:00:1f.2/host3/target3:0:0/3:0:0:0/state"),
            "offline\n",
        )
        .unwrap();
        let got = disks(s, "host2").unwrap();
        assert_eq!(
            got,
            vec![
                Lun {
                    number: 0,
                    size: 32 << 20,
                    identity: "host2:0:1:0".into(),
                    address: "2:0:1:0 (sdc)".into(),
                    device: Some("/dev/sdc".into()),
                },
                Lun {
                    number: 3,
                    size: 64 << 20,
                    identity: "naa.600140512345678901234567890abcd0".into(),
                    address: "2:0:1:3 (sdd)".into(),
                    device: Some("/dev/sdd".into()),
                },
            ]
        );
        assert!(
            disks(s, "host3").unwrap().is_empty(),
            "offline LUNs are left out"
        );
        let (unit, lun) = find(s, "host2", "naa.600140512345678901234567890abcd0")
            .unwrap()
            .unwrap();
        assert_eq!(lun.device, Some(PathBuf::from("/dev/sdd")));
        assert_eq!(unit, s.join("bus/scsi/devices/2:0:1:3"));
        assert!(find(s, "host2", "naa.gone").unwrap().is_none());
        rescan(s, "host2").unwrap();
        let scan = s.join("class/scsi_host/host2/scan");
        assert_eq!(std::fs::read_to_string(scan).unwrap(), "- - -");
    }

    /// A wwid that cannot be read fails the listing: the disk must not
    /// show under its address instead (a claimed disk would look free).
    #[test]
    fn an_unreadable_wwid_fails_the_listing_instead_of_changing_the_identity() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        hba(s, 2, None);
        lun(s, [2, 0, 0, 1], 0, "sdc", 64, None);
        let unit = s.join("bus/scsi/devices/2:0:0:1");
        std::fs::create_dir(unit.join("wwid")).unwrap(); // reads fail (EISDIR)
        let e = disks(s, "host2").unwrap_err().to_string();
        assert!(e.contains("2:0:0:1"), "{e}");
        let e = find(s, "host2", "host2:0:0:1").unwrap_err();
        assert!(e.to_string().contains("2:0:0:1"), "{e}");
    }

    #[test]
    fn serial_numbers_come_from_the_cached_vpd_page() {
        let t = tempfile::tempdir().unwrap();
        let unit = t.path();
        assert_eq!(unit_serial(unit).unwrap(), None);
        // As tgtd answers page 0x80: space-padded to the left.
        let mut page = vec![0u8, 0x80, 0, 12];
        page.extend_from_slice(b"    orig0001");
        std::fs::write(unit.join("vpd_pg80"), &page).unwrap();
        assert_eq!(
            unit_serial(unit).unwrap().as_deref(),
            Some("serial:orig0001")
        );
        std::fs::write(unit.join("vpd_pg80"), [0u8, 0x80, 0, 0]).unwrap();
        assert_eq!(unit_serial(unit).unwrap(), None);
        rescan_unit(unit).unwrap();
        assert_eq!(std::fs::read_to_string(unit.join("rescan")).unwrap(), "1");
    }

    #[test]
    fn adapters_resolve_by_name_or_by_fibre_channel_names() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        hba(s, 5, None);
        hba(s, 7, Some(5)); // an NPIV vHBA on host5
        fc_names(s, 5, "0x20000000c9831b4a", "0x10000000c9831b4a");
        fc_names(s, 7, "0x20000000c9831b4b", "0x10000000c9831b4b");
        assert_eq!(resolve_adapter(s, Some("host5"), None).unwrap(), "host5");
        let e = resolve_adapter(s, Some("host9"), None).unwrap_err();
        assert!(e.contains("host9 does not exist"), "{e}");
        let mut w = AdapterWwn {
            wwnn: "0x20000000C9831B4B".into(),
            wwpn: "0x10000000c9831b4b".into(),
            parent: Some("host5".into()),
        };
        assert_eq!(resolve_adapter(s, None, Some(&w)).unwrap(), "host7");
        w.parent = Some("host6".into());
        let e = resolve_adapter(s, None, Some(&w)).unwrap_err();
        assert!(e.contains("not a child of host6"), "{e}");
        w.wwpn = "0x10000000c9831b4c".into();
        w.parent = None;
        let e = resolve_adapter(s, None, Some(&w)).unwrap_err();
        assert!(e.contains("no Fibre Channel HBA"), "{e}");
    }

    #[test]
    fn a_vhba_is_created_on_its_parent_as_libvirt_does() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path();
        fixture::hba(s, 5, None);
        fixture::fc_names(s, 5, "0x20000000c9831b4a", "0x10000000c9831b4a");
        let w = AdapterWwn {
            wwnn: "0x20000000C9831B4B".into(),
            wwpn: "0x10000000c9831b4b".into(),
            parent: Some("host5".into()),
        };
        let e = create_vport(s, &w).unwrap_err();
        assert!(e.contains("host5 cannot create NPIV virtual ports"), "{e}");
        let file = s.join("class/fc_host/host5/vport_create");
        std::fs::write(&file, "").unwrap();
        create_vport(s, &w).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "10000000c9831b4b:20000000c9831b4b"
        );
        let orphan = AdapterWwn { parent: None, ..w };
        assert!(create_vport(s, &orphan).is_err());
    }
}
