//! TLS at the gateway (issue 4), end to end with real clients: curl and `openssl
//! s_client` in the client namespace, `ingressd` terminating (or passing through) TLS in
//! the node namespace, counters, a TCP echo and `openssl s_server` in the pods namespace.
//! Certificates are made per test with rcgen (`ingressd_tests::tls`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ingressd_tests::config::{
    COUNTER_HOST, counter_virtual_service, service_with_endpoints, virtual_service,
};
use ingressd_tests::fixture::sock;
use ingressd_tests::tls::{
    Ca, HttpsResult, KeyAlg, KeyFormat, Leaf, PASS_A, PASS_B, PASS_PORT, SClient, SecretVolume,
    SniRoute, TlsGateway, cacert_secret, gateway, generic_secret, normalize_serial,
    passthrough_virtual_service, rename_over, server, tcp_virtual_service, tls_secret,
};
use ingressd_tests::{
    ADMIN_ADDR, ConfigDir, Ns, Topology, ingressd_cli, node, node_url, require_root,
};

/// How long a certificate change may take to reach new handshakes: the contract says
/// about 2 s (inotify, or the daemon's 2 s re-read at worst); 1 s of slack for a
/// loaded machine.
const ROTATE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a broken change is given to (wrongly) take effect before we check that it
/// did not.
const SETTLE: Duration = Duration::from_millis(2500);

/// A fresh directory for one test's certificates (outside the config directory).
fn certs_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ingressd-tls-certs-")
        .tempdir()
        .expect("temp dir for certificates")
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// `("gateway.yaml", Gateway with servers)`.
fn gateway_file(servers: &[String]) -> (String, String) {
    ("gateway.yaml".to_owned(), gateway(servers))
}

/// A VirtualService file routing `host` (all paths) to the counters.
fn counter_vs_file(name: &str, host: &str) -> (String, String) {
    (
        format!("{name}-virtualservice.yaml"),
        virtual_service(name, host, "counter", 80),
    )
}

/// The tls fields of a SIMPLE server with certificate files.
fn simple_files(cert: &Path, key: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("mode", "SIMPLE".to_owned()),
        ("serverCertificate", path_str(cert)),
        ("privateKey", path_str(key)),
    ]
}

/// [`server`] with owned tls values.
fn https_server(
    port: u16,
    name: &str,
    protocol: &str,
    hosts: &[&str],
    tls: &[(&str, String)],
) -> String {
    let fields: Vec<(&str, &str)> = tls.iter().map(|(k, v)| (*k, v.as_str())).collect();
    server(port, name, protocol, hosts, Some(&fields))
}

