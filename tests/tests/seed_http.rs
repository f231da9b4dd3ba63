//! The seed article's HTTP path through `ingressd run --kernel off`, end to end:
//! client ns -> node ns (ingressd) -> pods ns (counter backends).

use std::collections::HashSet;
use std::time::Duration;

use ingressd_tests::config::{COUNTER_HOST, service_with_endpoints, virtual_service};
use ingressd_tests::fixture::COUNTER_PORT;
use ingressd_tests::{ADMIN_ADDR, Ns, SeedGateway, node_url, require_root};

#[test]
fn seed_request_reaches_counter_via_target_port_and_node_port() {
    if !require_root("seed_request_reaches_counter_via_target_port_and_node_port") {
        return;
    }
    let gw = SeedGateway::start(&[]).unwrap();
    for port in [8080, 30080] {
        let mut instances = HashSet::new();
        // Istio's default balancer, LEAST_REQUEST, picks at random between idle
        // endpoints: 20 sequential requests all to one would be a 2^-19 chance.
        for _ in 0..20 {
            let r = gw
                .topo
                .get(&node_url(port, "/"), COUNTER_HOST)
                .unwrap()
                .ok()
                .unwrap();
            assert_eq!(r.status, 200, "port {port}: {r:?}");
            let json = r.json().unwrap();
            assert_eq!(json["app"], "counter", "{json}");
            assert_eq!(json["path"], "/");
            // The Host header is kept; forwarding headers are added.
            assert_eq!(json["host"], COUNTER_HOST, "{json}");
            let headers = &json["headers"];
            let xff = headers["x-forwarded-for"].as_str().unwrap_or_default();
            assert!(xff.contains("198.18.0.2"), "x-forwarded-for: {headers}");
            assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");
            let request_id = headers["x-request-id"].as_str().unwrap_or_default();
            assert!(!request_id.is_empty(), "x-request-id missing: {headers}");
            instances.insert(json["instance"].as_str().unwrap().to_owned());
        }
        // Both endpoints of the EndpointSlice serve.
        assert_eq!(
            instances,
            HashSet::from(["counter-a".to_owned(), "counter-b".to_owned()]),
            "port {port}"
        );
    }

    // Host matching ignores the port in Host and is case-insensitive.
    for host in [format!("{COUNTER_HOST}:30080"), COUNTER_HOST.to_uppercase()] {
        let r = gw
            .topo
            .get(&node_url(30080, "/x"), &host)
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(r.status, 200, "Host: {host}: {r:?}");
    }

    // One access-log line per request on stdout.
    gw.daemon
        .wait_for_output(Duration::from_secs(5), "access-log lines", |out, _| {
            out.lines().filter(|l| l.contains(COUNTER_HOST)).count() >= 12
        })
        .unwrap();

    // The admin API in the node namespace shows the route, Envoy-style.
    let dump = gw
        .topo
        .http_get(Ns::Node, ADMIN_ADDR, "/config_dump")
        .unwrap();
    assert_eq!(dump.status, 200);
    assert!(dump.body.contains(COUNTER_HOST), "{}", dump.body);
    assert!(
        dump.body
            .contains("outbound|80||counter.default.svc.cluster.local"),
        "{}",
        dump.body
    );
    for path in [
        "/ready",
        "/stats",
        "/stats/prometheus",
        "/clusters",
        "/listeners",
    ] {
        let r = gw.topo.http_get(Ns::Node, ADMIN_ADDR, path).unwrap();
        assert_eq!(r.status, 200, "admin {path}: {r:?}");
    }
    let prom = gw
        .topo
        .http_get(Ns::Node, ADMIN_ADDR, "/stats/prometheus")
        .unwrap();
    assert!(prom.body.contains("istio_requests_total"), "{}", prom.body);
}

#[test]
fn unknown_host_gets_404() {
    if !require_root("unknown_host_gets_404") {
        return;
    }
    let gw = SeedGateway::start(&[]).unwrap();
    for port in [8080, 30080] {
        let r = gw
            .topo
            .get(&node_url(port, "/"), "nope.example.com")
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(r.status, 404, "port {port}: {r:?}");
        assert!(!r.body.trim().is_empty(), "a 404 says why: {r:?}");
        assert!(
            r.json().map(|j| j["app"] != "counter").unwrap_or(true),
            "404 must come from the gateway, not a backend: {r:?}"
        );
    }
}

#[test]
fn ports_without_a_server_are_closed() {
    if !require_root("ports_without_a_server_are_closed") {
        return;
    }
    let gw = SeedGateway::start(&[]).unwrap();
    // 8081: nothing at all. 8443/30443: in the gateway Service, but this Gateway has
    // no server on port 443, so nothing listens there.
    for port in [8081, 8443, 30443] {
        let r = gw.topo.get(&node_url(port, "/"), COUNTER_HOST).unwrap();
        assert_eq!(r.exit_code, Some(7), "port {port} should refuse: {r:?}");
    }
}

#[test]
fn upstream_failures_map_to_503_and_504() {
    if !require_root("upstream_failures_map_to_503_and_504") {
        return;
    }
    // `empty`: a Service without endpoints. `dead`: an endpoint where nothing listens.
    // `impatient`: the counter with a 500 ms route timeout.
    let impatient = virtual_service("impatient", "impatient.lab.example.com", "counter", 80)
        .replace("    route:\n", "    timeout: 500ms\n    route:\n");
    assert!(
        impatient.contains("timeout: 500ms"),
        "fixture edit did not apply"
    );
    let files = vec![
        ("impatient.yaml".to_owned(), impatient),
        (
            "empty.yaml".to_owned(),
            format!(
                "{}---\n{}",
                virtual_service("empty", "empty.lab.example.com", "empty", 80),
                service_with_endpoints("empty", "http", 80, COUNTER_PORT, &[])
            ),
        ),
        (
            "dead.yaml".to_owned(),
            format!(
                "{}---\n{}",
                virtual_service("dead", "dead.lab.example.com", "dead", 80),
                service_with_endpoints(
                    "dead",
                    "http",
                    80,
                    COUNTER_PORT,
                    &["198.18.1.2".parse().unwrap()]
                )
            ),
        ),
    ];
    let gw = SeedGateway::start_with(&files, &[]).unwrap();
    for host in ["empty.lab.example.com", "dead.lab.example.com"] {
        let r = gw
            .topo
            .get(&node_url(8080, "/"), host)
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(r.status, 503, "{host}: {r:?}");
        assert!(!r.body.trim().is_empty(), "a 503 says why: {r:?}");
    }
    let r = gw
        .topo
        .get(
            &node_url(8080, "/slow?ms=3000"),
            "impatient.lab.example.com",
        )
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(r.status, 504, "{r:?}");

    // And the healthy route next to them still works.
    let r = gw
        .topo
        .get(&node_url(8080, "/"), COUNTER_HOST)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(r.status, 200);
}
