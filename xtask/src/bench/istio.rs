//! Istio/Kubernetes YAML for ingressd in the HTTP benchmark, generated from the
//! [`RouteTable`]: the gateway Service and Gateway, one VirtualService per virtual host
//! with one prefix route per path, and the backend Service + EndpointSlice.

use std::fmt::Write as _;

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
  - name: http2
    port: 80
    targetPort: {LISTEN_PORT}
    nodePort: 30080
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

#[cfg(test)]
mod tests {
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
}
