//! Compile stage: the validated model -> one immutable [`Snapshot`], by
//! Istio's rules for a gateway workload.
//!
//! 1. Gateways apply when their selector matches the workload's labels.
//! 2. A server's port number is a port of the gateway Service; the listener
//!    binds that port's targetPort and the kernel steers its nodePort.
//! 3. Plaintext HTTP servers on one bind port share the route configuration
//!    `http.<port>`; each VirtualService bound to a server's Gateway adds one
//!    virtual host per host in the intersection of its hosts and the
//!    server's (the more specific side wins); routes of several
//!    VirtualServices for one host are appended in Istio order, a catch-all
//!    ends the routes of its VirtualService and catch-alls sort last.
//! 4. A TCP server takes the first `tcp[]` route (VirtualService order)
//!    whose match passes.
//! 5. Clusters are named `outbound|<port>|<subset>|<fqdn>`, with endpoints
//!    from EndpointSlices (or ServiceEntry endpoints), filtered by subset.
//!
//! The compiler never fails: a config that cannot be served in part is
//! reported as a warning and the rest compiles.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::diag::{Diagnostic, Diagnostics};
use std::path::PathBuf;

use crate::model::{
    self, Destination, Gateway, Host, HttpAction, HttpMatch, Model, RouteDestination, Server,
    TargetPort, TlsMode, VirtualService,
};
use crate::snapshot::policy::ClusterPolicy;
use crate::snapshot::{
    CaSource, CertificateSource, ChainAction, ClientAuth, FilterChain, TlsContext, TlsListener,
    TlsVersion,
};
use crate::snapshot::{
    Cluster, Discovery, Endpoint, ForwardAction, GatewayIdentity, HeaderMatcher, Listener,
    ListenerKind, PathMatch, QueryParamMatcher, RedirectAction, Route, RouteAction, RouteConfig,
    RouteMatch, RouteOrigin, ServerRef, Snapshot, StringMatcher, TcpProxy, UpstreamProtocol,
    VirtualHost, VirtualHostIndex, WeightedCluster,
};
use crate::snapshot::{MirrorPolicy, RetryPolicy, RoutePolicy};

/// Istio's default upstream connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Compiles `model` for the gateway workload `gateway`. Warnings about
/// parts that cannot be served go to `diagnostics`.
pub fn compile(
    model: &Model,
    gateway: &GatewayIdentity,
    diagnostics: &mut Diagnostics,
) -> Snapshot {
    let mut pods = HashMap::new();
    let mut pod_ips = HashMap::new();
    for pod in &model.pods {
        let namespace = pod.meta.namespace.as_str();
        pods.entry((namespace, pod.meta.name.as_str()))
            .or_insert(pod);
        for ip in &pod.ips {
            pod_ips.entry((namespace, *ip)).or_insert(pod);
        }
    }
    let mut compiler = Compiler {
        model,
        identity: gateway,
        diagnostics,
        demanded: BTreeMap::new(),
        pods,
        pod_ips,
    };
    let listeners = compiler.listeners();
    let clusters = compiler.clusters();
    Snapshot {
        gateway: gateway.clone(),
        listeners,
        clusters,
        diagnostics: Diagnostics::default(),
    }
}

/// Whether a Gateway applies to the workload: its selector is a subset of
/// the workload's labels (an empty selector selects every workload).
pub fn gateway_applies(gateway: &Gateway, identity: &GatewayIdentity) -> bool {
    gateway
        .selector
        .iter()
        .all(|(k, v)| identity.labels.get(k) == Some(v))
}

/// The gateway Service: in the gateway namespace, with a non-empty selector
/// that the workload's labels satisfy. The first one by name wins.
pub fn gateway_service<'m>(
    model: &'m Model,
    identity: &GatewayIdentity,
) -> Option<&'m model::Service> {
    gateway_services(model, identity).into_iter().next()
}

/// The label that hands a Service's ports to ingressd (kube-proxy skips
/// Services that carry it with another proxy's name).
pub const SERVICE_PROXY_NAME: (&str, &str) =
    ("service.kubernetes.io/service-proxy-name", "ingressd");

/// Every Service in the gateway namespace whose selector matches the gateway
/// workload, the one used first: labelled [`SERVICE_PROXY_NAME`], then by
/// name. More than one is worth a warning (see `analyze`).
pub fn gateway_services<'m>(
    model: &'m Model,
    identity: &GatewayIdentity,
) -> Vec<&'m model::Service> {
    let mut candidates: Vec<&model::Service> = model
        .services
        .iter()
        .filter(|s| s.meta.namespace == identity.namespace)
        .filter(|s| {
            !s.selector.is_empty()
                && s.selector
                    .iter()
                    .all(|(k, v)| identity.labels.get(k) == Some(v))
        })
        .collect();
    let (label, value) = SERVICE_PROXY_NAME;
    candidates.sort_by_key(|s| {
        (
            s.meta.labels.get(label).map(String::as_str) != Some(value),
            s.meta.name.as_str(),
        )
    });
    candidates
}

/// Istio's intersection of a server's hosts and a VirtualService's hosts:
/// the resulting virtual host names, in VirtualService host order. Server
/// hosts restricted to another namespace are skipped.
pub fn matching_hosts(server: &Server, vs: &VirtualService) -> Vec<Host> {
    let mut out: Vec<Host> = Vec::new();
    for vs_host in &vs.hosts {
        // Of several overlapping server hosts, keep the most specific result.
        let best = server
            .hosts
            .iter()
            .filter(|h| h.admits_namespace(&vs.meta.namespace))
            .filter_map(|h| Host::intersect(&h.host, vs_host))
            .max_by_key(|h| (!h.is_wildcard(), h.as_str().len()));
        if let Some(host) = best
            && !out.contains(&host)
        {
            out.push(host);
        }
    }
    out
}

