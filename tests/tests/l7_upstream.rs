//! DestinationRule `trafficPolicy` end to end: load balancers (LEAST_REQUEST, the
//! default; ROUND_ROBIN; RANDOM; consistent hashing on a header, a cookie, the source
//! IP and a query parameter, and its stability when an endpoint goes away), outlier
//! detection (ejection, `/clusters`, `/stats`, return, `maxEjectionPercent`) and
//! connection pools (`maxConnections` + `http1MaxPendingRequests`, `http2MaxRequests`
//! on an HTTP/2 upstream, `maxRequestsPerConnection`, `h2UpgradePolicy`, `connectTimeout`).
//!
//! Each test starts one [`FeatureGateway`] (four `counter` backends that report which
//! instance answered) with Services and DestinationRules of its own over them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ingressd_tests::config::service_with_endpoints;
use ingressd_tests::features::{BACKENDS, FeatureGateway, cluster_stat, http_virtual_service};
use ingressd_tests::l7::{
    BatchRequest, BatchResponse, add_address, cluster_health, cluster_name, destination_rule,
};
use ingressd_tests::{Ns, require_root};

const COUNTER_A: Ipv4Addr = BACKENDS[0].1;
const COUNTER_B: Ipv4Addr = BACKENDS[1].1;
const COUNTER_C: Ipv4Addr = BACKENDS[2].1;
/// counter-a, counter-b, counter-c.
const THREE: [Ipv4Addr; 3] = [COUNTER_A, COUNTER_B, COUNTER_C];

fn file(name: &str, yaml: String) -> (String, String) {
    (format!("{name}.yaml"), yaml)
}

/// A Service `name` (port 80 named `port_name`, target 8080) over `addrs`, and a
/// DestinationRule for it with `policy` as its `trafficPolicy` (none when empty).
fn service(name: &str, port_name: &str, addrs: &[Ipv4Addr], policy: &str) -> (String, String) {
    let mut yaml = service_with_endpoints(name, port_name, 80, 8080, addrs);
    if !policy.is_empty() {
        yaml.push_str("---\n");
        yaml.push_str(&destination_rule(name, name, policy));
    }
    file(&format!("svc-{name}"), yaml)
}

/// Which instance answered each request, in order; fails on any non-200.
fn instances(what: &str, responses: &[BatchResponse]) -> Vec<String> {
    let bad: Vec<String> = responses
        .iter()
        .filter(|r| r.response.status != 200)
        .map(|r| format!("#{} {} {:?}", r.index, r.response.status, r.response.body))
        .collect();
    assert!(bad.is_empty(), "{what}: requests failed: {bad:?}");
    responses.iter().map(BatchResponse::instance).collect()
}

fn counts(names: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in names {
        *out.entry(n.clone()).or_insert(0) += 1;
    }
    out
}

const LB_HOST: &str = "lb.lab.example.com";

