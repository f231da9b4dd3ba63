//! Istio/Kubernetes YAML for ingressd in the benchmarks. HTTP: generated from the
//! [`RouteTable`]: the gateway Service and Gateway, one VirtualService per virtual host
//! with one prefix route per path, and the backend Service + EndpointSlice. TLS
//! ([`tls_files`]): one HTTPS server (`tls.mode: SIMPLE`, TLS 1.3 only) with a fixed
//! `directResponse` and one prefix route to the backend.

use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::path::Path;

use super::routes::RouteTable;

/// Name of the Gateway (in `istio-system`) every VirtualService binds to.
pub const GATEWAY: &str = "bench-gateway";
/// Name of the backend Service (in `default`).
pub const BACKEND_SERVICE: &str = "bench-backend";
/// Port ingressd's listener binds (the gateway Service's targetPort for port 80).
pub const LISTEN_PORT: u16 = 8080;

/// The config directory's files, as `(file name, YAML)` pairs.
pub fn files(table: &RouteTable) -> Vec<(String, String)> {
    vec![
        ("gateway-service.yaml".to_owned(), gateway_service()),
        ("gateway.yaml".to_owned(), gateway()),
        ("virtualservices.yaml".to_owned(), virtual_services(table)),
        (
            "backend-service.yaml".to_owned(),
            ingressd_tests::config::service_with_endpoints(
                BACKEND_SERVICE,
                "http",
                80,
                table.backend_port(),
                &table.backend_ips(),
            ),
        ),
    ]
}

fn gateway_service() -> String {
    gateway_service_port("http2", 80, LISTEN_PORT, 30080)
}

/// The `istio-ingressgateway` Service with one port (`port` -> `target_port`, `node_port`).
fn gateway_service_port(name: &str, port: u16, target_port: u16, node_port: u16) -> String {
    format!(
        "\
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels:
    istio: ingressgateway
spec:
  type: NodePort
  selector:
    istio: ingressgateway
  ports:
  - name: {name}
    port: {port}
    targetPort: {target_port}
    nodePort: {node_port}
    protocol: TCP
"
    )
}

fn gateway() -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: {GATEWAY}
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - hosts:
    - '*'
    port:
      name: http
      number: 80
      protocol: HTTP
"
    )
}

/// One VirtualService per virtual host, each with one `uri.prefix` route per path.
fn virtual_services(table: &RouteTable) -> String {
    let mut yaml = String::new();
    for (i, host) in table.host_names().iter().enumerate() {
        if i > 0 {
            yaml.push_str("---\n");
        }
        let _ = write!(
            yaml,
            "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: h{i:03}
  namespace: default
spec:
  gateways:
  - istio-system/{GATEWAY}
  hosts:
  - {host}
  http:
"
        );
        for (j, prefix) in table.prefix_list().iter().enumerate() {
            let _ = write!(
                yaml,
                // No `\` line continuation here: it would eat the leading indentation.
                "  - name: r{j}
    match:
    - uri:
        prefix: {prefix}
    route:
    - destination:
        host: {BACKEND_SERVICE}
        port:
          number: 80
"
            );
        }
    }
    yaml
}

/// Port ingressd's HTTPS listener binds in the TLS benchmark (the gateway Service's
/// targetPort for port 443).
pub const TLS_LISTEN_PORT: u16 = 8443;

/// What the TLS benchmark's ingressd serves, for [`tls_files`].
#[derive(Clone, Debug)]
pub struct TlsSite<'a> {
    /// The one host name (Gateway server host, VirtualService host, certificate name).
    pub host: &'a str,
    /// PEM certificate file.
    pub cert: &'a Path,
    /// PEM private key file.
    pub key: &'a Path,
    /// Body of the fixed `200` every path but [`TlsSite::bulk_prefix`] gets.
    pub body: &'a str,
    /// Path prefix routed to the backend.
    pub bulk_prefix: &'a str,
    /// The backend (one endpoint of [`BACKEND_SERVICE`], port 80 of the Service).
    pub backend: SocketAddrV4,
}

