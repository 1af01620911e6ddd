//! Where partitions can go: free extents, best fit, room to grow, and the
//! partition types. Pure functions over a table read by sfdisk; positions are
//! in sectors. Partitions are aligned to 1 MiB, as every partitioning tool
//! does, so a volume always starts on a boundary fast for any device.

use crate::tools::sfdisk::{Partition, Table};
use pool_csi_common::volume_id::fnv1a64;

/// Alignment in bytes.
pub const ALIGN_BYTES: u64 = 1 << 20;
/// GPT partition names hold at most 36 UTF-16 characters.
pub const GPT_NAME_MAX: usize = 36;

/// A run of free sectors `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub end: u64,
}

impl Extent {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// What kind of partition a free extent can take (dos tables only differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Primary,
    Logical,
}

fn align(t: &Table) -> u64 {
    (ALIGN_BYTES / t.sectorsize).max(1)
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// An extended (container) partition on a dos table.
pub fn is_extended(p: &Partition) -> bool {
    matches!(p.type_code.to_ascii_lowercase().as_str(), "5" | "f" | "85")
}

/// Aligned gaps between `occupied` (sorted) within `[lo, hi)`; `lead` sectors
/// are kept free before each new partition (a logical partition's EBR).
fn gaps(mut occupied: Vec<(u64, u64)>, lo: u64, hi: u64, a: u64, lead: u64) -> Vec<Extent> {
    occupied.sort();
    let mut out = Vec::new();
    let mut cursor = lo;
    for (s, e) in occupied.into_iter().chain(std::iter::once((hi, hi))) {
        if s > cursor {
            let start = align_up(cursor + lead, a);
            let end = (s.min(hi) / a) * a;
            if end > start {
                out.push(Extent { start, end });
            }
        }
        cursor = cursor.max(e);
    }
    out
}

/// Every free extent a new partition could use, with the kind it would be.
pub fn free_extents(t: &Table, disk_sectors: u64) -> Vec<(Extent, Slot)> {
    let a = align(t);
    if t.label == "gpt" {
        let lo = t.firstlba.unwrap_or(a);
        let hi = t.lastlba.map_or(disk_sectors, |l| l + 1);
        let used = t.partitions.iter().map(|p| (p.start, p.end())).collect();
        return gaps(used, lo, hi, a, 0)
            .into_iter()
            .map(|e| (e, Slot::Primary))
            .collect();
    }
    let primaries: Vec<&Partition> = t
        .partitions
        .iter()
        .filter(|p| p.number().is_some_and(|n| n <= 4))
        .collect();
    let mut out = Vec::new();
    if primaries.len() < 4 {
        let used = primaries.iter().map(|p| (p.start, p.end())).collect();
        out.extend(
            gaps(used, a, disk_sectors, a, 0)
                .into_iter()
                .map(|e| (e, Slot::Primary)),
        );
    }
    if let Some(ext) = t.partitions.iter().find(|p| is_extended(p)) {
        let logicals = t
            .partitions
            .iter()
            .filter(|p| p.number().is_some_and(|n| n > 4))
            .map(|p| (p.start, p.end()))
            .collect();
        // One sector before each logical partition holds its EBR.
        out.extend(
            gaps(logicals, ext.start, ext.end(), a, 1)
                .into_iter()
                .map(|e| (e, Slot::Logical)),
        );
    }
    out
}

/// Where a dos table's last primary slot should become an extended
/// partition: when three primaries are used and there is no extended one
/// yet, the largest free gap (so volumes beyond the fourth become logical
/// partitions inside it, instead of the table filling up at four).
pub fn extended_candidate(t: &Table, disk_sectors: u64) -> Option<Extent> {
    let primaries = t
        .partitions
        .iter()
        .filter(|p| p.number().is_some_and(|n| n <= 4))
        .count();
    if t.label != "dos" || primaries != 3 || t.partitions.iter().any(is_extended) {
        return None;
    }
    free_extents(t, disk_sectors)
        .into_iter()
        .filter(|(_, s)| *s == Slot::Primary)
        .map(|(e, _)| e)
        .max_by_key(Extent::len)
}

/// The smallest free extent that holds `sectors` (best fit keeps large
/// extents for large volumes).
pub fn best_fit(extents: &[(Extent, Slot)], sectors: u64) -> Option<(Extent, Slot)> {
    extents
        .iter()
        .filter(|(e, _)| e.len() >= sectors)
        .min_by_key(|(e, _)| e.len())
        .copied()
}

/// Free sectors directly after `p`, up to the next partition or the end of
/// the area it lives in (partitions never move, so only this can be grown into).
pub fn room_after(t: &Table, p: &Partition, disk_sectors: u64) -> u64 {
    let is_logical = |x: &Partition| t.label == "dos" && x.number().is_some_and(|n| n > 4);
    let after = t.partitions.iter().filter(|x| x.start >= p.end());
    let next = if is_logical(p) {
        // Logical partitions live inside the extended one; each is preceded by its EBR.
        let limit = t
            .partitions
            .iter()
            .find(|x| is_extended(x))
            .map_or(p.end(), |x| x.end());
        after
            .filter(|x| is_logical(x))
            .map(|x| x.start - 1)
            .fold(limit, u64::min)
    } else {
        let limit = if t.label == "gpt" {
            t.lastlba.map_or(disk_sectors, |l| l + 1)
        } else {
            disk_sectors
        };
        after
            .filter(|x| !is_logical(x))
            .map(|x| x.start)
            .fold(limit, u64::min)
    };
    next.saturating_sub(p.end())
}

/// A partition type users can name in `partitionType`: GPT GUID and MBR code.
pub fn partition_type(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "linux" => ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "83"),
        "linux-lvm" => ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "8e"),
        "linux-raid" => ("A19D880F-05FC-4D3B-A006-743F0F84911E", "fd"),
        "linux-swap" => ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "82"),
        "fat16" => ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "e"),
        "fat32" => ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "c"),
        "ntfs" => ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "7"),
        "efi" => ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ef"),
        _ => return None,
    })
}

