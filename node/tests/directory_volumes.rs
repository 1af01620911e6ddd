//! Directory volumes in a dir pool (no commands run): what DeleteVolume
//! does with the data for each onDelete policy, and that a listing reads
//! the recorded capacity without walking the tree.

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
