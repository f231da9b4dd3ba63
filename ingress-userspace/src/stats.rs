//! Observability of the data path: Istio-named Prometheus metrics, Envoy-like
//! `/stats` counters, process basics and the kernel's packet, service,
//! backend and steering counters.
//!
//! The proxy records into [`Metrics`]; the admin server renders it. Metric
//! names and labels are the ones an Istio ingress gateway reports
//! (`reporter="source"`), so dashboards and alerts written for Istio work.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;

use crate::snapshot::{Cluster, Discovery, GatewayIdentity};

/// Istio's buckets for `istio_request_duration_milliseconds`.
pub const ISTIO_DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Buckets of `istio_request_bytes` / `istio_response_bytes`: powers of ten
/// from 1 byte to 100 MB, as they appear in Istio's Prometheus output.
pub const ISTIO_SIZE_BUCKETS_BYTES: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];

/// Labels of `istio_requests_total` and `istio_request_duration_milliseconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_app: String,
    pub source_canonical_service: String,
    pub destination_workload: &'static str,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub destination_canonical_service: String,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// Labels of the `istio_tcp_*` metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_app: String,
    pub destination_workload: &'static str,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

/// Labels of `ingressd_config_reload_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

/// Who the gateway is, for the `source_*` labels.
#[derive(Clone, Debug)]
pub struct SourceIdentity {
    pub workload: String,
    pub namespace: String,
    pub app: String,
}

impl SourceIdentity {
    /// The gateway's `app` label (Istio's chart sets `app: istio-ingressgateway`),
    /// falling back to Istio's default gateway name.
    pub fn from_gateway(gateway: &GatewayIdentity) -> Self {
        let app = gateway
            .labels
            .get("app")
            .cloned()
            .unwrap_or_else(|| "istio-ingressgateway".to_owned());
        Self {
            workload: app.clone(),
            namespace: gateway.namespace.clone(),
            app,
        }
    }
}

/// The `destination_service*` labels of a cluster (or `unknown`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DestinationLabels {
    pub service: String,
    pub name: String,
    pub namespace: String,
}

impl DestinationLabels {
    /// The shared `unknown` labels (requests that reached no cluster).
    pub fn unknown_shared() -> Arc<Self> {
        static UNKNOWN: std::sync::LazyLock<Arc<DestinationLabels>> =
            std::sync::LazyLock::new(|| Arc::new(DestinationLabels::unknown()));
        UNKNOWN.clone()
    }

    pub fn unknown() -> Self {
        Self {
            service: "unknown".to_owned(),
            name: "unknown".to_owned(),
            namespace: "unknown".to_owned(),
        }
    }

    pub fn of(cluster: &Cluster) -> Self {
        let (name, namespace) = match &cluster.discovery {
            Discovery::Service { namespace, name } => (name.clone(), namespace.clone()),
            Discovery::ServiceEntry { namespace, .. } => (cluster.host.clone(), namespace.clone()),
        };
        Self {
            service: cluster.host.clone(),
            name,
            namespace,
        }
    }
}

/// Everything the daemon measures.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    source: SourceIdentity,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    request_messages: Family<RequestLabels, Counter>,
    response_messages: Family<RequestLabels, Counter>,
    /// The request series already created, by what varies per request, so
    /// the hot path neither builds label sets nor hashes them with SipHash.
    hot: RwLock<FxHashMap<HotKey, RequestSeries>>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    /// Envoy-like counters for `/stats`.
    pub envoy: StatStore,
}

/// The handles of one request series: count, duration, request and
/// response size.
#[derive(Clone, Debug)]
struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
    /// gRPC series only.
    messages: Option<(Counter, Counter)>,
}

/// What tells one request series from another on the hot path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HotKey {
    destination: Arc<DestinationLabels>,
    protocol: &'static str,
    status: u16,
    flags: &'static str,
    grpc_status: Option<u32>,
}

/// One finished HTTP request, as the metrics see it.
#[derive(Debug)]
pub struct RequestSample<'a> {
    pub destination: &'a Arc<DestinationLabels>,
    pub protocol: &'static str,
    pub status: u16,
    pub flags: &'static str,
    pub duration_ms: f64,
    /// `grpc-status` of a gRPC answer (headers or trailers).
    pub grpc_status: Option<u32>,
    /// Body bytes received from the client and sent to it.
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// gRPC messages each way (`None` for other requests).
    pub request_messages: Option<u64>,
    pub response_messages: Option<u64>,
}

/// gRPC status codes as label values.
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// Reads extra metrics on each scrape (the kernel counters).
pub type ScrapeHook = Box<dyn Collector>;

