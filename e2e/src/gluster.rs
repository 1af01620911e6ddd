//! A real GlusterFS server for the netfs tests: glusterd in a network
//! namespace of its own (it refuses loopback addresses), joined to the host
//! by a veth pair, with its state, sockets and brick in the test's scratch
//! directory, serving one volume the host mounts over FUSE. Stopped (every
//! process in the namespace) and removed on drop.

use crate::tool;
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub struct Gluster {
    ns: String,
    veth: String,
    dir: PathBuf,
    /// The server's address, as a pool's `source.host`.
    pub host: String,
    /// The volume, as a pool's `source.dir` (`/<name>`).
    pub volume: String,
}

/// Why a GlusterFS server cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    for t in ["glusterd", "gluster", "mount.glusterfs", "ip"] {
        if crate::which(t).is_none() {
            return Some(format!(
                "needs {t} (glusterfs-server, glusterfs-client, iproute2); run dev/setup"
            ));
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("needs /dev/fuse (the fuse module) for GlusterFS mounts".into());
    }
    None
}

fn must(program: &str, args: &[&str]) {
    let out = tool(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Gluster {
    /// A server with volume `name` on a brick under `dir`.
    pub fn start(dir: &Path, name: &str) -> Gluster {
        let id = std::process::id();
        // A subnet no interface here has yet (tests run side by side).
        let taken =
            String::from_utf8_lossy(&tool("ip", &["-o", "-4", "addr", "show"]).stdout).into_owned();
        let net = (0..250)
            .map(|k| (id + k) % 250)
            .find(|n| !taken.contains(&format!(" 10.251.{n}.")))
            .expect("a free 10.251.N.0/24 subnet");
        let g = Gluster {
            ns: format!("pcsi-gl-{id}"),
            veth: format!("pgl{id}"),
            dir: dir.join("gluster"),
            host: format!("10.251.{net}.2"),
            volume: format!("/{name}"),
        };
        for d in ["wd", "run", "brick"] {
            std::fs::create_dir_all(g.dir.join(d)).unwrap();
        }
        let peer = format!("{}b", g.veth);
        must("ip", &["netns", "add", &g.ns]);
        must(
            "ip",
            &[
                "link", "add", &g.veth, "type", "veth", "peer", "name", &peer,
            ],
        );
        must("ip", &["link", "set", &peer, "netns", &g.ns]);
        must(
            "ip",
            &["addr", "add", &format!("10.251.{net}.1/24"), "dev", &g.veth],
        );
        must("ip", &["link", "set", &g.veth, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", g.ns.as_str()];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        inside(&["ip", "addr", "add", &format!("{}/24", g.host), "dev", &peer]);
        inside(&["ip", "link", "set", &peer, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        g.start_server();
        let brick = format!("{}:{}", g.host, g.dir.join("brick").display());
        g.cli(&["volume", "create", name, &brick, "force"]);
        g.cli(&["volume", "start", name]);
        g
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("glusterd.sock")
    }

    /// The gluster CLI against this server.
    pub fn cli(&self, args: &[&str]) {
        let sock = format!("--glusterd-sock={}", self.sock().display());
        let mut all = vec![
            "netns",
            "exec",
            self.ns.as_str(),
            "gluster",
            &sock,
            "--mode=script",
        ];
        all.extend_from_slice(args);
        must("ip", &all);
    }

    /// Starts glusterd (again): the bricks of started volumes come back with it.
    pub fn start_server(&self) {
        let wd = format!("*.working-directory={}", self.dir.join("wd").display());
        let run = format!("*.run-directory={}", self.dir.join("run").display());
        let sock = format!("*.glusterd-sockfile={}", self.sock().display());
        let log = format!("--log-file={}", self.dir.join("glusterd.log").display());
        let _ = std::fs::remove_file(self.sock());
        let args = [
            "netns",
            "exec",
            &self.ns,
            "glusterd",
            &log,
            "--xlator-option",
            &wd,
            "--xlator-option",
            &run,
            "--xlator-option",
            &sock,
        ];
        // Right after a stop, a new glusterd sometimes fails to start (its
        // listening port or files not yet let go): it is tried again a few
        // times, as an operator would.
        let mut tries = 0;
        while !tool("ip", &args).status.success() {
            tries += 1;
            let tail = std::fs::read_to_string(self.dir.join("glusterd.log")).unwrap_or_default();
            let lines: Vec<&str> = tail.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            assert!(
                tries < 5,
                "glusterd did not start 5 times; its log ends:\n{}",
                tail.join("\n")
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.sock().exists() {
            assert!(
                Instant::now() < deadline,
                "glusterd did not start: see {}",
                self.dir.join("glusterd.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // A restart: glusterd is meant to bring the bricks of started
        // volumes back, and on a loaded machine it sometimes does not (the
        // mounts then fail with "Transport endpoint is not connected");
        // what an operator would run makes sure they are up.
        let name = self.volume.trim_start_matches('/');
        if !self.dir.join("wd/vols").join(name).exists() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            self.cli(&["volume", "start", name, "force"]);
            if self.brick_online(name) {
                return;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Whether `gluster volume status` shows the volume's brick online.
    fn brick_online(&self, name: &str) -> bool {
        let sock = format!("--glusterd-sock={}", self.sock().display());
        let out = tool(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns,
                "gluster",
                &sock,
                "--mode=script",
                "volume",
                "status",
                name,
            ],
        );
        // The first brick's row: a long brick path wraps onto the next
        // line, whose columns end with TCP port, RDMA port, Online, Pid.
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .skip_while(|l| !l.starts_with("Brick "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.len() >= 4)
            .is_some_and(|cols| cols[cols.len() - 2] == "Y")
    }

    /// The processes of the server (glusterd and its bricks).
    fn server_pids(&self) -> Vec<rustix::process::Pid> {
        let out = tool("ip", &["netns", "pids", &self.ns]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter_map(rustix::process::Pid::from_raw)
            .collect()
    }

    fn signal_server(&self, sig: rustix::process::Signal) {
        for p in self.server_pids() {
            let _ = rustix::process::kill_process(p, sig);
        }
    }

    /// Freezes the server without taking it away, as a hung NFS server:
    /// its clients' calls wait instead of failing. It answers again when
    /// the guard goes (a failing test included: the cleanup that follows
    /// reads the mounts).
    pub fn pause_server(&self) -> Paused<'_> {
        self.signal_server(rustix::process::Signal::STOP);
        Paused(self)
    }

    fn resume_server(&self) {
        self.signal_server(rustix::process::Signal::CONT);
    }

    /// Stops every process of the server (glusterd and its bricks).
    pub fn stop_server(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        self.resume_server();
        while !self.server_pids().is_empty() {
            self.signal_server(match Instant::now() < deadline {
                true => rustix::process::Signal::TERM,
                false => rustix::process::Signal::KILL,
            });
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A frozen server; see [`Gluster::pause_server`].
pub struct Paused<'a>(&'a Gluster);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.resume_server();
    }
}

impl Drop for Gluster {
    fn drop(&mut self) {
        self.stop_server();
        let _ = tool("ip", &["link", "del", &self.veth]);
        let _ = tool("ip", &["netns", "del", &self.ns]);
    }
}