/// The names `partitionType` accepts, for error messages.
pub const PARTITION_TYPES: &str =
    "linux, linux-lvm, linux-raid, linux-swap, fat16, fat32, ntfs, efi";

/// The GPT partition name for a storage name: the name itself when it fits
/// 36 characters, else a prefix plus a hash of the whole name (deterministic,
/// so a retried create finds its partition).
pub fn gpt_name(name: &str) -> String {
    if name.len() <= GPT_NAME_MAX {
        return name.to_string();
    }
    let prefix = name[..GPT_NAME_MAX - 9].trim_end_matches('-');
    format!("{prefix}-{:08x}", fnv1a64(name.as_bytes()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::sfdisk::parse;

    fn part(node: &str, start: u64, size: u64, t: &str) -> Partition {
        Partition {
            node: node.into(),
            start,
            size,
            type_code: t.into(),
            name: None,
            uuid: None,
        }
    }

    fn gpt(parts: Vec<Partition>) -> Table {
        Table {
            label: "gpt".into(),
            id: "x".into(),
            firstlba: Some(34),
            lastlba: Some(524254),
            sectorsize: 512,
            partitions: parts,
        }
    }

    #[test]
    fn a_dos_table_s_last_primary_slot_becomes_the_extended_partition() {
        let dos = |parts: Vec<Partition>| Table {
            label: "dos".into(),
            partitions: parts,
            ..gpt(Vec::new())
        };
        let p = |n: u32, start: u64, t: &str| part(&format!("/dev/sda{n}"), start, 2048, t);
        let three = dos(vec![p(1, 2048, "83"), p(2, 8192, "83"), p(3, 16384, "83")]);
        // The largest gap: after the third partition to the end.
        assert_eq!(
            extended_candidate(&three, 524288),
            Some(Extent {
                start: 18432,
                end: 524288
            })
        );
        let two = dos(vec![p(1, 2048, "83"), p(2, 8192, "83")]);
        assert_eq!(
            extended_candidate(&two, 524288),
            None,
            "a primary slot is left"
        );
        let with_ext = dos(vec![p(1, 2048, "83"), p(2, 8192, "5"), p(3, 16384, "83")]);
        assert_eq!(
            extended_candidate(&with_ext, 524288),
            None,
            "there is one already"
        );
        assert_eq!(extended_candidate(&gpt(Vec::new()), 524288), None);
    }

    #[test]
    fn gpt_free_extents_are_aligned_gaps() {
        let t = parse(include_bytes!(
            "../../../tests/fixtures/commands/sfdisk/gpt_two_partitions.json"
        ))
        .unwrap();
        let free: Vec<_> = free_extents(&t, 524288)
            .into_iter()
            .map(|(e, _)| (e.start, e.end))
            .collect();
        // 2048+65536 = 67584 .. 133120, then 133120+32768 = 165888 .. 524255 aligned down to 522240.
        assert_eq!(free, vec![(67584, 133120), (165888, 522240)]);
    }

    #[test]
    fn best_fit_takes_the_smallest_extent_that_holds_the_volume() {
        let t = gpt(vec![
            part("/dev/sda1", 2048, 2048, "L"),
            part("/dev/sda2", 8192, 2048, "L"),
            part("/dev/sda3", 14336, 2048, "L"),
        ]);
        let free = free_extents(&t, 524288);
        // gaps: 4096..8192 (4096), 10240..14336 (4096), 16384..522240 (large)
        assert_eq!(
            best_fit(&free, 4096).unwrap().0,
            Extent {
                start: 4096,
                end: 8192
            }
        );
        assert_eq!(best_fit(&free, 4097).unwrap().0.start, 16384);
        assert_eq!(best_fit(&free, 600_000), None);
    }

    #[test]
    fn dos_tables_use_primaries_then_the_extended_partition() {
        let t = parse(include_bytes!(
            "../../../tests/fixtures/commands/sfdisk/dos_extended_logical.json"
        ))
        .unwrap();
        let free = free_extents(&t, 524288);
        assert!(
            free.contains(&(
                Extent {
                    start: 329728,
                    end: 524288
                },
                Slot::Primary
            )),
            "{free:?}"
        );
        // Inside the extended partition (67584..329728) after the logicals at 69632 and 133120.
        assert!(
            free.contains(&(
                Extent {
                    start: 92160,
                    end: 133120
                },
                Slot::Logical
            )),
            "{free:?}"
        );
        assert!(free
            .iter()
            .all(|(e, _)| e.start % 2048 == 0 && e.end % 2048 == 0));
        let four = Table {
            label: "dos".into(),
            id: "x".into(),
            firstlba: None,
            lastlba: None,
            sectorsize: 512,
            partitions: (1..=4)
                .map(|n| part(&format!("/dev/sdb{n}"), n * 4096, 2048, "83"))
                .collect(),
        };
        assert!(
            free_extents(&four, 524288).is_empty(),
            "four primaries and no extended: nothing more fits"
        );
    }

    #[test]
    fn room_after_stops_at_the_next_partition() {
        let t = gpt(vec![
            part("/dev/sda1", 2048, 2048, "L"),
            part("/dev/sda2", 8192, 2048, "L"),
        ]);
        assert_eq!(room_after(&t, &t.partitions[0], 524288), 4096);
        assert_eq!(room_after(&t, &t.partitions[1], 524288), 524255 - 10240);
        let d = parse(include_bytes!(
            "../../../tests/fixtures/commands/sfdisk/dos_extended_logical.json"
        ))
        .unwrap();
        let p5 = &d.partitions[2];
        assert_eq!(
            room_after(&d, p5, 524288),
            133120 - 1 - (69632 + 20480),
            "logical: up to the next EBR"
        );
        let p6 = &d.partitions[3];
        assert_eq!(
            room_after(&d, p6, 524288),
            329728 - (133120 + 20480),
            "logical: up to the end of the extended"
        );
    }

    #[test]
    fn partition_types_and_gpt_names() {
        // Every name the error message offers maps to its GPT GUID and
        // MBR code (sfdisk's), no two names to the same pair.
        let want = [
            ("linux", "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "83"),
            ("linux-lvm", "E6D6D379-F507-44C2-A23C-238F2A3DF928", "8e"),
            ("linux-raid", "A19D880F-05FC-4D3B-A006-743F0F84911E", "fd"),
            ("linux-swap", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "82"),
            ("fat16", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "e"),
            ("fat32", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "c"),
            ("ntfs", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "7"),
            ("efi", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "ef"),
        ];
        let offered: Vec<&str> = PARTITION_TYPES.split(", ").collect();
        assert_eq!(offered, want.map(|(n, _, _)| n));
        for (name, guid, code) in want {
            assert_eq!(partition_type(name), Some((guid, code)), "{name}");
        }
        let pairs: std::collections::BTreeSet<_> = want.map(|(_, g, c)| (g, c)).into();
        assert_eq!(pairs.len(), want.len());
        assert!(partition_type("zfs").is_none());
        assert_eq!(gpt_name("pvc-1"), "pvc-1");
        let long = "pvc-0d7c5b8e-4d7e-4bfe-9d45-3c1a9d1e2f3a";
        let n = gpt_name(long);
        assert_eq!(n.len(), GPT_NAME_MAX);
        assert_eq!(n, gpt_name(long));
        assert_ne!(n, gpt_name("pvc-0d7c5b8e-4d7e-4bfe-9d45-3c1a9d1e2f3b"));
        assert!(
            pool_csi_common::volume_id::check_storage_name(&n).is_ok(),
            "{n}"
        );
    }
}
