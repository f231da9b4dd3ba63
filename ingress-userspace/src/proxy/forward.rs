//! Data path, HTTP upstream: a routed request to a cluster the way Envoy's
//! router sends it: path and host rewrites, header mutations of the route
//! and of the chosen destination, retries (Istio's default policy when the
//! route sets none) to another endpoint where there is one, per-try and
//! route timeouts, and fire-and-forget mirrors.
//!
//! A request body can only be sent again if it was kept: bodies up to
//! [`MAX_REPLAY_BODY`] with a `content-length` are read before sending when
//! the route retries or mirrors; longer or chunked bodies stream through
//! once (no retry, no mirrored body), like Envoy past its buffer limit.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpInfo;

use crate::snapshot::policy::{HashKey, LbPolicy};
use crate::snapshot::{Cluster, ForwardAction, RetryPolicy, Route, Snapshot, UpstreamProtocol};

use super::http::{
    BoxError, Finisher, ProxyBody, RequestBody, TunnelFinish, TunnelSlot, X_ENVOY_ORIGINAL_PATH,
    X_ENVOY_UPSTREAM_SERVICE_TIME, grpc_status, prepare_upstream, rewrite_path, strip_hop_by_hop,
};
use super::pool::{self, ConnSettings, DEFAULT_IDLE_TIMEOUT};
use super::tcp::Counted;
use super::upstream::{
    ClusterState, EndpointStats, Http2Client, Pick, TryOutcome, choose_weighted, random_u64,
};
use super::{Context, ProxyError};

/// Bodies up to this size are kept so that the request can be retried and
/// mirrored (Envoy buffers up to its connection buffer limit, 1 MiB).
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;
/// Istio turns on `include_request_attempt_count` at gateways.
const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// Envoy's retry back-off: 25 ms base, doubling, full jitter, 250 ms cap.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// The body sent upstream: the downstream stream, or kept bytes.
pub enum UpstreamBody {
    Stream(RequestBody),
    Full(Option<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Stream(inner) => Pin::new(inner).poll_frame(cx),
            UpstreamBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream(inner) => inner.is_end_stream(),
            UpstreamBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream(inner) => inner.size_hint(),
            UpstreamBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The request body as far as it can be sent again.
enum Payload {
    /// Empty or read in full: every try (and mirror) gets a copy.
    Kept(Option<Bytes>),
    /// Streams through once.
    Stream(Option<RequestBody>),
}

impl Payload {
    fn next(&mut self) -> Option<UpstreamBody> {
        match self {
            Payload::Kept(bytes) => {
                Some(UpstreamBody::Full(bytes.clone().filter(|b| !b.is_empty())))
            }
            Payload::Stream(body) => body.take().map(UpstreamBody::Stream),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Payload::Kept(_))
    }
}

/// What the downstream side of a forwarded request asked for.
pub struct Downstream<'a> {
    /// `:authority` / `Host`, as received.
    pub authority: &'a str,
    /// `http` or `https` (the downstream connection's).
    pub scheme: &'static str,
    /// The client's address (`consistentHash.useSourceIp`).
    pub remote: SocketAddr,
    /// The Gateway server port of the route (`derivePort`).
    pub server_port: u16,
}

/// The consistent-hash key of a request, and the cookie to set when the
/// hash cookie was missing and has a ttl.
fn hash_key(
    key: &HashKey,
    headers: &HeaderMap,
    path: &str,
    remote: SocketAddr,
) -> (Option<u64>, Option<HeaderValue>) {
    let hash = |bytes: &[u8]| {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
        Some(crate::maglev::mix(h, 0))
    };
    match key {
        HashKey::Header(name) => (headers.get(name).and_then(|v| hash(v.as_bytes())), None),
        HashKey::SourceIp => (hash(remote.ip().to_string().as_bytes()), None),
        HashKey::QueryParam(name) => {
            let value = path.split_once('?').and_then(|(_, q)| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v)
            });
            (value.and_then(|v| hash(v.as_bytes())), None)
        }
        HashKey::Cookie { name, path, ttl } => {
            let found = headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.trim_matches('"').to_owned());
            match (found, ttl) {
                (Some(value), _) => (hash(value.as_bytes()), None),
                (None, Some(ttl)) => {
                    // Envoy generates the cookie; the client sticks from the next request.
                    let value = format!("{:016x}", random_u64());
                    // Envoy quotes the value; a zero ttl is a session cookie.
                    let mut cookie = format!("{name}=\"{value}\"");
                    if !ttl.is_zero() {
                        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
                    }
                    if let Some(p) = path {
                        cookie.push_str(&format!("; Path={p}"));
                    }
                    cookie.push_str("; HttpOnly");
                    (hash(value.as_bytes()), HeaderValue::from_str(&cookie).ok())
                }
                (None, None) => (None, None),
            }
        }
    }
}

