//! Paths from the CO (staging and target paths, volume paths): checked at
//! the edge, before anything is looked up. A path must be absolute, without
//! `..`, and lie under the kubelet's directory (`--kubelet-dir`) — also once
//! the links among its existing parts are followed — so no request can make
//! the node create, mount or remove anything elsewhere.

use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};

/// `p` as a path the node may work at: its text checked ([`lexical`]),
/// then the links among its existing parts ([`links_stay_inside`]).
pub fn co_path(kubelet_dir: &Path, field: &'static str, p: &str) -> Result<PathBuf> {
    let path = lexical(kubelet_dir, field, p)?;
    links_stay_inside(kubelet_dir, field, &path)?;
    Ok(path)
}

fn outside(kubelet_dir: &Path, field: &'static str, p: &Path) -> Error {
    Error::invalid(
        field,
        &p.display().to_string(),
        format_args!(
            "must lie under the kubelet directory {} (--kubelet-dir)",
            kubelet_dir.display()
        ),
    )
}

/// `p` checked as text only (absolute, no '..', under the kubelet
/// directory): touches no filesystem, so it cannot wait on one.
pub fn lexical(kubelet_dir: &Path, field: &'static str, p: &str) -> Result<PathBuf> {
    if p.is_empty() {
        return Err(Error::MissingField { field });
    }
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::invalid(
            field,
            p,
            "must be an absolute path without '..'",
        ));
    }
    if !path.starts_with(kubelet_dir) || path == kubelet_dir {
        return Err(outside(kubelet_dir, field, path));
    }
    Ok(path.to_path_buf())
}

/// A link among the existing parts of `path` must not lead out of the
/// kubelet directory either. Stats those parts: for a volume on a share,
/// this waits as long as the share does (callers run it off the runtime
/// thread).
pub fn links_stay_inside(kubelet_dir: &Path, field: &'static str, path: &Path) -> Result<()> {
    let root = std::fs::canonicalize(kubelet_dir).unwrap_or_else(|_| kubelet_dir.into());
    let existing = path.ancestors().find(|a| a.exists()).unwrap_or(kubelet_dir);
    match std::fs::canonicalize(existing) {
        Ok(real) if !real.starts_with(&root) => Err(outside(kubelet_dir, field, path)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_kubelet_directory() {
        let t = tempfile::tempdir().unwrap();
        let kubelet = t.path().join("kubelet");
        std::fs::create_dir_all(kubelet.join("pods/a")).unwrap();
        let under = kubelet.join("pods/a/volumes/x");
        assert_eq!(
            co_path(&kubelet, "target_path", under.to_str().unwrap()).unwrap(),
            under
        );
        for bad in ["", "relative/x", "/etc/x", "/var/lib/kubelet/../etc"] {
            assert!(co_path(&kubelet, "target_path", bad).is_err(), "{bad}");
        }
        let k = kubelet.to_str().unwrap();
        assert!(
            co_path(&kubelet, "target_path", k).is_err(),
            "the dir itself"
        );
        assert!(co_path(&kubelet, "t", &format!("{k}/../x")).is_err());
        // A link inside that points outside is refused too.
        std::os::unix::fs::symlink("/etc", kubelet.join("pods/evil")).unwrap();
        let e = co_path(
            &kubelet,
            "staging_target_path",
            &format!("{k}/pods/evil/new"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("kubelet directory"), "{e}");
        // As text it passes: the link is what `links_stay_inside` finds.
        let evil = lexical(&kubelet, "target_path", &format!("{k}/pods/evil/new")).unwrap();
        assert!(links_stay_inside(&kubelet, "target_path", &evil).is_err());
        assert!(lexical(&kubelet, "target_path", "/etc/x").is_err());
        assert!(matches!(
            co_path(&kubelet, "target_path", ""),
            Err(Error::MissingField { .. })
        ));
    }
}
