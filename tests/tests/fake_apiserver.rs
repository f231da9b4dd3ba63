//! The fake Kubernetes API server, driven only through the real kube-rs client: lists,
//! watchers (default, streaming list, metadata-only), re-lists after 410, outages, discovery
//! with a chosen set of Istio versions, selectors, pagination and the event recorder.
//! No root, no network namespaces; every wait is bounded.

use std::borrow::Borrow;
use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use ingressd_tests::fake_apiserver::{ExpiredWatch, FakeApiServer, ISTIO_GROUP, OutageMode, Verb};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::discovery::{self, Discovery, Scope};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

/// Bound on waits for something the server or the client does promptly.
const WAIT: Duration = Duration::from_secs(5);
/// Bound on recoveries that go through kube-rs' backoff (800 ms doubling, with jitter).
const RECOVER: Duration = Duration::from_secs(15);

fn object(api_version: &str, kind: &str, ns: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": { "namespace": ns, "name": name, "labels": labels },
    })
}

fn service(ns: &str, name: &str, labels: Value) -> Value {
    let mut svc = object("v1", "Service", ns, name, labels);
    svc["spec"] = json!({ "ports": [{ "port": 80, "protocol": "TCP" }] });
    svc
}

fn pod(ns: &str, name: &str, labels: Value) -> Value {
    object("v1", "Pod", ns, name, labels)
}

/// `namespace/name` of each object, sorted.
fn names<K: ResourceExt>(objs: impl IntoIterator<Item = impl Borrow<K>>) -> Vec<String> {
    let mut names: Vec<String> = objs
        .into_iter()
        .map(|o| {
            format!(
                "{}/{}",
                o.borrow().namespace().unwrap_or_default(),
                o.borrow().name_any()
            )
        })
        .collect();
    names.sort();
    names
}

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    within(limit, what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn next_event<K: Debug>(
    stream: &mut (impl Stream<Item = watcher::Result<watcher::Event<K>>> + Unpin),
) -> watcher::Event<K> {
    match within(WAIT, "the next watcher event", stream.next()).await {
        Some(Ok(event)) => event,
        other => panic!("watcher: {other:?}"),
    }
}

/// The next watcher events, as `Init`, `InitApply(name)`, `Apply(name)`...
async fn next_events<K: Debug + ResourceExt>(
    stream: &mut (impl Stream<Item = watcher::Result<watcher::Event<K>>> + Unpin),
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(next_event(stream).await.to_string());
    }
    out
}

/// A reflector store fed by kube-rs' watcher with its default backoff, as a controller
/// would run it; the task driving it stops when this drops.
struct Reflected {
    store: Store<Service>,
    task: tokio::task::JoinHandle<()>,
}

