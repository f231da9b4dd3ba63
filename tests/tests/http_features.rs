//! The VirtualService HTTP features end to end, table-driven: real curl in the client
//! namespace, `ingressd run --kernel off` in the node namespace, `counter` backends in
//! the pods namespace that report what they received (see `ingressd_tests::features`).
//!
//! Each test starts one gateway and runs a table of cases against it; every case has a
//! host or path of its own, so the backends' request logs and the daemon's access log
//! (its stdout, parsed) tell the cases apart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ingressd_tests::features::{FeatureGateway, cluster_stat, http_virtual_service};
use ingressd_tests::{ConfigDir, Ns, ingressd_cli, node_url, require_root};

fn file(name: &str, yaml: String) -> (String, String) {
    (format!("{name}.yaml"), yaml)
}

fn hits(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
}

const MATCH_HOST: &str = "match.lab.example.com";
const ALT_MATCH_HOST: &str = "alt-match.lab.example.com";

/// Routes that answer their own name, so the table sees which one matched.
const MATCH_ROUTES: &str = r#"
- {name: port-443, match: [{uri: {exact: /port}, port: 443}], directResponse: {status: 200, body: {string: port-443}}}
- {name: port-80, match: [{uri: {exact: /port}, port: 80}], directResponse: {status: 200, body: {string: port-80}}}
- {name: gw-other, match: [{uri: {exact: /gateways}, gateways: [istio-system/other-gateway]}], directResponse: {status: 200, body: {string: gw-other}}}
- {name: gw-own, match: [{uri: {exact: /gateways}, gateways: [istio-system/default-gateway]}], directResponse: {status: 200, body: {string: gw-own}}}
- {name: exact, match: [{uri: {exact: /exact}}], directResponse: {status: 200, body: {string: exact}}}
- {name: prefix, match: [{uri: {prefix: /prefix}}], directResponse: {status: 200, body: {string: prefix}}}
- {name: regex, match: [{uri: {regex: "/re/[0-9]+"}}], directResponse: {status: 200, body: {string: regex}}}
- {name: ignore-case, match: [{uri: {exact: /CaseLess}, ignoreUriCase: true}], directResponse: {status: 200, body: {string: ignore-case}}}
- {name: ignore-case-prefix, match: [{uri: {prefix: /Mixed}, ignoreUriCase: true}], directResponse: {status: 200, body: {string: ignore-case-prefix}}}
- {name: method-regex, match: [{uri: {prefix: /mregex}, method: {regex: "PUT|PATCH"}}], directResponse: {status: 200, body: {string: method-regex}}}
- {name: without-value, match: [{uri: {prefix: /wv}, withoutHeaders: {x-env: {exact: prod}}}], directResponse: {status: 200, body: {string: without-value}}}
- {name: query-regex, match: [{uri: {prefix: /q}, queryParams: {q: {regex: "a+"}}}], directResponse: {status: 200, body: {string: query-regex}}}
- {name: named, match: [{name: m1, uri: {exact: /named1}}, {name: m2, uri: {exact: /named2}}], directResponse: {status: 200, body: {string: named}}}
- {name: method, match: [{uri: {prefix: /method}, method: {exact: POST}}], directResponse: {status: 200, body: {string: method}}}
- {name: without, match: [{uri: {prefix: /without}, withoutHeaders: {x-block: {}}}], directResponse: {status: 200, body: {string: without}}}
- {name: and, match: [{uri: {prefix: /and}, headers: {x-and: {exact: "yes"}}}], directResponse: {status: 200, body: {string: and}}}
- {name: or, match: [{uri: {exact: /or1}}, {uri: {exact: /or2}}], directResponse: {status: 200, body: {string: or}}}
- {name: scheme-https, match: [{uri: {exact: /scheme}, scheme: {exact: https}}], directResponse: {status: 200, body: {string: scheme-https}}}
- {name: scheme-http, match: [{uri: {exact: /scheme}, scheme: {exact: http}}], directResponse: {status: 200, body: {string: scheme-http}}}
- {name: first-a, match: [{uri: {prefix: /first}}], directResponse: {status: 200, body: {string: first-a}}}
- {name: first-b, match: [{uri: {exact: /first}}], directResponse: {status: 200, body: {string: first-b}}}
- {name: hdr-exact, match: [{headers: {x-user: {exact: jason}}}], directResponse: {status: 200, body: {string: hdr-exact}}}
- {name: hdr-prefix, match: [{headers: {x-tier: {prefix: gold}}}], directResponse: {status: 200, body: {string: hdr-prefix}}}
- {name: hdr-regex, match: [{headers: {x-ver: {regex: "v[0-9]+"}}}], directResponse: {status: 200, body: {string: hdr-regex}}}
- {name: hdr-present, match: [{headers: {x-present: {}}}], directResponse: {status: 200, body: {string: hdr-present}}}
- {name: query, match: [{queryParams: {debug: {exact: "1"}}}], directResponse: {status: 200, body: {string: query}}}
- {name: authority, match: [{authority: {prefix: alt-match.}}], directResponse: {status: 200, body: {string: authority}}}
- {name: fallback, directResponse: {status: 200, body: {string: fallback}}}
"#;

/// (Host, method, path, request headers, node port, route that must answer).
type MatchCase = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    u16,
    &'static str,
);

