//! Directory volumes in a dir pool (no commands run by the pool): what
//! DeleteVolume does with the data for each onDelete policy, that a listing
//! reads the recorded capacity without walking the tree, and that a volume
//! mounted on the node is not deleted (on btrfs too).

#![allow(clippy::disallowed_methods)] // the test mounts with the real tools

use pool_csi_common::{OnDelete, PoolDefinition, VolumeFormat};
use pool_csi_node::{
    exec::fake::FakeRunner,
    pools::{file::FilePool, CreateRequest, Pool},
    Config,
};
use std::{path::Path, sync::Arc};

fn pool(dir: &Path) -> FilePool {
    let def = PoolDefinition::parse_documents(
        &format!(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: files }}\nspec: {{ type: dir, target: {{ path: {} }}, autoBuild: true }}\n",
            dir.join("pool").display()
        ),
        "test",
    )
    .unwrap()
    .remove(0);
    FilePool::new(
        &def,
        &Config::local("n1", dir.join("state")),
        Arc::new(FakeRunner::new()),
    )
}

/// A directory volume `name` kept by `policy`, holding one file.
async fn made(p: &FilePool, root: &Path, name: &str, policy: OnDelete) {
    let req = CreateRequest {
        format: Some(VolumeFormat::Directory),
        on_delete: policy,
        ..CreateRequest::sized(name, 8)
    };
    let v = p.create_volume(&req).await.unwrap();
    assert_eq!((v.format, v.capacity), (VolumeFormat::Directory, 8 << 20));
    std::fs::write(root.join(format!("{name}.directory/data/f")), b"data").unwrap();
    let listed = p.get_volume(name).await.unwrap();
    assert_eq!(
        (listed.capacity, listed.allocation),
        (8 << 20, 0),
        "no walk"
    );
}

#[tokio::test]
async fn delete_removes_retains_or_archives_the_data_as_recorded() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("pool");
    let p = pool(t.path());
    p.start().await.unwrap();
    let names = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".pool-csi")
            .collect();
        v.sort();
        v
    };

    made(&p, &root, "gone", OnDelete::Delete).await;
    p.delete_volume("gone", false).await.unwrap();
    assert!(names().is_empty(), "{:?}", names());

    made(&p, &root, "kept", OnDelete::Retain).await;
    p.delete_volume("kept", false).await.unwrap();
    assert_eq!(names(), ["retained-kept"]);
    assert_eq!(
        std::fs::read(root.join("retained-kept/data/f")).unwrap(),
        b"data"
    );
    // A second volume of that name retained: kept beside the first.
    made(&p, &root, "kept", OnDelete::Retain).await;
    p.delete_volume("kept", false).await.unwrap();
    let n = names();
    assert_eq!(n.len(), 2, "{n:?}");
    assert!(n[1].starts_with("retained-kept-"), "{n:?}");

    made(&p, &root, "old", OnDelete::Archive).await;
    p.delete_volume("old", false).await.unwrap();
    assert!(p.get_volume("old").await.is_err(), "deleted is gone");
    let archived = names()
        .into_iter()
        .find(|n| n.starts_with("archived-old-"))
        .unwrap();
    assert_eq!(archived.len(), "archived-old-".len() + 16, "{archived}");
    // Nothing of any of them is left in tmp.
    assert_eq!(
        std::fs::read_dir(root.join(".pool-csi/tmp"))
            .unwrap()
            .count(),
        0
    );
}

/// Runs a tool of the test's own set-up; its stdout.
fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Unmounts and detaches what a test set up, also when it fails.
#[derive(Default)]
struct Undo(Vec<Vec<String>>);

impl Drop for Undo {
    fn drop(&mut self) {
        for cmd in self.0.iter().rev() {
            let _ = std::process::Command::new(&cmd[0]).args(&cmd[1..]).output();
        }
    }
}

/// In a dir pool at `dir/pool`: a directory volume whose data is bind
/// mounted is refused deletion, data untouched, and deleted once unmounted.
async fn refused_while_mounted(dir: &Path) {
    let root = dir.join("pool");
    let p = pool(dir);
    p.start().await.unwrap();
    made(&p, &root, "v", OnDelete::Delete).await;
    let target = dir.join("target");
    std::fs::create_dir(&target).unwrap();
    let data = root.join("v.directory/data");
    let (data_s, target_s) = (data.to_str().unwrap(), target.to_str().unwrap());
    run("mount", &["--bind", data_s, target_s]);
    let mut undo = Undo::default();
    undo.0.push(vec!["umount".into(), target_s.into()]);
    let err = p.delete_volume("v", false).await.unwrap_err();
    use pool_csi_common::GrpcCode;
    assert_eq!(err.grpc_code(), tonic::Code::FailedPrecondition);
    let err = err.to_string();
    assert!(
        err.contains(&format!("a bind mount at {target_s}")),
        "{err}"
    );
    assert_eq!(std::fs::read(data.join("f")).unwrap(), b"data");
    run("umount", &[target_s]);
    undo.0.clear();
    p.delete_volume("v", false).await.unwrap();
    assert!(!root.join("v.directory").exists());
}

/// A directory volume mounted on the node (staged or published) is not
/// deleted: on the filesystem the tests run on, and on btrfs (its top
/// subvolume and another), whose files carry a device number of their
/// subvolume's that is no mount's in the mount table.
#[tokio::test]
async fn a_mounted_directory_volume_is_not_deleted() {
    if !rustix::process::geteuid().is_root() {
        pool_csi_testkit::skip::skip("requirements", "needs root (bind mounts)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("here")).unwrap();
    refused_while_mounted(&t.path().join("here")).await;

    if std::process::Command::new("mkfs.btrfs")
        .arg("--version")
        .output()
        .is_err()
    {
        pool_csi_testkit::skip::skip(
            "mkfs.btrfs",
            "btrfs-progs is missing (dev/setup installs it)",
        );
        return;
    }
    let image = t.path().join("btrfs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let mut undo = Undo::default();
    let dev = run("losetup", &["--find", "--show", image.to_str().unwrap()]);
    undo.0
        .push(vec!["losetup".into(), "-d".into(), dev.clone()]);
    run("mkfs.btrfs", &["-q", &dev]);
    let mnt = t.path().join("btrfs");
    std::fs::create_dir(&mnt).unwrap();
    run("mount", &[&dev, mnt.to_str().unwrap()]);
    undo.0
        .push(vec!["umount".into(), mnt.to_str().unwrap().into()]);
    std::fs::create_dir(mnt.join("top")).unwrap();
    refused_while_mounted(&mnt.join("top")).await;
    run(
        "btrfs",
        &["subvolume", "create", mnt.join("sub").to_str().unwrap()],
    );
    refused_while_mounted(&mnt.join("sub")).await;
}
