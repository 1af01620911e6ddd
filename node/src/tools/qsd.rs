//! `qemu-storage-daemon`: exports an image (qcow2, vmdk, ploop …) as a plain
//! file over FUSE, so a loop device can sit on it where neither qemu-nbd's
//! nbd module nor a ploop module exists. Each export has a pid file and a QMP
//! socket next to the export file; those three paths are all the state, so a
//! restarted node plugin finds its daemons again.

use crate::exec::{Cmd, CommandRunner, ExecError};
use pool_csi_common::VolumeFormat;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The files that belong to one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The FUSE mount point: a regular file that shows the image's contents.
    pub file: PathBuf,
    pub pid_file: PathBuf,
    pub qmp_socket: PathBuf,
}

impl Export {
    /// The export for `file`: `file.pid` and `file.qmp` beside it.
    pub fn at(file: PathBuf) -> Self {
        let with = |ext: &str| {
            let mut s = file.clone().into_os_string();
            s.push(ext);
            PathBuf::from(s)
        };
        Self {
            pid_file: with(".pid"),
            qmp_socket: with(".qmp"),
            file,
        }
    }

    /// The daemon's pid, when its pid file names a live qemu-storage-daemon.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = cmdline.windows(19).any(|w| w == b"qemu-storage-daemon")
            && cmdline
                .windows(self.pid_file.as_os_str().len())
                .any(|w| w == self.pid_file.as_os_str().as_encoded_bytes());
        ours.then_some(pid)
    }
}

/// What a daemon exports: one image, or a chain of parallels (ploop)
/// images, lowest first, each the backing of the next.
#[derive(Debug, Clone, Copy)]
pub enum Image<'a> {
    One {
        path: &'a Path,
        format: VolumeFormat,
    },
    PloopChain(&'a [PathBuf]),
}

/// The node name of chain position `i` in a daemon's block graph; live
/// changes (`push_delta`) address the top by it.
pub fn chain_node(i: usize) -> String {
    format!("d{i}")
}

/// Starts a daemon exporting `image` at `export.file`; returns once the export
/// is mounted (`--daemonize` waits for that).
pub async fn start(
    runner: &dyn CommandRunner,
    image: Image<'_>,
    export: &Export,
) -> Result<(), ExecError> {
    let mut cmd = Cmd::new("qemu-storage-daemon")
        .args(["--daemonize", "--pidfile"])
        .arg(&export.pid_file);
    let top = match image {
        Image::One { path, format } => {
            let mut file_opt = std::ffi::OsString::from("driver=file,node-name=file,filename=");
            file_opt.push(escape_opt(path));
            cmd = cmd
                .arg("--blockdev")
                .arg(file_opt)
                .arg("--blockdev")
                .arg(format!(
                    "driver={},node-name=fmt,file=file",
                    super::qemu_img::driver(format)
                ));
            "fmt".to_string()
        }
        Image::PloopChain(chain) => {
            // qemu's parallels driver takes no `backing` option on the
            // command line, so the images start unlinked and are chained
            // (and exported) over QMP below.
            for (i, path) in chain.iter().enumerate() {
                let mut file_opt =
                    std::ffi::OsString::from(format!("driver=file,node-name=f{i},filename="));
                file_opt.push(escape_opt(path));
                cmd = cmd
                    .arg("--blockdev")
                    .arg(file_opt)
                    .arg("--blockdev")
                    .arg(format!(
                        "driver=parallels,node-name={},file=f{i}",
                        chain_node(i)
                    ));
            }
            chain_node(chain.len().saturating_sub(1))
        }
    };
    let chained = match image {
        Image::One { .. } => None,
        Image::PloopChain(chain) => Some(chain.len()),
    };
    if chained.is_none() {
        let mut export_opt = std::ffi::OsString::from(format!(
            "type=fuse,id=exp,node-name={top},writable=on,mountpoint="
        ));
        export_opt.push(escape_opt(&export.file));
        cmd = cmd.arg("--export").arg(export_opt);
    }
    let mut qmp_opt = std::ffi::OsString::from("socket,id=qmp,server=on,wait=off,path=");
    qmp_opt.push(escape_opt(&export.qmp_socket));
    let cmd = cmd
        .arg("--chardev")
        .arg(qmp_opt)
        .args(["--monitor", "chardev=qmp"])
        .timeout(Duration::from_secs(30));
    runner.run_ok(&cmd).await?;
    if let Some(depth) = chained {
        let mut steps: Vec<(&'static str, String)> = (1..depth)
            .map(|i| ("blockdev-snapshot", snapshot_cmd(i - 1, i)))
            .collect();
        let mountpoint =
            serde_json::to_string(&export.file.to_string_lossy()).expect("a string serialises");
        steps.push((
            "block-export-add",
            format!(
                r#"{{"execute":"block-export-add","arguments":{{"type":"fuse","id":"exp","node-name":"{top}","writable":true,"mountpoint":{mountpoint}}}}}"#
            ),
        ));
        if let Err(e) = qmp(export, &steps).await {
            let _ = stop(export, Duration::from_secs(5)).await;
            return Err(ExecError::Failed {
                cmd: cmd.to_string(),
                status: 0,
                stderr: format!("started, but chaining the ploop deltas failed: {e}"),
            });
        }
    }
    Ok(())
}

/// QMP: make chain node `upper` the overlay of chain node `lower`.
fn snapshot_cmd(lower: usize, upper: usize) -> String {
    format!(
        r#"{{"execute":"blockdev-snapshot","arguments":{{"node":"{}","overlay":"{}"}}}}"#,
        chain_node(lower),
        chain_node(upper)
    )
}

/// qemu option values escape ',' by doubling it. Our paths are ASCII
/// (state dir plus validated names), so the lossy conversion never alters them.
fn escape_opt(p: &Path) -> std::ffi::OsString {
    p.to_string_lossy().replace(',', ",,").into()
}

/// A QMP conversation failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("failed to talk to qemu-storage-daemon at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("qemu-storage-daemon refused {command}: {reply}")]
    Refused {
        command: &'static str,
        reply: String,
    },
}

