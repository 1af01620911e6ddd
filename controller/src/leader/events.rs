//! Warning Events the leader records about cluster-scoped objects
//! (StoragePools, PersistentVolumes). They go to the `default` namespace,
//! where `kubectl describe` looks for a cluster-scoped object's Events.
//! Best effort: a failure is logged, never fails the round.

use k8s_openapi::{
    api::core::v1::{Event, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};
use kube::api::{Api, PostParams};
use pool_csi_common::pool_spec::StoragePool;
use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

const NAMESPACE: &str = "default";

/// The last outcome told about each object (by name), so each is told in
/// an Event once rather than every round, and when it was: a failure is
/// tried again only after a while. In this controller process only.
#[derive(Default)]
pub struct Told(Mutex<BTreeMap<String, (String, bool, Instant)>>);

impl Told {
    /// Records `message` about `key` (`failed`: a failure); whether it
    /// differs from the last one told (then tell it).
    pub fn record(&self, key: &str, message: &str, failed: bool) -> bool {
        let before = self
            .0
            .lock()
            .unwrap()
            .insert(key.into(), (message.into(), failed, Instant::now()));
        before.is_none_or(|(m, _, _)| m != message)
    }

    /// Whether `key` last failed less than `retry` ago.
    pub fn failed_within(&self, key: &str, retry: Duration) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(key)
            .is_some_and(|(_, failed, at)| *failed && at.elapsed() < retry)
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().unwrap().remove(key);
    }

    /// Forgets every key `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0.lock().unwrap().retain(|k, _| keep(k));
    }
}

pub struct Recorder {
    client: kube::Client,
    /// Who reports the Events (the controller pod).
    instance: String,
    /// Added to the time in Event names: several Events about one object
    /// in one round (one `now`) need names of their own.
    seq: std::sync::atomic::AtomicU32,
}

impl Recorder {
    pub fn new(client: kube::Client, instance: &str) -> Self {
        Self {
            client,
            instance: instance.into(),
            seq: Default::default(),
        }
    }

    /// A Warning Event about `about` (its name, kind and uid set).
    pub async fn warn(&self, about: ObjectReference, reason: &str, message: &str, now: Timestamp) {
        let name = about.name.clone().unwrap_or_default();
        let mut ev = Event {
            involved_object: about,
            reason: Some(reason.into()),
            message: Some(truncate(message, 1024).into()),
            type_: Some("Warning".into()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            count: Some(1),
            action: Some("Reconcile".into()),
            reporting_component: Some("pool-csi-controller".into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ev.metadata.name = Some(format!(
            "{name}.{:x}",
            now.as_nanosecond() + i128::from(seq)
        ));
        ev.metadata.namespace = Some(NAMESPACE.into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), NAMESPACE);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(object = %name, reason, error = %e, "could not record an Event");
        }
    }
}

/// What an Event about StoragePool `sp` refers to.
pub fn pool_ref(sp: &StoragePool) -> ObjectReference {
    ObjectReference {
        api_version: Some(pool_csi_common::pool_spec::API_VERSION.into()),
        kind: Some("StoragePool".into()),
        name: sp.metadata.name.clone(),
        uid: sp.metadata.uid.clone(),
        ..Default::default()
    }
}

/// What an Event about PersistentVolume `name` refers to.
pub fn pv_ref(name: &str, uid: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolume".into()),
        name: Some(name.into()),
        uid,
        ..Default::default()
    }
}

/// At most `max` bytes of `s`, cut on a character boundary (the API server
/// refuses longer Event messages).
pub fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_is_told_once_and_a_failure_waits_to_be_retried() {
        let t = Told::default();
        assert!(t.record("pv", "refused: no reservations", true));
        assert!(
            !t.record("pv", "refused: no reservations", true),
            "told already"
        );
        assert!(t.failed_within("pv", Duration::from_secs(300)));
        assert!(!t.failed_within("pv", Duration::ZERO));
        assert!(t.record("pv", "released", false), "a new outcome is told");
        assert!(!t.failed_within("pv", Duration::from_secs(300)));
        t.retain(|k| k != "pv");
        assert!(t.record("pv", "released", false), "forgotten: told again");
        t.forget("pv");
        assert!(t.record("pv", "released", false));
    }

    #[test]
    fn event_messages_are_cut_at_1024_bytes_on_a_character_boundary() {
        let long = "é".repeat(600);
        let cut = truncate(&long, 1024);
        assert_eq!(cut.len(), 1024);
        assert_eq!(truncate("short", 1024), "short");
        assert_eq!(truncate("aé", 2), "a");
    }
}
