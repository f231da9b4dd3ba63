//! Model stage: wire objects -> validated, parsed resources.
//!
//! Parse, don't validate: every field the gateway uses is converted into a
//! type that cannot hold an invalid value (ports are `u16`, hosts are
//! [`Host`], regexes are compiled, durations are `Duration`). Every problem
//! is reported with the file, the resource and the field path, and all of
//! them are reported, not just the first. A resource with errors is left out
//! of the model; the others still load (the pipeline decides whether any
//! error blocks the whole config).

pub mod duration;
pub mod host;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::diag::{Diagnostic, Diagnostics, Source};
use http::{HeaderName, HeaderValue};

use crate::snapshot::policy::{HashKey, LbPolicy, OutlierPolicy, PoolLimits};
use crate::snapshot::{
    CorsPolicy, FaultAbort, FaultPolicy, HeaderOps, HeaderPolicy, Pattern, RetryPolicy,
    StringMatcher,
};
use crate::tls::names::{CipherName, classify_cipher};
use crate::wire::{self, Object, istio, k8s};

pub use host::Host;

/// The Kubernetes cluster domain used to resolve short names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Identity and origin shared by every resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// RFC 3339 creation timestamp, when given. Absent sorts first (Istio
    /// treats it as the zero time).
    pub creation: Option<String>,
    pub source: Source,
}

impl Meta {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Istio's order for resources that merge: creation time, name, namespace.
    pub fn istio_order(&self) -> (Option<&str>, &str, &str) {
        (self.creation.as_deref(), &self.name, &self.namespace)
    }
}

/// All validated resources of one configuration.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// In Istio order (creation time, name, namespace).
    pub gateways: Vec<Gateway>,
    /// In Istio order (creation time, name, namespace).
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    pub service_entries: Vec<ServiceEntry>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub pods: Vec<Pod>,
    pub secrets: Vec<Secret>,
}

/// A Gateway: which workloads it selects and the servers it configures.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub meta: Meta,
    /// Pod labels; an empty selector selects every gateway workload.
    pub selector: BTreeMap<String, String>,
    pub servers: Vec<Server>,
}

/// One Gateway server.
#[derive(Clone, Debug)]
pub struct Server {
    /// Index in `spec.servers`.
    pub index: usize,
    pub port: ServerPort,
    pub hosts: Vec<ServerHost>,
    pub tls: Option<ServerTls>,
    pub bind: Option<IpAddr>,
    pub name: Option<String>,
}

/// `servers[].port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerPort {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
}

/// Server protocols Istio knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
    Http2,
    Grpc,
    GrpcWeb,
    Tcp,
    Tls,
    Mongo,
}

impl Protocol {
    /// Parses Istio's protocol names, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTPS" => Protocol::Https,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::GrpcWeb,
            "TCP" => Protocol::Tcp,
            "TLS" => Protocol::Tls,
            "MONGO" => Protocol::Mongo,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
            Protocol::Http2 => "HTTP2",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-WEB",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
            Protocol::Mongo => "MONGO",
        }
    }

    /// Plaintext HTTP of any version (served by the HTTP connection manager).
    pub fn is_plain_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb
        )
    }

    /// Needs a `tls` block.
    pub fn requires_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }
}

/// `servers[].hosts[]`: `[namespace/]host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHost {
    /// `None` for `*/` or no prefix (any namespace); `.` is resolved to the
    /// Gateway's namespace.
    pub namespace: Option<String>,
    pub host: Host,
}

impl ServerHost {
    /// Whether a VirtualService in `namespace` may bind to this host.
    pub fn admits_namespace(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// `servers[].tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    pub https_redirect: bool,
    pub mode: TlsMode,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub credential_name: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub min_protocol_version: Option<TlsVersion>,
    pub max_protocol_version: Option<TlsVersion>,
    pub cipher_suites: Vec<String>,
}

/// `tls.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Passthrough,
    Simple,
    Mutual,
    OptionalMutual,
    AutoPassthrough,
    IstioMutual,
}

/// TLS protocol versions the gateway can serve (rustls: 1.2 and 1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Auto,
    V1_2,
    V1_3,
}

/// A VirtualService, with hosts resolved to FQDNs and gateway names to
/// `namespace/name`.
#[derive(Clone, Debug)]
pub struct VirtualService {
    pub meta: Meta,
    pub hosts: Vec<Host>,
    /// Resolved names (`ns/name`, or `mesh`). Empty means mesh only.
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    pub tcp: Vec<TcpRoute>,
    /// `tls[]`: SNI routes of passthrough servers.
    pub tls: Vec<TlsRoute>,
}

impl VirtualService {
    /// Whether this VirtualService binds to the Gateway `namespace/name`.
    pub fn binds_to(&self, gateway: &str) -> bool {
        self.gateways.iter().any(|g| g == gateway)
    }
}

/// `http[]`.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    pub index: usize,
    /// `name`, empty when not given.
    pub name: String,
    /// Empty means "match everything".
    pub matches: Vec<HttpMatch>,
    pub action: HttpAction,
    pub timeout: Option<Duration>,
    pub rewrite: Option<Rewrite>,
    /// `None`: Istio's default retry policy applies.
    pub retries: Option<RetryPolicy>,
    pub fault: Option<FaultPolicy>,
    /// `mirror` (+ `mirrorPercentage`) or `mirrors[]`: destination and percent.
    pub mirrors: Vec<(Destination, f64)>,
    pub cors: Option<CorsPolicy>,
    pub headers: Option<HeaderPolicy>,
}

/// `http[].match[]`: all conditions must hold.
#[derive(Clone, Debug, Default)]
pub struct HttpMatch {
    pub index: usize,
    pub name: String,
    pub uri: Option<StringMatcher>,
    pub ignore_uri_case: bool,
    pub scheme: Option<StringMatcher>,
    pub method: Option<StringMatcher>,
    pub authority: Option<StringMatcher>,
    /// Lower-case name -> condition (`{}` is presence).
    pub headers: Vec<(String, StringMatcher)>,
    pub without_headers: Vec<(String, StringMatcher)>,
    pub query_params: Vec<(String, StringMatcher)>,
    /// The gateway server port this match is limited to.
    pub port: Option<u16>,
    /// Resolved gateway names this match is limited to.
    pub gateways: Vec<String>,
    /// `sourceLabels`/`sourceNamespace` were given (they never match at a
    /// gateway, which has no source workload).
    pub has_source_conditions: bool,
}

impl HttpMatch {
    /// Istio's `isCatchAllMatch`: a `prefix: /` uri and no other condition.
    /// Routes after a catch-all in one VirtualService are never reached.
    pub fn is_catch_all(&self) -> bool {
        matches!(&self.uri, Some(StringMatcher::Prefix(p)) if p == "/")
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
            && self.method.is_none()
            && self.scheme.is_none()
            && self.authority.is_none()
            && self.port.is_none()
            && self.gateways.is_empty()
            && !self.has_source_conditions
    }
}

/// What an HTTP route does.
#[derive(Clone, Debug)]
pub enum HttpAction {
    Route(Vec<RouteDestination>),
    Redirect(Redirect),
    DirectResponse { status: u16, body: Vec<u8> },
    Delegate { name: String, namespace: String },
}

/// A destination with its relative weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDestination {
    pub destination: Destination,
    pub weight: u32,
    /// `route[].headers` (HTTP routes only).
    pub headers: Option<Arc<HeaderPolicy>>,
}

/// `destination`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// FQDN (short names resolved in the VirtualService namespace).
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

/// `redirect`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<u16>,
    /// `derivePort: FROM_REQUEST_PORT`.
    pub derive_port: bool,
    pub scheme: Option<String>,
    pub code: u16,
}

/// `rewrite`.
#[derive(Clone, Debug, Default)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    /// `uriRegexRewrite`: the pattern and the replacement (regex crate syntax).
    pub uri_regex: Option<(Pattern, String)>,
}

/// `tcp[]`.
#[derive(Clone, Debug)]
pub struct TcpRoute {
    pub index: usize,
    pub matches: Vec<L4Match>,
    pub destinations: Vec<RouteDestination>,
}

/// `tls[]`.
#[derive(Clone, Debug)]
pub struct TlsRoute {
    pub index: usize,
    pub matches: Vec<TlsMatch>,
    pub destinations: Vec<RouteDestination>,
}

/// `tls[].match[]`.
#[derive(Clone, Debug, Default)]
pub struct TlsMatch {
    pub index: usize,
    /// Required, non-empty; each within the VirtualService's hosts.
    pub sni_hosts: Vec<Host>,
    /// `port` and `gateways`.
    pub l4: L4Match,
}

