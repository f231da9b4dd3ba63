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
                "\
  - name: r{j}
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
}