/// Protocol spoken to a Service port, as Istio derives it: `appProtocol`,
/// then the port name prefix.
pub fn service_port_protocol(name: Option<&str>, app_protocol: Option<&str>) -> UpstreamProtocol {
    let pick = |p: &str| -> Option<UpstreamProtocol> {
        let p = p.to_ascii_lowercase();
        let base = p.split('-').next().unwrap_or_default();
        match base {
            "http" if p.starts_with("http2") => Some(UpstreamProtocol::Http2),
            "http" => Some(UpstreamProtocol::Http1),
            "http2" | "grpc" | "h2c" => Some(UpstreamProtocol::Http2),
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(UpstreamProtocol::Tcp),
            "kubernetes.io/h2c" => Some(UpstreamProtocol::Http2),
            _ => None,
        }
    };
    app_protocol
        .and_then(pick)
        .or_else(|| name.and_then(pick))
        .unwrap_or(UpstreamProtocol::Tcp)
}

/// `h2UpgradePolicy: UPGRADE` turns an HTTP/1.1 cluster into an HTTP/2 one.
fn upgraded(protocol: UpstreamProtocol, policy: &ClusterPolicy) -> UpstreamProtocol {
    match protocol {
        UpstreamProtocol::Http1 if policy.limits.h2_upgrade => UpstreamProtocol::Http2,
        other => other,
    }
}

/// A cluster some route needs.
#[derive(Clone, Debug)]
struct ClusterDemand {
    host: String,
    port: u16,
    subset: String,
}

struct Compiler<'a> {
    model: &'a Model,
    identity: &'a GatewayIdentity,
    diagnostics: &'a mut Diagnostics,
    demanded: BTreeMap<String, ClusterDemand>,
    /// Pods by (namespace, name) and by (namespace, IP): a cluster's Pods
    /// can number in the thousands, looked up once per endpoint.
    pods: HashMap<(&'a str, &'a str), &'a model::Pod>,
    pod_ips: HashMap<(&'a str, IpAddr), &'a model::Pod>,
}

/// Servers grouped on one bind port.
struct PortGroup<'m> {
    bind: IpAddr,
    port: u16,
    service_port: u16,
    node_port: Option<u16>,
    class: PortClass,
    servers: Vec<(&'m Gateway, &'m Server)>,
}

/// What kind of listener a server needs; servers of one class (but TCP)
/// share a port, servers of different classes conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortClass {
    /// Plaintext HTTP: one route configuration for the port.
    Http,
    /// HTTPS and TLS: one filter chain per server (or per SNI route).
    Tls,
    /// Plain TCP: one server per port.
    Tcp,
}

impl<'a> Compiler<'a> {
    fn warn(&mut self, meta: &model::Meta, kind: &str, field: String, message: String) {
        self.diagnostics.push(
            Diagnostic::warning(&meta.source, message)
                .resource(format!("{kind} {}", meta.key()))
                .field(field),
        );
    }

    fn listeners(&mut self) -> Vec<Listener> {
        let model = self.model;
        let service = gateway_service(model, self.identity);
        let mut groups: Vec<PortGroup<'a>> = Vec::new();
        for gateway in model
            .gateways
            .iter()
            .filter(|g| gateway_applies(g, self.identity))
        {
            for server in &gateway.servers {
                let field = format!("spec.servers[{}]", server.index);
                let protocol = server.port.protocol;
                let class = if protocol.is_plain_http() {
                    PortClass::Http
                } else if protocol.requires_tls() {
                    match server.tls.as_ref().map(|t| t.mode) {
                        Some(TlsMode::AutoPassthrough | TlsMode::IstioMutual) => {
                            self.warn(&gateway.meta, "gateway", format!("{field}.tls.mode"),
                                "AUTO_PASSTHROUGH and ISTIO_MUTUAL are for mesh-internal (east-west) gateways and are not served here; this server is ignored".to_owned());
                            continue;
                        }
                        _ => PortClass::Tls,
                    }
                } else {
                    PortClass::Tcp
                };
                let (port, node_port) = match service
                    .and_then(|s| s.ports.iter().find(|p| p.port == server.port.number))
                {
                    Some(sp) => match &sp.target_port {
                        TargetPort::Number(n) => (*n, sp.node_port),
                        TargetPort::Name(name) => {
                            self.warn(&gateway.meta, "gateway", format!("{field}.port.number"), format!(
                                "the gateway Service port {} has a named targetPort {name:?}, which cannot be resolved without the gateway Pod; binding port {}",
                                sp.port, server.port.number));
                            (server.port.number, sp.node_port)
                        }
                    },
                    None => (server.port.number, None),
                };
                let bind = server.bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                match groups.iter_mut().find(|g| g.port == port && g.bind == bind) {
                    Some(group) if group.class == class && class != PortClass::Tcp => {
                        group.servers.push((gateway, server));
                    }
                    Some(group) => {
                        let (other_gw, other) = group.servers[0];
                        self.warn(&gateway.meta, "gateway", field, format!(
                            "port {port} conflicts with gateway {} spec.servers[{}] ({} on the same port); this server is ignored",
                            other_gw.meta.key(), other.index, other.port.protocol.as_str()));
                    }
                    None => groups.push(PortGroup {
                        bind,
                        port,
                        service_port: server.port.number,
                        node_port,
                        class,
                        servers: vec![(gateway, server)],
                    }),
                }
            }
        }
        groups.sort_by_key(|g| (g.port, g.bind));
        let mut listeners = Vec::new();
        for group in groups {
            let servers = group
                .servers
                .iter()
                .map(|(g, s)| ServerRef {
                    gateway: g.meta.key(),
                    index: s.index,
                    port_name: s.port.name.clone(),
                })
                .collect();
            let kind = match group.class {
                PortClass::Http => {
                    let name = match group.bind {
                        IpAddr::V4(ip) if ip.is_unspecified() => format!("http.{}", group.port),
                        bind => format!("http.{}.{bind}", group.port),
                    };
                    ListenerKind::Http(self.route_config(name, &group.servers, group.service_port))
                }
                PortClass::Tls => match self.tls_listener(&group) {
                    Some(tls) => ListenerKind::Tls(tls),
                    None => continue,
                },
                PortClass::Tcp => {
                    let (gateway, server) = group.servers[0];
                    match self.tcp_proxy(gateway, server) {
                        Some(proxy) => ListenerKind::Tcp(Some(proxy)),
                        None => {
                            self.warn(&gateway.meta, "gateway", format!("spec.servers[{}]", server.index), format!(
                            "no VirtualService tcp route matches this TCP server; port {} is not opened (as Istio omits the listener)",
                            group.port));
                            continue;
                        }
                    }
                }
            };
            listeners.push(Listener {
                name: format!("{}_{}", group.bind, group.port),
                address: group.bind,
                port: group.port,
                service_port: group.service_port,
                node_port: group.node_port,
                servers,
                kind,
            });
        }
        listeners
    }