/// A Secret holding TLS material (`credentialName`), data decoded.
#[derive(Clone, Debug)]
pub struct Secret {
    pub meta: Meta,
    /// `type`, e.g. `kubernetes.io/tls` or `Opaque`.
    pub type_: String,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// `tcp[].match[]` (and the `port`/`gateways` of `tls[].match[]`).
#[derive(Clone, Debug, Default)]
pub struct L4Match {
    pub port: Option<u16>,
    pub gateways: Vec<String>,
}

impl L4Match {
    /// Whether the match admits the server port `port` of gateway `gateway`.
    pub fn passes(&self, port: u16, gateway: &str) -> bool {
        self.port.is_none_or(|p| p == port)
            && (self.gateways.is_empty() || self.gateways.iter().any(|g| g == gateway))
    }
}

/// The `port`, `gateways` and `destinationSubnets` of an L4 or TLS match.
fn convert_l4_match(
    port: Option<i64>,
    gateways: Option<&[String]>,
    has_subnets: bool,
    field: &str,
    namespace: &str,
    ctx: &mut Ctx<'_>,
) -> L4Match {
    let port = port.and_then(|p| ctx.port(p, &format!("{field}.port")));
    let gateways = gateways
        .unwrap_or_default()
        .iter()
        .map(|g| host::resolve_gateway_name(g, namespace))
        .collect();
    if has_subnets {
        ctx.warning(
            format!("{field}.destinationSubnets"),
            "not supported at the gateway yet; ignored",
        );
    }
    L4Match { port, gateways }
}

/// A DestinationRule (the parts the gateway uses so far: subsets).
#[derive(Clone, Debug)]
pub struct DestinationRule {
    pub meta: Meta,
    pub host: Host,
    pub subsets: Vec<Subset>,
    pub policy: Option<TrafficPolicy>,
}

/// `subsets[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub policy: Option<TrafficPolicy>,
}

/// A `trafficPolicy` as written: each part is `None` when not given, so
/// that subset and port-level policies override only what they set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrafficPolicy {
    pub lb: Option<LbPolicy>,
    pub limits: Option<PoolLimits>,
    /// `connectionPool.tcp.connectTimeout`.
    pub connect_timeout: Option<Duration>,
    pub outlier: Option<OutlierPolicy>,
    /// `portLevelSettings`, by port number.
    pub ports: Vec<(u16, TrafficPolicy)>,
}

impl TrafficPolicy {
    /// `other`'s parts replace this one's where `other` sets them (Istio's
    /// MergeTrafficPolicy, part by part).
    pub fn overridden_by(&self, other: &TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            lb: other.lb.clone().or_else(|| self.lb.clone()),
            limits: other.limits.clone().or_else(|| self.limits.clone()),
            connect_timeout: other.connect_timeout.or(self.connect_timeout),
            outlier: other.outlier.clone().or_else(|| self.outlier.clone()),
            ports: Vec::new(),
        }
    }

    /// This policy with its `portLevelSettings` for `port` applied.
    pub fn for_port(&self, port: u16) -> TrafficPolicy {
        match self.ports.iter().find(|(p, _)| *p == port) {
            Some((_, level)) => self.overridden_by(level),
            None => self.overridden_by(&TrafficPolicy::default()),
        }
    }
}

/// A ServiceEntry with static endpoints.
#[derive(Clone, Debug)]
pub struct ServiceEntry {
    pub meta: Meta,
    pub hosts: Vec<Host>,
    pub ports: Vec<ServiceEntryPort>,
    pub endpoints: Vec<ServiceEntryEndpoint>,
}

/// `ServiceEntry.spec.ports[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntryPort {
    pub number: u16,
    pub name: String,
    pub protocol: Option<String>,
    pub target_port: Option<u16>,
}

/// `ServiceEntry.spec.endpoints[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntryEndpoint {
    pub address: IpAddr,
    /// Port name -> port.
    pub ports: BTreeMap<String, u16>,
    pub labels: BTreeMap<String, String>,
}

/// A Kubernetes Service.
#[derive(Clone, Debug)]
pub struct Service {
    pub meta: Meta,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!(
            "{}.{}.svc.{CLUSTER_DOMAIN}",
            self.meta.name, self.meta.namespace
        )
    }
}

/// `Service.spec.ports[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
    pub app_protocol: Option<String>,
}

/// `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// An EndpointSlice.
#[derive(Clone, Debug)]
pub struct EndpointSlice {
    pub meta: Meta,
    /// `kubernetes.io/service-name` label.
    pub service: String,
    pub endpoints: Vec<SliceEndpoint>,
    /// (port name, port). An unnamed port has name `None`.
    pub ports: Vec<(Option<String>, u16)>,
}

/// `EndpointSlice.endpoints[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means the value of ready).
    pub serving: bool,
    pub terminating: bool,
    /// `targetRef` when it is a Pod: its name.
    pub pod: Option<String>,
}

/// A Pod: only its labels and addresses matter (subsets).
#[derive(Clone, Debug)]
pub struct Pod {
    pub meta: Meta,
    pub ips: Vec<IpAddr>,
}

/// Reports problems of one resource with its source and name.
struct Ctx<'a> {
    source: &'a Source,
    resource: String,
    diagnostics: &'a mut Diagnostics,
    errors: usize,
}