/// curl args trusting `ca`.
fn trust(ca: &Path) -> Vec<String> {
    vec!["--cacert".to_owned(), path_str(ca)]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `curl https://host:port/path` that must answer 200 from a counter; returns the
/// counter's JSON.
fn must_reach_counter(
    topo: &Topology,
    host: &str,
    port: u16,
    path: &str,
    extra: &[&str],
) -> serde_json::Value {
    let r = topo
        .curl_https(host, port, path, extra)
        .expect("running curl");
    assert!(r.ok(), "https://{host}:{port}{path} failed: {r:?}");
    assert_eq!(r.status, 200, "https://{host}:{port}{path}: {r:?}");
    let json = r.json().expect("the counter answers JSON");
    assert_eq!(json["app"], "counter", "{json}");
    json
}

/// Asserts that curl got no HTTP response: the TLS handshake (or the connection
/// right after it) failed.
fn must_fail(r: &HttpsResult, what: &str) {
    assert!(
        r.exit_code != Some(0) && r.status == 0,
        "{what}: expected the TLS connection to fail, got {r:?}"
    );
}

/// `s_client -servername <sni> [-CAfile ca] <extra>` to `port`, no input.
fn s_client(topo: &Topology, port: u16, sni: &str, extra: &[&str]) -> SClient {
    let mut a = vec!["-servername", sni];
    a.extend_from_slice(extra);
    topo.s_client(port, &a, "", Duration::ZERO)
        .expect("running openssl s_client")
}

fn assert_presented(s: &SClient, leaf: &Leaf, what: &str) {
    assert!(s.handshake_ok(), "{what}: handshake failed\n{}", s.report());
    assert!(
        s.presented(leaf),
        "{what}: expected the certificate of {}, got {:?}\n{}",
        leaf.cn,
        s.subject(),
        s.report()
    );
}

fn assert_refused(s: &SClient, what: &str) {
    assert!(
        !s.handshake_ok(),
        "{what}: the handshake should have failed\n{}",
        s.report()
    );
}

// ---------------------------------------------------------------------------
// SIMPLE: file paths and credentialName, key types and encodings
// ---------------------------------------------------------------------------

#[test]
fn simple_tls_from_files_serves_the_http_routes_with_alpn() {
    if !require_root("simple_tls_from_files_serves_the_http_routes_with_alpn") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    // ECDSA P-256, key in PKCS#8.
    let leaf = ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256).unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "counter", KeyFormat::Pkcs8)
        .unwrap();
    let files = vec![
        gateway_file(&[
            server(
                80,
                "http",
                "HTTP",
                &[COUNTER_HOST],
                Some(&[("httpsRedirect", "true")]),
            ),
            https_server(
                443,
                "https",
                "HTTPS",
                &[COUNTER_HOST],
                &simple_files(&cert, &key),
            ),
        ]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    let ca_args = trust(&ca_file);

    // The targetPort and the nodePort; HTTP routing as on port 80, but https.
    for port in [8443, 30443] {
        let json = must_reach_counter(&gw.topo, COUNTER_HOST, port, "/hello?x=1", &args(&ca_args));
        assert_eq!(json["path"], "/hello?x=1", "{json}");
        // curl sends the port in Host; the gateway passes Host on as it came.
        assert_eq!(json["host"], format!("{COUNTER_HOST}:{port}"), "{json}");
        let headers = &json["headers"];
        assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
        let xff = headers["x-forwarded-for"].as_str().unwrap_or_default();
        assert!(xff.contains("198.18.0.2"), "x-forwarded-for: {headers}");
    }

    // The text access log names the SNI (%REQUESTED_SERVER_NAME%, unquoted, where
    // the authority is quoted with its port).
    let sni_field = format!(" {COUNTER_HOST} ");
    gw.daemon
        .wait_for_output(Duration::from_secs(5), "access-log lines", |out, _| {
            out.lines()
                .filter(|l| l.contains("/hello?x=1") && l.contains(&sni_field))
                .count()
                >= 2
        })
        .unwrap();

    // curl negotiates h2 by ALPN, or HTTP/1.1 when told so.
    let mut h2 = ca_args.clone();
    h2.push("--http2".to_owned());
    let r = gw
        .topo
        .curl_https(COUNTER_HOST, 8443, "/h2", &args(&h2))
        .unwrap();
    assert!(r.ok(), "{r:?}");
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"), "{r:?}");
    // 50 concurrent streams on one h2 connection.
    let resolve = format!("{COUNTER_HOST}:8443:198.18.0.1");
    let ca_path = path_str(&ca_file);
    let mut cmd: Vec<String> = [
        "-sS",
        "--max-time",
        "20",
        "--http2",
        "--parallel",
        "--parallel-max",
        "50",
        "--resolve",
        &resolve,
        "--cacert",
        &ca_path,
        "-w",
        "%{response_code} %{http_version} %{num_connects}\\n",
    ]
    .map(str::to_owned)
    .to_vec();
    for i in 0..50 {
        cmd.extend([
            "-o".to_owned(),
            "/dev/null".to_owned(),
            format!("https://{COUNTER_HOST}:8443/stream/{i}"),
        ]);
    }
    let out = gw
        .topo
        .exec(Ns::Client, "curl", &cmd, Duration::from_secs(30))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        answers.len(),
        50,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        answers.iter().all(|a| a.starts_with("200 2 ")),
        "every stream answers 200 over HTTP/2: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let connects: u32 = answers
        .iter()
        .filter_map(|a| a.split_whitespace().nth(2)?.parse::<u32>().ok())
        .sum();
    assert_eq!(connects, 1, "the streams share one connection: {stdout}");
    // A request body streams through h2 over TLS to the HTTP/1.1 backend.
    let body_file = certs.path().join("body.bin");
    std::fs::write(&body_file, vec![b'x'; 300_000]).unwrap();
    let mut post = h2.clone();
    post.extend([
        "--data-binary".to_owned(),
        format!("@{}", body_file.display()),
    ]);
    let r = gw
        .topo
        .curl_https(COUNTER_HOST, 8443, "/upload", &args(&post))
        .unwrap();
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"), "{r:?}");
    let json = r.json().unwrap();
    assert_eq!(json["method"], "POST", "{json}");
    assert_eq!(json["body_bytes"], 300_000, "{json}");
    let mut h1 = ca_args.clone();
    h1.push("--http1.1".to_owned());
    let r = gw
        .topo
        .curl_https(COUNTER_HOST, 8443, "/h1", &args(&h1))
        .unwrap();
    assert_eq!((r.status, r.http_version.as_str()), (200, "1.1"), "{r:?}");

    // ALPN as openssl sees it; the chain verifies against our CA.
    for (offer, expected) in [("h2", "h2"), ("http/1.1", "http/1.1")] {
        let s = s_client(
            &gw.topo,
            8443,
            COUNTER_HOST,
            &["-alpn", offer, "-CAfile", &ca_path],
        );
        assert_presented(&s, &leaf, &format!("ALPN {offer}"));
        assert_eq!(s.alpn().as_deref(), Some(expected), "{}", s.report());
        assert!(
            s.stdout.contains("Verify return code: 0 (ok)"),
            "{}",
            s.report()
        );
    }

    // A client that offers no ALPN speaks HTTP/1.1 and is answered in HTTP/1.1.
    let s = gw
        .topo
        .s_client(
            8443,
            &["-servername", COUNTER_HOST],
            &format!("GET /no-alpn HTTP/1.1\r\nHost: {COUNTER_HOST}\r\nConnection: close\r\n\r\n"),
            Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(s.alpn(), None, "{}", s.report());
    assert!(
        s.stdout.contains("HTTP/1.1 200") && s.stdout.contains("\"path\":\"/no-alpn\""),
        "no HTTP/1.1 answer without ALPN\n{}",
        s.report()
    );

    // httpsRedirect on the HTTP server.
    let r = gw
        .topo
        .get(&node_url(8080, "/a/b"), COUNTER_HOST)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(r.status, 301, "{r:?}");
    let location = r.header("location").unwrap_or_default();
    assert!(
        location.starts_with(&format!("https://{COUNTER_HOST}/a/b")),
        "location: {location}"
    );
}

#[test]
fn credential_name_tls_secret_with_rsa_pkcs1_key() {
    if !require_root("credential_name_tls_secret_with_rsa_pkcs1_key") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::Rsa2048).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let leaf = ca.server_cert(&[COUNTER_HOST], KeyAlg::Rsa2048).unwrap();
    let key = leaf.key_pem(KeyFormat::Pkcs1).unwrap();
    let files = vec![
        gateway_file(&[server(
            443,
            "https",
            "HTTPS",
            &[COUNTER_HOST],
            Some(&[("mode", "SIMPLE"), ("credentialName", "counter-cred")]),
        )]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
        (
            "secret.yaml".to_owned(),
            tls_secret("counter-cred", &leaf.cert_pem, &key, None),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    let json = must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &args(&trust(&ca_file)));
    assert_eq!(json["headers"]["x-forwarded-proto"], "https", "{json}");
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &["-tls1_2"]);
    assert_presented(&s, &leaf, "RSA credential");
    // The RSA key signs the TLS 1.2 key exchange.
    let cipher = s.cipher().unwrap_or_default();
    assert!(cipher.starts_with("ECDHE-RSA-"), "{}", s.report());
}

#[test]
fn credential_name_generic_secret_with_ecdsa_sec1_key() {
    if !require_root("credential_name_generic_secret_with_ecdsa_sec1_key") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let leaf = ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256).unwrap();
    let key = leaf.key_pem(KeyFormat::Sec1).unwrap();
    let files = vec![
        gateway_file(&[server(
            443,
            "https",
            "HTTPS",
            &[COUNTER_HOST],
            Some(&[("mode", "SIMPLE"), ("credentialName", "counter-generic")]),
        )]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
        (
            "secret.yaml".to_owned(),
            generic_secret("counter-generic", &leaf.cert_pem, &key, None),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &args(&trust(&ca_file)));
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &["-tls1_2"]);
    assert_presented(&s, &leaf, "ECDSA generic credential");
    let cipher = s.cipher().unwrap_or_default();
    assert!(cipher.starts_with("ECDHE-ECDSA-"), "{}", s.report());
}

// ---------------------------------------------------------------------------
// SNI
// ---------------------------------------------------------------------------

#[test]
fn sni_picks_exact_before_wildcard_and_refuses_unknown_names() {
    if !require_root("sni_picks_exact_before_wildcard_and_refuses_unknown_names") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let exact = ca
        .server_cert(&["a.example.com"], KeyAlg::EcdsaP256)
        .unwrap();
    let wild = ca.server_cert(&["*.example.com"], KeyAlg::Rsa2048).unwrap();
    let (exact_crt, exact_key) = exact.write(certs.path(), "a", KeyFormat::Pkcs8).unwrap();
    let (wild_crt, wild_key) = wild.write(certs.path(), "wild", KeyFormat::Pkcs8).unwrap();
    let deeper = ca
        .server_cert(&["*.b.example.com"], KeyAlg::EcdsaP256)
        .unwrap();
    let (deeper_crt, deeper_key) = deeper
        .write(certs.path(), "deeper", KeyFormat::Sec1)
        .unwrap();
    // The wildcard servers come first: the exact name must win regardless of order,
    // and the longer wildcard over the shorter one.
    let files = vec![
        gateway_file(&[
            https_server(
                443,
                "https-wild",
                "HTTPS",
                &["*.example.com"],
                &simple_files(&wild_crt, &wild_key),
            ),
            https_server(
                443,
                "https-deeper",
                "HTTPS",
                &["*.b.example.com"],
                &simple_files(&deeper_crt, &deeper_key),
            ),
            https_server(
                443,
                "https-a",
                "HTTPS",
                &["a.example.com"],
                &simple_files(&exact_crt, &exact_key),
            ),
        ]),
        counter_vs_file("a", "a.example.com"),
        counter_vs_file("b", "b.example.com"),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();

    let s = s_client(&gw.topo, 8443, "a.example.com", &[]);
    assert_presented(&s, &exact, "SNI a.example.com");
    let s = s_client(&gw.topo, 8443, "b.example.com", &[]);
    assert_presented(&s, &wild, "SNI b.example.com");
    let s = s_client(&gw.topo, 8443, "x.b.example.com", &[]);
    assert_presented(&s, &deeper, "SNI x.b.example.com");

    let ca_args = trust(&ca_file);
    for host in ["a.example.com", "b.example.com"] {
        let json = must_reach_counter(&gw.topo, host, 8443, "/", &args(&ca_args));
        assert_eq!(json["host"], format!("{host}:8443"), "{json}");
    }
    // Each server routes the VirtualService hosts that fall under its own hosts
    // (Istio: one route configuration per server). a.example.com is under
    // `*.example.com` too, so a connection for b.example.com may ask for it...
    let mut a_over_b = ca_args.clone();
    a_over_b.extend(["-H".to_owned(), "Host: a.example.com".to_owned()]);
    let json = must_reach_counter(&gw.topo, "b.example.com", 8443, "/", &args(&a_over_b));
    assert_eq!(json["host"], "a.example.com", "{json}");
    // ...but b.example.com is not under `a.example.com`: 404 on a's connection.
    let mut b_over_a = ca_args.clone();
    b_over_a.extend(["-H".to_owned(), "Host: b.example.com".to_owned()]);
    let r = gw
        .topo
        .curl_https("a.example.com", 8443, "/", &args(&b_over_a))
        .unwrap();
    assert_eq!(
        r.status, 404,
        "Host b.example.com over SNI a.example.com: {r:?}"
    );

    // A name no server has: the handshake fails with unrecognized_name (alert 112).
    let s = s_client(&gw.topo, 8443, "www.example.org", &[]);
    assert_refused(&s, "SNI www.example.org");
    assert!(
        s.stderr.contains("unrecognized name") || s.stderr.contains("alert number 112"),
        "expected the unrecognized_name alert\n{}",
        s.report()
    );
    let r = gw
        .topo
        .curl_https("www.example.org", 8443, "/", &args(&ca_args))
        .unwrap();
    must_fail(&r, "curl to an unknown name");
    // No SNI at all: no server here takes it (none has host `*`).
    let s = gw
        .topo
        .s_client(8443, &["-noservername"], "", Duration::ZERO)
        .unwrap();
    assert_refused(&s, "no SNI without a `*` server");
}

#[test]
fn servers_of_two_gateways_share_the_port_and_split_by_sni() {
    if !require_root("servers_of_two_gateways_share_the_port_and_split_by_sni") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let mut files = Vec::new();
    let mut leaves = Vec::new();
    // Two teams, two Gateways, one port: each Gateway with its own host and certificate,
    // each VirtualService bound to its team's Gateway.
    for team in ["red", "blue"] {
        let host = format!("{team}.example.com");
        let leaf = ca.server_cert(&[&host], KeyAlg::EcdsaP256).unwrap();
        let (crt, key) = leaf.write(certs.path(), team, KeyFormat::Pkcs8).unwrap();
        let gw_yaml = gateway(&[https_server(
            443,
            &format!("https-{team}"),
            "HTTPS",
            &[&host],
            &simple_files(&crt, &key),
        )])
        .replace("name: default-gateway", &format!("name: {team}-gateway"));
        files.push((format!("{team}-gateway.yaml"), gw_yaml));
        files.push((
            format!("{team}-virtualservice.yaml"),
            virtual_service(team, &host, "counter", 80).replace(
                "default-gateway.istio-system.svc.cluster.local",
                &format!("istio-system/{team}-gateway"),
            ),
        ));
        leaves.push((host, leaf));
    }
    let gw = TlsGateway::start(&files, &[]).unwrap();
    for (host, leaf) in &leaves {
        let s = s_client(&gw.topo, 8443, host, &[]);
        assert_presented(&s, leaf, host);
        must_reach_counter(&gw.topo, host, 8443, "/", &args(&trust(&ca_file)));
    }
    // The red Gateway's server does not route the blue VirtualService.
    let mut cross = trust(&ca_file);
    cross.extend(["-H".to_owned(), "Host: blue.example.com".to_owned()]);
    let r = gw
        .topo
        .curl_https("red.example.com", 8443, "/", &args(&cross))
        .unwrap();
    assert_eq!(r.status, 404, "{r:?}");
}

#[test]
fn catch_all_server_takes_any_sni_and_no_sni() {
    if !require_root("catch_all_server_takes_any_sni_and_no_sni") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let exact = ca
        .server_cert(&["a.example.com"], KeyAlg::EcdsaP256)
        .unwrap();
    let fallback = ca
        .server_cert(
            &["fallback.example.net", "other.example.org"],
            KeyAlg::EcdsaP256,
        )
        .unwrap();
    let (exact_crt, exact_key) = exact.write(certs.path(), "a", KeyFormat::Pkcs8).unwrap();
    let (fb_crt, fb_key) = fallback
        .write(certs.path(), "fallback", KeyFormat::Sec1)
        .unwrap();
    let files = vec![
        gateway_file(&[
            https_server(
                443,
                "https-any",
                "HTTPS",
                &["*"],
                &simple_files(&fb_crt, &fb_key),
            ),
            https_server(
                443,
                "https-a",
                "HTTPS",
                &["a.example.com"],
                &simple_files(&exact_crt, &exact_key),
            ),
        ]),
        counter_vs_file("a", "a.example.com"),
        counter_vs_file("other", "other.example.org"),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();

    let s = s_client(&gw.topo, 8443, "a.example.com", &[]);
    assert_presented(&s, &exact, "SNI a.example.com");
    let s = s_client(&gw.topo, 8443, "other.example.org", &[]);
    assert_presented(&s, &fallback, "SNI other.example.org");
    let s = gw
        .topo
        .s_client(8443, &["-noservername"], "", Duration::ZERO)
        .unwrap();
    assert_presented(&s, &fallback, "no SNI");
    // And HTTP routing behind the catch-all certificate.
    must_reach_counter(
        &gw.topo,
        "other.example.org",
        8443,
        "/",
        &args(&trust(&ca_file)),
    );
}

// ---------------------------------------------------------------------------
// Protocol versions and cipher suites
// ---------------------------------------------------------------------------

#[test]
fn protocol_versions_and_cipher_suites_are_enforced() {
    if !require_root("protocol_versions_and_cipher_suites_are_enforced") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let leaf = ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256).unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "counter", KeyFormat::Pkcs8)
        .unwrap();
    // 443 (-> 8443): TLS 1.3 only. 9443: at most TLS 1.2, one cipher suite, and the
    // default minimum (TLS 1.2).
    let mut tls13 = simple_files(&cert, &key);
    tls13.push(("minProtocolVersion", "TLSV1_3".to_owned()));
    let mut tls12 = simple_files(&cert, &key);
    tls12.push(("maxProtocolVersion", "TLSV1_2".to_owned()));
    tls12.push(("cipherSuites", "[ECDHE-ECDSA-AES128-GCM-SHA256]".to_owned()));
    let files = vec![
        gateway_file(&[
            https_server(443, "https", "HTTPS", &[COUNTER_HOST], &tls13),
            https_server(9443, "tls-alt", "HTTPS", &[COUNTER_HOST], &tls12),
        ]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    let ca_args = trust(&ca_file);

    // minProtocolVersion TLSV1_3.
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &["-tls1_3"]);
    assert!(s.handshake_ok(), "{}", s.report());
    assert_eq!(s.protocol().as_deref(), Some("TLSv1.3"), "{}", s.report());
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &["-tls1_2"]);
    assert_refused(
        &s,
        "a TLS 1.2-only client against minProtocolVersion TLSV1_3",
    );
    let mut tls12_client = ca_args.clone();
    tls12_client.extend(["--tls-max".to_owned(), "1.2".to_owned()]);
    let r = gw
        .topo
        .curl_https(COUNTER_HOST, 8443, "/", &args(&tls12_client))
        .unwrap();
    must_fail(&r, "curl --tls-max 1.2 against minProtocolVersion TLSV1_3");
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &args(&ca_args));

    // maxProtocolVersion TLSV1_2 and cipherSuites.
    let s = s_client(&gw.topo, 9443, COUNTER_HOST, &[]);
    assert_eq!(
        s.negotiated(),
        Some((
            "TLSv1.2".to_owned(),
            "ECDHE-ECDSA-AES128-GCM-SHA256".to_owned()
        )),
        "{}",
        s.report()
    );
    let s = s_client(&gw.topo, 9443, COUNTER_HOST, &["-tls1_3"]);
    assert_refused(
        &s,
        "a TLS 1.3-only client against maxProtocolVersion TLSV1_2",
    );
    for other in [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let s = s_client(&gw.topo, 9443, COUNTER_HOST, &["-tls1_2", "-cipher", other]);
        assert_refused(&s, &format!("cipher {other} is not in cipherSuites"));
    }
    // The default minimum is TLS 1.2 (the client needs security level 0 to offer 1.1).
    for old in ["-tls1_1", "-tls1"] {
        let s = s_client(
            &gw.topo,
            9443,
            COUNTER_HOST,
            &[old, "-cipher", "DEFAULT@SECLEVEL=0"],
        );
        assert_refused(&s, &format!("{old} against the default minimum"));
    }
    must_reach_counter(&gw.topo, COUNTER_HOST, 9443, "/", &args(&ca_args));
}

// ---------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------

/// CAs and client certificates for the mutual-TLS tests.
struct ClientPki {
    /// Signs the server certificate.
    server_ca: Ca,
    /// Signs the accepted client certificates.
    client_ca: Ca,
    /// `CN=client.example.com`, SAN client.example.com, from `client_ca`.
    good: (PathBuf, PathBuf),
    /// `CN=other.example.com`, SAN other.example.com, from `client_ca`.
    other_san: (PathBuf, PathBuf),
    /// `CN=client.example.com` from a CA the gateway does not trust (written to
    /// `foreign-ca.pem`).
    foreign: (PathBuf, PathBuf),
    server_ca_file: PathBuf,
}

impl ClientPki {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let server_ca = Ca::new("ingressd server CA", KeyAlg::EcdsaP256)?;
        let client_ca = Ca::new("ingressd client CA", KeyAlg::Rsa2048)?;
        let foreign_ca = Ca::new("some other CA", KeyAlg::EcdsaP256)?;
        let good = client_ca
            .client_cert(
                "client.example.com",
                &["client.example.com"],
                KeyAlg::EcdsaP256,
            )?
            .write(dir, "client-good", KeyFormat::Pkcs8)?;
        let other_san = client_ca
            .client_cert("other.example.com", &["other.example.com"], KeyAlg::Rsa2048)?
            .write(dir, "client-other-san", KeyFormat::Pkcs8)?;
        let foreign = foreign_ca
            .client_cert(
                "client.example.com",
                &["client.example.com"],
                KeyAlg::EcdsaP256,
            )?
            .write(dir, "client-foreign", KeyFormat::Pkcs8)?;
        let server_ca_file = server_ca.write(dir, "server-ca.pem")?;
        foreign_ca.write(dir, "foreign-ca.pem")?;
        Ok(Self {
            server_ca,
            client_ca,
            good,
            other_san,
            foreign,
            server_ca_file,
        })
    }

    /// curl args: trust the server CA, present `client` if any.
    fn curl_args(&self, client: Option<&(PathBuf, PathBuf)>) -> Vec<String> {
        let mut a = trust(&self.server_ca_file);
        if let Some((cert, key)) = client {
            a.extend([
                "--cert".to_owned(),
                path_str(cert),
                "--key".to_owned(),
                path_str(key),
            ]);
        }
        a
    }
}

