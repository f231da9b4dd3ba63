//! Consumer of the snapshot and the stats: the Envoy-style admin API
//! (`127.0.0.1:15000`) and Istio's status port (`:15021/healthz/ready`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::proxy::Context;
use crate::snapshot::Snapshot;

/// The server's lifecycle, as Envoy's `/ready` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Config not loaded or listeners not bound yet.
    PreInitializing = 0,
    /// Serving.
    Live = 1,
    /// Shutting down: no new connections, in-flight ones finishing.
    Draining = 2,
}

impl State {
    /// Envoy's name for the state.
    pub fn envoy_name(self) -> &'static str {
        match self {
            State::PreInitializing => "PRE_INITIALIZING",
            State::Live => "LIVE",
            State::Draining => "DRAINING",
        }
    }
}

/// The current [`State`], shared by the daemon and the admin servers.
#[derive(Debug)]
pub struct ServerState(AtomicU8);

impl Default for ServerState {
    fn default() -> Self {
        Self(AtomicU8::new(State::PreInitializing as u8))
    }
}

impl ServerState {
    pub fn get(&self) -> State {
        match self.0.load(Ordering::Acquire) {
            1 => State::Live,
            2 => State::Draining,
            _ => State::PreInitializing,
        }
    }

    pub fn set(&self, state: State) {
        self.0.store(state as u8, Ordering::Release);
    }
}

/// One bound listener as `/listeners` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    pub name: String,
    pub addresses: Vec<SocketAddr>,
}

/// Everything the admin API reads.
#[derive(Debug)]
pub struct Admin {
    pub ctx: Arc<Context>,
    pub state: Arc<ServerState>,
    pub started: Instant,
    pub command_line: Vec<String>,
    pub listeners: Mutex<Vec<ListenerInfo>>,
    /// Notified by `POST /quitquitquit`.
    pub quit: Arc<Notify>,
    /// One line about the kernel path, for `/server_info`.
    pub kernel: String,
    /// The Kubernetes source's watches, for `/server_info`.
    pub config_source: Option<Arc<crate::source::kubernetes::SourceStatus>>,
    /// Reads the kernel section of `/config_dump` (when the kernel path is on).
    pub kernel_dump: Option<KernelDump>,
}

/// Produces the `ingressd.KernelDump` entry of `/config_dump` (reads maps:
/// called on the blocking pool).
#[derive(Clone)]
pub struct KernelDump(pub Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl std::fmt::Debug for KernelDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelDump")
    }
}

type AdminResponse = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