    /// The route configuration `name` of HTTP servers sharing a port (or of
    /// one HTTPS server).
    fn route_config(
        &mut self,
        name: String,
        servers: &[(&'a Gateway, &'a Server)],
        service_port: u16,
    ) -> RouteConfig {
        let model = self.model;
        // hostname -> vhost, in creation order; sorted by name at the end.
        let mut vhosts: Vec<VirtualHost> = Vec::new();
        let mut by_host: HashMap<String, usize> = HashMap::new();
        for &(gateway, server) in servers {
            let gateway_name = gateway.meta.key();
            let redirect = server.port.protocol.is_plain_http()
                && server.tls.as_ref().is_some_and(|t| t.https_redirect);
            for vs in model
                .virtual_services
                .iter()
                .filter(|vs| vs.binds_to(&gateway_name))
            {
                let hosts = matching_hosts(server, vs);
                if hosts.is_empty() {
                    continue;
                }
                let routes = self.http_routes(vs, server.port.number, &gateway_name);
                for host in hosts {
                    let i = vhost_for(&mut vhosts, &mut by_host, host.as_str(), server.port.number);
                    let vhost = &mut vhosts[i];
                    vhost.routes.extend(routes.iter().cloned());
                    vhost.require_tls |= redirect;
                }
            }
            // Every host of an httpsRedirect server redirects, even the ones
            // no VirtualService covers.
            if redirect {
                for server_host in &server.hosts {
                    let i = vhost_for(
                        &mut vhosts,
                        &mut by_host,
                        server_host.host.as_str(),
                        server.port.number,
                    );
                    vhosts[i].require_tls = true;
                }
            }
        }
        if vhosts.is_empty() {
            // No VirtualService binds to any server of this port: every
            // request answers 404 (Envoy's NR on an empty route list).
            vhosts.push(VirtualHost {
                name: format!("blackhole:{service_port}"),
                domains: vec!["*".to_owned()],
                routes: Vec::new(),
                require_tls: false,
            });
        }
        for vhost in &mut vhosts {
            // Istio's SortVHostRoutes: catch-alls last, otherwise stable.
            let routes = std::mem::take(&mut vhost.routes);
            let (catch_all, specific): (Vec<Route>, Vec<Route>) =
                routes.into_iter().partition(is_catch_all_route);
            vhost.routes = specific.into_iter().chain(catch_all).collect();
        }
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        let index = VirtualHostIndex::build(&vhosts);
        RouteConfig {
            name,
            virtual_hosts: vhosts,
            index,
        }
    }

    /// The filter chains of HTTPS/TLS servers sharing a port, in server
    /// order. A server name claimed by an earlier chain is dropped from a
    /// later one (Envoy refuses duplicate SNI matches; Istio keeps the first).
    fn tls_listener(&mut self, group: &PortGroup<'a>) -> Option<TlsListener> {
        let mut chains: Vec<FilterChain> = Vec::new();
        for &(gateway, server) in &group.servers {
            let field = format!("spec.servers[{}]", server.index);
            let Some(tls) = server.tls.as_ref() else {
                continue;
            };
            let mut candidates: Vec<(FilterChain, &model::Meta, String, &str)> = Vec::new();
            match tls.mode {
                TlsMode::Passthrough => {
                    let found = self.passthrough_chains(gateway, server);
                    if found.is_empty() {
                        self.warn(&gateway.meta, "gateway", field.clone(), format!(
                            "no VirtualService tls route (sniHosts) matches this PASSTHROUGH server; it takes no connections on port {}",
                            group.port));
                    }
                    for (chain, vs, vs_field) in found {
                        candidates.push((chain, &vs.meta, vs_field, "virtualservice"));
                    }
                }
                TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual => {
                    let context = Arc::new(self.tls_context(gateway, server, tls));
                    let name = format!("{} {field}", gateway.meta.key());
                    let action = if server.port.protocol == model::Protocol::Https {
                        let routes = self.route_config(
                            https_route_name(gateway, server),
                            &[(gateway, server)],
                            server.port.number,
                        );
                        ChainAction::Http {
                            tls: context,
                            routes,
                        }
                    } else {
                        let proxy = self.tcp_proxy(gateway, server);
                        if proxy.is_none() {
                            self.warn(&gateway.meta, "gateway", field.clone(), format!(
                                "no VirtualService tcp route matches this TLS server; connections on port {} are closed after the handshake",
                                group.port));
                        }
                        ChainAction::Tcp {
                            tls: context,
                            proxy,
                        }
                    };
                    candidates.push((
                        FilterChain {
                            name,
                            server_names: server_names(server),
                            action,
                        },
                        &gateway.meta,
                        format!("{field}.hosts"),
                        "gateway",
                    ));
                }
                TlsMode::AutoPassthrough | TlsMode::IstioMutual => {}
            }
            for (mut chain, meta, cfield, kind) in candidates {
                let claimed = |n: &str, chains: &[FilterChain]| {
                    chains.iter().any(|c| c.server_names.iter().any(|m| m == n))
                };
                if chain.server_names.is_empty() {
                    if let Some(other) = chains.iter().find(|c| c.server_names.is_empty()) {
                        self.warn(meta, kind, cfield, format!(
                            "port {}: every server name is already taken by {}; this filter chain is dropped",
                            group.port, other.name));
                        continue;
                    }
                } else {
                    let (kept, dropped): (Vec<String>, Vec<String>) = chain
                        .server_names
                        .into_iter()
                        .partition(|n| !claimed(n, &chains));
                    if !dropped.is_empty() {
                        self.warn(meta, kind, cfield.clone(), format!(
                            "port {}: server name(s) {} already belong to an earlier filter chain; left out of this one",
                            group.port, dropped.join(", ")));
                    }
                    if kept.is_empty() {
                        continue;
                    }
                    chain.server_names = kept;
                }
                chains.push(chain);
            }
        }
        if chains.is_empty() {
            let (gateway, server) = group.servers[0];
            self.warn(
                &gateway.meta,
                "gateway",
                format!("spec.servers[{}]", server.index),
                format!(
                    "no filter chain can be built for port {}; it is not opened",
                    group.port
                ),
            );
            return None;
        }
        Some(TlsListener { chains })
    }