/// A GET for s_client's stdin.
fn get_request(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

#[test]
fn mutual_tls_from_files_requires_a_trusted_client_cert_with_an_allowed_san() {
    if !require_root("mutual_tls_from_files_requires_a_trusted_client_cert_with_an_allowed_san") {
        return;
    }
    let certs = certs_dir();
    let pki = ClientPki::new(certs.path()).unwrap();
    let leaf = pki
        .server_ca
        .server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)
        .unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "server", KeyFormat::Pkcs8)
        .unwrap();
    let client_ca = pki.client_ca.write(certs.path(), "client-ca.pem").unwrap();
    let tls = vec![
        ("mode", "MUTUAL".to_owned()),
        ("serverCertificate", path_str(&cert)),
        ("privateKey", path_str(&key)),
        ("caCertificates", path_str(&client_ca)),
        ("subjectAltNames", "[client.example.com]".to_owned()),
    ];
    let files = vec![
        gateway_file(&[https_server(443, "https", "HTTPS", &[COUNTER_HOST], &tls)]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();

    must_reach_counter(
        &gw.topo,
        COUNTER_HOST,
        8443,
        "/",
        &args(&pki.curl_args(Some(&pki.good))),
    );
    for (what, client) in [
        ("no client certificate", None),
        ("a client certificate from another CA", Some(&pki.foreign)),
        ("a SAN not in subjectAltNames", Some(&pki.other_san)),
    ] {
        let r = gw
            .topo
            .curl_https(COUNTER_HOST, 8443, "/", &args(&pki.curl_args(client)))
            .unwrap();
        must_fail(&r, what);
    }

    // TLS 1.3 reports the missing certificate with the certificate_required alert
    // (116), which the client reads after its side of the handshake.
    let s = gw
        .topo
        .s_client(
            8443,
            &["-servername", COUNTER_HOST, "-tls1_3"],
            &get_request(COUNTER_HOST),
            Duration::from_secs(1),
        )
        .unwrap();
    assert!(
        s.stderr.contains("certificate required") || s.stderr.contains("alert number 116"),
        "expected the certificate_required alert\n{}",
        s.report()
    );
    assert!(!s.stdout.contains("HTTP/1.1 200"), "{}", s.report());
    // TLS 1.2 fails the handshake itself.
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &["-tls1_2"]);
    assert_refused(&s, "TLS 1.2 without a client certificate");
}