/// Forwards one request; the `Err` is the local reply to send instead.
pub async fn forward(
    ctx: &Context,
    snapshot: &Snapshot,
    route: &Route,
    forward: &ForwardAction,
    request: Request<RequestBody>,
    downstream: Downstream<'_>,
    finisher: &mut Finisher,
) -> Result<Response<ProxyBody>, ProxyError> {
    let choice = choose_weighted(&forward.clusters, random_u64())
        .ok_or_else(|| ProxyError::ClusterNotFound(String::new()))?;
    if ctx.access_log.enabled() {
        finisher.record.upstream_cluster = Some(choice.name.clone());
    }
    let cluster = snapshot
        .cluster(&choice.name)
        .ok_or_else(|| ProxyError::ClusterNotFound(choice.name.clone()))?;
    let state = ctx.balancer.state(&cluster.name);
    finisher.destination = Some(state.labels(cluster));
    state.rq_total.fetch_add(1, Ordering::Relaxed);
    state.rq_active.fetch_add(1, Ordering::Relaxed);
    finisher.cluster = Some(state.clone());

    let (mut parts, body) = request.into_parts();
    let websocket = is_websocket_upgrade(&parts.headers);
    // A port upgraded to HTTP/2 by h2UpgradePolicy still speaks HTTP/1.1,
    // which WebSocket upgrades need.
    let http2 = cluster.protocol == UpstreamProtocol::Http2
        && !(websocket && cluster.policy.limits.h2_upgrade);
    let downstream_upgrade = if websocket {
        if http2 {
            // An HTTP/2 upstream cannot take an HTTP/1.1 upgrade.
            return Err(ProxyError::BadRequest(
                "WebSocket upgrade to an HTTP/2 upstream".to_owned(),
            ));
        }
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let mut headers = parts.headers;
    let original = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path = match upstream_path(original.as_str(), route, forward) {
        Some(rewritten) if rewritten != original.as_str() => {
            let value = HeaderValue::from_str(original.as_str())
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
            headers.insert(X_ENVOY_ORIGINAL_PATH, value);
            PathAndQuery::try_from(rewritten).map_err(|e| ProxyError::BadRequest(e.to_string()))?
        }
        _ => original,
    };
    let destination_headers = choice.headers.as_deref();
    // The route's authority rewrite wins; a destination's `host` set applies
    // only when the route has none (Istio's processDestination).
    let host = forward
        .host_rewrite
        .as_deref()
        .or(destination_headers.and_then(|h| h.host_rewrite.as_deref()))
        .unwrap_or(downstream.authority);
    if !host.is_empty() {
        let value =
            HeaderValue::from_str(host).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        headers.insert(header::HOST, value);
    }
    prepare_upstream(&mut headers, http2, downstream.scheme);
    if downstream_upgrade.is_some() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if let Some(h) = &route.policy.headers {
        h.request.apply(&mut headers);
    }
    if let Some(h) = destination_headers {
        h.request.apply(&mut headers);
    }

    let retry = &forward.retry;
    let wants_copy = retry.attempts > 0 || !forward.mirrors.is_empty();
    let mut payload = if body.is_end_stream() {
        Payload::Kept(None)
    } else if wants_copy && content_length(&headers).is_some_and(|n| n <= MAX_REPLAY_BODY) {
        let collected = body
            .collect()
            .await
            .map_err(|e| ProxyError::DownstreamReset(e.to_string()))?;
        Payload::Kept(Some(collected.to_bytes()))
    } else {
        Payload::Stream(Some(body))
    };
    let template = Template {
        method: parts.method,
        path,
        version: if http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        },
        headers,
    };
    let client = http2.then(|| ctx.upstreams.http2(cluster));
    let settings = conn_settings(cluster);
    if let Payload::Kept(body) = &payload {
        for mirror in &forward.mirrors {
            if roll_percent() < mirror.percent
                && let Some(target) = snapshot.cluster(&mirror.cluster)
            {
                spawn_mirror(
                    (target.protocol == UpstreamProtocol::Http2)
                        .then(|| ctx.upstreams.http2(target)),
                    target.clone(),
                    ctx.balancer.state(&target.name),
                    &template,
                    body.clone(),
                );
            }
        }
    }

    let deadline = forward.timeout.map(|t| finisher.started + t);
    let (hash, set_cookie) = match &cluster.policy.lb {
        LbPolicy::ConsistentHash(key) => hash_key(
            key,
            &template.headers,
            template.path.as_str(),
            downstream.remote,
        ),
        _ => (None, None),
    };
    admit(cluster, &state, deadline, finisher).await?;
    let limits = &cluster.policy.limits;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut retries = 0u32;
    let mut retrying = RetryGuard(&state, false);
    loop {
        let pick = Pick {
            hash,
            avoid: &tried,
        };
        let Some(endpoint) = state.choose(cluster, pick) else {
            state.cx_none_healthy.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::NoHealthyUpstream);
        };
        let address = endpoint.address;
        tried.push(address);
        finisher.record.upstream_host = Some(address);
        let endpoint_stats = state.endpoint(address);
        endpoint_stats.rq_total.fetch_add(1, Ordering::Relaxed);
        endpoint_stats.rq_active.fetch_add(1, Ordering::Relaxed);
        if let Some(previous) = finisher.endpoint.replace(endpoint_stats.clone()) {
            previous.rq_active.fetch_sub(1, Ordering::Relaxed);
            previous.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        let Some(body) = payload.next() else {
            // Only a streamed body runs out, and a streamed body is never retried.
            return Err(ProxyError::UpstreamReset(
                "request body already sent".to_owned(),
            ));
        };
        let mut request = template.build(address, body)?;
        request.headers_mut().insert(
            X_ENVOY_ATTEMPT_COUNT,
            if retries == 0 {
                HeaderValue::from_static("1")
            } else {
                HeaderValue::from(retries + 1)
            },
        );
        let per_try = try_budget(retry.per_try_timeout, deadline);
        let sent_at = Instant::now();
        let pending = send(client.as_ref(), &endpoint_stats, address, settings, request);
        let outcome = match per_try {
            Some(budget) => match tokio::time::timeout(budget, pending).await {
                Ok(result) => Ok(result),
                Err(_) => Err(()),
            },
            None => Ok(pending.await),
        };
        let outcome_for_outlier = match &outcome {
            Ok(Ok((response, _))) => TryOutcome::Status(response.status().as_u16()),
            _ => TryOutcome::LocalFailure,
        };
        if let Some(stats) = &finisher.endpoint {
            state.record_outcome(cluster, stats, outcome_for_outlier);
        }
        let mut can_retry = retries < retry.attempts
            && payload.replayable()
            && deadline.is_none_or(|d| Instant::now() < d);
        if can_retry
            && limits
                .max_retries
                .is_some_and(|max| state.retries_active.load(Ordering::Relaxed) >= u64::from(max))
            && !retrying.1
        {
            state.rq_retry_overflow.fetch_add(1, Ordering::Relaxed);
            can_retry = false;
        }
        let failure = match outcome {
            Ok(Ok((mut response, local))) => {
                let status = response.status().as_u16();
                let grpc = grpc_status(response.headers());
                let retriable = retry.retries_status(status, grpc);
                if retriable && can_retry {
                    retries += 1;
                    retrying.start();
                    state.rq_retry.fetch_add(1, Ordering::Relaxed);
                    backoff(retries, deadline).await;
                    continue;
                }
                if retries > 0 {
                    if retriable {
                        state
                            .rq_retry_limit_exceeded
                            .fetch_add(1, Ordering::Relaxed);
                        finisher.record.flags = "URX";
                    } else {
                        state.rq_retry_success.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let service_time = sent_at.elapsed().as_millis() as u64;
                finisher.record.upstream_service_time_ms = Some(service_time);
                finisher.record.details = Some("via_upstream");
                finisher.record.upstream_local = local;
                strip_hop_by_hop(response.headers_mut());
                response.headers_mut().insert(
                    X_ENVOY_UPSTREAM_SERVICE_TIME,
                    HeaderValue::from(service_time),
                );
                if let Some(h) = destination_headers {
                    h.response.apply(response.headers_mut());
                }
                if let Some(cookie) = set_cookie {
                    response.headers_mut().append(header::SET_COOKIE, cookie);
                }
                if let Some(downstream) = downstream_upgrade
                    && response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                {
                    // Hop-by-hop for anything else, but the 101 needs them.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    response
                        .headers_mut()
                        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                    let upstream = hyper::upgrade::on(&mut response);
                    let (slot, finisher) = TunnelSlot::new();
                    response
                        .extensions_mut()
                        .insert(TunnelFinish(Arc::new(slot)));
                    tokio::spawn(tunnel(downstream, upstream, finisher));
                }
                return Ok(response);
            }
            Ok(Err(error)) => error,
            Err(()) => ProxyError::Timeout,
        };
        let out_of_time = deadline.is_some_and(|d| Instant::now() >= d);
        if out_of_time {
            return Err(ProxyError::Timeout);
        }
        if can_retry && retriable_failure(retry, &failure) {
            retries += 1;
            retrying.start();
            state.rq_retry.fetch_add(1, Ordering::Relaxed);
            backoff(retries, deadline).await;
            continue;
        }
        if retries > 0 && retriable_failure(retry, &failure) {
            finisher.record.flags = "URX";
            state
                .rq_retry_limit_exceeded
                .fetch_add(1, Ordering::Relaxed);
        }
        return Err(failure);
    }
}

/// An HTTP/1.1 `Upgrade: websocket` request (Envoy's default upgrade
/// config at an Istio gateway allows exactly this one).
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

/// Relays an upgraded connection both ways until either side closes, then
/// finishes its request (access log, metrics) with the bytes relayed.
async fn tunnel(
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    finisher: tokio::sync::oneshot::Receiver<Box<Finisher>>,
) {
    let (down, up, finisher) = tokio::join!(downstream, upstream, finisher);
    let (Ok(down), Ok(up)) = (down, up) else {
        tracing::debug!("websocket upgrade did not complete");
        if let Ok(finisher) = finisher {
            finisher.finish_tunnel(0, 0);
        }
        return;
    };
    // Counted on the reading side: a tunnel often ends in an error (a TLS
    // peer that closes without close_notify), and its bytes still count.
    let mut down = Counted::new(hyper_util::rt::TokioIo::new(down));
    let mut up = Counted::new(hyper_util::rt::TokioIo::new(up));
    if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(%error, "websocket tunnel closed");
    }
    if let Ok(finisher) = finisher {
        finisher.finish_tunnel(down.read, up.read);
    }
}

/// Counts this request in the cluster's retries in flight while it retries.
struct RetryGuard<'a>(&'a ClusterState, bool);