impl Reflected {
    fn new(api: Api<Service>, config: watcher::Config) -> Reflected {
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while stream.next().await.is_some() {}
        });
        Reflected { store, task }
    }

    fn names(&self) -> Vec<String> {
        names::<Service>(self.store.state())
    }

    async fn converges(&self, limit: Duration, want: &[&str]) {
        let what = format!("the reflector to hold {want:?}");
        within(limit, &what, async {
            while self.names() != want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

impl Drop for Reflected {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn queries(server: &FakeApiServer, verb: Verb, resource: &str) -> Vec<String> {
    let log = server.request_log();
    log.into_iter()
        .filter(|r| r.verb == verb && r.resource.as_deref() == Some(resource))
        .map(|r| r.query)
        .collect()
}

#[tokio::test]
async fn list_serves_applied_objects_with_resource_versions() {
    let server = FakeApiServer::start().unwrap();
    server.apply(service("default", "b", json!({}))).unwrap();
    server.apply(service("apps", "a", json!({}))).unwrap();
    let client = server.client().unwrap();

    let list = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(names::<Service>(&list.items), ["apps/a", "default/b"]);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
    for svc in &list.items {
        assert!(svc.resource_version().is_some(), "{svc:?}");
        assert!(svc.uid().is_some(), "{svc:?}");
        assert!(svc.creation_timestamp().is_some(), "{svc:?}");
        assert_eq!(svc.metadata.generation, Some(1));
    }

    let default = Api::<Service>::namespaced(client, "default");
    assert_eq!(default.get("b").await.unwrap().name_any(), "b");
    let err = default.get("missing").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );

    // Re-applying an unchanged object changes nothing, as on a real server.
    let rv = server.resource_version();
    server.apply(service("default", "b", json!({}))).unwrap();
    assert_eq!(server.resource_version(), rv);
}

#[tokio::test]
async fn default_watcher_lists_then_follows_changes() {
    let server = FakeApiServer::start().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    let api = Api::<Service>::all(server.client().unwrap());
    let mut events = watcher(api, watcher::Config::default()).boxed();

    assert_eq!(
        next_events(&mut events, 3).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    server.apply(service("default", "b", json!({}))).unwrap();
    assert_eq!(next_events(&mut events, 1).await, ["Apply(b)"]);
    server
        .apply(service("default", "a", json!({ "v": "2" })))
        .unwrap();
    match next_event(&mut events).await {
        watcher::Event::Apply(svc) => {
            assert_eq!(svc.labels().get("v").map(String::as_str), Some("2"))
        }
        other => panic!("{other:?}"),
    }
    server
        .delete("v1", "Service", "default", "a")
        .unwrap()
        .unwrap();
    assert_eq!(next_events(&mut events, 1).await, ["Delete(a)"]);

    // What kube-rs' default watcher sends: a paginated list (500 per page), then a watch from
    // the list's resourceVersion with bookmarks and a 290 s server-side timeout.
    let lists = queries(&server, Verb::List, "services");
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(
        lists[0]
            .split('&')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>(),
        ["limit=500"]
    );
    let watches = queries(&server, Verb::Watch, "services");
    assert_eq!(watches.len(), 1, "{watches:?}");
    for param in [
        "watch=true",
        "timeoutSeconds=290",
        "allowWatchBookmarks=true",
        "resourceVersion=2",
    ] {
        assert!(
            watches[0].split('&').any(|p| p == param),
            "{param} in {watches:?}"
        );
    }
}

#[tokio::test]
async fn watcher_resumes_dropped_watches_and_relists_after_410() {
    let server = FakeApiServer::start().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    server.apply(service("default", "b", json!({}))).unwrap();
    let reflected = Reflected::new(
        Api::all(server.client().unwrap()),
        watcher::Config::default(),
    );
    reflected.converges(WAIT, &["default/a", "default/b"]).await;
    until(WAIT, "the watch to open", || server.open_watches() == 1).await;

    // A dropped stream is resumed from the last resourceVersion seen: a watch, no list.
    let (lists, watches) = (
        server.count_lists("services"),
        server.count_watches("services"),
    );
    server.drop_watches();
    until(RECOVER, "a new watch", || {
        server.count_watches("services") > watches
    })
    .await;
    server.apply(service("default", "c", json!({}))).unwrap();
    reflected
        .converges(WAIT, &["default/a", "default/b", "default/c"])
        .await;
    assert_eq!(server.count_lists("services"), lists);

    // Another kind moves the global resourceVersion past the watcher's; compaction then puts
    // the watcher's resume point out of reach: 410 Gone, and kube-rs re-lists.
    server.apply(pod("default", "p", json!({}))).unwrap();
    server.compact();
    server.drop_watches();
    until(RECOVER, "a re-list after 410", || {
        server.count_lists("services") > lists
    })
    .await;
    server
        .delete("v1", "Service", "default", "a")
        .unwrap()
        .unwrap();
    reflected.converges(WAIT, &["default/b", "default/c"]).await;
}

async fn watcher_recovers_after_outage(mode: OutageMode, compact: bool) {
    let server = FakeApiServer::start().expect("starting the fake apiserver");
    server.set_outage_mode(mode);
    let apply = |obj| server.apply(obj).expect("applying");
    apply(service("default", "a", json!({})));
    let client = server.client().expect("a client");
    let reflected = Reflected::new(Api::all(client), watcher::Config::default());
    reflected.converges(WAIT, &["default/a"]).await;
    let lists = server.count_lists("services");

    server.set_outage(true);
    apply(service("default", "b", json!({})));
    let deleted = server.delete("v1", "Service", "default", "a");
    assert!(matches!(deleted, Ok(Some(_))), "{deleted:?}");
    if compact {
        server.compact();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        reflected.names(),
        ["default/a"],
        "nothing gets through an outage"
    );
    server.set_outage(false);

    reflected.converges(RECOVER, &["default/b"]).await;
    if compact {
        assert!(
            server.count_lists("services") > lists,
            "a re-list after 410"
        );
    }
}

#[tokio::test]
async fn watcher_recovers_after_a_503_outage() {
    watcher_recovers_after_outage(OutageMode::Unavailable, false).await;
}

#[tokio::test]
async fn watcher_recovers_after_refused_connections_and_relists_past_compaction() {
    watcher_recovers_after_outage(OutageMode::Refuse, true).await;
}

#[tokio::test]
async fn streaming_list_watcher_ends_initial_events_with_a_bookmark() {
    let server = FakeApiServer::start().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    let api = Api::<Service>::all(server.client().unwrap());
    let mut events = watcher(api, watcher::Config::default().streaming_lists()).boxed();

    assert_eq!(
        next_events(&mut events, 3).await,
        ["Init", "InitApply(a)", "InitDone"]
    );
    server.apply(service("default", "b", json!({}))).unwrap();
    assert_eq!(next_events(&mut events, 1).await, ["Apply(b)"]);
    assert_eq!(server.count_lists("services"), 0);
    let watches = queries(&server, Verb::Watch, "services");
    assert!(watches[0].contains("sendInitialEvents=true"), "{watches:?}");
}

#[tokio::test]
async fn metadata_watchers_see_pod_labels() {
    let server = FakeApiServer::start().unwrap();
    server
        .apply(pod("default", "p", json!({ "app": "web" })))
        .unwrap();
    let client = server.client().unwrap();

    let list = Api::<Pod>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        list.items[0].labels().get("app").map(String::as_str),
        Some("web")
    );

    // kube 5's form: an `Api<PartialObjectMeta<K>>` asks for metadata only.
    let api = Api::<PartialObjectMeta<Pod>>::all(client.clone());
    let mut events = watcher(api, watcher::Config::default()).boxed();
    assert_eq!(next_events(&mut events, 1).await, ["Init"]);
    match next_event(&mut events).await {
        watcher::Event::InitApply(p) => {
            assert_eq!(p.labels().get("app").map(String::as_str), Some("web"));
            assert_eq!(
                p.types.as_ref().map(|t| t.kind.as_str()),
                Some("PartialObjectMetadata")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next_events(&mut events, 1).await, ["InitDone"]);
    server
        .apply(pod("default", "p", json!({ "app": "api" })))
        .unwrap();
    match next_event(&mut events).await {
        watcher::Event::Apply(p) => {
            assert_eq!(p.labels().get("app").map(String::as_str), Some("api"))
        }
        other => panic!("{other:?}"),
    }

    // The older entry point, deprecated in kube 5, sends the same requests.
    #[expect(
        deprecated,
        reason = "kube 5 still ships metadata_watcher; daemons may use it"
    )]
    let legacy =
        kube::runtime::metadata_watcher(Api::<Pod>::all(client), watcher::Config::default());
    let mut legacy = legacy.boxed();
    assert_eq!(
        next_events(&mut legacy, 3).await,
        ["Init", "InitApply(p)", "InitDone"]
    );

    let log = server.request_log();
    let pods: Vec<_> = log
        .iter()
        .filter(|r| r.resource.as_deref() == Some("pods"))
        .collect();
    assert!(
        pods.len() >= 4 && pods.iter().all(|r| r.metadata_only),
        "{pods:#?}"
    );
}

fn virtual_service_api(client: &Client, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(ISTIO_GROUP, version, "VirtualService");
    Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "virtualservices"),
    )
}

#[tokio::test]
async fn istio_group_serves_only_the_chosen_versions() {
    let server = FakeApiServer::start().unwrap();
    server.served_istio_versions(&["v1alpha3"]);
    let mut vs = object(
        &format!("{ISTIO_GROUP}/v1"),
        "VirtualService",
        "default",
        "vs",
        json!({}),
    );
    vs["spec"] = json!({ "hosts": ["example.com"] });
    server.apply(vs).unwrap();
    let client = server.client().unwrap();

    let group = discovery::group(&client, ISTIO_GROUP).await.unwrap();
    assert_eq!(group.versions().collect::<Vec<_>>(), ["v1alpha3"]);
    let (ar, caps) = group.recommended_kind("VirtualService").unwrap();
    assert_eq!(
        (ar.api_version.as_str(), ar.plural.as_str()),
        ("networking.istio.io/v1alpha3", "virtualservices")
    );
    assert_eq!(caps.scope, Scope::Namespaced);

    let all = Discovery::new(client.clone()).run().await.unwrap();
    assert_eq!(
        all.get(ISTIO_GROUP).unwrap().versions().collect::<Vec<_>>(),
        ["v1alpha3"]
    );
    for group in ["", "discovery.k8s.io", "events.k8s.io"] {
        assert!(all.has_group(group), "{group:?}");
    }
    let core = all.get("").unwrap();
    assert!(core.recommended_kind("Service").is_some() && core.recommended_kind("Node").is_some());

    let err = virtual_service_api(&client, "v1")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
    let list = virtual_service_api(&client, "v1alpha3")
        .list(&ListParams::default())
        .await
        .unwrap();
    let item = &list.items[0];
    assert_eq!(
        item.types.as_ref().unwrap().api_version,
        "networking.istio.io/v1alpha3"
    );
    assert_eq!(item.data["spec"]["hosts"][0], "example.com");
    let mut events = watcher(
        virtual_service_api(&client, "v1alpha3"),
        watcher::Config::default(),
    )
    .boxed();
    assert_eq!(
        next_events(&mut events, 3).await,
        ["Init", "InitApply(vs)", "InitDone"]
    );

    // The same stored object, once the cluster moves to v1beta1.
    server.served_istio_versions(&["v1beta1"]);
    let group = discovery::group(&client, ISTIO_GROUP).await.unwrap();
    assert_eq!(group.versions().collect::<Vec<_>>(), ["v1beta1"]);
    let vs = virtual_service_api(&client, "v1beta1")
        .get("vs")
        .await
        .unwrap();
    assert_eq!(vs.types.unwrap().api_version, "networking.istio.io/v1beta1");
    assert!(
        virtual_service_api(&client, "v1alpha3")
            .get("vs")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let server = FakeApiServer::start().unwrap();
    server
        .apply(service("default", "a", json!({ "app": "web" })))
        .unwrap();
    server
        .apply(service("default", "b", json!({ "app": "db" })))
        .unwrap();
    server
        .apply(service(
            "default",
            "c",
            json!({ "app": "web", "tier": "front" }),
        ))
        .unwrap();
    server
        .apply(service("other", "d", json!({ "app": "web" })))
        .unwrap();
    let client = server.client().unwrap();

    let all = Api::<Service>::all(client.clone());
    let default = Api::<Service>::namespaced(client.clone(), "default");
    let cases: [(&Api<Service>, ListParams, &[&str]); 7] = [
        (
            &all,
            ListParams::default().labels("app=web"),
            &["default/a", "default/c", "other/d"],
        ),
        (
            &default,
            ListParams::default().labels("app=web"),
            &["default/a", "default/c"],
        ),
        (
            &all,
            ListParams::default().labels("app!=web"),
            &["default/b"],
        ),
        (&all, ListParams::default().labels("tier"), &["default/c"]),
        (
            &all,
            ListParams::default().labels("app=web,!tier"),
            &["default/a", "other/d"],
        ),
        (
            &all,
            ListParams::default().fields("metadata.name=a"),
            &["default/a"],
        ),
        (
            &all,
            ListParams::default().fields("metadata.namespace!=default"),
            &["other/d"],
        ),
    ];
    for (api, lp, want) in cases {
        let got = names::<Service>(&api.list(&lp).await.unwrap().items);
        assert_eq!(got, want, "{lp:?}");
    }

    let mut events = watcher(default, watcher::Config::default().labels("app=web")).boxed();
    assert_eq!(
        next_events(&mut events, 4).await,
        ["Init", "InitApply(a)", "InitApply(c)", "InitDone"]
    );
    // Into the selector: ADDED; out of it: DELETED; other namespaces: nothing.
    server
        .apply(service("default", "b", json!({ "app": "web" })))
        .unwrap();
    assert_eq!(next_events(&mut events, 1).await, ["Apply(b)"]);
    server
        .apply(service("default", "a", json!({ "app": "db" })))
        .unwrap();
    assert_eq!(next_events(&mut events, 1).await, ["Delete(a)"]);
    server
        .apply(service("other", "d", json!({ "app": "web", "v": "2" })))
        .unwrap();
    server
        .apply(service("default", "c", json!({ "app": "web", "v": "2" })))
        .unwrap();
    assert_eq!(next_events(&mut events, 1).await, ["Apply(c)"]);
}

#[tokio::test]
async fn lists_paginate_with_continue_tokens() {
    let server = FakeApiServer::start().unwrap();
    for i in 0..5 {
        server
            .apply(service("default", &format!("s{i}"), json!({})))
            .unwrap();
    }
    let client = server.client().unwrap();
    let api = Api::<Service>::namespaced(client.clone(), "default");

    let (mut pages, mut rvs, mut token) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let mut lp = ListParams::default().limit(2);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        pages.push(names::<Service>(&page.items));
        rvs.push(page.metadata.resource_version.clone());
        // Every page reports the first page's resourceVersion, whatever happens meanwhile.
        server
            .apply(pod("default", &format!("p{}", pages.len()), json!({})))
            .unwrap();
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() || pages.len() > 5 {
            break;
        }
    }
    assert_eq!(
        pages,
        [
            vec!["default/s0", "default/s1"],
            vec!["default/s2", "default/s3"],
            vec!["default/s4"]
        ]
    );
    assert!(rvs.iter().all(|rv| rv == &rvs[0]), "{rvs:?}");

    // The watcher paginates the same way with a smaller page size.
    let lists = server.count_lists("services");
    let reflected = Reflected::new(api, watcher::Config::default().page_size(2));
    let want = [
        "default/s0",
        "default/s1",
        "default/s2",
        "default/s3",
        "default/s4",
    ];
    reflected.converges(WAIT, &want).await;
    assert_eq!(server.count_lists("services") - lists, 3);
}

#[tokio::test]
async fn recorder_events_are_stored_and_repeats_patched() {
    let server = FakeApiServer::start().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    let client = server.client().unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), "default")
        .get("a")
        .await
        .unwrap();

    let reporter = Reporter {
        controller: "ingressd".into(),
        instance: Some("node-1".into()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some("spec.ports[0].port: out of range".into()),
        action: "Compile".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &svc.object_ref(&()))
        .await
        .unwrap();
    recorder
        .publish(&event, &svc.object_ref(&()))
        .await
        .unwrap();

    let events = server.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["apiVersion"], "events.k8s.io/v1");
    assert_eq!(e["regarding"]["kind"], "Service");
    assert_eq!(e["regarding"]["name"], "a");
    assert_eq!(e["reason"], "InvalidObject");
    assert_eq!(e["note"], "spec.ports[0].port: out of range");
    assert_eq!(e["type"], "Warning");
    assert_eq!(e["reportingController"], "ingressd");
    assert_eq!(e["reportingInstance"], "node-1");
    assert_eq!(
        e["series"]["count"], 2,
        "the repeat is a merge patch with a series count"
    );
    assert_eq!(server.count(Verb::Create, "events"), 1);
    assert_eq!(server.count(Verb::Patch, "events"), 1);

    let typed = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client, "default");
    let listed = typed.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        listed.items[0].note.as_deref(),
        Some("spec.ports[0].port: out of range")
    );
}

