//! Harness for end-to-end tests, the demo and the benchmark: starts the real
//! `pool-csi-node` and `pool-csi-controller` binaries on a scratch directory,
//! talks CSI to them over their unix sockets, and on drop stops them and
//! removes every mount, loop device and daemon they left behind.
#![forbid(unsafe_code)]

pub mod cleanup;
pub mod clients;
pub mod crash;
pub mod fake_cluster;
pub mod gluster;
pub mod req;
pub mod sg_iscsi;
pub mod tgt;

use clients::Clients;
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

/// Why a test cannot run here; tests print it and return (never pass silently).
pub fn missing_requirements(needs_qemu: bool) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (loop devices, mkfs, mounts)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("needs loop devices (/dev/loop-control)".into());
    }
    for tool in ["losetup", "mkfs.ext4", "blkid", "resize2fs"] {
        if which(tool).is_none() {
            return Some(format!("needs {tool} (run dev/setup)"));
        }
    }
    if needs_qemu {
        for tool in ["qemu-img", "qemu-storage-daemon"] {
            if which(tool).is_none() {
                return Some(format!("needs {tool} (qemu-utils)"));
            }
        }
        if !Path::new("/dev/fuse").exists() {
            return Some("needs FUSE (/dev/fuse) for qemu-storage-daemon exports".into());
        }
    }
    None
}

pub use pool_csi_testkit::skip::skip;

/// Skips the calling test with a message naming what is missing (a failure
/// under `POOL_CSI_REQUIRE_ALL=1`: see `pool_csi_testkit::skip`).
#[macro_export]
macro_rules! require {
    ($qemu:expr) => {
        if let Some(why) = $crate::missing_requirements($qemu) {
            $crate::skip("requirements", &why);
            return;
        }
    };
}

/// Skips the calling test when `tool` is not on PATH (`why` says where it
/// comes from); the tool's name is the skip's key.
#[macro_export]
macro_rules! require_tool {
    ($tool:expr, $why:expr) => {
        if $crate::which($tool).is_none() {
            $crate::skip($tool, $why);
            return;
        }
    };
}

/// Whether this process may grow a mounted ext4 filesystem (the resize ioctl
/// needs CAP_SYS_RESOURCE, which some sandboxes drop; xfs_growfs does not).
pub fn can_resize_ext4_online() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// A loop device over a new sparse file of `mib` MiB: a disk for tests.
/// Detached when dropped.
pub struct LoopDisk {
    device: PathBuf,
    file: PathBuf,
}

impl LoopDisk {
    /// `partscan`: let the kernel show the disk's partitions (disk pools).
    pub fn new(dir: &Path, name: &str, mib: u64, partscan: bool) -> LoopDisk {
        let file = dir.join(name);
        std::fs::File::create(&file)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
        let mut args = vec!["--find", "--show"];
        if partscan {
            args.push("--partscan");
        }
        args.push(file.to_str().expect("utf-8 path"));
        let out = tool("losetup", &args);
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDisk {
            device: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            file,
        }
    }

    pub fn path(&self) -> &str {
        self.device.to_str().expect("utf-8 path")
    }
}

impl Drop for LoopDisk {
    /// Detaches the device if it is still this disk's: cleanup may have
    /// detached it already, and its number may be another test's by now.
    fn drop(&mut self) {
        if let Some(name) = self.device.file_name().and_then(|n| n.to_str()) {
            cleanup::detach_loop_if(name, |b| b == self.file);
        }
    }
}

