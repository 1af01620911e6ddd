//! netfs pools over NFS and CIFS, which this machine's kernel cannot mount:
//! the mount helpers are scripted through the command runner (argv checked
//! exactly) and the mount table is a fixture the scripted mount adds its
//! line to, as the kernel would. GlusterFS runs for real in
//! `e2e/tests/netfs_pool.rs`.

use pool_csi_common::PoolDefinition;
use pool_csi_node::{
    exec::fake::{FakeRunner, Reply},
    pools::{file::FilePool, Pool, PoolState},
    Config,
};
use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

struct Host {
    t: tempfile::TempDir,
    root: PathBuf,
    cfg: Config,
}

fn host() -> Host {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("share");
    let mut cfg = Config::local("n1", t.path().join("state"));
    cfg.mountinfo = t.path().join("mountinfo");
    cfg.secrets_dir = t.path().join("secrets");
    std::fs::write(
        &cfg.mountinfo,
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n",
    )
    .unwrap();
    Host { t, root, cfg }
}

impl Host {
    fn pool(&self, source: &str, runner: Arc<FakeRunner>) -> FilePool {
        let def = PoolDefinition::parse_documents(
            &format!(
                "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: share }}\nspec:\n  type: netfs\n  target: {{ path: {} }}\n  source: {source}\n",
                self.root.display()
            ),
            "test",
        )
        .unwrap()
        .remove(0);
        FilePool::new(&def, &self.cfg, runner)
    }

    /// What the kernel adds to the mount table when `source` of `fs_type`
    /// is mounted at the pool's target.
    fn mounts(&self, fs_type: &str, source: &str) -> impl Fn(&[String]) + Send + Sync + 'static {
        let (table, line) = (
            self.cfg.mountinfo.clone(),
            format!(
                "60 22 0:50 / {} rw,relatime - {fs_type} {source} rw\n",
                self.root.display()
            ),
        );
        move |_| {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&table)
                .unwrap();
            f.write_all(line.as_bytes()).unwrap();
        }
    }

    fn target(&self) -> String {
        self.root.display().to_string()
    }
}

/// `mount -t <fs> -- files:/vol <target>`.
fn mount_argv(fs: &str, h: &Host) -> [String; 6] {
    ["mount", "-t", fs, "--", "files:/vol", &h.target()].map(String::from)
}

/// Why a pool of `source` does not start, when no command may run (the
/// FakeRunner panics on any call).
async fn refused(h: &Host, source: &str) -> String {
    let p = h.pool(source, Arc::new(FakeRunner::new()));
    p.start().await.unwrap_err().to_string()
}

fn unknown_fs(fs: &str) -> Reply {
    Reply::exit(32).stderr(format!(
        "mount: {}: unknown filesystem type '{fs}'.\n",
        "/share"
    ))
}

#[tokio::test]
async fn an_nfs_share_is_mounted_with_its_options_and_the_pool_runs_on_it() {
    let h = host();
    let runner = Arc::new(FakeRunner::new().expect(
        [
            "mount",
            "-t",
            "nfs",
            "-o",
            "vers=4.2,noatime",
            "--",
            "nfs.example.com:/export/k8s",
            &h.target(),
        ],
        Reply::ok().effect(h.mounts("nfs4", "nfs.example.com:/export/k8s")),
    ));
    let p = h.pool(
        "{ host: nfs.example.com, dir: /export/k8s, format: nfs, options: [vers=4.2, noatime] }",
        runner.clone(),
    );
    p.start().await.unwrap();
    let st = p.status(true).await;
    assert_eq!(st.state, PoolState::Running, "{}", st.message);
    assert!(st.capacity > 0 && st.volume_count == Some(0));
    assert!(p.shared(), "a netfs pool's volumes are every node's");
    // A second start finds the share mounted: no second mount.
    p.start().await.unwrap();
    assert_eq!(runner.calls().len(), 1);
    // Work in progress is this node's own: another node never clears it.
    assert!(h.root.join(".pool-csi/tmp/n1").is_dir());
}