#[test]
fn mutual_tls_from_credential_with_a_separate_cacert_secret() {
    if !require_root("mutual_tls_from_credential_with_a_separate_cacert_secret") {
        return;
    }
    let certs = certs_dir();
    let pki = ClientPki::new(certs.path()).unwrap();
    let leaf = pki
        .server_ca
        .server_cert(&[COUNTER_HOST], KeyAlg::Rsa2048)
        .unwrap();
    let key = leaf.key_pem(KeyFormat::Pkcs8).unwrap();
    // 443: a tls Secret and `mtls-cred-cacert` with `ca.crt`. 9443: a generic Secret
    // and `mtls-generic-cacert` with `cacert`.
    let secrets = [
        tls_secret("mtls-cred", &leaf.cert_pem, &key, None),
        cacert_secret("mtls-cred", "ca.crt", pki.client_ca.pem()),
        generic_secret("mtls-generic", &leaf.cert_pem, &key, None),
        cacert_secret("mtls-generic", "cacert", pki.client_ca.pem()),
    ]
    .join("---\n");
    let files = vec![
        gateway_file(&[
            server(
                443,
                "https",
                "HTTPS",
                &[COUNTER_HOST],
                Some(&[("mode", "MUTUAL"), ("credentialName", "mtls-cred")]),
            ),
            server(
                9443,
                "tls-alt",
                "HTTPS",
                &[COUNTER_HOST],
                Some(&[("mode", "MUTUAL"), ("credentialName", "mtls-generic")]),
            ),
        ]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
        ("secrets.yaml".to_owned(), secrets),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    for port in [8443, 9443] {
        must_reach_counter(
            &gw.topo,
            COUNTER_HOST,
            port,
            "/",
            &args(&pki.curl_args(Some(&pki.good))),
        );
        // No subjectAltNames here: any SAN from the CA is fine.
        must_reach_counter(
            &gw.topo,
            COUNTER_HOST,
            port,
            "/",
            &args(&pki.curl_args(Some(&pki.other_san))),
        );
        for (what, client) in [
            ("no client certificate", None),
            ("a client certificate from another CA", Some(&pki.foreign)),
        ] {
            let r = gw
                .topo
                .curl_https(COUNTER_HOST, port, "/", &args(&pki.curl_args(client)))
                .unwrap();
            must_fail(&r, &format!("port {port}: {what}"));
        }
    }
}

#[test]
fn optional_mutual_from_generic_secret_and_mutual_from_tls_secret_with_ca_by_sni() {
    if !require_root(
        "optional_mutual_from_generic_secret_and_mutual_from_tls_secret_with_ca_by_sni",
    ) {
        return;
    }
    let certs = certs_dir();
    let pki = ClientPki::new(certs.path()).unwrap();
    let opt_leaf = pki
        .server_ca
        .server_cert(&["opt.example.com"], KeyAlg::EcdsaP256)
        .unwrap();
    let mtls_leaf = pki
        .server_ca
        .server_cert(&["mtls.example.com"], KeyAlg::EcdsaP256)
        .unwrap();
    let secrets = format!(
        "{}---\n{}",
        generic_secret(
            "opt-cred",
            &opt_leaf.cert_pem,
            &opt_leaf.key_pem(KeyFormat::Sec1).unwrap(),
            Some(pki.client_ca.pem())
        ),
        tls_secret(
            "mtls-cred",
            &mtls_leaf.cert_pem,
            &mtls_leaf.key_pem(KeyFormat::Pkcs8).unwrap(),
            Some(pki.client_ca.pem())
        )
    );
    let files = vec![
        gateway_file(&[
            server(
                443,
                "https-opt",
                "HTTPS",
                &["opt.example.com"],
                Some(&[
                    ("mode", "OPTIONAL_MUTUAL"),
                    ("credentialName", "opt-cred"),
                    ("subjectAltNames", "[client.example.com]"),
                ]),
            ),
            server(
                443,
                "https-mtls",
                "HTTPS",
                &["mtls.example.com"],
                Some(&[("mode", "MUTUAL"), ("credentialName", "mtls-cred")]),
            ),
        ]),
        counter_vs_file("opt", "opt.example.com"),
        counter_vs_file("mtls", "mtls.example.com"),
        ("secrets.yaml".to_owned(), secrets),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();

    // OPTIONAL_MUTUAL: no certificate or a trusted one is fine, a foreign one is not.
    for client in [None, Some(&pki.good)] {
        must_reach_counter(
            &gw.topo,
            "opt.example.com",
            8443,
            "/",
            &args(&pki.curl_args(client)),
        );
    }
    let r = gw
        .topo
        .curl_https(
            "opt.example.com",
            8443,
            "/",
            &args(&pki.curl_args(Some(&pki.foreign))),
        )
        .unwrap();
    must_fail(
        &r,
        "OPTIONAL_MUTUAL with a client certificate from another CA",
    );
    // A certificate, when given, must also carry one of subjectAltNames.
    let r = gw
        .topo
        .curl_https(
            "opt.example.com",
            8443,
            "/",
            &args(&pki.curl_args(Some(&pki.other_san))),
        )
        .unwrap();
    must_fail(&r, "OPTIONAL_MUTUAL with a SAN not in subjectAltNames");

    // MUTUAL on the same port, chosen by SNI, with the CA from the tls Secret's ca.crt.
    must_reach_counter(
        &gw.topo,
        "mtls.example.com",
        8443,
        "/",
        &args(&pki.curl_args(Some(&pki.good))),
    );
    let r = gw
        .topo
        .curl_https("mtls.example.com", 8443, "/", &args(&pki.curl_args(None)))
        .unwrap();
    must_fail(&r, "MUTUAL without a client certificate");

    // Each server routes only its own hosts: a request on the OPTIONAL_MUTUAL
    // connection (SNI opt.example.com, no certificate) naming the MUTUAL host in
    // Host must not reach that host's routes (Istio: one route configuration per
    // server; Envoy answers 404). Anything else would bypass the client certificate.
    for version in ["--http1.1", "--http2"] {
        let mut a = pki.curl_args(None);
        a.extend([
            version.to_owned(),
            "-H".to_owned(),
            "Host: mtls.example.com".to_owned(),
        ]);
        let r = gw
            .topo
            .curl_https("opt.example.com", 8443, "/", &args(&a))
            .unwrap();
        let reached = r.json().is_ok_and(|j| j["app"] == "counter");
        assert!(
            !reached && (r.status == 404 || r.status == 421),
            "{version}: SNI opt.example.com with Host mtls.example.com and no client \
             certificate must not reach mtls.example.com's routes: {r:?}"
        );
    }
}

#[test]
fn client_ca_rotation_applies_to_new_handshakes() {
    if !require_root("client_ca_rotation_applies_to_new_handshakes") {
        return;
    }
    let certs = certs_dir();
    let pki = ClientPki::new(certs.path()).unwrap();
    let leaf = pki
        .server_ca
        .server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)
        .unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "server", KeyFormat::Pkcs8)
        .unwrap();
    let client_ca = pki.client_ca.write(certs.path(), "client-ca.pem").unwrap();
    let tls = vec![
        ("mode", "MUTUAL".to_owned()),
        ("serverCertificate", path_str(&cert)),
        ("privateKey", path_str(&key)),
        ("caCertificates", path_str(&client_ca)),
    ];
    let files = vec![
        gateway_file(&[https_server(443, "https", "HTTPS", &[COUNTER_HOST], &tls)]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    let good = pki.curl_args(Some(&pki.good));
    let foreign = pki.curl_args(Some(&pki.foreign));
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &args(&good));
    let r = gw
        .topo
        .curl_https(COUNTER_HOST, 8443, "/", &args(&foreign))
        .unwrap();
    must_fail(&r, "a client from the CA not trusted yet");

    // Trust the other CA instead (the foreign client's); the file is renamed over.
    let foreign_ca_pem = std::fs::read_to_string(certs.path().join("foreign-ca.pem")).unwrap();
    rename_over(&client_ca, &foreign_ca_pem).unwrap();
    let start = Instant::now();
    loop {
        let r = gw
            .topo
            .curl_https(COUNTER_HOST, 8443, "/", &args(&foreign))
            .unwrap();
        if r.ok() && r.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < ROTATE_TIMEOUT,
            "the new client CA was not trusted within {ROTATE_TIMEOUT:?}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "new client CA trusted {:?} after the change",
        start.elapsed()
    );
    let r = gw
        .topo
        .curl_https(COUNTER_HOST, 8443, "/", &args(&good))
        .unwrap();
    must_fail(&r, "a client from the CA no longer trusted");

    // A bundle of both CAs trusts both clients.
    rename_over(
        &client_ca,
        &format!("{}{foreign_ca_pem}", pki.client_ca.pem()),
    )
    .unwrap();
    let start = Instant::now();
    loop {
        let r = gw
            .topo
            .curl_https(COUNTER_HOST, 8443, "/", &args(&good))
            .unwrap();
        if r.ok() && r.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < ROTATE_TIMEOUT,
            "the CA bundle was not trusted within {ROTATE_TIMEOUT:?}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &args(&foreign));
}

// ---------------------------------------------------------------------------
// PASSTHROUGH and TLS-terminated TCP
// ---------------------------------------------------------------------------

#[test]
fn passthrough_routes_by_sni_and_the_client_sees_the_backends_certificate() {
    if !require_root("passthrough_routes_by_sni_and_the_client_sees_the_backends_certificate") {
        return;
    }
    let certs = certs_dir();
    let backend_ca = Ca::new("backend CA", KeyAlg::EcdsaP256).unwrap();
    let backend_ca_file = backend_ca.write(certs.path(), "backend-ca.pem").unwrap();
    let leaf_a = backend_ca
        .server_cert(&["a.pass.example.com"], KeyAlg::EcdsaP256)
        .unwrap();
    let leaf_b = backend_ca
        .server_cert(&["*.pass.example.com"], KeyAlg::Rsa2048)
        .unwrap();
    let (a_crt, a_key) = leaf_a
        .write(certs.path(), "pass-a", KeyFormat::Pkcs8)
        .unwrap();
    let (b_crt, b_key) = leaf_b
        .write(certs.path(), "pass-b", KeyFormat::Pkcs8)
        .unwrap();

    // 443: protocol TLS, mode PASSTHROUGH. 9443: protocol HTTPS with no mode, which
    // is PASSTHROUGH too.
    let routes: Vec<SniRoute<'_>> = [443, 9443]
        .into_iter()
        .flat_map(|port| {
            [
                SniRoute {
                    port,
                    sni_hosts: &["a.pass.example.com"],
                    dest: "pass-a",
                    dest_port: PASS_PORT,
                },
                SniRoute {
                    port,
                    sni_hosts: &["*.pass.example.com"],
                    dest: "pass-b",
                    dest_port: PASS_PORT,
                },
            ]
        })
        .collect();
    let files = vec![
        gateway_file(&[
            server(
                443,
                "tls-pass",
                "TLS",
                &["*.pass.example.com"],
                Some(&[("mode", "PASSTHROUGH")]),
            ),
            server(
                9443,
                "https-pass",
                "HTTPS",
                &["*.pass.example.com"],
                Some(&[]),
            ),
        ]),
        (
            "pass-virtualservice.yaml".to_owned(),
            passthrough_virtual_service("pass", &["*.pass.example.com"], &routes),
        ),
        (
            "pass-services.yaml".to_owned(),
            format!(
                "{}---\n{}",
                service_with_endpoints("pass-a", "tls", PASS_PORT, PASS_PORT, &[PASS_A]),
                service_with_endpoints("pass-b", "tls", PASS_PORT, PASS_PORT, &[PASS_B])
            ),
        ),
    ];
    let gw = TlsGateway::start(&files, &["--access-log-format", "json"]).unwrap();
    let _a = gw
        .topo
        .start_s_server(sock(PASS_A, PASS_PORT), &a_crt, &a_key, "s-server-a")
        .unwrap();
    let _b = gw
        .topo
        .start_s_server(sock(PASS_B, PASS_PORT), &b_crt, &b_key, "s-server-b")
        .unwrap();

    let ca_args = trust(&backend_ca_file);
    // The targetPorts and the nodePorts (30443 for 443, 31443 for 9443).
    for port in [8443, 9443, 30443, 31443] {
        for (sni, leaf, backend) in [
            ("a.pass.example.com", &leaf_a, PASS_A),
            ("b.pass.example.com", &leaf_b, PASS_B),
        ] {
            let s = s_client(&gw.topo, port, sni, &[]);
            assert_presented(&s, leaf, &format!("port {port}, SNI {sni}"));
            // The bytes go through: s_server's -www page names its own address.
            let r = gw.topo.curl_https(sni, port, "/", &args(&ca_args)).unwrap();
            assert!(r.ok(), "port {port}, {sni}: {r:?}");
            assert_eq!(r.status, 200, "{r:?}");
            let marker = format!("{backend}:{PASS_PORT}");
            assert!(
                r.body.contains(&marker),
                "port {port}, {sni}: expected the page of the backend at {marker}: {r:?}"
            );
        }
        // No route for this name: nothing to pass it to.
        let s = s_client(&gw.topo, port, "www.example.org", &[]);
        assert_refused(&s, &format!("port {port}, SNI without a route"));
    }

    // One access-log record per passed-through connection, with the SNI and the
    // backend it went to.
    for (sni, backend) in [
        ("a.pass.example.com", PASS_A),
        ("b.pass.example.com", PASS_B),
    ] {
        let upstream = format!("{backend}:{PASS_PORT}");
        let record = |out: &str| {
            out.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|j| j["requested_server_name"] == sni)
        };
        gw.daemon
            .wait_for_output(Duration::from_secs(5), "a passthrough record", |out, _| {
                record(out).is_some()
            })
            .unwrap();
        let r = record(&gw.daemon.stdout()).unwrap();
        assert_eq!(r["upstream_host"], upstream.as_str(), "{r}");
    }
}

#[test]
fn tls_terminated_tcp_reaches_the_echo_backend() {
    if !require_root("tls_terminated_tcp_reaches_the_echo_backend") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let leaf = ca
        .server_cert(&["echo.example.com"], KeyAlg::EcdsaP256)
        .unwrap();
    let (cert, key) = leaf.write(certs.path(), "echo", KeyFormat::Sec1).unwrap();
    let files = vec![
        gateway_file(&[https_server(
            443,
            "tls-echo",
            "TLS",
            &["*"],
            &simple_files(&cert, &key),
        )]),
        (
            "echo-virtualservice.yaml".to_owned(),
            tcp_virtual_service("echo", 443, "echo", 3306),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    let ca_path = path_str(&ca_file);
    for version in ["-tls1_3", "-tls1_2"] {
        let payload = format!("ping through TLS {version} 0123456789\n");
        let s = gw
            .topo
            .s_client(
                8443,
                &[
                    "-servername",
                    "echo.example.com",
                    "-alpn",
                    "h2,http/1.1",
                    "-CAfile",
                    &ca_path,
                    version,
                ],
                &payload,
                Duration::from_millis(1500),
            )
            .unwrap();
        assert_presented(&s, &leaf, version);
        // s_client prints what the server sent; our payload comes back from the echo.
        assert!(
            s.stdout.contains(payload.trim_end()),
            "{version}: the echo did not come back\n{}",
            s.report()
        );
        // A TLS server carries raw TCP: no ALPN.
        assert_eq!(s.alpn(), None, "{}", s.report());
    }

    // 200 KB through the TLS termination and back.
    let lines = 4000;
    let payload: String = (0..lines)
        .map(|i| format!("echo-line {i:05} abcdefghijklmnopqrstuvwxyz0123456789\n"))
        .collect();
    let s = gw
        .topo
        .s_client(
            8443,
            &["-servername", "echo.example.com"],
            &payload,
            Duration::from_secs(2),
        )
        .unwrap();
    let echoed = s
        .stdout
        .lines()
        .filter(|l| l.starts_with("echo-line "))
        .count();
    assert_eq!(echoed, lines, "lines echoed of {lines}\n{}", s.stderr);
}

#[test]
fn server_certificate_file_with_an_intermediate_sends_the_chain() {
    if !require_root("server_certificate_file_with_an_intermediate_sends_the_chain") {
        return;
    }
    let certs = certs_dir();
    let root = Ca::new("ingressd root CA", KeyAlg::Rsa2048).unwrap();
    let root_file = root.write(certs.path(), "root.pem").unwrap();
    let intermediate = root
        .intermediate("ingressd intermediate CA", KeyAlg::EcdsaP256)
        .unwrap();
    let leaf = intermediate
        .server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)
        .unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "server", KeyFormat::Pkcs8)
        .unwrap();
    // What CAs hand out: the leaf, then the intermediate, in one file.
    std::fs::write(&cert, format!("{}{}", leaf.cert_pem, intermediate.pem())).unwrap();
    let gw = TlsGateway::start(&simple_config(&cert, &key), &[]).unwrap();

    // Clients that trust only the root verify the chain the gateway sends.
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &args(&trust(&root_file)));
    let root_path = path_str(&root_file);
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &["-CAfile", &root_path]);
    assert_presented(&s, &leaf, "leaf with intermediate");
    assert!(
        s.stdout.contains(" 1 s:CN = ingressd intermediate CA"),
        "the intermediate is not in the chain\n{}",
        s.report()
    );
    assert!(
        s.stdout.contains("Verify return code: 0 (ok)"),
        "{}",
        s.report()
    );
}