impl<'a> Ctx<'a> {
    fn new<T>(kind: &str, object: &'a Object<T>, diagnostics: &'a mut Diagnostics) -> Self {
        Ctx {
            source: &object.source,
            resource: format!("{kind} {}/{}", object.namespace(), object.name()),
            diagnostics,
            errors: 0,
        }
    }

    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors += 1;
        self.diagnostics.push(
            Diagnostic::error(self.source, message)
                .resource(self.resource.clone())
                .field(field),
        );
    }

    fn warning(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.diagnostics.push(
            Diagnostic::warning(self.source, message)
                .resource(self.resource.clone())
                .field(field),
        );
    }

    /// A required field.
    fn required<'v, T>(&mut self, value: &'v Option<T>, field: &str) -> Option<&'v T> {
        if value.is_none() {
            self.error(field, "required field is missing");
        }
        value.as_ref()
    }

    fn port(&mut self, value: i64, field: &str) -> Option<u16> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Some(port),
            _ => {
                self.error(field, format!("port {value} out of range 1-65535"));
                None
            }
        }
    }

    fn host(&mut self, value: &str, field: &str) -> Option<Host> {
        match Host::parse(value) {
            Ok(host) => Some(host),
            Err(err) => {
                self.error(field, format!("invalid host {value:?}: {err}"));
                None
            }
        }
    }

    fn string_match(
        &mut self,
        m: &istio::StringMatch,
        field: &str,
        empty_is_presence: bool,
    ) -> Option<StringMatcher> {
        let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if set > 1 {
            self.error(field, "only one of exact, prefix or regex may be set");
            return None;
        }
        if let Some(exact) = &m.exact {
            return Some(StringMatcher::Exact(exact.clone()));
        }
        if let Some(prefix) = &m.prefix {
            return Some(StringMatcher::Prefix(prefix.clone()));
        }
        if let Some(regex) = &m.regex {
            return match Pattern::full_match(regex) {
                Ok(pattern) => Some(StringMatcher::Regex(pattern)),
                Err(err) => {
                    self.error(
                        format!("{field}.regex"),
                        format!("invalid regex {regex:?}: {}", one_line(&err.to_string())),
                    );
                    None
                }
            };
        }
        if empty_is_presence {
            Some(StringMatcher::Present)
        } else {
            self.error(field, "one of exact, prefix or regex is required");
            None
        }
    }

    /// A count that must not be negative (saturating at `u32::MAX`).
    fn count(&mut self, value: Option<i64>, field: &str) -> Option<u32> {
        match value? {
            n if n >= 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            n => {
                self.error(field, format!("invalid value {n}: must not be negative"));
                None
            }
        }
    }

    fn duration(&mut self, value: &str, field: &str) -> Option<Duration> {
        match duration::parse(value) {
            Ok(d) => Some(d),
            Err(err) => {
                self.error(field, err);
                None
            }
        }
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn meta<T>(object: &Object<T>) -> Meta {
    Meta {
        name: object.name().to_owned(),
        namespace: object.namespace().to_owned(),
        labels: object.metadata.labels.clone().unwrap_or_default(),
        creation: object.metadata.creation_timestamp.clone(),
        source: object.source.clone(),
    }
}

/// Converts everything loaded into the model, reporting every problem.
pub fn build(wire: &wire::WireConfig, diagnostics: &mut Diagnostics) -> Model {
    let mut model = Model::default();
    let mut seen = HashSet::new();
    macro_rules! convert_all {
        ($list:expr, $kind:literal, $convert:ident, $out:expr) => {
            for object in &$list {
                let key = (
                    $kind,
                    object.namespace().to_owned(),
                    object.name().to_owned(),
                );
                let mut ctx = Ctx::new($kind, object, diagnostics);
                if !seen.insert(key) {
                    ctx.error(
                        "metadata.name",
                        format!(
                            "duplicate {} {}/{}: only the first one is used",
                            $kind,
                            object.namespace(),
                            object.name()
                        ),
                    );
                    continue;
                }
                check_creation_timestamp(&mut ctx, object);
                if let Some(converted) = $convert(object, &mut ctx) {
                    if ctx.errors == 0 {
                        $out.push(converted);
                    }
                }
            }
        };
    }
    convert_all!(wire.gateways, "gateway", convert_gateway, model.gateways);
    convert_all!(
        wire.virtual_services,
        "virtualservice",
        convert_virtual_service,
        model.virtual_services
    );
    convert_all!(
        wire.destination_rules,
        "destinationrule",
        convert_destination_rule,
        model.destination_rules
    );
    convert_all!(
        wire.service_entries,
        "serviceentry",
        convert_service_entry,
        model.service_entries
    );
    convert_all!(wire.services, "service", convert_service, model.services);
    convert_all!(
        wire.endpoint_slices,
        "endpointslice",
        convert_endpoint_slice,
        model.endpoint_slices
    );
    convert_all!(wire.pods, "pod", convert_pod, model.pods);
    convert_all!(wire.secrets, "secret", convert_secret, model.secrets);
    model
        .gateways
        .sort_by(|a, b| a.meta.istio_order().cmp(&b.meta.istio_order()));
    model
        .virtual_services
        .sort_by(|a, b| a.meta.istio_order().cmp(&b.meta.istio_order()));
    model
}

fn check_creation_timestamp<T>(ctx: &mut Ctx<'_>, object: &Object<T>) {
    if let Some(ts) = &object.metadata.creation_timestamp {
        // RFC 3339 in UTC, as the API server writes it: 2024-01-02T03:04:05Z.
        let b = ts.as_bytes();
        let shape_ok = b.len() >= 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && ts.ends_with('Z');
        if !shape_ok {
            ctx.error(
                "metadata.creationTimestamp",
                format!(
                    "invalid timestamp {ts:?}: expected RFC 3339 UTC such as 2024-01-02T03:04:05Z"
                ),
            );
        }
    }
}

fn convert_gateway(object: &Object<istio::GatewaySpec>, ctx: &mut Ctx<'_>) -> Option<Gateway> {
    let spec = &object.body;
    let namespace = object.namespace();
    let mut servers = Vec::new();
    let raw_servers = spec.servers.as_deref().unwrap_or_default();
    if raw_servers.is_empty() {
        ctx.error("spec.servers", "a Gateway needs at least one server");
    }
    let mut port_names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, server) in raw_servers.iter().enumerate() {
        let field = format!("spec.servers[{i}]");
        let port = ctx.required(&server.port, &format!("{field}.port")).and_then(|port| {
            let number = ctx.required(&port.number, &format!("{field}.port.number")).copied();
            let number = number.and_then(|n| ctx.port(n, &format!("{field}.port.number")));
            let protocol = match ctx.required(&port.protocol, &format!("{field}.port.protocol")) {
                Some(p) => match Protocol::parse(p) {
                    Some(protocol) => Some(protocol),
                    None => {
                        ctx.error(format!("{field}.port.protocol"), format!("unknown protocol {p:?}: expected one of HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP, TLS"));
                        None
                    }
                },
                None => None,
            };
            let name = ctx.required(&port.name, &format!("{field}.port.name")).cloned();
            if let Some(name) = &name
                && let Some(first) = port_names.insert(name.clone(), i) {
                    ctx.error(format!("{field}.port.name"), format!("port name {name:?} is already used by spec.servers[{first}]; port names must be unique in a Gateway"));
                }
            if port.target_port.is_some() {
                ctx.warning(format!("{field}.port.targetPort"), "ignored: the listener port comes from the gateway Service's targetPort");
            }
            Some(ServerPort { number: number?, name: name?, protocol: protocol? })
        });
        let mut hosts = Vec::new();
        let raw_hosts = server.hosts.as_deref().unwrap_or_default();
        if raw_hosts.is_empty() {
            ctx.error(format!("{field}.hosts"), "a server needs at least one host");
        }
        for (h, raw) in raw_hosts.iter().enumerate() {
            let hfield = format!("{field}.hosts[{h}]");
            let (ns, name) = match raw.split_once('/') {
                Some(("*", name)) => (None, name),
                Some((".", name)) => (Some(namespace.to_owned()), name),
                Some((ns, name)) => {
                    if Host::parse(ns).is_err() || ns.contains('.') {
                        ctx.error(&hfield, format!("invalid namespace {ns:?} in host {raw:?}"));
                        continue;
                    }
                    (Some(ns.to_owned()), name)
                }
                None => (None, raw.as_str()),
            };
            if let Some(host) = ctx.host(name, &hfield) {
                hosts.push(ServerHost {
                    namespace: ns,
                    host,
                });
            }
        }
        let tls = server
            .tls
            .as_ref()
            .and_then(|tls| convert_server_tls(tls, &format!("{field}.tls"), ctx));
        if let Some(port) = &port {
            if port.protocol.requires_tls() && tls.is_none() && server.tls.is_none() {
                ctx.error(
                    format!("{field}.tls"),
                    format!(
                        "a server with protocol {} requires tls settings",
                        port.protocol.as_str()
                    ),
                );
            }
            if port.protocol.is_plain_http()
                && let Some(tls) = &tls
                && (!tls.https_redirect
                    || tls.server_certificate.is_some()
                    || tls.credential_name.is_some())
            {
                ctx.warning(format!("{field}.tls"), "only httpsRedirect applies to a plaintext HTTP server; other tls settings are ignored");
            }
        }
        let bind = match &server.bind {
            None => None,
            Some(bind) => match bind.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    ctx.error(
                        format!("{field}.bind"),
                        format!("invalid bind address {bind:?}: expected an IP address"),
                    );
                    None
                }
            },
        };
        if server.default_endpoint.is_some() {
            ctx.warning(
                format!("{field}.defaultEndpoint"),
                "defaultEndpoint applies to sidecars only; ignored",
            );
        }
        if let Some(port) = port {
            servers.push(Server {
                index: i,
                port,
                hosts,
                tls,
                bind,
                name: server.name.clone(),
            });
        }
    }
    Some(Gateway {
        meta: meta(object),
        selector: spec.selector.clone().unwrap_or_default(),
        servers,
    })
}

fn convert_server_tls(tls: &istio::ServerTls, field: &str, ctx: &mut Ctx<'_>) -> Option<ServerTls> {
    let mode = match tls.mode.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("PASSTHROUGH") => TlsMode::Passthrough,
        Some("SIMPLE") => TlsMode::Simple,
        Some("MUTUAL") => TlsMode::Mutual,
        Some("OPTIONAL_MUTUAL") => TlsMode::OptionalMutual,
        Some("AUTO_PASSTHROUGH") => TlsMode::AutoPassthrough,
        Some("ISTIO_MUTUAL") => TlsMode::IstioMutual,
        Some(other) => {
            ctx.error(format!("{field}.mode"), format!("unknown TLS mode {other:?}: expected SIMPLE, MUTUAL, OPTIONAL_MUTUAL, PASSTHROUGH, AUTO_PASSTHROUGH or ISTIO_MUTUAL"));
            return None;
        }
    };
    let https_redirect = tls.https_redirect.unwrap_or(false);
    if matches!(
        mode,
        TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual
    ) {
        let has_credential = tls
            .credential_name
            .as_deref()
            .is_some_and(|c| !c.is_empty())
            || tls.credential_names.as_ref().is_some_and(|c| !c.is_empty());
        let has_files = tls.server_certificate.is_some() || tls.private_key.is_some();
        if !has_credential {
            if tls.server_certificate.is_none() {
                ctx.error(
                    format!("{field}.serverCertificate"),
                    "required when tls.mode is SIMPLE or MUTUAL and no credentialName is set",
                );
            }
            if tls.private_key.is_none() {
                ctx.error(
                    format!("{field}.privateKey"),
                    "required when tls.mode is SIMPLE or MUTUAL and no credentialName is set",
                );
            }
            if matches!(mode, TlsMode::Mutual | TlsMode::OptionalMutual)
                && tls.ca_certificates.is_none()
                && has_files
            {
                ctx.error(
                    format!("{field}.caCertificates"),
                    "required when tls.mode is MUTUAL and no credentialName is set",
                );
            }
        }
    }
    let version = |ctx: &mut Ctx<'_>, value: &Option<String>, name: &str| -> Option<TlsVersion> {
        let value = value.as_deref()?;
        match value.to_ascii_uppercase().as_str() {
            "TLS_AUTO" => Some(TlsVersion::Auto),
            "TLSV1_2" => Some(TlsVersion::V1_2),
            "TLSV1_3" => Some(TlsVersion::V1_3),
            "TLSV1_0" | "TLSV1_1" => {
                ctx.error(format!("{field}.{name}"), format!("{value} is not supported: the gateway serves TLS 1.2 and 1.3 only (TLS 1.0/1.1 are insecure and not implemented by rustls)"));
                None
            }
            _ => {
                ctx.error(
                    format!("{field}.{name}"),
                    format!("unknown TLS version {value:?}: expected TLS_AUTO, TLSV1_2 or TLSV1_3"),
                );
                None
            }
        }
    };
    let min_protocol_version = version(ctx, &tls.min_protocol_version, "minProtocolVersion");
    let max_protocol_version = version(ctx, &tls.max_protocol_version, "maxProtocolVersion");
    if let (Some(min), Some(max)) = (min_protocol_version, max_protocol_version)
        && min != TlsVersion::Auto
        && max != TlsVersion::Auto
        && min > max
    {
        ctx.error(
            format!("{field}.minProtocolVersion"),
            "minProtocolVersion is above maxProtocolVersion",
        );
    }
    let mut cipher_suites = Vec::new();
    for (i, name) in tls.cipher_suites.iter().flatten().enumerate() {
        let cfield = format!("{field}.cipherSuites[{i}]");
        match classify_cipher(name) {
            CipherName::Tls12(canonical) => cipher_suites.push(canonical.to_owned()),
            CipherName::Tls13(_) => ctx.warning(cfield, format!(
                "{name} is a TLS 1.3 suite; cipherSuites restricts TLS 1.2 only (TLS 1.3 suites are always enabled, as in Envoy); ignored")),
            CipherName::Unsupported => ctx.warning(cfield, format!(
                "cipher suite {name:?} is not supported (the gateway serves ECDHE with AES-GCM or ChaCha20-Poly1305 only); ignored")),
            CipherName::Unknown => ctx.warning(cfield, format!(
                "unknown cipher suite {name:?}; ignored")),
        }
    }
    if cipher_suites.is_empty() && tls.cipher_suites.as_ref().is_some_and(|c| !c.is_empty()) {
        ctx.warning(
            format!("{field}.cipherSuites"),
            "no supported TLS 1.2 cipher suite is listed; the default suites are used",
        );
    }
    if tls.ca_crl.is_some() {
        ctx.warning(
            format!("{field}.caCrl"),
            "certificate revocation lists are not supported yet; ignored",
        );
    }
    if tls.credential_names.as_ref().is_some_and(|c| !c.is_empty()) {
        ctx.warning(
            format!("{field}.credentialNames"),
            "not supported yet (use credentialName); ignored",
        );
    }
    Some(ServerTls {
        https_redirect,
        mode,
        server_certificate: tls.server_certificate.clone(),
        private_key: tls.private_key.clone(),
        ca_certificates: tls.ca_certificates.clone(),
        credential_name: tls.credential_name.clone(),
        subject_alt_names: tls.subject_alt_names.clone().unwrap_or_default(),
        min_protocol_version,
        max_protocol_version,
        cipher_suites,
    })
}

