//! A listing of a large file pool shares the node's runtime thread: the
//! node's other calls get in while it runs.

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

/// On the one-thread runtime the node runs on, a call spawned before a
/// whole-pool listing of 600 volumes has run by the time the listing
/// ends: the listing let it in, instead of describing every volume in
/// one go.
#[tokio::test(flavor = "current_thread")]
async fn a_long_listing_lets_other_calls_in() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("pool");
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
        &Config::local("n1", t.path().join("state")),
        Arc::new(FakeRunner::new()),
    );
    p.start().await.unwrap();
    for i in 0..600 {
        std::fs::write(root.join(format!("v{i:03}.raw")), b"").unwrap();
    }
    let ran = Arc::new(AtomicBool::new(false));
    let other = ran.clone();
    let call = tokio::spawn(async move { other.store(true, Ordering::SeqCst) });
    let page = p.list_page(None, 0).await.unwrap();
    assert_eq!(page.entries.len(), 600);
    assert!(!page.more);
    assert!(
        ran.load(Ordering::SeqCst),
        "the other call waited for the whole listing"
    );
    call.await.unwrap();
}