#[test]
fn stalled_and_plaintext_clients_do_not_hold_up_handshakes() {
    if !require_root("stalled_and_plaintext_clients_do_not_hold_up_handshakes") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let leaf = ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256).unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "server", KeyFormat::Pkcs8)
        .unwrap();
    let gw = TlsGateway::start(&simple_config(&cert, &key), &[]).unwrap();

    // Connections that never finish a ClientHello: silent ones, and ones that stop
    // inside the first TLS record (header says 512 bytes, 4 are sent).
    let mut stalled = Vec::new();
    for i in 0..16 {
        let mut stream = gw
            .topo
            .connect(Ns::Client, node(8443), Duration::from_secs(5))
            .unwrap();
        if i % 2 == 1 {
            stream
                .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
                .unwrap();
        }
        stalled.push(stream);
    }
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = gw
        .topo
        .connect(Ns::Client, node(8443), Duration::from_secs(5))
        .unwrap();
    plain
        .write_all(format!("GET / HTTP/1.1\r\nHost: {COUNTER_HOST}\r\n\r\n").as_bytes())
        .unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP on the TLS port was answered: {}",
        String::from_utf8_lossy(&answer)
    );

    // Meanwhile, real clients are served at once.
    let start = Instant::now();
    for i in 0..10 {
        must_reach_counter(
            &gw.topo,
            COUNTER_HOST,
            8443,
            &format!("/while-stalled/{i}"),
            &args(&trust(&ca_file)),
        );
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "10 requests took {took:?} with stalled handshakes open"
    );
    drop(stalled);
}