fn convert_virtual_service(
    object: &Object<istio::VirtualServiceSpec>,
    ctx: &mut Ctx<'_>,
) -> Option<VirtualService> {
    let spec = &object.body;
    let namespace = object.namespace();
    let mut hosts = Vec::new();
    let raw_hosts = spec.hosts.as_deref().unwrap_or_default();
    // No hosts: a delegate (Istio's `delegate`), which must not bind to
    // gateways itself.
    if raw_hosts.is_empty() && spec.gateways.as_ref().is_some_and(|g| !g.is_empty()) {
        ctx.error(
            "spec.hosts",
            "a VirtualService bound to gateways needs at least one host (only delegates have none)",
        );
    }
    for (i, raw) in raw_hosts.iter().enumerate() {
        if raw.contains('/') {
            ctx.error(
                format!("spec.hosts[{i}]"),
                format!("invalid host {raw:?}: namespaces are not allowed in VirtualService hosts"),
            );
            continue;
        }
        let resolved = host::resolve_short_name(raw, namespace, CLUSTER_DOMAIN);
        if let Some(host) = ctx.host(&resolved, &format!("spec.hosts[{i}]")) {
            hosts.push(host);
        }
    }
    let mut gateways = Vec::new();
    for (i, gw) in spec
        .gateways
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if gw.is_empty() {
            ctx.error(format!("spec.gateways[{i}]"), "empty gateway name");
            continue;
        }
        gateways.push(host::resolve_gateway_name(gw, namespace));
    }
    let mut http = Vec::new();
    for (i, route) in spec.http.as_deref().unwrap_or_default().iter().enumerate() {
        if let Some(route) = convert_http_route(route, i, namespace, ctx) {
            http.push(route);
        }
    }
    let mut tcp = Vec::new();
    for (i, route) in spec.tcp.as_deref().unwrap_or_default().iter().enumerate() {
        let field = format!("spec.tcp[{i}]");
        let mut matches = Vec::new();
        for (m, raw) in route
            .matches
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let mfield = format!("{field}.match[{m}]");
            matches.push(convert_l4_match(
                raw.port,
                raw.gateways.as_deref(),
                raw.destination_subnets.is_some(),
                &mfield,
                namespace,
                ctx,
            ));
        }
        let destinations = convert_destinations(
            route
                .route
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|d| (&d.destination, d.weight, None)),
            &field,
            namespace,
            ctx,
        );
        tcp.push(TcpRoute {
            index: i,
            matches,
            destinations,
        });
    }
    let mut tls = Vec::new();
    for (i, route) in spec.tls.as_deref().unwrap_or_default().iter().enumerate() {
        let field = format!("spec.tls[{i}]");
        let raw_matches = route.matches.as_deref().unwrap_or_default();
        if raw_matches.is_empty() {
            ctx.error(
                format!("{field}.match"),
                "a tls route needs at least one match with sniHosts",
            );
        }
        let mut matches = Vec::new();
        for (m, raw) in raw_matches.iter().enumerate() {
            let mfield = format!("{field}.match[{m}]");
            let mut sni_hosts = Vec::new();
            let raw_sni = raw.sni_hosts.as_deref().unwrap_or_default();
            if raw_sni.is_empty() {
                ctx.error(
                    format!("{mfield}.sniHosts"),
                    "required: at least one SNI host",
                );
            }
            for (h, sni) in raw_sni.iter().enumerate() {
                let hfield = format!("{mfield}.sniHosts[{h}]");
                let resolved = host::resolve_short_name(sni, namespace, CLUSTER_DOMAIN);
                let Some(sni_host) = ctx.host(&resolved, &hfield) else {
                    continue;
                };
                if !hosts
                    .iter()
                    .any(|vs_host: &Host| sni_host.subset_of(vs_host))
                {
                    ctx.error(
                        hfield,
                        format!("SNI host {sni:?} is not within any of the VirtualService's hosts"),
                    );
                    continue;
                }
                sni_hosts.push(sni_host);
            }
            let l4 = convert_l4_match(
                raw.port,
                raw.gateways.as_deref(),
                raw.destination_subnets.is_some(),
                &mfield,
                namespace,
                ctx,
            );
            matches.push(TlsMatch {
                index: m,
                sni_hosts,
                l4,
            });
        }
        let destinations = convert_destinations(
            route
                .route
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|d| (&d.destination, d.weight, None)),
            &field,
            namespace,
            ctx,
        );
        tls.push(TlsRoute {
            index: i,
            matches,
            destinations,
        });
    }
    Some(VirtualService {
        meta: meta(object),
        hosts,
        gateways,
        http,
        tcp,
        tls,
    })
}