#[test]
fn match_conditions_pick_the_first_matching_route() {
    if !require_root("match_conditions_pick_the_first_matching_route") {
        return;
    }
    let vs = http_virtual_service("matches", &[MATCH_HOST, ALT_MATCH_HOST], MATCH_ROUTES);
    let gw = FeatureGateway::start_with(&[file("matches", vs)], &[], true).unwrap();
    #[rustfmt::skip]
    let cases: &[MatchCase] = &[
        (MATCH_HOST, "GET", "/exact", &[], 8080, "exact"),
        (MATCH_HOST, "GET", "/exact/x", &[], 8080, "fallback"),
        (MATCH_HOST, "GET", "/prefix/a/b", &[], 8080, "prefix"),
        (MATCH_HOST, "GET", "/prefixed", &[], 8080, "prefix"),
        (MATCH_HOST, "GET", "/re/123", &[], 8080, "regex"),
        // Regexes match the whole path.
        (MATCH_HOST, "GET", "/re/123x", &[], 8080, "fallback"),
        (MATCH_HOST, "GET", "/caseless", &[], 8080, "ignore-case"),
        (MATCH_HOST, "GET", "/CASELESS", &[], 8080, "ignore-case"),
        (MATCH_HOST, "GET", "/mIxEd/tail", &[], 8080, "ignore-case-prefix"),
        (MATCH_HOST, "PATCH", "/mregex", &[], 8080, "method-regex"),
        (MATCH_HOST, "DELETE", "/mregex", &[], 8080, "fallback"),
        (MATCH_HOST, "GET", "/wv", &[], 8080, "without-value"),
        (MATCH_HOST, "GET", "/wv", &["x-env: dev"], 8080, "without-value"),
        (MATCH_HOST, "GET", "/wv", &["x-env: prod"], 8080, "fallback"),
        (MATCH_HOST, "GET", "/q?q=aaa", &[], 8080, "query-regex"),
        (MATCH_HOST, "GET", "/q?q=ab", &[], 8080, "fallback"),
        (MATCH_HOST, "GET", "/q", &[], 8080, "fallback"),
        (MATCH_HOST, "POST", "/method", &[], 8080, "method"),
        (MATCH_HOST, "GET", "/method", &[], 8080, "fallback"),
        (MATCH_HOST, "GET", "/without", &[], 8080, "without"),
        (MATCH_HOST, "GET", "/without", &["x-block: 1"], 8080, "fallback"),
        // AND inside a match.
        (MATCH_HOST, "GET", "/and", &["x-and: yes"], 8080, "and"),
        (MATCH_HOST, "GET", "/and", &[], 8080, "fallback"),
        (MATCH_HOST, "GET", "/and", &["x-and: no"], 8080, "fallback"),
        // OR across matches.
        (MATCH_HOST, "GET", "/or1", &[], 8080, "or"),
        (MATCH_HOST, "GET", "/or2", &[], 8080, "or"),
        (MATCH_HOST, "GET", "/scheme", &[], 8080, "scheme-http"),
        // First match wins.
        (MATCH_HOST, "GET", "/first", &[], 8080, "first-a"),
        (MATCH_HOST, "GET", "/x", &["x-user: jason"], 8080, "hdr-exact"),
        (MATCH_HOST, "GET", "/x", &["x-user: jasonx"], 8080, "fallback"),
        // Header names are case-insensitive.
        (MATCH_HOST, "GET", "/x", &["X-USER: jason"], 8080, "hdr-exact"),
        (MATCH_HOST, "GET", "/x", &["x-tier: gold-plus"], 8080, "hdr-prefix"),
        (MATCH_HOST, "GET", "/x", &["x-tier: silver"], 8080, "fallback"),
        (MATCH_HOST, "GET", "/x", &["x-ver: v12"], 8080, "hdr-regex"),
        (MATCH_HOST, "GET", "/x", &["x-ver: v12a"], 8080, "fallback"),
        (MATCH_HOST, "GET", "/x", &["x-present: 1"], 8080, "hdr-present"),
        (MATCH_HOST, "GET", "/x?debug=1", &[], 8080, "query"),
        (MATCH_HOST, "GET", "/x?debug=2", &[], 8080, "fallback"),
        (ALT_MATCH_HOST, "GET", "/x", &[], 8080, "authority"),
        // Earlier routes still come first for the other host.
        (ALT_MATCH_HOST, "GET", "/exact", &[], 8080, "exact"),
        // `port` is the Gateway server port (80), whichever node port the client used.
        (MATCH_HOST, "GET", "/port", &[], 8080, "port-80"),
        (MATCH_HOST, "GET", "/port", &[], 30080, "port-80"),
        // `gateways` inside a match: only the Gateway this request came through.
        (MATCH_HOST, "GET", "/gateways", &[], 8080, "gw-own"),
    ];
    let mut failures = Vec::new();
    for (i, (host, method, path, headers, port, want)) in cases.iter().enumerate() {
        // A unique query parameter per case (paths match without the query) to
        // find the case's access-log line.
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}case={i}");
        let mut args = vec!["-X", method];
        for h in *headers {
            args.extend(["-H", h]);
        }
        let r = gw.request_on(*port, host, &path, &args).unwrap();
        if r.status != 200 || r.body != *want {
            failures.push(format!(
                "{method} {host}:{port}{path} {headers:?}: want {want}, got {} {:?}",
                r.status, r.body
            ));
            continue;
        }
        let entry = gw.access_entry(&path).unwrap();
        if entry.route_name != *want || entry.status != 200 {
            failures.push(format!(
                "{path}: access log names route {:?} (status {}), want {want}",
                entry.route_name, entry.status
            ));
        }
    }
    // Over the HTTPS server (Gateway port 443): `scheme` is https and `port` is 443.
    for (path, want) in [
        ("/scheme", "scheme-https"),
        ("/port", "port-443"),
        ("/exact", "exact"),
    ] {
        let r = gw.request_https(MATCH_HOST, path, &[]).unwrap();
        if r.status != 200 || r.body != want {
            failures.push(format!(
                "https {MATCH_HOST}{path}: want {want}, got {} {:?}",
                r.status, r.body
            ));
        }
    }
    // HTTP/2 (h2c, prior knowledge) routes by `:authority` and headers alike.
    for (path, header, want) in [
        ("/exact", "x-none: 1", "exact"),
        ("/x", "x-user: jason", "hdr-exact"),
    ] {
        let r = gw
            .request(MATCH_HOST, path, &["--http2-prior-knowledge", "-H", header])
            .unwrap();
        if r.status != 200 || r.body != want {
            failures.push(format!(
                "h2c {MATCH_HOST}{path} {header}: want {want}, got {} {:?}",
                r.status, r.body
            ));
        }
    }
    // A named match names the route `<route name>.<match name>`, as Istio does.
    for (path, route_name) in [("/named1", "named.m1"), ("/named2", "named.m2")] {
        let r = gw.request(MATCH_HOST, path, &[]).unwrap();
        let entry = gw.access_entry(path).unwrap();
        if r.body != "named" || entry.route_name != route_name {
            failures.push(format!(
                "{path}: want body named, route_name {route_name}; got {:?}, {:?}",
                r.body, entry.route_name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `(scheme, host, port, path)` of an absolute URL; the port defaults by scheme.
fn split_url(url: &str) -> Option<(String, String, u16, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, if scheme == "https" { 443 } else { 80 }),
    };
    Some((scheme.to_owned(), host.to_owned(), port, path.to_owned()))
}

#[test]
fn redirects_direct_responses_rewrites_and_header_operations() {
    if !require_root("redirects_direct_responses_rewrites_and_header_operations") {
        return;
    }
    let redirect = http_virtual_service(
        "redirect",
        &["redirect.lab.example.com"],
        r#"
- {match: [{uri: {prefix: /r-uri}}], redirect: {uri: /new}}
- {match: [{uri: {prefix: /r-authority}}], redirect: {authority: other.example.com, redirectCode: 302}}
- {match: [{uri: {prefix: /r-port}}], redirect: {port: 8443}}
- {match: [{uri: {prefix: /r-scheme}}], redirect: {scheme: https, redirectCode: 308}, headers: {response: {set: {x-redirected-by: gateway}}}}
"#,
    );
    let direct = http_virtual_service(
        "direct",
        &["direct.lab.example.com"],
        r#"
- match: [{uri: {exact: /maintenance}}]
  directResponse: {status: 503, body: {string: down for maintenance}}
  headers: {response: {set: {retry-after: "120"}}}
- match: [{uri: {exact: /bytes}}]
  directResponse: {status: 200, body: {bytes: aGVsbG8gYnl0ZXM=}}
- match: [{uri: {exact: /teapot}}]
  directResponse: {status: 418}
"#,
    );
    let rewrite = http_virtual_service(
        "rewrite",
        &["rewrite.lab.example.com"],
        r#"
- match: [{uri: {prefix: /api/}}]
  rewrite: {uri: /v2/}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /re/}}]
  rewrite: {uriRegexRewrite: {match: '^/re/([a-z]+)/([0-9]+)$', rewrite: '/\2/\1'}}
  route: [{destination: {host: counter}}]
- match: [{uri: {exact: /old}}]
  rewrite: {uri: /new-exact}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /auth}}]
  rewrite: {authority: internal.example.com}
  route: [{destination: {host: counter}}]
- route: [{destination: {host: counter}}]
"#,
    );
    let headers = http_virtual_service(
        "headers",
        &["headers.lab.example.com"],
        r#"
- match: [{uri: {prefix: /route}}]
  headers:
    request:
      set: {x-set: route}
      add: {x-add: route}
      remove: [x-remove]
    response:
      set: {content-type: text/x-set}
      add: {x-resp-add: route}
      remove: [x-envoy-upstream-service-time]
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /dest}}]
  headers: {request: {set: {x-level: route}}}
  route:
  - destination: {host: counter}
    headers:
      request: {set: {x-level: destination, x-dest: counter, host: dest-host.example.com}}
      response: {set: {x-dest-resp: counter}}
- match: [{uri: {prefix: /host}}]
  headers: {request: {set: {host: set-host.example.com}}}
  route: [{destination: {host: counter}}]
