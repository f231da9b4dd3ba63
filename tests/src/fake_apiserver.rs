//! Test harness: an in-process fake Kubernetes API server speaking the real list/watch
//! protocol over plain HTTP, so the unmodified kube-rs client (and the daemon, through a
//! kubeconfig) can be tested without a cluster.
//!
//! What it serves:
//! - discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`) for the
//!   kinds in [`KINDS`]; the versions of `networking.istio.io` are configurable, and an
//!   unserved version answers 404 like a cluster without that CRD version;
//! - LIST with selectors and real pagination, WATCH as a chunked stream of JSON lines,
//!   GET/POST/PUT/PATCH/DELETE on single objects, and the metadata-only forms
//!   (`Accept: ...;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`);
//! - test controls on [`FakeApiServer`]: apply/delete objects, compact the event log (410 Gone
//!   for older resource versions), drop every open watch, bookmarks, outages, a request log.
//!
//! One object is stored once per (group, resource) and (namespace, name) and served under
//! every served version of its group with `apiVersion` rewritten: Istio's versions share one
//! schema, and this is what lets a test serve only v1alpha3 to exercise a client's fallback.
//!
//! The server runs on its own thread with its own tokio runtime, so it keeps answering
//! whatever the test's runtime is doing; the control methods are plain (non-async) and cheap.
//! Set `FAKE_APISERVER_LOG=1` to print every request on stderr.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};

/// Events kept for resuming watches; a watch from an older resource version gets 410 Gone.
pub const EVENT_LOG_CAPACITY: usize = 10_000;
/// Requests kept in the request log.
const REQUEST_LOG_CAPACITY: usize = 100_000;
/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;
/// Watch length when the client sets no `timeoutSeconds` (the real server picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// The group whose served versions a test can choose.
pub const ISTIO_GROUP: &str = "networking.istio.io";
/// The `networking.istio.io` versions served unless a test says otherwise, preferred first.
pub const DEFAULT_ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A resource the fake serves.
#[derive(Debug, PartialEq, Eq)]
pub struct KindInfo {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// Resource name in paths (plural).
    pub plural: &'static str,
    /// `kind` of the objects.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
}

const fn kind(
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> KindInfo {
    KindInfo {
        group,
        plural,
        kind,
        namespaced,
    }
}

/// Every resource the fake serves; anything else answers 404.
pub const KINDS: &[KindInfo] = &[
    kind("", "configmaps", "ConfigMap", true),
    kind("", "endpoints", "Endpoints", true),
    kind("", "events", "Event", true),
    kind("", "namespaces", "Namespace", false),
    kind("", "nodes", "Node", false),
    kind("", "pods", "Pod", true),
    kind("", "secrets", "Secret", true),
    kind("", "services", "Service", true),
    kind("discovery.k8s.io", "endpointslices", "EndpointSlice", true),
    kind("events.k8s.io", "events", "Event", true),
    kind(ISTIO_GROUP, "destinationrules", "DestinationRule", true),
    kind(ISTIO_GROUP, "gateways", "Gateway", true),
    kind(ISTIO_GROUP, "serviceentries", "ServiceEntry", true),
    kind(ISTIO_GROUP, "virtualservices", "VirtualService", true),
];

fn find_kind(group: &str, pred: impl Fn(&KindInfo) -> bool) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.group == group && pred(k))
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// Splits `apiVersion` into (group, version).
fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

// ---------------------------------------------------------------------------------------
// Paths and query strings