/// Runs a system tool for a test's set-up or checks (never driver code).
pub fn tool(program: &str, args: &[&str]) -> std::process::Output {
    #[allow(clippy::disallowed_methods)] // tests prepare fixtures with real tools
    std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// The text of `GET /metrics` at `addr` (a plain HTTP/1.1 exchange).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Removes a test's volume group and its PVs (activation off, as the tests
/// make them), and the metadata history lvm kept of it in `/etc/lvm`:
/// every change of a VG leaves an archive file there for 30 days, and each
/// later change lists them all, so test VGs would slow every lvm command.
pub fn remove_vg(vg: &str, pvs: &[&str]) {
    let off = "global{activation=0}";
    tool("lvm", &["vgremove", "--config", off, "-f", "-y", vg]);
    for pv in pvs {
        tool("lvm", &["pvremove", "--config", off, "-y", pv]);
    }
    let _ = std::fs::remove_file(Path::new("/etc/lvm/backup").join(vg));
    let prefix = format!("{vg}_");
    for e in std::fs::read_dir("/etc/lvm/archive")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// [`tool`] with `input` on its stdin (sfdisk scripts and the like).
pub fn tool_with_input(program: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write;
    #[allow(clippy::disallowed_methods)] // tests prepare fixtures with real tools
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input)
        .unwrap_or_else(|e| panic!("feed {program}: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {program}: {e}"))
}

/// Runs a set-up or check tool that must succeed; its trimmed stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = tool(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// StoragePool manifests for [`Options::extra_pools`].
pub mod manifests {
    /// An fs pool on `dev`, mounted under the scratch dir.
    pub fn fs_pool(name: &str, dev: &str, format: &str) -> String {
        format!("---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: {name} }}\nspec:\n  type: fs\n  source: {{ device: {dev}, format: {format} }}\n  target: {{ path: \"{{dir}}/{name}\" }}\n")
    }

    /// Two pools that cannot run: `later` (a dir pool whose target does not
    /// exist yet) and `nfs0` (netfs, a share no server answers for:
    /// neither nfs nor glusterfs mounts it).
    pub const NOT_RUNNING: &str = "---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: later }\nspec: { type: dir, target: { path: \"{dir}/later\" } }\n---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: nfs0 }\nspec: { type: netfs, source: { host: \"127.0.0.1\", dir: /export }, target: { path: \"{dir}/nfs\" } }\n";

    /// A disk pool on the whole disk `dev` (`gpt` or `dos`).
    pub fn disk_pool(name: &str, dev: &str, format: &str) -> String {
        format!("---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: {name} }}\nspec:\n  type: disk\n  source: {{ device: {dev}, format: {format} }}\n")
    }
}

/// Waits until `check` holds, 15 s at most (then fails naming `what`).
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let since = std::time::Instant::now();
    while !check() {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(15),
            "{what}: timed out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Where cargo put the binaries (next to the running test or demo binary).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    /// Put the pool on a tmpfs of this many bytes (None: the scratch dir's disk).
    pub tmpfs_bytes: Option<u64>,
    /// Extra StoragePool manifests appended to the pools file; `{dir}` is
    /// replaced by the scratch directory.
    pub extra_pools: String,
    pub log_filter: String,
    /// Let the controller find the agent through DNS (`--agent-service`)
    /// instead of a static `--agent` entry.
    pub discover_agents: bool,
    /// Run the agent API with mutual TLS (certificates from [`Pki`]).
    pub tls: bool,
    /// More nodes, each with its own `scratch` pool on a tmpfs of the given
    /// size, its own sockets and agent port; the controller gets them all.
    pub extra_nodes: Vec<(String, u64)>,
    /// Secrets as the chart mounts them: `<dir>/secrets/<name>/password`.
    pub secrets: Vec<(String, String)>,
    /// Cluster mode against this kubeconfig: the node reads StoragePools
    /// (`--pools-from-cluster`), the controller runs `--cluster` and finds
    /// the agent from pods labelled `app=pool-csi-node`.
    pub kubeconfig: Option<PathBuf>,
    /// Start the binaries from here instead of cargo's target directory (the
    /// benchmark's comparison with an older build).
    pub bin_dir: Option<PathBuf>,
    /// Return once both sockets answer, before the node has started its
    /// pools (tests of what a starting node says).
    pub no_ready_wait: bool,
    /// Cluster mode: the controller's `--orphan-grace-seconds`.
    pub orphan_grace_seconds: Option<u64>,
    /// The (first) node plugin also serves the Controller service on its
    /// socket (`CONTROLLER_SERVICE`, an environment variable, so older
    /// builds under comparison start too, without it).
    pub controller_service_in_node: bool,
}

/// A further node plugin started by the harness.
pub struct ExtraNode {
    pub name: String,
    pub agent_addr: String,
    pub node_sock: PathBuf,
    child: Option<Child>,
}

/// A throw-away CA with an agent certificate, a controller (client)
/// certificate, and a client certificate from another CA, made by openssl.
pub struct Pki {
    pub ca: PathBuf,
    pub agent: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
    pub rogue: (PathBuf, PathBuf),
}

impl Pki {
    pub fn make(dir: &Path) -> Pki {
        let p = |n: &str| dir.join(n);
        let run = |args: &[&str]| {
            let out = tool("openssl", args);
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let s = |p: &PathBuf| p.to_str().expect("utf-8 path").to_string();
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=DNS:pool-csi-agent\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        for ca in ["ca", "rogue-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &s(&p(&format!("{ca}.key"))),
                "-out",
                &s(&p(&format!("{ca}.pem"))),
                "-subj",
                &format!("/CN={ca}"),
            ]);
        }
        for (leaf, ca) in [("agent", "ca"), ("client", "ca"), ("rogue", "rogue-ca")] {
            run(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={leaf}"),
                "-keyout",
                &s(&p(&format!("{leaf}.key"))),
                "-out",
                &s(&p(&format!("{leaf}.csr"))),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &s(&p(&format!("{leaf}.csr"))),
                "-CA",
                &s(&p(&format!("{ca}.pem"))),
                "-CAkey",
                &s(&p(&format!("{ca}.key"))),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &s(&p("ext.cnf")),
                "-out",
                &s(&p(&format!("{leaf}.pem"))),
            ]);
        }
        let pair = |n: &str| (p(&format!("{n}.pem")), p(&format!("{n}.key")));
        Pki {
            ca: p("ca.pem"),
            agent: pair("agent"),
            client: pair("client"),
            rogue: pair("rogue"),
        }
    }

    /// Flags presenting `pair`, trusting the test CA.
    pub fn flags(&self, pair: &(PathBuf, PathBuf)) -> Vec<String> {
        vec![
            format!("--agent-tls-cert={}", pair.0.display()),
            format!("--agent-tls-key={}", pair.1.display()),
            format!("--agent-tls-ca={}", self.ca.display()),
        ]
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_name: "node-1".into(),
            tmpfs_bytes: Some(4 << 30),
            extra_pools: String::new(),
            log_filter: "warn".into(),
            discover_agents: false,
            tls: false,
            extra_nodes: Vec::new(),
            secrets: Vec::new(),
            kubeconfig: None,
            bin_dir: None,
            no_ready_wait: false,
            controller_service_in_node: false,
            orphan_grace_seconds: None,
        }
    }
}