fn convert_http_route(
    route: &istio::HttpRoute,
    i: usize,
    namespace: &str,
    ctx: &mut Ctx<'_>,
) -> Option<HttpRoute> {
    let field = format!("spec.http[{i}]");
    let mut matches = Vec::new();
    for (m, raw) in route
        .matches
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        matches.push(convert_http_match(
            raw,
            m,
            &format!("{field}.match[{m}]"),
            namespace,
            ctx,
        ));
    }
    let actions = [
        route.route.is_some(),
        route.redirect.is_some(),
        route.direct_response.is_some(),
        route.delegate.is_some(),
    ];
    let action_count = actions.iter().filter(|a| **a).count();
    if action_count != 1 {
        ctx.error(
            &field,
            if action_count == 0 {
                "one of route, redirect, directResponse or delegate is required"
            } else {
                "route, redirect, directResponse and delegate are mutually exclusive"
            },
        );
        return None;
    }
    let action = if let Some(destinations) = &route.route {
        if destinations.is_empty() {
            ctx.error(
                format!("{field}.route"),
                "at least one destination is required",
            );
            return None;
        }
        HttpAction::Route(convert_destinations(
            destinations
                .iter()
                .map(|d| (&d.destination, d.weight, d.headers.as_ref())),
            &field,
            namespace,
            ctx,
        ))
    } else if let Some(redirect) = &route.redirect {
        let code = match redirect.redirect_code {
            None => 301,
            Some(code @ (301 | 302 | 303 | 307 | 308)) => code as u16,
            Some(code) => {
                ctx.error(
                    format!("{field}.redirect.redirectCode"),
                    format!("invalid redirect code {code}: expected 301, 302, 303, 307 or 308"),
                );
                return None;
            }
        };
        let port = redirect
            .port
            .and_then(|p| ctx.port(p, &format!("{field}.redirect.port")));
        let derive_port = match redirect.derive_port.as_deref() {
            None => false,
            Some("FROM_REQUEST_PORT") => true,
            Some("FROM_PROTOCOL_DEFAULT") => false,
            Some(other) => {
                ctx.error(
                    format!("{field}.redirect.derivePort"),
                    format!("unknown value {other:?}: expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
                );
                return None;
            }
        };
        if derive_port && port.is_some() {
            ctx.error(
                format!("{field}.redirect.derivePort"),
                "port and derivePort are mutually exclusive",
            );
            return None;
        }
        HttpAction::Redirect(Redirect {
            uri: redirect.uri.clone(),
            authority: redirect.authority.clone(),
            port,
            derive_port,
            scheme: redirect.scheme.clone(),
            code,
        })
    } else if let Some(direct) = &route.direct_response {
        let status = match direct.status {
            Some(s @ 200..=599) => s as u16,
            Some(s) => {
                ctx.error(
                    format!("{field}.directResponse.status"),
                    format!("invalid status {s}: expected 200-599"),
                );
                return None;
            }
            None => {
                ctx.error(
                    format!("{field}.directResponse.status"),
                    "required field is missing",
                );
                return None;
            }
        };
        let body = match &direct.body {
            Some(istio::HttpBody {
                string: Some(s), ..
            }) => s.clone().into_bytes(),
            Some(istio::HttpBody { bytes: Some(b), .. }) => {
                use base64::Engine as _;
                let compact: String = b.split_ascii_whitespace().collect();
                match base64::engine::general_purpose::STANDARD.decode(compact) {
                    Ok(bytes) => bytes,
                    Err(err) => {
                        ctx.error(
                            format!("{field}.directResponse.body.bytes"),
                            format!("invalid base64: {err}"),
                        );
                        return None;
                    }
                }
            }
            _ => Vec::new(),
        };
        HttpAction::DirectResponse { status, body }
    } else if let Some(delegate) = &route.delegate {
        let Some(name) = delegate.name.clone() else {
            ctx.error(
                format!("{field}.delegate.name"),
                "required field is missing",
            );
            return None;
        };
        HttpAction::Delegate {
            name,
            namespace: delegate
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_owned()),
        }
    } else {
        return None;
    };
    let timeout = route
        .timeout
        .as_deref()
        .and_then(|t| ctx.duration(t, &format!("{field}.timeout")))
        .filter(|d| !d.is_zero());
    let rewrite = match &route.rewrite {
        None => None,
        Some(r) => {
            let uri_regex = match &r.uri_regex_rewrite {
                None => None,
                Some(rr) => {
                    let rfield = format!("{field}.rewrite.uriRegexRewrite");
                    let pattern = ctx.required(&rr.pattern, &format!("{rfield}.match"))?;
                    let replacement = ctx.required(&rr.rewrite, &format!("{rfield}.rewrite"))?;
                    match regex::Regex::new(pattern) {
                        Ok(regex) => Some((
                            Pattern {
                                source: pattern.clone(),
                                regex,
                            },
                            // RE2's `\1` becomes the regex crate's `${1}`.
                            regex_replacement(replacement),
                        )),
                        Err(err) => {
                            ctx.error(format!("{rfield}.match"), format!("invalid regex: {err}"));
                            return None;
                        }
                    }
                }
            };
            if uri_regex.is_some() && r.uri.is_some() {
                ctx.error(
                    format!("{field}.rewrite"),
                    "uri and uriRegexRewrite are mutually exclusive",
                );
                return None;
            }
            Some(Rewrite {
                uri: r.uri.clone(),
                authority: r.authority.clone(),
                uri_regex,
            })
        }
    };
    let retries = route.retries.as_ref().map(|r| {
        let rfield = format!("{field}.retries");
        let mut policy = RetryPolicy::istio_default();
        policy.attempts = match r.attempts {
            None => 2,
            Some(a) if a >= 0 => a as u32,
            Some(a) => {
                ctx.error(
                    format!("{rfield}.attempts"),
                    format!("invalid attempts {a}: must not be negative"),
                );
                0
            }
        };
        policy.per_try_timeout = r
            .per_try_timeout
            .as_deref()
            .and_then(|t| ctx.duration(t, &format!("{rfield}.perTryTimeout")))
            .filter(|d| !d.is_zero());
        if let Some(on) = &r.retry_on {
            match RetryPolicy::parse_retry_on(on) {
                Ok((retry_on, codes)) => {
                    policy.retry_on = retry_on;
                    policy.status_codes = codes;
                }
                Err(err) => ctx.error(format!("{rfield}.retryOn"), err),
            }
        }
        if r.retry_remote_localities.is_some() {
            ctx.warning(
                format!("{rfield}.retryRemoteLocalities"),
                "there are no localities at a single gateway; ignored",
            );
        }
        policy
    });
    let fault = route
        .fault
        .as_ref()
        .and_then(|f| convert_fault(f, &format!("{field}.fault"), ctx));
    let mut mirrors = Vec::new();
    if let Some(mirror) = &route.mirror {
        let percent = convert_percent(
            route.mirror_percentage.as_ref(),
            route.mirror_percent,
            100.0,
            &format!("{field}.mirrorPercentage"),
            ctx,
        );
        if let Some(d) = convert_destination(mirror, &format!("{field}.mirror"), namespace, ctx) {
            mirrors.push((d, percent));
        }
    }
    for (m, mirror) in route.mirrors.iter().flatten().enumerate() {
        let mfield = format!("{field}.mirrors[{m}]");
        let Some(destination) = ctx.required(&mirror.destination, &format!("{mfield}.destination"))
        else {
            continue;
        };
        let percent = convert_percent(
            mirror.percentage.as_ref(),
            None,
            100.0,
            &format!("{mfield}.percentage"),
            ctx,
        );
        if let Some(d) = convert_destination(
            destination,
            &format!("{mfield}.destination"),
            namespace,
            ctx,
        ) {
            mirrors.push((d, percent));
        }
    }
    if route.mirror.is_some() && route.mirrors.as_ref().is_some_and(|m| !m.is_empty()) {
        ctx.error(
            format!("{field}.mirrors"),
            "mirror and mirrors are mutually exclusive",
        );
    }
    let cors = route
        .cors_policy
        .as_ref()
        .and_then(|c| convert_cors(c, &format!("{field}.corsPolicy"), ctx));
    let headers = route
        .headers
        .as_ref()
        .map(|h| convert_headers(h, &format!("{field}.headers"), ctx))
        .filter(|h| *h != HeaderPolicy::default());
    Some(HttpRoute {
        index: i,
        name: route.name.clone().unwrap_or_default(),
        matches,
        action,
        timeout,
        rewrite,
        retries,
        fault,
        mirrors,
        cors,
        headers,
    })
}

/// RE2 replacement syntax (`\\1`) to the regex crate's (`${1}`); a literal
/// `$` is escaped.
fn regex_replacement(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                out.push_str(&format!("${{{digits}}}"));
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// `fault`: a fixed delay and/or an abort, each for a percentage of requests
/// (0 when no percentage is given, as Istio translates it).
fn convert_fault(
    fault: &istio::HttpFaultInjection,
    field: &str,
    ctx: &mut Ctx<'_>,
) -> Option<FaultPolicy> {
    let mut out = FaultPolicy::default();
    if let Some(delay) = &fault.delay {
        let dfield = format!("{field}.delay");
        if delay.exponential_delay.is_some() {
            ctx.warning(
                format!("{dfield}.exponentialDelay"),
                "exponential delays are not supported (nor by Istio); ignored",
            );
        }
        if delay.percentage.is_none() && delay.percent.is_none() {
            ctx.warning(
                format!("{dfield}.percentage"),
                "no percentage: no request is delayed (Istio's translation); set percentage.value",
            );
        }
        let percent = convert_percent(
            delay.percentage.as_ref(),
            delay.percent,
            0.0,
            &format!("{dfield}.percentage"),
            ctx,
        );
        if let Some(d) = delay
            .fixed_delay
            .as_deref()
            .and_then(|d| ctx.duration(d, &format!("{dfield}.fixedDelay")))
        {
            out.delay = Some((d, percent));
        } else if delay.fixed_delay.is_none() {
            ctx.error(format!("{dfield}.fixedDelay"), "required field is missing");
        }
    }
    if let Some(abort) = &fault.abort {
        let afield = format!("{field}.abort");
        if abort.percentage.is_none() {
            ctx.warning(
                format!("{afield}.percentage"),
                "no percentage: no request is aborted (Istio's translation); set percentage.value",
            );
        }
        let percent = convert_percent(
            abort.percentage.as_ref(),
            None,
            0.0,
            &format!("{afield}.percentage"),
            ctx,
        );
        let kind = match (
            abort.http_status,
            abort.grpc_status.as_deref(),
            abort.http2_error.as_deref(),
        ) {
            (Some(s @ 200..=599), None, None) => Some(FaultAbort::Http(s as u16)),
            (Some(s), None, None) => {
                ctx.error(
                    format!("{afield}.httpStatus"),
                    format!("invalid status {s}: expected 200-599"),
                );
                None
            }
            (None, Some(g), None) => match grpc_status_code(g) {
                Some(code) => Some(FaultAbort::Grpc(code)),
                None => {
                    ctx.error(
                        format!("{afield}.grpcStatus"),
                        format!("unknown gRPC status {g:?}"),
                    );
                    None
                }
            },
            (None, None, Some(_)) => {
                ctx.warning(
                    format!("{afield}.http2Error"),
                    "not supported (nor by Istio); ignored",
                );
                None
            }
            (None, None, None) => {
                ctx.error(&afield, "one of httpStatus or grpcStatus is required");
                None
            }
            _ => {
                ctx.error(
                    &afield,
                    "httpStatus, grpcStatus and http2Error are mutually exclusive",
                );
                None
            }
        };
        out.abort = kind.map(|k| (k, percent));
    }
    if fault.delay.is_none() && fault.abort.is_none() {
        ctx.error(field, "a fault needs a delay or an abort");
    }
    Some(out)
}

/// gRPC status names (`UNAVAILABLE`) or numbers to codes.
fn grpc_status_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    let upper = name.trim().to_ascii_uppercase();
    NAMES
        .iter()
        .position(|n| *n == upper)
        .map(|p| p as u32)
        .or_else(|| upper.parse::<u32>().ok().filter(|c| *c <= 16))
}

