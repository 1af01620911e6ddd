//! The few bytes of a qcow2 header the driver reads itself: magic and size.
//! (Creating and resizing go through qemu-img.)

use crate::error::{io, Error, Result};
use std::{fs::File, os::unix::fs::FileExt, path::Path};

const MAGIC: [u8; 4] = *b"QFI\xfb";

/// The virtual size from the header (big-endian u64 at offset 24).
pub fn read_size(path: &Path) -> Result<u64> {
    let f = File::open(path).map_err(io("open", path))?;
    let mut h = [0u8; 32];
    f.read_exact_at(&mut h, 0)
        .map_err(io("read qcow2 header of", path))?;
    parse_size(&h).ok_or_else(|| Error::Corrupt {
        path: path.into(),
        why: "not a qcow2 image (bad magic)".into(),
    })
}

fn parse_size(h: &[u8; 32]) -> Option<u64> {
    (h[..4] == MAGIC).then(|| u64::from_be_bytes(h[24..32].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_size_from_a_header() {
        let mut h = [0u8; 32];
        h[..4].copy_from_slice(&MAGIC);
        h[24..32].copy_from_slice(&(5u64 << 30).to_be_bytes());
        assert_eq!(parse_size(&h), Some(5 << 30));
        h[0] = b'X';
        assert_eq!(parse_size(&h), None);
    }
}