#[tokio::test]
async fn kubeconfig_file_points_a_client_at_the_server() {
    let server = FakeApiServer::start().unwrap();
    server
        .apply(object("v1", "Node", "", "node-1", json!({})))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = server
        .write_kubeconfig(&dir.path().join("kubeconfig"))
        .unwrap();

    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    assert_eq!(
        config.cluster_url.to_string().trim_end_matches('/'),
        server.url()
    );
    let client = Client::try_from(config).unwrap();
    assert_eq!(client.apiserver_version().await.unwrap().major, "1");
    let node = Api::<Node>::all(client).get("node-1").await.unwrap();
    assert_eq!(node.namespace(), None);
}

#[tokio::test]
async fn raw_watches_carry_bookmarks_410_and_end_at_their_timeout() {
    let server = FakeApiServer::start().unwrap();
    let api = Api::<Service>::all(server.client().unwrap());
    let start = server.resource_version().to_string();

    let mut stream = api
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    server.apply(service("default", "a", json!({}))).unwrap();
    match within(WAIT, "ADDED", stream.next()).await {
        Some(Ok(WatchEvent::Added(svc))) => assert_eq!(svc.name_any(), "a"),
        other => panic!("{other:?}"),
    }
    server.apply(pod("default", "p", json!({}))).unwrap();
    server.bookmark();
    match within(WAIT, "BOOKMARK", stream.next()).await {
        // The bookmark moves the client past changes to other kinds.
        Some(Ok(WatchEvent::Bookmark(bm))) => {
            assert_eq!(
                bm.metadata.resource_version,
                server.resource_version().to_string()
            );
            assert_eq!(bm.types.kind, "Service");
        }
        other => panic!("{other:?}"),
    }

    server.compact();
    let mut expired = api
        .watch(&WatchParams::default(), &start)
        .await
        .unwrap()
        .boxed();
    match within(WAIT, "ERROR", expired.next()).await {
        Some(Ok(WatchEvent::Error(status))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{status:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        within(WAIT, "the end of an expired watch", expired.next())
            .await
            .is_none()
    );
    server.set_expired_watch(ExpiredWatch::HttpGone);
    let err = api
        .watch(&WatchParams::default(), &start)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410),
        "{err:?}"
    );

    let now = server.resource_version().to_string();
    let mut short = api
        .watch(&WatchParams::default().timeout(1), &now)
        .await
        .unwrap()
        .boxed();
    assert!(
        within(WAIT, "a 1 s watch to end", short.next())
            .await
            .is_none()
    );
}

