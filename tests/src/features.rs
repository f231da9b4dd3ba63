//! The gateway the VirtualService feature tests run against: four `counter` backends
//! (three behind `counter`, with Pod labels for subsets, and a mirror), Services over
//! them, a DestinationRule, and VirtualServices built from their `http:` YAML.
//!
//! ```text
//!  counter-a 198.18.1.10  Pod version=v1   Services counter, solo-a, half-dead
//!  counter-b 198.18.1.11  Pod version=v2   Services counter, solo-b
//!  counter-c 198.18.1.12  Pod version=v2   Service  counter
//!  counter-m 198.18.1.13                   Service  shadow (mirror target)
//!  nothing   198.18.1.2:8080               Services dead, half-dead (connection refused)
//! ```
//!
//! `half-dead` is balanced round robin; the DestinationRule for `counter` defines subsets `v1`, `v2` and `v3` (which no Pod
//! has) by the `version` label.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::access_log::{AccessEntry, parse_all};
use crate::config::{ConfigDir, SeedConfig, self_signed_cert, service_with_endpoints};
use crate::daemon::ADMIN_ADDR;
use crate::fixture::{COUNTER_PORT, sock};
use crate::http::HttpResponse;
use crate::proc::Proc;
use crate::topology::{Ns, PODS_ADDR, Topology};

/// The backends: name, address, `version` label (`None`: no Pod object).
pub const BACKENDS: [(&str, Ipv4Addr, Option<&str>); 4] = [
    ("counter-a", Ipv4Addr::new(198, 18, 1, 10), Some("v1")),
    ("counter-b", Ipv4Addr::new(198, 18, 1, 11), Some("v2")),
    ("counter-c", Ipv4Addr::new(198, 18, 1, 12), Some("v2")),
    ("counter-m", Ipv4Addr::new(198, 18, 1, 13), None),
];

/// The Gateway every feature VirtualService binds to (`istio-system/default-gateway`).
pub const GATEWAY: &str = "istio-system/default-gateway";

/// A VirtualService `name` in `default` bound to [`GATEWAY`] for `hosts`, with `http`
/// as its `spec.http` list (YAML written from column 0, e.g. `- match: ...`).
pub fn http_virtual_service(name: &str, hosts: &[&str], http: &str) -> String {
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  gateways:\n  - {GATEWAY}\n  hosts:\n"
    );
    for host in hosts {
        let _ = writeln!(yaml, "  - {host}");
    }
    yaml.push_str("  http:\n");
    for line in http.lines() {
        let _ = writeln!(yaml, "  {line}");
    }
    yaml
}

/// The Services, Pods and DestinationRule of the module docs, as one file.
fn backend_resources() -> String {
    let addr = |name: &str| {
        BACKENDS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, a, _)| *a)
            .expect("a backend of BACKENDS")
    };
    let services: [(&str, Vec<Ipv4Addr>); 6] = [
        ("solo-a", vec![addr("counter-a")]),
        ("solo-b", vec![addr("counter-b")]),
        ("shadow", vec![addr("counter-m")]),
        ("dead", vec![PODS_ADDR]),
        ("half-dead", vec![PODS_ADDR, addr("counter-a")]),
        (
            "counter",
            vec![addr("counter-a"), addr("counter-b"), addr("counter-c")],
        ),
    ];
    let mut docs: Vec<String> = services
        .iter()
        .map(|(name, addrs)| service_with_endpoints(name, "http", 80, COUNTER_PORT, addrs))
        .collect();
    for (name, ip, version) in BACKENDS {
        if let Some(version) = version {
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    app: counter\n    version: {version}\nstatus:\n  podIP: {ip}\n"
            ));
        }
    }
    // Round robin over `half-dead`, so that the dead endpoint comes first for every
    // other request (Istio's default, LEAST_REQUEST, picks at random when idle).
    docs.push(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: half-dead\n  namespace: default\nspec:\n  host: half-dead\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n"
            .to_owned(),
    );
    docs.push(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: counter\n  namespace: default\nspec:\n  host: counter.default.svc.cluster.local\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n"
            .to_owned(),
    );
    docs.join("---\n")
}

/// A running gateway with the feature backends. Fields drop in order: the daemon
/// first, the topology last.
pub struct FeatureGateway {
    /// `ingressd run --kernel off`.
    pub daemon: Proc,
    /// The backends of [`BACKENDS`], in that order.
    pub backends: Vec<Proc>,
    /// The watched config directory.
    pub config: ConfigDir,
    /// The namespaces.
    pub topo: Topology,
}

impl FeatureGateway {
    /// Builds the topology, starts the backends, writes the seed's Gateway and Services
    /// plus [`backend_resources`] and `files`, and starts `ingressd run --kernel off
    /// <extra...>`, waiting until it is ready.
    pub fn start(files: &[(String, String)], extra: &[&str]) -> Result<Self> {
        Self::start_with(files, extra, false)
    }

