//! `ingressd run --source kubernetes` driven through the real kube-rs client
//! against the fake API server: readiness gated on the initial lists, API
//! changes reaching routes and kernel maps, re-lists after 410 (in the stream
//! and as an HTTP answer), an API outage with the last snapshot serving,
//! invalid objects skipped with an Event, Istio version fallback, Secrets
//! read by name only, and terminating endpoints draining in the kernel.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ingressd_tests::config::virtual_service;
use ingressd_tests::fake_apiserver::{ExpiredWatch, Verb};
use ingressd_tests::kube::{
    ECHO_A, ECHO_B, KubeGateway, endpoint_slice, node_object, seed_objects, yaml_objects,
};
use ingressd_tests::topology::NODE_PODS_ADDR;
use ingressd_tests::{COUNTER_HOST, KernelMode, Ns, kernel_mode, node, require_root};

const ALL_ISTIO: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
/// Readiness after the API becomes reachable, and a change reaching routes.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn vs(name: &str, host: &str) -> serde_json::Value {
    yaml_objects(&virtual_service(name, host, "counter", 80))
        .expect("virtual service YAML")
        .remove(0)
}

#[test]
fn readiness_waits_for_the_initial_lists_then_routes_follow_the_api() {
    if !require_root("readiness_waits_for_the_initial_lists_then_routes_follow_the_api") {
        return;
    }
    let gw = KubeGateway::start(kernel_mode(), &ALL_ISTIO, &[], true, &[]).unwrap();

    // The API refuses connections: the status port answers, not ready.
    gw.wait_until("status port up", SYNC_TIMEOUT, || gw.ready_status() != 0)
        .unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(gw.ready_status(), 503, "ready before the initial lists");
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = gw
        .topo
        .http_get(Ns::Node, ingressd_tests::STATUS_ADDR, "/healthz/live")
        .unwrap();
    assert_eq!(live.status, 200, "liveness while syncing");

    gw.apply_all(&seed_objects(&[ECHO_A]).unwrap()).unwrap();
    gw.api.set_outage(false);
    let took = gw
        .wait_until("ready after the API came back", SYNC_TIMEOUT, || {
            gw.ready_status() == 200
        })
        .unwrap();
    eprintln!("ready {took:?} after the API came back");
    let (status, backend) = gw.request(8080, COUNTER_HOST);
    assert_eq!(status, 200);
    assert!(backend.is_some(), "answered by a counter");

    // A new VirtualService, then its deletion, reach the routing table.
    let fresh = "fresh.lab.example.com";
    assert_eq!(gw.request(8080, fresh).0, 404);
    gw.api.apply(vs("fresh", fresh)).unwrap();
    let took = gw
        .wait_until("new VirtualService routed", CHANGE_TIMEOUT, || {
            gw.request(8080, fresh).0 == 200
        })
        .unwrap();
    eprintln!("new VirtualService routed after {took:?}");
    gw.api
        .delete(
            "networking.istio.io/v1",
            "VirtualService",
            "default",
            "fresh",
        )
        .unwrap();
    gw.wait_until("deleted VirtualService gone", CHANGE_TIMEOUT, || {
        gw.request(8080, fresh).0 == 404
    })
    .unwrap();

    // Endpoint changes: only counter-b remains.
    gw.api
        .apply(endpoint_slice(
            "counter",
            "http",
            8080,
            &[(ingressd_tests::fixture::COUNTER_B, true, false)],
        ))
        .unwrap();
    gw.wait_until("endpoints follow the EndpointSlice", CHANGE_TIMEOUT, || {
        (0..4).all(|_| gw.request(8080, COUNTER_HOST).1.as_deref() == Some("counter-b"))
    })
    .unwrap();

    // Dropped watch streams resume (from their resourceVersion) and a change
    // made meanwhile arrives.
    gw.api.drop_watches();
    gw.api
        .apply(vs("after-drop", "after-drop.lab.example.com"))
        .unwrap();
    gw.wait_until("change after dropped watches", CHANGE_TIMEOUT, || {
        gw.request(8080, "after-drop.lab.example.com").0 == 200
    })
    .unwrap();

    // Pods are read as metadata only.
    let pods = gw
        .api
        .request_log()
        .into_iter()
        .filter(|r| r.resource.as_deref() == Some("pods"))
        .collect::<Vec<_>>();
    assert!(!pods.is_empty(), "pods are watched");
    assert!(
        pods.iter().all(|r| r.metadata_only),
        "pods read in full: {pods:?}"
    );
}