fn json(value: &serde_json::Value) -> AdminResponse {
    let body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".to_owned());
    let mut response = Response::new(Full::new(Bytes::from(body + "\n")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

impl Admin {
    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, method: &Method, path: &str) -> AdminResponse {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        match (method, path) {
            (&Method::GET, "/config_dump") => {
                let dump = crate::dump::config_dump(&self.ctx.snapshot.load());
                match self.kernel_dump.clone() {
                    Some(KernelDump(read)) => {
                        match tokio::task::spawn_blocking(move || read()).await {
                            Ok(kernel) => json(&crate::dump::with_kernel(dump, kernel)),
                            Err(_) => json(&dump),
                        }
                    }
                    None => json(&dump),
                }
            }
            (&Method::GET, "/ready") => {
                let state = self.state.get();
                let status = if state == State::Live {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, format!("{}\n", state.envoy_name()))
            }
            (&Method::GET, "/stats") => text(StatusCode::OK, self.stats_text()),
            (&Method::GET, "/stats/prometheus") => {
                let metrics = self.ctx.metrics.clone();
                match tokio::task::spawn_blocking(move || metrics.prometheus_text()).await {
                    Ok(Ok(body)) => {
                        let mut response = text(StatusCode::OK, body);
                        response.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static(
                                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                            ),
                        );
                        response
                    }
                    _ => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n",
                    ),
                }
            }
            (&Method::GET, "/clusters") => text(
                StatusCode::OK,
                clusters_text(&self.ctx.snapshot.load(), &self.ctx),
            ),
            (&Method::GET, "/listeners") => text(StatusCode::OK, self.listeners_text()),
            (&Method::GET, "/certs") => json(&certs_json(&self.ctx.tls.report())),
            (&Method::GET, "/server_info") => json(&self.server_info()),
            (&Method::POST, "/quitquitquit") => {
                self.quit.notify_one();
                text(StatusCode::OK, "OK\n")
            }
            (&Method::GET, "/") => text(
                StatusCode::OK,
                "admin commands are:\n  /certs\n  /clusters\n  /config_dump\n  /listeners\n  /quitquitquit (POST)\n  /ready\n  /server_info\n  /stats\n  /stats/prometheus\n",
            ),
            _ => text(StatusCode::NOT_FOUND, "invalid path\n"),
        }
    }

    fn stats_text(&self) -> String {
        let mut out = self.ctx.metrics.envoy.render();
        let now = std::time::SystemTime::now();
        if let Some(days) = self
            .ctx
            .tls
            .report()
            .iter()
            .filter_map(|r| r.certificate.as_ref())
            .map(|c| c.days_until_expiry(now))
            .min()
        {
            out.push_str(&format!("server.days_until_first_cert_expiring: {days}\n"));
        }
        let snapshot = self.ctx.snapshot.load();
        let mut lines = Vec::new();
        for (name, cluster) in &snapshot.clusters {
            let healthy = cluster.endpoints.iter().filter(|e| e.serving).count();
            lines.push(format!(
                "cluster.{name}.membership_healthy: {healthy}\ncluster.{name}.membership_total: {}",
                cluster.endpoints.len()
            ));
            if let Some(state) = self.ctx.balancer.state_if_used(name) {
                let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                for (stat, value) in [
                    ("upstream_cx_connect_fail", load(&state.cx_connect_fail)),
                    ("upstream_cx_none_healthy", load(&state.cx_none_healthy)),
                    ("upstream_cx_rx_bytes_total", load(&state.cx_rx_bytes)),
                    ("upstream_cx_tx_bytes_total", load(&state.cx_tx_bytes)),
                    ("upstream_rq_2xx", load(&state.rq_2xx)),
                    ("upstream_rq_3xx", load(&state.rq_3xx)),
                    ("upstream_rq_4xx", load(&state.rq_4xx)),
                    ("upstream_rq_5xx", load(&state.rq_5xx)),
                    ("upstream_rq_retry", load(&state.rq_retry)),
                    (
                        "upstream_rq_retry_limit_exceeded",
                        load(&state.rq_retry_limit_exceeded),
                    ),
                    ("upstream_rq_retry_success", load(&state.rq_retry_success)),
                    ("upstream_rq_retry_overflow", load(&state.rq_retry_overflow)),
                    (
                        "upstream_rq_pending_overflow",
                        load(&state.rq_pending_overflow),
                    ),
                    (
                        "outlier_detection.ejections_enforced_total",
                        load(&state.ejections_total),
                    ),
                    ("upstream_rq_timeout", load(&state.rq_timeout)),
                    ("upstream_rq_total", load(&state.rq_total)),
                ] {
                    lines.push(format!("cluster.{name}.{stat}: {value}"));
                }
                lines.push(format!(
                    "cluster.{name}.upstream_rq_active: {}",
                    state.rq_active.load(Ordering::Relaxed)
                ));
            }
        }
        let uptime = self.started.elapsed().as_secs();
        lines.push(format!(
            "server.live: {}",
            u8::from(self.state.get() == State::Live)
        ));
        lines.push(format!("server.state: {}", self.state.get() as u8));
        lines.push(format!("server.uptime: {uptime}"));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    fn listeners_text(&self) -> String {
        let mut out = String::new();
        for listener in self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            for address in &listener.addresses {
                let _ = writeln!(out, "{}::{address}", listener.name);
            }
        }
        out
    }

    fn server_info(&self) -> serde_json::Value {
        let uptime = format!("{}s", self.started.elapsed().as_secs());
        serde_json::json!({
            "version": format!("ingressd/{}", env!("CARGO_PKG_VERSION")),
            "state": self.state.get().envoy_name(),
            "uptime_current_epoch": uptime,
            "uptime_all_epochs": uptime,
            "command_line_options": { "args": self.command_line },
            "kernel": self.kernel,
            "config_source": match &self.config_source {
                Some(status) => serde_json::json!({
                    "kind": "kubernetes",
                    "watches": status.watches(),
                }),
                None => serde_json::json!({"kind": "directory"}),
            },
        })
    }
}