    /// Istio's `buildGatewayNetworkFiltersFromTLSRoutes`: one chain per
    /// `tls[].match` of a VirtualService bound to the server, its SNI hosts
    /// narrowed to the server's hosts.
    fn passthrough_chains(
        &mut self,
        gateway: &'a Gateway,
        server: &'a Server,
    ) -> Vec<(FilterChain, &'a VirtualService, String)> {
        let gateway_name = gateway.meta.key();
        let mut out = Vec::new();
        for vs in self.bound_virtual_services(gateway, server) {
            for route in &vs.tls {
                for m in &route.matches {
                    if !m.l4.passes(server.port.number, &gateway_name) {
                        continue;
                    }
                    let mut names: Vec<String> = Vec::new();
                    for sni in &m.sni_hosts {
                        for server_host in server
                            .hosts
                            .iter()
                            .filter(|h| h.admits_namespace(&vs.meta.namespace))
                        {
                            if let Some(host) = Host::intersect(&server_host.host, sni) {
                                let host = host.as_str().to_owned();
                                if !names.contains(&host) {
                                    names.push(host);
                                }
                            }
                        }
                    }
                    if names.is_empty() {
                        continue;
                    }
                    // `*` takes every name: a chain without server names.
                    if names.iter().any(|n| n == "*") {
                        names.clear();
                    }
                    let clusters = self.weighted_clusters(&route.destinations, server.port.number);
                    if clusters.is_empty() {
                        continue;
                    }
                    let field = format!("spec.tls[{}].match[{}]", route.index, m.index);
                    let stat_prefix = if clusters.len() == 1 {
                        clusters[0].name.clone()
                    } else {
                        format!("{}.tls", vs.meta.key())
                    };
                    out.push((
                        FilterChain {
                            name: format!("{} {field}", vs.meta.key()),
                            server_names: names,
                            action: ChainAction::Passthrough(TcpProxy {
                                clusters,
                                stat_prefix,
                                origin: RouteOrigin {
                                    virtual_service: vs.meta.key(),
                                    field: field.clone(),
                                },
                            }),
                        },
                        vs,
                        format!("{field}.sniHosts"),
                    ));
                }
            }
        }
        out
    }

    /// The TLS settings of a terminating server, with its certificate and CA
    /// resolved to files or Secret data (never read here: the daemon loads,
    /// validates and watches them).
    fn tls_context(
        &mut self,
        gateway: &'a Gateway,
        server: &'a Server,
        tls: &model::ServerTls,
    ) -> TlsContext {
        let field = format!("spec.servers[{}].tls", server.index);
        let client_auth = match tls.mode {
            TlsMode::Mutual => ClientAuth::Required,
            TlsMode::OptionalMutual => ClientAuth::Optional,
            _ => ClientAuth::None,
        };
        let (certificate, mut ca) = match tls.credential_name.as_deref().filter(|c| !c.is_empty()) {
            Some(credential) => self.credential(gateway, &field, credential, client_auth),
            None => (
                match (&tls.server_certificate, &tls.private_key) {
                    (Some(cert), Some(key)) => CertificateSource::Files {
                        cert: PathBuf::from(cert),
                        key: PathBuf::from(key),
                    },
                    _ => CertificateSource::Missing(
                        "serverCertificate and privateKey are required".to_owned(),
                    ),
                },
                tls.ca_certificates
                    .as_ref()
                    .map(|ca| CaSource::File(PathBuf::from(ca))),
            ),
        };
        if client_auth == ClientAuth::None {
            ca = None;
        } else if ca.is_none() {
            ca = Some(CaSource::Missing(
                "client certificates are asked for but no CA is configured".to_owned(),
            ));
        }
        let version = |v: Option<model::TlsVersion>, default: TlsVersion| match v {
            Some(model::TlsVersion::V1_2) => TlsVersion::V1_2,
            Some(model::TlsVersion::V1_3) => TlsVersion::V1_3,
            Some(model::TlsVersion::Auto) | None => default,
        };
        let alpn = if server.port.protocol == model::Protocol::Https {
            vec!["h2".to_owned(), "http/1.1".to_owned()]
        } else {
            Vec::new()
        };
        TlsContext {
            name: format!("{} spec.servers[{}]", gateway.meta.key(), server.index),
            client_auth,
            certificate,
            ca,
            subject_alt_names: tls.subject_alt_names.clone(),
            min_version: version(tls.min_protocol_version, TlsVersion::V1_2),
            max_version: version(tls.max_protocol_version, TlsVersion::V1_3),
            cipher_suites: tls.cipher_suites.clone(),
            alpn,
        }
    }

