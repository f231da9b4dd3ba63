//! Consumer of the snapshot: the userspace data path (HTTP and TCP proxying).
//!
//! Every connection reads the current [`Snapshot`] once per request (HTTP) or
//! per connection (TCP) and keeps that `Arc` until it is done, so a config
//! swap never changes a request half way. Errors are [`ProxyError`]s, mapped to
//! a status, a response flag and a body in exactly one place.

pub mod access_log;
pub mod clock;
pub mod forward;
pub mod grpc;
pub mod h1;
pub mod http;
pub mod pool;
pub mod tcp;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use ::http::HeaderValue;
use arc_swap::ArcSwap;
use hyper::StatusCode;

use crate::snapshot::Snapshot;
use crate::stats::{Metrics, StatStore};
use crate::tls::store::TlsRuntime;

use self::access_log::AccessLog;
use self::upstream::{Balancer, UpstreamClients};

/// What the data path shares across connections.
#[derive(Debug)]
pub struct Context {
    /// The config being served; swapped whole on reload.
    pub snapshot: ArcSwap<Snapshot>,
    /// Load-balancing state and per-endpoint stats, by cluster name.
    pub balancer: Balancer,
    /// Pooled upstream HTTP clients.
    pub upstreams: UpstreamClients,
    pub metrics: Arc<Metrics>,
    pub access_log: AccessLog,
    /// Live TLS configs of the terminating servers.
    pub tls: Arc<TlsRuntime>,
}

impl Context {
    pub fn new(snapshot: Arc<Snapshot>, metrics: Arc<Metrics>, access_log: AccessLog) -> Self {
        Self {
            snapshot: ArcSwap::new(snapshot),
            balancer: Balancer::default(),
            upstreams: UpstreamClients::default(),
            metrics,
            access_log,
            tls: Arc::new(TlsRuntime::new()),
        }
    }
}

/// How a listener's HTTP connection learns that it drains: hyper's
/// graceful-shutdown watcher (counted by the drain) and the listener's stop
/// signal, which `h1.rs` watches itself.
pub struct Graceful {
    pub watcher: hyper_util::server::graceful::Watcher,
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// The downstream connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Bind port of the listener serving this connection (also when the
    /// connection arrived on the listener's nodePort).
    pub listener_port: u16,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The terminated TLS session, when there is one.
    pub tls: Option<Arc<TlsConnInfo>>,
    /// The client's IP address as a header value, formatted once per
    /// connection (`x-forwarded-for`).
    pub client_ip: HeaderValue,
}

impl ConnInfo {
    /// A plain connection (the TLS session, if any, is set after the handshake).
    pub fn new(listener_port: u16, local: SocketAddr, remote: SocketAddr) -> Self {
        let client_ip = HeaderValue::try_from(remote.ip().to_string())
            .expect("a formatted IP address is a valid header value");
        Self {
            listener_port,
            local,
            remote,
            tls: None,
            client_ip,
        }
    }

    /// `https` over a terminated TLS session, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// What a TLS handshake settled (Envoy's `%DOWNSTREAM_TLS_*%`).
#[derive(Clone, Debug, Default)]
pub struct TlsConnInfo {
    /// The filter chain serving the connection.
    pub chain: String,
    /// `%REQUESTED_SERVER_NAME%`.
    pub sni: Option<String>,
    /// `TLSv1.3`; `None` for passthrough.
    pub version: Option<&'static str>,
    /// `TLS_AES_128_GCM_SHA256`; `None` for passthrough.
    pub cipher: Option<&'static str>,
    /// The client certificate's subject, RFC 2253.
    pub peer_subject: Option<String>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<String>,
}

/// Envoy-style counters of one listener (`listener.<name>.*`, and
/// `http.outbound_<name>.*` for HTTP listeners).
#[derive(Debug)]
pub struct ListenerStats {
    pub downstream_cx_total: Arc<AtomicU64>,
    pub downstream_cx_active: Arc<AtomicI64>,
    pub downstream_rq_total: Arc<AtomicU64>,
    /// 1xx..5xx responses.
    pub downstream_rq_class: [Arc<AtomicU64>; 5],
    /// TLS listeners: `listener.<name>.no_filter_chain_match` and
    /// `listener.<name>.ssl.*`, as Envoy names them.
    pub no_filter_chain_match: Arc<AtomicU64>,
    pub ssl_handshake: Arc<AtomicU64>,
    pub ssl_connection_error: Arc<AtomicU64>,
    pub ssl_no_certificate: Arc<AtomicU64>,
    pub ssl_fail_verify_no_cert: Arc<AtomicU64>,
}

impl ListenerStats {
    /// Registers the counters of listener `name` (`HTTP`, `TCP` or `TLS`)
    /// in `store`.
    pub fn new(store: &StatStore, name: &str, protocol: &str) -> Self {
        let http = protocol != "TCP";
        let tls = |stat: &str| {
            if protocol == "TLS" {
                store.counter(&format!("listener.{name}.{stat}"))
            } else {
                Arc::default()
            }
        };
        let listener = |stat: &str| format!("listener.{name}.{stat}");
        let rq = |stat: &str| {
            if http {
                store.counter(&format!("http.outbound_{name}.{stat}"))
            } else {
                Arc::default()
            }
        };
        Self {
            downstream_cx_total: store.counter(&listener("downstream_cx_total")),
            downstream_cx_active: store.gauge(&listener("downstream_cx_active")),
            downstream_rq_total: rq("downstream_rq_total"),
            downstream_rq_class: [
                rq("downstream_rq_1xx"),
                rq("downstream_rq_2xx"),
                rq("downstream_rq_3xx"),
                rq("downstream_rq_4xx"),
                rq("downstream_rq_5xx"),
            ],
            no_filter_chain_match: tls("no_filter_chain_match"),
            ssl_handshake: tls("ssl.handshake"),
            ssl_connection_error: tls("ssl.connection_error"),
            ssl_no_certificate: tls("ssl.no_certificate"),
            ssl_fail_verify_no_cert: tls("ssl.fail_verify_no_cert"),
        }
    }

