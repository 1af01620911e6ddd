//! Which node a shared file pool's single-node volume is published on:
//! `<target>/.pool-csi/published/<name>`, holding the node's name, on the
//! share itself. Every node of the pool sees the same file, and the share's
//! filesystem serialises the nodes: a claim is written whole under tmp and
//! renamed into place with RENAME_NOREPLACE, so of two nodes publishing one
//! volume at once exactly one rename lands.

use crate::{
    error::{io, Error, Result},
    fsutil::{remove_if_exists, rename_noreplace, sync_dir, write_new},
};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Claims {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Claims {
    /// Claims in `dir`, written through `tmp` (same filesystem).
    pub fn new(dir: PathBuf, tmp: PathBuf) -> Self {
        Self { dir, tmp }
    }

    /// The node volume `name` is published on, if any.
    pub fn holder(&self, name: &str) -> Result<Option<String>> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(node) => Ok(Some(node)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Records `node` as the volume's one user; FAILED_PRECONDITION while
    /// another node is.
    pub fn claim(&self, pool: &str, name: &str, node: &str) -> Result<()> {
        let taken = |other: String| {
            Error::Precondition(format!(
                "volume {name} of shared pool {pool} is published on node {other}; it is used on one node at a time: unpublish it there first"
            ))
        };
        match self.holder(name)? {
            Some(n) if n == node => return Ok(()),
            Some(other) => return Err(taken(other)),
            None => {}
        }
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let tmp = self.tmp.join(format!("c.{name}.{node}"));
        write_new(&tmp, node.as_bytes(), 0o644)?;
        let landed = rename_noreplace(&tmp, &self.dir.join(name));
        let _ = remove_if_exists(&tmp);
        match landed {
            Ok(()) => sync_dir(&self.dir),
            // Another node's claim landed first (or this node's, retried).
            Err(_) => match self.holder(name)? {
                Some(n) if n == node => Ok(()),
                Some(other) => Err(taken(other)),
                None => Err(Error::Precondition(format!(
                    "the claim of volume {name} changed while it was written; retry"
                ))),
            },
        }
    }

    /// Forgets `node` (empty: any node) as the volume's user.
    pub fn release(&self, name: &str, node: &str) -> Result<()> {
        match self.holder(name)? {
            Some(n) if node.is_empty() || n == node => {
                remove_if_exists(&self.dir.join(name))?;
                sync_dir(&self.dir)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_holds_a_claim_until_it_lets_go() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("tmp")).unwrap();
        let c = Claims::new(t.path().join("published"), t.path().join("tmp"));
        c.claim("share", "v", "node-a").unwrap();
        c.claim("share", "v", "node-a").unwrap(); // retried
        let e = c.claim("share", "v", "node-b").unwrap_err().to_string();
        assert!(e.contains("published on node node-a"), "{e}");
        c.release("v", "node-b").unwrap(); // not its claim: nothing changes
        assert_eq!(c.holder("v").unwrap().as_deref(), Some("node-a"));
        c.release("v", "node-a").unwrap();
        c.claim("share", "v", "node-b").unwrap();
        c.release("v", "").unwrap();
        assert_eq!(c.holder("v").unwrap(), None);
        assert_eq!(std::fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    }
}
