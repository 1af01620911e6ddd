//! `DiskDescriptor.xml`: the ploop disk's list of image files (base and
//! deltas) and its snapshot chain, in the schema the ploop tools and qemu's
//! `prl-xml` document use. Only linear chains are handled (ploop can also
//! hold snapshot trees; such a disk is reported, never changed).
//!
//! The reader is deliberately small: it picks the few elements the schema
//! defines out of the text and validates every file name, so a descriptor
//! cannot point outside its directory.

use std::fmt::Write as _;

/// The descriptor's root element, by ploop version: 8.0.14 and later, then
/// earlier ones (and the name this crate writes; ploop 9's reader does not
/// check the root's name, per its lib/xml.c).
const ROOT_ELEMENTS: [&str; 2] = ["Virtuozzo_disk_image", "Parallels_disk_image"];

/// The GUID the ploop tools give a base image.
pub const BASE_GUID: &str = "{5fbaabe3-6958-40ff-92a7-860e329aab41}";
pub const NULL_GUID: &str = "{00000000-0000-0000-0000-000000000000}";
pub const FILE_NAME: &str = "DiskDescriptor.xml";
pub const BASE_IMAGE: &str = "root.hds";

/// One image file of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub guid: String,
    /// A plain file name inside the disk's directory.
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub size_sectors: u64,
    pub cluster_sectors: u32,
    /// Lowest (the base) first; the last is the writable top.
    pub chain: Vec<Delta>,
    pub uid: String,
    pub name: String,
}