/// A request path, parsed.
#[derive(Debug, Clone, PartialEq)]
enum Route {
    Version,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: every named group.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`.
    GroupResources {
        group: String,
        version: String,
    },
    /// A collection, in one namespace or across all (or cluster-scoped).
    Collection(Target),
    /// One object of a collection.
    Object(Target, String),
}

#[derive(Debug, Clone, PartialEq)]
struct Target {
    kind: &'static KindInfo,
    version: String,
    namespace: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segs.as_slice() {
            ["version"] => Some(Route::Version),
            ["api"] => Some(Route::CoreVersions),
            ["apis"] => Some(Route::Groups),
            ["apis", g] => Some(Route::Group((*g).to_owned())),
            ["api", v] => Some(Route::GroupResources {
                group: String::new(),
                version: (*v).to_owned(),
            }),
            ["apis", g, v] => Some(Route::GroupResources {
                group: (*g).to_owned(),
                version: (*v).to_owned(),
            }),
            ["api", v, rest @ ..] => Self::resource("", v, rest),
            ["apis", g, v, rest @ ..] => Self::resource(g, v, rest),
            _ => None,
        }
    }

    fn resource(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
        let target = |plural: &str, namespace: Option<&str>| {
            let kind = find_kind(group, |k| k.plural == plural)?;
            // A namespaced path to a cluster-scoped kind does not exist.
            if namespace.is_some() && !kind.namespaced {
                return None;
            }
            Some(Target {
                kind,
                version: version.to_owned(),
                namespace: namespace.map(str::to_owned),
            })
        };
        match rest {
            ["namespaces", ns, plural] => Some(Route::Collection(target(plural, Some(ns))?)),
            ["namespaces", ns, plural, name] => {
                Some(Route::Object(target(plural, Some(ns))?, (*name).to_owned()))
            }
            [plural] => Some(Route::Collection(target(plural, None)?)),
            [plural, name] => {
                let t = target(plural, None)?;
                (!t.kind.namespaced).then(|| Route::Object(t, (*name).to_owned()))
            }
            _ => None,
        }
    }
}

/// Query parameters, percent-decoded.
#[derive(Debug, Default)]
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(raw: &str) -> Query {
        let pairs = raw.split('&').filter(|p| !p.is_empty()).map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        });
        Query(pairs.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Selectors

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector`: every requirement must hold (comma means AND).
#[derive(Debug, Clone, Default, PartialEq)]
struct Selector(Vec<Requirement>);

impl Selector {
    fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for term in split_outside_parens(s)
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let bad = || format!("invalid label selector term {term:?}");
            let key = |k: &str| {
                let k = k.trim();
                let ok = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "./_-".contains(c));
                ok.then(|| k.to_owned()).ok_or_else(bad)
            };
            let set = |v: &str| {
                let inner = v
                    .trim()
                    .strip_prefix('(')
                    .and_then(|v| v.strip_suffix(')'))
                    .ok_or_else(bad)?;
                Ok::<_, String>(inner.split(',').map(|x| x.trim().to_owned()).collect())
            };
            let req = if let Some(k) = term.strip_prefix('!') {
                Requirement::NotExists(key(k)?)
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEq(key(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Eq(key(k)?, v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                Requirement::NotIn(key(k)?, set(v)?)
            } else if let Some((k, v)) = term.split_once(" in ") {
                Requirement::In(key(k)?, set(v)?)
            } else {
                Requirement::Exists(key(term)?)
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v),
            // As in Kubernetes, `!=` and `notin` also match objects without the label.
            Requirement::NotEq(k, v) => get(k) != Some(v),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

fn split_outside_parens(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// What a LIST or WATCH selects: a namespace, labels, and `metadata.name`/`metadata.namespace`
/// field requirements (the only fields every kind supports).
#[derive(Debug, Clone, Default)]
struct Filter {
    namespace: Option<String>,
    labels: Selector,
    /// (field path, wanted equal, value)
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    fn from_query(namespace: Option<String>, q: &Query) -> Result<Filter, String> {
        let labels = Selector::parse(q.get("labelSelector").unwrap_or(""))?;
        let mut fields = Vec::new();
        for term in q
            .get("fieldSelector")
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.trim().is_empty())
        {
            let (field, eq, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field label not supported: {field}"));
            }
            fields.push((field.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(Filter {
            namespace,
            labels,
            fields,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        let ns = meta["namespace"].as_str().unwrap_or("");
        if self.namespace.as_deref().is_some_and(|want| want != ns) {
            return false;
        }
        let fields_ok = self.fields.iter().all(|(field, eq, value)| {
            let got = match field.as_str() {
                "metadata.name" => meta["name"].as_str().unwrap_or(""),
                _ => ns,
            };
            (got == value) == *eq
        });
        fields_ok && self.labels.matches(meta["labels"].as_object())
    }
}

// ---------------------------------------------------------------------------------------
// Store and event log

/// (namespace, name); the namespace is empty for cluster-scoped objects.
type ObjectKey = (String, String);

/// The objects, by (group, plural) and then (namespace, name), so that lists come out sorted.
#[derive(Default)]
struct Store(BTreeMap<(&'static str, &'static str), BTreeMap<ObjectKey, Value>>);

impl Store {
    fn objects(&self, kind: &KindInfo) -> Option<&BTreeMap<ObjectKey, Value>> {
        self.0.get(&(kind.group, kind.plural))
    }

    fn get(&self, kind: &KindInfo, key: &ObjectKey) -> Option<&Value> {
        self.objects(kind)?.get(key)
    }

    fn insert(&mut self, kind: &'static KindInfo, key: ObjectKey, obj: Value) {
        self.0
            .entry((kind.group, kind.plural))
            .or_default()
            .insert(key, obj);
    }

    fn remove(&mut self, kind: &KindInfo, key: &ObjectKey) -> Option<Value> {
        self.0.get_mut(&(kind.group, kind.plural))?.remove(key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Added,
    Modified,
    Deleted,
}

/// One change, as stored (canonical `apiVersion`; rewritten when served).
struct LogEntry {
    rv: u64,
    kind: &'static KindInfo,
    change: Change,
    /// The object after the change (for a deletion: the last state, stamped with the
    /// deletion's resourceVersion, as the real server sends it).
    object: Value,
    /// The object before a modification, so a filtered watch can turn a change that moves an
    /// object out of (into) its selector into DELETED (ADDED), like the real server does.
    previous: Option<Value>,
}

/// The bounded history watches resume from. Like etcd's compaction, dropping old entries
/// moves the point a watch can resume from; resuming from before it is "410 Gone".
struct EventLog {
    entries: VecDeque<LogEntry>,
    /// The oldest resourceVersion a watch may start after: every later change is held.
    oldest: u64,
    capacity: usize,
}

/// A watch asked for history the log no longer holds.
struct Expired {
    requested: u64,
    oldest: u64,
}

impl Expired {
    /// The `Status` the real apiserver sends: code 410, reason `Expired` (the watch cache says
    /// "Expired", etcd says "Gone"; clients test the code). kube-rs re-lists on it.
    fn status(&self) -> Value {
        let message = format!(
            "too old resource version: {} ({})",
            self.requested, self.oldest
        );
        status_object(410, "Expired", &message)
    }
}

impl EventLog {
    fn new(capacity: usize) -> EventLog {
        EventLog {
            entries: VecDeque::new(),
            oldest: 0,
            capacity,
        }
    }

    fn push(&mut self, entry: LogEntry) {
        if self.entries.len() >= self.capacity
            && let Some(dropped) = self.entries.pop_front()
        {
            self.oldest = dropped.rv;
        }
        self.entries.push_back(entry);
    }

    fn compact(&mut self, current: u64) {
        self.entries.clear();
        self.oldest = current;
    }

    fn since(&self, rv: u64) -> Result<impl Iterator<Item = &LogEntry>, Expired> {
        if rv < self.oldest {
            return Err(Expired {
                requested: rv,
                oldest: self.oldest,
            });
        }
        let start = self.entries.partition_point(|e| e.rv <= rv);
        Ok(self.entries.range(start..))
    }
}

// ---------------------------------------------------------------------------------------
// Test-visible types

/// How an outage shows to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// Every request answers 503 with a `Status` body (an apiserver behind a load balancer
    /// with no healthy backend). kube-rs 5's client retries 503 itself (up to 15 times,
    /// exponential from 5 ms) before the caller sees an error.
    Unavailable,
    /// Connections are closed as soon as they are accepted, and requests on open connections
    /// are dropped unanswered (an apiserver that is down or restarting).
    Refuse,
}

/// How a watch from a compacted resourceVersion is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiredWatch {
    /// HTTP 200 and a single `ERROR` event carrying a 410 `Status`, then the end of the stream:
    /// what the real apiserver (watch cache and etcd alike) does.
    ErrorEvent,
    /// An HTTP 410 response with a `Status` body, as some proxies and older servers answer.
    HttpGone,
}

/// What a request did, for the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Discovery,
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    /// An unknown path or an unsupported method.
    Other,
}

/// One request, as received (outage or not).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string.
    pub query: String,
    pub verb: Verb,
    /// The resource (plural) the path names, if any.
    pub resource: Option<String>,
    /// Whether the client asked for metadata only (`as=PartialObjectMetadata[List]`).
    pub metadata_only: bool,
    pub at: Instant,
}

// ---------------------------------------------------------------------------------------
// Shared state

struct Inner {
    rv: u64,
    store: Store,
    log: EventLog,
    istio_versions: Vec<String>,
    outage: bool,
    outage_mode: OutageMode,
    /// (resource, query fragment) pairs answered 403 Forbidden, as RBAC would.
    forbidden: Vec<(String, String)>,
    expired_watch: ExpiredWatch,
    requests: VecDeque<RequestRecord>,
}

/// What live watches react to; every change is made under the [`Inner`] lock, and a watch
/// subscribes under that lock too, so it misses nothing between its snapshot and the stream.
#[derive(Debug, Clone, Copy, Default)]
struct Signals {
    rv: u64,
    drops: u64,
    bookmarks: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    signals: watch::Sender<Signals>,
    open_watches: AtomicUsize,
    port: u16,
    verbose: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn signal(&self, f: impl FnOnce(&mut Signals)) {
        self.signals.send_modify(f);
    }
}

fn now_rfc3339() -> String {
    use k8s_openapi::jiff::Timestamp;
    // Whole seconds, like the apiserver's `metav1.Time`.
    Timestamp::from_second(Timestamp::now().as_second())
        .expect("the current time is within jiff's range")
        .to_string()
}

impl Inner {
    fn serves(&self, group: &str, version: &str) -> bool {
        self.versions(group).iter().any(|v| v == version)
    }

    fn versions(&self, group: &str) -> Vec<String> {
        match group {
            ISTIO_GROUP => self.istio_versions.clone(),
            "" | "discovery.k8s.io" | "events.k8s.io" => vec!["v1".to_owned()],
            _ => Vec::new(),
        }
    }

    fn record(&mut self, rec: RequestRecord) {
        if self.requests.len() >= REQUEST_LOG_CAPACITY {
            self.requests.pop_front();
        }
        self.requests.push_back(rec);
    }

    /// Stores `obj` (create or replace) and stamps the server-owned metadata. A replace that
    /// changes nothing is a no-op, as on the real server: no new resourceVersion, no event.
    fn put(
        &mut self,
        shared: &Shared,
        kind: &'static KindInfo,
        mut obj: Value,
    ) -> Result<Value, Value> {
        if !obj["metadata"].is_object() {
            return Err(status_object(400, "BadRequest", "object has no metadata"));
        }
        let namespace = if kind.namespaced {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            obj["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            if let Some(meta) = obj["metadata"].as_object_mut() {
                meta.remove("namespace");
            }
            String::new()
        };
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
            return Err(status_object(
                422,
                "Invalid",
                "metadata.name: Required value",
            ));
        };
        obj["kind"] = json!(kind.kind);
        let key = (namespace, name);
        let previous = self.store.get(kind, &key).cloned();
        let generation = match &previous {
            Some(prev) => {
                for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                    obj["metadata"][field] = prev["metadata"][field].clone();
                }
                if strip(prev, &["apiVersion"]) == strip(&obj, &["apiVersion"]) {
                    return Ok(prev.clone());
                }
                // Like the real server: the generation moves when the spec does.
                let outside_metadata = |v: &Value| strip(v, &["apiVersion", "metadata", "status"]);
                let spec_changed = outside_metadata(prev) != outside_metadata(&obj);
                prev["metadata"]["generation"].as_i64().unwrap_or(1) + i64::from(spec_changed)
            }
            None => {
                obj["metadata"]["uid"] =
                    json!(format!("fa4e0000-0000-4000-8000-{:012x}", self.rv + 1));
                if obj["metadata"]["creationTimestamp"].as_str().is_none() {
                    obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
                }
                1
            }
        };
        self.rv += 1;
        obj["metadata"]["generation"] = json!(generation);
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.store.insert(kind, key, obj.clone());
        let change = if previous.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        self.log.push(LogEntry {
            rv: self.rv,
            kind,
            change,
            object: obj.clone(),
            previous,
        });
        let rv = self.rv;
        shared.signal(|s| s.rv = rv);
        Ok(obj)
    }

    fn remove(
        &mut self,
        shared: &Shared,
        kind: &'static KindInfo,
        key: &ObjectKey,
    ) -> Option<Value> {
        let mut obj = self.store.remove(kind, key)?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.log.push(LogEntry {
            rv: self.rv,
            kind,
            change: Change::Deleted,
            object: obj.clone(),
            previous: None,
        });
        let rv = self.rv;
        shared.signal(|s| s.rv = rv);
        Some(obj)
    }
}

/// `v` without the given top-level fields (and without `metadata.resourceVersion`).
fn strip(v: &Value, fields: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for f in fields {
            o.remove(*f);
        }
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
    }
    v
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rendering

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

/// How objects are shown to one request: at its version, whole or metadata only.
struct View {
    kind: &'static KindInfo,
    version: String,
    metadata_only: bool,
}

impl View {
    fn render(&self, obj: &Value) -> Value {
        if self.metadata_only {
            return json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": obj["metadata"],
            });
        }
        let mut obj = obj.clone();
        obj["apiVersion"] = json!(api_version(self.kind.group, &self.version));
        obj["kind"] = json!(self.kind.kind);
        obj
    }

    fn list_types(&self) -> (String, String) {
        if self.metadata_only {
            ("meta.k8s.io/v1".into(), "PartialObjectMetadataList".into())
        } else {
            (
                api_version(self.kind.group, &self.version),
                format!("{}List", self.kind.kind),
            )
        }
    }

    /// A BOOKMARK carries no object, only `apiVersion`, `kind` and `metadata.resourceVersion`:
    /// "every change up to here has been sent", so a client can resume from there without
    /// replaying (or without hitting 410 after a quiet period). The one that ends the initial
    /// events of a streaming list is marked by the `k8s.io/initial-events-end` annotation.
    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Vec<u8> {
        let (api_version, kind) = if self.metadata_only {
            (
                "meta.k8s.io/v1".to_owned(),
                "PartialObjectMetadata".to_owned(),
            )
        } else {
            (
                api_version(self.kind.group, &self.version),
                self.kind.kind.to_owned(),
            )
        };
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        event_line(
            "BOOKMARK",
            &json!({ "apiVersion": api_version, "kind": kind, "metadata": metadata }),
        )
    }

    /// The event a log entry is to a watch with `filter`, if any.
    fn change(&self, entry: &LogEntry, filter: &Filter) -> Option<Vec<u8>> {
        if entry.kind != self.kind {
            return None;
        }
        let now = filter.matches(&entry.object);
        let before = entry.previous.as_ref().is_some_and(|p| filter.matches(p));
        let kind = match (entry.change, before, now) {
            (Change::Added, _, true) | (Change::Modified, false, true) => "ADDED",
            (Change::Modified, true, true) => "MODIFIED",
            (Change::Modified, true, false) | (Change::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(event_line(kind, &self.render(&entry.object)))
    }
}

fn event_line(kind: &str, object: &Value) -> Vec<u8> {
    let mut line = json!({ "type": kind, "object": object })
        .to_string()
        .into_bytes();
    line.push(b'\n');
    line
}

// ---------------------------------------------------------------------------------------
// HTTP

/// A response body: a whole JSON document, or a watch stream fed by its task.
enum Body {
    Full(Full<Bytes>),
    /// An `Err` frame ends the response abruptly (no final chunk): a dropped watch.
    Stream(mpsc::Receiver<Result<Frame<Bytes>, io::Error>>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Body::Stream(rx) => rx.poll_recv(cx),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::Full(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error_response(status: &Value) -> Response<Body> {
    json_response(
        status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500),
        status,
    )
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    error_response(&status_object(code, reason, message))
}

fn not_found() -> Response<Body> {
    failure(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn object_not_found(kind: &KindInfo, name: &str) -> Response<Body> {
    let resource = if kind.group.is_empty() {
        kind.plural.to_owned()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    };
    let mut status = status_object(404, "NotFound", &format!("{resource} {name:?} not found"));
    status["details"] = json!({ "name": name, "group": kind.group, "kind": kind.plural });
    error_response(&status)
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors and the like: try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        {
            let inner = shared.lock();
            if inner.outage && inner.outage_mode == OutageMode::Refuse {
                continue; // dropping the stream closes it
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            // Errors here are clients going away mid-response, and refused requests.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn classify(method: &Method, route: Option<&Route>, query: &Query) -> (Verb, Option<String>) {
    let resource = |t: &Target| Some(t.kind.plural.to_owned());
    match route {
        None => (Verb::Other, None),
        Some(Route::Collection(t)) => match *method {
            Method::GET if query.flag("watch") => (Verb::Watch, resource(t)),
            Method::GET => (Verb::List, resource(t)),
            Method::POST => (Verb::Create, resource(t)),
            _ => (Verb::Other, resource(t)),
        },
        Some(Route::Object(t, _)) => match *method {
            Method::GET => (Verb::Get, resource(t)),
            Method::PUT => (Verb::Update, resource(t)),
            Method::PATCH => (Verb::Patch, resource(t)),
            Method::DELETE => (Verb::Delete, resource(t)),
            _ => (Verb::Other, resource(t)),
        },
        Some(_) => (Verb::Discovery, None),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().unwrap_or("").to_owned();
    let query = Query::parse(&raw_query);
    let route = Route::parse(&path);
    let (verb, resource) = classify(&method, route.as_ref(), &query);
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    // kube-rs asks for `as=PartialObjectMetadataList` on lists and `as=PartialObjectMetadata`
    // on gets and watches.
    let metadata_only = header(ACCEPT).contains("as=PartialObjectMetadata");
    let content_type = header(CONTENT_TYPE);
    if shared.verbose {
        eprintln!("fake-apiserver: {method} {path}?{raw_query} ({verb:?})");
    }
    {
        let mut inner = shared.lock();
        let forbidden = inner.forbidden.iter().any(|(r, fragment)| {
            resource.as_deref() == Some(r.as_str()) && raw_query.contains(fragment.as_str())
        });
        inner.record(RequestRecord {
            method: method.to_string(),
            path: path.clone(),
            query: raw_query,
            verb,
            resource,
            metadata_only,
            at: Instant::now(),
        });
        if inner.outage {
            return match inner.outage_mode {
                OutageMode::Refuse => Err(io::Error::new(io::ErrorKind::ConnectionReset, "outage")),
                OutageMode::Unavailable => Ok(failure(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                )),
            };
        }
        if forbidden {
            return Ok(failure(
                403,
                "Forbidden",
                &format!("{method} {path} is forbidden"),
            ));
        }
    }
    let Some(route) = route else {
        return Ok(not_found());
    };
    let body = if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Ok(failure(400, "BadRequest", &e.to_string()));
            }
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() => Some(v),
            _ => {
                return Ok(failure(400, "BadRequest", "body is not a JSON object"));
            }
        }
    } else {
        None
    };
    Ok(dispatch(
        &shared,
        route,
        &method,
        &query,
        metadata_only,
        &content_type,
        body,
    ))
}

fn dispatch(
    shared: &Arc<Shared>,
    route: Route,
    method: &Method,
    query: &Query,
    metadata_only: bool,
    content_type: &str,
    body: Option<Value>,
) -> Response<Body> {
    let mut inner = shared.lock();
    let target = match &route {
        Route::Collection(t) | Route::Object(t, _) => Some(t),
        _ => None,
    };
    if let Some(t) = target
        && !inner.serves(t.kind.group, &t.version)
    {
        return not_found();
    }
    match (route, method.clone(), body) {
        (Route::Version, Method::GET, _) => json_response(200, &version_info()),
        (Route::CoreVersions, Method::GET, _) => json_response(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    { "clientCIDR": "0.0.0.0/0", "serverAddress": format!("127.0.0.1:{}", shared.port) },
                ],
            }),
        ),
        (Route::Groups, Method::GET, _) => {
            let groups: Vec<Value> = ["discovery.k8s.io", "events.k8s.io", ISTIO_GROUP]
                .into_iter()
                .filter_map(|g| api_group(g, &inner.versions(g)))
                .collect();
            json_response(
                200,
                &json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
            )
        }
        (Route::Group(g), Method::GET, _) => match api_group(&g, &inner.versions(&g)) {
            Some(mut group) => {
                group["kind"] = json!("APIGroup");
                group["apiVersion"] = json!("v1");
                json_response(200, &group)
            }
            None => not_found(),
        },
        (Route::GroupResources { group, version }, Method::GET, _)
            if inner.serves(&group, &version) =>
        {
            let resources: Vec<Value> = KINDS
                .iter()
                .filter(|k| k.group == group)
                .map(|k| {
                    json!({
                        "name": k.plural, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced,
                        "kind": k.kind, "verbs": VERBS,
                    })
                })
                .collect();
            json_response(
                200,
                &json!({
                    "kind": "APIResourceList", "apiVersion": "v1",
                    "groupVersion": api_version(&group, &version), "resources": resources,
                }),
            )
        }
        (Route::GroupResources { .. }, Method::GET, _) => not_found(),
        (Route::Collection(t), Method::GET, _) if query.flag("watch") => {
            drop(inner);
            start_watch(shared, t, query, metadata_only)
        }
        (Route::Collection(t), Method::GET, _) => list(&inner, &t, query, metadata_only),
        (Route::Collection(t), Method::POST, Some(mut obj)) => {
            if let Err(status) = place(&t, &mut obj, None) {
                return error_response(&status);
            }
            let key = object_key(t.kind, &obj);
            if inner.store.get(t.kind, &key).is_some() {
                let msg = format!("{} {:?} already exists", t.kind.plural, key.1);
                return failure(409, "AlreadyExists", &msg);
            }
            respond(&t, metadata_only, 201, inner.put(shared, t.kind, obj))
        }
        (Route::Object(t, name), Method::GET, _) => {
            match inner.store.get(t.kind, &target_key(&t, &name)) {
                Some(obj) => respond(&t, metadata_only, 200, Ok(obj.clone())),
                None => object_not_found(t.kind, &name),
            }
        }
        (Route::Object(t, name), Method::PUT, Some(mut obj)) => {
            if let Err(status) = place(&t, &mut obj, Some(&name)) {
                return error_response(&status);
            }
            let Some(current) = inner.store.get(t.kind, &target_key(&t, &name)) else {
                return object_not_found(t.kind, &name);
            };
            let wanted = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
            if !wanted.is_empty() && Some(wanted) != current["metadata"]["resourceVersion"].as_str()
            {
                let msg = format!(
                    "Operation cannot be fulfilled on {} {name:?}: the object has been modified",
                    t.kind.plural
                );
                return failure(409, "Conflict", &msg);
            }
            respond(&t, metadata_only, 200, inner.put(shared, t.kind, obj))
        }
        (Route::Object(t, name), Method::PATCH, Some(patch)) => {
            // Merge patch (what kube-rs' event Recorder sends); a strategic merge patch is
            // applied the same way (lists are replaced, not merged by key), and a server-side
            // apply patch too, creating the object if needed. JSON patch is not supported.
            let apply = content_type.starts_with("application/apply-patch");
            if !(apply || content_type.contains("merge-patch")) {
                return failure(415, "UnsupportedMediaType", "unsupported patch type");
            }
            let mut obj = match inner.store.get(t.kind, &target_key(&t, &name)) {
                Some(current) => current.clone(),
                None if apply => json!({ "metadata": {} }),
                None => return object_not_found(t.kind, &name),
            };
            merge_patch(&mut obj, &patch);
            if let Err(status) = place(&t, &mut obj, Some(&name)) {
                return error_response(&status);
            }
            respond(&t, metadata_only, 200, inner.put(shared, t.kind, obj))
        }
        (Route::Object(t, name), Method::DELETE, _) => {
            match inner.remove(shared, t.kind, &target_key(&t, &name)) {
                Some(obj) => respond(&t, metadata_only, 200, Ok(obj)),
                None => object_not_found(t.kind, &name),
            }
        }
        _ => failure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method",
        ),
    }
}

/// Sets an object's identity from the request path: kind, namespace and (for an object path)
/// name; a body naming another namespace or object is refused, as by the real server.
fn place(t: &Target, obj: &mut Value, name: Option<&str>) -> Result<(), Value> {
    obj["apiVersion"] = json!(api_version(t.kind.group, &t.version));
    obj["kind"] = json!(t.kind.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    if let Some(ns) = &t.namespace {
        match meta["namespace"].as_str() {
            Some(given) if given != ns => {
                return Err(status_object(
                    400,
                    "BadRequest",
                    "the namespace of the object does not match the namespace of the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    }
    match (name, meta["name"].as_str()) {
        (Some(path), Some(given)) if path != given => {
            return Err(status_object(
                400,
                "BadRequest",
                "the name of the object does not match the name in the URL",
            ));
        }
        (Some(path), _) => meta["name"] = json!(path),
        (None, Some(_)) => {}
        (None, None) => {
            let Some(prefix) = meta["generateName"].as_str() else {
                return Err(status_object(
                    422,
                    "Invalid",
                    "metadata.name: Required value",
                ));
            };
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("{prefix}{:05x}", NEXT.fetch_add(1, Ordering::Relaxed));
            meta["name"] = json!(name);
        }
    }
    Ok(())
}

fn object_key(kind: &KindInfo, obj: &Value) -> ObjectKey {
    let ns = if kind.namespaced {
        obj["metadata"]["namespace"].as_str().unwrap_or("default")
    } else {
        ""
    };
    (
        ns.to_owned(),
        obj["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn target_key(t: &Target, name: &str) -> ObjectKey {
    let ns = if t.kind.namespaced {
        t.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    (ns, name.to_owned())
}

fn respond(
    t: &Target,
    metadata_only: bool,
    code: u16,
    result: Result<Value, Value>,
) -> Response<Body> {
    match result {
        Ok(obj) => {
            let view = View {
                kind: t.kind,
                version: t.version.clone(),
                metadata_only,
            };
            json_response(code, &view.render(&obj))
        }
        Err(status) => error_response(&status),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "0000000",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

fn api_group(group: &str, versions: &[String]) -> Option<Value> {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "groupVersion": api_version(group, v), "version": v }))
        .collect();
    let preferred = gvs.first()?.clone();
    Some(json!({ "name": group, "versions": gvs, "preferredVersion": preferred }))
}

/// A continue token: the resourceVersion of the first page (every page reports it, so the
/// client's watch replays whatever changed while it paginated) and the last key served.
fn encode_continue(rv: u64, key: &ObjectKey) -> String {
    URL_SAFE_NO_PAD.encode(json!([rv, key.0, key.1]).to_string())
}

fn decode_continue(token: &str) -> Option<(u64, ObjectKey)> {
    let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        v[0].as_u64()?,
        (v[1].as_str()?.to_owned(), v[2].as_str()?.to_owned()),
    ))
}

fn list(inner: &Inner, t: &Target, query: &Query, metadata_only: bool) -> Response<Body> {
    let filter = match Filter::from_query(t.namespace.clone(), query) {
        Ok(f) => f,
        Err(msg) => return failure(400, "BadRequest", &msg),
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (list_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        None => (inner.rv, None),
        Some(token) => match decode_continue(token) {
            // The real server keeps a consistent snapshot for a few minutes; past compaction
            // the token is refused with 410 and the client starts over.
            Some((rv, _)) if rv < inner.log.oldest => {
                let msg = "The provided continue parameter is too old to display a consistent list result.";
                return failure(410, "Expired", msg);
            }
            Some((rv, key)) => (rv, Some(key)),
            None => {
                return failure(400, "BadRequest", "invalid continue token");
            }
        },
    };
    let view = View {
        kind: t.kind,
        version: t.version.clone(),
        metadata_only,
    };
    let mut items = Vec::new();
    let mut next = None;
    if let Some(objects) = inner.store.objects(t.kind) {
        let range = match &after {
            Some(key) => objects.range::<ObjectKey, _>((
                std::ops::Bound::Excluded(key),
                std::ops::Bound::Unbounded,
            )),
            None => objects.range::<ObjectKey, _>(..),
        };
        let mut last = None;
        for (key, obj) in range.filter(|(_, o)| filter.matches(o)) {
            if limit.is_some_and(|l| items.len() == l) {
                next = last.map(|k| encode_continue(list_rv, k));
                break;
            }
            items.push(view.render(obj));
            last = Some(key);
        }
    }
    let (api_version, kind) = view.list_types();
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if let Some(token) = next {
        metadata["continue"] = json!(token);
    }
    json_response(
        200,
        &json!({ "apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items }),
    )
}

/// A watch being streamed.
struct LiveWatch {
    view: View,
    filter: Filter,
    bookmarks: bool,
    deadline: tokio::time::Instant,
    /// Every change up to here has been sent or filtered out.
    cursor: u64,
    pending: Vec<Vec<u8>>,
    /// Send `pending`, then end the stream (after an expiry error).
    finish: bool,
    signals: watch::Receiver<Signals>,
    seen: Signals,
}

/// Starts a watch. Protocol points:
/// - `resourceVersion` N: the events after N, then live ones; N older than the log's
///   compaction point is "410 Gone" (see [`ExpiredWatch`]), which makes kube-rs re-list.
/// - `resourceVersion` unset or "0" (or `sendInitialEvents=true`): synthetic ADDED events
///   for the current state first; with `sendInitialEvents=true` (a streaming list, what
///   kube-rs' `streaming_lists()` asks for) a BOOKMARK annotated
///   `k8s.io/initial-events-end: "true"` then says the initial state is complete.
/// - `timeoutSeconds`: the stream ends cleanly after it; the client re-watches.
fn start_watch(
    shared: &Arc<Shared>,
    t: Target,
    query: &Query,
    metadata_only: bool,
) -> Response<Body> {
    let filter = match Filter::from_query(t.namespace.clone(), query) {
        Ok(f) => f,
        Err(msg) => return failure(400, "BadRequest", &msg),
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let send_initial = query.flag("sendInitialEvents");
    if send_initial && !bookmarks {
        let msg = "allowWatchBookmarks: Required value: allowWatchBookmarks must be true when sendInitialEvents is set";
        return failure(422, "Invalid", msg);
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let deadline = tokio::time::Instant::now() + timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let view = View {
        kind: t.kind,
        version: t.version,
        metadata_only,
    };
    let rv_param = query.get("resourceVersion").unwrap_or("");

    let inner = shared.lock();
    let mut signals = shared.signals.subscribe();
    let seen = *signals.borrow_and_update();
    let mut pending = Vec::new();
    let mut finish = false;
    if send_initial || rv_param.is_empty() || rv_param == "0" {
        let objects = inner
            .store
            .objects(view.kind)
            .into_iter()
            .flat_map(|o| o.values());
        pending.extend(
            objects
                .filter(|o| filter.matches(o))
                .map(|o| event_line("ADDED", &view.render(o))),
        );
        if send_initial {
            pending.push(view.bookmark(inner.rv, true));
        }
    } else {
        let Ok(rv) = rv_param.parse::<u64>() else {
            return failure(400, "BadRequest", "invalid resourceVersion");
        };
        match inner.log.since(rv) {
            Ok(entries) => pending.extend(entries.filter_map(|e| view.change(e, &filter))),
            Err(expired) if inner.expired_watch == ExpiredWatch::HttpGone => {
                return error_response(&expired.status());
            }
            Err(expired) => {
                pending.push(event_line("ERROR", &expired.status()));
                finish = true;
            }
        }
    }
    let cursor = inner.rv;
    drop(inner);

    let (tx, rx) = mpsc::channel(64);
    let live = LiveWatch {
        view,
        filter,
        bookmarks,
        deadline,
        cursor,
        pending,
        finish,
        signals,
        seen,
    };
    let shared = shared.clone();
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        stream_watch(&shared, live, &tx).await;
        shared.open_watches.fetch_sub(1, Ordering::SeqCst);
    });
    let mut resp = Response::new(Body::Stream(rx));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn stream_watch(
    shared: &Shared,
    mut w: LiveWatch,
    tx: &mpsc::Sender<Result<Frame<Bytes>, io::Error>>,
) {
    loop {
        for line in w.pending.drain(..) {
            let send = tx.send(Ok(Frame::data(Bytes::from(line))));
            if !matches!(tokio::time::timeout_at(w.deadline, send).await, Ok(Ok(()))) {
                return;
            }
        }
        if w.finish {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(w.deadline) => return,
            // The client went away (hyper dropped the body).
            () = tx.closed() => return,
            changed = w.signals.changed() => {
                if changed.is_err() {
                    return; // the server is shutting down
                }
                let now = *w.signals.borrow_and_update();
                if now.drops != w.seen.drops {
                    // Abrupt end: the client sees the connection cut mid-stream (bounded,
                    // in case the client stopped reading and the channel is full).
                    let cut = tx.send(Err(io::Error::other("watch dropped")));
                    let _ = tokio::time::timeout(Duration::from_secs(1), cut).await;
                    return;
                }
                let inner = shared.lock();
                match inner.log.since(w.cursor) {
                    Ok(entries) => w.pending.extend(entries.filter_map(|e| w.view.change(e, &w.filter))),
                    // Compacted before this watch caught up: the real server ends such a
                    // watch with the same 410 error.
                    Err(expired) => {
                        w.pending.push(event_line("ERROR", &expired.status()));
                        w.finish = true;
                    }
                }
                w.cursor = inner.rv;
                drop(inner);
                if w.bookmarks && now.bookmarks != w.seen.bookmarks && !w.finish {
                    w.pending.push(w.view.bookmark(w.cursor, false));
                }
                w.seen = now;
            }
        }
    }
}

/// The kind of `api_version`/`kind` and the store key of `namespace`/`name` in it
/// (`namespace` ignored for cluster-scoped kinds).
fn stored_key(
    api_version: &str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<(&'static KindInfo, (String, String))> {
    let kind = kind_of(&json!({ "apiVersion": api_version, "kind": kind }))?;
    let ns = if kind.namespaced { namespace } else { "" };
    Ok((kind, (ns.to_owned(), name.to_owned())))
}

// ---------------------------------------------------------------------------------------
// The handle

/// A running fake API server; stops when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts a server on 127.0.0.1 on an ephemeral port, on its own thread and runtime.
    pub fn start() -> Result<FakeApiServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        Self::start_on(listener)
    }

    /// Serves on a listener bound elsewhere, e.g. on 127.0.0.1 inside a
    /// test's network namespace (bound from a thread that entered it), so a
    /// daemon running there reaches it.
    pub fn start_on(listener: std::net::TcpListener) -> Result<FakeApiServer> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (signals, _) = watch::channel(Signals::default());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                rv: 1,
                store: Store::default(),
                log: EventLog::new(EVENT_LOG_CAPACITY),
                istio_versions: DEFAULT_ISTIO_VERSIONS
                    .iter()
                    .map(|v| (*v).to_owned())
                    .collect(),
                outage: false,
                outage_mode: OutageMode::Unavailable,
                forbidden: Vec::new(),
                expired_watch: ExpiredWatch::ErrorEvent,
                requests: VecDeque::new(),
            }),
            signals,
            open_watches: AtomicUsize::new(0),
            port: addr.port(),
            verbose: std::env::var_os("FAKE_APISERVER_LOG").is_some_and(|v| v != "0"),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the fake apiserver's runtime")?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        let server = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, server, shutdown_rx).await,
                        Err(e) => eprintln!("fake-apiserver: cannot listen: {e}"),
                    }
                });
                // Dropping the runtime cancels every connection and watch task.
            })
            .context("spawning the fake apiserver thread")?;
        Ok(FakeApiServer {
            shared,
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for this server: one cluster, no authentication, namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\n    namespace: default\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path` and returns the path.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<PathBuf> {
        std::fs::write(path, self.kubeconfig_yaml())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_owned())
    }

    /// A client configuration for this server.
    pub fn config(&self) -> kube::Config {
        let uri = self.url().parse().expect("the server URL is a valid URI");
        kube::Config::new(uri)
    }

    /// A client for this server. Call it inside a tokio runtime (the client spawns a task).
    pub fn client(&self) -> Result<kube::Client> {
        kube::Client::try_from(self.config()).context("building a kube client")
    }

    /// Creates or replaces an object, as `kubectl apply` would; the kind must be one of
    /// [`KINDS`] (any version of its group). Namespaced objects without a namespace go to
    /// `default`. Returns the stored object (with resourceVersion, uid, generation...).
    pub fn apply(&self, obj: Value) -> Result<Value> {
        let kind = kind_of(&obj)?;
        let mut inner = self.shared.lock();
        inner
            .put(&self.shared, kind, obj)
            .map_err(|status| anyhow!("apply refused: {status}"))
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped kinds. Returns the deleted
    /// object, or `None` if there was none.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        let (kind, key) = stored_key(api_version, kind, namespace, name)?;
        let mut inner = self.shared.lock();
        Ok(inner.remove(&self.shared, kind, &key))
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        let (kind, key) = stored_key(api_version, kind, namespace, name)?;
        Ok(self.shared.lock().store.get(kind, &key).cloned())
    }

    /// Every Event received (`events.k8s.io/v1` ones, with `regarding`, `note`, `reason`,
    /// `type`, `series`..., then core `v1` ones), sorted by namespace and name.
    pub fn events(&self) -> Vec<Value> {
        let inner = self.shared.lock();
        KINDS
            .iter()
            .filter(|k| k.plural == "events")
            .rev()
            .flat_map(|k| {
                inner
                    .store
                    .objects(k)
                    .into_iter()
                    .flat_map(|o| o.values().cloned())
            })
            .collect()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Drops the event log: a watch resuming from any earlier resourceVersion gets 410 Gone
    /// (open watches that have caught up keep streaming, as after an etcd compaction).
    pub fn compact(&self) {
        let mut inner = self.shared.lock();
        let rv = inner.rv;
        inner.log.compact(rv);
    }

    /// Cuts every open watch stream mid-response; clients must re-watch.
    pub fn drop_watches(&self) {
        let _inner = self.shared.lock();
        self.shared.signal(|s| s.drops += 1);
    }

    /// Sends a BOOKMARK at the current resourceVersion on every watch that allows them.
    pub fn bookmark(&self) {
        let _inner = self.shared.lock();
        self.shared.signal(|s| s.bookmarks += 1);
    }

    /// Answers 403 Forbidden (as RBAC does) to requests for `resource` whose
    /// query contains `fragment` (e.g. `metadata.name%3Dsecret-x`).
    pub fn forbid(&self, resource: &str, fragment: &str) {
        self.shared
            .lock()
            .forbidden
            .push((resource.to_owned(), fragment.to_owned()));
    }

    /// Starts or ends an outage (see [`OutageMode`]); starting one also cuts every watch.
    pub fn set_outage(&self, on: bool) {
        self.shared.lock().outage = on;
        if on {
            self.drop_watches();
        }
    }

    pub fn set_outage_mode(&self, mode: OutageMode) {
        self.shared.lock().outage_mode = mode;
    }

    /// How a watch from a compacted resourceVersion is refused (default: an ERROR event).
    pub fn set_expired_watch(&self, mode: ExpiredWatch) {
        self.shared.lock().expired_watch = mode;
    }

    /// Serves these `networking.istio.io` versions only, preferred first (default
    /// [`DEFAULT_ISTIO_VERSIONS`]); others answer 404 and are absent from discovery.
    pub fn served_istio_versions(&self, versions: &[&str]) {
        self.shared.lock().istio_versions = versions.iter().map(|v| (*v).to_owned()).collect();
    }

    /// Every request so far (the last 100,000).
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Requests of `verb` on `resource` (a plural such as `services`) so far.
    pub fn count(&self, verb: Verb, resource: &str) -> usize {
        let inner = self.shared.lock();
        inner
            .requests
            .iter()
            .filter(|r| r.verb == verb && r.resource.as_deref() == Some(resource))
            .count()
    }

    /// LIST requests (each page counts) on `resource` so far.
    pub fn count_lists(&self, resource: &str) -> usize {
        self.count(Verb::List, resource)
    }

    /// WATCH requests on `resource` so far.
    pub fn count_watches(&self, resource: &str) -> usize {
        self.count(Verb::Watch, resource)
    }

    /// Watch streams currently open.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The served kind of an object, from its `apiVersion` and `kind`.
fn kind_of(obj: &Value) -> Result<&'static KindInfo> {
    let (Some(api_version), Some(kind)) = (obj["apiVersion"].as_str(), obj["kind"].as_str()) else {
        bail!("object has no apiVersion or kind: {obj}");
    };
    let (group, _) = split_api_version(api_version);
    find_kind(group, |k| k.kind == kind)
        .ok_or_else(|| anyhow!("the fake apiserver does not serve {kind} in {api_version:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let svc = find_kind("", |k| k.plural == "services").unwrap();
        let vs = find_kind(ISTIO_GROUP, |k| k.plural == "virtualservices").unwrap();
        let node = find_kind("", |k| k.plural == "nodes").unwrap();
        let t = |kind, version: &str, ns: Option<&str>| Target {
            kind,
            version: version.into(),
            namespace: ns.map(Into::into),
        };
        let cases: Vec<(&str, Option<Route>)> = vec![
            ("/version", Some(Route::Version)),
            ("/api", Some(Route::CoreVersions)),
            (
                "/api/v1",
                Some(Route::GroupResources {
                    group: "".into(),
                    version: "v1".into(),
                }),
            ),
            (
                "/apis/networking.istio.io",
                Some(Route::Group(ISTIO_GROUP.into())),
            ),
            (
                "/api/v1/services",
                Some(Route::Collection(t(svc, "v1", None))),
            ),
            (
                "/api/v1/namespaces/a/services",
                Some(Route::Collection(t(svc, "v1", Some("a")))),
            ),
            (
                "/api/v1/namespaces/a/services/x",
                Some(Route::Object(t(svc, "v1", Some("a")), "x".into())),
            ),
            (
                "/api/v1/nodes/n1",
                Some(Route::Object(t(node, "v1", None), "n1".into())),
            ),
            ("/api/v1/namespaces/a/nodes", None),
            ("/api/v1/services/x", None),
            (
                "/apis/networking.istio.io/v1alpha3/namespaces/a/virtualservices",
                Some(Route::Collection(t(vs, "v1alpha3", Some("a")))),
            ),
            ("/apis/networking.istio.io/v1/widgets", None),
            ("/healthz", None),
        ];
        for (path, want) in cases {
            assert_eq!(Route::parse(path), want, "{path}");
        }
    }

    #[test]
    fn label_selectors() {
        let labels = json!({ "app": "web", "tier": "front" });
        let labels = labels.as_object();
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("app in (db, web)", true),
            ("app notin (web),tier", false),
            ("missing notin (a)", true),
        ];
        for (sel, want) in cases {
            assert_eq!(Selector::parse(sel).unwrap().matches(labels), want, "{sel}");
        }
        assert!(Selector::parse("a b").is_err());
        assert!(Selector::parse("a in b").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({ "metadata": { "name": "x", "namespace": "a" } });
        let filter =
            |s: &str| Filter::from_query(None, &Query::parse(&format!("fieldSelector={s}")));
        assert!(filter("metadata.name%3Dx").unwrap().matches(&obj));
        assert!(!filter("metadata.name!=x").unwrap().matches(&obj));
        assert!(
            filter("metadata.namespace==a,metadata.name!=y")
                .unwrap()
                .matches(&obj)
        );
        assert!(filter("spec.nodeName=n").is_err());
    }

    #[test]
    fn event_log_expires_and_resumes() {
        let kind = &KINDS[0];
        let mut log = EventLog::new(2);
        for rv in 2..=4 {
            log.push(LogEntry {
                rv,
                kind,
                change: Change::Added,
                object: json!({}),
                previous: None,
            });
        }
        // rv 2 was dropped: resuming after 1 would miss it, after 2 would not.
        assert!(log.since(1).is_err());
        assert_eq!(
            log.since(2)
                .map(|e| e.map(|e| e.rv).collect::<Vec<_>>())
                .ok(),
            Some(vec![3, 4])
        );
        log.compact(4);
        assert!(log.since(3).is_err());
        assert_eq!(log.since(4).map(Iterator::count).ok(), Some(0));
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v = json!({ "a": { "b": 1, "c": 2 }, "l": [1] });
        merge_patch(&mut v, &json!({ "a": { "b": null, "d": 3 }, "l": [2, 3] }));
        assert_eq!(v, json!({ "a": { "c": 2, "d": 3 }, "l": [2, 3] }));
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("ns".to_owned(), "name".to_owned());
        assert_eq!(decode_continue(&encode_continue(42, &key)), Some((42, key)));
        assert_eq!(decode_continue("garbage"), None);
    }
}