    /// [`FeatureGateway::start`], with the seed's HTTPS server on port 443 (target
    /// port 8443, a self-signed certificate for `*.lab.example.com`) when `https`.
    pub fn start_with(files: &[(String, String)], extra: &[&str], https: bool) -> Result<Self> {
        let topo = Topology::builder()
            .pod_addrs(BACKENDS.iter().map(|(_, addr, _)| *addr))
            .build()?;
        let backends = BACKENDS
            .iter()
            .map(|(name, addr, _)| topo.start_counter(sock(*addr, COUNTER_PORT), name))
            .collect::<Result<Vec<_>>>()?;
        let config = ConfigDir::temp()?;
        let tls_files = if https {
            Some(self_signed_cert(&config.path().join("certs"))?)
        } else {
            None
        };
        let seed = SeedConfig {
            counter_backends: Vec::new(),
            counter_port: COUNTER_PORT,
            mysql_backends: Vec::new(),
            tls_files,
        };
        // The seed's Gateway and gateway Service; its counter VirtualService and
        // Service are replaced by the feature resources.
        for (name, yaml) in seed.files() {
            if name.starts_with("gateway") {
                config.write(&name, &yaml)?;
            }
        }
        config.write("backends.yaml", &backend_resources())?;
        config.write_all(files)?;
        let mut args = vec!["--kernel", "off"];
        args.extend_from_slice(extra);
        let daemon = topo.start_ingressd(config.path(), &args)?;
        Ok(Self {
            daemon,
            backends,
            config,
            topo,
        })
    }

    /// `curl` from the client namespace to `198.18.0.1:8080<path>` with `Host: host`
    /// and `args` (e.g. `-X`, `-H`); the response, or an error if curl got none.
    pub fn request(&self, host: &str, path: &str, args: &[&str]) -> Result<HttpResponse> {
        self.request_on(8080, host, path, args)
    }

    /// [`FeatureGateway::request`] to another port of the node.
    pub fn request_on(
        &self,
        port: u16,
        host: &str,
        path: &str,
        args: &[&str],
    ) -> Result<HttpResponse> {
        let host_header = format!("Host: {host}");
        let url = crate::daemon::node_url(port, path);
        let mut all = vec!["-H", host_header.as_str()];
        all.extend_from_slice(args);
        all.push(&url);
        self.topo
            .curl(Ns::Client, &all)?
            .ok()
            .with_context(|| format!("{host}{path}"))
    }

    /// `curl -k https://<host>:8443<path>` from the client namespace, `host` resolved
    /// to the node (the gateway must have been started with HTTPS).
    pub fn request_https(&self, host: &str, path: &str, args: &[&str]) -> Result<HttpResponse> {
        let resolve = format!("{host}:8443:{}", crate::topology::NODE_ADDR);
        let url = format!("https://{host}:8443{path}");
        let mut all = vec!["-k", "--resolve", resolve.as_str()];
        all.extend_from_slice(args);
        all.push(&url);
        self.topo
            .curl(Ns::Client, &all)?
            .ok()
            .with_context(|| format!("https {host}{path}"))
    }

    /// Requests each backend logged whose path contains `marker`, by backend name
    /// (backends that saw none are left out).
    pub fn hits(&self, marker: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for backend in &self.backends {
            let n = backend_lines(backend, marker).len();
            if n > 0 {
                out.insert(backend.name().to_owned(), n);
            }
        }
        out
    }

    /// The request lines each backend logged whose path contains `marker`.
    pub fn hit_lines(&self, marker: &str) -> Vec<String> {
        self.backends
            .iter()
            .flat_map(|b| backend_lines(b, marker))
            .collect()
    }

    /// Waits (bounded) until the backends logged `n` requests with `marker` in the
    /// path, for fire-and-forget traffic such as mirrors; returns what they logged.
    pub fn wait_hits(&self, marker: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.hit_lines(marker);
            if lines.len() >= n || Instant::now() >= deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every access-log entry the daemon wrote so far.
    pub fn access_log(&self) -> Vec<AccessEntry> {
        parse_all(&self.daemon.stdout())
    }

    /// Waits (bounded) for the access-log entry of the request whose path (as the
    /// client sent it) is `path`; the log line is written when the response ends.
    pub fn access_entry(&self, path: &str) -> Result<AccessEntry> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let entries = self.access_log();
            let mut found = entries.iter().filter(|e| e.path == path);
            if let Some(entry) = found.next() {
                if found.next().is_some() {
                    bail!("more than one access-log entry for {path}");
                }
                return Ok(entry.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no access-log entry for {path} within 5 s\n{}",
                    self.daemon.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin `/stats` counters (`name: value` lines).
    pub fn stats(&self) -> Result<HashMap<String, u64>> {
        let r = self.topo.http_get(Ns::Node, ADMIN_ADDR, "/stats")?;
        if r.status != 200 {
            bail!("/stats answered {}: {}", r.status, r.body);
        }
        Ok(r.body
            .lines()
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }
}

fn backend_lines(backend: &Proc, marker: &str) -> Vec<String> {
    // `counter NAME: #N METHOD PATH host=HOST body=N from PEER`
    backend
        .stdout()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|path| path.contains(marker))
        })
        .map(str::to_owned)
        .collect()
}

/// `cluster.<cluster>.<stat>` of a Service in `default` on port 80, from [`FeatureGateway::stats`].
pub fn cluster_stat(stats: &HashMap<String, u64>, service: &str, stat: &str) -> u64 {
    stats
        .get(&format!(
            "cluster.outbound|80||{service}.default.svc.cluster.local.{stat}"
        ))
        .copied()
        .unwrap_or(0)
}
