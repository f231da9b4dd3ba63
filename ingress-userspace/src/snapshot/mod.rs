//! Compiled stage: the immutable snapshot every consumer reads.
//!
//! `compile()` produces one [`Snapshot`]; the proxy reads it through an
//! `ArcSwap`, the kernel maps are written from it, and `explain`, `dump` and
//! `/config_dump` print it. Names follow Envoy/Istio (`0.0.0.0_8080`,
//! `http.8080`, `counter.default.svc.cluster.local:80`,
//! `outbound|80||counter.default.svc.cluster.local`) so habits carry over.
//!
//! Nothing here is mutable after compilation, and nothing here does I/O.

pub mod policy;
mod select;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

pub use policy::{
    CorsPolicy, FaultAbort, FaultPolicy, HeaderOps, HeaderPolicy, MirrorPolicy, RetryPolicy,
    RoutePolicy,
};
pub use select::{RequestAttributes, VirtualHostIndex};

use crate::diag::Diagnostics;

/// The whole compiled configuration of one gateway workload.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Labels and namespace of the gateway workload this snapshot was compiled for.
    pub gateway: GatewayIdentity,
    /// Listeners, sorted by bind port.
    pub listeners: Vec<Listener>,
    /// Clusters by name.
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Warnings found while building the snapshot (errors prevent a snapshot).
    pub diagnostics: Diagnostics,
}

impl Snapshot {
    /// The listener bound on `port` (the bind port, i.e. the Service targetPort).
    pub fn listener_by_bind_port(&self, port: u16) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.port == port)
    }

    /// The listener for a port number as a client would use it: a bind port,
    /// a gateway Service port or a nodePort (in that order of preference).
    pub fn listener_for_port(&self, port: u16) -> Option<&Listener> {
        self.listener_by_bind_port(port)
            .or_else(|| self.listeners.iter().find(|l| l.service_port == port))
            .or_else(|| self.listeners.iter().find(|l| l.node_port == Some(port)))
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }
}

/// Which gateway workload the daemon is: its namespace and pod labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayIdentity {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for GatewayIdentity {
    fn default() -> Self {
        Self {
            namespace: "istio-system".to_owned(),
            labels: BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())]),
        }
    }
}

/// One bound port and what it serves.
#[derive(Debug)]
pub struct Listener {
    /// Envoy name: `<address>_<bind port>`, e.g. `0.0.0.0_8080`.
    pub name: String,
    /// The address to bind (`0.0.0.0` unless a server sets `bind`).
    pub address: std::net::IpAddr,
    /// The port the daemon binds: the gateway Service's targetPort for the
    /// server port, or the server port itself when no Service maps it.
    pub port: u16,
    /// The Gateway server `port.number` (the gateway Service port).
    pub service_port: u16,
    /// The gateway Service's nodePort for this port, when it has one.
    pub node_port: Option<u16>,
    /// The servers (`gateway ns/name` + server index) that made this listener.
    pub servers: Vec<ServerRef>,
    pub kind: ListenerKind,
}

/// A Gateway server that contributed to a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRef {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// Index into `spec.servers`.
    pub index: usize,
    /// `port.name` of the server.
    pub port_name: String,
}

/// What a listener does with its connections.
#[derive(Debug)]
pub enum ListenerKind {
    /// Plaintext HTTP: HTTP/1.1 (and h2c), routed by [`RouteConfig`].
    Http(RouteConfig),
    /// Plain TCP: every connection goes to `proxy`, or is closed when no
    /// VirtualService routes this server.
    Tcp(Option<TcpProxy>),
    /// HTTPS and TLS servers: the ClientHello's SNI picks a filter chain,
    /// which terminates TLS (then HTTP or TCP) or passes the stream through.
    Tls(TlsListener),
}

impl ListenerKind {
    /// `HTTP` or `TCP`, as shown by `explain` and the admin API.
    pub fn protocol(&self) -> &'static str {
        match self {
            ListenerKind::Http(_) => "HTTP",
            ListenerKind::Tcp(_) => "TCP",
            ListenerKind::Tls(_) => "TLS",
        }
    }
}

/// The filter chains of a TLS listener, chosen by SNI as Envoy does: an
/// exact server name, then the longest matching `*.` wildcard, then a chain
/// without server names (which also takes connections without SNI).
#[derive(Debug)]
pub struct TlsListener {
    /// No two chains share a server name (the compiler drops overlaps).
    pub chains: Vec<FilterChain>,
}

