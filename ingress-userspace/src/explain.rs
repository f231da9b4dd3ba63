//! Consumer: `ingressd explain`, where one request would go.
//!
//! It walks the same snapshot with the same selection functions as the
//! proxy (`RouteConfig::select_virtual_host`, `VirtualHost::select_route`),
//! so its answer cannot disagree with the data path. The answer is one JSON
//! object: `listener`, `route_config`, `virtual_host`, `route`, `cluster`,
//! `endpoints`, and `error` when the request would not reach a backend;
//! for a steered nodePort or a TCP port forwarded in the kernel also
//! `kernel` (see `kernel_plan::explain_port`).

use http::HeaderMap;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::snapshot::{
    ChainAction, ClientAuth, Cluster, Listener, ListenerKind, RequestAttributes, RouteAction,
    RouteConfig, Snapshot, TcpProxy, WeightedCluster,
};

/// The request to explain.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Query {
    /// A bind port, a gateway Service port or a nodePort.
    pub port: u16,
    /// `Host`/`:authority`; absent matches only a `*` virtual host.
    pub host: Option<String>,
    /// Path and query; `/` when absent.
    pub path: Option<String>,
    /// `GET` when absent.
    pub method: Option<String>,
    /// `http`, `http2` or `tcp`; default from the listener.
    pub protocol: Option<String>,
    /// The request arrives over TLS.
    pub tls: bool,
    /// The SNI of the TLS handshake.
    pub sni: Option<String>,
    /// Extra request headers (`name: value`).
    pub headers: Vec<(String, String)>,
}

/// Why a request would not reach a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExplainError {
    /// No listener for the port: the connection is refused.
    NoListener,
    /// No virtual host for the host: 404 (NR).
    NoVirtualHost,
    /// A virtual host, but no route matches: 404 (NR).
    NoRoute,
    /// The virtual host requires TLS: 301 to https.
    TlsRedirect,
    /// The route answers itself (`directResponse`).
    DirectResponse,
    /// The route answers with a redirect (`redirect`).
    Redirect,
    /// The route's cluster does not exist (no Service/ServiceEntry, port or
    /// subset): 503 (NC).
    ClusterNotFound,
    /// The cluster has no serving endpoint: 503 (UH).
    NoHealthyUpstream,
    /// The protocol asked for is not what the listener serves.
    ProtocolMismatch,
    /// A TLS listener has no filter chain for the SNI: the handshake fails
    /// (alert `unrecognized_name`).
    NoFilterChain,
}

/// One JSON object describing where `query` goes in `snapshot`.
pub fn explain(snapshot: &Snapshot, query: &Query) -> Value {
    let mut out = Map::new();
    out.insert(
        "request".into(),
        serde_json::to_value(query).unwrap_or(Value::Null),
    );
    let error = explain_into(snapshot, query, &mut out);
    // The kernel path of a nodePort or forwarded TCP port, from the plan of
    // this same snapshot (ids as a fresh daemon would assign them).
    let plan = crate::kernel_plan::plan(
        snapshot,
        &crate::kernel_plan::Ids::default(),
        crate::kernel_plan::Limits::default(),
    );
    if let Some(kernel) = crate::kernel_plan::explain_port(&plan, query.port) {
        out.insert("kernel".into(), kernel);
    }
    out.insert(
        "error".into(),
        serde_json::to_value(error).unwrap_or(Value::Null),
    );
    Value::Object(out)
}

fn explain_into(
    snapshot: &Snapshot,
    query: &Query,
    out: &mut Map<String, Value>,
) -> Option<ExplainError> {
    for key in [
        "listener",
        "route_config",
        "virtual_host",
        "route",
        "cluster",
        "endpoints",
    ] {
        out.insert(key.into(), Value::Null);
    }
    let Some(listener) = snapshot.listener_for_port(query.port) else {
        return Some(ExplainError::NoListener);
    };
    out.insert("listener".into(), listener_json(listener, query.port));
    match &listener.kind {
        ListenerKind::Tcp(proxy) => tcp_into(snapshot, proxy.as_ref(), query, out),
        ListenerKind::Http(rc) => http_into(snapshot, rc, query, query.tls, out),
        ListenerKind::Tls(tls) => {
            // curl and browsers send the host as SNI.
            let sni = query
                .sni
                .as_deref()
                .or(query.host.as_deref())
                .map(str::to_ascii_lowercase);
            let Some(chain) = tls.select(sni.as_deref()) else {
                return Some(ExplainError::NoFilterChain);
            };
            let mode = match &chain.action {
                ChainAction::Http { .. } => "terminate_http",
                ChainAction::Tcp { .. } => "terminate_tcp",
                ChainAction::Passthrough(_) => "passthrough",
            };
            let mut chain_json = json!({
                "name": chain.name,
                "server_names": chain.server_names,
                "mode": mode,
            });
            if let Some(context) = chain.action.tls_context() {
                chain_json["certificate"] = context.certificate.sds_name().into();
                chain_json["client_certificate"] = match context.client_auth {
                    ClientAuth::None => "none",
                    ClientAuth::Required => "required",
                    ClientAuth::Optional => "optional",
                }
                .into();
                chain_json["alpn"] = json!(context.alpn);
            }
            out.insert("filter_chain".into(), chain_json);
            match &chain.action {
                ChainAction::Http { routes, .. } => http_into(snapshot, routes, query, true, out),
                ChainAction::Tcp { proxy, .. } => tcp_into(snapshot, proxy.as_ref(), query, out),
                ChainAction::Passthrough(proxy) => tcp_into(snapshot, Some(proxy), query, out),
            }
        }
    }
}