/// Grows the exported image online (QMP `block_resize`).
pub async fn resize(export: &Export, size: u64) -> Result<(), QmpError> {
    qmp(
        export,
        &[(
            "block_resize",
            format!(
                r#"{{"execute":"block_resize","arguments":{{"node-name":"fmt","size":{size}}}}}"#
            ),
        )],
    )
    .await
}

/// Makes the running daemon's chain the descriptor's: `chain` is every
/// image of the disk, base first, whose last one(s) the daemon may not have
/// yet (new, empty deltas). Each missing one is added (QMP `blockdev-add`)
/// and put on top (`blockdev-snapshot`): from then on writes go to it, and
/// the old top is read-only history. The export follows the new top, so a
/// bigger delta also grows the exported disk.
///
/// Idempotent after a crash at any point: the daemon's top is read back
/// (the highest chain node with a backing node), and nodes a killed
/// attempt added but never put on top are removed before they are added
/// again.
pub async fn push_deltas(export: &Export, chain: &[PathBuf]) -> Result<(), QmpError> {
    let nodes = qmp_query(
        export,
        "query-named-block-nodes",
        r#"{"execute":"query-named-block-nodes","arguments":{"flat":true}}"#,
    )
    .await?;
    let top = active_top(&nodes);
    let mut steps: Vec<(&'static str, String)> = Vec::new();
    for i in top + 1..chain.len() {
        // Leftovers of an attempt that never switched: gone first.
        for node in [chain_node(i), format!("f{i}")] {
            if has_node(&nodes, &node) {
                steps.push((
                    "blockdev-del",
                    format!(r#"{{"execute":"blockdev-del","arguments":{{"node-name":"{node}"}}}}"#),
                ));
            }
        }
    }
    // Removing a parent removes the file node it made: a second del of
    // that child may find nothing, which is fine.
    let _ = qmp_each(export, &steps).await;
    let mut steps = Vec::new();
    for (i, file) in chain.iter().enumerate().skip(top + 1) {
        let new = chain_node(i);
        let file = serde_json::to_string(&file.to_string_lossy()).expect("a string serialises");
        steps.push((
            "blockdev-add",
            format!(
                r#"{{"execute":"blockdev-add","arguments":{{"driver":"parallels","node-name":"{new}","file":{{"driver":"file","node-name":"f{i}","filename":{file}}}}}}}"#
            ),
        ));
        steps.push(("blockdev-snapshot", snapshot_cmd(i - 1, i)));
    }
    qmp(export, &steps).await
}

/// The index of the daemon's top chain node: the highest `d<i>` that is
/// on the chain — the base, or a node with a backing node (one added but
/// never put on top has none). The parallels driver reports no backing
/// depth, but names the backing file.
fn active_top(nodes: &serde_json::Value) -> usize {
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let i: usize = n["node-name"].as_str()?.strip_prefix('d')?.parse().ok()?;
            (i == 0 || n["backing_file"].is_string()).then_some(i)
        })
        .max()
        .unwrap_or(0)
}

fn has_node(nodes: &serde_json::Value, name: &str) -> bool {
    nodes
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n["node-name"] == name))
}