"#,
    );
    let gw = FeatureGateway::start(
        &[
            file("redirect", redirect),
            file("direct", direct),
            file("rewrite", rewrite),
            file("headers", headers),
        ],
        &[],
    )
    .unwrap();
    let mut failures: Vec<String> = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{what}: {detail}"));
        }
    };

    // redirect: (host header, path, status, Location)
    let redirects = [
        (
            "redirect.lab.example.com",
            "/r-uri/x?q=1",
            301,
            "http://redirect.lab.example.com/new?q=1",
        ),
        (
            "redirect.lab.example.com",
            "/r-authority?q=2",
            302,
            "http://other.example.com/r-authority?q=2",
        ),
        (
            "redirect.lab.example.com",
            "/r-port",
            301,
            "http://redirect.lab.example.com:8443/r-port",
        ),
        (
            "redirect.lab.example.com",
            "/r-scheme?a=b",
            308,
            "https://redirect.lab.example.com/r-scheme?a=b",
        ),
    ];
    for (host, path, status, location) in redirects {
        let r = gw.request(host, path, &[]).unwrap();
        if path.starts_with("/r-scheme") {
            check(
                "headers.response on a redirect",
                r.header("x-redirected-by") == Some("gateway"),
                format!("{:?}", r.headers),
            );
        }
        check(
            &format!("redirect {host}{path}"),
            r.status == status && r.header("location") == Some(location),
            format!(
                "want {status} Location {location}, got {} {:?}",
                r.status,
                r.header("location")
            ),
        );
    }

    // directResponse: (path, status, body, extra header)
    let directs = [
        (
            "/maintenance",
            503,
            "down for maintenance",
            Some(("retry-after", "120")),
        ),
        ("/bytes", 200, "hello bytes", None),
        ("/teapot", 418, "", None),
    ];
    for (path, status, body, header) in directs {
        let r = gw.request("direct.lab.example.com", path, &[]).unwrap();
        check(
            &format!("directResponse {path}"),
            r.status == status
                && r.body == body
                && header.is_none_or(|(n, v)| r.header(n) == Some(v)),
            format!("want {status} {body:?} {header:?}, got {r:?}"),
        );
    }
    // No route matches: 404 with NR.
    let r = gw
        .request("direct.lab.example.com", "/no-such-route", &[])
        .unwrap();
    let entry = gw.access_entry("/no-such-route").unwrap();
    check(
        "no matching route",
        r.status == 404 && entry.flags == "NR",
        format!("got {} with flags {}", r.status, entry.flags),
    );
    // A direct response never reaches a backend.
    check(
        "directResponse reaches no backend",
        gw.hits("/maintenance").is_empty(),
        format!("{:?}", gw.hits("/maintenance")),
    );

    // rewrite: (path, path at the backend, Host at the backend, x-envoy-original-path)
    let rewrites = [
        (
            "/api/users?x=1",
            "/v2/users?x=1",
            "rewrite.lab.example.com",
            Some("/api/users?x=1"),
        ),
        (
            "/re/item/42",
            "/42/item",
            "rewrite.lab.example.com",
            Some("/re/item/42"),
        ),
        (
            "/old?x=1",
            "/new-exact?x=1",
            "rewrite.lab.example.com",
            Some("/old?x=1"),
        ),
        ("/auth/me", "/auth/me", "internal.example.com", None),
        ("/plain", "/plain", "rewrite.lab.example.com", None),
    ];
    for (path, upstream_path, upstream_host, original) in rewrites {
        let r = gw.request("rewrite.lab.example.com", path, &[]).unwrap();
        let json = r.json().unwrap();
        let got_original = json["headers"]["x-envoy-original-path"].as_str();
        check(
            &format!("rewrite {path}"),
            r.status == 200
                && json["path"] == upstream_path
                && json["host"] == upstream_host
                && got_original == original,
            format!(
                "want path {upstream_path} host {upstream_host} original {original:?}, got {json}"
            ),
        );
        // The access log shows the path the client sent.
        let entry = gw.access_entry(path).unwrap();
        check(
            &format!("access log of rewrite {path}"),
            entry.status == 200,
            format!("{entry:?}"),
        );
    }

    // headers: route-level set/add/remove on the request and the response.
    let r = gw
        .request(
            "headers.lab.example.com",
            "/route",
            &[
                "-H",
                "x-set: client",
                "-H",
                "x-add: client",
                "-H",
                "x-remove: client",
            ],
        )
        .unwrap();
    let json = r.json().unwrap();
    let h = &json["headers"];
    check(
        "headers.request set/add/remove",
        h["x-set"] == "route" && h["x-add"] == "client, route" && h.get("x-remove").is_none(),
        format!("backend saw {h}"),
    );
    check(
        "headers.response set/add/remove",
        r.header("content-type") == Some("text/x-set")
            && r.header("x-resp-add") == Some("route")
            && r.header("x-envoy-upstream-service-time").is_none(),
        format!("client got {:?}", r.headers),
    );

    // Per destination: applied after the route's, and `host` rewrites the authority.
    let r = gw.request("headers.lab.example.com", "/dest", &[]).unwrap();
    let json = r.json().unwrap();
    check(
        "route[].headers",
        json["headers"]["x-level"] == "destination"
            && json["headers"]["x-dest"] == "counter"
            && json["host"] == "dest-host.example.com"
            && r.header("x-dest-resp") == Some("counter"),
        format!("backend saw {json}, client got {:?}", r.headers),
    );
    let r = gw.request("headers.lab.example.com", "/host", &[]).unwrap();
    let json = r.json().unwrap();
    check(
        "headers.request.set host",
        json["host"] == "set-host.example.com",
        format!("backend saw {json}"),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn weighted_destinations_and_subsets() {
    if !require_root("weighted_destinations_and_subsets") {
        return;
    }
    let vs = http_virtual_service(
        "weights",
        &["weights.lab.example.com"],
        r#"
- match: [{uri: {prefix: /split/}}]
  route:
  - {destination: {host: solo-a}, weight: 80}
  - {destination: {host: solo-b}, weight: 20}
- match: [{uri: {prefix: /relative/}}]
  route:
  - {destination: {host: solo-a}, weight: 1}
  - {destination: {host: solo-b}, weight: 3}
- match: [{uri: {prefix: /zero/}}]
  route:
  - {destination: {host: solo-a}, weight: 100}
  - {destination: {host: solo-b}, weight: 0}
- match: [{uri: {prefix: /v1/}}]
  route: [{destination: {host: counter, subset: v1}}]
- match: [{uri: {prefix: /v2/}}]
  route: [{destination: {host: counter, subset: v2}}]
- match: [{uri: {prefix: /v3/}}]
  route: [{destination: {host: counter, subset: v3}}]
- match: [{uri: {prefix: /v9/}}]
  route: [{destination: {host: counter, subset: v9}}]
"#,
    );
    let gw = FeatureGateway::start(&[file("weights", vs)], &[]).unwrap();
    let run = |prefix: &str, n: usize| {
        let requests: Vec<(String, String)> = (0..n)
            .map(|i| {
                (
                    node_url(8080, &format!("{prefix}{i}")),
                    "weights.lab.example.com".to_owned(),
                )
            })
            .collect();
        let (codes, stderr) = gw
            .topo
            .curl_many(Ns::Client, &requests, 500, Duration::from_secs(60))
            .unwrap();
        assert_eq!(codes, vec![200; n], "{prefix}: {stderr}");
        gw.hits(prefix)
    };

    // 80/20 over 400 requests: counter-a expects 320, standard deviation 8; the
    // tolerance is 5 standard deviations (a false failure about once in 1.7 million runs).
    let split = run("/split/", 400);
    let a = split.get("counter-a").copied().unwrap_or(0);
    let b = split.get("counter-b").copied().unwrap_or(0);
    assert_eq!(a + b, 400, "{split:?}");
    assert!((280..=360).contains(&a), "80/20 split: {split:?}");

    // Weights are relative: 1:3 over 200 requests, counter-b expects 150 (sd 6.1).
    let relative = run("/relative/", 200);
    let b = relative.get("counter-b").copied().unwrap_or(0);
    assert!((120..=180).contains(&b), "1:3 split: {relative:?}");

    // Weight 0 gets nothing.
    assert_eq!(run("/zero/", 40), hits(&[("counter-a", 40)]));

    // Subsets by Pod labels: v1 is counter-a only; v2 is counter-b and counter-c.
    assert_eq!(run("/v1/", 20), hits(&[("counter-a", 20)]));
    let v2 = run("/v2/", 20);
    assert_eq!(v2.values().sum::<usize>(), 20, "{v2:?}");
    assert!(
        v2.keys().all(|k| k == "counter-b" || k == "counter-c") && v2.len() == 2,
        "subset v2 must spread over counter-b and counter-c only: {v2:?}"
    );
    // A subset no Pod matches has no endpoints (503 UH); a subset no
    // DestinationRule defines has no cluster (503 NC).
    for (path, flag) in [("/v3/x", "UH"), ("/v9/x", "NC")] {
        let r = gw.request("weights.lab.example.com", path, &[]).unwrap();
        let entry = gw.access_entry(path).unwrap();
        assert_eq!(
            (r.status, entry.flags.as_str()),
            (503, flag),
            "{path}: {r:?} {entry:?}"
        );
    }
    let log = gw.access_log();
    assert!(
        log.iter()
            .filter(|e| e.path.starts_with("/v1/"))
            .all(|e| e.upstream_cluster == "outbound|80|v1|counter.default.svc.cluster.local"),
        "subset cluster name in the access log: {log:?}"
    );
}

/// One retry case: the request, what the client gets, how many tries the backends see.
struct RetryCase {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body_len: usize,
    status: u16,
    /// Tries per backend, or `None` to check only the total.
    by_backend: Option<&'static [(&'static str, usize)]>,
    tries: usize,
    /// Access-log `response_flags`, each of which must be present (`-`: none).
    flags: &'static [&'static str],
}

