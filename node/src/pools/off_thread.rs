//! A pool whose storage can stop answering runs its operations off the
//! node's runtime thread.
//!
//! The node runs one runtime thread (see `main.rs`), and file pools make
//! plain file calls on it: stat, open, rename, fsync. On a local disk those
//! are short. On a netfs pool's share every one of them can block for as
//! long as the server does not answer — forever, for a hung NFS server on a
//! hard mount — and a blocked runtime thread stops every pool, every RPC
//! and Probe on the node. [`OffThread`] runs each operation of such a pool
//! on a thread of the blocking pool instead (driving the operation's own
//! I/O and timers through the runtime, as on the runtime thread), so a hang
//! holds that thread and that operation's lock only (a retry meanwhile is
//! ABORTED). The share's next status check (a bounded statfs; the
//! controller asks every few seconds) finds the pool not answering, and
//! later operations are refused at once.

use super::{
    AttachSource, CreateRequest, Expanded, LunEntry, Page, Pool, PoolState, PoolStatus, Snapshot,
    SnapshotQuery, Volume,
};
use crate::error::Result;
use pool_csi_common::oplock::on_blocking_thread;
use pool_csi_common::PoolType;
use std::{future::Future, sync::Arc};

/// `pool`, each of whose operations runs on a blocking-pool thread.
pub struct OffThread<P>(Arc<P>);

impl<P: Pool + 'static> OffThread<P> {
    pub fn new(pool: P) -> Self {
        Self(Arc::new(pool))
    }

    /// Runs `op` with the pool on a thread of its own.
    async fn run<T, F, Fut>(&self, op: F) -> T
    where
        F: FnOnce(Arc<P>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        on_blocking_thread(op(self.0.clone())).await
    }
}

