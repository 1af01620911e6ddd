//! A listing of a large file pool shares the node's runtime thread: the
//! node's other calls get in while it runs, and what they change shows.

use pool_csi_common::PoolDefinition;
use pool_csi_node::{
    exec::fake::FakeRunner,
    pools::{file::FilePool, Pool},
    Config,
};
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

/// A started dir pool at `root` holding raw volumes v000 to v599.
async fn pool_of_600(root: &std::path::Path, state: &std::path::Path) -> FilePool {
    let def = PoolDefinition::parse_documents(
        &format!(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: {{ name: files }}\nspec: {{ type: dir, target: {{ path: {} }}, autoBuild: true }}\n",
            root.display()
        ),
        "test",
    )
    .unwrap()
    .remove(0);
    let p = FilePool::new(
        &def,
        &Config::local("n1", state.into()),
        Arc::new(FakeRunner::new()),
    );
    p.start().await.unwrap();
    for i in 0..600 {
        std::fs::write(root.join(format!("v{i:03}.raw")), b"").unwrap();
    }
    p
}

/// On the one-thread runtime the node runs on, a call spawned before a
/// whole-pool listing of 600 volumes has run by the time the listing
/// ends: the listing let it in, instead of describing every volume in
/// one go. The call deletes the last volume, which the listing then
/// leaves out (it goes on in the names as they are after the call).
#[tokio::test(flavor = "current_thread")]
async fn a_long_listing_lets_other_calls_in() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("pool");
    let p = pool_of_600(&root, &t.path().join("state")).await;
    let ran = Arc::new(AtomicBool::new(false));
    let other = ran.clone();
    let last = root.join("v599.raw");
    let call = tokio::spawn(async move {
        std::fs::remove_file(last).unwrap();
        other.store(true, Ordering::SeqCst)
    });
    let page = p.list_page(None, 0).await.unwrap();
    let names: Vec<&str> = page.entries.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names.len(), 599, "every volume but the one deleted");
    assert_eq!((names[0], names[598]), ("v000", "v598"));
    assert!(page.entries.iter().all(|v| v.abnormal.is_none()));
    assert!(!page.more);
    assert!(
        ran.load(Ordering::SeqCst),
        "the other call waited for the whole listing"
    );
    call.await.unwrap();
}

/// Pages longer than a turn (256 names) are whole and follow one
/// another: pages of 400 give v000-v399, then v400-v599.
#[tokio::test(flavor = "current_thread")]
async fn pages_longer_than_a_turn_follow_one_another() {
    let t = tempfile::tempdir().unwrap();
    let p = pool_of_600(&t.path().join("pool"), &t.path().join("state")).await;
    let mut after: Option<String> = None;
    let mut seen = Vec::new();
    for (len, more) in [(400, true), (200, false)] {
        let page = p.list_page(after.as_deref(), 400).await.unwrap();
        assert_eq!((page.entries.len(), page.more), (len, more));
        seen.extend(page.entries.iter().map(|v| v.name.clone()));
        after = seen.last().cloned();
    }
    let want: Vec<String> = (0..600).map(|i| format!("v{i:03}")).collect();
    assert_eq!(seen, want);
}