impl RetryGuard<'_> {
    fn start(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.retries_active.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for RetryGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.retries_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The circuit breakers (`connectionPool`): `http2MaxRequests` caps the
/// requests in flight; `tcp.maxConnections` caps HTTP/1.1 requests in
/// flight (one connection each), the rest wait as pending up to
/// `http1MaxPendingRequests`. Overflow is a 503 with flag `UO`. The slot
/// is held by the finisher until the response ends.
async fn admit(
    cluster: &Cluster,
    state: &ClusterState,
    deadline: Option<Instant>,
    finisher: &mut Finisher,
) -> Result<(), ProxyError> {
    let limits = &cluster.policy.limits;
    let overflow = |state: &ClusterState| {
        state.rq_pending_overflow.fetch_add(1, Ordering::Relaxed);
        Err(ProxyError::Overflow)
    };
    if let Some(max) = limits.max_requests
        && state.rq_active.load(Ordering::Relaxed) > i64::from(max)
    {
        return overflow(state);
    }
    let Some(max) = limits
        .max_connections
        .filter(|_| cluster.protocol != UpstreamProtocol::Http2)
    else {
        return Ok(());
    };
    let slots = state.connection_slots(max);
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        finisher.permit = Some(permit);
        return Ok(());
    }
    if limits
        .max_pending_requests
        .is_some_and(|p| state.rq_pending.load(Ordering::Relaxed) >= u64::from(p))
    {
        return overflow(state);
    }
    state.rq_pending.fetch_add(1, Ordering::Relaxed);
    let wait = slots.acquire_owned();
    let permit = match deadline {
        Some(d) => tokio::time::timeout(d.saturating_duration_since(Instant::now()), wait)
            .await
            .map_err(|_| ProxyError::Timeout),
        None => Ok(wait.await),
    };
    state.rq_pending.fetch_sub(1, Ordering::Relaxed);
    match permit? {
        Ok(permit) => {
            finisher.permit = Some(permit);
            Ok(())
        }
        Err(_) => overflow(state),
    }
}