/// A running node + controller pair with a dir pool named `scratch`.
pub struct Driver {
    pub dir: tempfile::TempDir,
    pub opts: Options,
    pub pool_dir: PathBuf,
    pub node_sock: PathBuf,
    pub ctrl_sock: PathBuf,
    pub agent_addr: String,
    /// The node plugin's Prometheus endpoint.
    pub node_metrics: String,
    /// The controller's `/metrics` (cluster mode only).
    pub ctrl_metrics: String,
    /// The certificates, when `opts.tls`.
    pub pki: Option<Pki>,
    pub extra: Vec<ExtraNode>,
    node: Option<Child>,
    controller: Option<Child>,
}

impl Driver {
    pub async fn start(opts: Options) -> Driver {
        let dir = tempfile::Builder::new()
            .prefix("pool-csi-e2e-")
            .tempdir()
            .expect("scratch dir");
        let pool_dir = dir.path().join("pool");
        std::fs::create_dir_all(&pool_dir).unwrap();
        if let Some(bytes) = opts.tmpfs_bytes {
            let data = std::ffi::CString::new(format!("size={bytes},mode=0711")).unwrap();
            rustix::mount::mount(
                "tmpfs",
                &pool_dir,
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                Some(data.as_c_str()),
            )
            .expect("mount tmpfs for the pool");
        }
        let pools = format!(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: scratch }}\nspec:\n  type: dir\n  target: {{ path: {} }}\n{}",
            pool_dir.display(),
            opts.extra_pools.replace("{dir}", &dir.path().display().to_string())
        );
        std::fs::write(dir.path().join("pools.yaml"), pools).unwrap();
        for (name, password) in &opts.secrets {
            let s = dir.path().join("secrets").join(name);
            std::fs::create_dir_all(&s).unwrap();
            std::fs::write(s.join("password"), format!("{password}\n")).unwrap();
        }
        let agent_addr = free_port();
        let mut d = Driver {
            node_sock: dir.path().join("node.sock"),
            ctrl_sock: dir.path().join("controller.sock"),
            pool_dir,
            agent_addr,
            node_metrics: free_port(),
            ctrl_metrics: free_port(),
            pki: None,
            extra: Vec::new(),
            opts,
            node: None,
            controller: None,
            dir,
        };
        if d.opts.tls {
            let pki_dir = d.dir.path().join("pki");
            std::fs::create_dir_all(&pki_dir).unwrap();
            d.pki = Some(Pki::make(&pki_dir));
        }
        d.start_node();
        for (i, (name, bytes)) in d.opts.extra_nodes.clone().into_iter().enumerate() {
            let node = d.start_extra_node(i, &name, bytes);
            d.extra.push(node);
        }
        if d.opts.discover_agents {
            // Discovery asks the agents who they are: start the controller
            // once the node answers (it retries every second otherwise).
            wait_probe_ready(&d.node_sock).await;
        }
        d.start_controller();
        match d.opts.no_ready_wait {
            true => d.wait_sockets().await,
            false => d.wait_ready().await,
        }
        for e in &d.extra {
            wait_probe_ready(&e.node_sock).await;
        }
        d
    }

    /// Extra node `i`. In cluster mode its agent listens on 127.0.0.<i+2>
    /// at the first node's port, as pods of one DaemonSet do on their own
    /// IPs (register its pod with [`fake_cluster::FakeCluster::agent_pod_at`]).
    fn start_extra_node(&self, i: usize, name: &str, bytes: u64) -> ExtraNode {
        let base = self.dir.path().join(name);
        let pool = base.join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        let data = std::ffi::CString::new(format!("size={bytes},mode=0711")).unwrap();
        rustix::mount::mount(
            "tmpfs",
            &pool,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            Some(data.as_c_str()),
        )
        .expect("mount tmpfs for the extra node's pool");
        // The extra pools too (a shared target, say), with {dir} this node's own.
        let pools = format!(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: scratch }}\nspec:\n  type: dir\n  target: {{ path: {} }}\n{}",
            pool.display(),
            self.opts.extra_pools.replace("{dir}", &base.display().to_string())
        );
        std::fs::write(base.join("pools.yaml"), pools).unwrap();
        let node_sock = base.join("node.sock");
        let agent_addr = match self.opts.kubeconfig {
            Some(_) => {
                let port = self.agent_addr.rsplit(':').next().unwrap_or_default();
                format!("127.0.0.{}:{port}", i + 2)
            }
            None => free_port(),
        };
        let args = vec![
            format!("--csi-endpoint=unix://{}", node_sock.display()),
            format!("--agent-listen={agent_addr}"),
            format!("--node-name={name}"),
            match self.opts.kubeconfig {
                Some(_) => "--pools-from-cluster".into(),
                None => format!("--pools-file={}", base.join("pools.yaml").display()),
            },
            format!("--state-dir={}", base.join("state").display()),
        ];
        let child = Some(self.spawn("pool-csi-node", &args));
        ExtraNode {
            name: name.into(),
            agent_addr,
            node_sock,
            child,
        }
    }

    fn spawn(&self, bin: &str, args: &[String]) -> Child {
        self.spawn_with(bin, args, Vec::new())
    }

    /// [`Self::spawn`] with more environment variables.
    fn spawn_with(&self, bin: &str, args: &[String], mut env: Vec<(&str, String)>) -> Child {
        let path = self.opts.bin_dir.clone().unwrap_or_else(bin_dir).join(bin);
        if let Some(k) = &self.opts.kubeconfig {
            env.push(("KUBECONFIG", k.display().to_string()));
            env.push(("POD_NAME", format!("{bin}-0")));
            env.push(("POD_NAMESPACE", "kube-system".into()));
        }
        assert!(
            path.exists(),
            "{} is missing: build it first (cargo build --workspace --bins)",
            path.display()
        );
        #[allow(clippy::disallowed_methods)] // the harness starts the binaries under test
        std::process::Command::new(path)
            .args(args)
            .env("LOG_FILTER", &self.opts.log_filter)
            // Staging and target paths live in the scratch dir (an
            // environment variable, so older builds under comparison start too).
            .env("KUBELET_DIR", self.dir.path())
            .envs(env)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"))
    }

    /// Starts (or restarts) the node plugin.
    pub fn start_node(&mut self) {
        let args = vec![
            format!("--csi-endpoint=unix://{}", self.node_sock.display()),
            format!("--agent-listen={}", self.agent_addr),
            format!("--node-name={}", self.opts.node_name),
            match self.opts.kubeconfig {
                Some(_) => "--pools-from-cluster".into(),
                None => format!(
                    "--pools-file={}",
                    self.dir.path().join("pools.yaml").display()
                ),
            },
            format!("--state-dir={}", self.dir.path().join("state").display()),
            format!(
                "--secrets-dir={}",
                self.dir.path().join("secrets").display()
            ),
            format!("--metrics-listen={}", self.node_metrics),
        ];
        let args: Vec<String> = match &self.pki {
            Some(pki) => args.into_iter().chain(pki.flags(&pki.agent)).collect(),
            None => args,
        };
        let env = match self.opts.controller_service_in_node {
            true => vec![("CONTROLLER_SERVICE", "true".to_string())],
            false => Vec::new(),
        };
        self.node = Some(self.spawn_with("pool-csi-node", &args, env));
    }

    fn start_controller(&mut self) {
        let port = self.agent_addr.rsplit(':').next().unwrap_or_default();
        let mut args = vec![format!(
            "--csi-endpoint=unix://{}",
            self.ctrl_sock.display()
        )];
        if self.opts.kubeconfig.is_some() {
            args.extend([
                "--cluster".to_string(),
                "--agent-pod-selector=app=pool-csi-node".to_string(),
                "--status-interval-seconds=1".to_string(),
                format!("--agent-port={port}"),
                format!("--metrics-listen={}", self.ctrl_metrics),
            ]);
            if let Some(g) = self.opts.orphan_grace_seconds {
                args.push(format!("--orphan-grace-seconds={g}"));
            }
        } else if self.opts.discover_agents {
            args.push(format!("--agent-service=localhost:{port}"));
        } else {
            args.push(format!(
                "--agent={}={}",
                self.opts.node_name, self.agent_addr
            ));
        }
        let args: Vec<String> = args
            .into_iter()
            .chain(
                self.extra
                    .iter()
                    .map(|e| format!("--agent={}={}", e.name, e.agent_addr)),
            )
            .collect();
        let args: Vec<String> = match &self.pki {
            Some(pki) => args.into_iter().chain(pki.flags(&pki.client)).collect(),
            None => args,
        };
        self.controller = Some(self.spawn("pool-csi-controller", &args));
    }

    /// Stops the controller as Kubernetes would (SIGTERM, then SIGKILL after 5 s).
    pub async fn stop_controller(&mut self) {
        if let Some(c) = self.controller.take() {
            tokio::task::spawn_blocking(move || cleanup::stop(c))
                .await
                .unwrap();
        }
    }

    /// Kills the controller hard (SIGKILL), as a crash would.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the controller again (after [`Self::kill_controller`]).
    pub fn restart_controller(&mut self) {
        self.start_controller();
    }

    /// Kills the node plugin hard (SIGKILL), as a crash would.
    pub fn kill_node(&mut self) {
        if let Some(mut c) = self.node.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until both CSI sockets answer a probe (ready or not).
    pub async fn wait_sockets(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Clients::connect(&self.node_sock, &self.ctrl_sock).await {
                let probe = pool_csi_proto::csi::ProbeRequest {};
                if c.node_identity.probe(probe).await.is_ok()
                    && c.ctrl_identity.probe(probe).await.is_ok()
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sockets did not answer within 20s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = Clients::connect(&self.node_sock, &self.ctrl_sock).await {
                let ready = c
                    .node_identity
                    .probe(pool_csi_proto::csi::ProbeRequest {})
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().ready);
                let ctrl = c
                    .ctrl_identity
                    .probe(pool_csi_proto::csi::ProbeRequest {})
                    .await
                    .is_ok();
                if ready == Some(true) && ctrl {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "driver did not become ready within 20s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn clients(&self) -> Clients {
        Clients::connect(&self.node_sock, &self.ctrl_sock)
            .await
            .expect("connect to the driver")
    }

    /// A path under the scratch dir (for staging and target paths).
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs `poolctl` against this driver's agent (and in cluster mode its
    /// fake API): (succeeded, stdout + stderr).
    pub fn poolctl(&self, args: &[&str]) -> (bool, String) {
        let agent = format!("--agent={}={}", self.opts.node_name, self.agent_addr);
        #[allow(clippy::disallowed_methods)] // the harness runs the binaries under test
        let mut cmd = std::process::Command::new(bin_dir().join("poolctl"));
        cmd.arg(&agent).args(args);
        // Cluster mode: the fake API's kubeconfig (orphans).
        if let Some(k) = &self.opts.kubeconfig {
            cmd.env("KUBECONFIG", k).env("POD_NAMESPACE", "kube-system");
        }
        let out = cmd.output().expect("run poolctl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Pid of a running binary (for memory measurements).
    pub fn pids(&self) -> (u32, u32) {
        (
            self.node.as_ref().map_or(0, |c| c.id()),
            self.controller.as_ref().map_or(0, |c| c.id()),
        )
    }
}

/// Waits until the node plugin on `sock` reports ready.
async fn wait_probe_ready(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(ch) = clients::uds_channel(sock).await {
            let mut id = pool_csi_proto::csi::identity_client::IdentityClient::new(ch);
            if id
                .probe(pool_csi_proto::csi::ProbeRequest {})
                .await
                .ok()
                .and_then(|r| r.into_inner().ready)
                == Some(true)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node plugin on {} not ready within 20s",
            sock.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for e in &mut self.extra {
            if let Some(c) = e.child.take() {
                cleanup::stop(c);
            }
        }
        for c in [self.node.take(), self.controller.take()]
            .into_iter()
            .flatten()
        {
            cleanup::stop(c);
        }
        cleanup::release_everything_under(self.dir.path());
    }
}

fn free_port() -> String {
    format!("127.0.0.1:{}", unused_port())
}

/// A port nothing listens on now, for a server a test starts. Taken below
/// the kernel's ephemeral range (32768 and up by default), where the tests'
/// own client connections get their local ports: a port from there could
/// be taken by one of them between this check and the server's bind.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Tests run as separate processes: start each at its own place.
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    // 7,919 is prime to 12,000: as many tries visit every port once.
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("every port from 20000 to 31999 is taken on 127.0.0.1");
}
