//! Whether a VG's metadata changed, without asking lvm: every metadata
//! commit rewrites the header of each metadata area on each PV (its
//! pointer to the new metadata text and that text's checksum). Reading
//! those headers — the PV label names where they are — takes two small
//! reads per PV instead of an lvm scan, so a report taken when the headers
//! read X is still the VG's state while they still read X.
//!
//! On-disk format (lvm2 `format_text`, all integers little-endian): the
//! label is in one of the first four 512-byte sectors, starting `LABELONE`;
//! at `offset_xl` (label_header byte 20) from the label's start comes the
//! pv_header: a 32-byte PV uuid, the device size (8 bytes), then the data
//! areas and then the metadata areas, each a list of (offset, size) pairs
//! of 8-byte integers ending with a zero offset. A metadata area starts
//! with its 512-byte header.
//!
//! Reads are O_DIRECT, so the answer is the device's, not a page cache's.

use std::{
    fs::File,
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

const SECTOR: usize = 512;
/// O_DIRECT wants aligned buffers and offsets; 4 KiB covers every device.
const BLOCK: usize = 4096;

#[repr(C, align(4096))]
struct Block([u8; BLOCK]);

fn read_block(f: &File, offset: u64) -> io::Result<Block> {
    let mut b = Block([0; BLOCK]);
    f.read_exact_at(&mut b.0, offset)?;
    Ok(b)
}

/// The metadata area headers of every PV in `devices`, concatenated; None
/// when any cannot be read or holds no LVM label (then nothing may be
/// concluded, and the caller asks lvm).
pub fn fingerprint(devices: &[PathBuf]) -> Option<Vec<u8>> {
    if devices.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for d in devices {
        out.extend(headers_of(d).ok()??);
    }
    Some(out)
}

fn headers_of(device: &Path) -> io::Result<Option<Vec<u8>>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(device)?;
    let head = read_block(&f, 0)?;
    let Some(areas) = metadata_areas(&head.0) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for offset in areas {
        let aligned = offset - offset % BLOCK as u64;
        let b = read_block(&f, aligned)?;
        let at = (offset - aligned) as usize;
        if at + SECTOR > BLOCK {
            return Ok(None);
        }
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&b.0[at..at + SECTOR]);
    }
    Ok(Some(out))
}

/// The offsets of the metadata areas the label in `head` (the device's
/// first 4 KiB) lists; None without a well-formed label or with no area.
fn metadata_areas(head: &[u8; BLOCK]) -> Option<Vec<u64>> {
    let le32 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?))
    };
    let le64 = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?))
    };
    let label = (0..4)
        .map(|s| s * SECTOR)
        .find(|&at| &head[at..at + 8] == b"LABELONE")?;
    let pv_header = label + le32(label + 20)? as usize;
    // uuid (32) + device size (8), then the data areas' list.
    let mut at = pv_header + 40;
    let mut lists = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let offset = le64(at)?;
            at += 16;
            if offset == 0 {
                break;
            }
            list.push(offset);
            if list.len() > 8 {
                return None; // not a label lvm wrote
            }
        }
    }
    let [_, metadata] = lists;
    (!metadata.is_empty()).then_some(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A label as pvcreate writes it (sector 1, pv_header at +32, one data
    /// area at 1 MiB, one metadata area at 4 KiB).
    fn label() -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        let l = SECTOR;
        h[l..l + 8].copy_from_slice(b"LABELONE");
        h[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes());
        h[l + 24..l + 32].copy_from_slice(b"LVM2 001");
        let mut at = l + 32 + 40;
        for (offset, size) in [(1u64 << 20, 0u64), (0, 0), (4096, 1044480), (0, 0)] {
            h[at..at + 8].copy_from_slice(&offset.to_le_bytes());
            h[at + 8..at + 16].copy_from_slice(&size.to_le_bytes());
            at += 16;
        }
        h
    }

    #[test]
    fn the_label_says_where_the_metadata_headers_are() {
        assert_eq!(metadata_areas(&label()), Some(vec![4096]));
        assert_eq!(metadata_areas(&[0u8; BLOCK]), None, "no label");
        let mut no_mda = label();
        no_mda[SECTOR + 32 + 40 + 32..SECTOR + 32 + 40 + 40].fill(0);
        assert_eq!(
            metadata_areas(&no_mda),
            None,
            "a PV without metadata copies"
        );
        assert_eq!(fingerprint(&[]), None);
        assert_eq!(fingerprint(&["/nonexistent/pv".into()]), None);
    }
}