/// Envoy's `/clusters` text: per-cluster settings, then per-host counters.
pub fn clusters_text(snapshot: &Snapshot, ctx: &Context) -> String {
    let mut out = String::new();
    for (name, cluster) in &snapshot.clusters {
        let _ = writeln!(out, "{name}::observability_name::{name}");
        let limits = &cluster.policy.limits;
        for (limit, value) in [
            ("max_connections", limits.max_connections),
            ("max_pending_requests", limits.max_pending_requests),
            ("max_requests", limits.max_requests),
            ("max_retries", limits.max_retries),
        ] {
            let value = value.unwrap_or(u32::MAX);
            let _ = writeln!(out, "{name}::default_priority::{limit}::{value}");
        }
        let _ = writeln!(out, "{name}::added_via_api::true");
        let state = ctx.balancer.state_if_used(name);
        for endpoint in &cluster.endpoints {
            let stats = state
                .as_ref()
                .and_then(|s| s.endpoint_if_used(endpoint.address));
            let load = |f: fn(&crate::proxy::upstream::EndpointStats) -> i128| {
                stats.as_deref().map_or(0, f)
            };
            let prefix = format!("{name}::{}", endpoint.address);
            for (stat, value) in [
                (
                    "cx_active",
                    load(|s| s.cx_active.load(Ordering::Relaxed).into()),
                ),
                (
                    "cx_connect_fail",
                    load(|s| s.cx_connect_fail.load(Ordering::Relaxed).into()),
                ),
                (
                    "cx_total",
                    load(|s| s.cx_total.load(Ordering::Relaxed).into()),
                ),
                (
                    "rq_active",
                    load(|s| s.rq_active.load(Ordering::Relaxed).into()),
                ),
                (
                    "rq_error",
                    load(|s| s.rq_error.load(Ordering::Relaxed).into()),
                ),
                (
                    "rq_success",
                    load(|s| s.rq_success.load(Ordering::Relaxed).into()),
                ),
                (
                    "rq_timeout",
                    load(|s| s.rq_timeout.load(Ordering::Relaxed).into()),
                ),
                (
                    "rq_total",
                    load(|s| s.rq_total.load(Ordering::Relaxed).into()),
                ),
            ] {
                let _ = writeln!(out, "{prefix}::{stat}::{value}");
            }
            let _ = writeln!(
                out,
                "{prefix}::hostname::{}",
                endpoint.target.as_deref().unwrap_or("")
            );
            let ejected = stats.as_deref().is_some_and(|s| s.is_ejected());
            let health = match (endpoint.serving, ejected) {
                (true, false) => "healthy",
                (true, true) => "/failed_outlier_check",
                (false, false) => "/failed_eds_health",
                (false, true) => "/failed_outlier_check/failed_eds_health",
            };
            let _ = writeln!(out, "{prefix}::health_flags::{health}");
            let _ = writeln!(out, "{prefix}::weight::1");
            let _ = writeln!(out, "{prefix}::region::");
            let _ = writeln!(out, "{prefix}::zone::");
            let _ = writeln!(out, "{prefix}::sub_zone::");
            let _ = writeln!(out, "{prefix}::canary::false");
            let _ = writeln!(out, "{prefix}::priority::0");
            let _ = writeln!(out, "{prefix}::success_rate::-1");
            let _ = writeln!(out, "{prefix}::local_origin_success_rate::-1");
        }
    }
    out
}

/// Istio's status port: `/healthz/ready` is 200 only while [`State::Live`];
/// `/healthz/live` is 200 whenever the process answers (a liveness probe must
/// not restart a daemon that is still syncing or draining).
pub fn status_response(state: State, path: &str) -> AdminResponse {
    match path {
        "/healthz/live" => text(StatusCode::OK, format!("{}\n", state.envoy_name())),
        "/healthz/ready" if state == State::Live => text(StatusCode::OK, ""),
        "/healthz/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", state.envoy_name()),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    serve_simple(listener, move |req: Request<Incoming>| {
        let admin = admin.clone();
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            admin.handle(req.method(), &path).await
        }
    })
    .await;
}