impl TlsListener {
    /// The chain for a ClientHello with server name `sni` (lower case).
    pub fn select(&self, sni: Option<&str>) -> Option<&FilterChain> {
        if let Some(sni) = sni {
            let exact = self
                .chains
                .iter()
                .find(|c| c.server_names.iter().any(|n| n == sni));
            if exact.is_some() {
                return exact;
            }
            // `a.b.example.com` tries `*.b.example.com`, then `*.example.com`, ...
            let mut rest = sni;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot..];
                let found = self.chains.iter().find(|c| {
                    c.server_names
                        .iter()
                        .any(|n| n.strip_prefix('*') == Some(rest))
                });
                if found.is_some() {
                    return found;
                }
                rest = &rest[1..];
            }
        }
        self.chains.iter().find(|c| c.server_names.is_empty())
    }

    /// The chain named `name`.
    pub fn chain(&self, name: &str) -> Option<&FilterChain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// One filter chain: which server names it takes and what it does.
#[derive(Debug)]
pub struct FilterChain {
    /// Unique in the listener: the server (`ns/gateway spec.servers[i]`)
    /// or, for passthrough, the VirtualService route it came from.
    pub name: String,
    /// SNI names (exact or `*.suffix`); empty takes every name and no SNI.
    pub server_names: Vec<String>,
    pub action: ChainAction,
}

/// What a filter chain does with a connection.
#[derive(Debug)]
pub enum ChainAction {
    /// Terminate TLS, then serve HTTP routed by `routes` (HTTPS servers).
    Http {
        tls: Arc<TlsContext>,
        routes: RouteConfig,
    },
    /// Terminate TLS, then proxy the plaintext (`protocol: TLS` servers in
    /// SIMPLE/MUTUAL mode with `tcp` routes); `None`: no route, closed.
    Tcp {
        tls: Arc<TlsContext>,
        proxy: Option<TcpProxy>,
    },
    /// Do not terminate: proxy the raw stream (PASSTHROUGH with `tls` routes).
    Passthrough(TcpProxy),
}

impl ChainAction {
    pub fn tls_context(&self) -> Option<&Arc<TlsContext>> {
        match self {
            ChainAction::Http { tls, .. } | ChainAction::Tcp { tls, .. } => Some(tls),
            ChainAction::Passthrough(_) => None,
        }
    }
}

/// How a terminating chain does TLS: everything except the key material,
/// which the daemon loads (and reloads) from `certificate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsContext {
    /// The server it came from (`istio-system/gw spec.servers[1]`): the key
    /// of its loaded certificates, and what logs name.
    pub name: String,
    pub client_auth: ClientAuth,
    pub certificate: CertificateSource,
    /// Required for client authentication; `None` otherwise.
    pub ca: Option<CaSource>,
    /// `subjectAltNames`: a client certificate must carry one of them.
    pub subject_alt_names: Vec<String>,
    /// Lowest and highest version served (1.2 or 1.3).
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// TLS 1.2 suites (OpenSSL names); empty means the defaults.
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
}

/// Client certificates (`tls.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// SIMPLE: none asked.
    None,
    /// MUTUAL: required and verified.
    Required,
    /// OPTIONAL_MUTUAL: verified when sent.
    Optional,
}

/// TLS protocol versions served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// Where a server's certificate and key come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// `serverCertificate` / `privateKey` paths, watched for changes.
    Files { cert: PathBuf, key: PathBuf },
    /// `credentialName`: the PEM data of the Secret `origin` (`ns/name`).
    Secret {
        origin: String,
        cert: Vec<u8>,
        key: Vec<u8>,
    },
    /// Nothing usable: handshakes fail with this reason until it is fixed.
    Missing(String),
}

/// Where the CA that verifies client certificates comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// `caCertificates`, watched for changes.
    File(PathBuf),
    /// `ca.crt`/`cacert` of a Secret (`origin` is `ns/name`).
    Secret {
        origin: String,
        pem: Vec<u8>,
    },
    Missing(String),
}

impl CertificateSource {
    /// How Istio names the secret in its SDS config (`file-cert:...`,
    /// `kubernetes://name`), shown by the admin API.
    pub fn sds_name(&self) -> String {
        match self {
            CertificateSource::Files { cert, key } => {
                format!("file-cert:{}~{}", cert.display(), key.display())
            }
            CertificateSource::Secret { origin, .. } => {
                let name = origin.rsplit('/').next().unwrap_or(origin);
                format!("kubernetes://{name}")
            }
            CertificateSource::Missing(_) => "-".to_owned(),
        }
    }
}

