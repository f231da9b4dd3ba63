//! Config directories of Istio/Kubernetes YAML: the seed article's resources, parameterised.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A directory of YAML files for `ingressd run --config DIR`.
///
/// Writes are atomic (write a hidden temp file, then rename), so a watching daemon
/// never sees half a file.
pub struct ConfigDir {
    path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl ConfigDir {
    /// A fresh temporary directory, removed on drop.
    pub fn temp() -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("ingressd-config-")
            .tempdir()
            .context("creating config dir")?;
        Ok(Self {
            path: tmp.path().to_owned(),
            _tmp: Some(tmp),
        })
    }

    /// `path`, emptied of YAML files (created if missing), kept on drop.
    pub fn at(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let p = entry.path();
            let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if yaml && entry.file_type()?.is_file() {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        Ok(Self { path, _tmp: None })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes (or replaces) `name` atomically.
    pub fn write(&self, name: &str, yaml: &str) -> Result<PathBuf> {
        let target = self.path.join(name);
        let tmp = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(target)
    }

    /// Writes every `(name, yaml)` pair.
    pub fn write_all(&self, files: &[(String, String)]) -> Result<()> {
        for (name, yaml) in files {
            self.write(name, yaml)?;
        }
        Ok(())
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let target = self.path.join(name);
        std::fs::remove_file(&target).with_context(|| format!("removing {}", target.display()))
    }
}

/// Host name of the seed's counter VirtualService.
pub const COUNTER_HOST: &str = "counter.lab.example.com";

/// What [`seed_config`] writes.
#[derive(Clone, Debug)]
pub struct SeedConfig {
    /// Addresses of the counter backends (EndpointSlice endpoints, port [`SeedConfig::counter_port`]).
    pub counter_backends: Vec<Ipv4Addr>,
    /// The counter pods' container port (the counter Service's targetPort).
    pub counter_port: u16,
    /// Addresses of the "mysql" backends (any TCP server on port 3306).
    pub mysql_backends: Vec<Ipv4Addr>,
    /// Certificate and key files for the HTTPS server on port 443; `None` leaves the
    /// HTTPS server out of the Gateway.
    pub tls_files: Option<(PathBuf, PathBuf)>,
}

impl SeedConfig {
    /// The seed article's configuration for these backends, as `(file name, YAML)` pairs:
    /// the `istio-ingressgateway` Service, the `default-gateway` Gateway, the `counter`
    /// VirtualService + Service + EndpointSlice, and the `mysql` VirtualService +
    /// Service + EndpointSlice.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut files = vec![
            ("gateway-service.yaml".to_owned(), gateway_service()),
            ("gateway.yaml".to_owned(), self.gateway()),
            (
                "counter-virtualservice.yaml".to_owned(),
                counter_virtual_service(),
            ),
            (
                "counter-service.yaml".to_owned(),
                service_with_endpoints(
                    "counter",
                    "http",
                    80,
                    self.counter_port,
                    &self.counter_backends,
                ),
            ),
        ];
        if !self.mysql_backends.is_empty() {
            files.push((
                "mysql-virtualservice.yaml".to_owned(),
                mysql_virtual_service(),
            ));
            files.push((
                "mysql-service.yaml".to_owned(),
                service_with_endpoints("mysql", "tcp-mysql", 3306, 3306, &self.mysql_backends),
            ));
        }
        files
    }

    fn gateway(&self) -> String {
        let mut yaml = String::from(
            "\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: default-gateway
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
",
        );
        if let Some((cert, key)) = &self.tls_files {
            let _ = write!(
                yaml,
                "  - hosts:
    - '*'
    port:
      name: https
      number: 443
      protocol: HTTPS
    tls:
      mode: SIMPLE
      privateKey: {}
      serverCertificate: {}
",
                key.display(),
                cert.display()
            );
        }
        yaml.push_str(
            "  - hosts: # For TCP routing this field is matched with the VirtualService's hosts.
    - '*'
    port:
      name: mysql
      number: 3306
      protocol: TCP
",
        );
        yaml
    }
}

/// The `istio-ingressgateway` Service: NodePorts 30080/30443/30306 to target ports 8080/8443/3306.
pub fn gateway_service() -> String {
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
    targetPort: 8080
    nodePort: 30080
    protocol: TCP
  - name: https
    port: 443
    targetPort: 8443
    nodePort: 30443
    protocol: TCP
  - name: mysql
    port: 3306
    targetPort: 3306
    nodePort: 30306
    protocol: TCP
"
    .to_owned()
}

/// The seed's `counter` VirtualService (bound through the legacy gateway name).
pub fn counter_virtual_service() -> String {
    virtual_service("counter", COUNTER_HOST, "counter", 80)
}

/// A VirtualService `name` in `default` on `default-gateway` routing `host` (prefix `/`)
/// to `dest_host:dest_port`.
pub fn virtual_service(name: &str, host: &str, dest_host: &str, dest_port: u16) -> String {
    format!(
        "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: {name}
  namespace: default
spec:
  gateways:
  - default-gateway.istio-system.svc.cluster.local
  hosts:
  - {host}
  http:
  - match:
    - uri:
        prefix: /
    route:
    - destination:
        host: {dest_host}
        port:
          number: {dest_port}
"
    )
}

/// The seed's `mysql` VirtualService: TCP port 3306 to `mysql.default.svc.cluster.local:3306`.
pub fn mysql_virtual_service() -> String {
    "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: mysql
  namespace: default
spec:
  gateways:
  - default-gateway.istio-system.svc.cluster.local
  hosts:
  - '*'
  tcp:
  - match:
    - port: 3306
    route:
    - destination:
        host: mysql.default.svc.cluster.local
        port:
          number: 3306
"
    .to_owned()
}

/// A Service `name` in `default` (`port` -> `target_port`) plus its EndpointSlice with
/// one ready endpoint per address.
pub fn service_with_endpoints(
    name: &str,
    port_name: &str,
    port: u16,
    target_port: u16,
    addrs: &[Ipv4Addr],
) -> String {
    let mut yaml = format!(
        "\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  selector:
    app: {name}
  ports:
  - name: {port_name}
    port: {port}
    targetPort: {target_port}
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels:
    kubernetes.io/service-name: {name}
addressType: IPv4
ports:
- name: {port_name}
  port: {target_port}
  protocol: TCP
endpoints:"
    );
    yaml.push_str(if addrs.is_empty() { " []\n" } else { "\n" });
    for addr in addrs {
        let _ = write!(
            yaml,
            "- addresses:\n  - {addr}\n  conditions:\n    ready: true\n"
        );
    }
    yaml
}

/// Creates a self-signed certificate for `*.lab.example.com` with openssl; returns
/// `(cert, key)` paths inside `dir`. Reuses existing files.
pub fn self_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
    ])
    .args(["-subj", "/CN=*.lab.example.com"])
    .args([
        "-addext",
        "subjectAltName=DNS:*.lab.example.com,DNS:lab.example.com",
    ])
    .arg("-keyout")
    .arg(&key)
    .arg("-out")
    .arg(&cert);
    crate::proc::run_ok(&mut cmd, std::time::Duration::from_secs(60))
        .context("creating a self-signed certificate with openssl")?;
    Ok((cert, key))
}