    /// Istio's credentialName lookup: a Secret in the gateway workload's
    /// namespace with `tls.crt`/`tls.key` (type kubernetes.io/tls) or
    /// `cert`/`key` (generic), the CA in `ca.crt`/`cacert` of the same
    /// Secret or of `<name>-cacert`.
    fn credential(
        &mut self,
        gateway: &'a Gateway,
        field: &str,
        credential: &str,
        client_auth: ClientAuth,
    ) -> (CertificateSource, Option<CaSource>) {
        let namespace = self.identity.namespace.clone();
        let find = |name: &str| {
            self.model
                .secrets
                .iter()
                .find(|s| s.meta.namespace == namespace && s.meta.name == name)
        };
        let origin = format!("{namespace}/{credential}");
        let ca_of = |secret: &model::Secret| {
            ["ca.crt", "cacert"]
                .iter()
                .find_map(|k| secret.data.get(*k))
                .map(|pem| CaSource::Secret {
                    origin: secret.meta.key(),
                    pem: pem.clone(),
                })
        };
        let Some(secret) = find(credential) else {
            self.warn(&gateway.meta, "gateway", format!("{field}.credentialName"), format!(
                "Secret {origin} not found (credentialName Secrets are read from the gateway namespace {namespace}); handshakes for this server fail until it exists"));
            return (
                CertificateSource::Missing(format!("Secret {origin} not found")),
                None,
            );
        };
        let pair = [("tls.crt", "tls.key"), ("cert", "key")]
            .iter()
            .find_map(|(c, k)| Some((secret.data.get(*c)?, secret.data.get(*k)?)));
        let certificate = match pair {
            Some((cert, key)) => CertificateSource::Secret {
                origin: origin.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            None => {
                self.warn(&gateway.meta, "gateway", format!("{field}.credentialName"), format!(
                    "Secret {origin} has neither tls.crt/tls.key nor cert/key; handshakes for this server fail"));
                CertificateSource::Missing(format!("Secret {origin} has no certificate and key"))
            }
        };
        let ca = if client_auth == ClientAuth::None {
            None
        } else {
            let ca =
                ca_of(secret).or_else(|| find(&format!("{credential}-cacert")).and_then(ca_of));
            if ca.is_none() {
                self.warn(&gateway.meta, "gateway", format!("{field}.credentialName"), format!(
                    "no CA for client certificates: neither Secret {origin} (ca.crt or cacert) nor {origin}-cacert has one; handshakes for this server fail"));
            }
            ca
        };
        (certificate, ca)
    }

    /// The Envoy routes of one VirtualService for one gateway server, as
    /// Istio's `BuildHTTPRoutesForVirtualService`.
    fn http_routes(
        &mut self,
        vs: &VirtualService,
        server_port: u16,
        gateway_name: &str,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        for route in &vs.http {
            let mut catch_all = false;
            if let HttpAction::Delegate { name, namespace } = &route.action {
                catch_all = route.matches.is_empty();
                let applicable: Vec<&HttpMatch> = route
                    .matches
                    .iter()
                    .filter(|m| match_applies(m, server_port, gateway_name))
                    .collect();
                if route.matches.is_empty() || !applicable.is_empty() {
                    let roots: Vec<Option<&HttpMatch>> = if route.matches.is_empty() {
                        vec![None]
                    } else {
                        applicable.into_iter().map(Some).collect()
                    };
                    self.delegated_routes(
                        vs,
                        route,
                        name,
                        namespace,
                        &roots,
                        server_port,
                        &mut out,
                    );
                }
            } else if route.matches.is_empty() {
                if let Some(r) = self.translate_route(vs, route, None, server_port) {
                    out.push(r);
                }
                catch_all = true;
            } else {
                for m in &route.matches {
                    if !match_applies(m, server_port, gateway_name) {
                        continue;
                    }
                    if let Some(r) = self.translate_route(vs, route, Some(m), server_port) {
                        out.push(r);
                        if m.is_catch_all() {
                            catch_all = true;
                            break;
                        }
                    }
                }
            }
            if catch_all {
                break;
            }
        }
        out
    }

    /// Istio's delegation (one level): the routes of the delegate
    /// VirtualService `namespace/name`, each of their matches merged with
    /// each applicable match of the root route; a pair that cannot both
    /// hold is left out.
    #[allow(clippy::too_many_arguments)]
    fn delegated_routes(
        &mut self,
        root: &VirtualService,
        route: &model::HttpRoute,
        name: &str,
        namespace: &str,
        roots: &[Option<&HttpMatch>],
        server_port: u16,
        out: &mut Vec<Route>,
    ) {
        let model = self.model;
        let field = format!("spec.http[{}].delegate", route.index);
        let Some(child) = model
            .virtual_services
            .iter()
            .find(|v| v.meta.name == name && v.meta.namespace == namespace)
        else {
            self.warn(
                &root.meta,
                "virtualservice",
                field,
                format!(
                    "delegate VirtualService {namespace}/{name} not found; this route is left out"
                ),
            );
            return;
        };
        if !child.hosts.is_empty() || !child.gateways.is_empty() {
            self.warn(&root.meta, "virtualservice", field, format!(
                "{namespace}/{name} has hosts or gateways, so it cannot be a delegate (as in Istio); this route is left out"));
            return;
        }
        for child_route in &child.http {
            if matches!(child_route.action, HttpAction::Delegate { .. }) {
                self.warn(
                    &child.meta,
                    "virtualservice",
                    format!("spec.http[{}].delegate", child_route.index),
                    "delegation is one level deep (as in Istio); this nested delegate is left out"
                        .to_owned(),
                );
                continue;
            }
            let children: Vec<Option<&HttpMatch>> = if child_route.matches.is_empty() {
                vec![None]
            } else {
                child_route.matches.iter().map(Some).collect()
            };
            let child_route = &inherit_route_fields(route, child_route);
            for &root_match in roots {
                for &child_match in &children {
                    match merge_delegate_match(root_match, child_match) {
                        Ok(merged) => {
                            if let Some(r) = self.translate_route(
                                child,
                                child_route,
                                merged.as_ref(),
                                server_port,
                            ) {
                                out.push(r);
                            }
                        }
                        Err(reason) => {
                            let cfield = match child_match {
                                Some(m) => {
                                    format!("spec.http[{}].match[{}]", child_route.index, m.index)
                                }
                                None => format!("spec.http[{}]", child_route.index),
                            };
                            self.warn(&child.meta, "virtualservice", cfield, format!(
                                "does not fit the delegating route of {} spec.http[{}] ({reason}); left out",
                                root.meta.key(), route.index));
                        }
                    }
                }
            }
        }
    }

    fn translate_route(
        &mut self,
        vs: &VirtualService,
        route: &model::HttpRoute,
        m: Option<&HttpMatch>,
        server_port: u16,
    ) -> Option<Route> {
        let field = match m {
            Some(m) => format!("spec.http[{}].match[{}]", route.index, m.index),
            None => format!("spec.http[{}]", route.index),
        };
        let action = match &route.action {
            HttpAction::Route(destinations) => {
                let clusters = self.weighted_clusters(destinations, server_port);
                if clusters.is_empty() {
                    return None;
                }
                let mirrors = route
                    .mirrors
                    .iter()
                    .map(|(destination, percent)| MirrorPolicy {
                        cluster: self.demand_cluster(destination, server_port),
                        percent: *percent,
                    })
                    .collect();
                let rewrite = route.rewrite.as_ref();
                RouteAction::Forward(ForwardAction {
                    clusters,
                    timeout: route.timeout,
                    prefix_rewrite: rewrite.and_then(|r| r.uri.clone()),
                    regex_rewrite: rewrite.and_then(|r| r.uri_regex.clone()),
                    host_rewrite: rewrite
                        .and_then(|r| r.authority.clone())
                        .or_else(|| route.headers.as_ref().and_then(|h| h.host_rewrite.clone())),
                    retry: route
                        .retries
                        .clone()
                        .unwrap_or_else(RetryPolicy::istio_default),
                    mirrors,
                })
            }
            HttpAction::Redirect(r) => RouteAction::Redirect(RedirectAction {
                status: r.code,
                scheme: r.scheme.clone(),
                authority: r.authority.clone(),
                port: r.port,
                derive_port: r.derive_port,
                path: r.uri.clone(),
            }),
            HttpAction::DirectResponse { status, body } => RouteAction::DirectResponse {
                status: *status,
                body: bytes::Bytes::from(body.clone()),
            },
            // Expanded by `http_routes`; a delegate inside a delegate is
            // reported there.
            HttpAction::Delegate { .. } => return None,
        };
        let mut name = route.name.clone();
        if let Some(m) = m.filter(|m| !m.name.is_empty()) {
            name = format!("{name}.{}", m.name);
        }
        Some(Route {
            name,
            matcher: m.map(route_match).unwrap_or_default(),
            action,
            policy: Arc::new(RoutePolicy {
                headers: route.headers.clone(),
                fault: route.fault.clone(),
                cors: route.cors.clone(),
            }),
            origin: Some(RouteOrigin {
                virtual_service: vs.meta.key(),
                field,
            }),
        })
    }

    fn weighted_clusters(
        &mut self,
        destinations: &[RouteDestination],
        listener_port: u16,
    ) -> Vec<WeightedCluster> {
        destinations
            .iter()
            .filter(|d| d.weight > 0)
            .map(|d| WeightedCluster {
                name: self.demand_cluster(&d.destination, listener_port),
                weight: d.weight,
                headers: d.headers.clone(),
            })
            .collect()
    }

    /// Istio's `GetDestinationCluster`: the destination's port, else the
    /// Service's only port, else the listener's port.
    fn demand_cluster(&mut self, destination: &Destination, listener_port: u16) -> String {
        let port = destination.port.unwrap_or_else(|| {
            let ports = self.service_ports(&destination.host);
            if ports.len() == 1 {
                ports[0]
            } else {
                listener_port
            }
        });
        let subset = destination.subset.clone().unwrap_or_default();
        let name = format!("outbound|{port}|{subset}|{}", destination.host);
        self.demanded.entry(name.clone()).or_insert(ClusterDemand {
            host: destination.host.clone(),
            port,
            subset,
        });
        name
    }

    fn service_ports(&self, host: &str) -> Vec<u16> {
        if let Some(service) = self.model.services.iter().find(|s| s.fqdn() == host) {
            return service.ports.iter().map(|p| p.port).collect();
        }
        if let Some(se) = self
            .model
            .service_entries
            .iter()
            .find(|se| se.hosts.iter().any(|h| h.as_str() == host))
        {
            return se.ports.iter().map(|p| p.number).collect();
        }
        Vec::new()
    }

    /// The VirtualServices bound to `gateway` with a host in common with
    /// `server`, in Istio order.
    fn bound_virtual_services(
        &self,
        gateway: &'a Gateway,
        server: &'a Server,
    ) -> impl Iterator<Item = &'a VirtualService> + use<'a> {
        let gateway_name = gateway.meta.key();
        self.model
            .virtual_services
            .iter()
            .filter(move |vs| vs.binds_to(&gateway_name) && !matching_hosts(server, vs).is_empty())
    }

    /// The TCP proxy of a TCP server (or a terminating TLS server): the
    /// first `tcp[]` route whose match passes.
    fn tcp_proxy(&mut self, gateway: &'a Gateway, server: &'a Server) -> Option<TcpProxy> {
        let gateway_name = gateway.meta.key();
        for vs in self.bound_virtual_services(gateway, server) {
            for route in &vs.tcp {
                let matched = route.matches.is_empty()
                    || route
                        .matches
                        .iter()
                        .any(|m| m.passes(server.port.number, &gateway_name));
                if !matched {
                    continue;
                }
                let clusters = self.weighted_clusters(&route.destinations, server.port.number);
                if clusters.is_empty() {
                    continue;
                }
                let stat_prefix = if clusters.len() == 1 {
                    clusters[0].name.clone()
                } else {
                    format!("{}.tcp", vs.meta.key())
                };
                return Some(TcpProxy {
                    clusters,
                    stat_prefix,
                    origin: RouteOrigin {
                        virtual_service: vs.meta.key(),
                        field: format!("spec.tcp[{}]", route.index),
                    },
                });
            }
        }
        None
    }

    /// Builds every demanded cluster that has a Service or ServiceEntry
    /// behind it. A cluster that cannot be built is absent: requests routed
    /// to it answer 503 (no cluster), as in Envoy.
    fn clusters(&mut self) -> BTreeMap<String, Arc<Cluster>> {
        let model = self.model;
        let mut out = BTreeMap::new();
        for (name, demand) in std::mem::take(&mut self.demanded) {
            let cluster =
                if let Some(service) = model.services.iter().find(|s| s.fqdn() == demand.host) {
                    self.service_cluster(&name, &demand, service)
                } else if let Some(se) = model
                    .service_entries
                    .iter()
                    .find(|se| se.hosts.iter().any(|h| h.as_str() == demand.host))
                {
                    self.service_entry_cluster(&name, &demand, se)
                } else {
                    None
                };
            if let Some(cluster) = cluster {
                out.insert(name, Arc::new(cluster));
            }
        }
        out
    }

    /// The merged `trafficPolicy` of a cluster and its connect timeout: the
    /// first DestinationRule for the host with a top-level policy, its
    /// `portLevelSettings` for the port, then the subset's policy and the
    /// subset's port-level settings, each overriding what it sets.
    fn cluster_policy(&self, demand: &ClusterDemand) -> (ClusterPolicy, Duration) {
        let rules = || {
            self.model
                .destination_rules
                .iter()
                .filter(|dr| dr.host.as_str() == demand.host)
        };
        let top = rules()
            .find_map(|dr| dr.policy.as_ref())
            .map(|p| p.for_port(demand.port))
            .unwrap_or_default();
        let merged = match rules()
            .flat_map(|dr| dr.subsets.iter())
            .find(|s| !demand.subset.is_empty() && s.name == demand.subset)
            .and_then(|s| s.policy.as_ref())
        {
            Some(subset) => top.overridden_by(&subset.for_port(demand.port)),
            None => top,
        };
        (
            ClusterPolicy {
                lb: merged.lb.unwrap_or_default(),
                limits: merged.limits.unwrap_or_default(),
                outlier: merged.outlier,
            },
            merged.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )
    }

    /// The subset's labels, or `None` when the subset is not defined (the
    /// cluster then does not exist). The empty subset has no labels.
    fn subset_labels(&self, demand: &ClusterDemand) -> Option<BTreeMap<String, String>> {
        if demand.subset.is_empty() {
            return Some(BTreeMap::new());
        }
        // The first DestinationRule for the host that defines the subset wins.
        self.model
            .destination_rules
            .iter()
            .filter(|dr| dr.host.as_str() == demand.host)
            .flat_map(|dr| dr.subsets.iter())
            .find(|s| s.name == demand.subset)
            .map(|s| s.labels.clone())
    }

    fn service_cluster(
        &mut self,
        name: &str,
        demand: &ClusterDemand,
        service: &model::Service,
    ) -> Option<Cluster> {
        let port = service.ports.iter().find(|p| p.port == demand.port)?;
        let labels = self.subset_labels(demand)?;
        let (policy, connect_timeout) = self.cluster_policy(demand);
        let mut endpoints = Vec::new();
        let slices = self.model.endpoint_slices.iter().filter(|s| {
            s.meta.namespace == service.meta.namespace && s.service == service.meta.name
        });
        for slice in slices {
            // Slice ports carry the Service port's name (unnamed for a lone unnamed port).
            let Some(&(_, target)) = slice.ports.iter().find(|(n, _)| *n == port.name) else {
                continue;
            };
            for ep in &slice.endpoints {
                // Not ready and not serving: not an endpoint at all. Serving
                // but terminating: kept, draining (no new connections).
                if !ep.ready && !ep.serving {
                    continue;
                }
                for &address in &ep.addresses {
                    let pod = self.pod_for(&slice.meta.namespace, ep.pod.as_deref(), address);
                    if !labels
                        .iter()
                        .all(|(k, v)| pod.is_some_and(|p| p.meta.labels.get(k) == Some(v)))
                    {
                        continue;
                    }
                    endpoints.push(Endpoint {
                        address: SocketAddr::new(address, target),
                        serving: ep.ready,
                        target: pod.map(|p| p.meta.key()).or_else(|| {
                            ep.pod
                                .as_ref()
                                .map(|name| format!("{}/{name}", slice.meta.namespace))
                        }),
                    });
                }
            }
        }
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        Some(Cluster {
            name: name.to_owned(),
            host: demand.host.clone(),
            port: demand.port,
            subset: demand.subset.clone(),
            discovery: Discovery::Service {
                namespace: service.meta.namespace.clone(),
                name: service.meta.name.clone(),
            },
            endpoints,
            protocol: upgraded(
                service_port_protocol(port.name.as_deref(), port.app_protocol.as_deref()),
                &policy,
            ),
            connect_timeout,
            policy,
        })
    }

    fn pod_for(
        &self,
        namespace: &str,
        name: Option<&str>,
        address: IpAddr,
    ) -> Option<&'a model::Pod> {
        name.and_then(|name| self.pods.get(&(namespace, name)))
            .or_else(|| self.pod_ips.get(&(namespace, address)))
            .copied()
    }