#[test]
fn relists_after_410_and_keeps_serving_through_an_api_outage() {
    if !require_root("relists_after_410_and_keeps_serving_through_an_api_outage") {
        return;
    }
    let seed = seed_objects(&[ECHO_A]).unwrap();
    let gw = KubeGateway::start(kernel_mode(), &ALL_ISTIO, &seed, false, &[]).unwrap();
    gw.wait_until("ready", SYNC_TIMEOUT, || gw.ready_status() == 200)
        .unwrap();

    // Outage: the last snapshot keeps serving, readiness stays.
    gw.api.set_outage(true);
    let until = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < until {
        assert_eq!(gw.request(8080, COUNTER_HOST).0, 200, "during the outage");
        assert_eq!(gw.ready_status(), 200, "ready during the outage");
        served += 1;
    }
    assert!(served > 5);

    // Changes made meanwhile, with the history compacted: the watch resumes
    // from a resourceVersion that is gone (410 in the stream), so the
    // daemon lists again.
    let lists_before = gw.api.count_lists("virtualservices");
    gw.api
        .apply(vs("during", "during.lab.example.com"))
        .unwrap();
    gw.api.compact();
    gw.api.set_outage(false);
    let took = gw
        .wait_until(
            "change made during the outage",
            Duration::from_secs(45),
            || gw.request(8080, "during.lab.example.com").0 == 200,
        )
        .unwrap();
    eprintln!("change made during the outage routed {took:?} after the API came back");
    assert!(
        gw.api.count_lists("virtualservices") > lists_before,
        "no re-list after 410: {:#?}",
        gw.api
            .request_log()
            .iter()
            .filter(|r| r.resource.as_deref() == Some("virtualservices"))
            .collect::<Vec<_>>()
    );
    assert_eq!(gw.request(8080, COUNTER_HOST).0, 200);

    // 410 as the HTTP answer to a watch (kube-rs would retry it forever):
    // the daemon starts a new watcher, which lists.
    // (The watches are cut first, so the change cannot arrive on a live one.)
    gw.api.set_expired_watch(ExpiredWatch::HttpGone);
    gw.api.set_outage(true);
    let lists_before = gw.api.count_lists("virtualservices");
    gw.api.apply(vs("gone", "gone.lab.example.com")).unwrap();
    gw.api.compact();
    gw.api.set_outage(false);
    gw.wait_until("change after an HTTP 410", Duration::from_secs(45), || {
        gw.request(8080, "gone.lab.example.com").0 == 200
    })
    .unwrap();
    assert!(gw.api.count_lists("virtualservices") > lists_before);
    assert!(
        gw.daemon.stderr().contains("listing again"),
        "{}",
        gw.daemon.log_tail(30)
    );

    // A re-list that finds the same objects recompiles nothing.
    let reloads = || gw.daemon.stderr().matches("config reloaded").count();
    std::thread::sleep(Duration::from_millis(1500));
    let (reloads_before, lists_before) = (reloads(), gw.api.count_lists("virtualservices"));
    gw.api.set_outage(true);
    // A kind the daemon does not read moves the resourceVersion past the
    // compaction point.
    gw.api
        .apply(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "unrelated", "namespace": "default"},
            "data": {"k": "v"},
        }))
        .unwrap();
    gw.api.compact();
    gw.api.set_outage(false);
    gw.wait_until("a re-list without changes", Duration::from_secs(45), || {
        gw.api.count_lists("virtualservices") > lists_before
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reloads(), reloads_before, "a resync recompiled");

    // What the watches went through, in the metrics and /server_info.
    let admin = |path: &str| {
        gw.topo
            .http_get(Ns::Node, ingressd_tests::ADMIN_ADDR, path)
            .unwrap()
            .body
    };
    let metrics = admin("/stats/prometheus");
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(value("ingressd_kubernetes_lists_total{watch=\"virtualservices\"}") >= 3.0);
    assert!(value("ingressd_kubernetes_watch_errors_total{watch=\"virtualservices\"}") >= 1.0);
    assert_eq!(value("ingressd_kubernetes_synced{watch=\"gateways\"}"), 1.0);
    assert!(value("ingressd_kubernetes_objects{watch=\"virtualservices\"}") >= 3.0);
    // The metrics port serves the same series, and nothing else.
    let metrics_port: std::net::SocketAddr = "127.0.0.1:15090".parse().unwrap();
    let scraped = gw
        .topo
        .http_get(Ns::Node, metrics_port, "/stats/prometheus")
        .unwrap();
    assert_eq!(scraped.status, 200);
    assert!(scraped.body.contains("ingressd_kubernetes_lists_total"));
    assert!(scraped.body.contains("istio_requests_total"));
    for path in ["/config_dump", "/quitquitquit", "/certs"] {
        let r = gw.topo.http_get(Ns::Node, metrics_port, path).unwrap();
        assert_eq!(r.status, 404, "{path} on the metrics port");
    }
    let info: serde_json::Value = serde_json::from_str(&admin("/server_info")).unwrap();
    let watches = &info["config_source"]["watches"];
    assert_eq!(info["config_source"]["kind"], "kubernetes", "{info}");
    assert_eq!(watches["endpointslices"]["synced"], true, "{info}");
    assert!(watches["virtualservices"]["failing"].is_null(), "{info}");
}

