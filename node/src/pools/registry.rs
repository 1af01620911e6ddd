//! The pools of this node: built from their definitions (the only `match` on
//! [`PoolType`] in the node), swapped live when definitions change, started,
//! and rendered as Prometheus gauges.

use super::{disk, file, logical, lun, lun_sources, off_thread, Pool, PoolState};
use crate::{
    error::{Error, Result},
    exec::CommandRunner,
    Config,
};
use pool_csi_common::{PoolDefinition, PoolType};
use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

/// Pools handed to the caller to start or stop.
type PoolList = Vec<Arc<dyn Pool>>;

/// The pools of this node, by name. Definitions can change while the node
/// runs (StoragePool objects in a cluster): [`PoolRegistry::sync`] swaps
/// pools in and out; handlers hold an `Arc` to the pool they work on. The
/// default registry has not read its definitions yet (a node reading them
/// from the cluster, until its first sync): it knows no pool to be absent.
#[derive(Default)]
pub struct PoolRegistry {
    inner: RwLock<Pools>,
}

#[derive(Default, Clone)]
struct Pools {
    pools: BTreeMap<String, Arc<dyn Pool>>,
    /// The definition each entry was built from.
    defs: BTreeMap<String, PoolDefinition>,
    /// The definitions were read: a name not here is no pool of this node.
    read: bool,
}

impl Pools {
    fn add(&mut self, def: &PoolDefinition, cfg: &Config, runner: &Arc<dyn CommandRunner>) {
        let luns = |src: Box<dyn lun::LunSource>| -> Arc<dyn Pool> {
            Arc::new(lun::LunPool::new(def, cfg, src))
        };
        let pool: Arc<dyn Pool> = match def.spec.pool_type {
            PoolType::Dir | PoolType::Fs => Arc::new(file::FilePool::new(def, cfg, runner.clone())),
            // Its file calls can block as long as the share's server is gone.
            PoolType::Netfs => Arc::new(off_thread::OffThread::new(file::FilePool::new(
                def,
                cfg,
                runner.clone(),
            ))),
            PoolType::Disk => Arc::new(disk::DiskPool::new(def, cfg, runner.clone())),
            PoolType::Logical => Arc::new(logical::LogicalPool::new(def, cfg, runner.clone())),
            PoolType::Iscsi => luns(Box::new(lun_sources::IscsiSource::new(
                def,
                cfg,
                runner.clone(),
            ))),
            PoolType::Scsi => luns(Box::new(lun_sources::ScsiSource::new(
                def,
                cfg,
                runner.clone(),
            ))),
            PoolType::Mpath => luns(Box::new(lun_sources::MpathSource::new(cfg, runner.clone()))),
        };
        self.pools.insert(def.name.clone(), pool);
        self.defs.insert(def.name.clone(), def.clone());
    }

    fn remove(&mut self, name: &str) {
        self.pools.remove(name);
        self.defs.remove(name);
    }
}