const RETRY_ROUTES: &str = r#"
- {name: default, match: [{uri: {prefix: /default/}}], route: [{destination: {host: counter}}]}
- {name: default-solo, match: [{uri: {prefix: /solo/}}], route: [{destination: {host: solo-a}}]}
- {name: disabled, match: [{uri: {prefix: /disabled/}}], retries: {attempts: 0}, route: [{destination: {host: counter}}]}
- {name: five-xx, match: [{uri: {prefix: /5xx/}}], retries: {attempts: 3, retryOn: 5xx}, route: [{destination: {host: solo-b}}]}
- {name: gateway-error, match: [{uri: {prefix: /gateway-error/}}], retries: {attempts: 2, retryOn: gateway-error}, route: [{destination: {host: solo-a}}]}
- {name: retriable-4xx, match: [{uri: {prefix: /retriable-4xx/}}], retries: {attempts: 1, retryOn: retriable-4xx}, route: [{destination: {host: solo-a}}]}
- {name: codes, match: [{uri: {prefix: /codes/}}], retries: {attempts: 2, retryOn: "retriable-status-codes,418"}, route: [{destination: {host: solo-a}}]}
- {name: reset, match: [{uri: {prefix: /reset/}}], retries: {attempts: 1, retryOn: reset}, route: [{destination: {host: solo-a}}]}
- {name: per-try, match: [{uri: {prefix: /slow-per-try/}}], retries: {attempts: 2, perTryTimeout: 300ms, retryOn: gateway-error}, route: [{destination: {host: counter}}]}
- {name: connect, match: [{uri: {prefix: /connect/}}], route: [{destination: {host: half-dead}}]}
- {name: dead, match: [{uri: {prefix: /dead/}}], route: [{destination: {host: dead}}]}
- {name: timeout, match: [{uri: {prefix: /slow-timeout/}}], timeout: 500ms, route: [{destination: {host: solo-a}}]}
- {name: no-timeout, match: [{uri: {prefix: /slow-none/}}], route: [{destination: {host: solo-a}}]}
- {name: zero-timeout, match: [{uri: {prefix: /slow-zero/}}], timeout: 0s, route: [{destination: {host: solo-a}}]}
- {name: attempts-only, match: [{uri: {prefix: /attempts-only/}}], retries: {attempts: 1}, route: [{destination: {host: counter}}]}
- {name: timeout-over-tries, match: [{uri: {prefix: /slow-budget/}}], timeout: 700ms, retries: {attempts: 5, perTryTimeout: 300ms, retryOn: gateway-error}, route: [{destination: {host: counter}}]}
"#;