/// `corsPolicy`.
fn convert_cors(cors: &istio::CorsPolicy, field: &str, ctx: &mut Ctx<'_>) -> Option<CorsPolicy> {
    let mut origins = Vec::new();
    for (i, m) in cors.allow_origins.iter().flatten().enumerate() {
        if let Some(matcher) = ctx.string_match(m, &format!("{field}.allowOrigins[{i}]"), false) {
            origins.push(matcher);
        }
    }
    for origin in cors.allow_origin.iter().flatten() {
        origins.push(StringMatcher::Exact(origin.clone()));
    }
    let max_age = cors
        .max_age
        .as_deref()
        .and_then(|d| ctx.duration(d, &format!("{field}.maxAge")))
        .map(|d| d.as_secs());
    let forward_unmatched_preflights = match cors.unmatched_preflights.as_deref() {
        None | Some("FORWARD") | Some("UNSPECIFIED") => true,
        Some("IGNORE") => false,
        Some(other) => {
            ctx.error(
                format!("{field}.unmatchedPreflights"),
                format!("unknown value {other:?}: expected FORWARD or IGNORE"),
            );
            true
        }
    };
    let join = |v: &Option<Vec<String>>| v.as_deref().unwrap_or_default().join(",");
    Some(CorsPolicy {
        allow_origins: origins,
        allow_methods: join(&cors.allow_methods),
        allow_headers: join(&cors.allow_headers),
        expose_headers: join(&cors.expose_headers),
        max_age,
        allow_credentials: cors.allow_credentials.unwrap_or(false),
        forward_unmatched_preflights,
    })
}

fn convert_http_match(
    raw: &istio::HttpMatchRequest,
    index: usize,
    field: &str,
    namespace: &str,
    ctx: &mut Ctx<'_>,
) -> HttpMatch {
    let mut m = HttpMatch {
        index,
        name: raw.name.clone().unwrap_or_default(),
        ..HttpMatch::default()
    };
    m.uri = raw
        .uri
        .as_ref()
        .and_then(|u| ctx.string_match(u, &format!("{field}.uri"), false));
    m.ignore_uri_case = raw.ignore_uri_case.unwrap_or(false);
    if m.ignore_uri_case && matches!(m.uri, Some(StringMatcher::Regex(_))) {
        ctx.warning(
            format!("{field}.ignoreUriCase"),
            "ignoreUriCase applies to exact and prefix only, not to regex",
        );
    }
    m.scheme = raw
        .scheme
        .as_ref()
        .and_then(|s| ctx.string_match(s, &format!("{field}.scheme"), false));
    m.method = raw
        .method
        .as_ref()
        .and_then(|s| ctx.string_match(s, &format!("{field}.method"), false));
    m.authority = raw
        .authority
        .as_ref()
        .and_then(|s| ctx.string_match(s, &format!("{field}.authority"), false));
    let header_list =
        |ctx: &mut Ctx<'_>, map: &Option<BTreeMap<String, istio::StringMatch>>, name: &str| {
            let mut out = Vec::new();
            for (key, value) in map.iter().flatten() {
                let hfield = format!("{field}.{name}.{key}");
                if key.is_empty() {
                    ctx.error(&hfield, "empty header name");
                    continue;
                }
                if http::HeaderName::from_bytes(key.as_bytes()).is_err() && !key.starts_with(':') {
                    ctx.error(&hfield, format!("invalid header name {key:?}"));
                    continue;
                }
                if key.bytes().any(|b| b.is_ascii_uppercase()) {
                    ctx.warning(&hfield, "header names are matched lower-case");
                }
                if let Some(matcher) = ctx.string_match(value, &hfield, true) {
                    out.push((key.to_ascii_lowercase(), matcher));
                }
            }
            out
        };
    m.headers = header_list(ctx, &raw.headers, "headers");
    m.without_headers = header_list(ctx, &raw.without_headers, "withoutHeaders");
    for (key, value) in raw.query_params.iter().flatten() {
        if let Some(matcher) = ctx.string_match(value, &format!("{field}.queryParams.{key}"), true)
        {
            m.query_params.push((key.clone(), matcher));
        }
    }
    m.port = raw.port.and_then(|p| ctx.port(p, &format!("{field}.port")));
    m.gateways = raw
        .gateways
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| host::resolve_gateway_name(g, namespace))
        .collect();
    m.has_source_conditions = raw.source_labels.is_some() || raw.source_namespace.is_some();
    if m.has_source_conditions {
        ctx.warning(
            field,
            "sourceLabels/sourceNamespace never match at a gateway (there is no source workload)",
        );
    }
    m
}

/// One `route[]` entry as the three routes give it: destination, weight and
/// (HTTP only) header operations.
type RawDestination<'a> = (
    &'a Option<istio::Destination>,
    Option<i64>,
    Option<&'a istio::Headers>,
);

fn convert_destinations<'a>(
    destinations: impl Iterator<Item = RawDestination<'a>>,
    field: &str,
    namespace: &str,
    ctx: &mut Ctx<'_>,
) -> Vec<RouteDestination> {
    let destinations: Vec<_> = destinations.collect();
    let single = destinations.len() == 1;
    let mut out = Vec::new();
    for (d, (destination, weight, headers)) in destinations.into_iter().enumerate() {
        let dfield = format!("{field}.route[{d}]");
        let Some(destination) = ctx.required(destination, &format!("{dfield}.destination")) else {
            continue;
        };
        let Some(destination) = convert_destination(
            destination,
            &format!("{dfield}.destination"),
            namespace,
            ctx,
        ) else {
            continue;
        };
        // A lone destination without a weight takes all the traffic.
        let weight = match weight {
            None if single => 100,
            None => 0,
            Some(w) => match u32::try_from(w) {
                Ok(w) => w,
                Err(_) => {
                    ctx.error(
                        format!("{dfield}.weight"),
                        format!("invalid weight {w}: must not be negative"),
                    );
                    continue;
                }
            },
        };
        let headers = headers
            .map(|h| convert_headers(h, &format!("{dfield}.headers"), ctx))
            .filter(|h| *h != HeaderPolicy::default())
            .map(Arc::new);
        out.push(RouteDestination {
            destination,
            weight,
            headers,
        });
    }
    if !out.is_empty() && out.iter().all(|d| d.weight == 0) {
        ctx.error(
            format!("{field}.route"),
            "the weights of the destinations add up to 0",
        );
    }
    out
}

/// A `destination`: host (short names resolved), subset, port.
fn convert_destination(
    destination: &istio::Destination,
    field: &str,
    namespace: &str,
    ctx: &mut Ctx<'_>,
) -> Option<Destination> {
    let host = ctx.required(&destination.host, &format!("{field}.host"))?;
    let resolved = host::resolve_short_name(host, namespace, CLUSTER_DOMAIN);
    ctx.host(&resolved, &format!("{field}.host"))?;
    let port = destination
        .port
        .as_ref()
        .and_then(|p| p.number)
        .and_then(|p| ctx.port(p, &format!("{field}.port.number")));
    Some(Destination {
        host: resolved,
        subset: destination.subset.clone().filter(|s| !s.is_empty()),
        port,
    })
}

/// `headers`: request and response operations; a `host`/`:authority` set
/// on the request becomes a host rewrite, as Istio does.
fn convert_headers(headers: &istio::Headers, field: &str, ctx: &mut Ctx<'_>) -> HeaderPolicy {
    let mut policy = HeaderPolicy::default();
    for (side, raw, request) in [
        ("request", &headers.request, true),
        ("response", &headers.response, false),
    ] {
        let Some(raw) = raw else { continue };
        let mut ops = HeaderOps::default();
        let mut pairs = |map: &Option<BTreeMap<String, String>>, op: &str, ctx: &mut Ctx<'_>| {
            let mut out = Vec::new();
            for (name, value) in map.iter().flatten() {
                let f = format!("{field}.{side}.{op}.{name}");
                let lower = name.to_ascii_lowercase();
                if request && op == "set" && (lower == "host" || lower == ":authority") {
                    policy.host_rewrite = Some(value.clone());
                    continue;
                }
                match (
                    HeaderName::from_bytes(lower.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    (Ok(n), Ok(v)) => out.push((n, v)),
                    (Err(_), _) => ctx.error(f, format!("invalid header name {name:?}")),
                    (_, Err(_)) => ctx.error(f, format!("invalid header value {value:?}")),
                }
            }
            out
        };
        ops.set = pairs(&raw.set, "set", ctx);
        ops.add = pairs(&raw.add, "add", ctx);
        for (i, name) in raw.remove.iter().flatten().enumerate() {
            match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(n) => ops.remove.push(n),
                Err(_) => ctx.error(
                    format!("{field}.{side}.remove[{i}]"),
                    format!("invalid header name {name:?}"),
                ),
            }
        }
        if request {
            policy.request = ops;
        } else {
            policy.response = ops;
        }
    }
    policy
}

/// A `Percent` (or the deprecated integer), in [0, 100]; `default` when
/// neither is given.
fn convert_percent(
    percentage: Option<&istio::Percent>,
    legacy: Option<i64>,
    default: f64,
    field: &str,
    ctx: &mut Ctx<'_>,
) -> f64 {
    let value = match (percentage.and_then(|p| p.value), legacy) {
        (Some(v), _) => v,
        (None, Some(v)) => v as f64,
        (None, None) => return default,
    };
    if !(0.0..=100.0).contains(&value) {
        ctx.error(
            field,
            format!("invalid percentage {value}: expected 0 to 100"),
        );
        return default;
    }
    value
}

