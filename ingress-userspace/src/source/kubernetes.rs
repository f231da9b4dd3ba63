//! The Kubernetes API source: kube-rs watchers keep one cache per kind, and
//! every change (coalesced) recompiles the whole config through the same
//! wire -> model -> analyze -> compile pipeline as the directory source.
//!
//! Kinds and how they are watched:
//! - Gateway, VirtualService, DestinationRule, ServiceEntry
//!   (`networking.istio.io`, the newest served of v1, v1beta1, v1alpha3, found
//!   by discovery, retried until the group is served);
//! - Service, EndpointSlice (`discovery.k8s.io/v1`), all namespaces;
//! - Pod, metadata only (labels for subsets; EndpointSlices name their pods);
//! - Secret: one watch per name that a Gateway's `credentialName` (or its
//!   `-cacert` companion) refers to, in the gateway namespace only, through a
//!   `metadata.name` field selector: the daemon never receives other Secrets.
//!
//! Consistency: a cache is replaced atomically when a (re-)list completes
//! (`InitDone`), so a 410 Gone or a dropped stream re-lists without a window
//! in which objects look deleted. While the API is unreachable the watchers
//! back off and retry, the caches keep their last state, nothing recompiles,
//! and the daemon keeps serving its last snapshot.
//!
//! Invalid objects: the pipeline runs in per-object mode (an object with an
//! error is left out, the rest applies); each error is logged once and
//! reported as a `Warning` Event on the object, with the field in
//! `regarding.fieldPath`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind, PartialObjectMeta};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::diag::{Diagnostics, Source};
use crate::pipeline::{self, Options, Outcome};
use crate::wire::{self, WireConfig};

/// The Istio API group and the versions read, newest first.
const ISTIO_GROUP: &str = "networking.istio.io";
const ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// What the source needs from the command line.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig file; in-cluster config (or `$KUBECONFIG`) when absent.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the downward API's `spec.nodeName`); names the
    /// Event reporter instance and finds the Node object.
    pub node_name: Option<String>,
}

/// A watched kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Service,
    EndpointSlice,
    Pod,
    Secret,
}

impl Kind {
    const ISTIO: [Kind; 4] = [
        Kind::Gateway,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
    ];
    const CORE: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Pod];

    fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Secret => "Secret",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Gateway => "gateways",
            Kind::VirtualService => "virtualservices",
            Kind::DestinationRule => "destinationrules",
            Kind::ServiceEntry => "serviceentries",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Pod => "pods",
            Kind::Secret => "secrets",
        }
    }

    /// The group and version read (Istio kinds: the version discovery chose).
    fn resource(self, istio_version: &str) -> ApiResource {
        let (group, version) = match self {
            Kind::Gateway | Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry => {
                (ISTIO_GROUP, istio_version)
            }
            Kind::EndpointSlice => ("discovery.k8s.io", "v1"),
            Kind::Service | Kind::Pod | Kind::Secret => ("", "v1"),
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, self.name()),
            self.plural(),
        )
    }

    /// Core kinds whose schema the API server enforces: fields the gateway
    /// does not know are noise there, not a finding.
    fn quiet_unknown_fields(self) -> bool {
        !Kind::ISTIO.contains(&self)
    }
}

/// One cached object, ready for the wire loader.
#[derive(Debug)]
struct Entry {
    value: Value,
    resource_version: String,
}

/// The cache of one watch.
#[derive(Debug, Default)]
struct Cache {
    objects: BTreeMap<(String, String), Arc<Entry>>,
    /// Objects of a list in progress; they replace `objects` at `InitDone`.
    listing: Option<BTreeMap<(String, String), Arc<Entry>>>,
    /// A list has completed at least once.
    synced: bool,
}

type SharedCache = Arc<Mutex<Cache>>;

/// Locks a mutex; a panic elsewhere while it was held leaves the data as it
/// was, which every user here can take.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running watch feeding a cache.
struct Watch {
    cache: SharedCache,
    task: JoinHandle<()>,
    label: String,
    status: Arc<SourceStatus>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
        self.status.remove(&self.label);
    }
}