/// The TCP proxy of a TCP server: the first matching `tcp[]` route.
#[derive(Debug)]
pub struct TcpProxy {
    /// Weighted destinations; one entry is the common case.
    pub clusters: Vec<WeightedCluster>,
    /// Stat prefix: the cluster name when there is one cluster, as Istio does.
    pub stat_prefix: String,
    /// The VirtualService route this proxy came from.
    pub origin: RouteOrigin,
}

/// An Envoy route configuration (RDS): the virtual hosts of one HTTP port.
#[derive(Debug)]
pub struct RouteConfig {
    /// `http.<bind port>`.
    pub name: String,
    /// In Envoy's order (sorted by name), with the domain index below.
    pub virtual_hosts: Vec<VirtualHost>,
    pub index: VirtualHostIndex,
}

/// One virtual host: the domains it answers and its ordered routes.
#[derive(Debug)]
pub struct VirtualHost {
    /// `<host>:<server port>`, or `blackhole:<port>` when no VirtualService binds.
    pub name: String,
    /// Envoy domains: the host names (ports in `Host` are ignored).
    pub domains: Vec<String>,
    /// First match wins.
    pub routes: Vec<Route>,
    /// `tls.httpsRedirect` on the server: every request gets a 301 to https.
    pub require_tls: bool,
}

/// One route: a match and what to do.
#[derive(Clone, Debug)]
pub struct Route {
    /// `<http route name>[.<match name>]`, possibly empty, as Istio names them.
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    /// Header mutations, fault injection and CORS (shared by the routes of
    /// one `http[]` rule).
    pub policy: Arc<RoutePolicy>,
    /// Where the route came from (absent for generated routes such as the blackhole).
    pub origin: Option<RouteOrigin>,
}

/// Which VirtualService rule a route came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteOrigin {
    /// `namespace/name` of the VirtualService.
    pub virtual_service: String,
    /// e.g. `spec.http[0].match[1]`.
    pub field: String,
}

/// The conditions of a route (all must hold).
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// `ignoreUriCase`: exact and prefix compare case-insensitively.
    pub ignore_case: bool,
    pub headers: Vec<HeaderMatcher>,
    pub query_params: Vec<QueryParamMatcher>,
}

/// How the path is matched. The query string is never part of an exact or
/// regex comparison; a prefix is compared with the start of the path.
#[derive(Clone, Debug)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Full-match (anchored) RE2-style regex on the path without query.
    Regex(Pattern),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".to_owned())
    }
}

/// A compiled, anchored regex together with the source text the user wrote.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub source: String,
    pub regex: Regex,
}

impl Pattern {
    /// Compiles `source` so that it must match the whole input, as Envoy's
    /// `safe_regex` does.
    pub fn full_match(source: &str) -> Result<Self, regex::Error> {
        let regex = Regex::new(&format!("^(?:{source})$"))?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    pub fn is_match(&self, input: &str) -> bool {
        self.regex.is_match(input)
    }
}

/// A condition on one request header (or a pseudo-header such as
/// `:method`, `:authority`, `:scheme`).
#[derive(Clone, Debug)]
pub struct HeaderMatcher {
    /// Lower-case header name.
    pub name: String,
    pub kind: StringMatcher,
    /// `withoutHeaders`: the route matches when this condition does NOT hold.
    pub invert: bool,
}

/// A condition on one query parameter.
#[derive(Clone, Debug)]
pub struct QueryParamMatcher {
    pub name: String,
    pub kind: StringMatcher,
}

/// Istio's StringMatch, plus presence (`{}` in a header match).
#[derive(Clone, Debug)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Regex(Pattern),
    Present,
}

impl StringMatcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatcher::Exact(s) => value == s,
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => r.is_match(value),
            StringMatcher::Present => true,
        }
    }
}

/// What a matched route does.
#[derive(Clone, Debug)]
pub enum RouteAction {
    /// Proxy to one of the weighted clusters.
    Forward(ForwardAction),
    /// Answer directly (the blackhole 404, `directResponse`).
    DirectResponse { status: u16, body: bytes::Bytes },
    /// Answer with a redirect (`redirect`).
    Redirect(RedirectAction),
}

