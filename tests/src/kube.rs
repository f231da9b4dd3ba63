//! `ingressd run --source kubernetes` against the in-process fake API server
//! ([`crate::fake_apiserver`]), reachable from the node namespace.

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bins::ingressd_bin;
use crate::fake_apiserver::{FakeApiServer, OutageMode};
use crate::fixture::{COUNTER_A, COUNTER_B, COUNTER_PORT, sock};
use crate::proc::Proc;
use crate::topology::{Ns, Topology};
use crate::{KernelMode, SeedConfig};

/// The two TCP echo backends behind the seed's `mysql` route.
pub const ECHO_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
pub const ECHO_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);

/// A topology, backends, the fake API server in the node namespace and a
/// daemon reading it. Fields drop in order: the daemon first.
pub struct KubeGateway {
    pub daemon: Proc,
    pub backends: Vec<Proc>,
    pub api: FakeApiServer,
    pub topo: Topology,
    /// The kubeconfig pointing at `api`.
    pub kubeconfig: std::path::PathBuf,
    _kubeconfig_dir: tempfile::TempDir,
}

/// Every document of a YAML text, as JSON values.
pub fn yaml_objects(text: &str) -> Result<Vec<Value>> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing YAML")?;
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// The seed's objects (gateway Service, Gateway, counter and mysql) for
/// `mysql_backends`.
pub fn seed_objects(mysql_backends: &[Ipv4Addr]) -> Result<Vec<Value>> {
    let seed = SeedConfig {
        mysql_backends: mysql_backends.to_vec(),
        ..crate::SeedGateway::seed_config()
    };
    let mut objects = Vec::new();
    for (_, yaml) in seed.files() {
        objects.extend(yaml_objects(&yaml)?);
    }
    Ok(objects)
}

/// The Node object the daemon reads for its addresses.
pub fn node_object(name: &str, internal_ip: Ipv4Addr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [
            {"type": "InternalIP", "address": internal_ip.to_string()},
            {"type": "Hostname", "address": name},
        ]},
    })
}

/// An EndpointSlice of `service` in `default` with (address, serving,
/// terminating) endpoints on `port` named `port_name`.
pub fn endpoint_slice(
    service: &str,
    port_name: &str,
    port: u16,
    endpoints: &[(Ipv4Addr, bool, bool)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(addr, serving, terminating)| {
            json!({
                "addresses": [addr.to_string()],
                "conditions": {
                    "ready": *serving && !*terminating,
                    "serving": serving,
                    "terminating": terminating,
                },
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-1"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

impl KubeGateway {
    /// The topology with two counters and two TCP echo servers, the fake API
    /// server (serving `istio_versions`, holding `objects`, refusing
    /// connections when `outage`) and the daemon started with `--source
    /// kubernetes` in `kernel` mode; does not wait for readiness.
    pub fn start(
        kernel: KernelMode,
        istio_versions: &[&str],
        objects: &[Value],
        outage: bool,
        extra: &[&str],
    ) -> Result<Self> {
        let topo = Topology::builder()
            .pod_addrs([COUNTER_A, COUNTER_B, ECHO_A, ECHO_B])
            .build()?;
        let backends = vec![
            topo.start_counter(sock(COUNTER_A, COUNTER_PORT), "counter-a")?,
            topo.start_counter(sock(COUNTER_B, COUNTER_PORT), "counter-b")?,
            topo.start_tcp_echo(sock(ECHO_A, 3306), "echo-a")?,
            topo.start_tcp_echo(sock(ECHO_B, 3306), "echo-b")?,
        ];
        // Bound inside the node namespace, so the daemon reaches it on its
        // own loopback.
        let listener = topo
            .in_ns(Ns::Node, || TcpListener::bind("127.0.0.1:0"))?
            .context("binding the fake API server in the node namespace")?;
        let api = FakeApiServer::start_on(listener)?;
        api.served_istio_versions(istio_versions);
        for object in objects {
            api.apply(object.clone())?;
        }
        api.set_outage_mode(OutageMode::Refuse);
        api.set_outage(outage);
        let kubeconfig = tempfile::tempdir()?;
        let kubeconfig_path = api.write_kubeconfig(&kubeconfig.path().join("kubeconfig"))?;
        let mut args: Vec<String> = [
            "run",
            "--source",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig_path.to_string_lossy(),
            "--node-name",
            "node-1",
            "--bpffs-root",
            &topo.pin_root().to_string_lossy(),
            "--kernel",
            kernel.as_str(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let daemon = topo.spawn(Ns::Node, "ingressd", &ingressd_bin()?, &args)?;
        Ok(Self {
            daemon,
            backends,
            api,
            topo,
            kubeconfig: kubeconfig_path,
            _kubeconfig_dir: kubeconfig,
        })
    }

    /// `ingressd <subcommand> --source kubernetes --kubeconfig ... <args>`
    /// (check, explain, dump) in the node namespace.
    pub fn cli(&self, subcommand: &str, args: &[&str]) -> Result<std::process::Output> {
        let kubeconfig = self.kubeconfig.to_string_lossy().into_owned();
        let mut all = vec![
            subcommand,
            "--source",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
        ];
        all.extend_from_slice(args);
        self.topo
            .exec(Ns::Node, ingressd_bin()?, all, Duration::from_secs(60))
    }

    /// Applies every object.
    pub fn apply_all(&self, objects: &[Value]) -> Result<()> {
        for object in objects {
            self.api.apply(object.clone())?;
        }
        Ok(())
    }

    /// `GET /healthz/ready` status from the node namespace (0 when refused).
    pub fn ready_status(&self) -> u16 {
        self.topo
            .http_get(Ns::Node, crate::STATUS_ADDR, "/healthz/ready")
            .map_or(0, |r| r.status)
    }

    /// Polls until `check` holds, at most `timeout`; the error carries the
    /// daemon's log tail.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{what}: not within {timeout:?}\n{}",
            self.daemon.log_tail(40)
        )
    }

    /// The status of `GET http://198.18.0.1:port/` with `Host: host` from
    /// the client namespace, and the counter that answered.
    pub fn request(&self, port: u16, host: &str) -> (u16, Option<String>) {
        match self.topo.get(&crate::node_url(port, "/"), host) {
            Ok(r) => {
                let backend = r
                    .response
                    .as_ref()
                    .and_then(|resp| resp.json().ok())
                    .and_then(|j| j["instance"].as_str().map(str::to_owned));
                (r.status(), backend)
            }
            Err(_) => (0, None),
        }
    }
}