/// What every try sends, but the endpoint and the body.
struct Template {
    method: Method,
    path: PathAndQuery,
    version: Version,
    headers: HeaderMap,
}

impl Template {
    /// The request of one try at `address`. HTTP/1.1 goes out in origin
    /// form (`GET /path`), with a `Host` of the endpoint when the request
    /// has none; HTTP/2 names the endpoint as the URI's authority.
    fn build(
        &self,
        address: SocketAddr,
        body: UpstreamBody,
    ) -> Result<Request<UpstreamBody>, ProxyError> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.uri_mut() = if self.version == Version::HTTP_2 {
            Uri::builder()
                .scheme("http")
                .authority(address.to_string())
                .path_and_query(self.path.clone())
                .build()
                .map_err(|e| ProxyError::BadRequest(e.to_string()))?
        } else {
            if !self.headers.contains_key(header::HOST) {
                let host = HeaderValue::try_from(address.to_string())
                    .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
                request.headers_mut().insert(header::HOST, host);
            }
            Uri::from(self.path.clone())
        };
        Ok(request)
    }
}

/// Connect and idle timeouts and the request limit of `cluster`'s
/// connections.
fn conn_settings(cluster: &Cluster) -> ConnSettings {
    ConnSettings {
        connect_timeout: cluster.connect_timeout,
        idle_timeout: cluster
            .policy
            .limits
            .idle_timeout
            .unwrap_or(DEFAULT_IDLE_TIMEOUT),
        max_requests: cluster.policy.limits.max_requests_per_connection,
    }
}