#[tokio::test]
async fn auto_tries_nfs_then_glusterfs_and_a_share_nothing_mounts_leaves_the_pool_down() {
    let h = host();
    let argv = |fs: &str| mount_argv(fs, &h);
    let runner = Arc::new(
        FakeRunner::new()
            .expect(argv("nfs"), unknown_fs("nfs"))
            .expect(
                argv("glusterfs"),
                Reply::ok().effect(h.mounts("fuse.glusterfs", "files:/vol")),
            ),
    );
    let p = h.pool("{ host: files, dir: /vol }", runner);
    p.start().await.unwrap();
    assert_eq!(p.status(false).await.state, PoolState::Running);

    let h = host();
    let argv = |fs: &str| mount_argv(fs, &h);
    let runner = Arc::new(
        FakeRunner::new()
            .expect(argv("nfs"), unknown_fs("nfs"))
            .expect(
                argv("glusterfs"),
                Reply::exit(1).stderr("Mounting glusterfs on /share failed.\n"),
            ),
    );
    let p = h.pool("{ host: files, dir: /vol, format: auto }", runner);
    let e = p.start().await.unwrap_err().to_string();
    let st = p.status(false).await;
    assert_eq!(st.state, PoolState::Inactive);
    for why in [
        "files:/vol could not be mounted",
        "unknown filesystem type 'nfs'",
        "Mounting glusterfs",
    ] {
        assert!(st.message.contains(why), "{why}: {}", st.message);
    }
    assert!(e.contains("could not be mounted"), "{e}");
}

#[tokio::test]
async fn cifs_credentials_go_through_a_private_file_that_is_gone_after_the_mount() {
    let h = host();
    let secret = h.cfg.secrets_dir.join("smb-creds");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("password"), "s3cret-pass\n").unwrap();
    let creds = h.cfg.state_dir.join("netfs/share.credentials");
    let seen = creds.clone();
    let mounted = h.mounts("cifs", "//files/projects");
    let runner = Arc::new(FakeRunner::new().expect(
        [
            "mount",
            "-t",
            "cifs",
            "-o",
            &format!("vers=3.0,credentials={}", creds.display()),
            "--",
            "//files/projects",
            &h.target(),
        ],
        Reply::ok().effect(move |argv| {
            // While mount runs: the file holds the secret, readable by root only.
            let meta = std::fs::metadata(&seen).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(
                std::fs::read_to_string(&seen).unwrap(),
                "username=svc\npassword=s3cret-pass\n"
            );
            assert!(!argv.join(" ").contains("s3cret"));
            mounted(argv);
        }),
    ));
    let p = h.pool(
        "{ host: files, dir: /projects, format: cifs, options: [vers=3.0], auth: { username: svc, secretRef: smb-creds } }",
        runner.clone(),
    );
    p.start().await.unwrap();
    assert!(!creds.exists(), "the credentials file outlived the mount");
    assert!(runner.calls().iter().all(|c| !c.contains("s3cret")));
}

#[tokio::test]
async fn a_missing_secret_or_a_foreign_mount_is_refused_with_nothing_mounted() {
    // No command may run: the FakeRunner panics on any call.
    let h = host();
    let p = h.pool(
        "{ host: files, dir: /projects, format: cifs, auth: { username: svc, secretRef: absent } }",
        Arc::new(FakeRunner::new()),
    );
    let e = p.start().await.unwrap_err().to_string();
    assert!(
        e.contains("absent/password") && e.contains("secretRef"),
        "{e}"
    );
    assert_eq!(p.status(false).await.state, PoolState::Inactive);

    // A password that would add lines to the credentials file.
    let h = host();
    let secret = h.cfg.secrets_dir.join("smb-creds");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("password"), "pw\nusername=root\n").unwrap();
    let e = refused(&h, "{ host: files, dir: /projects, format: cifs, auth: { username: svc, secretRef: smb-creds } }").await;
    assert!(e.contains("line break"), "{e}");
    assert!(!h.cfg.state_dir.join("netfs/share.credentials").exists());

    // A target that holds files: mounting there would hide them.
    let h = host();
    std::fs::create_dir_all(&h.root).unwrap();
    std::fs::write(h.root.join("important"), b"x").unwrap();
    let e = refused(&h, "{ host: nfs, dir: /export, format: nfs }").await;
    assert!(e.contains("is not empty"), "{e}");

    let h = host();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&h.cfg.mountinfo)
        .unwrap();
    writeln!(f, "61 22 0:51 / {} rw - tmpfs tmpfs rw", h.target()).unwrap();
    let e = refused(&h, "{ host: nfs, dir: /export, format: nfs }").await;
    assert!(
        e.contains("tmpfs") && e.contains("will not mount over it"),
        "{e}"
    );
    let _ = &h.t;
}

#[tokio::test]
async fn a_share_found_mounted_is_used_and_left_mounted_when_the_pool_stops() {
    let h = host();
    std::fs::create_dir_all(&h.root).unwrap();
    h.mounts("nfs4", "nfs:/export")(&[]);
    let p = h.pool(
        "{ host: nfs, dir: /export/, format: nfs }",
        Arc::new(FakeRunner::new()),
    );
    p.start().await.unwrap();
    assert_eq!(p.status(false).await.state, PoolState::Running);
    // Not this pool's mount: stop leaves it (no marker, no unmount).
    p.stop().await.unwrap();
    assert!(!Path::new(&h.cfg.state_dir.join("netfs/share.mounted")).exists());
}