    fn service_entry_cluster(
        &mut self,
        name: &str,
        demand: &ClusterDemand,
        se: &model::ServiceEntry,
    ) -> Option<Cluster> {
        let port = se.ports.iter().find(|p| p.number == demand.port)?;
        let labels = self.subset_labels(demand)?;
        let (policy, connect_timeout) = self.cluster_policy(demand);
        let mut endpoints: Vec<Endpoint> = se
            .endpoints
            .iter()
            .filter(|ep| labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v)))
            .map(|ep| {
                let target = ep
                    .ports
                    .get(&port.name)
                    .copied()
                    .or(port.target_port)
                    .unwrap_or(port.number);
                Endpoint {
                    address: SocketAddr::new(ep.address, target),
                    serving: true,
                    target: None,
                }
            })
            .collect();
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        Some(Cluster {
            name: name.to_owned(),
            host: demand.host.clone(),
            port: demand.port,
            subset: demand.subset.clone(),
            discovery: Discovery::ServiceEntry {
                namespace: se.meta.namespace.clone(),
                name: se.meta.name.clone(),
            },
            endpoints,
            protocol: upgraded(
                service_port_protocol(Some(&port.name), port.protocol.as_deref()),
                &policy,
            ),
            connect_timeout,
            policy,
        })
    }
}