impl Descriptor {
    pub fn new(name: &str, size: u64, cluster: u64, uid: String) -> Self {
        Self {
            size_sectors: size.div_ceil(512),
            cluster_sectors: (cluster / 512) as u32,
            chain: vec![Delta {
                guid: BASE_GUID.into(),
                file: BASE_IMAGE.into(),
            }],
            uid,
            name: name.into(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size_sectors * 512
    }

    pub fn top(&self) -> &Delta {
        self.chain.last().expect("a descriptor always has an image")
    }

    /// The delta a snapshot GUID names, and its position in the chain.
    pub fn position(&self, guid: &str) -> Option<usize> {
        self.chain.iter().position(|d| d.guid == guid)
    }

    pub fn render(&self) -> String {
        let size = self.size_sectors;
        let heads = 16u64;
        let sectors = 63u64;
        let mut x = String::with_capacity(2048);
        x.push_str("<?xml version=\"1.0\"?>\n<Parallels_disk_image Version=\"1.0\">\n");
        x.push_str("  <Disk_Parameters>\n");
        let _ = writeln!(x, "    <Disk_size>{size}</Disk_size>");
        let _ = writeln!(x, "    <Cylinders>{}</Cylinders>", size / heads / sectors);
        let _ = writeln!(
            x,
            "    <Heads>{heads}</Heads>\n    <Sectors>{sectors}</Sectors>"
        );
        x.push_str("    <Padding>0</Padding>\n");
        let _ = writeln!(
            x,
            "    <Encryption>\n      <Engine>{NULL_GUID}</Engine>\n      <Data></Data>\n    </Encryption>"
        );
        let _ = writeln!(x, "    <UID>{}</UID>", escape(&self.uid));
        let _ = writeln!(x, "    <Name>{}</Name>", escape(&self.name));
        x.push_str("    <Miscellaneous>\n      <CompatLevel>level2</CompatLevel>\n      <Bootable>0</Bootable>\n    </Miscellaneous>\n");
        x.push_str("  </Disk_Parameters>\n  <StorageData>\n    <Storage>\n");
        let _ = writeln!(
            x,
            "      <Start>0</Start>\n      <End>{size}</End>\n      <Blocksize>{}</Blocksize>",
            self.cluster_sectors
        );
        for d in &self.chain {
            let _ = writeln!(
                x,
                "      <Image>\n        <GUID>{}</GUID>\n        <Type>Compressed</Type>\n        <File>{}</File>\n      </Image>",
                d.guid,
                escape(&d.file)
            );
        }
        x.push_str("    </Storage>\n  </StorageData>\n  <Snapshots>\n");
        let _ = writeln!(x, "    <TopGUID>{}</TopGUID>", self.top().guid);
        let mut parent = NULL_GUID;
        for d in &self.chain {
            let _ = writeln!(
                x,
                "    <Shot>\n      <GUID>{}</GUID>\n      <ParentGUID>{parent}</ParentGUID>\n    </Shot>",
                d.guid
            );
            parent = &d.guid;
        }
        x.push_str("  </Snapshots>\n</Parallels_disk_image>\n");
        x
    }

    /// Reads a descriptor, checking that it describes one linear chain of
    /// plain files in its own directory.
    pub fn parse(text: &str) -> Result<Self, String> {
        // ploop writes <Virtuozzo_disk_image> since 8.0.14 and
        // <Parallels_disk_image> before (and Parallels tools still do); its
        // own reader takes either.
        let root = ROOT_ELEMENTS
            .iter()
            .find_map(|tag| elements(text, tag).into_iter().next())
            .ok_or(
                "not a ploop disk descriptor (no <Virtuozzo_disk_image> or <Parallels_disk_image>)",
            )?;
        let params = first(root, "Disk_Parameters").ok_or("no <Disk_Parameters>")?;
        let size_sectors: u64 = number(params, "Disk_size")?;
        let storages = elements(
            first(root, "StorageData").ok_or("no <StorageData>")?,
            "Storage",
        );
        let storage = match storages.as_slice() {
            [one] => *one,
            [] => return Err("no <Storage>".into()),
            _ => return Err("split images (several <Storage>) are not supported".into()),
        };
        let cluster_sectors: u32 = number(storage, "Blocksize")?;
        let mut images = Vec::new();
        for img in elements(storage, "Image") {
            let guid = check_guid(first(img, "GUID").ok_or("an <Image> without <GUID>")?)?;
            let file = unescape(first(img, "File").ok_or("an <Image> without <File>")?);
            check_file_name(&file)?;
            if let Some(t) = first(img, "Type").filter(|t| *t != "Compressed") {
                return Err(format!(
                    "image {file} has type {t}; only expandable (Compressed) images are supported"
                ));
            }
            images.push(Delta { guid, file });
        }
        let snaps = first(root, "Snapshots").ok_or("no <Snapshots>")?;
        let top = check_guid(first(snaps, "TopGUID").ok_or("no <TopGUID>")?)?;
        let mut parent_of = std::collections::HashMap::new();
        for shot in elements(snaps, "Shot") {
            let g = check_guid(first(shot, "GUID").ok_or("a <Shot> without <GUID>")?)?;
            let p = check_guid(first(shot, "ParentGUID").ok_or("a <Shot> without <ParentGUID>")?)?;
            parent_of.insert(g, p);
        }
        // Walk from the top down to the root; every image must be on that path.
        let mut chain = Vec::new();
        let mut at = top;
        while at != NULL_GUID {
            let d = images
                .iter()
                .find(|d| d.guid == at)
                .ok_or_else(|| format!("snapshot {at} has no image"))?;
            if chain.iter().any(|c: &Delta| c.guid == at) {
                return Err(format!("the snapshot chain loops at {at}"));
            }
            chain.push(d.clone());
            at = parent_of
                .get(&at)
                .cloned()
                .ok_or_else(|| format!("snapshot {at} has no <Shot> record"))?;
        }
        if chain.len() != images.len() {
            return Err("the images form a snapshot tree, not one chain; pool-csi handles linear chains only".into());
        }
        chain.reverse();
        Ok(Self {
            size_sectors,
            cluster_sectors,
            chain,
            uid: first(params, "UID").map(unescape).unwrap_or_default(),
            name: first(params, "Name").map(unescape).unwrap_or_default(),
        })
    }
}

/// A fresh random GUID in ploop's `{…}` form.
pub fn new_guid() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{{{}-{}-{}-{}-{}}}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// The file a new delta gets, as the ploop tools name them.
pub fn delta_file(guid: &str) -> String {
    format!("{BASE_IMAGE}.{guid}")
}

fn check_guid(g: &str) -> Result<String, String> {
    let inner = g
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or("");
    let ok = inner.len() == 36
        && inner.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    ok.then(|| g.to_ascii_lowercase())
        .ok_or_else(|| format!("invalid GUID {g:?}"))
}

/// Image files must be plain names in the disk's directory.
pub fn check_file_name(f: &str) -> Result<(), String> {
    let ok = !f.is_empty()
        && f.len() <= 200
        && !f.starts_with('.')
        && f != FILE_NAME
        && f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-{}".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "image file {f:?} is not a plain file name in the disk's directory"
        ))
    }
}

