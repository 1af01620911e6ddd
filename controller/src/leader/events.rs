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

const NAMESPACE: &str = "default";

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
    fn event_messages_are_cut_at_1024_bytes_on_a_character_boundary() {
        let long = "é".repeat(600);
        let cut = truncate(&long, 1024);
        assert_eq!(cut.len(), 1024);
        assert_eq!(truncate("short", 1024), "short");
        assert_eq!(truncate("aé", 2), "a");
    }
}
