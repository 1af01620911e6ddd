//! Leader election over a `coordination.k8s.io/v1` Lease, the way client-go
//! does it: the holder renews `renewTime` every few seconds; anyone may take
//! a Lease whose `renewTime + leaseDurationSeconds` has passed; every write
//! is a replace carrying the resourceVersion read, so of two candidates
//! racing for one Lease exactly one wins (the other gets 409 Conflict). A
//! leader that shuts down releases the Lease (empty holder), so a standby
//! takes over at its next try instead of after the full duration.
//!
//! Expiry is judged on the standby's own clock, never by comparing its
//! clock with the `renewTime` another machine wrote: as client-go's
//! `observedTime`, a standby notes when it first saw the current record
//! (holder, times, transitions) and takes over once that record has not
//! changed for `leaseDurationSeconds`. Two replicas whose clocks disagree
//! by minutes therefore neither steal a live Lease nor wait out the skew.
//!
//! Only the controller's cluster-wide loops (StoragePool status, Events)
//! wait for leadership; CSI calls are served by every replica (the sidecars
//! elect their own leader).

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::api::{Api, PostParams};
use std::time::Duration;
use tokio::{
    sync::watch,
    time::{timeout, Instant},
};

/// How soon a leader tries again after a renewal that failed.
const RETRY_FAILED: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and a standby retries.
    pub retry_period: Duration,
    /// A holder that has not renewed within this (counted from when its
    /// last successful renewal was sent) stops leading, whether its calls
    /// fail or hang; shorter than `lease_duration`, so it has stopped before
    /// a standby can take over.
    pub renew_deadline: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(10),
        }
    }
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free (released) or expired: take it over.
    TakeOver,
    /// Someone else holds it and is current.
    Standby { holder: String },
}

/// The pure rule, for a Lease read at `now` whose current record this
/// replica has seen unchanged since `seen_since` (both on its own clock).
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp, seen_since: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            Decision::TakeOver
        } else {
            Decision::Create
        };
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match seen_since.checked_add(duration) {
        Ok(end) if end > now => Decision::Standby { holder },
        _ => Decision::TakeOver,
    }
}

/// What identifies one write of the Lease by its holder: a new renewal is a
/// new record, whatever the writer's clock said.
fn record(lease: Option<&Lease>) -> Option<String> {
    let spec = lease?.spec.as_ref()?;
    let t = |m: &Option<MicroTime>| m.as_ref().map(|m| m.0.to_string()).unwrap_or_default();
    Some(format!(
        "{}|{}|{}|{}",
        spec.holder_identity.as_deref().unwrap_or(""),
        t(&spec.acquire_time),
        t(&spec.renew_time),
        spec.lease_transitions.unwrap_or(0)
    ))
}

pub struct Elector {
    api: Api<Lease>,
    cfg: LeaderConfig,
    /// The record last read and when (our clock) it was first seen.
    observed: std::sync::Mutex<Option<(Option<String>, Timestamp)>>,
}