#[tonic::async_trait]
impl<P: Pool + 'static> Pool for OffThread<P> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn pool_type(&self) -> PoolType {
        self.0.pool_type()
    }
    fn recorded_state(&self) -> PoolState {
        self.0.recorded_state()
    }
    fn shared(&self) -> bool {
        self.0.shared()
    }
    fn may_hang(&self) -> bool {
        true
    }
    async fn start(&self) -> Result<()> {
        self.run(|p| async move { p.start().await }).await
    }
    async fn build(&self, overwrite: bool) -> Result<()> {
        self.run(move |p| async move { p.build(overwrite).await })
            .await
    }
    async fn status(&self, count_volumes: bool) -> PoolStatus {
        self.run(move |p| async move { p.status(count_volumes).await })
            .await
    }
    async fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        let req = req.clone();
        self.run(|p| async move { p.create_volume(&req).await })
            .await
    }
    async fn delete_volume(&self, name: &str, wipe: bool) -> Result<()> {
        let name = name.to_owned();
        self.run(move |p| async move { p.delete_volume(&name, wipe).await })
            .await
    }
    async fn expand_volume(&self, name: &str, required: u64, limit: u64) -> Result<Expanded> {
        let name = name.to_owned();
        self.run(move |p| async move { p.expand_volume(&name, required, limit).await })
            .await
    }
    async fn get_volume(&self, name: &str) -> Result<Volume> {
        let name = name.to_owned();
        self.run(|p| async move { p.get_volume(&name).await }).await
    }
    async fn list_volumes(&self) -> Result<Vec<Volume>> {
        self.run(|p| async move { p.list_volumes().await }).await
    }
    async fn list_page(&self, after: Option<&str>, max: usize) -> Result<Page> {
        let after = after.map(str::to_owned);
        self.run(move |p| async move { p.list_page(after.as_deref(), max).await })
            .await
    }
    async fn create_snapshot(&self, source: &str, name: &str) -> Result<Snapshot> {
        let (source, name) = (source.to_owned(), name.to_owned());
        self.run(|p| async move { p.create_snapshot(&source, &name).await })
            .await
    }
    async fn delete_snapshot(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.run(|p| async move { p.delete_snapshot(&name).await })
            .await
    }
    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        self.run(|p| async move { p.list_snapshots().await }).await
    }
    async fn snapshots_page(&self, q: &SnapshotQuery<'_>) -> Result<Page<Snapshot>> {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        let (after, name, source, max) = (owned(q.after), owned(q.name), owned(q.source), q.max);
        self.run(move |p| async move {
            let q = SnapshotQuery {
                after: after.as_deref(),
                max,
                name: name.as_deref(),
                source: source.as_deref(),
            };
            p.snapshots_page(&q).await
        })
        .await
    }
    async fn attach_source(&self, name: &str) -> Result<AttachSource> {
        let name = name.to_owned();
        self.run(|p| async move { p.attach_source(&name).await })
            .await
    }
    async fn luns(&self) -> Result<Vec<LunEntry>> {
        self.run(|p| async move { p.luns().await }).await
    }
    async fn publish(&self, name: &str, node: &str) -> Result<()> {
        let (name, node) = (name.to_owned(), node.to_owned());
        self.run(|p| async move { p.publish(&name, &node).await })
            .await
    }
    async fn unpublish(&self, name: &str, node: &str) -> Result<()> {
        let (name, node) = (name.to_owned(), node.to_owned());
        self.run(|p| async move { p.unpublish(&name, &node).await })
            .await
    }
    async fn detached(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.run(|p| async move { p.detached(&name).await }).await
    }
    async fn stop(&self) -> Result<()> {
        self.run(|p| async move { p.stop().await }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_common::VolumeFormat;
    use std::{
        sync::{mpsc, Mutex},
        time::{Duration, Instant},
    };

    /// A pool whose volumes answer only once `go` says so, blocking the
    /// thread that asks meanwhile (as a file call on a hung share does),
    /// and then wait on a timer of the runtime (their own async I/O).
    struct Stuck {
        go: Mutex<mpsc::Receiver<()>>,
    }

    #[tonic::async_trait]
    impl Pool for Stuck {
        fn name(&self) -> &str {
            "share"
        }
        fn pool_type(&self) -> PoolType {
            PoolType::Netfs
        }
        fn recorded_state(&self) -> PoolState {
            PoolState::Running
        }
        async fn get_volume(&self, name: &str) -> Result<Volume> {
            self.go.lock().unwrap().recv().unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(Volume {
                name: name.into(),
                format: VolumeFormat::Raw,
                capacity: 1 << 20,
                allocation: 0,
                abnormal: None,
                published: None,
            })
        }
        async fn start(&self) -> Result<()> {
            unreachable!()
        }
        async fn build(&self, _: bool) -> Result<()> {
            unreachable!()
        }
        async fn status(&self, _: bool) -> PoolStatus {
            unreachable!()
        }
        async fn create_volume(&self, _: &CreateRequest) -> Result<Volume> {
            unreachable!()
        }
        async fn delete_volume(&self, _: &str, _: bool) -> Result<()> {
            unreachable!()
        }
        async fn expand_volume(&self, _: &str, _: u64, _: u64) -> Result<Expanded> {
            unreachable!()
        }
        async fn list_volumes(&self) -> Result<Vec<Volume>> {
            unreachable!()
        }
        async fn create_snapshot(&self, _: &str, _: &str) -> Result<Snapshot> {
            unreachable!()
        }
        async fn delete_snapshot(&self, _: &str) -> Result<()> {
            unreachable!()
        }
        async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
            unreachable!()
        }
        async fn attach_source(&self, _: &str) -> Result<AttachSource> {
            unreachable!()
        }
    }

    // The node's runtime: one thread.
    #[tokio::test(flavor = "current_thread")]
    async fn an_operation_blocked_on_its_storage_leaves_the_runtime_thread_running() {
        let (go, wait) = mpsc::channel();
        let pool = Arc::new(OffThread::new(Stuck {
            go: Mutex::new(wait),
        }));
        let p = pool.clone();
        let stuck = tokio::spawn(async move { p.get_volume("vol-1").await });
        // The storage answers after a second, from a thread of its own.
        let answer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            go.send(()).unwrap();
        });
        // Meanwhile the runtime thread serves everything else: on it, the
        // blocked call would hold this timer until the answer.
        let t = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "the runtime thread was blocked for {:?}",
            t.elapsed()
        );
        assert_eq!(pool.name(), "share", "plain accessors answer at once");
        assert!(!stuck.is_finished(), "the call waits for its storage");
        // Once the storage answers, the call ends (its timer ran from the
        // blocking thread) with the pool's answer.
        let v = tokio::time::timeout(Duration::from_secs(5), stuck)
            .await
            .expect("the call ends once the storage answers")
            .unwrap()
            .unwrap();
        assert_eq!(v.name, "vol-1");
        answer.join().unwrap();
    }
}