    /// Counts a response by status class.
    pub fn count_status(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.downstream_rq_class[class].fetch_add(1, Ordering::Relaxed);
    }
}

/// Who caused a failure (Pingora's `ErrorSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we cannot serve.
    Downstream,
    /// The backend failed or is missing.
    Upstream,
    /// The configuration routes nowhere.
    Config,
}

/// Why a request or connection did not get a normal upstream answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No virtual host or no route matched (Envoy flag NR).
    #[error("route not found")]
    NoRoute,
    /// The route names a cluster the snapshot does not have (NC).
    #[error("cluster not found: {0}")]
    ClusterNotFound(String),
    /// The cluster has no serving endpoint (UH).
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    /// Connecting to the endpoint failed (UF).
    #[error("upstream connect failure: {0}")]
    ConnectFailure(String),
    /// The upstream closed or reset before sending response headers (UC).
    #[error("upstream reset before response: {0}")]
    UpstreamReset(String),
    /// The upstream sent something that is not HTTP (UPE).
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(String),
    /// The route timeout expired before response headers (UT).
    #[error("upstream request timeout")]
    Timeout,
    /// The request cannot be forwarded as it is (DPE).
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// A circuit breaker (`connectionPool`) refused the request (UO).
    #[error("upstream overflow")]
    Overflow,
    /// The client went away while its request was read (DC).
    #[error("downstream disconnected: {0}")]
    DownstreamReset(String),
}

impl ProxyError {
    /// Who is at fault.
    pub fn source(&self) -> ErrorSource {
        match self {
            ProxyError::NoRoute | ProxyError::ClusterNotFound(_) => ErrorSource::Config,
            ProxyError::BadRequest(_) | ProxyError::DownstreamReset(_) => ErrorSource::Downstream,
            ProxyError::NoHealthyUpstream
            | ProxyError::ConnectFailure(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::Overflow
            | ProxyError::Timeout => ErrorSource::Upstream,
        }
    }

    /// The one place errors become HTTP statuses.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::ClusterNotFound(_)
            | ProxyError::NoHealthyUpstream
            | ProxyError::ConnectFailure(_)
            | ProxyError::Overflow
            | ProxyError::UpstreamReset(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamProtocol(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) | ProxyError::DownstreamReset(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Envoy's `%RESPONSE_FLAGS%`.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "NR",
            ProxyError::ClusterNotFound(_) => "NC",
            ProxyError::NoHealthyUpstream => "UH",
            ProxyError::ConnectFailure(_) => "UF",
            ProxyError::UpstreamReset(_) => "UC",
            ProxyError::UpstreamProtocol(_) => "UPE",
            ProxyError::Timeout => "UT",
            ProxyError::BadRequest(_) => "DPE",
            ProxyError::DownstreamReset(_) => "DC",
            ProxyError::Overflow => "UO",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%`.
    pub fn details(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "route_not_found",
            ProxyError::ClusterNotFound(_) => "cluster_not_found",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::ConnectFailure(_) => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            ProxyError::UpstreamReset(_) => {
                "upstream_reset_before_response_started{connection_termination}"
            }
            ProxyError::UpstreamProtocol(_) => {
                "upstream_reset_before_response_started{protocol_error}"
            }
            ProxyError::Timeout => "response_timeout",
            ProxyError::BadRequest(_) => "downstream_protocol_error",
            ProxyError::DownstreamReset(_) => "downstream_remote_disconnect",
            ProxyError::Overflow => "upstream_reset_before_response_started{overflow}",
        }
    }

    /// The short body of the local reply, Envoy's wording where it has one.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "route not found",
            ProxyError::ClusterNotFound(_) => "cluster not found",
            ProxyError::NoHealthyUpstream => "no healthy upstream",
            ProxyError::ConnectFailure(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
            }
            ProxyError::UpstreamReset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
            }
            ProxyError::UpstreamProtocol(_) => "upstream protocol error",
            ProxyError::Timeout => "upstream request timeout",
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::DownstreamReset(_) => "downstream disconnected",
            ProxyError::Overflow => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
            }
        }
    }

    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, when there is one.
    pub fn transport_failure(&self) -> Option<&str> {
        match self {
            ProxyError::ConnectFailure(reason) => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_envoy_status_flag_and_body() {
        let cases = [
            (ProxyError::NoRoute, 404, "NR", "route not found"),
            (
                ProxyError::ClusterNotFound("c".into()),
                503,
                "NC",
                "cluster not found",
            ),
            (
                ProxyError::NoHealthyUpstream,
                503,
                "UH",
                "no healthy upstream",
            ),
            (
                ProxyError::ConnectFailure("refused".into()),
                503,
                "UF",
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            (
                ProxyError::UpstreamReset("eof".into()),
                503,
                "UC",
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            ),
            (
                ProxyError::UpstreamProtocol("x".into()),
                502,
                "UPE",
                "upstream protocol error",
            ),
            (ProxyError::Timeout, 504, "UT", "upstream request timeout"),
            (
                ProxyError::BadRequest("x".into()),
                400,
                "DPE",
                "bad request",
            ),
        ];
        for (error, status, flag, body) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.flag(), flag, "{error}");
            assert_eq!(error.body(), body, "{error}");
        }
        assert_eq!(ProxyError::NoRoute.source(), ErrorSource::Config);
        assert_eq!(ProxyError::Timeout.source(), ErrorSource::Upstream);
    }
}
