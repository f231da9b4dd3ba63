//! What a route does besides choosing a destination, as Envoy's route
//! configuration has it: header mutations, retries, fault injection,
//! mirroring and CORS. Pure: the model builds these, the proxy applies them.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::StringMatcher;

/// `headers.request` / `headers.response`: Istio's `set` overwrites,
/// `add` appends, `remove` deletes; removals happen first (Envoy's order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Header mutations of a route or of one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderPolicy {
    pub request: HeaderOps,
    pub response: HeaderOps,
    /// `request.set` of `host`/`:authority`: Istio turns it into a host
    /// rewrite.
    pub host_rewrite: Option<String>,
}

/// Which failures are retried (`retries.retryOn`, Envoy's names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx response, a reset or a connect failure.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `reset`: the upstream reset or closed before answering.
    pub reset: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `refused-stream`: an HTTP/2 stream refused by the upstream.
    pub refused_stream: bool,
    /// `retriable-status-codes`: the statuses in [`RetryPolicy::status_codes`].
    pub retriable_status_codes: bool,
    /// gRPC statuses (`cancelled` 1, `deadline-exceeded` 4,
    /// `resource-exhausted` 8, `internal` 13, `unavailable` 14).
    pub grpc_codes: Vec<u32>,
}

impl RetryOn {
    /// Envoy's `retry_on` string.
    pub fn to_envoy(&self) -> String {
        let mut out: Vec<&str> = Vec::new();
        for (on, name) in [
            (self.five_xx, "5xx"),
            (self.gateway_error, "gateway-error"),
            (self.reset, "reset"),
            (self.connect_failure, "connect-failure"),
            (self.retriable_4xx, "retriable-4xx"),
            (self.refused_stream, "refused-stream"),
        ] {
            if on {
                out.push(name);
            }
        }
        for code in &self.grpc_codes {
            out.push(match code {
                1 => "cancelled",
                4 => "deadline-exceeded",
                8 => "resource-exhausted",
                13 => "internal",
                _ => "unavailable",
            });
        }
        if self.retriable_status_codes {
            out.push("retriable-status-codes");
        }
        out.join(",")
    }
}

/// `retries`: how many more tries, on what, how long each may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`); 0 disables.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    /// Statuses retried under `retriable-status-codes` (numbers in
    /// `retryOn` add to them, as Istio does).
    pub status_codes: Vec<u16>,
}

impl RetryPolicy {
    /// What Istio configures when a route has no `retries`: 2 retries on
    /// connect-failure, refused-stream, unavailable, cancelled and 503.
    pub fn istio_default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn {
                connect_failure: true,
                refused_stream: true,
                retriable_status_codes: true,
                grpc_codes: vec![14, 1],
                ..RetryOn::default()
            },
            status_codes: vec![503],
        }
    }

    /// No retries (`attempts: 0`).
    pub fn none() -> Self {
        Self {
            attempts: 0,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
            status_codes: Vec::new(),
        }
    }

    /// Parses `retryOn` (comma-separated Envoy names and status numbers).
    pub fn parse_retry_on(text: &str) -> Result<(RetryOn, Vec<u16>), String> {
        let mut on = RetryOn::default();
        let mut codes = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                "cancelled" => on.grpc_codes.push(1),
                "deadline-exceeded" => on.grpc_codes.push(4),
                "resource-exhausted" => on.grpc_codes.push(8),
                "internal" => on.grpc_codes.push(13),
                "unavailable" => on.grpc_codes.push(14),
                // Envoy conditions about headers Istio users rarely set.
                "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {}
                other => match other.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => {
                        on.retriable_status_codes = true;
                        codes.push(code);
                    }
                    _ => return Err(format!("unknown retry condition {other:?}")),
                },
            }
        }
        Ok((on, codes))
    }

    /// Whether a response with `status` (and gRPC status `grpc`, for
    /// trailers-only gRPC answers) is retried.
    pub fn retries_status(&self, status: u16, grpc: Option<u32>) -> bool {
        let on = &self.retry_on;
        (on.five_xx && (500..=599).contains(&status))
            || (on.gateway_error && matches!(status, 502..=504))
            || (on.retriable_4xx && status == 409)
            || (on.retriable_status_codes && self.status_codes.contains(&status))
            || grpc.is_some_and(|g| on.grpc_codes.contains(&g))
    }

    /// Whether a failure to connect is retried.
    pub fn retries_connect_failure(&self) -> bool {
        self.retry_on.connect_failure || self.retry_on.five_xx || self.retry_on.gateway_error
    }

    /// Whether a reset before the response (or a refused stream) is retried.
    pub fn retries_reset(&self, refused_stream: bool) -> bool {
        self.retry_on.reset
            || self.retry_on.five_xx
            || self.retry_on.gateway_error
            || (refused_stream && self.retry_on.refused_stream)
    }
}

/// `fault.abort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAbort {
    Http(u16),
    /// A gRPC status, answered as HTTP 200 with `grpc-status`.
    Grpc(u32),
}

/// `fault`: delays and aborts for a percentage of requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPolicy {
    /// Delay and the percentage (0-100) of requests delayed.
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(FaultAbort, f64)>,
}

/// One `mirror`/`mirrors[]` entry: a cluster and the percentage mirrored.
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorPolicy {
    pub cluster: String,
    pub percent: f64,
}

