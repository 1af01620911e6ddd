//! What the real API server refuses, for the objects the driver writes: a
//! body whose namespace is not the request's, names that are not DNS
//! subdomains, and core/v1 Events that fail the API server's own event
//! validation (`legacyValidateEvent` in kubernetes/pkg/apis/core/validation/
//! events.go, which every Event create passes through): the namespace rule
//! for the involved object, and for new-style Events (eventTime set) the
//! reporting fields, action, reason and their lengths.

use serde_json::Value;

/// Why the API server would refuse `obj` written at `namespace`
/// (None: a cluster-scoped collection); `kind` is the collection's resource.
pub fn refusal(resource: &str, namespace: Option<&str>, obj: &Value) -> Option<(u16, String)> {
    let meta = &obj["metadata"];
    if let (Some(url), Some(body)) = (namespace, meta["namespace"].as_str()) {
        if !body.is_empty() && body != url {
            return Some((
                400,
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
    }
    if let Some(name) = meta["name"].as_str() {
        if let Err(why) = dns1123_subdomain(name) {
            return Some((
                422,
                format!("metadata.name: Invalid value: {name:?}: {why}"),
            ));
        }
    }
    match resource {
        "events" => event(namespace.unwrap_or(""), obj).map(|why| (422, why)),
        _ => None,
    }
}

fn event(namespace: &str, e: &Value) -> Option<String> {
    let s = |k: &str| e[k].as_str().unwrap_or("");
    let involved_ns = e["involvedObject"]["namespace"].as_str().unwrap_or("");
    let new_style = e["eventTime"].as_str().is_some_and(|t| !t.is_empty());
    let mismatch = || {
        Some(format!(
            "involvedObject.namespace: Invalid value: {involved_ns:?}: does not match event.namespace"
        ))
    };
    if !new_style {
        let ok = match involved_ns {
            "" => namespace.is_empty() || namespace == "default",
            ns => ns == namespace,
        };
        if !ok {
            return mismatch();
        }
        return None;
    }
    if involved_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
        return mismatch();
    }
    let controller = s("reportingComponent");
    if controller.is_empty() {
        return Some("reportingController: Required value".into());
    }
    if let Err(why) = qualified_name(controller) {
        return Some(format!(
            "reportingController: Invalid value: {controller:?}: {why}"
        ));
    }
    for (field, limit) in [("reportingInstance", 128), ("action", 128), ("reason", 128)] {
        match s(field).len() {
            0 => return Some(format!("{field}: Required value")),
            n if n > limit => return Some(format!("{field}: can have at most {limit} characters")),
            _ => {}
        }
    }
    if s("message").len() > 1024 {
        return Some("message: can have at most 1024 characters".into());
    }
    None
}

/// RFC 1123 subdomain: at most 253 characters of lowercase alphanumerics,
/// '-' and '.', starting and ending alphanumeric.
pub fn dns1123_subdomain(n: &str) -> Result<(), &'static str> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.chars().all(|c| alnum(c) || c == '-' || c == '.')
        && n.starts_with(alnum)
        && n.ends_with(alnum);
    ok.then_some(())
        .ok_or("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
}

/// A Kubernetes qualified name: `[prefix/]name`, name at most 63
/// characters of alphanumerics, '-', '_' and '.', starting and ending
/// alphanumeric; the prefix a DNS subdomain.
pub fn qualified_name(n: &str) -> Result<(), &'static str> {
    let (prefix, name) = match n.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, n),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p)?;
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| alnum(c) || "-_.".contains(c))
        && name.starts_with(alnum)
        && name.ends_with(alnum);
    ok.then_some(()).ok_or("must be a qualified name (an optional DNS subdomain prefix and '/', then alphanumerics, '-', '_' or '.')")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(ns_involved: Option<&str>, event_time: bool) -> Value {
        let mut e = json!({
            "metadata": {"name": "sp.1"},
            "involvedObject": {"kind": "StoragePool", "name": "sp"},
            "reason": "PoolNotRunning", "message": "m", "type": "Warning",
            "reportingComponent": "pool-csi-controller", "reportingInstance": "ctrl-0",
            "action": "Reconcile"
        });
        if let Some(ns) = ns_involved {
            e["involvedObject"]["namespace"] = json!(ns);
        }
        if event_time {
            e["eventTime"] = json!("2026-11-29T10:00:00.000000Z");
        }
        e
    }

    #[test]
    fn events_follow_the_api_server_s_namespace_rule() {
        // A cluster-scoped object's new-style Event: default or kube-system only.
        assert_eq!(refusal("events", Some("default"), &ev(None, true)), None);
        assert_eq!(
            refusal("events", Some("kube-system"), &ev(None, true)),
            None
        );
        let (code, why) = refusal("events", Some("pool-csi"), &ev(None, true)).unwrap();
        assert_eq!(code, 422);
        assert!(why.contains("does not match event.namespace"), "{why}");
        // Old-style: empty or default only; a namespaced object's must match.
        assert!(refusal("events", Some("kube-system"), &ev(None, false)).is_some());
        assert_eq!(refusal("events", Some("default"), &ev(None, false)), None);
        assert_eq!(refusal("events", Some("a"), &ev(Some("a"), false)), None);
        assert!(refusal("events", Some("b"), &ev(Some("a"), false)).is_some());
    }

    #[test]
    fn new_style_events_need_their_reporting_fields() {
        let mut e = ev(None, true);
        e["reportingComponent"] = json!("");
        assert!(refusal("events", Some("default"), &e)
            .unwrap()
            .1
            .contains("reportingController"));
        let mut e = ev(None, true);
        e["action"] = json!("x".repeat(129));
        assert!(refusal("events", Some("default"), &e).is_some());
        let mut e = ev(None, true);
        e["message"] = json!("é".repeat(600)); // 1200 bytes: the limit counts bytes
        assert!(refusal("events", Some("default"), &e).is_some());
    }

    #[test]
    fn names_and_namespaces_are_checked() {
        let bad = json!({"metadata": {"name": "Upper_Case"}});
        assert_eq!(refusal("leases", Some("ns"), &bad).unwrap().0, 422);
        let elsewhere = json!({"metadata": {"name": "x", "namespace": "other"}});
        assert_eq!(refusal("leases", Some("ns"), &elsewhere).unwrap().0, 400);
        assert_eq!(refusal("persistentvolumes", None, &elsewhere), None);
        assert!(qualified_name("example.com/my-controller").is_ok());
        assert!(qualified_name("-bad").is_err());
    }
}
