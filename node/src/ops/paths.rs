//! Paths from the CO (staging and target paths, volume paths): checked at
//! the edge, before anything is looked up. A path must be absolute, without
//! `..`, and lie under the kubelet's directory (`--kubelet-dir`) — also once
//! the links among its existing parts are followed — so no request can make
//! the node create, mount or remove anything elsewhere.

use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};

/// `p` as a path the node may work at.
pub fn co_path(kubelet_dir: &Path, field: &'static str, p: &str) -> Result<PathBuf> {
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
    let outside = || {
        Error::invalid(
            field,
            p,
            format_args!(
                "must lie under the kubelet directory {} (--kubelet-dir)",
                kubelet_dir.display()
            ),
        )
    };
    if !path.starts_with(kubelet_dir) || path == kubelet_dir {
        return Err(outside());
    }
    // A link among the parts that exist must not lead out of it either.
    let root = std::fs::canonicalize(kubelet_dir).unwrap_or_else(|_| kubelet_dir.into());
    let existing = path.ancestors().find(|a| a.exists()).unwrap_or(kubelet_dir);
    match std::fs::canonicalize(existing) {
        Ok(real) if real.starts_with(&root) => Ok(path.to_path_buf()),
        Ok(_) => Err(outside()),
        Err(_) => Ok(path.to_path_buf()),
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
        assert!(matches!(
            co_path(&kubelet, "target_path", ""),
            Err(Error::MissingField { .. })
        ));
    }
}