#[test]
fn invalid_objects_are_skipped_with_an_event_and_older_istio_versions_are_read() {
    if !require_root("invalid_objects_are_skipped_with_an_event_and_older_istio_versions_are_read")
    {
        return;
    }
    let mut objects = seed_objects(&[ECHO_A]).unwrap();
    objects.push(vs("fresh", "fresh.lab.example.com"));
    let mut broken = vs("broken", "broken.lab.example.com");
    broken["spec"]["http"][0]["match"] = serde_json::json!([{"uri": {"regex": "(unclosed"}}]);
    objects.push(broken);
    // A Gateway naming a credential: its Secret (and only it) is read.
    objects.extend(
        yaml_objects(
            "\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: tls-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ['*/secure.lab.example.com']
    tls: {mode: SIMPLE, credentialName: secure-cert}
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated, namespace: istio-system}
type: Opaque
stringData: {password: hunter2}
",
        )
        .unwrap(),
    );
    let gw = KubeGateway::start(kernel_mode(), &["v1beta1"], &objects, false, &[]).unwrap();
    // RBAC narrowed to named Secrets: the `-cacert` companion is not among
    // them. It counts as absent; readiness is not held.
    gw.api
        .forbid("secrets", "metadata.name%3Dsecure-cert-cacert");
    gw.wait_until("ready", SYNC_TIMEOUT, || gw.ready_status() == 200)
        .unwrap();

    assert_eq!(gw.request(8080, COUNTER_HOST).0, 200);
    assert_eq!(gw.request(8080, "fresh.lab.example.com").0, 200);
    assert_eq!(
        gw.request(8080, "broken.lab.example.com").0,
        404,
        "the invalid VirtualService was applied"
    );

    gw.wait_until("an Event about the invalid object", CHANGE_TIMEOUT, || {
        gw.api
            .events()
            .iter()
            .any(|e| e["regarding"]["name"] == "broken")
    })
    .unwrap();
    let events = gw.api.events();
    let event = events
        .iter()
        .find(|e| e["regarding"]["name"] == "broken")
        .unwrap();
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reason"], "InvalidConfig", "{event}");
    assert_eq!(event["regarding"]["kind"], "VirtualService", "{event}");
    assert_eq!(event["regarding"]["namespace"], "default", "{event}");
    assert_eq!(
        event["regarding"]["fieldPath"], "spec.http[0].match[0].uri.regex",
        "{event}"
    );
    assert!(
        event["note"].as_str().unwrap_or_default().contains("regex"),
        "{event}"
    );
    assert!(
        events.iter().all(|e| e["regarding"]["name"] == "broken"),
        "Events about valid objects: {events:?}"
    );
    let log = gw.daemon.stderr();
    assert!(
        log.contains("kubernetes:virtualservices/default/broken") && log.contains("object skipped"),
        "{}",
        gw.daemon.log_tail(30)
    );

    // `check` and `explain` against the cluster see what the daemon sees.
    let check = gw.cli("check", &[]).unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(
            |l| l.starts_with("error: kubernetes:virtualservices/default/broken")
                && l.contains("spec.http[0].match[0].uri.regex")
        ),
        "{stdout}"
    );
    let explain = gw
        .cli(
            "explain",
            &[
                "--port",
                "80",
                "--host",
                "fresh.lab.example.com",
                "--path",
                "/",
            ],
        )
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&explain.stdout).unwrap_or_else(|e| {
        panic!(
            "explain: {e}\n{}\n{}",
            String::from_utf8_lossy(&explain.stdout),
            String::from_utf8_lossy(&explain.stderr)
        )
    });
    assert_eq!(
        answer["cluster"], "outbound|80||counter.default.svc.cluster.local",
        "{answer}"
    );
    assert!(
        String::from_utf8_lossy(&explain.stderr).contains("(object left out)"),
        "{}",
        String::from_utf8_lossy(&explain.stderr)
    );

    // A fix applies.
    gw.api
        .apply(vs("broken", "broken.lab.example.com"))
        .unwrap();
    gw.wait_until("the fixed object applies", CHANGE_TIMEOUT, || {
        gw.request(8080, "broken.lab.example.com").0 == 200
    })
    .unwrap();

    let log = gw.api.request_log();
    // Istio objects through the only served version.
    let istio: Vec<_> = log
        .iter()
        .filter(|r| r.path.contains("/apis/networking.istio.io/") && r.verb != Verb::Discovery)
        .collect();
    assert!(!istio.is_empty());
    assert!(
        istio
            .iter()
            .all(|r| r.path.starts_with("/apis/networking.istio.io/v1beta1/")),
        "{istio:?}"
    );
    // Secrets: only by name, only in the gateway namespace.
    let secrets: Vec<_> = log
        .iter()
        .filter(|r| r.resource.as_deref() == Some("secrets"))
        .collect();
    assert!(
        secrets
            .iter()
            .any(|r| r.query.contains("metadata.name%3Dsecure-cert")),
        "{secrets:?}"
    );
    for r in &secrets {
        assert!(
            r.path
                .starts_with("/api/v1/namespaces/istio-system/secrets"),
            "{r:?}"
        );
        assert!(
            r.query
                .contains("fieldSelector=metadata.name%3Dsecure-cert"),
            "a Secret read without its name: {r:?}"
        );
    }
    assert!(
        gw.daemon
            .stderr()
            .contains("not allowed to read this Secret"),
        "{}",
        gw.daemon.log_tail(30)
    );
}