#[test]
fn retries_and_timeouts() {
    if !require_root("retries_and_timeouts") {
        return;
    }
    let vs = http_virtual_service("retry", &["retry.lab.example.com"], RETRY_ROUTES);
    let gw = FeatureGateway::start(&[file("retry", vs)], &["--access-log-format", "json"]).unwrap();
    let cases = [
        RetryCase {
            what: "no retries field: Istio's default retries 503 twice, each on another endpoint",
            method: "GET",
            path: "/default/always-503?status=503",
            body_len: 0,
            status: 503,
            by_backend: Some(&[("counter-a", 1), ("counter-b", 1), ("counter-c", 1)]),
            tries: 3,
            flags: &["URX"],
        },
        RetryCase {
            what: "default policy: two 503s, then 200",
            method: "GET",
            path: "/solo/recover?fail=2&key=recover",
            body_len: 0,
            status: 200,
            by_backend: Some(&[("counter-a", 3)]),
            tries: 3,
            flags: &["-"],
        },
        RetryCase {
            what: "default policy does not retry 500",
            method: "GET",
            path: "/solo/500?status=500",
            body_len: 0,
            status: 500,
            by_backend: Some(&[("counter-a", 1)]),
            tries: 1,
            flags: &["-"],
        },
        RetryCase {
            what: "default policy does not retry a reset",
            method: "GET",
            path: "/solo/reset?fail=1&key=solo-reset&fail_with=reset",
            body_len: 0,
            status: 503,
            by_backend: Some(&[("counter-a", 1)]),
            tries: 1,
            flags: &["UC"],
        },
        RetryCase {
            what: "default policy retries gRPC UNAVAILABLE (14)",
            method: "GET",
            path: "/solo/grpc-unavailable?grpc_status=14",
            body_len: 0,
            status: 200,
            by_backend: Some(&[("counter-a", 3)]),
            tries: 3,
            flags: &["URX"],
        },
        RetryCase {
            what: "default policy retries gRPC CANCELLED (1)",
            method: "GET",
            path: "/solo/grpc-cancelled?grpc_status=1",
            body_len: 0,
            status: 200,
            by_backend: Some(&[("counter-a", 3)]),
            tries: 3,
            flags: &["URX"],
        },
        RetryCase {
            what: "default policy does not retry gRPC INTERNAL (13)",
            method: "GET",
            path: "/solo/grpc-internal?grpc_status=13",
            body_len: 0,
            status: 200,
            by_backend: Some(&[("counter-a", 1)]),
            tries: 1,
            flags: &["-"],
        },
        RetryCase {
            what: "attempts: 0 disables retries",
            method: "GET",
            path: "/disabled/always-503?status=503",
            body_len: 0,
            status: 503,
            by_backend: None,
            tries: 1,
            flags: &["-"],
        },
        RetryCase {
            what: "attempts without retryOn: Istio's default conditions (503)",
            method: "GET",
            path: "/attempts-only/x?status=503",
            body_len: 0,
            status: 503,
            by_backend: None,
            tries: 2,
            flags: &["URX"],
        },
        RetryCase {
            what: "retryOn 5xx, attempts 3: 500 tried 4 times",
            method: "GET",
            path: "/5xx/always-500?status=500",
            body_len: 0,
            status: 500,
            by_backend: Some(&[("counter-b", 4)]),
            tries: 4,
            flags: &["URX"],
        },
        RetryCase {
            what: "a retried POST carries its body again",
            method: "POST",
            path: "/5xx/body?fail=1&key=body",
            body_len: 10_000,
            status: 200,
            by_backend: Some(&[("counter-b", 2)]),
            tries: 2,
            flags: &["-"],
        },
        RetryCase {
            what: "a 64 KiB body is still kept for the retry",
            method: "POST",
            path: "/5xx/body-64k?fail=1&key=body-64k",
            body_len: 64 * 1024,
            status: 200,
            by_backend: Some(&[("counter-b", 2)]),
            tries: 2,
            flags: &["-"],
        },
        RetryCase {
            what: "retryOn gateway-error retries 502",
            method: "GET",
            path: "/gateway-error/502?status=502",
            body_len: 0,
            status: 502,
            by_backend: Some(&[("counter-a", 3)]),
            tries: 3,
            flags: &["URX"],
        },
        RetryCase {
            what: "retryOn gateway-error does not retry 500",
            method: "GET",
            path: "/gateway-error/500?status=500",
            body_len: 0,
            status: 500,
            by_backend: Some(&[("counter-a", 1)]),
            tries: 1,
            flags: &["-"],
        },
        RetryCase {
            what: "retryOn retriable-4xx retries 409",
            method: "GET",
            path: "/retriable-4xx/409?status=409",
            body_len: 0,
            status: 409,
            by_backend: Some(&[("counter-a", 2)]),
            tries: 2,
            flags: &["URX"],
        },
        RetryCase {
            what: "retryOn with a status code retries that code",
            method: "GET",
            path: "/codes/418?status=418",
            body_len: 0,
            status: 418,
            by_backend: Some(&[("counter-a", 3)]),
            tries: 3,
            flags: &["URX"],
        },
        RetryCase {
            what: "retryOn reset retries a connection closed without an answer",
            method: "GET",
            path: "/reset/once?fail=1&key=reset&fail_with=reset",
            body_len: 0,
            status: 200,
            by_backend: Some(&[("counter-a", 2)]),
            tries: 2,
            flags: &["-"],
        },
        RetryCase {
            what: "perTryTimeout: each try times out, the next goes to another endpoint",
            method: "GET",
            path: "/slow-per-try/x?ms=1500",
            body_len: 0,
            status: 504,
            by_backend: Some(&[("counter-a", 1), ("counter-b", 1), ("counter-c", 1)]),
            tries: 3,
            flags: &["UT", "URX"],
        },
        RetryCase {
            what: "connect failure on every endpoint: UF,URX",
            method: "GET",
            path: "/dead/x",
            body_len: 0,
            status: 503,
            by_backend: None,
            tries: 0,
            flags: &["UF", "URX"],
        },
    ];
    let mut failures = Vec::new();
    let body_file = gw.topo.log_dir().join("body.bin");
    for case in &cases {
        let marker = case.path.split('?').next().unwrap_or(case.path);
        let mut args = vec!["-X", case.method];
        let data;
        if case.body_len > 0 {
            std::fs::write(&body_file, vec![b'x'; case.body_len]).unwrap();
            data = format!("@{}", body_file.display());
            args.extend(["--data-binary", data.as_str()]);
        }
        let r = gw
            .request("retry.lab.example.com", case.path, &args)
            .unwrap();
        let seen = gw.hits(marker);
        let total: usize = seen.values().sum();
        let entry = gw.access_entry(case.path).unwrap();
        let flags_ok = case
            .flags
            .iter()
            .all(|f| entry.flags.split(',').any(|g| g == *f));
        let backends_ok = case.by_backend.is_none_or(|want| seen == hits(want));
        if r.status != case.status || total != case.tries || !backends_ok || !flags_ok {
            failures.push(format!(
                "{}: {} {}\n  want {} after {} tries {:?}, flags {:?}\n  got  {} after {total} tries {seen:?}, flags {:?}; backend lines: {:?}",
                case.what,
                case.method,
                case.path,
                case.status,
                case.tries,
                case.by_backend,
                case.flags,
                r.status,
                entry.flags,
                gw.hit_lines(marker),
            ));
        }
        if case.body_len > 0 {
            let lines = gw.hit_lines(marker);
            let body = format!("body={}", case.body_len);
            if !lines.iter().all(|l| l.contains(&body)) {
                failures.push(format!(
                    "{}: every try must carry the {}-byte body: {lines:?}",
                    case.what, case.body_len
                ));
            }
        }
    }

    // The JSON access log names the route and the cluster.
    let entry = gw.access_entry(cases[0].path).unwrap();
    if entry.route_name != "default"
        || entry.upstream_cluster != "outbound|80||counter.default.svc.cluster.local"
    {
        failures.push(format!(
            "JSON access log of {}: want route_name default, upstream_cluster \
             outbound|80||counter.default.svc.cluster.local; got {entry:?}",
            cases[0].path
        ));
    }

    // Connect failures are retried onto the endpoint that listens (`half-dead` is the
    // dead address first, then counter-a), and counted in /stats.
    let before = gw.stats().unwrap();
    for i in 0..4 {
        let path = format!("/connect/{i}");
        let r = gw.request("retry.lab.example.com", &path, &[]).unwrap();
        let entry = gw.access_entry(&path).unwrap();
        if r.status != 200 || entry.upstream_host != "198.18.1.10:8080" {
            failures.push(format!(
                "connect failure retried: {path}: got {}, access log {entry:?}",
                r.status
            ));
        }
    }
    let after = gw.stats().unwrap();
    let delta = |stat: &str| {
        cluster_stat(&after, "half-dead", stat) - cluster_stat(&before, "half-dead", stat)
    };
    if delta("upstream_rq_retry") < 1 || delta("upstream_rq_retry_success") < 1 {
        failures.push(format!(
            "/stats of half-dead: upstream_rq_retry +{}, upstream_rq_retry_success +{}",
            delta("upstream_rq_retry"),
            delta("upstream_rq_retry_success")
        ));
    }
    // The cases above on solo-b: 3 retries ending in 500 (limit exceeded), then two
    // retries that succeeded.
    let stat = |s: &str| cluster_stat(&after, "solo-b", s);
    if (
        stat("upstream_rq_retry"),
        stat("upstream_rq_retry_success"),
        stat("upstream_rq_retry_limit_exceeded"),
    ) != (5, 2, 1)
    {
        failures.push(format!(
            "/stats of solo-b: want retry 5, success 2, limit_exceeded 1; got {}, {}, {}",
            stat("upstream_rq_retry"),
            stat("upstream_rq_retry_success"),
            stat("upstream_rq_retry_limit_exceeded")
        ));
    }

    // timeout: 504 with UT after 500 ms, long before the backend answers.
    let started = Instant::now();
    let path = "/slow-timeout/x?ms=3000";
    let r = gw.request("retry.lab.example.com", path, &[]).unwrap();
    let took = started.elapsed();
    let entry = gw.access_entry(path).unwrap();
    if r.status != 504 || entry.flags != "UT" || took >= Duration::from_millis(2000) {
        failures.push(format!(
            "timeout 500ms: want 504 UT within 2 s, got {} {} after {took:?}",
            r.status, entry.flags
        ));
    }
    // The route timeout bounds all tries together.
    let started = Instant::now();
    let path = "/slow-budget/x?ms=3000";
    let r = gw.request("retry.lab.example.com", path, &[]).unwrap();
    let took = started.elapsed();
    let entry = gw.access_entry(path).unwrap();
    let tries = gw.hit_lines("/slow-budget/").len();
    if r.status != 504
        || !entry.flags.split(',').any(|f| f == "UT")
        || took >= Duration::from_millis(1500)
        || !(2..=3).contains(&tries)
    {
        failures.push(format!(
            "timeout 700ms over perTryTimeout 300ms: want 504 UT within 1.5 s after 2-3 tries, \
             got {} {} after {took:?} and {tries} tries",
            r.status, entry.flags
        ));
    }
    // No timeout on the route, or `0s`: a 1.5 s answer arrives.
    for path in ["/slow-none/x?ms=1500", "/slow-zero/x?ms=1500"] {
        let r = gw.request("retry.lab.example.com", path, &[]).unwrap();
        if r.status != 200 {
            failures.push(format!("{path}: no route timeout, want 200, got {r:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn faults_mirrors_and_cors() {
    if !require_root("faults_mirrors_and_cors") {
        return;
    }
    let fault = http_virtual_service(
        "fault",
        &["fault.lab.example.com"],
        r#"
- {name: delay, match: [{uri: {prefix: /delay}}], fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}, route: [{destination: {host: solo-a}}]}
- {name: abort-half, match: [{uri: {prefix: /abort-half}}], fault: {abort: {httpStatus: 503, percentage: {value: 50}}}, route: [{destination: {host: solo-a}}]}
- {name: abort, match: [{uri: {prefix: /abort}}], fault: {abort: {httpStatus: 418, percentage: {value: 100}}}, route: [{destination: {host: solo-a}}]}
- {name: grpc-abort, match: [{uri: {prefix: /grpc-abort}}], fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}, route: [{destination: {host: solo-a}}]}
- {name: no-percentage, match: [{uri: {prefix: /no-percentage}}], fault: {abort: {httpStatus: 500}}, route: [{destination: {host: solo-a}}]}
"#,
    );
    let mirror = http_virtual_service(
        "mirror",
        &["mirror.lab.example.com"],
        r#"
- match: [{uri: {prefix: /all}}]
  route: [{destination: {host: solo-a}}]
  mirror: {host: shadow}
  mirrorPercentage: {value: 100}
- match: [{uri: {prefix: /implicit}}]
  route: [{destination: {host: solo-a}}]
  mirror: {host: shadow}
- match: [{uri: {prefix: /half}}]
  route: [{destination: {host: solo-a}}]
  mirrors:
  - {destination: {host: shadow}, percentage: {value: 50}}
- match: [{uri: {prefix: /none}}]
  route: [{destination: {host: solo-a}}]
  mirror: {host: shadow}
  mirrorPercentage: {value: 0}
"#,
    );
    let cors = http_virtual_service(
        "cors",
        &["cors.lab.example.com"],
        r#"
- match: [{uri: {prefix: /ignore}}]
  corsPolicy:
    allowOrigins: [{exact: "https://app.example.com"}]
    allowMethods: [GET]
    unmatchedPreflights: IGNORE
  route: [{destination: {host: solo-a}}]
- corsPolicy:
    allowOrigins: [{exact: "https://app.example.com"}, {regex: "https://.*\\.trusted\\.example"}]
    allowMethods: [GET, POST, PUT]
    allowHeaders: [x-custom, content-type]
    exposeHeaders: [x-exposed]
    maxAge: 24h
    allowCredentials: true
  route: [{destination: {host: solo-a}}]
"#,
    );
    let gw = FeatureGateway::start(
        &[
            file("fault", fault),
            file("mirror", mirror),
            file("cors", cors),
        ],
        &[],
    )
    .unwrap();
    let mut failures: Vec<String> = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{what}: {detail}"));
        }
    };
    let fault_host = "fault.lab.example.com";

    // delay: the backend answers, 1 s later than it would.
    let started = Instant::now();
    let r = gw.request(fault_host, "/delay/x", &[]).unwrap();
    let took = started.elapsed();
    let entry = gw.access_entry("/delay/x").unwrap();
    check(
        "fault.delay 1s",
        r.status == 200 && took >= Duration::from_millis(1000) && entry.flags == "DI",
        format!(
            "want 200 after >= 1 s with DI, got {} after {took:?} with {}",
            r.status, entry.flags
        ),
    );
    // abort: answered at the gateway.
    let r = gw.request(fault_host, "/abort/x", &[]).unwrap();
    let entry = gw.access_entry("/abort/x").unwrap();
    check(
        "fault.abort 418",
        r.status == 418
            && r.body == "fault filter abort"
            && entry.flags == "FI"
            && gw.hits("/abort/x").is_empty(),
        format!(
            "got {} {:?} flags {} backend {:?}",
            r.status,
            r.body,
            entry.flags,
            gw.hits("/abort/x")
        ),
    );
    let r = gw.request(fault_host, "/grpc-abort/x", &[]).unwrap();
    check(
        "fault.abort grpcStatus UNAVAILABLE",
        r.status == 200 && r.header("grpc-status") == Some("14"),
        format!("{r:?}"),
    );
    // Without a percentage nothing is injected.
    let r = gw.request(fault_host, "/no-percentage/x", &[]).unwrap();
    check(
        "fault.abort without percentage",
        r.status == 200 && r.json().is_ok_and(|j| j["app"] == "counter"),
        format!("{r:?}"),
    );
    // 50 %: over 200 requests between 70 and 130 aborted (sd 7.1, > 4 sd).
    let requests: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                node_url(8080, &format!("/abort-half/{i}")),
                fault_host.to_owned(),
            )
        })
        .collect();
    let (codes, stderr) = gw
        .topo
        .curl_many(Ns::Client, &requests, 500, Duration::from_secs(60))
        .unwrap();
    let aborted = codes.iter().filter(|c| **c == 503).count();
    let passed = codes.iter().filter(|c| **c == 200).count();
    check(
        "fault.abort 50%",
        aborted + passed == 200
            && (70..=130).contains(&aborted)
            && gw.hit_lines("/abort-half/").len() == passed,
        format!(
            "{aborted} aborted, {passed} passed, backend saw {}; {stderr}",
            gw.hit_lines("/abort-half/").len()
        ),
    );

    // mirror 100 %: the copy reaches `shadow` with Host `<host>-shadow`, the answer
    // comes from the primary; a mirror that takes 3 s does not slow the answer.
    let mirror_host = "mirror.lab.example.com";
    let started = Instant::now();
    let r = gw
        .request(
            mirror_host,
            "/all/slow-mirror?delay_on=counter-m&ms=3000",
            &[],
        )
        .unwrap();
    let took = started.elapsed();
    check(
        "mirror answer comes from the primary, not slowed by the mirror",
        r.status == 200
            && r.json().is_ok_and(|j| j["instance"] == "counter-a")
            && took < Duration::from_millis(1500),
        format!("got {} after {took:?}: {}", r.status, r.body),
    );
    let r = gw
        .request(
            mirror_host,
            "/all/post",
            &["-X", "POST", "--data-binary", "0123456789"],
        )
        .unwrap();
    check("mirror POST", r.status == 200, format!("{r:?}"));
    let r = gw
        .request(&format!("{mirror_host}:8080"), "/all/with-port", &[])
        .unwrap();
    check("mirror, Host with port", r.status == 200, format!("{r:?}"));
    let lines = gw.wait_hits("/all/", 6, Duration::from_secs(5));
    let shadow: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("counter counter-m:"))
        .collect();
    check(
        "mirror copies reach the shadow with Host -shadow and the body",
        shadow.len() == 3
            && shadow.iter().all(|l| {
                l.contains(" host=mirror.lab.example.com-shadow ")
                    || l.contains("/all/with-port host=mirror.lab.example.com-shadow:8080 ")
            })
            && shadow
                .iter()
                .any(|l| l.contains("/all/post") && l.contains(" body=10 ")),
        format!("{lines:?}"),
    );
    // `mirror` without `mirrorPercentage` mirrors every request (Istio's default).
    let r = gw.request(mirror_host, "/implicit/x", &[]).unwrap();
    let lines = gw.wait_hits("/implicit/x", 2, Duration::from_secs(5));
    check(
        "mirror without mirrorPercentage",
        r.status == 200 && lines.iter().any(|l| l.starts_with("counter counter-m: ")),
        format!("{lines:?}"),
    );
    // mirrors[] 50 % over 200 requests; mirrorPercentage 0 mirrors nothing.
    let requests: Vec<(String, String)> = (0..200)
        .map(|i| {
            (
                node_url(8080, &format!("/half/{i}")),
                mirror_host.to_owned(),
            )
        })
        .chain((0..20).map(|i| {
            (
                node_url(8080, &format!("/none/{i}")),
                mirror_host.to_owned(),
            )
        }))
        .collect();
    let (codes, stderr) = gw
        .topo
        .curl_many(Ns::Client, &requests, 500, Duration::from_secs(60))
        .unwrap();
    check(
        "mirror load",
        codes == vec![200; 220],
        format!("{codes:?} {stderr}"),
    );
    // Mirrored requests finish on their own; give them a moment.
    std::thread::sleep(Duration::from_millis(500));
    let half = gw.hits("/half/");
    let mirrored = half.get("counter-m").copied().unwrap_or(0);
    check(
        "mirrors[] percentage 50",
        half.get("counter-a") == Some(&200) && (70..=130).contains(&mirrored),
        format!("{half:?}"),
    );
    let none = gw.hits("/none/");
    check(
        "mirrorPercentage 0",
        none == hits(&[("counter-a", 20)]),
        format!("{none:?}"),
    );

    // CORS: a preflight from an allowed origin is answered here, with the policy.
    let cors_host = "cors.lab.example.com";
    let preflight = |path: &str, origin: &str| {
        gw.request(
            cors_host,
            path,
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: PUT",
                "-H",
                "Access-Control-Request-Headers: x-custom",
            ],
        )
        .unwrap()
    };
    let r = preflight("/pre/allowed", "https://app.example.com");
    check(
        "CORS preflight, allowed origin",
        r.status == 200
            && r.header("access-control-allow-origin") == Some("https://app.example.com")
            && r.header("access-control-allow-methods")
                .is_some_and(|m| m.contains("PUT"))
            && r.header("access-control-allow-headers")
                .is_some_and(|h| h.contains("x-custom"))
            && r.header("access-control-max-age") == Some("86400")
            && r.header("access-control-allow-credentials") == Some("true")
            && gw.hits("/pre/allowed").is_empty(),
        format!(
            "got {} {:?}; backend saw {:?}",
            r.status,
            r.headers,
            gw.hits("/pre/allowed")
        ),
    );
    let r = preflight("/pre/regex", "https://ui.trusted.example");
    check(
        "CORS preflight, origin allowed by regex",
        r.header("access-control-allow-origin") == Some("https://ui.trusted.example"),
        format!("{:?}", r.headers),
    );
    // A disallowed origin: no CORS headers; the preflight goes to the backend
    // (unmatchedPreflights FORWARD, the default) or is answered here (IGNORE).
    let r = preflight("/pre/denied", "https://evil.example.com");
    check(
        "CORS preflight, disallowed origin, forwarded",
        r.header("access-control-allow-origin").is_none()
            && r.json().is_ok_and(|j| j["method"] == "OPTIONS"),
        format!("{r:?}"),
    );
    let r = preflight("/ignore/pre", "https://evil.example.com");
    check(
        "CORS preflight, disallowed origin, IGNORE",
        r.status == 200
            && r.header("access-control-allow-origin").is_none()
            && gw.hits("/ignore/pre").is_empty(),
        format!("{r:?}; backend saw {:?}", gw.hits("/ignore/pre")),
    );
    // Simple requests: the backend answers, the gateway adds the CORS headers.
    let r = gw
        .request(
            cors_host,
            "/simple/allowed",
            &["-H", "Origin: https://app.example.com"],
        )
        .unwrap();
    check(
        "CORS simple request, allowed origin",
        r.json().is_ok_and(|j| j["app"] == "counter")
            && r.header("access-control-allow-origin") == Some("https://app.example.com")
            && r.header("access-control-expose-headers") == Some("x-exposed"),
        format!("{r:?}"),
    );
    let r = gw
        .request(
            cors_host,
            "/simple/denied",
            &["-H", "Origin: https://evil.example.com"],
        )
        .unwrap();
    check(
        "CORS simple request, disallowed origin",
        r.status == 200
            && !r
                .headers
                .iter()
                .any(|(n, _)| n.starts_with("access-control-")),
        format!("{r:?}"),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The root VirtualService of the delegate tests (in `default`) and its delegate
/// `team/team-routes` (no hosts, no gateways), as Istio's delegation example has them.
fn delegate_files() -> Vec<(String, String)> {
    let root = http_virtual_service(
        "root",
        &["delegate.lab.example.com"],
        r#"
- name: team
  match: [{uri: {prefix: /team}}]
  timeout: 300ms
  headers: {response: {set: {x-from-root: "yes"}}}
  delegate: {name: team-routes, namespace: team}
- name: fallback
  directResponse: {status: 404, body: {string: root-fallback}}
"#,
    );
    let delegate = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: team-routes
  namespace: team
spec:
  http:
  - name: users
    match: [{uri: {prefix: /team/users}, headers: {x-user: {exact: jason}}}]
    route: [{destination: {host: solo-b.default.svc.cluster.local}}]
  # Not inside the root's /team: left out, as Istio does.
  - name: outside
    match: [{uri: {prefix: /other}}]
    route: [{destination: {host: solo-b.default.svc.cluster.local}}]
  - name: own-headers
    match: [{uri: {prefix: /team/own}}]
    headers: {response: {set: {x-from-delegate: "yes"}}}
    route: [{destination: {host: solo-a.default.svc.cluster.local}}]
  - name: rest
    route: [{destination: {host: solo-a.default.svc.cluster.local}}]
"#;
    vec![file("root", root), file("delegate", delegate.to_owned())]
}

/// `delegate`: the delegate's routes take the root route's place, each match merged
/// with the root's (the root's uri prefix and the delegate's header together), and a
/// delegate route outside the root's match is left out.
#[test]
fn delegate_routes_merge_into_the_root() {
    if !require_root("delegate_routes_merge_into_the_root") {
        return;
    }
    let gw = FeatureGateway::start(&delegate_files(), &[]).unwrap();
    let host = "delegate.lab.example.com";
    let mut failures = Vec::new();
    // (path, request headers, status, instance that answers or the body)
    let cases: [(&str, &[&str], u16, &str); 5] = [
        ("/team/users", &["x-user: jason"], 200, "counter-b"),
        ("/team/users", &[], 200, "counter-a"),
        ("/team/anything", &[], 200, "counter-a"),
        ("/other", &[], 404, "root-fallback"),
        ("/elsewhere", &["x-user: jason"], 404, "root-fallback"),
    ];
    for (path, headers, status, want) in cases {
        let mut args = Vec::new();
        for h in headers {
            args.extend(["-H", *h]);
        }
        let r = gw.request(host, path, &args).unwrap();
        let got = r
            .json()
            .ok()
            .and_then(|j| j["instance"].as_str().map(str::to_owned))
            .unwrap_or_else(|| r.body.clone());
        if r.status != status || got != want {
            failures.push(format!(
                "{path} {headers:?}: want {status} {want}, got {} {got}",
                r.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Istio's `mergeHTTPRoute`: a delegate route that leaves `timeout`, `headers`,
/// `retries`, `fault`, `rewrite`, `mirror` or `corsPolicy` unset takes the root
/// route's, and the merged route is named `<root name>-<delegate route name>`.
#[test]
fn delegate_inherits_the_root_route_policies() {
    if !require_root("delegate_inherits_the_root_route_policies") {
        return;
    }
    let gw = FeatureGateway::start(&delegate_files(), &[]).unwrap();
    let host = "delegate.lab.example.com";
    let mut failures = Vec::new();
    // The root's response header, unless the delegate route sets headers itself.
    for (path, root_header, own_header) in [
        ("/team/anything", Some("yes"), None),
        ("/team/own", None, Some("yes")),
    ] {
        let r = gw.request(host, path, &[]).unwrap();
        if r.header("x-from-root") != root_header || r.header("x-from-delegate") != own_header {
            failures.push(format!(
                "{path}: want x-from-root {root_header:?}, x-from-delegate {own_header:?}; got {:?}",
                r.headers
            ));
        }
    }
    // The root's timeout (300 ms) against an answer that takes 2 s.
    let path = "/team/slow?delay_on=counter-a&ms=2000";
    let r = gw.request(host, path, &[]).unwrap();
    if r.status != 504 {
        failures.push(format!(
            "{path}: want 504 after the root's 300ms timeout, got {}",
            r.status
        ));
    }
    // The merged route's name.
    let path = "/team/users/named";
    gw.request(host, path, &["-H", "x-user: jason"]).unwrap();
    let entry = gw.access_entry(path).unwrap();
    if entry.route_name != "team-users" {
        failures.push(format!(
            "{path}: want route_name team-users, got {:?}",
            entry.route_name
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// The tests below each check one detail where Istio's gateway (Envoy) and
// ingressd may part ways; each has a gateway of its own so that it passes or fails alone.

/// `derivePort: FROM_REQUEST_PORT` at a gateway: Istio writes the port of the Gateway
/// server the route is built for (here 80) into Envoy's `port_redirect`, whichever node
/// port or Host port the client used (`setRequestRedirectPort` / `translateRedirect`
/// in istio/pilot). `:80` and no port are the same URL for http.
#[test]
fn redirect_derive_port_is_the_gateway_server_port() {
    if !require_root("redirect_derive_port_is_the_gateway_server_port") {
        return;
    }
    let vs = http_virtual_service(
        "derive",
        &["derive.lab.example.com"],
        "- {match: [{uri: {prefix: /r-derive}}], redirect: {uri: /derived, derivePort: FROM_REQUEST_PORT}}\n",
    );
    let gw = FeatureGateway::start(&[file("derive", vs)], &[]).unwrap();
    for (port, host) in [
        (30080, "derive.lab.example.com:30080"),
        (8080, "derive.lab.example.com:8080"),
        (8080, "derive.lab.example.com"),
    ] {
        let r = gw.request_on(port, host, "/r-derive?k=v", &[]).unwrap();
        let location = r.header("location").unwrap_or_default().to_owned();
        assert!(
            r.status == 301
                && split_url(&location)
                    == Some((
                        "http".into(),
                        "derive.lab.example.com".into(),
                        80,
                        "/derived?k=v".into(),
                    )),
            "Host {host} on node port {port}: want 301 to \
             http://derive.lab.example.com[:80]/derived?k=v (the Gateway server port), \
             got {} {location:?}",
            r.status
        );
    }
}

/// Envoy applies a route's `response_headers_to_add` (Istio's `headers.response`) to
/// the local replies of the router as well (the filter manager finalizes the route's
/// response headers on every local reply once a route is chosen): a route timeout's 504
/// and a connect failure's 503 carry them, like an upstream answer.
#[test]
fn route_response_headers_apply_to_local_replies() {
    if !require_root("route_response_headers_apply_to_local_replies") {
        return;
    }
    let vs = http_virtual_service(
        "local-reply",
        &["local-reply.lab.example.com"],
        r#"
- match: [{uri: {prefix: /slow-timeout}}]
  timeout: 300ms
  headers: {response: {set: {x-route-header: "yes"}}}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /dead}}]
  headers: {response: {set: {x-route-header: "yes"}}}
  route: [{destination: {host: dead}}]
- headers: {response: {set: {x-route-header: "yes"}}}
  route: [{destination: {host: counter}}]
"#,
    );
    let gw = FeatureGateway::start(&[file("local-reply", vs)], &[]).unwrap();
    let mut failures = Vec::new();
    for (path, status, flags) in [
        ("/upstream", 200, "-"),
        ("/slow-timeout?ms=2000", 504, "UT"),
        ("/dead", 503, "UF,URX"),
    ] {
        let r = gw
            .request("local-reply.lab.example.com", path, &[])
            .unwrap();
        let entry = gw.access_entry(path).unwrap();
        if (r.status, entry.flags.as_str()) != (status, flags)
            || r.header("x-route-header") != Some("yes")
        {
            failures.push(format!(
                "{path}: want {status} {flags} with x-route-header: yes, got {} {} {:?}",
                r.status, entry.flags, r.headers
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Istio turns on Envoy's `include_request_attempt_count` for the gateway's virtual
/// hosts (`/config_dump` says so here too): every upstream request carries
/// `x-envoy-attempt-count`, 1 for the first try, 3 for the second retry.
#[test]
fn upstream_requests_carry_the_attempt_count() {
    if !require_root("upstream_requests_carry_the_attempt_count") {
        return;
    }
    let vs = http_virtual_service(
        "attempts",
        &["attempts.lab.example.com"],
        "- {route: [{destination: {host: solo-a}}]}\n",
    );
    let gw = FeatureGateway::start(&[file("attempts", vs)], &[]).unwrap();
    let mut failures = Vec::new();
    for (path, attempt) in [("/first", "1"), ("/third?fail=2&key=third", "3")] {
        let r = gw.request("attempts.lab.example.com", path, &[]).unwrap();
        let json = r.json().unwrap();
        let got = &json["headers"]["x-envoy-attempt-count"];
        if r.status != 200 || got != attempt {
            failures.push(format!(
                "{path}: want 200 with x-envoy-attempt-count {attempt} at the backend, got {} {got}",
                r.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// With one destination, Istio writes the route's authority (`rewrite.authority`, or
/// `host` in the route's `headers.request.set`) as the route's `host_rewrite_literal`
/// and lets a destination's `host` set apply only when the route has none
/// (`processDestination` in istio/pilot's route.go): the route's authority wins.
#[test]
fn route_authority_beats_the_destination_host_set() {
    if !require_root("route_authority_beats_the_destination_host_set") {
        return;
    }
    let vs = http_virtual_service(
        "authority",
        &["authority.lab.example.com"],
        r#"
- match: [{uri: {prefix: /rewrite}}]
  rewrite: {authority: route-rewrite.example.com}
  route:
  - destination: {host: solo-a}
    headers: {request: {set: {host: destination.example.com}}}
- match: [{uri: {prefix: /set}}]
  headers: {request: {set: {host: route-set.example.com}}}
  route:
  - destination: {host: solo-a}
    headers: {request: {set: {host: destination.example.com}}}
- route:
  - destination: {host: solo-a}
    headers: {request: {set: {host: destination.example.com}}}
"#,
    );
    let gw = FeatureGateway::start(&[file("authority", vs)], &[]).unwrap();
    let mut failures = Vec::new();
    for (path, want) in [
        ("/rewrite", "route-rewrite.example.com"),
        ("/set", "route-set.example.com"),
        ("/other", "destination.example.com"),
    ] {
        let r = gw.request("authority.lab.example.com", path, &[]).unwrap();
        let json = r.json().unwrap();
        if json["host"] != want {
            failures.push(format!(
                "{path}: want Host {want} at the backend, got {}",
                json["host"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A fault with both a delay and an abort applies both, and the access log says so
/// with both flags, in Envoy's order: `DI,FI`.
#[test]
fn fault_delay_and_abort_log_both_flags() {
    if !require_root("fault_delay_and_abort_log_both_flags") {
        return;
    }
    let vs = http_virtual_service(
        "delay-abort",
        &["delay-abort.lab.example.com"],
        "- {fault: {delay: {fixedDelay: 200ms, percentage: {value: 100}}, abort: {httpStatus: 503, percentage: {value: 100}}}, route: [{destination: {host: solo-a}}]}\n",
    );
    let gw = FeatureGateway::start(&[file("delay-abort", vs)], &[]).unwrap();
    let started = Instant::now();
    let r = gw
        .request("delay-abort.lab.example.com", "/x", &[])
        .unwrap();
    let took = started.elapsed();
    let entry = gw.access_entry("/x").unwrap();
    assert!(
        r.status == 503
            && r.body == "fault filter abort"
            && took >= Duration::from_millis(200)
            && entry.flags == "DI,FI",
        "want 503 after >= 200 ms with flags DI,FI, got {} {:?} after {took:?} with {}",
        r.status,
        r.body,
        entry.flags
    );
    assert!(gw.hits("/x").is_empty(), "{:?}", gw.hits("/x"));
}

#[test]
fn check_names_the_invalid_http_fields() {
    let vs = http_virtual_service(
        "broken",
        &["broken.lab.example.com"],
        r#"
- match: [{uri: {prefix: /a}}]
  headers: {request: {set: {"bad header": x}}}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /b}}]
  retries: {attempts: 2, retryOn: "5xx,sometimes"}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /c}}]
  redirect: {uri: /x, redirectCode: 305}
- match: [{uri: {prefix: /d}}]
  rewrite: {uri: /x, uriRegexRewrite: {match: "^/d", rewrite: /y}}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /e}}]
  fault: {abort: {httpStatus: 500, percentage: {value: 150}}}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /f}}]
  rewrite: {uriRegexRewrite: {match: "/(unclosed", rewrite: /y}}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /g}}]
  route:
  - {destination: {host: counter}, weight: -10}
  - {destination: {host: counter}, weight: 110}
- match: [{uri: {prefix: /h}}]
  corsPolicy: {allowOrigins: [{exact: "https://a.example"}], unmatchedPreflights: SOMETIMES}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /i}}]
  directResponse: {status: 700}
- match: [{uri: {prefix: /j}}]
  retries: {attempts: 2, perTryTimeout: soon}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /k}}]
  fault: {abort: {grpcStatus: NOT_A_STATUS, percentage: {value: 10}}}
  route: [{destination: {host: counter}}]
- match: [{uri: {prefix: /l}}]
  redirect: {uri: /x, port: 8443, derivePort: FROM_REQUEST_PORT}
"#,
    );
    let dir = ConfigDir::temp().unwrap();
    dir.write("broken-virtualservice.yaml", &vs).unwrap();
    let out = ingressd_cli(&["check", "--config", &dir.path().to_string_lossy()]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    for field in [
        "spec.http[0].headers.request.set.bad header",
        "spec.http[1].retries.retryOn",
        "spec.http[2].redirect.redirectCode",
        "spec.http[3].rewrite",
        "spec.http[4].fault.abort.percentage",
        "spec.http[5].rewrite.uriRegexRewrite.match",
        "spec.http[6].route[0].weight",
        "spec.http[7].corsPolicy.unmatchedPreflights",
        "spec.http[8].directResponse.status",
        "spec.http[9].retries.perTryTimeout",
        "spec.http[10].fault.abort.grpcStatus",
        "spec.http[11].redirect.derivePort",
    ] {
        let line = text.lines().find(|l| l.contains(field));
        assert!(
            line.is_some_and(|l| l.starts_with("error:")
                && l.contains("broken-virtualservice.yaml")
                && l.contains("default/broken")),
            "no error naming the file, the resource and {field}:\n{text}"
        );
    }

    // A fault without a percentage is valid but injects nothing: a warning, exit 0.
    let vs = http_virtual_service(
        "no-percentage",
        &["np.lab.example.com"],
        "- {fault: {abort: {httpStatus: 500}, delay: {fixedDelay: 1s}}, route: [{destination: {host: counter}}]}\n",
    );
    let dir = ConfigDir::temp().unwrap();
    dir.write("np.yaml", &vs).unwrap();
    let out = ingressd_cli(&["check", "--config", &dir.path().to_string_lossy()]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    for field in [
        "spec.http[0].fault.abort.percentage",
        "spec.http[0].fault.delay.percentage",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("warning:") && l.contains(field)),
            "no warning about {field}:\n{text}"
        );
    }
}