/// `corsPolicy`.
#[derive(Clone, Debug, Default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatcher>,
    /// Joined with `,` as sent.
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    /// Seconds.
    pub max_age: Option<u64>,
    pub allow_credentials: bool,
    /// `unmatchedPreflights: FORWARD` (the default): a preflight from an
    /// origin that is not allowed goes upstream; `IGNORE` answers it here
    /// without CORS headers.
    pub forward_unmatched_preflights: bool,
}

impl CorsPolicy {
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|m| m.matches(origin))
    }

    /// The headers of a preflight answer for an allowed `origin`.
    pub fn preflight_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())];
        let mut push = |name: HeaderName, value: &str| {
            if !value.is_empty()
                && let Ok(value) = HeaderValue::from_str(value)
            {
                out.push((name, value));
            }
        };
        push(
            http::header::ACCESS_CONTROL_ALLOW_METHODS,
            &self.allow_methods,
        );
        push(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            &self.allow_headers,
        );
        if let Some(age) = self.max_age {
            push(http::header::ACCESS_CONTROL_MAX_AGE, &age.to_string());
        }
        if self.allow_credentials {
            push(http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        out
    }

    /// The headers added to an ordinary response for an allowed `origin`.
    pub fn response_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())];
        if !self.expose_headers.is_empty()
            && let Ok(value) = HeaderValue::from_str(&self.expose_headers)
        {
            out.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, value));
        }
        if self.allow_credentials {
            out.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        out
    }
}

/// How a cluster picks an endpoint (`trafficPolicy.loadBalancer`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LbPolicy {
    /// Istio's default: the fewer active requests of two random endpoints
    /// (Envoy's power of two choices).
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// `consistentHash`: the same key reaches the same endpoint while the
    /// endpoint set holds (a Maglev table over the serving endpoints).
    ConsistentHash(HashKey),
}

/// What a consistent hash is computed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    /// With a `ttl`, a request without the cookie gets one set on its
    /// response, so the client sticks from then on (a zero ttl sets a
    /// session cookie).
    Cookie {
        name: String,
        path: Option<String>,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParam(String),
}

/// `connectionPool` (Envoy's circuit breakers); `None`: no limit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// `tcp.maxConnections`: HTTP/1.1 requests in flight (one connection
    /// each); more wait as pending.
    pub max_connections: Option<u32>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight to an HTTP/2 cluster.
    pub max_requests: Option<u32>,
    /// `http.maxRetries`: retries in flight across the cluster.
    pub max_retries: Option<u32>,
    /// `http.idleTimeout`: idle upstream connections are closed after it.
    pub idle_timeout: Option<Duration>,
    /// `http.maxRequestsPerConnection`: an HTTP/1.1 upstream connection is
    /// closed after this many requests (Envoy's per-connection limit).
    pub max_requests_per_connection: Option<u32>,
    /// `http.h2UpgradePolicy: UPGRADE`: an HTTP/1.1 port is spoken to in
    /// HTTP/2 (h2c); WebSocket upgrades still go over HTTP/1.1.
    pub h2_upgrade: bool,
}

/// `outlierDetection`: endpoints that fail in a row are taken out for a
/// while (longer each time), at most `max_ejection_percent` of them (but
/// always at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// 5xx answers (and connect failures, resets, timeouts) in a row; 0 off.
    pub consecutive_5xx: u32,
    /// 502/503/504 and connect failures in a row; 0 off.
    pub consecutive_gateway_errors: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

impl Default for OutlierPolicy {
    /// Envoy's defaults, which Istio keeps for fields it is not given.
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// A cluster's `trafficPolicy` after DestinationRule merging.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterPolicy {
    pub lb: LbPolicy,
    pub limits: PoolLimits,
    pub outlier: Option<OutlierPolicy>,
}

/// Everything a route applies besides its action.
#[derive(Clone, Debug, Default)]
pub struct RoutePolicy {
    pub headers: Option<HeaderPolicy>,
    pub fault: Option<FaultPolicy>,
    pub cors: Option<CorsPolicy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_parses_envoy_names_and_codes() {
        let (on, codes) =
            RetryPolicy::parse_retry_on("gateway-error, connect-failure,refused-stream,418")
                .unwrap();
        assert!(on.gateway_error && on.connect_failure && on.refused_stream);
        assert!(on.retriable_status_codes);
        assert_eq!(codes, vec![418]);
        assert!(RetryPolicy::parse_retry_on("sometimes").is_err());
        let (on, _) = RetryPolicy::parse_retry_on("unavailable,cancelled").unwrap();
        assert_eq!(on.grpc_codes, vec![14, 1]);
        assert_eq!(
            RetryPolicy::istio_default().retry_on.to_envoy(),
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        );
    }

    #[test]
    fn istio_default_retries_503_and_grpc_unavailable_only() {
        let p = RetryPolicy::istio_default();
        assert_eq!(p.attempts, 2);
        assert!(p.retries_status(503, None));
        assert!(!p.retries_status(502, None));
        assert!(!p.retries_status(500, None));
        assert!(p.retries_status(200, Some(14)));
        assert!(p.retries_connect_failure());
        assert!(p.retries_reset(true));
        assert!(!p.retries_reset(false));
    }

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("old"));
        let ops = HeaderOps {
            set: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("new"),
            )],
            add: vec![
                (
                    HeaderName::from_static("x-b"),
                    HeaderValue::from_static("more"),
                ),
                (
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("2"),
                ),
            ],
            remove: vec![HeaderName::from_static("x-a")],
        };
        ops.apply(&mut headers);
        let all = |n: &str| {
            headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-b"), vec!["new", "more"]);
        assert_eq!(all("x-a"), vec!["2"]);
    }
}