/// kube-rs 5 handles a 410 that arrives as an HTTP status when a watch starts (instead of as
/// an ERROR event in the stream) by retrying the same watch, never re-listing: the daemon must
/// not rely on it re-listing there. This pins that behaviour so a kube-rs change shows up.
#[tokio::test]
async fn http_410_on_watch_start_is_retried_by_kube_rs_without_relisting() {
    let server = FakeApiServer::start().unwrap();
    server.set_expired_watch(ExpiredWatch::HttpGone);
    server.apply(service("default", "a", json!({}))).unwrap();
    let reflected = Reflected::new(
        Api::all(server.client().unwrap()),
        watcher::Config::default(),
    );
    reflected.converges(WAIT, &["default/a"]).await;
    until(WAIT, "the watch to open", || server.open_watches() == 1).await;

    let (lists, watches) = (
        server.count_lists("services"),
        server.count_watches("services"),
    );
    server.apply(pod("default", "p", json!({}))).unwrap();
    server.compact();
    server.drop_watches();
    until(RECOVER, "two refused watches", || {
        server.count_watches("services") >= watches + 2
    })
    .await;
    assert_eq!(server.count_lists("services"), lists);
    assert_eq!(server.open_watches(), 0);
}

#[tokio::test]
async fn closed_watches_are_cleaned_up_and_many_watches_run_at_once() {
    let server = FakeApiServer::start().unwrap();
    server.apply(service("default", "a", json!({}))).unwrap();
    let mut reflectors = Vec::new();
    for _ in 0..4 {
        let client = server.client().unwrap();
        for ns in ["default", "other"] {
            reflectors.push(Reflected::new(
                Api::namespaced(client.clone(), ns),
                watcher::Config::default(),
            ));
        }
        reflectors.push(Reflected::new(Api::all(client), watcher::Config::default()));
    }
    until(WAIT, "12 watches", || server.open_watches() == 12).await;
    server.apply(service("other", "b", json!({}))).unwrap();
    for (i, r) in reflectors.iter().enumerate() {
        let want: &[&str] = match i % 3 {
            0 => &["default/a"],
            1 => &["other/b"],
            _ => &["default/a", "other/b"],
        };
        r.converges(WAIT, want).await;
    }

    drop(reflectors);
    until(WAIT, "the server to notice the closed watches", || {
        server.open_watches() == 0
    })
    .await;
}