fn convert_destination_rule(
    object: &Object<istio::DestinationRuleSpec>,
    ctx: &mut Ctx<'_>,
) -> Option<DestinationRule> {
    let spec = &object.body;
    let host = ctx.required(&spec.host, "spec.host")?;
    let resolved = host::resolve_short_name(host, object.namespace(), CLUSTER_DOMAIN);
    let host = ctx.host(&resolved, "spec.host")?;
    let mut subsets = Vec::new();
    let mut names = HashSet::new();
    for (i, subset) in spec
        .subsets
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some(name) = ctx.required(&subset.name, &format!("spec.subsets[{i}].name")) else {
            continue;
        };
        if !names.insert(name.clone()) {
            ctx.error(
                format!("spec.subsets[{i}].name"),
                format!("duplicate subset {name:?}"),
            );
            continue;
        }
        let policy = subset
            .traffic_policy
            .as_ref()
            .map(|tp| convert_traffic_policy(tp, &format!("spec.subsets[{i}].trafficPolicy"), ctx));
        subsets.push(Subset {
            name: name.clone(),
            labels: subset.labels.clone().unwrap_or_default(),
            policy,
        });
    }
    let policy = spec
        .traffic_policy
        .as_ref()
        .map(|tp| convert_traffic_policy(tp, "spec.trafficPolicy", ctx));
    Some(DestinationRule {
        meta: meta(object),
        host,
        subsets,
        policy,
    })
}

fn convert_traffic_policy(
    tp: &istio::TrafficPolicy,
    field: &str,
    ctx: &mut Ctx<'_>,
) -> TrafficPolicy {
    let mut out = convert_policy_parts(
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        field,
        ctx,
    );
    for (name, present) in [
        ("tunnel", tp.tunnel.is_some()),
        ("proxyProtocol", tp.proxy_protocol.is_some()),
        ("retryBudget", tp.retry_budget.is_some()),
    ] {
        if present {
            ctx.warning(
                format!("{field}.{name}"),
                "not supported at the gateway yet; ignored",
            );
        }
    }
    for (i, level) in tp.port_level_settings.iter().flatten().enumerate() {
        let lfield = format!("{field}.portLevelSettings[{i}]");
        let Some(port) = level
            .port
            .as_ref()
            .and_then(|p| p.number)
            .and_then(|n| ctx.port(n, &format!("{lfield}.port.number")))
        else {
            ctx.error(format!("{lfield}.port.number"), "required field is missing");
            continue;
        };
        let parts = convert_policy_parts(
            level.load_balancer.as_ref(),
            level.connection_pool.as_ref(),
            level.outlier_detection.as_ref(),
            level.tls.as_ref(),
            &lfield,
            ctx,
        );
        out.ports.push((port, parts));
    }
    out
}

fn convert_policy_parts(
    lb: Option<&istio::LoadBalancerSettings>,
    pool: Option<&istio::ConnectionPoolSettings>,
    outlier: Option<&istio::OutlierDetection>,
    tls: Option<&serde_json::Value>,
    field: &str,
    ctx: &mut Ctx<'_>,
) -> TrafficPolicy {
    let mut out = TrafficPolicy::default();
    if let Some(lb) = lb {
        out.lb = convert_lb(lb, &format!("{field}.loadBalancer"), ctx);
    }
    if let Some(pool) = pool {
        let (limits, connect_timeout) = convert_pool(pool, &format!("{field}.connectionPool"), ctx);
        out.limits = Some(limits);
        out.connect_timeout = connect_timeout;
    }
    if let Some(outlier) = outlier {
        out.outlier = Some(convert_outlier(
            outlier,
            &format!("{field}.outlierDetection"),
            ctx,
        ));
    }
    if let Some(tls) = tls {
        let mode = tls
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("DISABLE");
        if mode != "DISABLE" {
            ctx.warning(
                format!("{field}.tls"),
                format!("TLS to upstreams (mode {mode}) is not supported yet; connections to this destination are plaintext"),
            );
        }
    }
    out
}

fn convert_lb(
    lb: &istio::LoadBalancerSettings,
    field: &str,
    ctx: &mut Ctx<'_>,
) -> Option<LbPolicy> {
    if lb.locality_lb_setting.is_some() {
        ctx.warning(
            format!("{field}.localityLbSetting"),
            "a single gateway has no localities; ignored",
        );
    }
    if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
        ctx.warning(
            format!("{field}.warmup"),
            "slow start is not supported yet; ignored",
        );
    }
    match (lb.simple.as_deref(), &lb.consistent_hash) {
        (Some(_), Some(_)) => {
            ctx.error(field, "simple and consistentHash are mutually exclusive");
            None
        }
        (Some(simple), None) => match simple.to_ascii_uppercase().as_str() {
            "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => Some(LbPolicy::LeastRequest),
            "ROUND_ROBIN" => Some(LbPolicy::RoundRobin),
            "RANDOM" => Some(LbPolicy::Random),
            "PASSTHROUGH" => {
                ctx.warning(format!("{field}.simple"), "PASSTHROUGH needs original-destination routing, which a gateway does not do; LEAST_REQUEST is used");
                Some(LbPolicy::LeastRequest)
            }
            other => {
                ctx.error(format!("{field}.simple"), format!("unknown load balancer {other:?}: expected LEAST_REQUEST, ROUND_ROBIN, RANDOM or PASSTHROUGH"));
                None
            }
        },
        (None, Some(hash)) => {
            let hfield = format!("{field}.consistentHash");
            let keys = [
                hash.http_header_name.is_some(),
                hash.http_cookie.is_some(),
                hash.use_source_ip.unwrap_or(false),
                hash.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                ctx.error(&hfield, "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required");
                return None;
            }
            let key = if let Some(name) = &hash.http_header_name {
                match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                    Ok(n) => HashKey::Header(n),
                    Err(_) => {
                        ctx.error(
                            format!("{hfield}.httpHeaderName"),
                            format!("invalid header name {name:?}"),
                        );
                        return None;
                    }
                }
            } else if let Some(cookie) = &hash.http_cookie {
                let name = ctx
                    .required(&cookie.name, &format!("{hfield}.httpCookie.name"))?
                    .clone();
                let ttl = cookie
                    .ttl
                    .as_deref()
                    // 0s: a session cookie (no Max-Age), as in Envoy.
                    .and_then(|t| ctx.duration(t, &format!("{hfield}.httpCookie.ttl")));
                HashKey::Cookie {
                    name,
                    path: cookie.path.clone(),
                    ttl,
                }
            } else if let Some(name) = &hash.http_query_parameter_name {
                HashKey::QueryParam(name.clone())
            } else {
                HashKey::SourceIp
            };
            if hash.ring_hash.is_some() || hash.minimum_ring_size.is_some() {
                ctx.warning(
                    format!("{hfield}.ringHash"),
                    "the gateway hashes with a Maglev table; ring settings are ignored",
                );
            }
            Some(LbPolicy::ConsistentHash(key))
        }
        (None, None) => None,
    }
}

fn convert_pool(
    pool: &istio::ConnectionPoolSettings,
    field: &str,
    ctx: &mut Ctx<'_>,
) -> (PoolLimits, Option<Duration>) {
    let mut limits = PoolLimits::default();
    let mut connect_timeout = None;
    // Istio copies only values above 0: 0 means "not set".
    let count = |ctx: &mut Ctx<'_>, v: Option<i64>, f: &str| {
        ctx.count(v, &format!("{field}.{f}")).filter(|&n| n > 0)
    };
    if let Some(tcp) = &pool.tcp {
        limits.max_connections = count(ctx, tcp.max_connections, "tcp.maxConnections");
        connect_timeout = tcp
            .connect_timeout
            .as_deref()
            .and_then(|t| ctx.duration(t, &format!("{field}.tcp.connectTimeout")))
            .filter(|d| !d.is_zero());
        for (name, present) in [
            ("tcpKeepalive", tcp.tcp_keepalive.is_some()),
            (
                "maxConnectionDuration",
                tcp.max_connection_duration.is_some(),
            ),
            ("idleTimeout", tcp.idle_timeout.is_some()),
        ] {
            if present {
                ctx.warning(format!("{field}.tcp.{name}"), "not enforced yet; ignored");
            }
        }
    }
    if let Some(http) = &pool.http {
        limits.max_pending_requests = count(
            ctx,
            http.http1_max_pending_requests,
            "http.http1MaxPendingRequests",
        );
        limits.max_requests = count(ctx, http.http2_max_requests, "http.http2MaxRequests");
        limits.max_retries = count(ctx, http.max_retries, "http.maxRetries");
        match http.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT" | "DO_NOT_UPGRADE") => {}
            Some("UPGRADE") => limits.h2_upgrade = true,
            Some(other) => ctx.error(
                format!("{field}.http.h2UpgradePolicy"),
                format!("unknown policy {other:?} (DEFAULT, DO_NOT_UPGRADE or UPGRADE)"),
            ),
        }
        limits.max_requests_per_connection = count(
            ctx,
            http.max_requests_per_connection,
            "http.maxRequestsPerConnection",
        );
        limits.idle_timeout = http
            .idle_timeout
            .as_deref()
            .and_then(|t| ctx.duration(t, &format!("{field}.http.idleTimeout")))
            .filter(|d| !d.is_zero());
        for (name, present) in [
            (
                "maxConcurrentStreams",
                http.max_concurrent_streams.is_some(),
            ),
            ("useClientProtocol", http.use_client_protocol.is_some()),
        ] {
            if present {
                ctx.warning(format!("{field}.http.{name}"), "not enforced yet; ignored");
            }
        }
    }
    (limits, connect_timeout)
}