impl Metrics {
    /// Creates the registry; `hooks` (the kernel path's counters, the config
    /// source's state) are scraped on each request to `/stats/prometheus`.
    pub fn new(source: SourceIdentity, hooks: Vec<ScrapeHook>) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let request_bytes = Family::<RequestLabels, Histogram>::new_with_constructor(
            size_histogram as fn() -> Histogram,
        );
        let response_bytes = Family::<RequestLabels, Histogram>::new_with_constructor(
            size_histogram as fn() -> Histogram,
        );
        let request_messages = Family::<RequestLabels, Counter>::default();
        let response_messages = Family::<RequestLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register("istio_requests", "Requests handled", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            request_duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes in bytes",
            response_bytes.clone(),
        );
        registry.register(
            "istio_request_messages",
            "gRPC messages from the client",
            request_messages.clone(),
        );
        registry.register(
            "istio_response_messages",
            "gRPC messages to the client",
            response_messages.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream on TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream on TCP connections",
            tcp_received.clone(),
        );
        registry.register(
            "ingressd_config_reload",
            "Config reloads by result",
            reloads.clone(),
        );
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        registry.register_collector(Box::new(ProcessCollector));
        for hook in hooks {
            registry.register_collector(hook);
        }
        Self {
            registry,
            source,
            requests,
            request_duration,
            request_bytes,
            response_bytes,
            request_messages,
            response_messages,
            hot: RwLock::default(),
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            reloads,
            envoy: StatStore::default(),
        }
    }

    /// Records one finished HTTP request.
    pub fn record_request(&self, sample: &RequestSample<'_>) {
        let key = HotKey {
            destination: sample.destination.clone(),
            protocol: sample.protocol,
            status: sample.status,
            flags: sample.flags,
            grpc_status: sample.grpc_status,
        };
        let cached = self
            .hot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let series = match cached {
            Some(series) => series,
            None => {
                let labels = self.request_labels(sample);
                let series = RequestSeries {
                    requests: self.requests.get_or_create(&labels).clone(),
                    duration: self.request_duration.get_or_create(&labels).clone(),
                    request_bytes: self.request_bytes.get_or_create(&labels).clone(),
                    response_bytes: self.response_bytes.get_or_create(&labels).clone(),
                    messages: (sample.protocol == "grpc").then(|| {
                        (
                            self.request_messages.get_or_create(&labels).clone(),
                            self.response_messages.get_or_create(&labels).clone(),
                        )
                    }),
                };
                self.hot
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, series.clone());
                series
            }
        };
        series.duration.observe(sample.duration_ms);
        series.request_bytes.observe(sample.request_bytes as f64);
        series.response_bytes.observe(sample.response_bytes as f64);
        if let Some((request, response)) = &series.messages {
            request.inc_by(sample.request_messages.unwrap_or(0));
            response.inc_by(sample.response_messages.unwrap_or(0));
        }
        series.requests.inc();
    }

    fn request_labels(&self, sample: &RequestSample<'_>) -> RequestLabels {
        RequestLabels {
            reporter: "source",
            source_workload: self.source.workload.clone(),
            source_workload_namespace: self.source.namespace.clone(),
            source_app: self.source.app.clone(),
            source_canonical_service: self.source.app.clone(),
            destination_workload: "unknown",
            destination_service: sample.destination.service.clone(),
            destination_service_name: sample.destination.name.clone(),
            destination_service_namespace: sample.destination.namespace.clone(),
            destination_canonical_service: sample.destination.name.clone(),
            request_protocol: sample.protocol,
            response_code: sample.status,
            grpc_response_status: sample
                .grpc_status
                .and_then(|c| GRPC_CODES.get(c as usize).copied())
                .unwrap_or(""),
            response_flags: sample.flags,
            connection_security_policy: "unknown",
        }
    }

    fn tcp_labels(&self, destination: &DestinationLabels, flags: &'static str) -> TcpLabels {
        TcpLabels {
            reporter: "source",
            source_workload: self.source.workload.clone(),
            source_workload_namespace: self.source.namespace.clone(),
            source_app: self.source.app.clone(),
            destination_workload: "unknown",
            destination_service: destination.service.clone(),
            destination_service_name: destination.name.clone(),
            destination_service_namespace: destination.namespace.clone(),
            request_protocol: "tcp",
            response_flags: flags,
            connection_security_policy: "unknown",
        }
    }

    /// A proxied TCP connection was opened to `destination`.
    pub fn tcp_opened(&self, destination: &DestinationLabels) {
        self.tcp_opened
            .get_or_create(&self.tcp_labels(destination, "-"))
            .inc();
    }

    /// A TCP connection ended after moving `sent`/`received` bytes (seen from
    /// the downstream side: sent = to the client).
    pub fn tcp_closed(
        &self,
        destination: &DestinationLabels,
        flags: &'static str,
        sent: u64,
        received: u64,
    ) {
        let labels = self.tcp_labels(destination, flags);
        self.tcp_closed.get_or_create(&labels).inc();
        self.tcp_sent.get_or_create(&labels).inc_by(sent);
        self.tcp_received.get_or_create(&labels).inc_by(received);
    }

    /// Counts one config reload.
    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.envoy
            .counter(&format!("ingressd.config_reload.{result}"))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4, as Envoy serves it).
    /// Scrapes the kernel maps, so call it off the async workers.
    pub fn prometheus_text(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn size_histogram() -> Histogram {
    Histogram::new(ISTIO_SIZE_BUCKETS_BYTES)
}

fn duration_histogram() -> Histogram {
    Histogram::new(ISTIO_DURATION_BUCKETS_MS)
}

/// Envoy-style named counters and gauges (`cluster.<name>.upstream_rq_total`),
/// rendered by `/stats` as `name: value`, sorted by name.
#[derive(Debug, Default)]
pub struct StatStore {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<String, Arc<AtomicI64>>>,
}

impl StatStore {
    /// The counter named `name`, created at zero on first use. Callers on
    /// hot paths keep the returned handle.
    pub fn counter(&self, name: &str) -> Arc<AtomicU64> {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counters.entry(name.to_owned()).or_default().clone()
    }

    /// The gauge named `name`, created at zero on first use.
    pub fn gauge(&self, name: &str) -> Arc<AtomicI64> {
        let mut gauges = self
            .gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        gauges.entry(name.to_owned()).or_default().clone()
    }

    /// `name: value` lines, sorted by name.
    pub fn render(&self) -> String {
        let mut lines: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            lines.insert(name.clone(), value.load(Ordering::Relaxed).to_string());
        }
        for (name, value) in self
            .gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            lines.insert(name.clone(), value.load(Ordering::Relaxed).to_string());
        }
        let mut out = String::new();
        for (name, value) in lines {
            let _ = writeln!(out, "{name}: {value}");
        }
        out
    }
}