/// Echoes `payload` through `stream`.
fn echo(stream: &mut TcpStream, payload: &[u8]) {
    stream
        .write_all(payload)
        .expect("writing to the echo connection");
    let mut got = vec![0u8; payload.len()];
    stream.read_exact(&mut got).expect("reading the echo");
    assert_eq!(got, payload);
}

/// Connections each echo backend has seen closed.
fn closed(gw: &KubeGateway, backend: usize) -> usize {
    gw.backends[backend]
        .stdout()
        .matches("closed after")
        .count()
}

#[test]
fn terminating_endpoints_get_no_new_connections_and_established_ones_drain() {
    if !require_root("terminating_endpoints_get_no_new_connections_and_established_ones_drain") {
        return;
    }
    let mut objects = seed_objects(&[ECHO_A]).unwrap();
    objects.push(node_object("node-1", NODE_PODS_ADDR));
    let gw = KubeGateway::start(
        KernelMode::On,
        &ALL_ISTIO,
        &objects,
        false,
        &["--host-ip", "198.18.0.1"],
    )
    .unwrap();
    gw.wait_until("ready", SYNC_TIMEOUT, || gw.ready_status() == 200)
        .unwrap();
    // The interfaces came from --host-ip and the Node's InternalIP.
    let log = gw.daemon.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("node interfaces"))
        .unwrap_or_else(|| panic!("no node interfaces line\n{log}"));
    assert!(line.contains("cl0") && line.contains("pd0"), "{line}");

    let (echo_a, echo_b) = (2, 3);
    let connect = || {
        gw.topo
            .connect(Ns::Client, node(30306), Duration::from_secs(5))
            .unwrap()
    };
    // An established flow to echo-a.
    let mut long = connect();
    echo(&mut long, b"before");

    // echo-a terminates, echo-b is added.
    gw.api
        .apply(endpoint_slice(
            "mysql",
            "tcp-mysql",
            3306,
            &[(ECHO_A, false, true), (ECHO_B, true, false)],
        ))
        .unwrap();
    gw.wait_until("new connections reach echo-b", CHANGE_TIMEOUT, || {
        let before = closed(&gw, echo_b);
        let mut c = connect();
        echo(&mut c, b"probe");
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if closed(&gw, echo_b) > before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })
    .unwrap();
    let (a_before, b_before) = (closed(&gw, echo_a), closed(&gw, echo_b));
    for i in 0..8 {
        let mut c = connect();
        echo(&mut c, format!("new {i}").as_bytes());
    }
    gw.wait_until("echo-b saw the new connections", CHANGE_TIMEOUT, || {
        closed(&gw, echo_b) >= b_before + 8
    })
    .unwrap();
    assert_eq!(
        closed(&gw, echo_a),
        a_before,
        "a terminating endpoint got new connections"
    );

    // The established flow still works, also once echo-a leaves the slice.
    echo(&mut long, b"while terminating");
    gw.api
        .apply(endpoint_slice(
            "mysql",
            "tcp-mysql",
            3306,
            &[(ECHO_B, true, false)],
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    echo(&mut long, b"after removal");
    drop(long);
    gw.wait_until("echo-a saw the long connection end", CHANGE_TIMEOUT, || {
        closed(&gw, echo_a) > a_before
    })
    .unwrap();
    let dump = gw
        .topo
        .http_get(Ns::Node, ingressd_tests::ADMIN_ADDR, "/config_dump")
        .unwrap();
    assert!(dump.body.contains(&ECHO_B.to_string()));
}