fn convert_outlier(
    outlier: &istio::OutlierDetection,
    field: &str,
    ctx: &mut Ctx<'_>,
) -> OutlierPolicy {
    let mut out = OutlierPolicy::default();
    let count = |ctx: &mut Ctx<'_>, v: Option<i64>, f: &str| ctx.count(v, &format!("{field}.{f}"));
    if let Some(n) = count(
        ctx,
        outlier
            .consecutive_5xx_errors
            .or(outlier.consecutive_errors),
        "consecutive5xxErrors",
    ) {
        // Istio copies the count only when set: Envoy's default of 5 stays
        // otherwise, also when only gateway errors are configured.
        out.consecutive_5xx = n;
    }
    if let Some(n) = count(
        ctx,
        outlier.consecutive_gateway_errors,
        "consecutiveGatewayErrors",
    ) {
        out.consecutive_gateway_errors = n;
    }
    if let Some(d) = outlier
        .interval
        .as_deref()
        .and_then(|d| ctx.duration(d, &format!("{field}.interval")))
    {
        out.interval = d;
    }
    if let Some(d) = outlier
        .base_ejection_time
        .as_deref()
        .and_then(|d| ctx.duration(d, &format!("{field}.baseEjectionTime")))
    {
        out.base_ejection_time = d;
    }
    for (value, name, slot) in [
        (
            outlier.max_ejection_percent,
            "maxEjectionPercent",
            &mut out.max_ejection_percent,
        ),
        (
            outlier.min_health_percent,
            "minHealthPercent",
            &mut out.min_health_percent,
        ),
    ] {
        match value {
            None => {}
            Some(p @ 0..=100) => *slot = p as u32,
            Some(p) => ctx.error(
                format!("{field}.{name}"),
                format!("invalid percentage {p}: expected 0 to 100"),
            ),
        }
    }
    if outlier.consecutive_local_origin_failures.is_some()
        || outlier.split_external_local_origin_errors.is_some()
    {
        ctx.warning(
            format!("{field}.splitExternalLocalOriginErrors"),
            "local-origin failures count with the others; ignored",
        );
    }
    out
}

fn convert_service_entry(
    object: &Object<istio::ServiceEntrySpec>,
    ctx: &mut Ctx<'_>,
) -> Option<ServiceEntry> {
    let spec = &object.body;
    let mut hosts = Vec::new();
    for (i, raw) in spec.hosts.as_deref().unwrap_or_default().iter().enumerate() {
        if let Some(host) = ctx.host(raw, &format!("spec.hosts[{i}]")) {
            hosts.push(host);
        }
    }
    if hosts.is_empty() {
        ctx.error("spec.hosts", "a ServiceEntry needs at least one host");
    }
    let mut ports = Vec::new();
    for (i, port) in spec.ports.as_deref().unwrap_or_default().iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        let number = ctx
            .required(&port.number, &format!("{field}.number"))
            .copied()
            .and_then(|n| ctx.port(n, &format!("{field}.number")));
        let name = ctx.required(&port.name, &format!("{field}.name")).cloned();
        let target_port = port
            .target_port
            .and_then(|p| ctx.port(p, &format!("{field}.targetPort")));
        if let (Some(number), Some(name)) = (number, name) {
            ports.push(ServiceEntryPort {
                number,
                name,
                protocol: port.protocol.clone(),
                target_port,
            });
        }
    }
    let mut endpoints = Vec::new();
    for (i, ep) in spec
        .endpoints
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("spec.endpoints[{i}]");
        let Some(address) = ctx.required(&ep.address, &format!("{field}.address")) else {
            continue;
        };
        let Ok(address) = address.parse::<IpAddr>() else {
            ctx.warning(
                format!("{field}.address"),
                format!(
                    "{address:?} is not an IP address; DNS endpoints are not supported yet; ignored"
                ),
            );
            continue;
        };
        let mut endpoint_ports = BTreeMap::new();
        for (name, port) in ep.ports.iter().flatten() {
            if let Some(port) = ctx.port(*port, &format!("{field}.ports.{name}")) {
                endpoint_ports.insert(name.clone(), port);
            }
        }
        endpoints.push(ServiceEntryEndpoint {
            address,
            ports: endpoint_ports,
            labels: ep.labels.clone().unwrap_or_default(),
        });
    }
    Some(ServiceEntry {
        meta: meta(object),
        hosts,
        ports,
        endpoints,
    })
}

fn convert_service(object: &Object<k8s::ServiceSpec>, ctx: &mut Ctx<'_>) -> Option<Service> {
    let spec = &object.body;
    let mut ports = Vec::new();
    for (i, port) in spec.ports.as_deref().unwrap_or_default().iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        if port
            .protocol
            .as_deref()
            .is_some_and(|p| !p.eq_ignore_ascii_case("TCP"))
        {
            continue; // UDP/SCTP ports are not the gateway's business.
        }
        let Some(number) = ctx
            .required(&port.port, &format!("{field}.port"))
            .copied()
            .and_then(|n| ctx.port(n, &format!("{field}.port")))
        else {
            continue;
        };
        let target_port = match &port.target_port {
            None => TargetPort::Number(number),
            Some(k8s::IntOrString::Int(n)) => match ctx.port(*n, &format!("{field}.targetPort")) {
                Some(p) => TargetPort::Number(p),
                None => continue,
            },
            Some(k8s::IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => match ctx.port(n, &format!("{field}.targetPort")) {
                    Some(p) => TargetPort::Number(p),
                    None => continue,
                },
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        let node_port = port
            .node_port
            .and_then(|n| ctx.port(n, &format!("{field}.nodePort")));
        ports.push(ServicePort {
            name: port.name.clone(),
            port: number,
            target_port,
            node_port,
            app_protocol: port.app_protocol.clone(),
        });
    }
    Some(Service {
        meta: meta(object),
        selector: spec.selector.clone().unwrap_or_default(),
        ports,
    })
}

fn convert_endpoint_slice(
    object: &Object<k8s::EndpointSliceBody>,
    ctx: &mut Ctx<'_>,
) -> Option<EndpointSlice> {
    let body = &object.body;
    let Some(service) = object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .cloned()
    else {
        ctx.warning(
            "metadata.labels",
            "no kubernetes.io/service-name label: the slice belongs to no Service; ignored",
        );
        return None;
    };
    if body.address_type.as_deref().is_some_and(|t| t == "FQDN") {
        ctx.warning(
            "addressType",
            "FQDN endpoint slices are not supported; ignored",
        );
        return None;
    }
    let mut endpoints = Vec::new();
    for (i, ep) in body
        .endpoints
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let mut addresses = Vec::new();
        for (a, address) in ep
            .addresses
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match address.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => ctx.error(
                    format!("endpoints[{i}].addresses[{a}]"),
                    format!("invalid IP address {address:?}"),
                ),
            }
        }
        let conditions = ep.conditions.clone().unwrap_or_default();
        let ready = conditions.ready.unwrap_or(true);
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| r.name.clone());
        endpoints.push(SliceEndpoint {
            addresses,
            ready,
            serving: conditions.serving.unwrap_or(ready),
            terminating: conditions.terminating.unwrap_or(false),
            pod,
        });
    }
    let mut ports = Vec::new();
    for (i, port) in body.ports.as_deref().unwrap_or_default().iter().enumerate() {
        if port
            .protocol
            .as_deref()
            .is_some_and(|p| !p.eq_ignore_ascii_case("TCP"))
        {
            continue;
        }
        if let Some(number) = port
            .port
            .and_then(|n| ctx.port(n, &format!("ports[{i}].port")))
        {
            ports.push((port.name.clone().filter(|n| !n.is_empty()), number));
        }
    }
    Some(EndpointSlice {
        meta: meta(object),
        service,
        endpoints,
        ports,
    })
}

fn convert_secret(object: &Object<k8s::SecretBody>, ctx: &mut Ctx<'_>) -> Option<Secret> {
    use base64::Engine as _;
    let body = &object.body;
    let mut data = BTreeMap::new();
    for (key, value) in body.data.iter().flatten() {
        // The API server stores base64 without line breaks; YAML written by
        // hand often wraps it.
        let compact: String = value.split_ascii_whitespace().collect();
        match base64::engine::general_purpose::STANDARD.decode(compact) {
            Ok(bytes) => {
                data.insert(key.clone(), bytes);
            }
            Err(err) => ctx.error(format!("data.{key}"), format!("invalid base64: {err}")),
        }
    }
    for (key, value) in body.string_data.iter().flatten() {
        data.insert(key.clone(), value.clone().into_bytes());
    }
    Some(Secret {
        meta: meta(object),
        type_: body.type_.clone().unwrap_or_else(|| "Opaque".to_owned()),
        data,
    })
}

fn convert_pod(object: &Object<k8s::PodBody>, ctx: &mut Ctx<'_>) -> Option<Pod> {
    let mut ips = Vec::new();
    if let Some(status) = &object.body.status {
        let listed = status.pod_ips.iter().flatten().filter_map(|p| p.ip.clone());
        for ip in status.pod_ip.clone().into_iter().chain(listed) {
            match ip.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) => ctx.error("status.podIP", format!("invalid IP address {ip:?}")),
            }
        }
    }
    Some(Pod {
        meta: meta(object),
        ips,
    })
}