/// ROUND_ROBIN alternates strictly; RANDOM gives every endpoint a share; without a
/// DestinationRule (LEAST_REQUEST, power of two choices on active requests) a slow
/// endpoint gets few of the requests that arrive while it is busy.
#[test]
fn round_robin_random_and_least_request() {
    if !require_root("round_robin_random_and_least_request") {
        return;
    }
    let vs = http_virtual_service(
        "lb",
        &[LB_HOST],
        r#"
- match: [{uri: {prefix: /rr/}}]
  route: [{destination: {host: lb-rr}}]
- match: [{uri: {prefix: /random/}}]
  route: [{destination: {host: lb-random}}]
- match: [{uri: {prefix: /least/}}]
  route: [{destination: {host: lb-least}}]
"#,
    );
    let files = [
        file("lb", vs),
        service(
            "lb-rr",
            "http",
            &THREE,
            "loadBalancer: {simple: ROUND_ROBIN}",
        ),
        service(
            "lb-random",
            "http",
            &THREE,
            "loadBalancer: {simple: RANDOM}",
        ),
        service("lb-least", "http", &THREE, ""),
    ];
    let gw = FeatureGateway::start(&files, &[]).unwrap();
    let mut failures = Vec::new();

    // ROUND_ROBIN: 30 requests one after the other, a strict rotation over the three.
    let requests: Vec<BatchRequest> = (0..30)
        .map(|i| BatchRequest::new(LB_HOST, format!("/rr/{i}")))
        .collect();
    let seq = instances(
        "round robin",
        &gw.batch(&requests, 1, Duration::from_secs(30)).unwrap(),
    );
    let first: BTreeSet<&String> = seq[..3].iter().collect();
    let rotation = first.len() == 3 && seq.iter().enumerate().all(|(i, n)| *n == seq[i % 3]);
    let per_backend = counts(&seq);
    if !rotation || per_backend.values().any(|&n| n != 10) {
        failures.push(format!(
            "ROUND_ROBIN: want a strict rotation, 10 each over 30, got {per_backend:?} in order {seq:?}"
        ));
    }

    // RANDOM: 300 requests, each endpoint expects 100 (sd 8.2); 60..=140 is ±4.9 sd.
    // A strict rotation (what ROUND_ROBIN would give) is not random.
    let requests: Vec<BatchRequest> = (0..300)
        .map(|i| BatchRequest::new(LB_HOST, format!("/random/{i}")))
        .collect();
    let seq = instances(
        "random",
        &gw.batch(&requests, 1, Duration::from_secs(60)).unwrap(),
    );
    let per_backend = counts(&seq);
    let rotation = seq.iter().enumerate().all(|(i, n)| *n == seq[i % 3]);
    if per_backend.len() != 3 || per_backend.values().any(|n| !(60..=140).contains(n)) || rotation {
        failures.push(format!(
            "RANDOM: want each of the three within 60..=140 of 300 and no rotation, got {per_backend:?}"
        ));
    }

    // LEAST_REQUEST (no DestinationRule): 60 requests, 6 at a time; counter-a takes
    // 600 ms to answer them, the others answer at once. With a uniform choice
    // counter-a would get 20 (sd 3.7); with the least loaded of two random choices it
    // gets one only when the other pick is as busy, so at most 10 (a sixth).
    let requests: Vec<BatchRequest> = (0..60)
        .map(|i| BatchRequest::new(LB_HOST, format!("/least/{i}?delay_on=counter-a&ms=600")))
        .collect();
    let started = Instant::now();
    let seq = instances(
        "least request",
        &gw.batch(&requests, 6, Duration::from_secs(60)).unwrap(),
    );
    let took = started.elapsed();
    let per_backend = counts(&seq);
    let slow = per_backend.get("counter-a").copied().unwrap_or(0);
    if slow > 10 || per_backend.values().sum::<usize>() != 60 {
        failures.push(format!(
            "LEAST_REQUEST: want at most 10 of 60 on the slow counter-a, got {per_backend:?} (in {took:?})"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const HASH_HOST: &str = "hash.lab.example.com";

/// `(key, instance)` pairs -> instances per key; fails the case when a key went to
/// more than one instance.
fn stable_per_key(
    what: &str,
    keys: &[String],
    seq: &[String],
    failures: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut per_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (k, n) in keys.iter().zip(seq) {
        per_key.entry(k.clone()).or_default().insert(n.clone());
    }
    let unstable: Vec<_> = per_key.iter().filter(|(_, v)| v.len() != 1).collect();
    if !unstable.is_empty() {
        failures.push(format!(
            "{what}: a key went to more than one endpoint: {unstable:?}"
        ));
    }
    per_key
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().next().unwrap_or_default()))
        .collect()
}

/// Checks that `mapping` (key -> instance) spreads over at least two instances.
fn spread(what: &str, mapping: &BTreeMap<String, String>, failures: &mut Vec<String>) {
    let used: BTreeSet<&String> = mapping.values().collect();
    if used.len() < 2 {
        failures.push(format!(
            "{what}: {} keys all went to {used:?}; want them spread over at least two endpoints",
            mapping.len()
        ));
    }
}

/// `consistentHash`: the same header value, cookie, source address or query
/// parameter always reaches the same endpoint and different ones spread; a missing
/// hash cookie with a `ttl` is set by the gateway (`Max-Age`, `Path`, `HttpOnly`) and
/// sticks when sent back; when an endpoint that is not a key's goes away (EndpointSlice
/// rewritten, live reload), the key stays where it was.
#[test]
fn consistent_hash_sticks_spreads_and_survives_an_endpoint_leaving() {
    if !require_root("consistent_hash_sticks_spreads_and_survives_an_endpoint_leaving") {
        return;
    }
    let vs = http_virtual_service(
        "hash",
        &[HASH_HOST],
        r#"
- match: [{uri: {prefix: /header/}}]
  route: [{destination: {host: hash-header}}]
- match: [{uri: {prefix: /cookie/}}]
  route: [{destination: {host: hash-cookie}}]
- match: [{uri: {prefix: /source/}}]
  route: [{destination: {host: hash-source}}]
- match: [{uri: {prefix: /query/}}]
  route: [{destination: {host: hash-query}}]
"#,
    );
    let files = [
        file("hash", vs),
        service(
            "hash-header",
            "http",
            &THREE,
            "loadBalancer: {consistentHash: {httpHeaderName: x-user}}",
        ),
        service(
            "hash-cookie",
            "http",
            &THREE,
            "loadBalancer: {consistentHash: {httpCookie: {name: sticky, ttl: 60s, path: /}}}",
        ),
        service(
            "hash-source",
            "http",
            &THREE,
            "loadBalancer: {consistentHash: {useSourceIp: true}}",
        ),
        service(
            "hash-query",
            "http",
            &THREE,
            "loadBalancer: {consistentHash: {httpQueryParameterName: user}}",
        ),
    ];
    let gw = FeatureGateway::start(&files, &[]).unwrap();
    let mut failures = Vec::new();
    let timeout = Duration::from_secs(30);

    // Header: 24 users, 3 requests each, interleaved.
    let users: Vec<String> = (0..3)
        .flat_map(|_| (0..24).map(|u| format!("user-{u}")))
        .collect();
    let requests: Vec<BatchRequest> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            BatchRequest::new(HASH_HOST, format!("/header/{i}")).header(format!("x-user: {u}"))
        })
        .collect();
    let seq = instances("hash header", &gw.batch(&requests, 1, timeout).unwrap());
    let header_map = stable_per_key("httpHeaderName", &users, &seq, &mut failures);
    spread("httpHeaderName", &header_map, &mut failures);
    // Without the header: still answered (any endpoint).
    let r = gw.request(HASH_HOST, "/header/none", &[]).unwrap();
    if r.status != 200 {
        failures.push(format!("httpHeaderName, no header: want 200, got {r:?}"));
    }

    // Query parameter: the same, with ?user=.
    let requests: Vec<BatchRequest> = users
        .iter()
        .enumerate()
        .map(|(i, u)| BatchRequest::new(HASH_HOST, format!("/query/{i}?user={u}")))
        .collect();
    let seq = instances("hash query", &gw.batch(&requests, 1, timeout).unwrap());
    let query_map = stable_per_key("httpQueryParameterName", &users, &seq, &mut failures);
    spread("httpQueryParameterName", &query_map, &mut failures);

    // Source IP: 16 client addresses, 3 requests each.
    let sources: Vec<Ipv4Addr> = (10..26).map(|h| Ipv4Addr::new(198, 18, 0, h)).collect();
    for s in &sources {
        add_address(&gw.topo, Ns::Client, "eth0", *s).unwrap();
    }
    let keys: Vec<String> = (0..3)
        .flat_map(|_| sources.iter().map(|s| s.to_string()))
        .collect();
    let requests: Vec<BatchRequest> = keys
        .iter()
        .enumerate()
        .map(|(i, s)| {
            BatchRequest::new(HASH_HOST, format!("/source/{i}"))
                .from(s.parse().expect("an address"))
        })
        .collect();
    let seq = instances("hash source", &gw.batch(&requests, 1, timeout).unwrap());
    let source_map = stable_per_key("useSourceIp", &keys, &seq, &mut failures);
    spread("useSourceIp", &source_map, &mut failures);

    // Cookie: the first request has none; the gateway sets it, and sending it back
    // reaches the same endpoint as that first request every time.
    let r = gw.request(HASH_HOST, "/cookie/first", &[]).unwrap();
    let set_cookie = r.header("set-cookie").unwrap_or_default().to_owned();
    let mut parts = set_cookie.split(';').map(str::trim);
    let pair = parts.next().unwrap_or_default().to_owned();
    let attributes: BTreeSet<String> = parts.map(str::to_ascii_lowercase).collect();
    let want_attributes: BTreeSet<String> = ["max-age=60", "path=/", "httponly"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let value = pair.strip_prefix("sticky=").unwrap_or_default().to_owned();
    if r.status != 200 || value.trim_matches('"').is_empty() || attributes != want_attributes {
        failures.push(format!(
            "httpCookie {{name: sticky, ttl: 60s, path: /}}: want Set-Cookie: sticky=<value>; \
             Max-Age=60; Path=/; HttpOnly, got {} {set_cookie:?}",
            r.status
        ));
    } else {
        let first = r.json().unwrap()["instance"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let cookie = format!("Cookie: {pair}");
        let requests: Vec<BatchRequest> = (0..10)
            .map(|i| {
                BatchRequest::new(HASH_HOST, format!("/cookie/back/{i}")).header(cookie.clone())
            })
            .collect();
        let responses = gw.batch(&requests, 1, timeout).unwrap();
        let seq = instances("hash cookie", &responses);
        let again: Vec<&str> = responses
            .iter()
            .filter_map(|r| r.response.header("set-cookie"))
            .collect();
        if seq.iter().any(|n| *n != first) || !again.is_empty() {
            failures.push(format!(
                "httpCookie: with {cookie:?} every request must reach {first} (which answered \
                 the request that got the cookie) and get no new cookie; got {seq:?}, Set-Cookie {again:?}"
            ));
        }
    }
    // Different cookie values spread, each sticking.
    let cookies: Vec<String> = (0..3)
        .flat_map(|_| (0..24).map(|c| format!("c{c:04}")))
        .collect();
    let requests: Vec<BatchRequest> = cookies
        .iter()
        .enumerate()
        .map(|(i, c)| {
            BatchRequest::new(HASH_HOST, format!("/cookie/{i}"))
                .header(format!("Cookie: other=1; sticky={c}"))
        })
        .collect();
    let seq = instances("hash cookies", &gw.batch(&requests, 1, timeout).unwrap());
    let cookie_map = stable_per_key("httpCookie values", &cookies, &seq, &mut failures);
    spread("httpCookie values", &cookie_map, &mut failures);

    // counter-c leaves hash-header (its EndpointSlice rewritten, live reload): keys
    // on counter-a and counter-b stay put, keys of counter-c move to those two.
    let on_c = header_map.values().filter(|n| *n == "counter-c").count();
    gw.config
        .write(
            "svc-hash-header.yaml",
            &(service_with_endpoints("hash-header", "http", 80, 8080, &[COUNTER_A, COUNTER_B])
                + "---\n"
                + &destination_rule(
                    "hash-header",
                    "hash-header",
                    "loadBalancer: {consistentHash: {httpHeaderName: x-user}}",
                )),
        )
        .unwrap();
    let gone = format!("{COUNTER_C}:8080");
    gw.wait_health(&cluster_name("hash-header"), Duration::from_secs(10), |h| {
        h.len() == 2 && !h.contains_key(&gone)
    })
    .unwrap();
    let keys: Vec<String> = header_map.keys().cloned().collect();
    let requests: Vec<BatchRequest> = keys
        .iter()
        .enumerate()
        .map(|(i, u)| {
            BatchRequest::new(HASH_HOST, format!("/header/after/{i}"))
                .header(format!("x-user: {u}"))
        })
        .collect();
    let seq = instances(
        "hash header after",
        &gw.batch(&requests, 1, timeout).unwrap(),
    );
    let mut moved = Vec::new();
    for (key, now) in keys.iter().zip(&seq) {
        let before = &header_map[key];
        if before != "counter-c" && now != before || now == "counter-c" {
            moved.push(format!("{key}: {before} -> {now}"));
        }
    }
    if !moved.is_empty() {
        failures.push(format!(
            "httpHeaderName after counter-c left ({on_c} of {} keys were on it): keys of the \
             remaining endpoints must stay put, and none may reach counter-c: {moved:?}",
            keys.len()
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const OUTLIER_HOST: &str = "outlier.lab.example.com";

/// `outlierDetection`: counter-a answers 503 (`?fail_on=counter-a`); after
/// `consecutive5xxErrors` of them it is ejected (`/clusters` says
/// `failed_outlier_check`, `/stats` counts the ejection) and gets no requests; after
/// `baseEjectionTime` it is back. `maxEjectionPercent` caps how many endpoints may be
/// out, but one always may.
#[test]
fn outlier_detection_ejects_and_returns() {
    if !require_root("outlier_detection_ejects_and_returns") {
        return;
    }
    let vs = http_virtual_service(
        "outlier",
        &[OUTLIER_HOST],
        r#"
- match: [{uri: {prefix: /od/}}]
  retries: {attempts: 0}
  route: [{destination: {host: outlier}}]
- match: [{uri: {prefix: /cap10/}}]
  retries: {attempts: 0}
  route: [{destination: {host: outlier-cap10}}]
- match: [{uri: {prefix: /cap70/}}]
  retries: {attempts: 0}
  route: [{destination: {host: outlier-cap70}}]
- match: [{uri: {prefix: /solo/}}]
  retries: {attempts: 0}
  route: [{destination: {host: outlier-solo}}]
"#,
    );
    // Round robin, so that counter-a's share of the requests is known.
    let od = |errors: u32, base: &str, max: u32| {
        format!(
            "loadBalancer: {{simple: ROUND_ROBIN}}\noutlierDetection: {{consecutive5xxErrors: {errors}, interval: 1s, baseEjectionTime: {base}, maxEjectionPercent: {max}}}"
        )
    };
    let files = [
        file("outlier", vs),
        service("outlier", "http", &THREE, &od(3, "2s", 100)),
        service("outlier-cap10", "http", &THREE, &od(2, "60s", 10)),
        service("outlier-cap70", "http", &THREE, &od(2, "60s", 70)),
        service("outlier-solo", "http", &[COUNTER_A], &od(2, "60s", 100)),
    ];
    let gw = FeatureGateway::start(&files, &[]).unwrap();
    let mut failures = Vec::new();
    let timeout = Duration::from_secs(30);
    let cluster = cluster_name("outlier");
    let a = format!("{COUNTER_A}:8080");

    // 9 requests round robin: counter-a answers 3 of them with 503, then it is out.
    let requests: Vec<BatchRequest> = (0..9)
        .map(|i| BatchRequest::new(OUTLIER_HOST, format!("/od/1-{i}?fail_on=counter-a")))
        .collect();
    let codes: Vec<u16> = gw
        .batch(&requests, 1, timeout)
        .unwrap()
        .iter()
        .map(|r| r.response.status)
        .collect();
    let ejected_at = Instant::now();
    if codes.iter().filter(|c| **c == 503).count() != 3
        || codes.iter().filter(|c| **c == 200).count() != 6
    {
        failures.push(format!("9 requests round robin with counter-a failing: want three 503 and six 200, got {codes:?}"));
    }
    let health = cluster_health(&gw.clusters().unwrap(), &cluster);
    let want_flags = |flags: &str| {
        [
            (a.clone(), flags.to_owned()),
            (format!("{COUNTER_B}:8080"), "healthy".to_owned()),
            (format!("{COUNTER_C}:8080"), "healthy".to_owned()),
        ]
        .into_iter()
        .collect::<BTreeMap<String, String>>()
    };
    if health != want_flags("/failed_outlier_check") {
        failures.push(format!(
            "/clusters after 3 consecutive 503 from counter-a: want {cluster}::{a}::health_flags::/failed_outlier_check \
             and the others healthy, got {health:?}"
        ));
    }
    let stats = gw.stats().unwrap();
    let ejections = cluster_stat(
        &stats,
        "outlier",
        "outlier_detection.ejections_enforced_total",
    );
    if ejections != 1 {
        failures.push(format!(
            "/stats cluster.{cluster}.outlier_detection.ejections_enforced_total: want 1, got {ejections}"
        ));
    }
    // Ejected: 12 more requests, none reaches counter-a, all succeed.
    let requests: Vec<BatchRequest> = (0..12)
        .map(|i| BatchRequest::new(OUTLIER_HOST, format!("/od/2-{i}?fail_on=counter-a")))
        .collect();
    let seq: Vec<String> = gw
        .batch(&requests, 1, timeout)
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.response.status, r.instance()))
        .collect();
    if seq
        .iter()
        .any(|s| !s.starts_with("200 ") || s.ends_with("counter-a"))
        || gw.hits("/od/2-").contains_key("counter-a")
    {
        failures.push(format!(
            "while counter-a is ejected, requests must go to the others and succeed: {seq:?}"
        ));
    }
    // Back after baseEjectionTime (2 s; Envoy looks every interval, 1 s), and it gets
    // its share again. Failing again at once ejects it for twice as long (Envoy
    // multiplies baseEjectionTime by the number of ejections).
    for (round, base) in [(1, Duration::from_secs(2)), (2, Duration::from_secs(4))] {
        let ejected_at = if round == 1 {
            ejected_at
        } else {
            let requests: Vec<BatchRequest> = (0..9)
                .map(|i| BatchRequest::new(OUTLIER_HOST, format!("/od/4-{i}?fail_on=counter-a")))
                .collect();
            let codes: Vec<u16> = gw
                .batch(&requests, 1, timeout)
                .unwrap()
                .iter()
                .map(|r| r.response.status)
                .collect();
            let at = Instant::now();
            let health = cluster_health(&gw.clusters().unwrap(), &cluster);
            if health != want_flags("/failed_outlier_check")
                || codes.iter().filter(|c| **c == 503).count() != 3
            {
                failures.push(format!(
                    "second ejection of counter-a: want three 503 and failed_outlier_check, got {codes:?} {health:?}"
                ));
                break;
            }
            at
        };
        let back = gw.wait_health(&cluster, base + Duration::from_secs(4), |h| {
            *h == want_flags("healthy")
        });
        let back_after = ejected_at.elapsed();
        let earliest = base - Duration::from_millis(500);
        let latest = base + Duration::from_secs(2);
        match back {
            Err(e) => {
                failures.push(format!("ejection {round}: counter-a not back: {e:#}"));
                break;
            }
            Ok(_) if back_after < earliest || back_after > latest => {
                failures.push(format!(
                    "ejection {round}: counter-a back after {back_after:?}, want {earliest:?}..{latest:?} \
                     (baseEjectionTime 2s x {round}, interval 1s)"
                ));
            }
            Ok(_) => {}
        }
        let requests: Vec<BatchRequest> = (0..9)
            .map(|i| BatchRequest::new(OUTLIER_HOST, format!("/od/3-{round}-{i}")))
            .collect();
        let seq = instances(
            "after the ejection",
            &gw.batch(&requests, 1, timeout).unwrap(),
        );
        let per_backend = counts(&seq);
        if per_backend.get("counter-a") != Some(&3) {
            failures.push(format!(
                "counter-a back after ejection {round}: want 3 of 9 round robin, got {per_backend:?}"
            ));
        }
    }
    let stats = gw.stats().unwrap();
    let ejections = cluster_stat(
        &stats,
        "outlier",
        "outlier_detection.ejections_enforced_total",
    );
    if ejections != 2 {
        failures.push(format!(
            "/stats outlier_detection.ejections_enforced_total after two ejections: want 2, got {ejections}"
        ));
    }

    // maxEjectionPercent: every endpoint fails (?status=503), 2 consecutive errors
    // eject. 10 % of 3 endpoints is none, but one may always be out; 70 % is two.
    for (prefix, service, want) in [
        ("/cap10/", "outlier-cap10", 1),
        ("/cap70/", "outlier-cap70", 2),
    ] {
        let requests: Vec<BatchRequest> = (0..12)
            .map(|i| BatchRequest::new(OUTLIER_HOST, format!("{prefix}{i}?status=503")))
            .collect();
        let codes: Vec<u16> = gw
            .batch(&requests, 1, timeout)
            .unwrap()
            .iter()
            .map(|r| r.response.status)
            .collect();
        let health = cluster_health(&gw.clusters().unwrap(), &cluster_name(service));
        let out = health
            .values()
            .filter(|f| f.contains("failed_outlier_check"))
            .count();
        let stats = gw.stats().unwrap();
        let ejections = cluster_stat(
            &stats,
            service,
            "outlier_detection.ejections_enforced_total",
        );
        if codes != vec![503; 12] || out != want || ejections != want as u64 {
            failures.push(format!(
                "{service}: 12 requests all answered 503: want {want} of 3 ejected (and counted), \
                 got {out} ({health:?}), ejections_enforced_total {ejections}, codes {codes:?}"
            ));
        }
    }
    // The only endpoint ejected: Istio turns Envoy's panic mode off (minHealthPercent
    // 0), so there is no healthy upstream: 503 `UH`, and the backend sees nothing.
    for i in 0..2 {
        let r = gw
            .request(OUTLIER_HOST, &format!("/solo/fail-{i}?status=503"), &[])
            .unwrap();
        assert_eq!(r.status, 503, "{r:?}");
    }
    let r = gw.request(OUTLIER_HOST, "/solo/after", &[]).unwrap();
    let entry = gw.access_entry("/solo/after");
    if r.status != 503
        || entry.as_ref().map(|e| e.flags.as_str()).ok() != Some("UH")
        || !gw.hits("/solo/after").is_empty()
    {
        failures.push(format!(
            "outlier-solo, its one endpoint ejected: want 503 UH and no backend, got {} {entry:?}, backend {:?}",
            r.status,
            gw.hits("/solo/after")
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const POOL_HOST: &str = "pool.lab.example.com";

/// An address nothing answers: routed from the node to the pods namespace, which
/// does not forward and drops it silently.
const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);

/// `connectionPool`: with `tcp.maxConnections: 1` and `http1MaxPendingRequests: 1`, of
/// five concurrent slow requests one is served, one waits and is served, three get 503
/// `UO` (counted as `upstream_rq_pending_overflow`); `http2MaxRequests` caps requests
/// in flight to an HTTP/2 upstream (a Service port named `http2-...`) the same way;
/// `tcp.connectTimeout` bounds the connect to an endpoint that never answers.
#[test]
fn connection_pool_limits_and_connect_timeout() {
    if !require_root("connection_pool_limits_and_connect_timeout") {
        return;
    }
    let vs = http_virtual_service(
        "pool",
        &[POOL_HOST],
        r#"
- match: [{uri: {prefix: /slow-h1/}}]
  route: [{destination: {host: pool-h1}}]
- match: [{uri: {prefix: /slow-h2/}}]
  route: [{destination: {host: pool-h2}}]
- match: [{uri: {prefix: /h2/}}]
  route: [{destination: {host: pool-h2}}]
- match: [{uri: {prefix: /blackhole/}}]
  retries: {attempts: 0}
  route: [{destination: {host: blackhole}}]
- match: [{uri: {prefix: /no-retry/}}]
  route: [{destination: {host: pool-no-retry}}]
- match: [{uri: {prefix: /idle/}}]
  route: [{destination: {host: pool-idle}}]
- match: [{uri: {prefix: /keep/}}]
  route: [{destination: {host: pool-keep}}]
- match: [{uri: {prefix: /per-conn/}}]
  route: [{destination: {host: pool-per-conn}}]
- match: [{uri: {prefix: /upgrade/}}]
  route: [{destination: {host: pool-upgrade}}]
"#,
    );
    let files = [
        file("pool", vs),
        service(
            "pool-h1",
            "http",
            &[COUNTER_A],
            "connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}",
        ),
        service(
            "pool-h2",
            "http2-web",
            &[COUNTER_B],
            "connectionPool: {http: {http2MaxRequests: 2}}",
        ),
        service(
            "blackhole",
            "http",
            &[BLACKHOLE],
            "connectionPool: {tcp: {connectTimeout: 500ms}}",
        ),
        service(
            "pool-no-retry",
            "http",
            &[COUNTER_A],
            "connectionPool: {http: {maxRetries: 1}}",
        ),
        service(
            "pool-idle",
            "http",
            &[COUNTER_C],
            "connectionPool: {http: {idleTimeout: 300ms}}",
        ),
        service("pool-keep", "http", &[COUNTER_C], ""),
        service(
            "pool-per-conn",
            "http",
            &[COUNTER_C],
            "connectionPool: {http: {maxRequestsPerConnection: 2}}",
        ),
        service(
            "pool-upgrade",
            "http",
            &[COUNTER_C],
            "connectionPool: {http: {h2UpgradePolicy: UPGRADE}}",
        ),
    ];
    let gw = FeatureGateway::start(&files, &[]).unwrap();
    let node_route = gw.topo.exec(
        Ns::Node,
        "ip",
        ["route", "add", "198.18.2.0/24", "via", "198.18.1.2"],
        Duration::from_secs(10),
    );
    assert!(
        node_route.as_ref().is_ok_and(|o| o.status.success()),
        "ip route add 198.18.2.0/24 via 198.18.1.2 in the node namespace: {node_route:?}"
    );
    let mut failures = Vec::new();

    // /clusters shows the circuit breakers (Envoy's `default_priority` thresholds;
    // Istio's default for what a DestinationRule leaves unset is 2^32-1).
    let clusters = gw.clusters().unwrap();
    let unset = u32::MAX.to_string();
    for (service, limit, value) in [
        ("pool-h1", "max_connections", "1"),
        ("pool-h1", "max_pending_requests", "1"),
        ("pool-h1", "max_requests", unset.as_str()),
        ("pool-h2", "max_requests", "2"),
        ("pool-h2", "max_connections", unset.as_str()),
        ("pool-no-retry", "max_retries", "1"),
    ] {
        let line = format!(
            "{}::default_priority::{limit}::{value}",
            cluster_name(service)
        );
        if !clusters.lines().any(|l| l == line) {
            failures.push(format!("/clusters has no line {line}"));
        }
    }

    // The upstream of pool-h2 speaks HTTP/2 (the backend says which version it got).
    let r = gw.request(POOL_HOST, "/h2/version", &[]).unwrap();
    let version = r.json().map(|j| j["version"].clone()).unwrap_or_default();
    if r.status != 200 || version != "HTTP/2.0" {
        failures.push(format!(
            "Service port http2-web: want the request upstream over HTTP/2, backend saw {version} ({})",
            r.status
        ));
    }

    for (prefix, service, backend, what) in [
        (
            "/slow-h1/",
            "pool-h1",
            "counter-a",
            "maxConnections 1 + http1MaxPendingRequests 1",
        ),
        ("/slow-h2/", "pool-h2", "counter-b", "http2MaxRequests 2"),
    ] {
        let requests: Vec<BatchRequest> = (0..5)
            .map(|i| BatchRequest::new(POOL_HOST, format!("{prefix}{i}?ms=800")))
            .collect();
        let started = Instant::now();
        let responses = gw.batch(&requests, 5, Duration::from_secs(30)).unwrap();
        let took = started.elapsed();
        let mut codes: Vec<u16> = responses.iter().map(|r| r.response.status).collect();
        codes.sort_unstable();
        let mut flags: Vec<String> = Vec::new();
        for r in &responses {
            if r.response.status == 503 {
                let path = format!("{prefix}{}?ms=800", r.index);
                flags.push(
                    gw.access_entry(&path)
                        .map(|e| e.flags)
                        .unwrap_or_else(|e| format!("{e:#}")),
                );
            }
        }
        let stats = gw.stats().unwrap();
        let overflow = cluster_stat(&stats, service, "upstream_rq_pending_overflow");
        let served = gw.hits(prefix);
        if codes != [200, 200, 503, 503, 503]
            || flags.iter().any(|f| f != "UO")
            || overflow != 3
            || served.get(backend) != Some(&2)
        {
            failures.push(format!(
                "{service} ({what}), 5 concurrent 800 ms requests: want 200, 200 and three 503 UO, \
                 upstream_rq_pending_overflow 3, 2 at {backend}; got {codes:?} flags {flags:?}, \
                 overflow {overflow}, backend {served:?} (in {took:?})"
            ));
        }
    }

    // maxRetries 1: while one request is retrying (A: its first try answers 503 after
    // 800 ms, the retry takes 800 ms more), the retry of another (B: 503 at once) is
    // refused by the circuit breaker (upstream_rq_retry_overflow) and B gets its 503.
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            gw.request(
                POOL_HOST,
                "/no-retry/a?fail=1&key=a&delay_on=counter-a&ms=800",
                &[],
            )
        });
        std::thread::sleep(Duration::from_millis(1100));
        let b = gw.request(POOL_HOST, "/no-retry/b?fail=1&key=b", &[]);
        (a.join().expect("request A"), b)
    });
    let stats = gw.stats().unwrap();
    let overflow = cluster_stat(&stats, "pool-no-retry", "upstream_rq_retry_overflow");
    let tries = |m: &str| gw.hit_lines(m).len();
    let (a, b) = (a.unwrap().status, b.unwrap().status);
    if (a, b, tries("/no-retry/a"), tries("/no-retry/b"), overflow) != (200, 503, 2, 1, 1) {
        failures.push(format!(
            "maxRetries 1: want A retried to 200 (2 tries), B's retry refused (503, 1 try), \
             upstream_rq_retry_overflow 1; got A {a} after {} tries, B {b} after {} tries, overflow {overflow}",
            tries("/no-retry/a"),
            tries("/no-retry/b")
        ));
    }

    // idleTimeout 300ms: an upstream connection idle for 1 s is closed, so the next
    // request comes from another source port; without it the connection is reused.
    for (prefix, reused) in [("/idle/", false), ("/keep/", true)] {
        let mut peers = Vec::new();
        for i in 0..2 {
            let r = gw.request(POOL_HOST, &format!("{prefix}{i}"), &[]).unwrap();
            peers.push(r.json().map(|j| j["peer"].clone()).unwrap_or_default());
            if i == 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        if (peers[0] == peers[1]) != reused || !peers[0].is_string() {
            failures.push(format!(
                "{prefix}: two requests 1 s apart, connection reused: want {reused}, backend saw peers {peers:?}"
            ));
        }
    }

    // h2UpgradePolicy UPGRADE: a port named `http` is spoken to in HTTP/2.
    let r = gw.request(POOL_HOST, "/upgrade/version", &[]).unwrap();
    let version = r.json().map(|j| j["version"].clone()).unwrap_or_default();
    if r.status != 200 || version != "HTTP/2.0" {
        failures.push(format!(
            "h2UpgradePolicy UPGRADE on port `http`: want the request upstream over HTTP/2, backend saw {version} ({})",
            r.status
        ));
    }

    // maxRequestsPerConnection 2: six sequential requests arrive over three upstream
    // connections, two each (the backend reports the proxy's source port).
    let mut peers: Vec<String> = Vec::new();
    for i in 0..6 {
        let r = gw
            .request(POOL_HOST, &format!("/per-conn/{i}"), &[])
            .unwrap();
        peers.push(
            r.json()
                .ok()
                .and_then(|j| j["peer"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
    }
    let pairs: Vec<bool> = peers.chunks(2).map(|p| p[0] == p[1]).collect();
    let distinct: std::collections::BTreeSet<&String> = peers.iter().collect();
    if pairs != [true, true, true] || distinct.len() != 3 {
        failures.push(format!(
            "maxRequestsPerConnection 2: want six requests over three connections, two each; backend saw peers {peers:?}"
        ));
    }

    // connectTimeout 500ms to an address nothing answers: 503 UF within about a second.
    let started = Instant::now();
    let r = gw.request(POOL_HOST, "/blackhole/x", &[]).unwrap();
    let took = started.elapsed();
    let entry = gw.access_entry("/blackhole/x").unwrap();
    if r.status != 503
        || !entry.flags.split(',').any(|f| f == "UF")
        || took < Duration::from_millis(400)
        || took > Duration::from_millis(1500)
    {
        failures.push(format!(
            "connectTimeout 500ms to {BLACKHOLE}:8080: want 503 UF after 0.4-1.5 s, got {} {} after {took:?}",
            r.status, entry.flags
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Istio accepts `0` for the connection-pool limits and treats it as not set (its
/// translation only copies values `> 0` into Envoy's circuit breakers; a FIXME in
/// istio/pilot's cluster_traffic_policy.go says so for `maxRetries`), so a
/// DestinationRule with zeros must load, not stop the gateway.
#[test]
fn connection_pool_zero_limits_are_accepted_as_unset() {
    let dir = ingressd_tests::ConfigDir::temp().unwrap();
    let mut files = ingressd_tests::SeedGateway::seed_config().files();
    files.push(file(
        "zero-limits",
        destination_rule(
            "counter",
            "counter",
            "connectionPool:\n  tcp: {maxConnections: 0}\n  http: {http1MaxPendingRequests: 0, http2MaxRequests: 0, maxRetries: 0}",
        ),
    ));
    dir.write_all(&files).unwrap();
    let out = ingressd_tests::ingressd_cli(&["check", "--config", &dir.path().to_string_lossy()])
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error")).collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "ingressd check must accept zero connection-pool limits (Istio: unset), got {}:\n{text}",
        out.status
    );
}

/// Istio's translation of `outlierDetection` (`applyOutlierDetection` in istio/pilot):
/// `consecutive5xxErrors` is copied only when set, so when a DestinationRule gives
/// only `consecutiveGatewayErrors`, or neither, Envoy's default of 5 consecutive 5xx
/// (enforced 100 %) still ejects; gateway errors (502/503/504) eject after their own
/// count, and a 500 is not one. Single-endpoint Services, no retries, ejection read
/// from `/clusters`.
#[test]
fn outlier_detection_defaults_follow_istio() {
    if !require_root("outlier_detection_defaults_follow_istio") {
        return;
    }
    let vs = http_virtual_service(
        "od-defaults",
        &[OUTLIER_HOST],
        r#"
- match: [{uri: {prefix: /gw-only-500/}}]
  retries: {attempts: 0}
  route: [{destination: {host: od-gw-500}}]
- match: [{uri: {prefix: /gw-only-502/}}]
  retries: {attempts: 0}
  route: [{destination: {host: od-gw-502}}]
- match: [{uri: {prefix: /neither/}}]
  retries: {attempts: 0}
  route: [{destination: {host: od-neither}}]
"#,
    );
    let gateway_only = "outlierDetection: {consecutiveGatewayErrors: 2, baseEjectionTime: 60s, maxEjectionPercent: 100}";
    let files = [
        file("od-defaults", vs),
        service("od-gw-500", "http", &[COUNTER_A], gateway_only),
        service("od-gw-502", "http", &[COUNTER_B], gateway_only),
        service(
            "od-neither",
            "http",
            &[COUNTER_C],
            "outlierDetection: {baseEjectionTime: 60s, maxEjectionPercent: 100}",
        ),
    ];
    let gw = FeatureGateway::start(&files, &[]).unwrap();
    let mut failures = Vec::new();
    // (what, path prefix, status the backend answers, service, endpoint, after how
    // many answers it must be ejected)
    let cases = [
        (
            "consecutiveGatewayErrors 2: two 502 eject",
            "/gw-only-502/",
            502,
            "od-gw-502",
            COUNTER_B,
            2,
        ),
        (
            "only consecutiveGatewayErrors: 500 is no gateway error, but Envoy's default of 5 consecutive 5xx ejects",
            "/gw-only-500/",
            500,
            "od-gw-500",
            COUNTER_A,
            5,
        ),
        (
            "neither count given: Envoy's default of 5 consecutive 5xx ejects",
            "/neither/",
            500,
            "od-neither",
            COUNTER_C,
            5,
        ),
    ];
    for (what, prefix, status, service, endpoint, after) in cases {
        let host = format!("{endpoint}:8080");
        let mut got = Vec::new();
        for i in 1..=after {
            let path = format!("{prefix}{i}?status={status}");
            let r = gw.request(OUTLIER_HOST, &path, &[]).unwrap();
            let health = cluster_health(&gw.clusters().unwrap(), &cluster_name(service));
            let flags = health.get(&host).cloned().unwrap_or_default();
            got.push(format!("{} -> {flags}", r.status));
            let ejected = flags.contains("failed_outlier_check");
            if ejected != (i == after) {
                failures.push(format!(
                    "{what}: after {i} answers of {status} want ejected={}, got {got:?}",
                    i == after
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `httpCookie.ttl: 0s`: "If the TTL is present and zero, the generated cookie will be
/// a session cookie" (Istio's DestinationRule reference, as Envoy's hash policy): the
/// gateway sets it without `Max-Age`, and it sticks like any other.
#[test]
fn hash_cookie_with_zero_ttl_is_a_session_cookie() {
    if !require_root("hash_cookie_with_zero_ttl_is_a_session_cookie") {
        return;
    }
    let vs = http_virtual_service(
        "session",
        &[HASH_HOST],
        "- {route: [{destination: {host: hash-session}}]}\n",
    );
    let files = [
        file("session", vs),
        service(
            "hash-session",
            "http",
            &THREE,
            "loadBalancer: {consistentHash: {httpCookie: {name: session, ttl: 0s, path: /}}}",
        ),
    ];
    let gw = FeatureGateway::start(&files, &[]).unwrap();
    let r = gw.request(HASH_HOST, "/first", &[]).unwrap();
    let set_cookie = r.header("set-cookie").unwrap_or_default().to_owned();
    let mut parts = set_cookie.split(';').map(str::trim);
    let pair = parts.next().unwrap_or_default().to_owned();
    let attributes: BTreeSet<String> = parts.map(str::to_ascii_lowercase).collect();
    let want: BTreeSet<String> = ["path=/", "httponly"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert!(
        r.status == 200 && pair.starts_with("session=") && attributes == want,
        "httpCookie {{name: session, ttl: 0s, path: /}}: want Set-Cookie: session=<value>; \
         Path=/; HttpOnly (a session cookie, no Max-Age), got {} {set_cookie:?}",
        r.status
    );
    let first = r.json().unwrap()["instance"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let requests: Vec<BatchRequest> = (0..6)
        .map(|i| {
            BatchRequest::new(HASH_HOST, format!("/again/{i}")).header(format!("Cookie: {pair}"))
        })
        .collect();
    let seq = instances(
        "session cookie",
        &gw.batch(&requests, 1, Duration::from_secs(30)).unwrap(),
    );
    assert!(
        seq.iter().all(|n| *n == first),
        "with {pair:?} every request must reach {first}: {seq:?}"
    );
}