/// Sends one try: HTTP/2 through the cluster's multiplexing client,
/// HTTP/1.1 over the endpoint's connection pool. The response comes with
/// the local address of its connection.
async fn send(
    http2: Option<&Http2Client>,
    endpoint: &Arc<EndpointStats>,
    address: SocketAddr,
    settings: ConnSettings,
    request: Request<UpstreamBody>,
) -> Result<(Response<ProxyBody>, Option<SocketAddr>), ProxyError> {
    match http2 {
        Some(client) => {
            let response = client
                .request(request)
                .await
                .map_err(classify_client_error)?;
            let local = response
                .extensions()
                .get::<HttpInfo>()
                .map(HttpInfo::local_addr);
            Ok((response.map(|b| b.map_err(BoxError::from).boxed()), local))
        }
        None => pool::send(endpoint, address, settings, request).await,
    }
}

/// The path sent upstream when the route rewrites it: `rewrite.uri`
/// (prefix replacement) or `uriRegexRewrite` (every match replaced; the
/// query is kept).
fn upstream_path(original: &str, route: &Route, forward: &ForwardAction) -> Option<String> {
    if let Some(replacement) = &forward.prefix_rewrite {
        return Some(rewrite_path(original, &route.matcher.path, replacement));
    }
    if let Some((pattern, replacement)) = &forward.regex_rewrite {
        let (path, query) = match original.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (original, None),
        };
        let rewritten = pattern.regex.replace_all(path, replacement.as_str());
        return Some(match query {
            Some(q) => format!("{rewritten}?{q}"),
            None => rewritten.into_owned(),
        });
    }
    None
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The time one try may take: the per-try timeout, cut to what is left of
/// the route timeout.
fn try_budget(per_try: Option<Duration>, deadline: Option<Instant>) -> Option<Duration> {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (per_try, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a failed try (no response) is retried under `policy`.
fn retriable_failure(policy: &RetryPolicy, failure: &ProxyError) -> bool {
    match failure {
        ProxyError::ConnectFailure(_) => policy.retries_connect_failure(),
        ProxyError::UpstreamReset(reason) => policy
            .retries_reset(reason.contains("refused stream") || reason.contains("REFUSED_STREAM")),
        // A per-try timeout is a 504 for the retry policy.
        ProxyError::Timeout => policy.retry_on.five_xx || policy.retry_on.gateway_error,
        _ => false,
    }
}

/// Sleeps Envoy's jittered exponential back-off before retry `n`, never
/// past the route deadline.
async fn backoff(n: u32, deadline: Option<Instant>) {
    let ceiling = BACKOFF_BASE.saturating_mul(1 << n.min(4)).min(BACKOFF_MAX);
    let jitter = Duration::from_micros(random_u64() % (ceiling.as_micros() as u64 + 1));
    let wait = match deadline {
        Some(d) => jitter.min(d.saturating_duration_since(Instant::now())),
        None => jitter,
    };
    tokio::time::sleep(wait).await;
}

/// A uniform percentage in [0, 100).
pub fn roll_percent() -> f64 {
    (random_u64() % 1_000_000) as f64 / 10_000.0
}

/// Sends a copy of the request to a mirror cluster and forgets it: the
/// answer is drained and dropped, failures only counted. The host gets
/// Envoy's `-shadow` suffix.
fn spawn_mirror(
    client: Option<Http2Client>,
    cluster: Arc<Cluster>,
    state: Arc<ClusterState>,
    template: &Template,
    body: Option<Bytes>,
) {
    let mut headers = template.headers.clone();
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        let shadow = shadow_host(host);
        if let Ok(value) = HeaderValue::from_str(&shadow) {
            headers.insert(header::HOST, value);
        }
    }
    let template = Template {
        method: template.method.clone(),
        path: template.path.clone(),
        version: if cluster.protocol == UpstreamProtocol::Http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        },
        headers,
    };
    tokio::spawn(async move {
        let Some(endpoint) = state.choose_endpoint(&cluster) else {
            state.cx_none_healthy.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let address = endpoint.address;
        let Ok(request) = template.build(address, UpstreamBody::Full(body)) else {
            return;
        };
        state.rq_total.fetch_add(1, Ordering::Relaxed);
        let stats = state.endpoint(address);
        let settings = conn_settings(&cluster);
        let sent = tokio::time::timeout(cluster.connect_timeout + Duration::from_secs(30), async {
            let (response, _) = send(client.as_ref(), &stats, address, settings, request).await?;
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            Ok::<u16, ProxyError>(status)
        })
        .await;
        match sent {
            Ok(Ok(status)) => state.count_status(status),
            _ => {
                state.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
}

/// `a.example.com:8080` -> `a.example.com-shadow:8080`.
fn shadow_host(host: &str) -> String {
    let split = if host.starts_with('[') {
        host.find(']').map(|end| end + 1)
    } else {
        host.rfind(':').filter(|&i| {
            !host[i + 1..].is_empty() && host[i + 1..].bytes().all(|b| b.is_ascii_digit())
        })
    };
    let (name, port) = host.split_at(split.unwrap_or(host.len()));
    format!("{name}-shadow{port}")
}

/// Sorts an HTTP/2 client error into connect failure, protocol error or
/// reset.
pub fn classify_client_error(error: hyper_util::client::legacy::Error) -> ProxyError {
    let innermost = {
        let mut source: &(dyn std::error::Error + 'static) = &error;
        while let Some(next) = source.source() {
            source = next;
        }
        source.to_string()
    };
    if error.is_connect() {
        return ProxyError::ConnectFailure(innermost);
    }
    let mut source = std::error::Error::source(&error);
    while let Some(e) = source {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>()
            && hyper_error.is_parse()
        {
            return ProxyError::UpstreamProtocol(hyper_error.to_string());
        }
        source = e.source();
    }
    ProxyError::UpstreamReset(innermost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_goes_before_the_port() {
        assert_eq!(shadow_host("a.example.com"), "a.example.com-shadow");
        assert_eq!(
            shadow_host("a.example.com:8080"),
            "a.example.com-shadow:8080"
        );
    }

    #[test]
    fn try_budget_is_the_smaller_of_per_try_and_what_is_left() {
        let far = Some(Instant::now() + Duration::from_secs(60));
        let got = try_budget(Some(Duration::from_secs(1)), far).unwrap();
        assert_eq!(got, Duration::from_secs(1));
        let near = Some(Instant::now() + Duration::from_millis(100));
        assert!(
            try_budget(Some(Duration::from_secs(1)), near).unwrap() <= Duration::from_millis(100)
        );
        assert_eq!(try_budget(None, None), None);
    }

    #[test]
    fn failures_retried_by_the_istio_default() {
        let p = RetryPolicy::istio_default();
        assert!(retriable_failure(
            &p,
            &ProxyError::ConnectFailure("refused".into())
        ));
        assert!(!retriable_failure(
            &p,
            &ProxyError::UpstreamReset("eof".into())
        ));
        assert!(!retriable_failure(&p, &ProxyError::Timeout));
        let none = RetryPolicy::none();
        assert!(!retriable_failure(
            &none,
            &ProxyError::ConnectFailure("refused".into())
        ));
    }
}
