//! An in-process fake of the Kubernetes API server for tests: a
//! `kube::Client` runs over it unchanged. It keeps objects in memory and
//! enforces what the real server enforces for every call the driver makes:
//! only known resources, at their scope (namespaced or cluster); create
//! refuses an existing name (409); replace and merge patches check
//! `metadata.resourceVersion` (409 Conflict on a stale one, which leader
//! election depends on) and the name; the `status` subresource is written
//! separately (the main resource keeps its status, `/status` changes only
//! status, create drops it); PATCH is told apart by Content-Type (merge,
//! JSON patch, strategic — refused for custom resources — and apply, which
//! needs a field manager); DELETE honours `preconditions` (uid,
//! resourceVersion) and finalizers (the object stays, marked for deletion,
//! until the last finalizer goes); label selectors are parsed as the
//! server parses them (`selector`); StoragePools are admitted against the
//! chart's CRD schema — pruned, defaulted and validated, unknown fields
//! refused under `fieldValidation=Strict` (`schema`); and writes the real
//! server refuses are refused (`validate`): Events follow its namespace
//! rule, names are DNS subdomains, a body's namespace is the request's.
//! It records every request so tests can assert on them; faults are
//! injected per request (`fail_next`) and other writers act between two
//! requests (`before`).

use crate::{patch, schema, selector::Selector};
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

/// The chart's CRD: the fake admits StoragePools against its schema.
const STORAGEPOOL_CRD: &str =
    include_str!("../../charts/pool-csi/crds/storagepools.pool-csi.io.yaml");

/// What the server knows of a resource.
struct Resource {
    namespaced: bool,
    /// Has a `status` subresource: status is written only through it.
    status: bool,
    /// A custom resource: its structural schema.
    schema: Option<Value>,
}

fn resource(api_version: &str, name: &str) -> Option<Resource> {
    let r = |namespaced, status| Resource {
        namespaced,
        status,
        schema: None,
    };
    Some(match (api_version, name) {
        ("v1", "pods" | "persistentvolumeclaims") => r(true, true),
        ("v1", "configmaps" | "events" | "secrets") => r(true, false),
        ("v1", "nodes" | "persistentvolumes") => r(false, true),
        ("events.k8s.io/v1", "events") | ("coordination.k8s.io/v1", "leases") => r(true, false),
        ("storage.k8s.io/v1", "storageclasses" | "csidrivers" | "csinodes") => r(false, false),
        ("storage.k8s.io/v1", "volumeattachments") => r(false, true),
        ("snapshot.storage.k8s.io/v1", "volumesnapshotcontents") => r(false, true),
        ("pool-csi.io/v1alpha1", "storagepools") => Resource {
            namespaced: false,
            status: true,
            schema: Some(storagepool_schema()),
        },
        _ => return None,
    })
}

