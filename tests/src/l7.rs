//! Helpers of the upstream and protocol tests (`tests/tests/l7_upstream.rs`,
//! `tests/tests/l7_protocols.rs`) on top of [`FeatureGateway`]: batches of curl
//! requests with their own headers (in parallel when asked), the admin `/clusters`
//! and `/stats/prometheus` output parsed, DestinationRules, extra addresses, and an
//! HTTPS server with a certificate a client can verify.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::daemon::{ADMIN_ADDR, node_url};
use crate::features::FeatureGateway;
use crate::http::{HttpResponse, parse_head, read_lossy};
use crate::proc::run_bounded;
use crate::tls::{Ca, KeyAlg, KeyFormat, gateway, server};
use crate::topology::{Ns, Topology};

/// One request of [`FeatureGateway::batch`]: `GET http://198.18.0.1:8080<path>`.
#[derive(Clone, Debug, Default)]
pub struct BatchRequest {
    /// The `Host` header.
    pub host: String,
    /// Path and query.
    pub path: String,
    /// More request headers, `name: value`.
    pub headers: Vec<String>,
    /// Source address (curl `--interface`) in the client namespace.
    pub source: Option<Ipv4Addr>,
}

impl BatchRequest {
    /// A request for `host` and `path` with no other headers.
    pub fn new(host: &str, path: impl Into<String>) -> Self {
        Self {
            host: host.to_owned(),
            path: path.into(),
            ..Self::default()
        }
    }

    /// The same request with one more header.
    pub fn header(mut self, header: impl Into<String>) -> Self {
        self.headers.push(header.into());
        self
    }

    /// The same request sent from `source`.
    pub fn from(mut self, source: Ipv4Addr) -> Self {
        self.source = Some(source);
        self
    }
}