/// What each watch is doing, for `/server_info` and `/stats/prometheus`.
#[derive(Debug, Default)]
pub struct SourceStatus {
    watches: Mutex<BTreeMap<String, WatchStatus>>,
}

/// One watch's state.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WatchStatus {
    /// Objects in its cache.
    pub objects: usize,
    /// Its first list has completed.
    pub synced: bool,
    /// Lists completed (the first, then one per 410 / restart).
    pub lists: u64,
    /// Errors seen (each retried with backoff).
    pub errors: u64,
    /// The last error, while the watch has not recovered from it.
    pub failing: Option<String>,
}

impl SourceStatus {
    fn update(&self, label: &str, f: impl FnOnce(&mut WatchStatus)) {
        f(lock(&self.watches).entry(label.to_owned()).or_default());
    }

    fn remove(&self, label: &str) {
        lock(&self.watches).remove(label);
    }

    /// Every watch's state, by watch (`gateways`, `secrets (metadata.name=x)`).
    pub fn watches(&self) -> BTreeMap<String, WatchStatus> {
        lock(&self.watches).clone()
    }
}

/// A metric of [`SourceStatus`]: name, help, value of one watch.
type Series<T> = (&'static str, &'static str, fn(&WatchStatus) -> T);

impl prometheus_client::collector::Collector for SourceStatus {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let watches = self.watches();
        let gauges: [Series<i64>; 2] = [
            (
                "ingressd_kubernetes_objects",
                "Objects in the cache of each Kubernetes watch",
                |w| i64::try_from(w.objects).unwrap_or(i64::MAX),
            ),
            (
                "ingressd_kubernetes_synced",
                "1 once the watch's first list has completed",
                |w| i64::from(w.synced),
            ),
        ];
        for (name, help, value) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (watch, status) in &watches {
                ConstGauge::new(value(status))
                    .encode(family.encode_family(&[("watch", watch.as_str())])?)?;
            }
        }
        let counters: [Series<u64>; 2] = [
            (
                "ingressd_kubernetes_lists",
                "Lists completed by each Kubernetes watch (a 410 Gone or a restart lists again)",
                |w| w.lists,
            ),
            (
                "ingressd_kubernetes_watch_errors",
                "Errors of each Kubernetes watch (retried with backoff)",
                |w| w.errors,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (watch, status) in &watches {
                ConstCounter::new(value(status))
                    .encode(family.encode_family(&[("watch", watch.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// Where an error-free object came from, for Events about it.
#[derive(Clone, Debug)]
struct ObjectId {
    kind: Kind,
    api_version: String,
    namespace: String,
    name: String,
    uid: Option<String>,
    resource_version: String,
}

/// What [`KubeSource::collect`] gathers for a build.
struct Collected {
    objects: Vec<(Kind, Arc<Entry>)>,
    /// Of the kinds, names and resourceVersions: equal means nothing changed.
    fingerprint: u64,
}

/// The source: watches, caches and what was last built from them.
pub struct KubeSource {
    client: Client,
    status: Arc<SourceStatus>,
    gateway_namespace: String,
    watches: Arc<Mutex<BTreeMap<Kind, Watch>>>,
    secrets: BTreeMap<String, Watch>,
    changes: watch::Sender<u64>,
    recorder: Recorder,
    /// Fingerprint (kinds, names, resourceVersions) of the last build.
    built: Option<u64>,
    /// Diagnostic lines of the last build (each is logged once).
    logged: HashSet<String>,
    /// Events already published: object uid/resourceVersion, field, message.
    reported: HashSet<(String, String, String)>,
    /// The objects of the last build by source name, for Events.
    ids: HashMap<String, ObjectId>,
    discovery: JoinHandle<()>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.discovery.abort();
    }
}

impl KubeSource {
    /// Connects (lazily: nothing is requested yet) and starts the watches.
    pub async fn start(options: &KubeOptions, gateway_namespace: &str) -> anyhow::Result<Self> {
        let config = match &options.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .with_context(|| format!("using the kubeconfig {}", path.display()))?
            }
            None => Config::infer()
                .await
                .context("no in-cluster config and no kubeconfig (use --kubeconfig)")?,
        };
        info!(api = %config.cluster_url, "kubernetes source");
        let client = Client::try_from(config).context("creating the Kubernetes client")?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "ingressd".to_owned(),
                instance: options.node_name.clone(),
            },
        );
        let (changes, _) = watch::channel(0u64);
        let status = Arc::new(SourceStatus::default());
        let watches = Arc::new(Mutex::new(BTreeMap::new()));
        let notify = Notify {
            changes: changes.clone(),
            status: status.clone(),
        };
        for kind in Kind::CORE {
            let watch = spawn_watch(&client, kind, "", None, None, notify.clone());
            lock(&watches).insert(kind, watch);
        }
        let discovery = tokio::spawn(discover_istio(client.clone(), watches.clone(), notify));
        Ok(Self {
            client,
            status,
            gateway_namespace: gateway_namespace.to_owned(),
            watches,
            secrets: BTreeMap::new(),
            changes,
            recorder,
            built: None,
            logged: HashSet::new(),
            reported: HashSet::new(),
            ids: HashMap::new(),
            discovery,
        })
    }

    /// The watches' state, shared with the admin API and the metrics.
    pub fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }

    /// A receiver that sees every cache change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The addresses of this node (Node `status.addresses`, InternalIP and
    /// ExternalIP). Empty when the Node cannot be read.
    pub async fn node_addresses(&self, node_name: &str) -> Vec<IpAddr> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        match tokio::time::timeout(Duration::from_secs(10), nodes.get(node_name)).await {
            Ok(Ok(node)) => node
                .status
                .and_then(|s| s.addresses)
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect(),
            Ok(Err(error)) => {
                warn!(node = node_name, "cannot read the Node: {error}");
                Vec::new()
            }
            Err(_) => {
                warn!(node = node_name, "reading the Node timed out");
                Vec::new()
            }
        }
    }

    /// The kinds whose first list has not completed yet.
    fn unsynced(&self) -> Vec<String> {
        let watches = lock(&self.watches);
        let mut missing: Vec<String> = Kind::ISTIO
            .iter()
            .chain(&Kind::CORE)
            .filter(|kind| watches.get(kind).is_none_or(|w| !lock(&w.cache).synced))
            .map(|kind| kind.plural().to_owned())
            .collect();
        missing.extend(
            self.secrets
                .iter()
                .filter(|(_, w)| !lock(&w.cache).synced)
                .map(|(name, _)| format!("secrets/{name}")),
        );
        missing
    }

    /// Waits until every watch (and the Secrets the Gateways refer to) has
    /// listed once.
    async fn wait_synced(&mut self) {
        let mut changes = self.subscribe();
        let mut last_report = tokio::time::Instant::now();
        loop {
            self.reconcile_secrets();
            let missing = self.unsynced();
            if missing.is_empty() {
                return;
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                info!(waiting_for = ?missing, "kubernetes source: initial sync");
                last_report = tokio::time::Instant::now();
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
        }
    }

    /// The first build: waits for every first list, then compiles (again
    /// when a Secret a Gateway names turns up unlisted, once it is listed).
    pub async fn first_build(&mut self, options: &Options) -> anyhow::Result<Outcome> {
        let mut changes = self.subscribe();
        self.wait_synced().await;
        loop {
            if let Some(outcome) = self.build(options).await? {
                return Ok(outcome);
            }
            let _ = changes.changed().await;
        }
    }

    /// Starts a watch for every Secret name the Gateways refer to and stops
    /// the watches of names no longer referred to.
    fn reconcile_secrets(&mut self) {
        let wanted = self.referenced_secrets();
        self.secrets.retain(|name, _| wanted.contains(name));
        for name in wanted {
            if !self.secrets.contains_key(&name) {
                debug!(secret = %name, namespace = %self.gateway_namespace, "watching Secret");
                let watch = spawn_watch(
                    &self.client,
                    Kind::Secret,
                    &self.gateway_namespace,
                    Some(format!("metadata.name={name}")),
                    None,
                    Notify {
                        changes: self.changes.clone(),
                        status: self.status.clone(),
                    },
                );
                self.secrets.insert(name, watch);
            }
        }
    }

    /// `credentialName`s of every Gateway, and their `-cacert` companions.
    fn referenced_secrets(&self) -> BTreeSet<String> {
        let watches = lock(&self.watches);
        let Some(gateways) = watches.get(&Kind::Gateway) else {
            return BTreeSet::new();
        };
        let cache = lock(&gateways.cache);
        let mut names = BTreeSet::new();
        for entry in cache.objects.values() {
            let servers = entry
                .value
                .pointer("/spec/servers")
                .and_then(Value::as_array);
            for server in servers.into_iter().flatten() {
                let Some(tls) = server.get("tls") else {
                    continue;
                };
                let single = tls.get("credentialName").and_then(Value::as_str);
                let listed = tls
                    .get("credentialNames")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str);
                for name in single.into_iter().chain(listed) {
                    let name = name.trim();
                    if is_object_name(name) {
                        names.insert(name.to_owned());
                        names.insert(format!("{name}-cacert"));
                    }
                }
            }
        }
        names
    }

    /// Compiles the cached objects. `None` when nothing changed since the
    /// last build (a resync or a re-list that found the same objects) or a
    /// newly referenced Secret has not been listed yet (its watch will
    /// signal a change when it has).
    pub async fn build(&mut self, options: &Options) -> anyhow::Result<Option<Outcome>> {
        self.reconcile_secrets();
        let pending = self.unsynced();
        if !pending.is_empty() {
            debug!(waiting_for = ?pending, "kubernetes source: build deferred");
            return Ok(None);
        }
        let Collected {
            objects,
            fingerprint,
        } = self.collect();
        if self.built == Some(fingerprint) {
            debug!("kubernetes source: no change");
            return Ok(None);
        }
        let options = options.clone();
        let (outcome, ids) = tokio::task::spawn_blocking(move || compile(objects, &options))
            .await
            .context("the config pipeline panicked")?;
        self.built = Some(fingerprint);
        self.ids = ids;
        Ok(Some(outcome))
    }

    /// The objects of every cache (values cloned under the locks, cheaply:
    /// `Arc`s) and their fingerprint.
    fn collect(&self) -> Collected {
        let mut objects = Vec::new();
        let mut hasher = DefaultHasher::new();
        let watches = lock(&self.watches);
        let all = watches
            .iter()
            .map(|(kind, w)| (*kind, w))
            .chain(self.secrets.values().map(|w| (Kind::Secret, w)));
        for (kind, watch) in all {
            let cache = lock(&watch.cache);
            for ((namespace, name), entry) in &cache.objects {
                (kind, namespace, name, &entry.resource_version).hash(&mut hasher);
                objects.push((kind, entry.clone()));
            }
        }
        Collected {
            objects,
            fingerprint: hasher.finish(),
        }
    }

    /// Logs the diagnostics of a build that the previous one did not have,
    /// and publishes a Warning Event on the object of each new error.
    pub fn report(&mut self, outcome: &Outcome) {
        let ids = &self.ids;
        let mut logged = HashSet::new();
        for diagnostic in outcome.diagnostics.iter() {
            let line = diagnostic.to_string();
            if !self.logged.contains(&line) {
                if diagnostic.is_error() {
                    error!("{line} (object skipped)");
                } else {
                    warn!("{line}");
                }
            }
            logged.insert(line);
            if !diagnostic.is_error() {
                continue;
            }
            let Some(id) = diagnostic
                .source
                .file
                .as_ref()
                .and_then(|f| ids.get(&f.to_string_lossy().into_owned()))
            else {
                continue;
            };
            let field = diagnostic.field.clone().unwrap_or_default();
            let key = (
                format!(
                    "{}/{}",
                    id.uid.as_deref().unwrap_or(&id.name),
                    id.resource_version
                ),
                field.clone(),
                diagnostic.message.clone(),
            );
            if !self.reported.insert(key) {
                continue;
            }
            let note = if field.is_empty() {
                diagnostic.message.clone()
            } else {
                format!("{field}: {}", diagnostic.message)
            };
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: "InvalidConfig".to_owned(),
                note: Some(truncate(&note, 1000)),
                action: "Skipped".to_owned(),
                secondary: None,
            };
            let reference = ObjectReference {
                api_version: Some(id.api_version.clone()),
                kind: Some(id.kind.name().to_owned()),
                name: Some(id.name.clone()),
                namespace: Some(id.namespace.clone()),
                uid: id.uid.clone(),
                resource_version: Some(id.resource_version.clone()),
                field_path: (!field.is_empty()).then_some(field),
            };
            let recorder = self.recorder.clone();
            tokio::spawn(async move {
                if let Err(error) = recorder.publish(&event, &reference).await {
                    warn!(
                        object = %format!("{}/{}", reference.namespace.as_deref().unwrap_or_default(), reference.name.as_deref().unwrap_or_default()),
                        "cannot publish the Event: {error}"
                    );
                }
            });
        }
        self.logged = logged;
        // Keep the set bounded: only keys of objects still erroneous matter.
        if self.reported.len() > 10_000 {
            self.reported.clear();
        }
    }
}