fn storagepool_schema() -> Value {
    let crd: Value = serde_yaml_ng::from_str(STORAGEPOOL_CRD).expect("the chart's CRD parses");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

type Hook = Box<dyn FnOnce(&FakeApi) + Send>;

#[derive(Default)]
struct State {
    /// object path (collection/name) → object
    objects: BTreeMap<String, Value>,
    version: u64,
    log: Vec<String>,
    faults: VecDeque<u16>,
    /// Requests wait unanswered while set (an API server that hangs).
    stalled: bool,
    /// `METHOD /path` → what happens just before that request is served.
    hooks: Vec<(String, Hook)>,
}

/// The fake API server; clones share one state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// A request as the fake sees it.
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    content_type: &'a str,
    body: &'a [u8],
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

    /// Stores `obj` at `path` as if created through the API (a uid and a
    /// resourceVersion given).
    pub fn insert(&self, path: &str, mut obj: Value) {
        let mut st = self.lock();
        st.version += 1;
        obj["metadata"]["resourceVersion"] = json!(st.version.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", st.version));
        }
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

    /// While `on`, requests get no answer: they wait (holding their
    /// connection) until it is turned off, as with an API server that
    /// stopped answering without closing its connections.
    pub fn stall(&self, on: bool) {
        self.lock().stalled = on;
    }

    /// Runs `f` just before the next `request` (`METHOD /path`) is served:
    /// another writer acting between a read and a write.
    pub fn before(&self, request: &str, f: impl FnOnce(&FakeApi) + Send + 'static) {
        self.lock().hooks.push((request.to_string(), Box::new(f)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run_hooks(&self, request: &str) {
        let due: Vec<Hook> = {
            let mut st = self.lock();
            let (due, keep) = std::mem::take(&mut st.hooks)
                .into_iter()
                .partition(|(r, _)| r == request);
            st.hooks = keep;
            due.into_iter().map(|(_, h)| h).collect()
        };
        for h in due {
            h(self);
        }
    }

    fn handle(&self, c: &Call) -> (u16, Value) {
        let mut st = self.lock();
        st.log.push(format!("{} {}", c.method, c.path));
        if let Some(code) = st.faults.pop_front() {
            return (code, status(code, "InternalError", "injected fault"));
        }
        let Some(route) = Route::parse(c.path) else {
            return (
                404,
                status(404, "NotFound", &format!("no route {}", c.path)),
            );
        };
        let Some(res) = resource(&route.api_version, &route.resource) else {
            return (
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        };
        if route.namespace.is_some() && !res.namespaced {
            return (
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        if route.namespace.is_none()
            && res.namespaced
            && !(c.method == "GET" && route.name.is_none())
        {
            return (
                405,
                status(
                    405,
                    "MethodNotAllowed",
                    "a namespaced resource needs a namespace",
                ),
            );
        }
        if route
            .sub
            .as_deref()
            .is_some_and(|s| s != "status" || !res.status)
        {
            return (
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        let input: Value = if c.body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(c.body) {
                Ok(v) => v,
                Err(e) => return (400, status(400, "BadRequest", &e.to_string())),
            }
        };
        let strict = query_param(c.query, "fieldValidation").as_deref() == Some("Strict");
        match (c.method, route.name.as_deref()) {
            ("GET", None) => {
                let selector = match Selector::parse(
                    &query_param(c.query, "labelSelector").unwrap_or_default(),
                ) {
                    Ok(s) => s,
                    Err(why) => return (400, status(400, "BadRequest", &why)),
                };
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(k, _)| Route::parse(k).is_some_and(|r| route.lists(&r)))
                    .map(|(_, v)| v.clone())
                    .filter(|o| selector.matches(o))
                    .collect();
                let rv = st.version.to_string();
                (
                    200,
                    json!({"apiVersion": route.api_version, "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("GET", Some(_)) => match st.objects.get(&route.key()) {
                Some(o) => (200, o.clone()),
                None => not_found(&route),
            },
            ("POST", None) => {
                let Some(name) = input["metadata"]["name"].as_str().map(str::to_string) else {
                    return (422, status(422, "Invalid", "metadata.name: Required value"));
                };
                let mut o = input;
                if let Some(refused) = route.admit(&res, &mut o, strict) {
                    return refused;
                }
                let key = format!("{}/{name}", route.collection);
                if st.objects.contains_key(&key) {
                    return (
                        409,
                        status(409, "AlreadyExists", &format!("{name} already exists")),
                    );
                }
                if res.status {
                    o.as_object_mut().expect("an object").remove("status");
                    if route.resource == "persistentvolumes" {
                        o["status"] = json!({"phase": "Pending"});
                    }
                }
                st.version += 1;
                o["metadata"]["resourceVersion"] = json!(st.version.to_string());
                o["metadata"]["uid"] = json!(format!("uid-{}", st.version));
                o["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
                if let Some(ns) = &route.namespace {
                    o["metadata"]["namespace"] = json!(ns);
                }
                st.objects.insert(key, o.clone());
                (201, o)
            }
            ("PUT", Some(_)) => {
                let key = route.key();
                let Some(current) = st.objects.get(&key).cloned() else {
                    return not_found(&route);
                };
                let sent = input["metadata"]["resourceVersion"].as_str();
                if sent.is_some_and(|v| Some(v) != current["metadata"]["resourceVersion"].as_str())
                {
                    return conflict();
                }
                let o = route.updated(&res, &current, input);
                st.store(&route, &res, o, strict)
            }
            ("PATCH", Some(_)) => {
                let key = route.key();
                let Some(current) = st.objects.get(&key).cloned() else {
                    return not_found(&route);
                };
                let Some(kind) = patch::Kind::of(c.content_type) else {
                    return (415, status(415, "UnsupportedMediaType", &format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {:?}", c.content_type)));
                };
                let mut patched = current.clone();
                match kind {
                    patch::Kind::Strategic if res.schema.is_some() => {
                        return (
                            415,
                            status(
                                415,
                                "UnsupportedMediaType",
                                "strategic merge patch is not supported for custom resources",
                            ),
                        );
                    }
                    patch::Kind::Apply
                        if query_param(c.query, "fieldManager").is_none_or(|m| m.is_empty()) =>
                    {
                        return (
                            400,
                            status(
                                400,
                                "BadRequest",
                                "PATCH /apply requires fieldManager to be set",
                            ),
                        );
                    }
                    patch::Kind::Json => {
                        if let Err(why) = patch::json_patch(&mut patched, &input) {
                            return (422, status(422, "Invalid", &why));
                        }
                    }
                    patch::Kind::Merge | patch::Kind::Strategic | patch::Kind::Apply => {
                        patch::merge(&mut patched, &input)
                    }
                }
                if patched["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
                {
                    return conflict();
                }
                let o = route.updated(&res, &current, patched);
                st.store(&route, &res, o, strict)
            }
            ("DELETE", Some(_)) if route.sub.is_none() => {
                let key = route.key();
                let Some(current) = st.objects.get(&key).cloned() else {
                    return not_found(&route);
                };
                let pre = &input["preconditions"];
                for (field, have) in [("uid", "uid"), ("resourceVersion", "resourceVersion")] {
                    if let Some(want) = pre[field].as_str() {
                        let is = current["metadata"][have].as_str().unwrap_or("");
                        if want != is {
                            return (409, status(409, "Conflict", &format!(
                                "Precondition failed: {field} in precondition: {want}, {field} in object meta: {is}"
                            )));
                        }
                    }
                }
                let finalizers = current["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if finalizers {
                    let mut o = current;
                    if o["metadata"]["deletionTimestamp"].is_null() {
                        st.version += 1;
                        o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                        o["metadata"]["resourceVersion"] = json!(st.version.to_string());
                        st.objects.insert(key, o.clone());
                    }
                    return (200, o);
                }
                st.objects.remove(&key);
                (
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
                )
            }
            _ => (
                405,
                status(405, "MethodNotAllowed", &format!("{} {}", c.method, c.path)),
            ),
        }
    }
}

impl State {
    /// Writes an updated object: admitted, a new resourceVersion, and gone
    /// once it is marked for deletion and its last finalizer removed.
    fn store(&mut self, route: &Route, res: &Resource, mut o: Value, strict: bool) -> (u16, Value) {
        if let Some(refused) = route.admit(res, &mut o, strict) {
            return refused;
        }
        let key = route.key();
        let done = !o["metadata"]["deletionTimestamp"].is_null()
            && o["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        if done {
            self.objects.remove(&key);
            return (200, o);
        }
        self.version += 1;
        o["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.objects.insert(key, o.clone());
        (200, o)
    }
}

/// Where a request goes: `/api/v1[/namespaces/NS]/RES[/NAME[/SUB]]` or
/// `/apis/G/V[/namespaces/NS]/RES[/NAME[/SUB]]`.
struct Route {
    api_version: String,
    /// `/api/v1` or `/apis/G/V`.
    base: String,
    resource: String,
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
        let mut rest = segs.get(prefix..)?;
        let mut namespace = None;
        let base = format!("/{}", segs[..prefix].join("/"));
        let mut scoped = base.clone();
        if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
            namespace = Some(rest[1].to_string());
            scoped = format!("{base}/namespaces/{}", rest[1]);
            rest = &rest[2..];
        }
        let resource = rest.first()?.to_string();
        Some(Self {
            api_version,
            collection: format!("{scoped}/{resource}"),
            base,
            resource,
            namespace,
            name: rest.get(1).map(|s| s.to_string()),
            sub: rest.get(2).map(|s| s.to_string()),
        })
    }

    fn key(&self) -> String {
        format!("{}/{}", self.collection, self.name.as_deref().unwrap_or(""))
    }

    /// Whether this list request (a collection) includes the object at `o`:
    /// its collection, or for a list across namespaces any namespace's.
    fn lists(&self, o: &Route) -> bool {
        o.base == self.base
            && o.resource == self.resource
            && (self.namespace.is_none() || o.namespace == self.namespace)
    }

    /// `new` as the server stores it in place of `current`: identity kept,
    /// and status written only through the status subresource.
    fn updated(&self, res: &Resource, current: &Value, mut new: Value) -> Value {
        for k in ["uid", "creationTimestamp", "deletionTimestamp", "namespace"] {
            match current["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if !res.status {
            return new;
        }
        if self.sub.as_deref() == Some("status") {
            let mut o = current.clone();
            o["status"] = new["status"].clone();
            o
        } else {
            new["status"] = current["status"].clone();
            new
        }
    }

    /// Admits `obj` written here, or the answer refusing it.
    fn admit(&self, res: &Resource, obj: &mut Value, strict: bool) -> Option<(u16, Value)> {
        if let (Some(url), Some(body)) = (&self.name, obj["metadata"]["name"].as_str()) {
            if url != body {
                let why = format!(
                    "the name of the object ({body}) does not match the name on the URL ({url})"
                );
                return Some((400, status(400, "BadRequest", &why)));
            }
        }
        if let Some((code, why)) =
            crate::validate::refusal(&self.resource, self.namespace.as_deref(), obj)
        {
            return Some((code, status(code, reason_of(code), &why)));
        }
        let schema = res.schema.as_ref()?;
        schema::admit(schema, obj, strict)
            .err()
            .map(|why| (422, status(422, "Invalid", &why)))
    }
}

fn conflict() -> (u16, Value) {
    (
        409,
        status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"),
    )
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
            while api.lock().stalled {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            api.run_hooks(&format!("{} {}", parts.method, parts.uri.path()));
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (code, value) = api.handle(&Call {
                method: parts.method.as_str(),
                path: parts.uri.path(),
                query: parts.uri.query().unwrap_or(""),
                content_type,
                body: &bytes,
            });
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
    use kube::api::{Api, ListParams, PostParams};

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

    const SP: &str = "/apis/pool-csi.io/v1alpha1/storagepools";

    fn pool(name: &str) -> Value {
        json!({"apiVersion": "pool-csi.io/v1alpha1", "kind": "StoragePool",
               "metadata": {"name": name},
               "spec": {"type": "dir", "target": {"path": "/p"}},
               "status": {"state": "Running"}})
    }

    fn api_code(e: kube::Error) -> u16 {
        match e {
            kube::Error::Api(s) => s.code,
            other => panic!("not an API error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn custom_resources_are_admitted_against_the_chart_s_schema() {
        use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
        let fake = FakeApi::new();
        let gvk = GroupVersionKind::gvk("pool-csi.io", "v1alpha1", "StoragePool");
        let ar = kube::api::ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::all_with(fake.client(), &ar);
        let mut sp: DynamicObject = serde_json::from_value(pool("a")).unwrap();
        sp.data["spec"]["bogus"] = json!(1);
        api.create(&PostParams::default(), &sp).await.unwrap();
        let stored = fake.object(&format!("{SP}/a")).unwrap();
        assert_eq!(stored["spec"].get("bogus"), None, "unknown fields pruned");
        assert_eq!(stored.get("status"), None, "create drops status");
        assert_eq!(stored["spec"]["autoBuild"], false, "defaults filled in");
        let mut b = pool("b");
        b["spec"]["bogus"] = json!(1);
        let (code, why) = fake.handle(&Call {
            method: "POST",
            path: SP,
            query: "fieldValidation=Strict",
            content_type: "application/json",
            body: &serde_json::to_vec(&b).unwrap(),
        });
        assert_eq!(
            (code, why["message"].as_str()),
            (422, Some("unknown field \"spec.bogus\""))
        );
        let mut bad: DynamicObject = serde_json::from_value(pool("c")).unwrap();
        bad.data["spec"]["type"] = json!("zfs");
        assert_eq!(
            api_code(api.create(&PostParams::default(), &bad).await.unwrap_err()),
            422
        );

        // Status only through /status; strategic merge refused for a CRD;
        // apply needs a field manager; a merge patch's resourceVersion is a precondition.
        let pp = PatchParams::default();
        let status = json!({"status": {"state": "Running"}, "spec": {"type": "fs"}});
        api.patch_status("a", &pp, &Patch::Merge(&status))
            .await
            .unwrap();
        let stored = fake.object(&format!("{SP}/a")).unwrap();
        assert_eq!(stored["status"]["state"], "Running");
        assert_eq!(stored["spec"]["type"], "dir", "/status changes only status");
        api.patch(
            "a",
            &pp,
            &Patch::Merge(&json!({"status": {"state": "Gone"}})),
        )
        .await
        .unwrap();
        let stored = fake.object(&format!("{SP}/a")).unwrap();
        assert_eq!(
            stored["status"]["state"], "Running",
            "the main resource keeps its status"
        );
        let e = api
            .patch("a", &pp, &Patch::Strategic(&json!({})))
            .await
            .unwrap_err();
        assert_eq!(api_code(e), 415);
        let e = api
            .patch("a", &pp, &Patch::Apply(&pool("a")))
            .await
            .unwrap_err();
        assert_eq!(api_code(e), 400);
        let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"type": "fs"}});
        assert_eq!(
            api_code(
                api.patch("a", &pp, &Patch::Merge(&stale))
                    .await
                    .unwrap_err()
            ),
            409
        );
        let ops = json!([{"op": "replace", "path": "/spec/type", "value": "fs"}]);
        let (code, _) = fake.handle(&Call {
            method: "PATCH",
            path: &format!("{SP}/a"),
            query: "",
            content_type: "application/json-patch+json",
            body: &serde_json::to_vec(&ops).unwrap(),
        });
        assert_eq!(code, 200);
        assert_eq!(
            fake.object(&format!("{SP}/a")).unwrap()["spec"]["type"],
            "fs"
        );
    }

    #[tokio::test]
    async fn delete_honours_preconditions_and_finalizers() {
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{DeleteParams, Preconditions};
        let fake = FakeApi::new();
        let api: Api<ConfigMap> = Api::namespaced(fake.client(), "ns");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("x".into());
        cm.metadata.finalizers = Some(vec!["example.com/keep".into()]);
        let made = api.create(&PostParams::default(), &cm).await.unwrap();
        let stale = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some("another".into()),
                resource_version: None,
            }),
            ..Default::default()
        };
        assert_eq!(api_code(api.delete("x", &stale).await.unwrap_err()), 409);
        let exact = DeleteParams {
            preconditions: Some(Preconditions {
                uid: made.metadata.uid.clone(),
                resource_version: made.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        api.delete("x", &exact).await.unwrap();
        let marked = api.get("x").await.unwrap();
        assert!(
            marked.metadata.deletion_timestamp.is_some(),
            "kept for its finalizer"
        );
        let mut last = marked;
        last.metadata.finalizers = None;
        api.replace("x", &PostParams::default(), &last)
            .await
            .unwrap();
        assert_eq!(
            api_code(api.get("x").await.unwrap_err()),
            404,
            "gone with its last finalizer"
        );
    }

    #[tokio::test]
    async fn scope_names_and_selectors_are_the_server_s() {
        use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume};
        let fake = FakeApi::new();
        let pvs: Api<PersistentVolume> = Api::all(fake.client());
        let mut pv = PersistentVolume::default();
        pv.metadata.name = Some("pv".into());
        pv.metadata.labels = Some([("tier".to_string(), "gold".to_string())].into());
        let made = pvs.create(&PostParams::default(), &pv).await.unwrap();
        assert_eq!(made.status.unwrap().phase.as_deref(), Some("Pending"));
        let mut renamed = pvs.get("pv").await.unwrap();
        renamed.metadata.name = Some("other".into());
        let e = pvs
            .replace("pv", &PostParams::default(), &renamed)
            .await
            .unwrap_err();
        assert_eq!(api_code(e), 400, "name in the body is the URL's");
        let list = |sel: &'static str| {
            let pvs = pvs.clone();
            async move { pvs.list(&ListParams::default().labels(sel)).await }
        };
        assert_eq!(list("tier in (gold,silver)").await.unwrap().items.len(), 1);
        assert_eq!(list("tier notin (gold)").await.unwrap().items.len(), 0);
        assert_eq!(api_code(list("tier in gold").await.unwrap_err()), 400);
        // A cluster-scoped kind in a namespace, an unknown kind: 404.
        for path in [
            "/api/v1/namespaces/ns/persistentvolumes/pv",
            "/api/v1/widgets/w",
        ] {
            let get = Call {
                method: "GET",
                path,
                query: "",
                content_type: "",
                body: b"",
            };
            assert_eq!(fake.handle(&get).0, 404, "{path}");
        }
        // Across namespaces: every namespace's objects.
        for ns in ["a", "b"] {
            let api: Api<ConfigMap> = Api::namespaced(fake.client(), ns);
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some("c".into());
            api.create(&PostParams::default(), &cm).await.unwrap();
        }
        let all: Api<ConfigMap> = Api::all(fake.client());
        assert_eq!(
            all.list(&ListParams::default()).await.unwrap().items.len(),
            2
        );
    }

    #[tokio::test]
    async fn another_writer_can_act_between_two_requests() {
        let fake = FakeApi::new();
        let api: Api<Lease> = Api::namespaced(fake.client(), "ns");
        let mut l = Lease::default();
        l.metadata.name = Some("x".into());
        api.create(&PostParams::default(), &l).await.unwrap();
        let got = api.get("x").await.unwrap();
        fake.before(
            "PUT /apis/coordination.k8s.io/v1/namespaces/ns/leases/x",
            |f| {
                f.modify(
                    "/apis/coordination.k8s.io/v1/namespaces/ns/leases/x",
                    |_| {},
                )
            },
        );
        let e = api
            .replace("x", &PostParams::default(), &got)
            .await
            .unwrap_err();
        assert_eq!(api_code(e), 409);
        assert_eq!(percent_decode("app%3Dx%2Ct%3Dy"), "app=x,t=y");
    }
}
