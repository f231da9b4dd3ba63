//! Data path, HTTP: route one request with the snapshot's route selection
//! and answer it locally or forward it to an upstream endpoint.
//!
//! The request is finished (metrics, stats, access log) when its response
//! body ends or is dropped, so durations and byte counts cover the whole
//! exchange, as Envoy's do.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;

use crate::snapshot::{
    ChainAction, FaultAbort, FaultPolicy, ListenerKind, PathMatch, RedirectAction,
    RequestAttributes, Route, RouteAction, RouteConfig, RoutePolicy, Snapshot,
};
use crate::stats::{DestinationLabels, RequestSample};

use super::access_log::AccessRecord;
use super::forward::{Downstream, roll_percent};
use super::grpc::MessageCounter;
use super::upstream::{ClusterState, EndpointStats};
use super::{ConnInfo, Context, ListenerStats, ProxyError};

/// The error of a body the proxy relays.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1, plus the
/// legacy ones Envoy also removes).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(super) const X_ENVOY_ORIGINAL_PATH: HeaderName =
    HeaderName::from_static("x-envoy-original-path");
pub(super) const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// The request body sent upstream: the downstream body, counting its bytes.
#[derive(Debug)]
pub struct RequestBody {
    /// None: the request had no body (taken by `h1.rs`).
    inner: Option<Incoming>,
    received: Arc<AtomicU64>,
    /// gRPC requests: the message count, shared with the finisher.
    grpc: Option<(MessageCounter, Arc<AtomicU64>)>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if let Some((counter, shared)) = &mut this.grpc {
                counter.feed(data);
                shared.store(counter.messages, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// The response body sent downstream; finishes the request when it ends or
/// is dropped.
pub struct ResponseBody {
    inner: ProxyBody,
    sent: u64,
    /// gRPC answers: their messages.
    grpc: Option<MessageCounter>,
    /// Boxed: the response moves through hyper by value a few times.
    finisher: Option<Box<Finisher>>,
}

impl ResponseBody {
    fn finish(&mut self) {
        if let Some(mut finisher) = self.finisher.take() {
            finisher.response_messages = self.grpc.as_ref().map(|c| c.messages);
            finisher.finish(self.sent);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                    if let Some(counter) = &mut this.grpc {
                        counter.feed(data);
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(finisher) = &mut this.finisher
                    && finisher.request_protocol == "grpc"
                {
                    finisher.grpc_status = grpc_status(trailers).or(finisher.grpc_status);
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(finisher) = &mut this.finisher
                    && finisher.record.flags == "-"
                {
                    // Upstream reset after the response started.
                    finisher.record.flags = "UPE";
                    finisher.record.termination_details =
                        Some("upstream_reset_after_response_started");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away mid-response (DC).
        if !self.inner.is_end_stream()
            && let Some(finisher) = &mut self.finisher
            && finisher.record.flags == "-"
            && finisher.record.method != Some(Method::HEAD)
        {
            finisher.record.flags = "DC";
            finisher.record.termination_details = Some("downstream_remote_disconnect");
        }
        self.finish();
    }
}

/// What is known about a request when it finishes.
pub struct Finisher {
    ctx: Arc<Context>,
    listener: Arc<ListenerStats>,
    pub(super) record: AccessRecord,
    /// When the request arrived (the route timeout counts from here).
    pub(super) started: Instant,
    received: Arc<AtomicU64>,
    request_protocol: &'static str,
    pub(super) destination: Option<Arc<DestinationLabels>>,
    pub(super) cluster: Option<Arc<ClusterState>>,
    pub(super) endpoint: Option<Arc<EndpointStats>>,
    /// A `tcp.maxConnections` slot, released when the request finishes.
    pub(super) permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// `grpc-status` of a gRPC answer, from its headers or trailers.
    grpc_status: Option<u32>,
    /// The matched route's policy (its response headers go on local replies).
    route_policy: Option<Arc<RoutePolicy>>,
    /// gRPC message counts (requests: shared with the request body).
    request_messages: Option<Arc<AtomicU64>>,
    response_messages: Option<u64>,
}

impl Finisher {
    /// Finishes an upgraded exchange when its tunnel closed, with the bytes
    /// it carried each way.
    pub(super) fn finish_tunnel(self: Box<Self>, received: u64, sent: u64) {
        self.received.fetch_add(received, Ordering::Relaxed);
        self.finish(sent);
    }

    fn finish(mut self: Box<Self>, sent: u64) {
        let elapsed = self.started.elapsed();
        self.record.duration_ms = elapsed.as_millis() as u64;
        self.record.bytes_sent = sent;
        self.record.bytes_received = self.received.load(Ordering::Relaxed);
        let status = self.record.status;
        self.listener.count_status(status);
        if let Some(cluster) = &self.cluster {
            cluster.rq_active.fetch_sub(1, Ordering::Relaxed);
            cluster.count_status(status);
            match self.record.flags.split(',').next() {
                Some("UF") => {
                    cluster.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                }
                Some("UT") => {
                    cluster.rq_timeout.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        if let Some(endpoint) = &self.endpoint {
            endpoint.rq_active.fetch_sub(1, Ordering::Relaxed);
            let counter = if status >= 500 || self.record.flags != "-" {
                &endpoint.rq_error
            } else {
                &endpoint.rq_success
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match self.record.flags.split(',').next() {
                Some("UF") => {
                    endpoint.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                }
                Some("UT") => {
                    endpoint.rq_timeout.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        let unknown = DestinationLabels::unknown_shared();
        self.ctx.metrics.record_request(&RequestSample {
            destination: self.destination.as_ref().unwrap_or(&unknown),
            protocol: self.request_protocol,
            status,
            flags: self.record.flags,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            grpc_status: self.grpc_status,
            request_bytes: self.record.bytes_received,
            response_bytes: self.record.bytes_sent,
            request_messages: self
                .request_messages
                .as_ref()
                .map(|m| m.load(Ordering::Relaxed)),
            response_messages: self.response_messages,
        });
        self.ctx.access_log.write(&self.record);
    }
}

/// Serves HTTP/1.1 and HTTP/2 (by preface) on one downstream connection
/// (plain or TLS) with hyper until it closes or `watcher` drains it; `h1.rs`
/// hands it connections whose requests it does not take itself.
pub async fn serve_hyper<I>(
    ctx: Arc<Context>,
    conn: Arc<ConnInfo>,
    stats: Arc<ListenerStats>,
    io: I,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote = conn.remote;
    let service = service_fn(move |request: Request<Incoming>| {
        serve(ctx.clone(), conn.clone(), stats.clone(), request.map(Some))
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, %remote, "downstream connection error");
    }
}

/// Serves one downstream request. Never fails: every problem becomes a local
/// reply.
pub async fn serve(
    ctx: Arc<Context>,
    conn: Arc<ConnInfo>,
    listener: Arc<ListenerStats>,
    request: Request<Option<Incoming>>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    // The wall-clock start is only printed.
    let start = if ctx.access_log.enabled() {
        SystemTime::now()
    } else {
        SystemTime::UNIX_EPOCH
    };
    let mut record = AccessRecord::new(start, conn.local, conn.remote);
    if let Some(tls) = &conn.tls {
        record.set_tls(tls);
    }
    listener.downstream_rq_total.fetch_add(1, Ordering::Relaxed);
    let snapshot = ctx.snapshot.load_full();

    let received = Arc::new(AtomicU64::new(0));
    let (mut parts, body) = request.into_parts();
    prepare_downstream(&mut parts.headers, &conn);
    record.method = Some(parts.method.clone());
    record.protocol = Some(protocol_name(parts.version));
    // The rest is only for the access log: no copies when it is off.
    if ctx.access_log.enabled() {
        record.path = Some(path_and_query(&parts.uri).to_owned());
        record.forwarded_for = header_string(&parts.headers, &X_FORWARDED_FOR);
        record.user_agent = header_string(&parts.headers, &header::USER_AGENT);
        record.request_id = header_string(&parts.headers, &X_REQUEST_ID);
        record.authority = authority(&parts.uri, &parts.headers).map(str::to_owned);
    }
    let request_protocol = if parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        "grpc"
    } else {
        "http"
    };
    let request_messages = (request_protocol == "grpc").then(|| Arc::new(AtomicU64::new(0)));
    let request = Request::from_parts(
        parts,
        RequestBody {
            inner: body,
            received: received.clone(),
            grpc: request_messages
                .clone()
                .map(|shared| (MessageCounter::default(), shared)),
        },
    );

    let mut finisher = Box::new(Finisher {
        ctx: ctx.clone(),
        listener,
        record,
        started,
        received,
        request_protocol,
        destination: None,
        cluster: None,
        endpoint: None,
        permit: None,
        grpc_status: None,
        route_policy: None,
        request_messages,
        response_messages: None,
    });
    let mut response = match route_request(&ctx, &snapshot, &conn, request, &mut finisher).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "local reply");
            // Envoy lists the retry-limit flag after the failure's.
            finisher.record.flags = match (finisher.record.flags, error.flag()) {
                ("URX", "UF") => "UF,URX",
                ("URX", "UC") => "UC,URX",
                ("URX", "UT") => "UT,URX",
                (_, flag) => flag,
            };
            finisher.record.details = Some(error.details());
            finisher.record.upstream_failure = error.transport_failure().map(str::to_owned);
            let mut reply = if request_protocol == "grpc" {
                grpc_local_reply(error.status(), error.body())
            } else {
                local_reply(error.status(), error.body())
            };
            // Envoy adds the route's response headers to its local replies too.
            if let Some(h) = finisher
                .route_policy
                .as_ref()
                .and_then(|p| p.headers.as_ref())
            {
                h.response.apply(reply.headers_mut());
            }
            reply
        }
    };
    finisher.record.status = response.status().as_u16();
    if request_protocol == "grpc" {
        finisher.grpc_status = grpc_status(response.headers());
    }
    let grpc = (request_protocol == "grpc").then(MessageCounter::default);
    // An upgraded (WebSocket) exchange finishes when its tunnel closes: the
    // access-log line and the metrics then carry its bytes and duration.
    let finisher = match response.extensions_mut().remove::<TunnelFinish>() {
        Some(TunnelFinish(tunnel)) => {
            let _ = tunnel.send(finisher);
            None
        }
        None => Some(finisher),
    };
    Ok(response.map(|inner| ResponseBody {
        inner,
        sent: 0,
        grpc,
        finisher,
    }))
}

/// On a `101 Switching Protocols` response: where its request's
/// [`Finisher`] goes, to be finished by the tunnel when it closes.
#[derive(Clone)]
pub struct TunnelFinish(pub std::sync::Arc<TunnelSlot>);

/// Hands a [`Finisher`] from the response path to the tunnel task.
pub struct TunnelSlot(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Box<Finisher>>>>);

impl TunnelSlot {
    /// A slot and the receiving end for the tunnel.
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<Box<Finisher>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Self(std::sync::Mutex::new(Some(tx))), rx)
    }

    fn send(&self, finisher: Box<Finisher>) -> Result<(), Box<Finisher>> {
        let sender = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match sender {
            Some(sender) => sender.send(finisher),
            None => Err(finisher),
        }
    }
}

async fn route_request(
    ctx: &Context,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    request: Request<RequestBody>,
    finisher: &mut Finisher,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(route_config) = route_config_for(snapshot, conn) else {
        return Err(ProxyError::NoRoute);
    };
    let server_port = snapshot
        .listener_by_bind_port(conn.listener_port)
        .map_or(conn.listener_port, |l| l.service_port);
    let scheme = conn.scheme();
    // Shared handles: the request moves on, and these outlive it without a copy.
    let authority = RequestAuthority::of(request.uri(), request.headers());
    let authority = authority.as_str();
    let Some(vhost) = route_config.select_virtual_host(authority) else {
        return Err(ProxyError::NoRoute);
    };
    let path = request.uri().path_and_query().cloned();
    let path = path.as_ref().map_or("/", |p| p.as_str());
    if vhost.require_tls {
        finisher.record.details = Some("https_redirect");
        let location = format!("https://{}{}", host_only(authority), path);
        return Ok(redirect(StatusCode::MOVED_PERMANENTLY, &location));
    }
    let attributes = RequestAttributes {
        method: request.method().as_str(),
        scheme,
        authority,
        path,
        headers: request.headers(),
    };
    let Some(route) = vhost.select_route(&attributes) else {
        return Err(ProxyError::NoRoute);
    };
    if ctx.access_log.enabled() {
        finisher.record.route_name = Some(route.name.clone());
    }
    finisher.route_policy = Some(route.policy.clone());
    let policy = &route.policy;
    // CORS first: a preflight the policy allows is answered here.
    let origin = policy
        .cors
        .as_ref()
        .and_then(|_| request.headers().get(header::ORIGIN).cloned());
    let mut cors_headers = Vec::new();
    if let (Some(cors), Some(origin)) = (&policy.cors, &origin) {
        let allowed = origin.to_str().is_ok_and(|o| cors.allows_origin(o));
        let preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight && (allowed || !cors.forward_unmatched_preflights) {
            finisher.record.details = Some("cors_response");
            let mut response = local_reply(StatusCode::OK, Bytes::new());
            if allowed {
                response
                    .headers_mut()
                    .extend(cors.preflight_headers(origin));
            }
            return Ok(response);
        }
        if allowed {
            cors_headers = cors.response_headers(origin);
        }
    }
    let mut response = match fault(policy.fault.as_ref(), finisher).await {
        Some(response) => response,
        None => {
            let downstream = Downstream {
                authority,
                scheme,
                remote: conn.remote,
                server_port,
            };
            act(ctx, snapshot, route, request, downstream, path, finisher).await?
        }
    };
    if let Some(h) = &policy.headers {
        h.response.apply(response.headers_mut());
    }
    response.headers_mut().extend(cors_headers);
    Ok(response)
}

/// Does what the route says: answer, redirect or forward.
async fn act(
    ctx: &Context,
    snapshot: &Snapshot,
    route: &Route,
    request: Request<RequestBody>,
    downstream: Downstream<'_>,
    path: &str,
    finisher: &mut Finisher,
) -> Result<Response<ProxyBody>, ProxyError> {
    match &route.action {
        RouteAction::DirectResponse { status, body } => {
            finisher.record.details = Some("direct_response");
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            Ok(local_reply(status, body.clone()))
        }
        RouteAction::Redirect(action) => {
            finisher.record.details = Some("direct_response");
            let location = redirect_location(
                action,
                downstream.scheme,
                downstream.authority,
                path,
                downstream.server_port,
            );
            let status =
                StatusCode::from_u16(action.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            let status = if status.is_redirection() {
                status
            } else {
                StatusCode::MOVED_PERMANENTLY
            };
            Ok(redirect(status, &location))
        }
        RouteAction::Forward(forward) => {
            super::forward::forward(ctx, snapshot, route, forward, request, downstream, finisher)
                .await
        }
    }
}

/// `fault`: waits the delay (flag `DI`) and answers the abort (flag `FI`,
/// an HTTP status or a gRPC status in a trailers-only 200), each for its
/// percentage of requests. `None`: go on with the route.
async fn fault(
    fault: Option<&FaultPolicy>,
    finisher: &mut Finisher,
) -> Option<Response<ProxyBody>> {
    let fault = fault?;
    if let Some((delay, percent)) = fault.delay
        && roll_percent() < percent
    {
        finisher.record.flags = "DI";
        tokio::time::sleep(delay).await;
    }
    let (abort, percent) = fault.abort?;
    if roll_percent() >= percent {
        return None;
    }
    finisher.record.flags = if finisher.record.flags == "DI" {
        "DI,FI"
    } else {
        "FI"
    };
    finisher.record.details = Some("fault_filter_abort");
    Some(match abort {
        FaultAbort::Http(status) => local_reply(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "fault filter abort",
        ),
        FaultAbort::Grpc(code) => grpc_reply(code, "fault filter abort"),
    })
}

/// The route configuration serving `conn`: the listener's, or for a TLS
/// listener the one of the filter chain the handshake chose (looked up by
/// name, so a reload that removed the chain answers 404, never another
/// server's routes).
fn route_config_for<'s>(snapshot: &'s Snapshot, conn: &ConnInfo) -> Option<&'s RouteConfig> {
    match &snapshot.listener_by_bind_port(conn.listener_port)?.kind {
        ListenerKind::Http(rc) => Some(rc),
        ListenerKind::Tls(tls) => match &tls.chain(&conn.tls.as_ref()?.chain)?.action {
            ChainAction::Http { routes, .. } => Some(routes),
            _ => None,
        },
        ListenerKind::Tcp(_) => None,
    }
}

/// Adds what Envoy adds to every downstream request before routing: the
/// client address to `x-forwarded-for` and an `x-request-id` when absent.
pub fn prepare_downstream(headers: &mut HeaderMap, conn: &ConnInfo) {
    append_forwarded_for(headers, &conn.client_ip);
    if let http::header::Entry::Vacant(entry) = headers.entry(X_REQUEST_ID) {
        entry.insert(new_request_id());
    }
}

/// A random (v4) UUID, formatted on the stack.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).expect("a hyphenated UUID is a valid header value")
}

/// Appends the client address `ip` to `x-forwarded-for`, joining several
/// header lines into one.
pub fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    if !headers.contains_key(X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR, ip.clone());
        return;
    }
    let existing: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if existing.is_empty() {
        headers.insert(X_FORWARDED_FOR, ip.clone());
        return;
    }
    let ip = ip.to_str().unwrap_or_default();
    let value = format!("{}, {ip}", existing.join(", "));
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// Headers of the upstream request: hop-by-hop headers removed, and
/// `x-forwarded-proto` set to the downstream scheme.
pub fn prepare_upstream(headers: &mut HeaderMap, http2: bool, scheme: &'static str) {
    let keep_te_trailers = http2
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Only WebSocket upgrades are relayed (`forward` puts them back); any
    // other (`h2c`, ...) would switch protocols on a connection the proxy
    // does not relay.
    strip_headers(headers, true);
    if keep_te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_headers(headers, false);
}

/// Removes the hop-by-hop headers (and `Upgrade` when `upgrade`). One pass
/// over the names finds those present, so a message without any (the
/// common case) costs no lookup.
fn strip_headers(headers: &mut HeaderMap, upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if upgrade && name == header::UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection` (HOP_BY_HOP[0]) may name more; the usual tokens
        // (`keep-alive`, `close`, `upgrade`) need no lookup of their own.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("upgrade")
            })
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        if headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| contains_token(v, "upgrade"))
        {
            // `Connection: upgrade` names `Upgrade` as hop-by-hop too.
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// Whether the comma-separated `value` lists `token` (case-insensitive).
fn contains_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The path after `rewrite.uri`: the matched prefix is replaced; an exact or
/// regex match replaces the whole path. The query is kept.
pub fn rewrite_path(path_and_query: &str, matched: &PathMatch, replacement: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let rewritten = match matched {
        PathMatch::Prefix(prefix)
            if path.len() >= prefix.len() && path.is_char_boundary(prefix.len()) =>
        {
            format!("{replacement}{}", &path[prefix.len()..])
        }
        _ => replacement.to_owned(),
    };
    match query {
        Some(query) => format!("{rewritten}?{query}"),
        None => rewritten,
    }
}

/// `Location` of a `redirect` route: each part replaced when the route sets it.
pub fn redirect_location(
    action: &RedirectAction,
    scheme: &str,
    authority: &str,
    path: &str,
    server_port: u16,
) -> String {
    let scheme_out = action.scheme.as_deref().unwrap_or(scheme);
    let (host, port) = match &action.authority {
        Some(a) => split_host_port(a),
        None => {
            let (host, port) = split_host_port(authority);
            // A scheme change drops the original port (it belonged to the old scheme).
            (host, if scheme_out == scheme { port } else { None })
        }
    };
    // derivePort: FROM_REQUEST_PORT is the Gateway server's port (Istio's
    // ApplyRedirect), whatever port the client used to get there.
    let port = if action.derive_port {
        Some(server_port)
    } else {
        action.port.or(port)
    };
    let port = match (scheme_out, port) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    let path_out = match &action.path {
        Some(p) if p.contains('?') => p.clone(),
        Some(p) => match path.split_once('?') {
            Some((_, query)) => format!("{p}?{query}"),
            None => p.clone(),
        },
        None => path.to_owned(),
    };
    format!("{scheme_out}://{host}{port}{path_out}")
}

fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    let host = host_only(authority);
    let port = authority[host.len()..]
        .strip_prefix(':')
        .and_then(|p| p.parse().ok());
    (host, port)
}

/// `authority` without its port.
fn host_only(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// `:authority` / `Host` of a request, held by a reference-counted handle
/// rather than copied.
enum RequestAuthority {
    Uri(http::uri::Authority),
    Host(HeaderValue),
    None,
}

impl RequestAuthority {
    fn of(uri: &Uri, headers: &HeaderMap) -> Self {
        if let Some(authority) = uri.authority() {
            return RequestAuthority::Uri(authority.clone());
        }
        match headers.get(header::HOST) {
            Some(host) if host.to_str().is_ok() => RequestAuthority::Host(host.clone()),
            _ => RequestAuthority::None,
        }
    }

    /// The authority, `""` when the request has none.
    fn as_str(&self) -> &str {
        match self {
            RequestAuthority::Uri(authority) => authority.as_str(),
            RequestAuthority::Host(host) => host.to_str().unwrap_or_default(),
            RequestAuthority::None => "",
        }
    }
}

/// `:authority` of an HTTP/2 request, else the `Host` header.
fn authority<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |p| p.as_str())
}

fn header_string(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// A local reply with a short text body.
pub fn local_reply(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// `grpc-status` as a number (a trailers-only answer has it in its headers).
pub(super) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A local reply to a gRPC request, as Envoy sends it: HTTP 200,
/// trailers-only, `grpc-status` mapped from the HTTP status (404
/// UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, ...) and the reason as
/// `grpc-message`.
pub fn grpc_local_reply(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let code: u32 = match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    };
    grpc_reply(code, message)
}

/// A trailers-only gRPC answer with status `code`.
fn grpc_reply(code: u32, message: &str) -> Response<ProxyBody> {
    let mut response = local_reply(StatusCode::OK, Bytes::new());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", value);
    }
    response
}

fn redirect(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = local_reply(status, Bytes::new());
    match HeaderValue::from_str(location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_client_ip() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, &HeaderValue::from_static("198.18.0.1"));
        assert_eq!(headers[&X_FORWARDED_FOR], "198.18.0.1");
        append_forwarded_for(&mut headers, &HeaderValue::from_static("198.18.0.2"));
        assert_eq!(headers[&X_FORWARDED_FOR], "198.18.0.1, 198.18.0.2");
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, "10.0.0.1".parse().unwrap());
        headers.append(X_FORWARDED_FOR, "10.0.0.2".parse().unwrap());
        append_forwarded_for(&mut headers, &HeaderValue::from_static("198.18.0.1"));
        assert_eq!(
            headers.get_all(&X_FORWARDED_FOR).iter().count(),
            1,
            "joined into one line"
        );
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 198.18.0.1");
    }

    #[test]
    fn request_id_is_generated_only_when_absent() {
        let conn = ConnInfo::new(
            8080,
            "198.18.0.2:8080".parse().unwrap(),
            "198.18.0.1:1234".parse().unwrap(),
        );
        let mut headers = HeaderMap::new();
        prepare_downstream(&mut headers, &conn);
        let id = headers[&X_REQUEST_ID].to_str().unwrap().to_owned();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        prepare_downstream(&mut headers, &conn);
        assert_eq!(headers[&X_REQUEST_ID], id.as_str());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "secret"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
            ("x-forwarded-proto", "https"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut h1 = headers.clone();
        prepare_upstream(&mut h1, false, "http");
        let names: Vec<&str> = h1.keys().map(HeaderName::as_str).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(h1["x-keep"], "yes");
        assert_eq!(h1["x-forwarded-proto"], "http");
        let mut h2 = headers;
        prepare_upstream(&mut h2, true, "https");
        assert_eq!(h2["te"], "trailers");
        // Responses keep `Upgrade` unless `Connection` names it.
        let mut response = HeaderMap::new();
        response.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        response.insert(header::SERVER, HeaderValue::from_static("x"));
        strip_hop_by_hop(&mut response);
        assert_eq!(response.len(), 2);
        response.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        strip_hop_by_hop(&mut response);
        let names: Vec<&str> = response.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["server"]);
    }

    #[test]
    fn path_rewrites() {
        let prefix = |p: &str| PathMatch::Prefix(p.to_owned());
        let cases = [
            ("/api/v1?x=1", prefix("/api"), "/svc", "/svc/v1?x=1"),
            ("/api", prefix("/api"), "/", "/"),
            ("/api/x", prefix("/api"), "/", "//x"),
            ("/API/x", prefix("/api"), "/v2", "/v2/x"),
            (
                "/exact?q",
                PathMatch::Exact("/exact".into()),
                "/new",
                "/new?q",
            ),
        ];
        for (path, matched, replacement, want) in cases {
            assert_eq!(rewrite_path(path, &matched, replacement), want, "{path}");
        }
    }

    #[test]
    fn redirect_locations() {
        let action = |scheme: Option<&str>,
                      authority: Option<&str>,
                      port: Option<u16>,
                      path: Option<&str>| {
            RedirectAction {
                status: 301,
                scheme: scheme.map(str::to_owned),
                authority: authority.map(str::to_owned),
                port,
                derive_port: false,
                path: path.map(str::to_owned),
            }
        };
        let cases = [
            (
                action(None, None, None, Some("/new")),
                "a.com",
                "/old?q=1",
                "http://a.com/new?q=1",
            ),
            (
                action(Some("https"), None, None, None),
                "a.com:8080",
                "/p",
                "https://a.com/p",
            ),
            (
                action(None, Some("b.com"), None, None),
                "a.com:8080",
                "/p",
                "http://b.com/p",
            ),
            (
                action(None, None, Some(9090), None),
                "a.com:8080",
                "/p",
                "http://a.com:9090/p",
            ),
            (
                action(None, None, None, None),
                "a.com:8080",
                "/p",
                "http://a.com:8080/p",
            ),
            (
                action(Some("https"), None, Some(443), None),
                "a.com",
                "/",
                "https://a.com/",
            ),
        ];
        for (action, authority, path, want) in cases {
            assert_eq!(
                redirect_location(&action, "http", authority, path, 80),
                want
            );
        }
    }

    #[test]
    fn host_only_strips_port() {
        assert_eq!(host_only("a.com:80"), "a.com");
        assert_eq!(host_only("a.com"), "a.com");
        assert_eq!(host_only("[::1]:80"), "[::1]");
    }
}
