//! An in-process fake of the Kubernetes API server for tests: a
//! `kube::Client` runs over it unchanged. It keeps objects in memory with
//! the semantics the driver relies on — create refuses an existing name
//! (409 AlreadyExists), replace checks `metadata.resourceVersion` (409
//! Conflict on a stale one, which leader election depends on), the `status`
//! subresource is patched separately, lists filter by simple label
//! selectors — and it records every request so tests can assert on them.
//! Faults are injected per request (`fail_next`). Writes the real server
//! would refuse are refused (`validate`): Events must follow its namespace
//! rule, names must be DNS subdomains, a body's namespace the request's.

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

#[derive(Default)]
struct State {
    /// object path (collection/name) → object
    objects: BTreeMap<String, Value>,
    version: u64,
    log: Vec<String>,
    faults: VecDeque<u16>,
}

/// The fake API server; clones share one state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client talking to this fake (default namespace `kube-system`).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "kube-system")
    }

    /// Every request so far as `METHOD /path` (query left out).
    pub fn requests(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// The object at `path` (e.g. `/apis/pool-csi.io/v1alpha1/storagepools/a`).
    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Every object in the collection at `path` (e.g. `/api/v1/namespaces/default/events`).
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|(k, _)| k.rsplit_once('/').map(|(c, _)| c) == Some(collection))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Stores `obj` at `path` as if created through the API.
    pub fn insert(&self, path: &str, mut obj: Value) {
        let mut st = self.lock();
        st.version += 1;
        obj["metadata"]["resourceVersion"] = json!(st.version.to_string());
        st.objects.insert(path.to_string(), obj);
    }

    /// Removes the object at `path`.
    pub fn remove(&self, path: &str) {
        self.lock().objects.remove(path);
    }

    /// Changes a stored object in place (a controller elsewhere wrote it);
    /// its resourceVersion moves on.
    pub fn modify(&self, path: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.lock();
        st.version += 1;
        let v = st.version.to_string();
        if let Some(o) = st.objects.get_mut(path) {
            f(o);
            o["metadata"]["resourceVersion"] = json!(v);
        }
    }

    /// The next request gets HTTP `code` (e.g. 500, 503) instead of an answer.
    pub fn fail_next(&self, code: u16) {
        self.lock().faults.push_back(code);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
        let mut st = self.lock();
        st.log.push(format!("{method} {path}"));
        if let Some(code) = st.faults.pop_front() {
            return (code, status(code, "InternalError", "injected fault"));
        }
        let Some(route) = Route::parse(path) else {
            return (404, status(404, "NotFound", &format!("no route {path}")));
        };
        let input: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return (400, status(400, "BadRequest", &e.to_string())),
            }
        };
        match (method, route.name.as_deref(), route.sub.as_deref()) {
            ("GET", None, _) => {
                let selector = query_param(query, "labelSelector");
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(k, _)| k.rsplit_once('/').map(|(c, _)| c) == Some(&route.collection))
                    .map(|(_, v)| v.clone())
                    .filter(|o| selector.as_deref().is_none_or(|s| matches_labels(o, s)))
                    .collect();
                let rv = st.version.to_string();
                (
                    200,
                    json!({"apiVersion": route.api_version, "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", Some(_), _) => match st.objects.get(&route.key()) {
                Some(o) => (200, o.clone()),
                None => not_found(&route),
            },
            ("POST", None, _) => {
                let Some(name) = input["metadata"]["name"].as_str().map(str::to_string) else {
                    return (422, status(422, "Invalid", "metadata.name is required"));
                };
                if let Some((code, why)) = route.refusal(&input) {
                    return (code, status(code, reason_of(code), &why));
                }
                let key = format!("{}/{name}", route.collection);
                if st.objects.contains_key(&key) {
                    return (
                        409,
                        status(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                st.version += 1;
                let mut o = input;
                o["metadata"]["resourceVersion"] = json!(st.version.to_string());
                o["metadata"]["uid"] = json!(format!("uid-{}", st.version));
                if let Some(ns) = &route.namespace {
                    o["metadata"]["namespace"] = json!(ns);
                }
                st.objects.insert(key, o.clone());
                (201, o)
            }
            ("PUT", Some(_), sub) => {
                let key = route.key();
                let Some(current) = st.objects.get(&key).cloned() else {
                    return not_found(&route);
                };
                if let Some((code, why)) = route.refusal(&input) {
                    return (code, status(code, reason_of(code), &why));
                }
                let sent = input["metadata"]["resourceVersion"].as_str();
                if sent.is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str())
                {
                    return (
                        409,
                        status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
                    );
                }
                st.version += 1;
                let mut o = if sub == Some("status") {
                    let mut o = current;
                    o["status"] = input["status"].clone();
                    o
                } else {
                    let mut o = input;
                    o["status"] = current["status"].clone();
                    o
                };
                o["metadata"]["resourceVersion"] = json!(st.version.to_string());
                st.objects.insert(key, o.clone());
                (200, o)
            }
            ("PATCH", Some(_), sub) => {
                let key = route.key();
                let Some(mut o) = st.objects.get(&key).cloned() else {
                    return not_found(&route);
                };
                match sub {
                    Some("status") => merge(&mut o["status"], &input["status"]),
                    _ => merge(&mut o, &input),
                }
                st.version += 1;
                o["metadata"]["resourceVersion"] = json!(st.version.to_string());
                st.objects.insert(key, o.clone());
                (200, o)
            }
            ("DELETE", Some(_), None) => match st.objects.remove(&route.key()) {
                Some(_) => (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                ),
                None => not_found(&route),
            },
            _ => (
                405,
                status(405, "MethodNotAllowed", &format!("{method} {path}")),
            ),
        }
    }
}

/// Where a request goes: `/api/v1[/namespaces/NS]/RES[/NAME[/SUB]]` or
/// `/apis/G/V[/namespaces/NS]/RES[/NAME[/SUB]]`.
struct Route {
    api_version: String,
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Self> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (prefix, api_version) = match *segs.first()? {
            "api" => (2, segs.get(1)?.to_string()),
            "apis" => (3, format!("{}/{}", segs.get(1)?, segs.get(2)?)),
            _ => return None,
        };
        let mut rest = &segs[prefix..];
        let mut namespace = None;
        let mut base = segs[..prefix].join("/");
        if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
            namespace = Some(rest[1].to_string());
            base = format!("{base}/namespaces/{}", rest[1]);
            rest = &rest[2..];
        }
        let resource = rest.first()?;
        Some(Self {
            api_version,
            collection: format!("/{base}/{resource}"),
            namespace,
            name: rest.get(1).map(|s| s.to_string()),
            sub: rest.get(2).map(|s| s.to_string()),
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.collection, self.name.as_deref().unwrap_or(""))
    }

    /// Why the real API server would refuse `obj` written here.
    fn refusal(&self, obj: &Value) -> Option<(u16, String)> {
        let resource = self.collection.rsplit('/').next().unwrap_or("");
        crate::validate::refusal(resource, self.namespace.as_deref(), obj)
    }
}

fn reason_of(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        _ => "Invalid",
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn not_found(r: &Route) -> (u16, Value) {
    let name = r.name.as_deref().unwrap_or("");
    (404, status(404, "NotFound", &format!("{name} not found")))
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b,c=d` equality and `a` existence selectors.
fn matches_labels(o: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let labels = &o["metadata"]["labels"];
        match term.split_once('=') {
            Some((k, v)) => labels[k].as_str() == Some(v.trim_start_matches('=')),
            None => labels.get(term).is_some(),
        }
    })
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

impl tower::Service<Request<Body>> for FakeApi {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let (code, value) = api.handle(
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query().unwrap_or(""),
                &bytes,
            );
            let resp = Response::builder()
                .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
                .expect("a valid response");
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Api, PostParams};

    #[tokio::test]
    async fn replace_checks_the_resource_version() {
        let fake = FakeApi::new();
        let api: Api<Lease> = Api::namespaced(fake.client(), "ns");
        let mut l = Lease::default();
        l.metadata.name = Some("x".into());
        let made = api.create(&PostParams::default(), &l).await.unwrap();
        let again = api.create(&PostParams::default(), &l).await.unwrap_err();
        assert!(
            matches!(again, kube::Error::Api(ref s) if s.code == 409),
            "{again:?}"
        );
        let got = api.get("x").await.unwrap();
        assert_eq!(
            got.metadata.resource_version,
            made.metadata.resource_version
        );
        api.replace("x", &PostParams::default(), &got)
            .await
            .unwrap();
        let stale = api
            .replace("x", &PostParams::default(), &got)
            .await
            .unwrap_err();
        assert!(
            matches!(stale, kube::Error::Api(ref s) if s.code == 409),
            "{stale:?}"
        );
        let missing = api.get("y").await.unwrap_err();
        assert!(matches!(missing, kube::Error::Api(ref s) if s.code == 404));
        fake.fail_next(503);
        assert!(api.get("x").await.is_err());
        assert!(api.get("x").await.is_ok());
        assert_eq!(
            fake.requests()[0],
            "POST /apis/coordination.k8s.io/v1/namespaces/ns/leases"
        );
    }

    #[test]
    fn merge_patches_and_selectors() {
        let mut o = json!({"a": {"b": 1, "c": 2}, "metadata": {"labels": {"app": "x", "t": "y"}}});
        merge(&mut o, &json!({"a": {"b": null, "d": 3}}));
        assert_eq!(o["a"], json!({"c": 2, "d": 3}));
        assert!(matches_labels(&o, "app=x,t=y"));
        assert!(matches_labels(&o, "app==x"));
        assert!(!matches_labels(&o, "app=z"));
        assert!(matches_labels(&o, "t") && !matches_labels(&o, "u"));
        assert_eq!(percent_decode("app%3Dx%2Ct%3Dy"), "app=x,t=y");
    }
}
