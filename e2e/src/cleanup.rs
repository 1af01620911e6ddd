//! Leaves the machine as it was: stops processes, unmounts everything under
//! the scratch dir (deepest first), detaches loop devices on its files, and
//! stops any qemu-storage-daemon it started.

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

/// SIGTERM, then SIGKILL after 5 s.
pub fn stop(mut child: Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Releases every mount, loop device and export daemon under `dir`.
pub fn release_everything_under(dir: &Path) {
    // Daemons first: their FUSE exports hold loop devices.
    for pidfile in walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pid"))
    {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
        }
    }
    // Loops first: once the pool's tmpfs is (lazily) unmounted, their backing
    // paths no longer start with `dir` and could not be recognised. A loop
    // device still mounted is marked autoclear and goes with its last mount.
    for _ in 0..3 {
        detach_loops_under(dir);
        for mp in mount_points_under(dir) {
            let _ = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn detach_loops_under(dir: &Path) {
    for name in loops_under(dir) {
        detach_loop_if(&name, |b| b.starts_with(dir));
    }
}

/// Detaches `/dev/<name>` if its backing file passes `ours`. The device is
/// held open across the check and the detach, so a number freed and reused
/// by a test running alongside is never detached by mistake (`losetup -d`
/// of a held device takes effect when the holder closes it).
pub fn detach_loop_if(name: &str, ours: impl Fn(&Path) -> bool) {
    let Ok(held) = std::fs::File::open(Path::new("/dev").join(name)) else {
        return;
    };
    let Ok(b) =
        std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file"))
    else {
        return;
    };
    if ours(Path::new(b.trim().trim_end_matches(" (deleted)"))) {
        #[allow(clippy::disallowed_methods)] // test cleanup, not driver code
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(format!("/dev/{name}"))
            .status();
    }
    drop(held);
}

/// Loop devices (e.g. `loop3`) whose backing file lies under `dir`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let b = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let under = Path::new(b.trim().trim_end_matches(" (deleted)")).starts_with(dir);
            (name.starts_with("loop") && under).then_some(name)
        })
        .collect()
}

/// Live qemu-storage-daemon processes whose command line names `dir`.
pub fn daemons_under(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let ours = cmd.windows(19).any(|w| w == b"qemu-storage-daemon")
                && cmd.windows(needle.len()).any(|w| w == needle);
            ours.then_some(pid)
        })
        .collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}