/// A DestinationRule `name` in `default` for Service `host` with `traffic_policy`
/// as its `spec.trafficPolicy` (YAML written from column 0).
pub fn destination_rule(name: &str, host: &str, traffic_policy: &str) -> String {
    let mut yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  host: {host}\n  trafficPolicy:\n"
    );
    for line in traffic_policy.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(yaml, "    {line}");
    }
    yaml
}

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name` (`""` when absent).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }

    /// Whether every `(label, value)` of `want` is on this sample.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == *v)
    }
}

/// Parses the Prometheus text exposition format (comments skipped; label values
/// unescaped). Fails on a line it cannot read.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => (&line[..i], &line[i..]),
            None => bail!("no value: {line}"),
        };
        let mut labels = BTreeMap::new();
        let mut rest = rest;
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                // name="value",
                let Some(&(start, c)) = chars.peek() else {
                    bail!("unterminated labels: {line}");
                };
                if c == '}' {
                    end = start + 1;
                    break;
                }
                if c == ',' || c == ' ' {
                    chars.next();
                    continue;
                }
                let eq = body[start..]
                    .find('=')
                    .with_context(|| format!("label without '=': {line}"))?
                    + start;
                let key = body[start..eq].to_owned();
                while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    bail!("label value not quoted: {line}");
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => bail!("bad escape: {line}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated label value: {line}"),
                    }
                }
                labels.insert(key, value);
            }
            rest = &body[end..];
        }
        let value_text = rest
            .split_whitespace()
            .next()
            .with_context(|| format!("no value: {line}"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("value {v:?} in {line}"))?,
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The per-host `health_flags` of `cluster` in the admin `/clusters` text, by
/// `ip:port`.
pub fn cluster_health(clusters_text: &str, cluster: &str) -> BTreeMap<String, String> {
    let prefix = format!("{cluster}::");
    clusters_text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (host, rest) = l.split_once("::")?;
            let flags = rest.strip_prefix("health_flags::")?;
            Some((host.to_owned(), flags.to_owned()))
        })
        .collect()
}

/// `outbound|80||<service>.default.svc.cluster.local`.
pub fn cluster_name(service: &str) -> String {
    format!("outbound|80||{service}.default.svc.cluster.local")
}

/// What one request of a batch got: status 0 when curl got no response.
#[derive(Clone, Debug)]
pub struct BatchResponse {
    /// The request's index in the batch.
    pub index: usize,
    /// The response (status 0 and nothing else when there was none).
    pub response: HttpResponse,
}

impl BatchResponse {
    /// The `instance` of a counter backend's JSON answer (`""` if it is not one).
    pub fn instance(&self) -> String {
        self.response
            .json()
            .ok()
            .and_then(|j| j["instance"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl FeatureGateway {
    /// Sends `requests` with one curl process from the client namespace to port 8080:
    /// one after the other over keep-alive connections, or with `parallel > 1` that
    /// many at once (each on a connection of its own). Bounded by `timeout`; each
    /// request by curl's `--max-time 10`.
    pub fn batch(
        &self,
        requests: &[BatchRequest],
        parallel: usize,
        timeout: Duration,
    ) -> Result<Vec<BatchResponse>> {
        let dir = tempfile::tempdir().context("creating batch temp dir")?;
        let mut text = String::new();
        for (i, r) in requests.iter().enumerate() {
            if i > 0 {
                text.push_str("next\n");
            }
            let url = node_url(8080, &r.path);
            let _ = writeln!(text, "url = \"{url}\"\nheader = \"Host: {}\"", r.host);
            for h in &r.headers {
                let _ = writeln!(text, "header = \"{}\"", h.replace('"', "\\\""));
            }
            if let Some(source) = r.source {
                let _ = writeln!(text, "interface = \"{source}\"");
            }
            let _ = writeln!(
                text,
                "output = \"{0}/{i}.body\"\ndump-header = \"{0}/{i}.head\"\nsilent\nshow-error\nmax-time = 10",
                dir.path().display()
            );
        }
        let config = dir.path().join("batch.conf");
        std::fs::write(&config, text).context("writing curl config")?;
        let mut cmd = self.topo.exec_command(Ns::Client, "curl", ["-K"]);
        cmd.arg(&config);
        if parallel > 1 {
            cmd.args(["--parallel", "--parallel-immediate", "--parallel-max"])
                .arg(parallel.to_string());
        }
        run_bounded(&mut cmd, timeout)?;
        Ok((0..requests.len())
            .map(|i| {
                let head = read_lossy(&dir.path().join(format!("{i}.head")));
                let response = match parse_head(&head) {
                    Some((status, headers)) => HttpResponse {
                        status,
                        headers,
                        body: read_lossy(&dir.path().join(format!("{i}.body"))),
                    },
                    None => HttpResponse {
                        status: 0,
                        headers: Vec::new(),
                        body: String::new(),
                    },
                };
                BatchResponse { index: i, response }
            })
            .collect())
    }

    /// The admin `/clusters` text.
    pub fn clusters(&self) -> Result<String> {
        let r = self.topo.http_get(Ns::Node, ADMIN_ADDR, "/clusters")?;
        if r.status != 200 {
            bail!("/clusters answered {}: {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// Waits (bounded) until `pred` holds for the `health_flags` of `cluster`; returns
    /// them, or an error with the last ones seen.
    pub fn wait_health(
        &self,
        cluster: &str,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> Result<BTreeMap<String, String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let health = cluster_health(&self.clusters()?, cluster);
            if pred(&health) {
                return Ok(health);
            }
            if Instant::now() >= deadline {
                bail!("{cluster}: health flags still {health:?} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The admin `/stats/prometheus` samples.
    pub fn prometheus(&self) -> Result<Vec<Sample>> {
        let r = self
            .topo
            .http_get(Ns::Node, ADMIN_ADDR, "/stats/prometheus")?;
        if r.status != 200 {
            bail!("/stats/prometheus answered {}: {}", r.status, r.body);
        }
        parse_prometheus(&r.body)
    }
}

/// Adds `addr/24` to `dev` in `ns` (removed with the namespace).
pub fn add_address(topo: &Topology, ns: Ns, dev: &str, addr: Ipv4Addr) -> Result<()> {
    let cidr = format!("{addr}/24");
    let out = topo.exec(
        ns,
        "ip",
        ["addr", "add", cidr.as_str(), "dev", dev],
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        bail!(
            "ip addr add {cidr} dev {dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Certificates for an HTTPS server on Gateway port 443 that clients can verify: a
/// CA and a `*.lab.example.com` certificate it signed, in a temporary directory.
pub struct HttpsFiles {
    /// The CA certificate (for `curl --cacert` and rustls roots).
    pub ca: PathBuf,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The Gateway `default-gateway` with the seed's HTTP server on 80 and an HTTPS
    /// server (SIMPLE, these files) on 443, as a `gateway.yaml` file for
    /// [`FeatureGateway::start`] (it replaces the seed's).
    pub gateway_file: (String, String),
    _dir: tempfile::TempDir,
}

impl HttpsFiles {
    /// Creates the CA, the server certificate and the Gateway.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ingressd-l7-certs-")
            .tempdir()
            .context("creating cert dir")?;
        let ca = Ca::new("ingressd l7 test CA", KeyAlg::EcdsaP256)?;
        let ca_path = ca.write(dir.path(), "ca.crt")?;
        let leaf = ca.server_cert(&["*.lab.example.com"], KeyAlg::EcdsaP256)?;
        let (cert, key) = leaf.write(dir.path(), "server", KeyFormat::Pkcs8)?;
        let cert = cert.display().to_string();
        let key = key.display().to_string();
        let yaml = gateway(&[
            server(80, "http", "HTTP", &["*"], None),
            server(
                443,
                "https",
                "HTTPS",
                &["*"],
                Some(&[
                    ("mode", "SIMPLE"),
                    ("serverCertificate", cert.as_str()),
                    ("privateKey", key.as_str()),
                ]),
            ),
        ]);
        Ok(Self {
            ca: ca_path,
            ca_pem: ca.pem().to_owned(),
            gateway_file: ("gateway.yaml".to_owned(), yaml),
            _dir: dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x y\n# TYPE istio_requests_total counter\nistio_requests_total{reporter=\"source\",response_flags=\"UF,URX\",q=\"a\\\"b\"} 3\nprocess_resident_memory_bytes 1.5e7\nh_bucket{le=\"+Inf\"} 2\n";
        let s = parse_prometheus(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "istio_requests_total");
        assert_eq!(s[0].label("response_flags"), "UF,URX");
        assert_eq!(s[0].label("q"), "a\"b");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].value, 1.5e7);
        assert_eq!(s[2].label("le"), "+Inf");
    }

    #[test]
    fn reads_health_flags() {
        let text = "c::observability_name::c\nc::198.18.1.10:8080::cx_active::0\nc::198.18.1.10:8080::health_flags::/failed_outlier_check\nc::198.18.1.11:8080::health_flags::healthy\nd::198.18.1.12:8080::health_flags::healthy\n";
        let h = cluster_health(text, "c");
        assert_eq!(h.len(), 2);
        assert_eq!(h["198.18.1.10:8080"], "/failed_outlier_check");
    }
}