/// Proxying to upstream clusters.
#[derive(Clone, Debug)]
pub struct ForwardAction {
    /// Non-empty; weights are relative and all non-zero.
    pub clusters: Vec<WeightedCluster>,
    /// Route timeout; `None` means none (Istio's default).
    pub timeout: Option<Duration>,
    /// `rewrite.uri`: replaces the matched prefix (or the whole exact path).
    pub prefix_rewrite: Option<String>,
    /// `rewrite.uriRegexRewrite`: every match of the pattern in the path is
    /// replaced (`\1` style groups), as Envoy's `regex_rewrite`.
    pub regex_rewrite: Option<(Pattern, String)>,
    /// `rewrite.authority`.
    pub host_rewrite: Option<String>,
    /// `retries`, or Istio's default when the route has none.
    pub retry: RetryPolicy,
    /// `mirror`/`mirrors`: copies sent fire-and-forget.
    pub mirrors: Vec<MirrorPolicy>,
}

/// A redirect answer.
#[derive(Clone, Debug, Default)]
pub struct RedirectAction {
    pub status: u16,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    /// `derivePort: FROM_REQUEST_PORT`: keep the port the request used.
    pub derive_port: bool,
    pub path: Option<String>,
}

/// A destination and its relative weight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
    /// `route[].headers`: header mutations for this destination only.
    pub headers: Option<Arc<HeaderPolicy>>,
}

/// An upstream cluster: one Service port (and subset) and its endpoints.
#[derive(Debug)]
pub struct Cluster {
    /// `outbound|<port>|<subset>|<fqdn>`.
    pub name: String,
    /// The destination host (FQDN).
    pub host: String,
    pub port: u16,
    pub subset: String,
    /// Where the host was found: a Kubernetes Service or a ServiceEntry.
    pub discovery: Discovery,
    pub endpoints: Vec<Endpoint>,
    /// Protocol spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// Istio's default is 10 s (`connectionPool.tcp.connectTimeout`).
    pub connect_timeout: Duration,
    /// Load balancing, circuit breakers and outlier detection.
    pub policy: policy::ClusterPolicy,
}

/// How a cluster's endpoints were discovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// `Service namespace/name`, endpoints from its EndpointSlices.
    Service { namespace: String, name: String },
    /// `ServiceEntry namespace/name`, static endpoints.
    ServiceEntry { namespace: String, name: String },
}

/// Upstream application protocol, as Istio derives it from the Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    Tcp,
}

/// One upstream address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// EndpointSlice `conditions.serving` (absent means ready). Endpoints that
    /// are not serving get no new requests.
    pub serving: bool,
    /// The Pod or the EndpointSlice target, for display.
    pub target: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(name: &str, server_names: &[&str]) -> FilterChain {
        FilterChain {
            name: name.to_owned(),
            server_names: server_names.iter().map(|s| (*s).to_owned()).collect(),
            action: ChainAction::Passthrough(TcpProxy {
                clusters: Vec::new(),
                stat_prefix: String::new(),
                origin: RouteOrigin {
                    virtual_service: String::new(),
                    field: String::new(),
                },
            }),
        }
    }

    #[test]
    fn filter_chain_selection_follows_envoy() {
        let listener = TlsListener {
            chains: vec![
                chain("wild", &["*.example.com"]),
                chain("exact", &["shop.example.com", "api.example.org"]),
                chain("deep", &["*.b.example.com"]),
                chain("any", &[]),
            ],
        };
        let cases = [
            (Some("shop.example.com"), Some("exact")),
            (Some("api.example.org"), Some("exact")),
            (Some("x.example.com"), Some("wild")),
            (Some("a.b.example.com"), Some("deep")),
            (Some("a.c.example.com"), Some("wild")),
            // A wildcard does not cover the bare domain.
            (Some("example.com"), Some("any")),
            (Some("other.org"), Some("any")),
            (None, Some("any")),
        ];
        for (sni, want) in cases {
            assert_eq!(
                listener.select(sni).map(|c| c.name.as_str()),
                want,
                "{sni:?}"
            );
        }
        let strict = TlsListener {
            chains: vec![chain("exact", &["shop.example.com"])],
        };
        assert!(strict.select(None).is_none(), "no SNI, no catch-all");
        assert!(strict.select(Some("x.example.com")).is_none());
    }
}