/// Runs each command, whatever the ones before answered; the first refusal
/// is returned at the end.
async fn qmp_each(export: &Export, commands: &[(&'static str, String)]) -> Result<(), QmpError> {
    let mut first = Ok(());
    for c in commands {
        if let Err(e) = qmp(export, std::slice::from_ref(c)).await {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

/// One QMP query; its `return` value.
async fn qmp_query(
    export: &Export,
    name: &'static str,
    command: &str,
) -> Result<serde_json::Value, QmpError> {
    let mut got = serde_json::Value::Null;
    converse(export, &[(name, command.to_string())], |reply| {
        got = reply["return"].clone();
    })
    .await?;
    Ok(got)
}

/// Runs QMP commands in order on the daemon's monitor; the first refusal ends it.
async fn qmp(export: &Export, commands: &[(&'static str, String)]) -> Result<(), QmpError> {
    converse(export, commands, |_| {}).await
}

/// [`qmp`], handing each command's reply to `each`.
async fn converse(
    export: &Export,
    commands: &[(&'static str, String)],
    mut each: impl FnMut(&serde_json::Value),
) -> Result<(), QmpError> {
    let io = |source| QmpError::Io {
        path: export.qmp_socket.clone(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(&export.qmp_socket)
        .await
        .map_err(io)?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    lines.next_line().await.map_err(io)?; // greeting
    let caps = (
        "qmp_capabilities",
        r#"{"execute":"qmp_capabilities"}"#.to_string(),
    );
    for (i, (name, c)) in std::iter::once(&caps).chain(commands).enumerate() {
        w.write_all(c.as_bytes()).await.map_err(io)?;
        w.write_all(b"\n").await.map_err(io)?;
        loop {
            let Some(reply) = lines.next_line().await.map_err(io)? else {
                return Err(QmpError::Refused {
                    command: name,
                    reply: "connection closed".into(),
                });
            };
            if reply.contains("\"event\"") {
                continue;
            }
            if !reply.contains("\"return\"") {
                return Err(QmpError::Refused {
                    command: name,
                    reply,
                });
            }
            if i > 0 {
                each(&serde_json::from_str(&reply).unwrap_or_default());
            }
            break;
        }
    }
    Ok(())
}

/// Whether `pid` is a live qemu-storage-daemon (a zombie's cmdline is empty).
fn is_daemon(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(19).any(|w| w == b"qemu-storage-daemon"))
}

/// Stops the daemon (SIGTERM, then SIGKILL after `grace`) and removes its files.
pub async fn stop(export: &Export, grace: Duration) -> std::io::Result<()> {
    if let Some(pid) = export.running_pid() {
        let pid_t =
            rustix::process::Pid::from_raw(pid).ok_or_else(|| std::io::Error::other("bad pid"))?;
        // A pidfd pins the process (no pid reuse) and wakes us the moment
        // it exits; polling /proc is the fallback where there is none.
        if let Ok(fd) = rustix::process::pidfd_open(pid_t, rustix::process::PidfdFlags::empty()) {
            // Still this export's daemon now that the pid is pinned.
            if is_daemon(pid) && export.running_pid() == Some(pid) {
                stop_by_pidfd(fd, grace).await?;
            }
            return remove_files(export);
        }
        let _ = rustix::process::kill_process(pid_t, rustix::process::Signal::TERM);
        let deadline = tokio::time::Instant::now() + grace;
        // Wait for the process itself, not its pid file: qemu removes the
        // file before it has closed (and finished writing) its images.
        while is_daemon(pid) {
            if tokio::time::Instant::now() > deadline {
                let _ = rustix::process::kill_process(pid_t, rustix::process::Signal::KILL);
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    remove_files(export)
}

/// SIGTERM through `fd`, then SIGKILL after `grace`; returns once the
/// process has exited (or a second after the SIGKILL).
async fn stop_by_pidfd(fd: std::os::fd::OwnedFd, grace: Duration) -> std::io::Result<()> {
    use rustix::process::{pidfd_send_signal, Signal};
    let _ = pidfd_send_signal(&fd, Signal::TERM);
    // Deprecated for descriptors a caller could close behind tokio's back;
    // an OwnedFd moved into the AsyncFd cannot be, which is the safe case.
    #[allow(deprecated)]
    let exited = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
    if tokio::time::timeout(grace, exited.readable())
        .await
        .is_err()
    {
        let _ = pidfd_send_signal(exited.get_ref(), Signal::KILL);
        let _ = tokio::time::timeout(Duration::from_secs(1), exited.readable()).await;
    }
    Ok(())
}

fn remove_files(export: &Export) -> std::io::Result<()> {
    for f in [&export.pid_file, &export.qmp_socket] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_files_sit_beside_the_export() {
        let e = Export::at("/var/lib/pool-csi/exports/p/v".into());
        assert_eq!(e.pid_file, Path::new("/var/lib/pool-csi/exports/p/v.pid"));
        assert_eq!(e.qmp_socket, Path::new("/var/lib/pool-csi/exports/p/v.qmp"));
        assert_eq!(e.running_pid(), None);
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        assert_eq!(escape_opt(Path::new("/a,b/c")), "/a,,b/c");
    }
}