#[test]
fn broken_secret_keeps_the_old_certificate() {
    if !require_root("broken_secret_keeps_the_old_certificate") {
        return;
    }
    let certs = certs_dir();
    let rot = Rotation::new(certs.path()).unwrap();
    let key = rot.old.key_pem(KeyFormat::Pkcs8).unwrap();
    let files = vec![
        gateway_file(&[server(
            443,
            "https",
            "HTTPS",
            &[COUNTER_HOST],
            Some(&[("mode", "SIMPLE"), ("credentialName", "counter-cred")]),
        )]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
        (
            "secret.yaml".to_owned(),
            tls_secret("counter-cred", &rot.old.cert_pem, &key, None),
        ),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    let ca = path_str(&rot.ca_file);
    let log_before = gw.daemon.stderr().lines().count();
    // Garbage certificate, then a certificate that does not match the key.
    for (what, cert) in [
        ("garbage", "not a certificate\n"),
        ("a certificate for another key", rot.new.cert_pem.as_str()),
    ] {
        gw.config
            .write("secret.yaml", &tls_secret("counter-cred", cert, &key, None))
            .unwrap();
        std::thread::sleep(SETTLE);
        let s = s_client(&gw.topo, 8443, COUNTER_HOST, &[]);
        assert_presented(&s, &rot.old, &format!("after a Secret with {what}"));
        must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &["--cacert", &ca]);
    }
    let log = gw.daemon.stderr();
    assert!(
        log.lines()
            .skip(log_before)
            .any(|l| l.contains("WARN") || l.contains("ERROR")),
        "the broken Secret was not logged:\n{log}"
    );
    // A good Secret afterwards is picked up.
    let new_key = rot.new.key_pem(KeyFormat::Pkcs8).unwrap();
    gw.config
        .write(
            "secret.yaml",
            &tls_secret("counter-cred", &rot.new.cert_pem, &new_key, None),
        )
        .unwrap();
    wait_for_certificate(&gw.topo, &rot.new, Instant::now());
}

// ---------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------

/// Runs 200 requests at about 50/s (100 over one keep-alive connection, 100 with a
/// new TLS handshake each) while `rotate` changes the certificate, 1 s in; then
/// checks that every request succeeded and that new handshakes present `new`
/// within [`ROTATE_TIMEOUT`].
fn rotate_under_load(gw: &TlsGateway, ca_file: &Path, new: &Leaf, rotate: impl FnOnce() + Send) {
    let ca = path_str(ca_file);
    let paths: Vec<String> = (0..100).map(|i| format!("/rotate/{i}")).collect();
    let curl_args = [("cacert", ca.as_str())];
    let (keepalive, fresh, took) = std::thread::scope(|s| {
        let keepalive = s.spawn(|| {
            gw.topo
                .curl_https_many(
                    COUNTER_HOST,
                    8443,
                    &paths,
                    &curl_args,
                    false,
                    25,
                    Duration::from_secs(60),
                )
                .expect("running the keep-alive request loop")
        });
        let fresh = s.spawn(|| {
            gw.topo
                .curl_https_many(
                    COUNTER_HOST,
                    8443,
                    &paths,
                    &curl_args,
                    true,
                    25,
                    Duration::from_secs(60),
                )
                .expect("running the new-connection request loop")
        });
        std::thread::sleep(Duration::from_secs(1));
        let start = Instant::now();
        rotate();
        let took = wait_for_certificate(&gw.topo, new, start);
        (
            keepalive.join().expect("keep-alive loop thread"),
            fresh.join().expect("new-connection loop thread"),
            took,
        )
    });
    eprintln!("new certificate served {took:?} after the change");
    for (what, run, connects) in [
        // One connection from before the change to after it: established
        // connections keep working.
        ("keep-alive", keepalive, 1..=1),
        // A full handshake per request, the later ones with the new certificate.
        ("new connections", fresh, 100..=100),
    ] {
        assert_eq!(
            run.statuses.len(),
            100,
            "{what}: curl stderr: {}",
            run.stderr
        );
        let failed: Vec<(usize, u16)> = run
            .statuses
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, c)| *c != 200)
            .collect();
        assert!(
            failed.is_empty(),
            "{what}: {} of 100 requests failed during the rotation (index, status): {failed:?}; curl: {}",
            failed.len(),
            run.stderr
        );
        assert!(
            connects.contains(&run.connects),
            "{what}: curl opened {} connections, expected {connects:?}",
            run.connects
        );
    }
    // And a new connection after the loop gets the new certificate and a response.
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &[]);
    assert_presented(&s, new, "after the rotation");
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &["--cacert", &ca]);
}

/// Polls new handshakes until they present `leaf`; panics after [`ROTATE_TIMEOUT`].
fn wait_for_certificate(topo: &Topology, leaf: &Leaf, start: Instant) -> Duration {
    loop {
        let s = s_client(topo, 8443, COUNTER_HOST, &[]);
        if s.presented(leaf) {
            return start.elapsed();
        }
        if start.elapsed() > ROTATE_TIMEOUT {
            panic!(
                "the new certificate was not served within {ROTATE_TIMEOUT:?}; last:\n{}",
                s.report()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two certificates for [`COUNTER_HOST`] from one CA: the first and its replacement.
struct Rotation {
    ca_file: PathBuf,
    old: Leaf,
    new: Leaf,
}

impl Rotation {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256)?;
        Ok(Self {
            ca_file: ca.write(dir, "ca.pem")?,
            old: ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)?,
            // Another key type, so nothing of the old pair can pass for the new one.
            new: ca.server_cert(&[COUNTER_HOST], KeyAlg::Rsa2048)?,
        })
    }
}

/// Config for a SIMPLE server on 443 with these certificate files.
fn simple_config(cert: &Path, key: &Path) -> Vec<(String, String)> {
    vec![
        gateway_file(&[https_server(
            443,
            "https",
            "HTTPS",
            &[COUNTER_HOST],
            &simple_files(cert, key),
        )]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ]
}

#[test]
fn rotation_by_rewriting_the_files_in_place() {
    if !require_root("rotation_by_rewriting_the_files_in_place") {
        return;
    }
    let certs = certs_dir();
    let rot = Rotation::new(certs.path()).unwrap();
    let (cert, key) = rot
        .old
        .write(certs.path(), "server", KeyFormat::Pkcs8)
        .unwrap();
    let gw = TlsGateway::start(&simple_config(&cert, &key), &[]).unwrap();
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &[]);
    assert_presented(&s, &rot.old, "before the rotation");
    let new_key = rot.new.key_pem(KeyFormat::Pkcs1).unwrap();
    rotate_under_load(&gw, &rot.ca_file, &rot.new, || {
        // `cp new.crt tls.crt; cp new.key tls.key` by hand: truncate and write, one
        // file at a time, with a pause in between during which the pair does not match.
        std::fs::write(&cert, &rot.new.cert_pem).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(&key, &new_key).unwrap();
    });
}

#[test]
fn rotation_by_renaming_new_files_over_the_old() {
    if !require_root("rotation_by_renaming_new_files_over_the_old") {
        return;
    }
    let certs = certs_dir();
    let rot = Rotation::new(certs.path()).unwrap();
    let (cert, key) = rot
        .old
        .write(certs.path(), "server", KeyFormat::Sec1)
        .unwrap();
    let gw = TlsGateway::start(&simple_config(&cert, &key), &[]).unwrap();
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &[]);
    assert_presented(&s, &rot.old, "before the rotation");
    let new_key = rot.new.key_pem(KeyFormat::Pkcs8).unwrap();
    rotate_under_load(&gw, &rot.ca_file, &rot.new, || {
        rename_over(&key, &new_key).unwrap();
        rename_over(&cert, &rot.new.cert_pem).unwrap();
    });
}

