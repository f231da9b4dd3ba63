//! Live config: the watched directory changes while requests flow.

use std::time::{Duration, Instant};

use ingressd_tests::config::{COUNTER_HOST, counter_virtual_service, virtual_service};
use ingressd_tests::{Ns, SeedGateway, Topology, node_url, require_root};

/// How long a config change may take to show up (the contract says ~1 s).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Polls `host` on port 8080 until it answers `status` from a counter backend
/// (or, for non-200, from anyone); returns how long it took.
fn wait_for_status(topo: &Topology, host: &str, status: u16) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < RELOAD_TIMEOUT {
        let r = topo
            .get(&node_url(8080, "/"), host)
            .expect("running curl in the client namespace");
        let from_counter = r
            .response
            .as_ref()
            .is_some_and(|resp| resp.json().is_ok_and(|j| j["app"] == "counter"));
        if r.status() == status && (status != 200 || from_counter) {
            return start.elapsed();
        }
        last = Some(r);
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{host} did not answer {status} within {RELOAD_TIMEOUT:?}; last: {last:?}");
}

#[test]
fn live_reload_adds_a_route_without_failing_a_request() {
    if !require_root("live_reload_adds_a_route_without_failing_a_request") {
        return;
    }
    let gw = SeedGateway::start(&[]).unwrap();
    let fresh = "fresh.lab.example.com";
    wait_for_status(&gw.topo, fresh, 404);

    // 300 keep-alive requests at 100/s from one curl process (about 3 s), while the
    // config changes underneath.
    let requests: Vec<(String, String)> = (0..300)
        .map(|i| {
            (
                node_url(8080, &format!("/loop/{i}")),
                COUNTER_HOST.to_owned(),
            )
        })
        .collect();
    let (codes, curl_stderr, took) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            gw.topo
                .curl_many(Ns::Client, &requests, 100, Duration::from_secs(60))
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(800));
        gw.config
            .write(
                "fresh-virtualservice.yaml",
                &virtual_service("fresh", fresh, "counter", 80),
            )
            .unwrap();
        let took = wait_for_status(&gw.topo, fresh, 200);
        let (codes, stderr) = load.join().unwrap();
        (codes, stderr, took)
    });
    eprintln!("new route answered {took:?} after the file was written");
    assert_eq!(codes.len(), 300, "curl stderr: {curl_stderr}");
    let failed: Vec<(usize, u16)> = codes
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, c)| *c != 200)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 300 requests failed during the reload (index, status): {failed:?}; curl: {curl_stderr}",
        failed.len()
    );
    // And the old route still serves after the swap.
    let r = gw
        .topo
        .get(&node_url(8080, "/"), COUNTER_HOST)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(r.status, 200);
}

/// The counter VirtualService with an invalid regex in `spec.http[0].match[0].uri.regex`.
fn broken_counter_virtual_service() -> String {
    counter_virtual_service().replace(
        "    - uri:\n        prefix: /\n",
        "    - uri:\n        regex: \"/(unclosed\"\n",
    )
}

#[test]
fn broken_config_keeps_last_good_routes_and_is_reported() {
    if !require_root("broken_config_keeps_last_good_routes_and_is_reported") {
        return;
    }
    let gw = SeedGateway::start(&[]).unwrap();
    let broken = broken_counter_virtual_service();
    assert!(broken.contains("regex"), "fixture edit did not apply");
    gw.config
        .write("counter-virtualservice.yaml", &broken)
        .unwrap();

    // The error names the file, the resource and the field, at ERROR level.
    let field = "spec.http[0].match[0].uri.regex";
    gw.daemon
        .wait_for_output(RELOAD_TIMEOUT, "error naming the broken field", |_, err| {
            err.contains(field)
        })
        .unwrap();
    let log = gw.log();
    let line = log.lines().find(|l| l.contains(field)).unwrap();
    assert!(line.contains("ERROR"), "not an ERROR line: {line}");
    assert!(
        line.contains("counter-virtualservice.yaml"),
        "does not name the file: {line}"
    );
    assert!(
        line.to_ascii_lowercase().contains("default/counter"),
        "does not name the resource: {line}"
    );

    // Routing is intact: the last good config keeps serving.
    for _ in 0..5 {
        let r = gw
            .topo
            .get(&node_url(8080, "/"), COUNTER_HOST)
            .unwrap()
            .ok()
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json().unwrap()["app"], "counter");
    }

    // A good change afterwards applies again (the watcher survived the bad one).
    let fixed = counter_virtual_service().replace(
        &format!("  - {COUNTER_HOST}\n"),
        &format!("  - {COUNTER_HOST}\n  - fixed.lab.example.com\n"),
    );
    gw.config
        .write("counter-virtualservice.yaml", &fixed)
        .unwrap();
    wait_for_status(&gw.topo, "fixed.lab.example.com", 200);
}