impl PoolRegistry {
    /// Builds the pools from their definitions (nothing is started yet).
    pub fn new(defs: &[PoolDefinition], cfg: &Config, runner: Arc<dyn CommandRunner>) -> Self {
        let mut p = Pools {
            read: true,
            ..Default::default()
        };
        for def in defs {
            p.add(def, cfg, &runner);
        }
        Self {
            inner: RwLock::new(p),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pools> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the registry hold exactly `defs`: new and changed definitions
    /// get new pools, removed ones are dropped. A pool whose definition did
    /// not change is kept as it is. Returns (the new pools, to be started;
    /// the dropped ones, to be stopped first).
    pub fn sync(
        &self,
        defs: &[PoolDefinition],
        cfg: &Config,
        runner: Arc<dyn CommandRunner>,
    ) -> (PoolList, PoolList) {
        let mut next = self.read().clone();
        next.read = true;
        let wanted: BTreeMap<&str, &PoolDefinition> =
            defs.iter().map(|d| (d.name.as_str(), d)).collect();
        let gone: Vec<String> = next
            .defs
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        let mut stopped = Vec::new();
        for name in gone {
            tracing::info!(pool.name = %name, "pool no longer defined for this node; dropped (its volumes stay where they are)");
            stopped.extend(next.pools.get(&name).cloned());
            next.remove(&name);
        }
        let mut started = Vec::new();
        for def in defs {
            if next.defs.get(&def.name) == Some(def) {
                continue;
            }
            if next.defs.contains_key(&def.name) {
                tracing::info!(pool.name = %def.name, "pool definition changed; reloading it");
                stopped.extend(next.pools.get(&def.name).cloned());
            }
            next.remove(&def.name);
            next.add(def, cfg, &runner);
            started.extend(next.pools.get(&def.name).cloned());
        }
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = next;
        (started, stopped)
    }

    /// Starts every pool; failures are logged and left in the pool's status.
    pub async fn start_all(&self) {
        start(&self.all()).await;
    }

    /// Pool `name`; PoolNotFound when this node has no such pool, and
    /// PoolsNotRead (UNAVAILABLE) before the definitions were read, when
    /// that cannot be told yet (a delete must not take "not here" for gone).
    pub fn get(&self, name: &str, node: &str) -> Result<Arc<dyn Pool>> {
        let pools = self.read();
        match pools.pools.get(name) {
            Some(p) => Ok(p.clone()),
            None if !pools.read => Err(Error::PoolsNotRead { node: node.into() }),
            None => Err(Error::PoolNotFound {
                pool: name.into(),
                node: node.into(),
            }),
        }
    }

    /// Whether pool `name` is defined for every node: read from the
    /// cluster (`in_cluster`) with no nodeSelector. A pools file is this
    /// node's own, so it says nothing about other nodes.
    pub fn on_every_node(&self, name: &str, in_cluster: bool) -> bool {
        in_cluster
            && self
                .read()
                .defs
                .get(name)
                .is_some_and(|d| d.spec.node_selector.is_empty())
    }

    pub fn all(&self) -> Vec<Arc<dyn Pool>> {
        self.read().pools.values().cloned().collect()
    }
}

/// When each pool that is not running is tried again: 2 s after it was
/// found down, then backing off to once a minute (a device may appear, a
/// share's server come back); a pool found running starts afresh.
#[derive(Debug, Default)]
pub struct Restarts {
    next: BTreeMap<String, (Instant, Duration)>,
}

impl Restarts {
    const FIRST: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(60);

    /// Whether pool `name`, found not running at `now`, is to be started
    /// now; taking a turn schedules the next one later.
    pub fn due(&mut self, name: &str, now: Instant) -> bool {
        let (at, wait) = self
            .next
            .entry(name.to_string())
            .or_insert((now + Self::FIRST, Self::FIRST));
        if now < *at {
            return false;
        }
        *wait = (*wait * 2).min(Self::MAX);
        *at = now + *wait;
        true
    }

    /// Pool `name` runs: its next failure backs off from the start.
    pub fn running(&mut self, name: &str) {
        self.next.remove(name);
    }
}

/// Tries the pools whose start failed (or whose share went away) again,
/// each on its own backoff ([`Restarts`]), forever. It reads the recorded
/// state only: no storage is looked at every second, a pool still starting
/// (a new StoragePool) is left to its own start, and a Degraded pool (its
/// figures unreadable just now) is not restarted.
pub async fn keep_restarting(reg: &PoolRegistry) {
    let mut restarts = Restarts::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for p in reg.all() {
            match p.recorded_state() {
                PoolState::Inactive => {
                    if restarts.due(p.name(), Instant::now()) && p.start().await.is_ok() {
                        tracing::info!(pool.name = p.name(), "pool started");
                    }
                }
                _ => restarts.running(p.name()),
            }
        }
    }
}

/// Stops `pools` (dropped from the registry); failures are logged.
pub async fn stop(pools: &[Arc<dyn Pool>]) {
    for p in pools {
        if let Err(e) = p.stop().await {
            tracing::warn!(pool.name = p.name(), error = %pool_csi_common::full_message(&e), "pool did not stop cleanly");
        }
    }
}

/// Starts `pools`; failures are logged and left in each pool's status.
pub async fn start(pools: &[Arc<dyn Pool>]) {
    for p in pools {
        if let Err(e) = p.start().await {
            tracing::warn!(pool.name = p.name(), error = %pool_csi_common::full_message(&e), "pool did not start");
        }
    }
}

/// Pool gauges in Prometheus text format, read fresh at each scrape.
pub async fn render_metrics(reg: &PoolRegistry) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# HELP pool_csi_pool_bytes Pool space by kind (capacity, allocation, available; thin_pool_size, thin_data_used, thin_available for a logical pool's thin pool).\n# TYPE pool_csi_pool_bytes gauge\n",
    );
    let mut up = String::from("# HELP pool_csi_pool_running 1 when the pool is running.\n# TYPE pool_csi_pool_running gauge\n");
    let mut volumes = String::from("# HELP pool_csi_pool_volumes Volumes in the pool (running pools).\n# TYPE pool_csi_pool_volumes gauge\n");
    for p in reg.all() {
        // Counting reads what listings read: kept names, the last report.
        let s = p.status(true).await;
        let l = format!("pool=\"{}\",type=\"{}\"", p.name(), p.pool_type());
        let mut kinds = vec![
            ("capacity", s.capacity),
            ("allocation", s.allocation),
            ("available", s.available),
        ];
        if let Some(t) = s.thin_pool {
            kinds.extend([
                ("thin_pool_size", t.size),
                ("thin_data_used", t.data_used),
                ("thin_available", s.thin_available),
            ]);
        }
        for (kind, v) in kinds {
            let _ = writeln!(out, "pool_csi_pool_bytes{{{l},kind=\"{kind}\"}} {v}");
        }
        let _ = writeln!(
            up,
            "pool_csi_pool_running{{{l}}} {}",
            u8::from(s.state == PoolState::Running)
        );
        if let Some(n) = s.volume_count {
            // A shared pool's volumes are counted by each of its nodes.
            let shared = p.shared();
            let _ = writeln!(
                volumes,
                "pool_csi_pool_volumes{{{l},shared=\"{shared}\"}} {n}"
            );
        }
    }
    out + &up + &volumes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cluster_pool_without_node_selector_is_on_every_node() {
        let defs = PoolDefinition::parse_documents(
            "apiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: all }\nspec: { type: dir, target: { path: /x } }\n---\napiVersion: pool-csi.io/v1alpha1\nkind: StoragePool\nmetadata: { name: some }\nspec: { type: dir, target: { path: /y }, nodeSelector: { disk: ssd } }\n",
            "t",
        )
        .unwrap();
        let cfg = Config::local("n1", "/nonexistent".into());
        let reg = PoolRegistry::new(&defs, &cfg, Arc::new(crate::exec::fake::FakeRunner::new()));
        assert!(reg.on_every_node("all", true));
        assert!(!reg.on_every_node("some", true));
        // A pools file is this node's own: it says nothing of other nodes.
        assert!(!reg.on_every_node("all", false));
        assert!(!reg.on_every_node("gone", true));
    }

    #[test]
    fn a_pool_down_is_tried_again_backing_off_until_it_runs() {
        let mut r = Restarts::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert!(!r.due("p", t0), "found down: the first try is 2 s later");
        assert!(r.due("p", t0 + s(2)));
        assert!(!r.due("p", t0 + s(5)));
        assert!(r.due("p", t0 + s(6)), "then 4 s");
        assert!(!r.due("p", t0 + s(13)));
        assert!(r.due("p", t0 + s(14)), "then 8 s");
        let mut t = t0 + s(14);
        for _ in 0..10 {
            t += s(60);
            assert!(r.due("p", t));
        }
        assert!(!r.due("p", t + s(59)), "never more than a minute apart");
        r.running("p");
        assert!(!r.due("p", t + s(60)));
        assert!(r.due("p", t + s(62)), "a new loss starts from 2 s");
    }
}