/// `process_*` metrics from `/proc/self`, read on each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = ProcessStat::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.rss_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.vsize_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stat.open_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                stat.start_time_seconds,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

struct ProcessStat {
    cpu_seconds: f64,
    rss_bytes: i64,
    vsize_bytes: i64,
    open_fds: i64,
    start_time_seconds: i64,
}

impl ProcessStat {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may contain spaces and parentheses: fields start
        // after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field numbers from proc(5), minus the 3 before `rest` (pid, comm, state is fields[0]).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
        let utime = field(14)?;
        let stime = field(15)?;
        let starttime = field(22)?;
        let vsize = field(23)?;
        let rss = field(24)?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as i64)
            .unwrap_or(0);
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / ticks,
            rss_bytes: rss as i64 * page,
            vsize_bytes: vsize as i64,
            open_fds,
            start_time_seconds: boot_time as i64 + (starttime as f64 / ticks) as i64,
        })
    }
}

/// The in-kernel path's counters at one scrape, read from its maps by the
/// kernel manager and rendered here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// `LB_REASONS`: packets by verdict reason (every reason, zeros too).
    pub reasons: Vec<(&'static str, u64)>,
    /// `STEER_STATS`: steering lookups by reason.
    pub steering: Vec<(&'static str, u64)>,
    pub services: Vec<KernelTraffic>,
    pub backends: Vec<KernelTraffic>,
}

/// Packets, bytes and new connections of one service or backend, with the
/// two label values that name it (`listener`/`port` or `cluster`/`backend`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTraffic {
    pub labels: [(&'static str, String); 2],
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}

/// Writes the kernel metrics: `ingressd_kernel_packets_total{reason}`,
/// `ingressd_kernel_steering_total{reason}`,
/// `ingressd_kernel_service_{packets,bytes,connections}_total{listener,port}`
/// and `ingressd_kernel_backend_{packets,bytes,connections}_total{cluster,backend}`.
pub fn encode_kernel_stats(
    encoder: &mut DescriptorEncoder,
    stats: &KernelStats,
) -> Result<(), std::fmt::Error> {
    let counter = prometheus_client::metrics::MetricType::Counter;
    for (name, help, rows) in [
        (
            "ingressd_kernel_packets",
            "Packets seen by tc_ingress, by verdict reason",
            &stats.reasons,
        ),
        (
            "ingressd_kernel_steering",
            "NodePort lookups handled by sk_lookup_steer, by result",
            &stats.steering,
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        let mut family = encoder.encode_descriptor(name, help, None, counter)?;
        for (reason, value) in rows {
            let labels = [("reason", *reason)];
            ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
        }
    }
    for (kind, rows) in [("service", &stats.services), ("backend", &stats.backends)] {
        if rows.is_empty() {
            continue;
        }
        for (what, pick) in [
            (
                "packets",
                (|t: &KernelTraffic| t.packets) as fn(&KernelTraffic) -> u64,
            ),
            ("bytes", |t: &KernelTraffic| t.bytes),
            ("connections", |t: &KernelTraffic| t.connections),
        ] {
            let name = format!("ingressd_kernel_{kind}_{what}");
            let help = format!("{what} forwarded in the kernel, by {kind}");
            let mut family = encoder.encode_descriptor(&name, &help, None, counter)?;
            for row in rows {
                let labels = [
                    (row.labels[0].0, row.labels[0].1.as_str()),
                    (row.labels[1].0, row.labels[1].1.as_str()),
                ];
                ConstCounter::new(pick(row)).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// Seconds since the Unix epoch, for uptime displays.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(
            SourceIdentity::from_gateway(&GatewayIdentity::default()),
            Vec::new(),
        )
    }

    #[test]
    fn request_metrics_use_istio_names_and_labels() {
        let m = metrics();
        let destination = Arc::new(DestinationLabels {
            service: "counter.default.svc.cluster.local".into(),
            name: "counter".into(),
            namespace: "default".into(),
        });
        m.record_request(&RequestSample {
            destination: &destination,
            protocol: "http",
            grpc_status: None,
            request_bytes: 10,
            response_bytes: 2000,
            request_messages: None,
            response_messages: None,
            status: 200,
            flags: "-",
            duration_ms: 3.0,
        });
        let text = m.prometheus_text().unwrap();
        assert!(
            text.contains("# TYPE istio_requests_total counter"),
            "{text}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap();
        for label in [
            "reporter=\"source\"",
            "source_workload=\"istio-ingressgateway\"",
            "source_workload_namespace=\"istio-system\"",
            "destination_service=\"counter.default.svc.cluster.local\"",
            "destination_service_name=\"counter\"",
            "destination_service_namespace=\"default\"",
            "request_protocol=\"http\"",
            "response_code=\"200\"",
            "response_flags=\"-\"",
        ] {
            assert!(line.contains(label), "{label} missing in {line}");
        }
        assert!(line.ends_with(" 1"), "{line}");
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
        assert!(text.contains("istio_request_bytes_bucket{"));
        assert!(text.contains("istio_response_bytes_sum{"));
        assert!(text.contains("le=\"3.6e+06\""), "{text}");
        assert!(text.contains("ingressd_config_reload_total{result=\"failure\"} 0"));
        assert!(text.contains("process_cpu_seconds_total"));
    }

    #[test]
    fn tcp_metrics_count_bytes() {
        let m = metrics();
        let d = DestinationLabels::unknown();
        m.tcp_opened(&d);
        m.tcp_closed(&d, "-", 10, 20);
        let text = m.prometheus_text().unwrap();
        assert!(text.contains("istio_tcp_connections_opened_total{"));
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_tcp_sent_bytes_total{") && l.ends_with(" 10"))
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("istio_tcp_received_bytes_total{") && l.ends_with(" 20"))
        );
    }

    #[derive(Debug)]
    struct FixedKernel(KernelStats);

    impl Collector for FixedKernel {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_kernel_stats(&mut encoder, &self.0)
        }
    }

    #[test]
    fn kernel_metrics_have_their_names_and_labels() {
        let stats = KernelStats {
            reasons: vec![("forwarded", 7), ("drop_no_backend", 0)],
            steering: vec![("steered", 3)],
            services: vec![KernelTraffic {
                labels: [("listener", "0.0.0.0_3306".into()), ("port", "3306".into())],
                packets: 10,
                bytes: 1000,
                connections: 2,
            }],
            backends: vec![KernelTraffic {
                labels: [
                    (
                        "cluster",
                        "outbound|3306||mysql.default.svc.cluster.local".into(),
                    ),
                    ("backend", "198.18.1.20:3306".into()),
                ],
                packets: 10,
                bytes: 1000,
                connections: 2,
            }],
        };
        let m = Metrics::new(
            SourceIdentity::from_gateway(&GatewayIdentity::default()),
            vec![Box::new(FixedKernel(stats))],
        );
        let text = m.prometheus_text().unwrap();
        for line in [
            "ingressd_kernel_packets_total{reason=\"forwarded\"} 7",
            "ingressd_kernel_packets_total{reason=\"drop_no_backend\"} 0",
            "ingressd_kernel_steering_total{reason=\"steered\"} 3",
            "ingressd_kernel_service_bytes_total{listener=\"0.0.0.0_3306\",port=\"3306\"} 1000",
            "ingressd_kernel_backend_connections_total{cluster=\"outbound|3306||mysql.default.svc.cluster.local\",backend=\"198.18.1.20:3306\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn envoy_stats_render_sorted() {
        let store = StatStore::default();
        store.counter("b.x").fetch_add(2, Ordering::Relaxed);
        store.gauge("a.y").store(-1, Ordering::Relaxed);
        assert_eq!(store.render(), "a.y: -1\nb.x: 2\n");
    }
}