fn tcp_into(
    snapshot: &Snapshot,
    proxy: Option<&TcpProxy>,
    query: &Query,
    out: &mut Map<String, Value>,
) -> Option<ExplainError> {
    if query
        .protocol
        .as_deref()
        .is_some_and(|p| p.starts_with("http"))
    {
        return Some(ExplainError::ProtocolMismatch);
    }
    let Some(proxy) = proxy else {
        return Some(ExplainError::NoRoute);
    };
    out.insert(
        "route".into(),
        json!({
            "virtual_service": proxy.origin.virtual_service,
            "field": proxy.origin.field,
            "stat_prefix": proxy.stat_prefix,
        }),
    );
    clusters_into(snapshot, &proxy.clusters, out)
}

fn http_into(
    snapshot: &Snapshot,
    rc: &RouteConfig,
    query: &Query,
    tls: bool,
    out: &mut Map<String, Value>,
) -> Option<ExplainError> {
    if query.protocol.as_deref() == Some("tcp") {
        return Some(ExplainError::ProtocolMismatch);
    }
    out.insert("route_config".into(), rc.name.clone().into());
    let host = query.host.as_deref().unwrap_or_default();
    let Some(vhost) = rc.select_virtual_host(host) else {
        return Some(ExplainError::NoVirtualHost);
    };
    out.insert(
        "virtual_host".into(),
        json!({ "name": vhost.name, "domains": vhost.domains }),
    );
    if vhost.require_tls && !tls {
        return Some(ExplainError::TlsRedirect);
    }
    let headers = build_headers(&query.headers);
    let request = RequestAttributes {
        method: query.method.as_deref().unwrap_or("GET"),
        scheme: if tls { "https" } else { "http" },
        authority: host,
        path: query.path.as_deref().unwrap_or("/"),
        headers: &headers,
    };
    let Some((index, route)) = vhost
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| r.matcher.matches(&request))
    else {
        return Some(ExplainError::NoRoute);
    };
    let mut route_json = crate::dump::route(route);
    if let Value::Object(map) = &mut route_json {
        map.insert("index".into(), index.into());
        if let Some(origin) = &route.origin {
            map.insert(
                "virtual_service".into(),
                origin.virtual_service.clone().into(),
            );
            map.insert("field".into(), origin.field.clone().into());
        }
    }
    out.insert("route".into(), route_json);
    match &route.action {
        RouteAction::Forward(forward) => clusters_into(snapshot, &forward.clusters, out),
        RouteAction::DirectResponse { .. } => Some(ExplainError::DirectResponse),
        RouteAction::Redirect(_) => Some(ExplainError::Redirect),
    }
}

fn build_headers(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

fn listener_json(listener: &Listener, asked: u16) -> Value {
    let via = if listener.port == asked {
        "bind_port"
    } else if listener.service_port == asked {
        "service_port"
    } else {
        "node_port"
    };
    json!({
        "name": listener.name,
        "protocol": listener.kind.protocol(),
        "port": listener.port,
        "service_port": listener.service_port,
        "node_port": listener.node_port,
        "matched_by": via,
        "servers": listener.servers.iter().map(|s| format!("{} spec.servers[{}]", s.gateway, s.index)).collect::<Vec<_>>(),
    })
}

/// Fills `cluster`/`endpoints` (one destination) or `weighted_clusters`.
fn clusters_into(
    snapshot: &Snapshot,
    clusters: &[WeightedCluster],
    out: &mut Map<String, Value>,
) -> Option<ExplainError> {
    let endpoints_of = |c: Option<&std::sync::Arc<Cluster>>| -> Value {
        c.map(|c| {
            c.endpoints
                .iter()
                .map(|e| json!({ "address": e.address.to_string(), "serving": e.serving, "target": e.target }))
                .collect::<Vec<_>>()
        })
        .into()
    };
    if let [single] = clusters {
        out.insert("cluster".into(), single.name.clone().into());
        let cluster = snapshot.cluster(&single.name);
        out.insert("endpoints".into(), endpoints_of(cluster));
        return match cluster {
            None => Some(ExplainError::ClusterNotFound),
            Some(c) if !c.endpoints.iter().any(|e| e.serving) => {
                Some(ExplainError::NoHealthyUpstream)
            }
            Some(_) => None,
        };
    }
    let total: u32 = clusters.iter().map(|c| c.weight).sum();
    out.insert(
        "weighted_clusters".into(),
        clusters
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "weight": c.weight,
                    "share": if total == 0 { 0.0 } else { f64::from(c.weight) / f64::from(total) },
                    "endpoints": endpoints_of(snapshot.cluster(&c.name)),
                })
            })
            .collect::<Vec<_>>()
            .into(),
    );
    // Every destination unusable: the request fails; some usable: it may.
    let usable = clusters.iter().any(|c| {
        snapshot
            .cluster(&c.name)
            .is_some_and(|c| c.endpoints.iter().any(|e| e.serving))
    });
    if usable {
        None
    } else if clusters.iter().all(|c| snapshot.cluster(&c.name).is_none()) {
        Some(ExplainError::ClusterNotFound)
    } else {
        Some(ExplainError::NoHealthyUpstream)
    }
}