/// Serves the status port on `listener` until the task is dropped.
pub async fn serve_status(listener: TcpListener, state: Arc<ServerState>) {
    serve_simple(listener, move |req: Request<Incoming>| {
        let state = state.clone();
        async move { status_response(state.get(), req.uri().path()) }
    })
    .await;
}

/// Serves `GET /stats/prometheus` alone on `listener` (Istio's 15090), so
/// Prometheus can scrape from outside the node without reaching the admin
/// API's `/quitquitquit` or `/config_dump`.
pub async fn serve_metrics(listener: TcpListener, admin: Arc<Admin>) {
    serve_simple(listener, move |req: Request<Incoming>| {
        let admin = admin.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/stats/prometheus") => {
                    admin.handle(&Method::GET, "/stats/prometheus").await
                }
                _ => text(
                    StatusCode::NOT_FOUND,
                    "only GET /stats/prometheus is served here\n",
                ),
            }
        }
    })
    .await;
}

async fn serve_simple<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = AdminResponse> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `/certs` in Envoy's shape (`certificates[].cert_chain[]`, `ca_cert[]`),
/// plus which server each entry serves, where it comes from, when it was
/// loaded and why the latest change was refused, if it was.
pub fn certs_json(reports: &[crate::tls::store::ContextReport]) -> serde_json::Value {
    use crate::tls::certs::CertInfo;
    let now = std::time::SystemTime::now();
    let time = |secs: i64| {
        crate::proxy::access_log::format_start_time(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64),
        )
    };
    let cert = |c: &CertInfo| {
        serde_json::json!({
            "subject": c.subject,
            "issuer": c.issuer,
            "serial_number": c.serial,
            "subject_alt_names": c.subject_alt_names.iter().map(|san| {
                let (kind, value) = san.split_once(':').unwrap_or(("dns", san));
                let kind = match kind { "DNS" => "dns", "URI" => "uri", "IP" => "ip_address", _ => "email" };
                serde_json::json!({ kind: value })
            }).collect::<Vec<_>>(),
            "days_until_expiration": c.days_until_expiry(now).to_string(),
            "valid_from": time(c.not_before),
            "expiration_time": time(c.not_after),
        })
    };
    serde_json::json!({
        "certificates": reports.iter().map(|r| serde_json::json!({
            "server": r.name,
            "source": r.source,
            "cert_chain": r.certificate.iter().map(cert).collect::<Vec<_>>(),
            "ca_cert": r.ca.iter().map(cert).collect::<Vec<_>>(),
            "loaded_at": r.loaded_at.map(crate::proxy::access_log::format_start_time),
            "error": r.error,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    use crate::proxy::access_log::{AccessLog, AccessLogFormat};
    use crate::snapshot::{
        Cluster, Discovery, Endpoint, GatewayIdentity, Listener, ListenerKind, RouteConfig,
        UpstreamProtocol, VirtualHostIndex,
    };
    use crate::stats::{Metrics, SourceIdentity};

    fn snapshot() -> Snapshot {
        let cluster = Cluster {
            name: "outbound|80||counter.default.svc.cluster.local".into(),
            host: "counter.default.svc.cluster.local".into(),
            port: 80,
            subset: String::new(),
            discovery: Discovery::Service {
                namespace: "default".into(),
                name: "counter".into(),
            },
            endpoints: vec![
                Endpoint {
                    address: "198.18.1.10:8080".parse().unwrap(),
                    serving: true,
                    target: Some("counter-1".into()),
                },
                Endpoint {
                    address: "198.18.1.11:8080".parse().unwrap(),
                    serving: false,
                    target: None,
                },
            ],
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(10),
            policy: Default::default(),
        };
        Snapshot {
            gateway: GatewayIdentity::default(),
            listeners: vec![Listener {
                name: "0.0.0.0_8080".into(),
                address: std::net::Ipv4Addr::UNSPECIFIED.into(),
                port: 8080,
                service_port: 80,
                node_port: Some(30080),
                servers: Vec::new(),
                kind: ListenerKind::Http(RouteConfig {
                    name: "http.8080".into(),
                    virtual_hosts: Vec::new(),
                    index: VirtualHostIndex::default(),
                }),
            }],
            clusters: BTreeMap::from([(cluster.name.clone(), Arc::new(cluster))]),
            diagnostics: Default::default(),
        }
    }

    fn admin() -> Arc<Admin> {
        let metrics = Arc::new(Metrics::new(
            SourceIdentity::from_gateway(&GatewayIdentity::default()),
            Vec::new(),
        ));
        let ctx = Arc::new(Context::new(
            Arc::new(snapshot()),
            metrics,
            AccessLog {
                format: AccessLogFormat::Off,
            },
        ));
        Arc::new(Admin {
            ctx,
            state: Arc::new(ServerState::default()),
            started: Instant::now(),
            command_line: vec!["ingressd".into(), "run".into()],
            listeners: Mutex::new(vec![ListenerInfo {
                name: "0.0.0.0_8080".into(),
                addresses: vec![
                    "0.0.0.0:8080".parse().unwrap(),
                    "0.0.0.0:30080".parse().unwrap(),
                ],
            }]),
            quit: Arc::new(Notify::new()),
            kernel: "off".into(),
            config_source: None,
            kernel_dump: None,
        })
    }

    async fn body(response: AdminResponse) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_follows_state() {
        let admin = admin();
        let (status, text) = body(admin.clone().handle(&Method::GET, "/ready").await).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
        );
        admin.state.set(State::Live);
        let (status, text) = body(admin.clone().handle(&Method::GET, "/ready").await).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "LIVE\n"));
        assert_eq!(
            status_response(State::Live, "/healthz/ready").status(),
            StatusCode::OK
        );
        assert_eq!(
            status_response(State::Draining, "/healthz/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_response(State::PreInitializing, "/healthz/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status_response(State::PreInitializing, "/healthz/live").status(),
            StatusCode::OK
        );
        assert_eq!(
            status_response(State::Draining, "/healthz/live").status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn clusters_in_envoy_text_format() {
        let admin = admin();
        let c = admin.ctx.snapshot.load();
        let cluster = c.clusters.values().next().unwrap().clone();
        let state = admin.ctx.balancer.state(&cluster.name);
        state
            .endpoint("198.18.1.10:8080".parse().unwrap())
            .rq_total
            .fetch_add(3, Ordering::Relaxed);
        let (status, text) = body(admin.clone().handle(&Method::GET, "/clusters").await).await;
        assert_eq!(status, StatusCode::OK);
        let name = "outbound|80||counter.default.svc.cluster.local";
        for line in [
            format!("{name}::observability_name::{name}"),
            format!("{name}::198.18.1.10:8080::rq_total::3"),
            format!("{name}::198.18.1.10:8080::cx_active::0"),
            format!("{name}::198.18.1.10:8080::hostname::counter-1"),
            format!("{name}::198.18.1.10:8080::health_flags::healthy"),
            format!("{name}::198.18.1.11:8080::health_flags::/failed_eds_health"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[tokio::test]
    async fn listeners_stats_and_server_info() {
        let admin = admin();
        let (_, text) = body(admin.clone().handle(&Method::GET, "/listeners").await).await;
        assert_eq!(
            text,
            "0.0.0.0_8080::0.0.0.0:8080\n0.0.0.0_8080::0.0.0.0:30080\n"
        );
        let (_, text) = body(admin.clone().handle(&Method::GET, "/stats").await).await;
        assert!(text.contains("server.live: 0\n"), "{text}");
        assert!(text.contains(
            "cluster.outbound|80||counter.default.svc.cluster.local.membership_healthy: 1\n"
        ));
        let (_, text) = body(admin.clone().handle(&Method::GET, "/server_info").await).await;
        let info: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(info["state"], "PRE_INITIALIZING");
        assert_eq!(info["command_line_options"]["args"][1], "run");
        let (status, text) = body(
            admin
                .clone()
                .handle(&Method::GET, "/stats/prometheus")
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("ingressd_config_reload_total"));
        let (status, _) = body(admin.clone().handle(&Method::GET, "/config_dump").await).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = body(admin.clone().handle(&Method::GET, "/nope").await).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