/// The config directory of the TLS benchmark: the gateway Service (443 -> 8443, nodePort
/// 30443), a Gateway with one `HTTPS` server (`SIMPLE`, the files' certificate and key,
/// `minProtocolVersion: TLSV1_3`), one VirtualService with a `uri.prefix` route to the
/// backend and a catch-all `directResponse`, and the backend Service + EndpointSlice.
pub fn tls_files(site: &TlsSite<'_>) -> Vec<(String, String)> {
    let gateway = format!(
        "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: {GATEWAY}
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
  - hosts:
    - {host}
    port:
      name: https
      number: 443
      protocol: HTTPS
    tls:
      mode: SIMPLE
      serverCertificate: {cert}
      privateKey: {key}
      minProtocolVersion: TLSV1_3
",
        host = site.host,
        cert = site.cert.display(),
        key = site.key.display(),
    );
    let virtual_service = format!(
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tls-bench
  namespace: default
spec:
  gateways:
  - istio-system/{GATEWAY}
  hosts:
  - {host}
  http:
  - name: bulk
    match:
    - uri:
        prefix: {prefix}
    route:
    - destination:
        host: {BACKEND_SERVICE}
        port:
          number: 80
  - name: fixed
    directResponse:
      status: 200
      body:
        string: \"{body}\"
",
        host = site.host,
        prefix = site.bulk_prefix,
        body = site.body.escape_default(),
    );
    vec![
        (
            "gateway-service.yaml".to_owned(),
            gateway_service_port("https", 443, TLS_LISTEN_PORT, 30443),
        ),
        ("gateway.yaml".to_owned(), gateway),
        ("virtualservice.yaml".to_owned(), virtual_service),
        (
            "backend-service.yaml".to_owned(),
            ingressd_tests::config::service_with_endpoints(
                BACKEND_SERVICE,
                "http",
                80,
                site.backend.port(),
                &[*site.backend.ip()],
            ),
        ),
    ]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::bench::routes::sample;

    #[test]
    fn a_virtual_service_per_host_and_a_route_per_prefix() {
        let files = files(&sample());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "gateway-service.yaml",
                "gateway.yaml",
                "virtualservices.yaml",
                "backend-service.yaml"
            ]
        );
        let vs = &files[2].1;
        assert_eq!(vs.matches("kind: VirtualService\n").count(), 100);
        assert_eq!(vs.matches("prefix: ").count(), 1000);
        assert_eq!(vs.matches("  - istio-system/bench-gateway\n").count(), 100);
        assert!(vs.contains("  - h042.bench.example\n"));
        assert!(vs.contains("        prefix: /r7/\n"));
        let backend = &files[3].1;
        assert!(backend.contains("  - 198.18.1.10\n"));
        assert!(backend.contains("  - 198.18.1.11\n"));
        assert!(backend.contains("kubernetes.io/service-name: bench-backend"));
        assert!(files[0].1.contains(&format!("targetPort: {LISTEN_PORT}")));
    }

    /// The daemon's own pipeline accepts the files without a warning and routes every
    /// benchmark request to the backend cluster (what `ingressd check` and `explain` say).
    #[test]
    fn ingressd_compiles_and_routes_the_table() {
        use ingress_userspace::explain::{Query, explain};
        use ingress_userspace::pipeline::{Options, build_from_dir};

        let table = sample();
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, yaml) in files(&table) {
            std::fs::write(dir.path().join(name), yaml).expect("write yaml");
        }
        let outcome = build_from_dir(dir.path(), &Options::default());
        let shown: Vec<String> = outcome
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(shown.is_empty(), "diagnostics: {shown:#?}");
        let snapshot = outcome.snapshot.expect("no errors, so a snapshot");
        let ask = |host: &str, path: &str| {
            explain(
                &snapshot,
                &Query {
                    port: 80,
                    host: Some(host.to_owned()),
                    path: Some(path.to_owned()),
                    ..Query::default()
                },
            )
        };
        for (host, path) in table.requests() {
            let answer = ask(&host, &path);
            assert!(answer["error"].is_null(), "{host}{path}: {answer:#}");
            let cluster = answer["cluster"].to_string();
            assert!(
                cluster.contains("bench-backend.default.svc.cluster.local"),
                "{host}{path}: {answer:#}"
            );
        }
        assert_eq!(ask("h000.bench.example", "/zz/item")["error"], "no_route");
        assert_eq!(
            ask("unknown.bench.example", "/r0/item")["error"],
            "no_virtual_host"
        );
    }

    pub(crate) fn tls_site<'a>(cert: &'a Path, key: &'a Path) -> TlsSite<'a> {
        TlsSite {
            host: "tls.bench.example",
            cert,
            key,
            body: "bench tls\n",
            bulk_prefix: "/bulk",
            backend: SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 1, 10), 8080),
        }
    }

    #[test]
    fn tls_files_have_an_https_server_a_direct_response_and_a_bulk_route() {
        let site = tls_site(Path::new("/d/cert.pem"), Path::new("/d/key.pem"));
        let files = tls_files(&site);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "gateway-service.yaml",
                "gateway.yaml",
                "virtualservice.yaml",
                "backend-service.yaml"
            ]
        );
        assert!(
            files[0]
                .1
                .contains("  - name: https\n    port: 443\n    targetPort: 8443\n")
        );
        let gw = &files[1].1;
        assert!(gw.contains("    - tls.bench.example\n"));
        assert!(gw.contains("      protocol: HTTPS\n"));
        assert!(gw.contains("      mode: SIMPLE\n"));
        assert!(gw.contains("      serverCertificate: /d/cert.pem\n"));
        assert!(gw.contains("      privateKey: /d/key.pem\n"));
        assert!(gw.contains("      minProtocolVersion: TLSV1_3\n"));
        let vs = &files[2].1;
        assert!(vs.contains("  - istio-system/bench-gateway\n"));
        assert!(vs.contains("        prefix: /bulk\n"));
        assert!(vs.contains("        string: \"bench tls\\n\"\n"), "{vs}");
        assert!(files[3].1.contains("  - 198.18.1.10\n"));
        assert!(files[3].1.contains("  port: 8080\n"));
    }

    /// The daemon's own pipeline accepts the TLS files without a warning: port 443 (and
    /// its targetPort) terminates TLS for the host, `/` is the direct response and the
    /// bulk prefix goes to the backend.
    #[test]
    fn ingressd_terminates_tls_and_routes_the_tls_site() {
        use ingress_userspace::explain::{Query, explain};
        use ingress_userspace::pipeline::{Options, build_from_dir};

        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args(["-subj", "/CN=tls.bench.example", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl req");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).expect("config dir");
        for (name, yaml) in tls_files(&tls_site(&cert, &key)) {
            std::fs::write(config.join(name), yaml).expect("write yaml");
        }
        let outcome = build_from_dir(&config, &Options::default());
        let shown: Vec<String> = outcome
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(shown.is_empty(), "diagnostics: {shown:#?}");
        let snapshot = outcome.snapshot.expect("no errors, so a snapshot");
        let ask = |port: u16, path: &str| {
            explain(
                &snapshot,
                &Query {
                    port,
                    host: Some("tls.bench.example".to_owned()),
                    path: Some(path.to_owned()),
                    tls: true,
                    sni: Some("tls.bench.example".to_owned()),
                    ..Query::default()
                },
            )
        };
        for port in [443, TLS_LISTEN_PORT] {
            let fixed = ask(port, "/");
            assert_eq!(fixed["error"], "direct_response", "{fixed:#}");
            assert_eq!(fixed["filter_chain"]["mode"], "terminate_http", "{fixed:#}");
            let bulk = ask(port, "/bulk/64MiB");
            assert!(bulk["error"].is_null(), "{bulk:#}");
            assert!(
                bulk["cluster"]
                    .to_string()
                    .contains("bench-backend.default.svc.cluster.local"),
                "{bulk:#}"
            );
        }
    }
}
