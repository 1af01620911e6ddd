//! `mount -t nfs|glusterfs|cifs`: a network share at a netfs pool's target,
//! through the share's own mount helper (mount.nfs, mount.glusterfs,
//! mount.cifs). Every value comes from a checked pool spec
//! (`pool_spec::netfs::check`); credentials never reach the argument
//! vector: cifs reads them from a 0600 file that exists only for the mount.

use crate::{
    error::{io, Error, Result},
    exec::{Cmd, CommandRunner},
    mount::mountinfo::MountEntry,
};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// A network mount that does not answer in a minute is not coming.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// A share's file system type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFs {
    Nfs,
    Glusterfs,
    Cifs,
}

impl NetFs {
    /// The types `source.format` names, in the order they are tried: `auto`
    /// is what libvirt does (mount without a type takes `host:dir` as NFS),
    /// then GlusterFS, whose sources look the same.
    pub fn tried_for(format: Option<&str>) -> &'static [NetFs] {
        match format.unwrap_or("auto") {
            "nfs" => &[NetFs::Nfs],
            "glusterfs" => &[NetFs::Glusterfs],
            "cifs" => &[NetFs::Cifs],
            _ => &[NetFs::Nfs, NetFs::Glusterfs],
        }
    }

    /// The `-t` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            NetFs::Nfs => "nfs",
            NetFs::Glusterfs => "glusterfs",
            NetFs::Cifs => "cifs",
        }
    }

    /// The source mount(8) takes and the mount table shows.
    pub fn source(self, host: &str, dir: &str) -> String {
        match self {
            NetFs::Nfs | NetFs::Glusterfs => format!("{host}:{dir}"),
            NetFs::Cifs => format!("//{host}/{}", dir.trim_start_matches('/')),
        }
    }

    /// Whether mount entry `m` is this share (by type and source, whatever
    /// path it is mounted at).
    pub fn is_mount_of(self, m: &MountEntry, host: &str, dir: &str) -> bool {
        let types: &[&str] = match self {
            NetFs::Nfs => &["nfs", "nfs4"],
            NetFs::Glusterfs => &["fuse.glusterfs"],
            NetFs::Cifs => &["cifs", "smb3"],
        };
        let norm = |s: &str| s.trim_end_matches('/').to_string();
        types.contains(&m.fs_type.as_str()) && norm(&m.source) == norm(&self.source(host, dir))
    }
}

/// cifs credentials, written for one mount and removed after it.
pub struct Credentials {
    path: PathBuf,
}

impl Credentials {
    /// Writes `username` and `password` to `path` (mode 0600, made anew).
    pub fn write(path: &Path, username: &str, password: &str) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        let text = format!("username={username}\npassword={password}\n");
        crate::fsutil::write_new(path, text.as_bytes(), 0o600)?;
        Ok(Self { path: path.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Mounts `source` of type `fs` at `target` with `options`.
pub async fn mount(
    runner: &dyn CommandRunner,
    fs: NetFs,
    source: &str,
    target: &Path,
    options: &[String],
) -> Result<()> {
    let mut cmd = Cmd::new("mount").args(["-t", fs.as_str()]);
    if !options.is_empty() {
        cmd = cmd.args(["-o".to_string(), options.join(",")]);
    }
    let cmd = cmd.arg("--").arg(source).arg(target).timeout(MOUNT_TIMEOUT);
    runner.run_ok(&cmd).await.map_err(Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fs_type: &str, source: &str) -> MountEntry {
        MountEntry {
            dev: (0, 44),
            root: "/".into(),
            mount_point: "/var/lib/pool-csi/share".into(),
            options: "rw".into(),
            fs_type: fs_type.into(),
            source: source.into(),
        }
    }

    #[test]
    fn shares_are_known_by_type_and_source() {
        let g = NetFs::Glusterfs;
        assert!(g.is_mount_of(
            &entry("fuse.glusterfs", "10.250.0.2:/gv0"),
            "10.250.0.2",
            "/gv0"
        ));
        assert!(!g.is_mount_of(
            &entry("fuse.glusterfs", "10.250.0.2:/gv1"),
            "10.250.0.2",
            "/gv0"
        ));
        assert!(!g.is_mount_of(&entry("nfs4", "10.250.0.2:/gv0"), "10.250.0.2", "/gv0"));
        assert!(NetFs::Nfs.is_mount_of(&entry("nfs4", "nfs:/export/"), "nfs", "/export"));
        assert!(NetFs::Cifs.is_mount_of(&entry("cifs", "//files/share"), "files", "/share"));
        assert_eq!(NetFs::tried_for(None), &[NetFs::Nfs, NetFs::Glusterfs]);
        assert_eq!(NetFs::tried_for(Some("cifs")), &[NetFs::Cifs]);
    }

    #[test]
    fn credentials_are_private_and_gone_after_use() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("netfs/smb.credentials");
        {
            let c = Credentials::write(&p, "svc", "s3cret").unwrap();
            let meta = std::fs::metadata(c.path()).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(
                std::fs::read_to_string(c.path()).unwrap(),
                "username=svc\npassword=s3cret\n"
            );
        }
        assert!(!p.exists());
    }
}