#[test]
fn rotation_by_swapping_the_secret_volume_data_link() {
    if !require_root("rotation_by_swapping_the_secret_volume_data_link") {
        return;
    }
    let certs = certs_dir();
    let rot = Rotation::new(certs.path()).unwrap();
    let old_key = rot.old.key_pem(KeyFormat::Pkcs8).unwrap();
    let mut volume = SecretVolume::create(
        &certs.path().join("secret-volume"),
        &[("tls.crt", &rot.old.cert_pem), ("tls.key", &old_key)],
    )
    .unwrap();
    let gw = TlsGateway::start(
        &simple_config(&volume.path("tls.crt"), &volume.path("tls.key")),
        &[],
    )
    .unwrap();
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &[]);
    assert_presented(&s, &rot.old, "before the rotation");
    let new_key = rot.new.key_pem(KeyFormat::Pkcs8).unwrap();
    rotate_under_load(&gw, &rot.ca_file, &rot.new, || {
        volume
            .swap(&[("tls.crt", &rot.new.cert_pem), ("tls.key", &new_key)])
            .unwrap();
    });
}

#[test]
fn rotation_by_changing_the_secret_in_the_config_dir() {
    if !require_root("rotation_by_changing_the_secret_in_the_config_dir") {
        return;
    }
    let certs = certs_dir();
    let rot = Rotation::new(certs.path()).unwrap();
    let secret = |leaf: &Leaf| {
        tls_secret(
            "counter-cred",
            &leaf.cert_pem,
            &leaf.key_pem(KeyFormat::Pkcs8).unwrap(),
            None,
        )
    };
    let files = vec![
        gateway_file(&[server(
            443,
            "https",
            "HTTPS",
            &[COUNTER_HOST],
            Some(&[("mode", "SIMPLE"), ("credentialName", "counter-cred")]),
        )]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
        ("secret.yaml".to_owned(), secret(&rot.old)),
    ];
    let gw = TlsGateway::start(&files, &[]).unwrap();
    let s = s_client(&gw.topo, 8443, COUNTER_HOST, &[]);
    assert_presented(&s, &rot.old, "before the rotation");
    let new_secret = secret(&rot.new);
    rotate_under_load(&gw, &rot.ca_file, &rot.new, || {
        gw.config.write("secret.yaml", &new_secret).unwrap();
    });
}

#[test]
fn broken_certificate_changes_keep_the_old_certificate() {
    if !require_root("broken_certificate_changes_keep_the_old_certificate") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let ca_file = ca.write(certs.path(), "ca.pem").unwrap();
    let good = ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256).unwrap();
    let other = ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256).unwrap();
    let expired = ca
        .expired_server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)
        .unwrap();
    let next = ca.server_cert(&[COUNTER_HOST], KeyAlg::Rsa2048).unwrap();
    let (cert, key) = good
        .write(certs.path(), "server", KeyFormat::Pkcs8)
        .unwrap();
    let gw = TlsGateway::start(&simple_config(&cert, &key), &[]).unwrap();
    let ca_path = path_str(&ca_file);
    let still_good = |what: &str| {
        std::thread::sleep(SETTLE);
        let s = s_client(&gw.topo, 8443, COUNTER_HOST, &[]);
        assert_presented(&s, &good, &format!("after {what}"));
        must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/", &["--cacert", &ca_path]);
    };
    still_good("start");

    // Garbage instead of a certificate: logged at WARN or ERROR, naming the file or
    // the server it belongs to; the old certificate keeps serving.
    let log_before = gw.daemon.stderr().lines().count();
    rename_over(&cert, "this is not a certificate\n").unwrap();
    gw.daemon
        .wait_for_output(
            ROTATE_TIMEOUT,
            "a warning about the broken certificate",
            |_, err| {
                err.lines().skip(log_before).any(|l| {
                    (l.contains("WARN") || l.contains("ERROR"))
                        && (l.contains("server.crt") || l.contains("spec.servers[0]"))
                })
            },
        )
        .unwrap();
    still_good("a garbage certificate");
    // /certs still shows the old certificate, and why the change was refused.
    let entry = certs_entry(&gw, &good);
    assert!(
        entry["error"].as_str().is_some_and(|e| !e.is_empty()),
        "/certs does not say why the change was refused: {entry}"
    );

    // The certificate file gone (unreadable).
    std::fs::remove_file(&cert).unwrap();
    still_good("the certificate file was removed");

    // A certificate whose key is not the one in the key file.
    rename_over(&cert, &other.cert_pem).unwrap();
    still_good("a certificate that does not match the key");

    // An expired certificate with its own key.
    rename_over(&key, &expired.key_pem(KeyFormat::Pkcs8).unwrap()).unwrap();
    rename_over(&cert, &expired.cert_pem).unwrap();
    still_good("an expired certificate");

    // The watcher survived all that: a good pair is picked up.
    rename_over(&key, &next.key_pem(KeyFormat::Pkcs8).unwrap()).unwrap();
    rename_over(&cert, &next.cert_pem).unwrap();
    let took = wait_for_certificate(&gw.topo, &next, Instant::now());
    eprintln!("good certificate served {took:?} after the broken ones");
    let entry = certs_entry(&gw, &next);
    assert!(
        entry["error"].is_null(),
        "/certs still reports an error after a good certificate: {entry}"
    );
}

/// The `/certs` entry (admin API) whose certificate chain starts with `leaf`.
fn certs_entry(gw: &TlsGateway, leaf: &Leaf) -> serde_json::Value {
    let serial = leaf.serial_hex().expect("reading the serial number");
    let r = gw
        .topo
        .http_get(Ns::Node, ADMIN_ADDR, "/certs")
        .expect("GET /certs");
    assert_eq!(r.status, 200, "{r:?}");
    let json = r.json().expect("/certs is JSON");
    json["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["cert_chain"][0]["serial_number"]
                .as_str()
                .is_some_and(|s| normalize_serial(s) == serial)
        })
        .cloned()
        .unwrap_or_else(|| panic!("/certs has no entry for serial {serial}: {json:#}"))
}

// ---------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------

/// The JSON access-log record of the request for `path`, waiting (bounded) for it.
fn access_record(gw: &TlsGateway, path: &str) -> serde_json::Value {
    let find = |out: &str| {
        out.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|j| j["path"] == path)
    };
    gw.daemon
        .wait_for_output(Duration::from_secs(5), "the access-log record", |out, _| {
            find(out).is_some()
        })
        .expect("the access log has the record");
    find(&gw.daemon.stdout()).expect("the record was just seen")
}

#[test]
fn access_log_reports_sni_tls_version_cipher_and_peer_subject() {
    if !require_root("access_log_reports_sni_tls_version_cipher_and_peer_subject") {
        return;
    }
    let certs = certs_dir();
    let pki = ClientPki::new(certs.path()).unwrap();
    let leaf = pki
        .server_ca
        .server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)
        .unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "server", KeyFormat::Pkcs8)
        .unwrap();
    let client_ca = pki.client_ca.write(certs.path(), "client-ca.pem").unwrap();
    let tls = vec![
        ("mode", "OPTIONAL_MUTUAL".to_owned()),
        ("serverCertificate", path_str(&cert)),
        ("privateKey", path_str(&key)),
        ("caCertificates", path_str(&client_ca)),
    ];
    let files = vec![
        gateway_file(&[https_server(443, "https", "HTTPS", &[COUNTER_HOST], &tls)]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ];
    let gw = TlsGateway::start(&files, &["--access-log-format", "json"]).unwrap();

    let mut tls13 = pki.curl_args(Some(&pki.good));
    tls13.extend(["--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"].map(str::to_owned));
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/log/tls13", &args(&tls13));
    let mut tls12 = pki.curl_args(None);
    tls12.extend(
        [
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--ciphers",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
        ]
        .map(str::to_owned),
    );
    must_reach_counter(&gw.topo, COUNTER_HOST, 8443, "/log/tls12", &args(&tls12));

    let r = access_record(&gw, "/log/tls13");
    assert_eq!(r["requested_server_name"], COUNTER_HOST, "{r}");
    assert_eq!(r["downstream_tls_version"], "TLSv1.3", "{r}");
    assert_eq!(r["downstream_tls_cipher"], "TLS_AES_128_GCM_SHA256", "{r}");
    assert_eq!(r["downstream_peer_subject"], "CN=client.example.com", "{r}");
    assert_eq!(r["response_code"], 200, "{r}");

    let r = access_record(&gw, "/log/tls12");
    assert_eq!(r["requested_server_name"], COUNTER_HOST, "{r}");
    assert_eq!(r["downstream_tls_version"], "TLSv1.2", "{r}");
    assert_eq!(
        r["downstream_tls_cipher"], "ECDHE-ECDSA-AES256-GCM-SHA384",
        "{r}"
    );
    // No client certificate, no subject.
    let subject = &r["downstream_peer_subject"];
    assert!(subject.is_null() || subject == "-" || subject == "", "{r}");
}

// ---------------------------------------------------------------------------
// Policy scan
// ---------------------------------------------------------------------------

/// The attribute `name` of one XML element line (`name="value"`).
fn xml_attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = line.find(&key)? + key.len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