fn number<T: std::str::FromStr>(within: &str, tag: &str) -> Result<T, String> {
    let t = first(within, tag).ok_or_else(|| format!("no <{tag}>"))?;
    t.trim()
        .parse()
        .map_err(|_| format!("<{tag}> is not a number: {t:?}"))
}

fn first<'a>(within: &'a str, tag: &str) -> Option<&'a str> {
    elements(within, tag).into_iter().next().map(str::trim)
}

/// The contents of each `<tag …>…</tag>` at any depth (not nested in itself).
fn elements<'a>(within: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = within;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        // `<Image>` must not match `<ImageX>`.
        if !after.starts_with(['>', ' ', '\t', '\n', '/']) {
            rest = after;
            continue;
        }
        let Some(gt) = after.find('>') else { break };
        if after[..gt].ends_with('/') {
            out.push("");
            rest = &after[gt + 1..];
            continue;
        }
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_and_parse_round_trip_with_deltas() {
        let mut d = Descriptor::new("pvc-1", 10 << 30, 1 << 20, new_guid().unwrap());
        assert_eq!(d.cluster_sectors, 2048);
        let g = new_guid().unwrap();
        d.chain.push(Delta {
            file: delta_file(&g),
            guid: g,
        });
        let text = d.render();
        assert!(text.contains("<TopGUID>"), "{text}");
        assert_eq!(Descriptor::parse(&text).unwrap(), d);
        assert_eq!(d.position(BASE_GUID), Some(0));
    }

    /// Descriptors the real ploop tool wrote (recorded by
    /// tests/fixtures/commands/ploop/record.sh): ploop 9's
    /// `<Virtuozzo_disk_image>`, ploop 8.0.11's `<Parallels_disk_image>`,
    /// and a chain of two after `ploop snapshot`.
    #[test]
    fn parses_what_the_ploop_tools_write() {
        let fixture = |f: &str| {
            let p = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/commands/ploop/"
            );
            std::fs::read_to_string(format!("{p}{f}/DiskDescriptor.xml")).unwrap()
        };
        for f in ["init_64M", "v8_init"] {
            let d = Descriptor::parse(&fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(d.size(), 64 << 20, "{f}");
            assert_eq!(d.chain.len(), 1, "{f}");
            assert_eq!(d.top().file, "root.hds", "{f}");
            assert_eq!(d.top().guid, BASE_GUID, "{f}");
        }
        let d = Descriptor::parse(&fixture("snapshot_64M")).unwrap();
        assert_eq!(d.chain.len(), 2);
        assert_eq!(d.chain[0].file, "root.hds");
        assert!(d.top().file.starts_with("root.hds.{"), "{:?}", d.top());
        assert_eq!(
            d.top().guid,
            BASE_GUID,
            "the tool gives the new top the fixed GUID"
        );
        assert_ne!(d.chain[0].guid, BASE_GUID, "and relabels the base");
    }

    #[test]
    fn descriptors_that_leave_the_directory_or_branch_are_refused() {
        let d = Descriptor::new("v", 1 << 30, 1 << 20, new_guid().unwrap());
        let text = d.render();
        for (bad, want) in [
            ("../../etc/passwd", "plain file name"),
            ("/etc/shadow", "plain file name"),
            (".hidden", "plain file name"),
            ("DiskDescriptor.xml", "plain file name"),
        ] {
            let t = text.replace("<File>root.hds</File>", &format!("<File>{bad}</File>"));
            let e = Descriptor::parse(&t).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let t = text.replace("<Disk_size>", "<Disk_size>x");
        assert!(Descriptor::parse(&t).unwrap_err().contains("not a number"));
        assert!(Descriptor::parse("<xml/>").is_err());
        // A second image that is nobody's parent or child: a tree, refused.
        let g = new_guid().unwrap();
        let t = text.replace(
            "</Storage>",
            &format!("<Image><GUID>{g}</GUID><File>x.hds</File></Image></Storage>"),
        );
        assert!(Descriptor::parse(&t).unwrap_err().contains("one chain"));
    }
}