/// Istio's mergeHTTPRoute: a delegate route keeps what it sets and takes
/// the rest (rewrite, timeout, retries, fault, mirrors, CORS, headers) from
/// the delegating route; the names join as `root-delegate`.
fn inherit_route_fields(root: &model::HttpRoute, child: &model::HttpRoute) -> model::HttpRoute {
    let mut merged = child.clone();
    merged.name = match (root.name.is_empty(), child.name.is_empty()) {
        (false, false) => format!("{}-{}", root.name, child.name),
        (false, true) => root.name.clone(),
        _ => child.name.clone(),
    };
    if merged.rewrite.is_none() {
        merged.rewrite = root.rewrite.clone();
    }
    if merged.timeout.is_none() {
        merged.timeout = root.timeout;
    }
    if merged.retries.is_none() {
        merged.retries = root.retries.clone();
    }
    if merged.fault.is_none() {
        merged.fault = root.fault.clone();
    }
    if merged.mirrors.is_empty() {
        merged.mirrors = root.mirrors.clone();
    }
    if merged.cors.is_none() {
        merged.cors = root.cors.clone();
    }
    if merged.headers.is_none() {
        merged.headers = root.headers.clone();
    }
    merged
}

/// Whether a match can apply at this gateway server: its `gateways` and
/// `port` conditions, and no source conditions (a gateway has no source).
fn match_applies(m: &HttpMatch, server_port: u16, gateway_name: &str) -> bool {
    (m.gateways.is_empty() || m.gateways.iter().any(|g| g == gateway_name))
        && m.port.is_none_or(|p| p == server_port)
        && !m.has_source_conditions
}