impl Elector {
    pub fn new(client: kube::Client, cfg: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: Default::default(),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round at `now`: create, renew or take over the Lease when the
    /// rule says so. Returns whether this replica holds it afterwards; a
    /// lost race (409) is `Ok(false)`.
    pub async fn step_at(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = match self.api.get(&self.cfg.name).await {
            Ok(l) => Some(l),
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(e) => return Err(e),
        };
        let seen_since = self.observe(record(current.as_ref()), now);
        let decision = decide(current.as_ref(), &self.cfg.identity, now, seen_since);
        let written = match (decision, current) {
            (Decision::Standby { .. }, _) => return Ok(false),
            (Decision::Create, _) => {
                let mut l = Lease::default();
                l.metadata.name = Some(self.cfg.name.clone());
                l.spec = Some(self.spec(now, None, 0));
                self.api.create(&PostParams::default(), &l).await
            }
            (d, Some(mut l)) => {
                let old = l.spec.take().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                l.spec = Some(if d == Decision::Renew {
                    self.spec(now, old.acquire_time, transitions)
                } else {
                    self.spec(now, None, transitions + 1)
                });
                self.api
                    .replace(&self.cfg.name, &PostParams::default(), &l)
                    .await
            }
            (_, None) => unreachable!("only Create has no Lease"),
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Notes `record` as read at `now`; returns since when it has been seen
    /// unchanged.
    fn observe(&self, record: Option<String>, now: Timestamp) -> Timestamp {
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match &*o {
            Some((r, since)) if *r == record => *since,
            _ => {
                *o = Some((record, now));
                now
            }
        }
    }

    /// Gives the Lease up if this replica holds it (shutdown).
    pub async fn release(&self) -> Result<(), kube::Error> {
        let mut l = match self.api.get(&self.cfg.name).await {
            Ok(l) => l,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(spec) = l.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &l)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()), // someone took it already
            Err(e) => Err(e),
        }
    }

    /// Runs the election until `stop` fires, then releases (await the
    /// handle before exiting). The receiver says whether this replica leads
    /// right now. A leader that cannot renew within `renew_deadline`, its
    /// calls failing or hanging (an API server that stopped answering),
    /// steps down then, before its Lease can expire for a standby, so two
    /// replicas never both believe they lead.
    pub fn spawn(
        self,
        mut stop: watch::Receiver<()>,
    ) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            // When the last renewal that succeeded was sent: the Lease was
            // not written before, so no standby counts its expiry from
            // earlier.
            let mut renewed: Option<Instant> = None;
            loop {
                let sent = Instant::now();
                let deadline = renewed.map(|t| t + self.cfg.renew_deadline);
                let budget = match deadline {
                    Some(d) if *tx.borrow() => d.saturating_duration_since(sent),
                    _ => self.cfg.renew_deadline,
                };
                let leading = match timeout(budget, self.step_at(Timestamp::now())).await {
                    Ok(Ok(held)) => {
                        renewed = held.then_some(sent);
                        held
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(lease = %self.cfg.name, error = %e, "leader election: the API server did not answer");
                        deadline.is_some_and(|d| Instant::now() < d)
                    }
                    Err(_) => {
                        tracing::warn!(lease = %self.cfg.name, waited = ?budget, "leader election: the API server did not answer in time");
                        deadline.is_some_and(|d| Instant::now() < d)
                    }
                };
                if leading != *tx.borrow() {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, leading, "leadership changed");
                    let _ = tx.send(leading);
                }
                // A leader whose renewal failed tries again within a second,
                // and no later than its deadline, where a renewal still not
                // made ends its leadership.
                let wait = match renewed.filter(|_| leading) {
                    Some(t) => {
                        let every = if renewed == Some(sent) {
                            self.cfg.retry_period
                        } else {
                            RETRY_FAILED.min(self.cfg.retry_period)
                        };
                        every.min(
                            (t + self.cfg.renew_deadline).saturating_duration_since(Instant::now()),
                        )
                    }
                    None => self.cfg.retry_period,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => break,
                }
            }
            let _ = tx.send(false);
            match timeout(self.cfg.retry_period, self.release()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.cfg.name, error = %e, "could not release the Lease; it expires by itself")
                }
                Err(_) => {
                    tracing::warn!(lease = %self.cfg.name, "the API server did not answer the release; the Lease expires by itself")
                }
            }
        });
        (rx, task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_csi_testkit::fake_api::FakeApi;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/pool-csi";

    fn elector(fake: &FakeApi, who: &str) -> Elector {
        Elector::new(
            fake.client(),
            LeaderConfig::new("kube-system", "pool-csi", who),
        )
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn holder(fake: &FakeApi) -> Option<String> {
        fake.object(PATH)?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)
    }

    #[test]
    fn the_rule() {
        let lease = |who: Option<&str>, renewed: i64| Lease {
            spec: Some(LeaseSpec {
                holder_identity: who.map(str::to_string),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(decide(None, "a", at(0), at(0)), Decision::Create);
        assert_eq!(
            decide(Some(&lease(Some("a"), 0)), "a", at(100), at(0)),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 0)), "a", at(14), at(0)),
            Decision::Standby { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), 0)), "a", at(15), at(0)),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&lease(None, 0)), "a", at(1), at(1)),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&Lease::default()), "a", at(1), at(1)),
            Decision::TakeOver
        );
    }

    #[test]
    fn expiry_counts_from_when_the_record_was_seen_not_from_its_renew_time() {
        let lease = |renewed: i64| Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("b".into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Written by a clock an hour behind ours, seen just now: live.
        assert_eq!(
            decide(Some(&lease(-3600)), "a", at(1), at(0)),
            Decision::Standby { holder: "b".into() }
        );
        // Written by a clock an hour ahead, unchanged for 15 s: expired.
        assert_eq!(
            decide(Some(&lease(3600)), "a", at(15), at(0)),
            Decision::TakeOver
        );
    }

    #[tokio::test]
    async fn one_of_two_leads_a_standby_takes_over_an_expired_lease() {
        let fake = FakeApi::new();
        let (a, b) = (elector(&fake, "a"), elector(&fake, "b"));
        assert!(a.step_at(at(0)).await.unwrap(), "a creates the Lease");
        assert!(!b.step_at(at(1)).await.unwrap(), "b stands by");
        assert!(a.step_at(at(5)).await.unwrap(), "a renews");
        assert!(
            !b.step_at(at(6)).await.unwrap(),
            "b sees the renewal at 6: held until 21 on b's clock"
        );
        assert!(!b.step_at(at(20)).await.unwrap());
        assert_eq!(holder(&fake).as_deref(), Some("a"));
        // a stops renewing (dead): b takes over once the Lease expired.
        assert!(b.step_at(at(22)).await.unwrap());
        assert_eq!(holder(&fake).as_deref(), Some("b"));
        let l = fake.object(PATH).unwrap();
        assert_eq!(l["spec"]["leaseTransitions"], 1);
        assert!(!a.step_at(at(23)).await.unwrap(), "a, back, stands by");
    }

    /// Two replicas whose clocks disagree by a minute, either way: the one
    /// ahead never steals a Lease that is being renewed, and the one behind
    /// takes over a dead holder's Lease after the Lease's duration on its
    /// own clock, not a minute later.
    #[tokio::test]
    async fn two_clocks_that_disagree_neither_steal_nor_wait_out_the_skew() {
        for skew in [60, -60] {
            let fake = FakeApi::new();
            let (a, b) = (elector(&fake, "a"), elector(&fake, "b"));
            let b_at = |t: i64| at(t + skew);
            assert!(a.step_at(at(0)).await.unwrap());
            for t in (4..=40).step_by(4) {
                assert!(a.step_at(at(t)).await.unwrap(), "a renews at {t}");
                assert!(
                    !b.step_at(b_at(t + 1)).await.unwrap(),
                    "skew {skew}: b took a live Lease at {t}"
                );
            }
            // a dies after its renewal at 40; b saw it at 41 (its clock 41+skew).
            assert!(
                !b.step_at(b_at(55)).await.unwrap(),
                "skew {skew}: 14 s after"
            );
            assert!(
                b.step_at(b_at(57)).await.unwrap(),
                "skew {skew}: 16 s after, b leads"
            );
            assert_eq!(holder(&fake).as_deref(), Some("b"));
        }
    }

    #[tokio::test]
    async fn of_two_racing_for_an_expired_lease_exactly_one_wins() {
        let fake = FakeApi::new();
        let (a, b, c) = (
            elector(&fake, "a"),
            elector(&fake, "b"),
            elector(&fake, "c"),
        );
        assert!(c.step_at(at(0)).await.unwrap());
        assert!(!a.step_at(at(1)).await.unwrap());
        assert!(!b.step_at(at(1)).await.unwrap());
        // Both read the expired Lease before either writes: the second
        // write carries a stale resourceVersion and loses.
        let (ra, rb) = tokio::join!(a.step_at(at(30)), b.step_at(at(30)));
        let wins = [ra.unwrap(), rb.unwrap()];
        assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
        let puts = fake
            .requests()
            .iter()
            .filter(|r| r.starts_with("PUT"))
            .count();
        assert_eq!(puts, 2, "both tried");
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let fake = FakeApi::new();
        let (a, b) = (elector(&fake, "a"), elector(&fake, "b"));
        assert!(a.step_at(at(0)).await.unwrap());
        b.release().await.unwrap();
        assert_eq!(
            holder(&fake).as_deref(),
            Some("a"),
            "only the holder releases"
        );
        a.release().await.unwrap();
        assert_eq!(holder(&fake), None);
        assert!(b.step_at(at(1)).await.unwrap(), "no waiting for expiry");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_leads_steps_down_on_stop_and_releases() {
        let fake = FakeApi::new();
        let (stop_tx, stop_rx) = watch::channel(());
        let (mut leading, task) = elector(&fake, "a").spawn(stop_rx);
        leading.wait_for(|l| *l).await.unwrap();
        // Two renewals fail (at 4 s and, tried again a second later, at
        // 5 s); the third, at 6 s, holds the Lease past the first deadline.
        for _ in 0..2 {
            fake.fail_next(503);
        }
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(
            *leading.borrow(),
            "renewed at 6 s after two failures: still leading at 11 s"
        );
        stop_tx.send(()).unwrap();
        task.await.unwrap();
        assert!(!*leading.borrow());
        assert_eq!(holder(&fake), None, "released on shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires_elsewhere() {
        let fake = FakeApi::new();
        let (_stop_tx, stop_rx) = watch::channel(());
        let (mut leading, _task) = elector(&fake, "a").spawn(stop_rx);
        leading.wait_for(|l| *l).await.unwrap();
        for _ in 0..100 {
            fake.fail_next(503);
        }
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert!(*leading.borrow(), "9.9 s since the last renewal: leading");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !*leading.borrow(),
            "10.1 s since the last renewal: not leading, 5 s before a standby may take over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_api_server_hangs_steps_down_before_a_standby_could_take_over() {
        let fake = FakeApi::new();
        let (_stop_tx, stop_rx) = watch::channel(());
        let (mut leading, _task) = elector(&fake, "a").spawn(stop_rx);
        leading.wait_for(|l| *l).await.unwrap();
        let renewed = tokio::time::Instant::now();
        // The API server stops answering without closing its connection.
        fake.stall(true);
        tokio::time::timeout(Duration::from_secs(60), leading.wait_for(|l| !*l))
            .await
            .expect("a leader whose renewals hang steps down")
            .unwrap();
        let after = renewed.elapsed();
        assert!(
            after >= Duration::from_secs(9) && after <= Duration::from_secs(10),
            "steps down at its 10 s renew deadline, before a standby may take over at 15 s: {after:?}"
        );
        fake.stall(false);
        tokio::time::timeout(Duration::from_secs(30), leading.wait_for(|l| *l))
            .await
            .expect("leads again once the API server answers (the Lease is still its own)")
            .unwrap();
        assert_eq!(holder(&fake).as_deref(), Some("a"));
    }
}