/// A DNS-1123 subdomain (what a Secret name can be); anything else in
/// `credentialName` (Istio's `kubernetes://` or `ns/name` forms) is resolved
/// by the model, which reports it.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Finds the Istio version to read and starts the Istio watches; retries
/// (with backoff) until the group is served.
async fn discover_istio(
    client: Client,
    watches: Arc<Mutex<BTreeMap<Kind, Watch>>>,
    notify: Notify,
) {
    let mut delay = Duration::from_millis(500);
    loop {
        match kube::discovery::group(&client, ISTIO_GROUP).await {
            Ok(group) => {
                let served: Vec<&str> = group.versions().collect();
                if let Some(version) = ISTIO_VERSIONS.iter().find(|v| served.contains(v)) {
                    info!(version = %format!("{ISTIO_GROUP}/{version}"), served = ?served, "reading Istio resources");
                    let mut watches = lock(&watches);
                    for kind in Kind::ISTIO {
                        let watch =
                            spawn_watch(&client, kind, "", None, Some(version), notify.clone());
                        watches.insert(kind, watch);
                    }
                    return;
                }
                warn!(served = ?served, "{ISTIO_GROUP} serves none of {ISTIO_VERSIONS:?}; retrying");
            }
            Err(error) => warn!("discovering {ISTIO_GROUP}: {error}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Where a watch reports: cache changes and its state.
#[derive(Clone)]
struct Notify {
    changes: watch::Sender<u64>,
    status: Arc<SourceStatus>,
}

/// Starts the watch of one kind (in `namespace`, all when empty) feeding a
/// new cache; every change bumps `notify.changes`.
fn spawn_watch(
    client: &Client,
    kind: Kind,
    namespace: &str,
    fields: Option<String>,
    istio_version: Option<&str>,
    notify: Notify,
) -> Watch {
    let resource = kind.resource(istio_version.unwrap_or("v1"));
    fn api<K>(client: &Client, namespace: &str, resource: &ApiResource) -> Api<K>
    where
        K: kube::Resource<DynamicType = ApiResource, Scope = kube::core::DynamicResourceScope>,
    {
        if namespace.is_empty() {
            Api::all_with(client.clone(), resource)
        } else {
            Api::namespaced_with(client.clone(), namespace, resource)
        }
    }
    let mut config = watcher::Config::default();
    if let Some(fields) = &fields {
        config = config.fields(fields);
    }
    let cache = SharedCache::default();
    let api_version = resource.api_version.clone();
    let label = match &fields {
        Some(fields) => format!("{} ({fields})", kind.plural()),
        None => kind.plural().to_owned(),
    };
    notify.status.update(&label, |_| {});
    let status = notify.status.clone();
    let task = {
        let cache = cache.clone();
        let client = client.clone();
        let namespace = namespace.to_owned();
        let label = label.clone();
        tokio::spawn(async move {
            // Each pass is one watcher; a pass ends when the API says the
            // resourceVersion it resumes from is gone (see `run_watch`), and
            // the next pass lists again.
            loop {
                if kind == Kind::Pod {
                    // Labels are all the gateway reads from Pods: metadata-only
                    // lists and watches.
                    let api: Api<PartialObjectMeta<DynamicObject>> =
                        api(&client, &namespace, &resource);
                    let stream = watcher::watcher(api, config.clone()).default_backoff();
                    run_watch(stream, &cache, &notify, &label, |meta| {
                        serde_json::json!({
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": serde_json::to_value(&meta.metadata).unwrap_or(Value::Null),
                        })
                    })
                    .await;
                } else {
                    let api: Api<DynamicObject> = api(&client, &namespace, &resource);
                    let stream = watcher::watcher(api, config.clone()).default_backoff();
                    run_watch(stream, &cache, &notify, &label, |object: DynamicObject| {
                        let mut value = serde_json::to_value(&object).unwrap_or(Value::Null);
                        if let Value::Object(fields) = &mut value {
                            fields.insert("apiVersion".into(), Value::String(api_version.clone()));
                            fields.insert("kind".into(), Value::String(kind.name().to_owned()));
                        }
                        value
                    })
                    .await;
                }
                info!(watch = %label, "resourceVersion expired (410 Gone): listing again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    Watch {
        cache,
        task,
        label,
        status,
    }
}

/// Applies a watcher's events to `cache` until the API answers the start of
/// a watch with HTTP 410 Gone: kube-rs then retries the same expired
/// resourceVersion forever, so the caller starts a new watcher, which lists.
/// (A 410 inside a watch stream, the usual form, kube-rs handles itself by
/// listing again.)
async fn run_watch<K, S>(
    stream: S,
    cache: &SharedCache,
    notify: &Notify,
    label: &str,
    into_value: impl Fn(K) -> Value,
) where
    K: kube::Resource,
    S: futures_util::Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    let secret = label.starts_with("secrets");
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(event) => event,
            Err(watcher::Error::WatchStartFailed(kube::Error::Api(status)))
                if status.code == 410 =>
            {
                return;
            }
            // A Secret this daemon may not read (RBAC narrowed to named
            // Secrets, and a Gateway names another): counts as absent, so
            // readiness is not held forever; the Gateway's missing
            // credential is reported by the model. Retried like any error.
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                if secret && status.code == 403 && !lock(cache).synced =>
            {
                warn!(
                    watch = label,
                    "not allowed to read this Secret (RBAC); treating it as absent: {}",
                    status.message
                );
                lock(cache).synced = true;
                notify.status.update(label, |s| {
                    s.synced = true;
                    s.errors += 1;
                    s.failing = Some(status.message.clone());
                });
                notify.changes.send_modify(|generation| *generation += 1);
                failing = true;
                continue;
            }
            Err(error) => {
                notify.status.update(label, |s| {
                    s.errors += 1;
                    s.failing = Some(error.to_string());
                });
                // The backoff paces retries; log the first failure of a run
                // loudly and the rest quietly.
                if failing {
                    debug!(watch = label, "watch error: {error}");
                } else {
                    warn!(
                        watch = label,
                        "watch error (retrying with backoff; serving the last good config): {error}"
                    );
                }
                failing = true;
                continue;
            }
        };
        if failing {
            info!(watch = label, "watch recovered");
            notify.status.update(label, |s| s.failing = None);
            failing = false;
        }
        let changed = {
            let mut cache = lock(cache);
            match event {
                Event::Init => {
                    cache.listing = Some(BTreeMap::new());
                    false
                }
                Event::InitApply(object) => {
                    let (key, entry) = entry(object, &into_value);
                    cache.listing.get_or_insert_default().insert(key, entry);
                    false
                }
                Event::InitDone => {
                    let listed = cache.listing.take().unwrap_or_default();
                    debug!(watch = label, objects = listed.len(), "listed");
                    cache.objects = listed;
                    cache.synced = true;
                    notify.status.update(label, |s| {
                        s.synced = true;
                        s.lists += 1;
                    });
                    true
                }
                Event::Apply(object) => {
                    let (key, entry) = entry(object, &into_value);
                    let same = cache
                        .objects
                        .get(&key)
                        .is_some_and(|old| old.resource_version == entry.resource_version);
                    cache.objects.insert(key, entry);
                    !same
                }
                Event::Delete(object) => {
                    let key = object_key(object.meta());
                    cache.objects.remove(&key).is_some()
                }
            }
        };
        if changed {
            let objects = lock(cache).objects.len();
            notify.status.update(label, |s| s.objects = objects);
            notify.changes.send_modify(|generation| *generation += 1);
        }
    }
}

fn object_key(meta: &kube::core::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn entry<K: kube::Resource>(
    object: K,
    into_value: &impl Fn(K) -> Value,
) -> ((String, String), Arc<Entry>) {
    let key = object_key(object.meta());
    let resource_version = object.meta().resource_version.clone().unwrap_or_default();
    let mut value = into_value(object);
    // Server-side apply bookkeeping: large, and never read.
    if let Some(Value::Object(meta)) = value.get_mut("metadata") {
        meta.remove("managedFields");
    }
    (
        key,
        Arc::new(Entry {
            value,
            resource_version,
        }),
    )
}

/// Loads the objects (each under its own source name,
/// `kubernetes:<plural>/<namespace>/<name>`) and compiles them in per-object
/// mode.
fn compile(
    objects: Vec<(Kind, Arc<Entry>)>,
    options: &Options,
) -> (Outcome, HashMap<String, ObjectId>) {
    let mut diagnostics = Diagnostics::default();
    let mut wire = WireConfig::default();
    let mut ids = HashMap::new();
    for (kind, entry) in objects {
        let meta = entry.value.get("metadata");
        let text = |field: &str| {
            meta.and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let namespace = text("namespace").unwrap_or_default();
        let name = text("name").unwrap_or_default();
        let origin = format!("kubernetes:{}/{namespace}/{name}", kind.plural());
        let source = Source {
            file: Some(PathBuf::from(&origin)),
            document: None,
        };
        let mut object_diagnostics = Diagnostics::default();
        wire::load_object(
            entry.value.clone(),
            &source,
            &mut wire,
            &mut object_diagnostics,
        );
        for diagnostic in object_diagnostics.into_iter() {
            let quiet = kind.quiet_unknown_fields()
                && !diagnostic.is_error()
                && diagnostic.message == wire::UNKNOWN_FIELD;
            if !quiet {
                diagnostics.push(diagnostic);
            }
        }
        let api_version = entry
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        ids.insert(
            origin,
            ObjectId {
                kind,
                api_version,
                namespace,
                name,
                uid: text("uid"),
                resource_version: entry.resource_version.clone(),
            },
        );
    }
    let outcome = pipeline::build_per_object(&wire, options, diagnostics);
    crate::release_freed_memory();
    (outcome, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_dns_subdomains() {
        assert!(is_object_name("counter-cert"));
        assert!(is_object_name("a.b-c"));
        assert!(!is_object_name("kubernetes://counter-cert"));
        assert!(!is_object_name("ns/name"));
        assert!(!is_object_name(""));
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc...");
        assert_eq!(truncate("aé", 2), "a...");
    }
}