/// Istio's merge of a delegating route's match with a delegate's match:
/// the delegate's conditions, with the root's filling what it leaves
/// unset; a delegate uri must stay within the root's (a prefix inside the
/// root prefix, or the same exact path); the same condition set two
/// different ways is a conflict.
fn merge_delegate_match(
    root: Option<&HttpMatch>,
    child: Option<&HttpMatch>,
) -> Result<Option<HttpMatch>, String> {
    let (root, child) = match (root, child) {
        (None, None) => return Ok(None),
        (Some(r), None) => return Ok(Some(r.clone())),
        (None, Some(c)) => return Ok(Some(c.clone())),
        (Some(r), Some(c)) => (r, c),
    };
    let mut merged = child.clone();
    merged.uri = match (&root.uri, &child.uri) {
        (None, c) => c.clone(),
        (r, None) => r.clone(),
        (Some(StringMatcher::Prefix(r)), Some(c @ StringMatcher::Prefix(p)))
        | (Some(StringMatcher::Prefix(r)), Some(c @ StringMatcher::Exact(p)))
            if p.starts_with(r.as_str()) =>
        {
            Some(c.clone())
        }
        (Some(StringMatcher::Exact(r)), Some(c @ StringMatcher::Exact(p))) if r == p => {
            Some(c.clone())
        }
        (Some(r), Some(c)) => {
            return Err(format!(
                "uri {} is not within {}",
                matcher_text(c),
                matcher_text(r)
            ));
        }
    };
    for (name, r, c) in [
        ("method", &root.method, &mut merged.method),
        ("authority", &root.authority, &mut merged.authority),
        ("scheme", &root.scheme, &mut merged.scheme),
    ] {
        match (r, c.as_ref()) {
            (Some(r), None) => *c = Some(r.clone()),
            (Some(r), Some(cv)) if matcher_text(r) != matcher_text(cv) => {
                return Err(format!("{name} conflicts"));
            }
            _ => {}
        }
    }
    for (r, c) in [
        (&root.headers, &mut merged.headers),
        (&root.without_headers, &mut merged.without_headers),
        (&root.query_params, &mut merged.query_params),
    ] {
        for (key, value) in r {
            match c.iter().find(|(k, _)| k == key) {
                Some((_, existing)) if matcher_text(existing) != matcher_text(value) => {
                    return Err(format!("condition on {key} conflicts"));
                }
                Some(_) => {}
                None => c.push((key.clone(), value.clone())),
            }
        }
    }
    merged.ignore_uri_case |= root.ignore_uri_case;
    merged.port = merged.port.or(root.port);
    if merged.gateways.is_empty() {
        merged.gateways = root.gateways.clone();
    }
    if merged.name.is_empty() {
        merged.name = root.name.clone();
    }
    Ok(Some(merged))
}

fn matcher_text(m: &StringMatcher) -> String {
    match m {
        StringMatcher::Exact(s) => format!("exact {s:?}"),
        StringMatcher::Prefix(s) => format!("prefix {s:?}"),
        StringMatcher::Regex(p) => format!("regex {:?}", p.source),
        StringMatcher::Present => "present".to_owned(),
    }
}

/// Istio's route configuration name of an HTTPS server:
/// `https.<port>.<port name>.<gateway>.<namespace>`.
fn https_route_name(gateway: &Gateway, server: &Server) -> String {
    let mut name = format!(
        "https.{}.{}.{}.{}",
        server.port.number, server.port.name, gateway.meta.name, gateway.meta.namespace
    );
    if let Some(bind) = server.bind {
        name = format!("{name}.{bind}");
    }
    name
}

/// The SNI names of a terminating server: its hosts without namespaces;
/// none (any name, or no SNI) when a host is `*`.
fn server_names(server: &Server) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for h in &server.hosts {
        let name = h.host.as_str();
        if name == "*" {
            return Vec::new();
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// The index of the virtual host for `host`, created empty when new.
/// Istio names it `<host>:<server port>`; its only domain is the host
/// (the route configuration ignores the port in `Host`).
fn vhost_for(
    vhosts: &mut Vec<VirtualHost>,
    by_host: &mut HashMap<String, usize>,
    host: &str,
    server_port: u16,
) -> usize {
    *by_host.entry(host.to_owned()).or_insert_with(|| {
        vhosts.push(VirtualHost {
            name: format!("{host}:{server_port}"),
            domains: vec![host.to_owned()],
            routes: Vec::new(),
            require_tls: false,
        });
        vhosts.len() - 1
    })
}

/// Envoy route match for an Istio match: method, authority and scheme
/// become pseudo-header matchers, as Istio translates them.
fn route_match(m: &HttpMatch) -> RouteMatch {
    let path = match &m.uri {
        None => PathMatch::default(),
        Some(StringMatcher::Exact(s)) => PathMatch::Exact(s.clone()),
        Some(StringMatcher::Prefix(s)) => PathMatch::Prefix(s.clone()),
        Some(StringMatcher::Regex(p)) => PathMatch::Regex(p.clone()),
        Some(StringMatcher::Present) => PathMatch::default(),
    };
    let mut headers = Vec::new();
    for (name, matcher) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(kind) = matcher {
            headers.push(HeaderMatcher {
                name: name.to_owned(),
                kind: kind.clone(),
                invert: false,
            });
        }
    }
    headers.extend(m.headers.iter().map(|(name, kind)| HeaderMatcher {
        name: name.clone(),
        kind: kind.clone(),
        invert: false,
    }));
    headers.extend(m.without_headers.iter().map(|(name, kind)| HeaderMatcher {
        name: name.clone(),
        kind: kind.clone(),
        invert: true,
    }));
    RouteMatch {
        path,
        ignore_case: m.ignore_uri_case,
        headers,
        query_params: m
            .query_params
            .iter()
            .map(|(name, kind)| QueryParamMatcher {
                name: name.clone(),
                kind: kind.clone(),
            })
            .collect(),
    }
}

/// Istio's `isCatchAllRoute` on an Envoy route: prefix `/` and no header or
/// query conditions.
fn is_catch_all_route(route: &Route) -> bool {
    matches!(&route.matcher.path, PathMatch::Prefix(p) if p == "/")
        && route.matcher.headers.is_empty()
        && route.matcher.query_params.is_empty()
}