/// The cipher suites the gateway may accept. "Weak" is everything else: anything
/// below TLS 1.2, and in TLS 1.2 every suite without forward secrecy (static RSA
/// key exchange), without AEAD (all CBC suites, SHA-1 or SHA-2 MACs alike: Lucky13
/// and padding-oracle history), and the RC4, 3DES/DES, NULL, EXPORT, anonymous, MD5,
/// IDEA, SEED and CAMELLIA families by construction. This is Mozilla's "intermediate"
/// profile restricted to what rustls implements.
const STRONG_TLS12: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
];
/// Every TLS 1.3 suite OpenSSL enables by default is AEAD with forward secrecy.
const STRONG_TLS13: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

#[test]
fn sslscan_finds_only_tls_1_2_and_1_3_with_strong_ciphers() {
    if !require_root("sslscan_finds_only_tls_1_2_and_1_3_with_strong_ciphers") {
        return;
    }
    let certs = certs_dir();
    let ca = Ca::new("ingressd test CA", KeyAlg::Rsa2048).unwrap();
    // RSA, so the scan also sees the ECDHE-RSA suites; key in PKCS#1.
    let leaf = ca.server_cert(&[COUNTER_HOST], KeyAlg::Rsa2048).unwrap();
    let (cert, key) = leaf
        .write(certs.path(), "server", KeyFormat::Pkcs1)
        .unwrap();
    let gw = TlsGateway::start(&simple_config(&cert, &key), &[]).unwrap();
    let sni = format!("--sni-name={COUNTER_HOST}");
    let out = gw
        .topo
        .exec(
            Ns::Client,
            "sslscan",
            ["--no-colour", "--xml=-", &sni, "198.18.0.1:8443"],
            Duration::from_secs(120),
        )
        .unwrap();
    let xml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sslscan failed: {}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{xml}");

    let lines: Vec<&str> = xml.lines().map(str::trim).collect();
    let mut enabled = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with("<protocol ")) {
        let version = format!(
            "{}{}",
            xml_attr(line, "type").unwrap_or("?"),
            xml_attr(line, "version").unwrap_or("?")
        );
        if xml_attr(line, "enabled") == Some("1") {
            enabled.push(version);
        }
    }
    enabled.sort();
    assert_eq!(enabled, ["tls1.2", "tls1.3"], "protocols accepted\n{xml}");

    let mut accepted = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with("<cipher ")) {
        let status = xml_attr(line, "status").unwrap_or_default();
        if status != "accepted" && status != "preferred" {
            continue;
        }
        let version = xml_attr(line, "sslversion").unwrap_or_default();
        let cipher = xml_attr(line, "cipher").unwrap_or_default();
        let bits: u32 = xml_attr(line, "bits")
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        let strong = match version {
            "TLSv1.2" => STRONG_TLS12.contains(&cipher),
            "TLSv1.3" => STRONG_TLS13.contains(&cipher),
            _ => false,
        };
        assert!(
            strong && bits >= 128,
            "weak cipher accepted: {version} {cipher} ({bits} bits)\n{xml}"
        );
        accepted.push(format!("{version} {cipher}"));
    }
    assert!(
        accepted.iter().any(|c| c.starts_with("TLSv1.2 "))
            && accepted.iter().any(|c| c.starts_with("TLSv1.3 ")),
        "expected TLS 1.2 and 1.3 suites, got {accepted:?}\n{xml}"
    );
    // Key exchange groups of at least 112-bit strength (NIST's floor: P-256 and up,
    // X25519, ffdhe2048 and up; no small finite-field or binary curves).
    for line in lines.iter().filter(|l| l.starts_with("<group ")) {
        let bits: u32 = xml_attr(line, "bits")
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        assert!(bits >= 112, "weak key exchange group: {line}");
    }
    // No TLS compression (CRIME), no Heartbleed, no insecure renegotiation.
    for line in &lines {
        if line.starts_with("<compression ") {
            assert_eq!(xml_attr(line, "supported"), Some("0"), "{line}");
        }
        if line.starts_with("<heartbleed ") {
            assert_eq!(xml_attr(line, "vulnerable"), Some("0"), "{line}");
        }
        if line.starts_with("<renegotiation ") && xml_attr(line, "supported") == Some("1") {
            assert_eq!(xml_attr(line, "secure"), Some("1"), "{line}");
        }
    }
}

// ---------------------------------------------------------------------------
// ingressd check (no root)
// ---------------------------------------------------------------------------

/// Writes a Gateway with an HTTP server and an HTTPS server with `extra` tls fields
/// into a fresh config dir, runs `ingressd check`, returns (exit code, output).
fn check_https_server(extra: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let dir = ConfigDir::temp()?;
    let certs = dir.path().join("certs");
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256)?;
    let (cert, key) = ca.server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)?.write(
        &certs,
        "server",
        KeyFormat::Pkcs8,
    )?;
    let mut tls = simple_files(&cert, &key);
    tls.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    dir.write_all(&TlsGateway::base_files())?;
    dir.write_all(&[
        gateway_file(&[
            server(80, "http", "HTTP", &[COUNTER_HOST], None),
            https_server(443, "https", "HTTPS", &[COUNTER_HOST], &tls),
        ]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ])?;
    let out = ingressd_cli(&["check", "--config", &dir.path().to_string_lossy()])?;
    Ok((
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn check_rejects_tls_1_0_and_1_1_naming_file_gateway_and_field() {
    for valid in [
        &[][..],
        &[
            ("minProtocolVersion", "TLS_AUTO"),
            ("maxProtocolVersion", "TLS_AUTO"),
        ][..],
        &[
            ("minProtocolVersion", "TLSV1_2"),
            ("maxProtocolVersion", "TLSV1_3"),
        ][..],
    ] {
        let (code, out) = check_https_server(valid).unwrap();
        assert_eq!(code, Some(0), "{valid:?} must pass: {out}");
    }
    for (field, value) in [
        ("minProtocolVersion", "TLSV1_0"),
        ("minProtocolVersion", "TLSV1_1"),
        ("maxProtocolVersion", "TLSV1_1"),
    ] {
        let (code, out) = check_https_server(&[(field, value)]).unwrap();
        assert_eq!(code, Some(1), "{field}: {value} must be an error: {out}");
        let path = format!("spec.servers[1].tls.{field}");
        let line = out
            .lines()
            .find(|l| l.contains(&path))
            .unwrap_or_else(|| panic!("no line names {path}: {out}"));
        let lower = line.to_ascii_lowercase();
        assert!(lower.contains("error"), "not an error: {line}");
        assert!(
            line.contains("gateway.yaml"),
            "does not name the file: {line}"
        );
        assert!(
            lower.contains("istio-system/default-gateway"),
            "does not name the gateway: {line}"
        );
    }
}

#[test]
fn check_warns_about_unknown_cipher_suites_naming_the_field() {
    let (code, out) = check_https_server(&[(
        "cipherSuites",
        "[ECDHE-ECDSA-AES128-GCM-SHA256, DES-CBC3-SHA, NOT-A-CIPHER]",
    )])
    .unwrap();
    assert_eq!(code, Some(0), "unknown cipher names are warnings: {out}");
    for i in [1, 2] {
        let path = format!("spec.servers[1].tls.cipherSuites[{i}]");
        let line = out
            .lines()
            .find(|l| l.contains(&path))
            .unwrap_or_else(|| panic!("no warning names {path}: {out}"));
        assert!(
            line.to_ascii_lowercase().contains("warn"),
            "not a warning: {line}"
        );
    }
    assert!(
        !out.contains("spec.servers[1].tls.cipherSuites[0]"),
        "a supported suite got a diagnostic: {out}"
    );
}

#[test]
fn check_warns_about_certificates_that_do_not_load() {
    let dir = ConfigDir::temp().unwrap();
    let certs = dir.path().join("certs");
    let ca = Ca::new("ingressd test CA", KeyAlg::EcdsaP256).unwrap();
    let (expired_crt, expired_key) = ca
        .expired_server_cert(&[COUNTER_HOST], KeyAlg::EcdsaP256)
        .unwrap()
        .write(&certs, "expired", KeyFormat::Pkcs8)
        .unwrap();
    let missing = certs.join("missing.crt");
    dir.write_all(&TlsGateway::base_files()).unwrap();
    dir.write_all(&[
        gateway_file(&[
            server(80, "http", "HTTP", &[COUNTER_HOST], None),
            https_server(
                443,
                "https",
                "HTTPS",
                &[COUNTER_HOST],
                &simple_files(&missing, &expired_key),
            ),
            https_server(
                9443,
                "tls-alt",
                "HTTPS",
                &[COUNTER_HOST],
                &simple_files(&expired_crt, &expired_key),
            ),
        ]),
        (
            "counter-virtualservice.yaml".to_owned(),
            counter_virtual_service(),
        ),
    ])
    .unwrap();
    let out = ingressd_cli(&["check", "--config", &dir.path().to_string_lossy()]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Warnings, not errors: the files may exist only on the gateway's nodes.
    assert_eq!(out.status.code(), Some(0), "{text}");
    for server in ["spec.servers[1]", "spec.servers[2]"] {
        let line = text
            .lines()
            .find(|l| l.contains(server) && l.to_ascii_lowercase().contains("warn"))
            .unwrap_or_else(|| panic!("no warning for {server}: {text}"));
        assert!(line.contains("default-gateway"), "{line}");
    }
}
