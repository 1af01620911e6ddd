//! The configuration directories the node's `lvm` runs with
//! (`LVM_SYSTEM_DIR`): the host's `/etc/lvm` as it is, plus
//! `global/use_aio = 0` — `<state>/lvm` for single commands, and
//! `<state>/lvm-shell` for the pool's long-lived shell
//! ([`super::lvm_shell`]), which also reports every command as one JSON
//! object with its command log.
//!
//! Why: with asynchronous I/O every `lvm` process ends in `io_destroy`,
//! which waits for an RCU grace period — measured 28–37 ms of a 49 ms
//! `lvs` on these machines, and paid by every step of a create or delete.
//! `use_aio` is read before `--config` is applied, so it can only come from
//! a configuration file, and the host's own file is not ours to change.
//!
//! What stays the host's: `lvm.conf` is copied with the one setting
//! appended (a later section's value wins), and `lvmlocal.conf`, `backup`,
//! `archive`, `profile`, `devices` (the devices file) and `cache` are
//! symlinks to the host's, so metadata backups, profiles and device
//! filters are exactly where other LVM tools look. LVM's own locking
//! (`/run/lock/lvm`) does not depend on the directory.

use std::{
    io,
    path::{Path, PathBuf},
};

/// What is added to the host's settings.
pub const OVERRIDE: &str =
    "\n# Added by pool-csi-node: no asynchronous I/O (io_destroy costs ~30 ms per command).\nglobal {\n\tuse_aio = 0\n}\n";

/// What the shell adds: reports and each command's log (with its return
/// code) as JSON, and no message printed beside them.
pub const SHELL_OVERRIDE: &str = "report {\n\toutput_format = \"json\"\n}\nlog {\n\treport_command_log = 1\n\tcommand_log_selection = \"all\"\n}\n";

/// The two directories.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// For commands run on their own.
    pub commands: PathBuf,
    /// For the shell.
    pub shell: PathBuf,
}

/// The entries linked back to the host's directory.
const LINKED: [&str; 6] = [
    "lvmlocal.conf",
    "backup",
    "archive",
    "profile",
    "devices",
    "cache",
];

/// Writes both directories under `state_dir` from `host` (normally
/// `/etc/lvm`). Files are replaced atomically, so pools starting at once
/// and a command reading them never see half a file.
pub fn prepare(state_dir: &Path, host: &Path) -> io::Result<Dirs> {
    Ok(Dirs {
        commands: write(&state_dir.join("lvm"), host, OVERRIDE)?,
        shell: write(
            &state_dir.join("lvm-shell"),
            host,
            &format!("{OVERRIDE}{SHELL_OVERRIDE}"),
        )?,
    })
}

fn write(dir: &Path, host: &Path, extra: &str) -> io::Result<PathBuf> {
    let dir = dir.to_path_buf();
    // Not create_dir_all: a node without its state directory makes none.
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let mut conf = match std::fs::read(host.join("lvm.conf")) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    conf.extend_from_slice(extra.as_bytes());
    let tmp = dir.join(format!(".lvm.conf.{}", std::process::id()));
    std::fs::write(&tmp, &conf)?;
    std::fs::rename(&tmp, dir.join("lvm.conf"))?;
    // lvm creates backup and archive when missing; create them where it
    // would have, so the links are never dangling.
    for d in ["backup", "archive"] {
        std::fs::create_dir_all(host.join(d))?;
    }
    for name in LINKED {
        let link = dir.join(name);
        let target = host.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link)?,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &link)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_settings_stay_and_backups_go_where_they_went() {
        let state = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(
            host.path().join("lvm.conf"),
            "devices {\n\tfilter = [ \"a|/dev/sd.*|\", \"r|.*|\" ]\n}\n",
        )
        .unwrap();
        let dirs = prepare(state.path(), host.path()).unwrap();
        let dir = dirs.commands;
        let conf = std::fs::read_to_string(dir.join("lvm.conf")).unwrap();
        let shell = std::fs::read_to_string(dirs.shell.join("lvm.conf")).unwrap();
        assert!(shell.starts_with("devices {\n\tfilter"), "{shell}");
        assert!(
            shell.ends_with(SHELL_OVERRIDE) && shell.contains("use_aio = 0"),
            "{shell}"
        );
        assert!(conf.starts_with("devices {\n\tfilter"), "{conf}");
        assert!(conf.ends_with(OVERRIDE), "{conf}");
        for name in LINKED {
            assert_eq!(
                std::fs::read_link(dir.join(name)).unwrap(),
                host.path().join(name)
            );
        }
        assert!(host.path().join("backup").is_dir());
        // Again (another pool starting): the same, nothing doubled.
        let again = prepare(state.path(), host.path()).unwrap().commands;
        assert_eq!(
            std::fs::read_to_string(again.join("lvm.conf")).unwrap(),
            conf
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1 + LINKED.len(),
            "no temporary file left"
        );
    }

    #[test]
    fn a_missing_state_directory_is_not_made() {
        let host = tempfile::tempdir().unwrap();
        let state = host.path().join("no-state");
        assert!(prepare(&state, host.path()).is_err());
        assert!(!state.exists());
    }

    #[test]
    fn a_host_without_lvm_conf_gets_the_defaults_and_the_override() {
        let state = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let dir = prepare(state.path(), host.path()).unwrap().commands;
        assert_eq!(
            std::fs::read_to_string(dir.join("lvm.conf")).unwrap(),
            OVERRIDE
        );
    }
}
