//! Consumer: the snapshot as Envoy's v3 `/config_dump` JSON.
//!
//! The shape follows Envoy's admin API (`configs[]`, each typed by `@type`)
//! so the `jq` one-liners people use against an Istio gateway keep working:
//!
//! ```text
//! jq '.configs[] | select(."@type" | endswith("RoutesConfigDump"))
//!     | .dynamic_route_configs[].route_config.virtual_hosts[]
//!     | {name, domains, route: .routes[].match.prefix}'
//! ```
//!
//! What Envoy has no field for (nodePorts, which Gateway server made a
//! listener, where a route came from) goes under `metadata.filter_metadata`,
//! the place Envoy keeps for such annotations; Istio puts the source
//! VirtualService there too.

use serde_json::{Map, Value, json};

use crate::model::duration::to_proto_json;
use crate::snapshot::policy::{HashKey, LbPolicy};
use crate::snapshot::{
    CaSource, ChainAction, ClientAuth, Cluster, Discovery, FaultAbort, FilterChain, HeaderMatcher,
    HeaderPolicy, Listener, ListenerKind, PathMatch, Route, RouteAction, RouteConfig, RoutePolicy,
    Snapshot, StringMatcher, TcpProxy, TlsContext, TlsVersion, UpstreamProtocol, VirtualHost,
    WeightedCluster,
};

const TYPE_PREFIX: &str = "type.googleapis.com/";

/// The `/config_dump` document for `snapshot`.
pub fn config_dump(snapshot: &Snapshot) -> Value {
    let route_configs: Vec<&RouteConfig> = snapshot
        .listeners
        .iter()
        .flat_map(|l| match &l.kind {
            ListenerKind::Http(rc) => vec![rc],
            ListenerKind::Tcp(_) => Vec::new(),
            ListenerKind::Tls(tls) => tls
                .chains
                .iter()
                .filter_map(|c| match &c.action {
                    ChainAction::Http { routes, .. } => Some(routes),
                    _ => None,
                })
                .collect(),
        })
        .collect();
    json!({
        "configs": [
            {
                "@type": format!("{TYPE_PREFIX}envoy.admin.v3.ListenersConfigDump"),
                "dynamic_listeners": snapshot.listeners.iter().map(|l| json!({
                    "name": l.name,
                    "active_state": { "listener": listener(l) },
                })).collect::<Vec<_>>(),
            },
            {
                "@type": format!("{TYPE_PREFIX}envoy.admin.v3.ClustersConfigDump"),
                "dynamic_active_clusters": snapshot.clusters.values().map(|c| json!({
                    "cluster": cluster(c),
                })).collect::<Vec<_>>(),
            },
            {
                "@type": format!("{TYPE_PREFIX}envoy.admin.v3.RoutesConfigDump"),
                "dynamic_route_configs": route_configs.iter().map(|rc| json!({
                    "route_config": route_config(rc),
                })).collect::<Vec<_>>(),
            },
            {
                "@type": format!("{TYPE_PREFIX}envoy.admin.v3.EndpointsConfigDump"),
                "dynamic_endpoint_configs": snapshot.clusters.values().map(|c| json!({
                    "endpoint_config": endpoints(c),
                })).collect::<Vec<_>>(),
            },
        ]
    })
}

/// Appends the kernel's live state (an `ingressd.KernelDump` object, read
/// from the maps by the kernel manager) to a `/config_dump` document.
pub fn with_kernel(mut dump: Value, kernel: Value) -> Value {
    if let Some(configs) = dump.get_mut("configs").and_then(Value::as_array_mut) {
        configs.push(kernel);
    }
    dump
}

fn http_filter(stat_prefix: &str, rc: &RouteConfig) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": format!("{TYPE_PREFIX}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
            "stat_prefix": format!("outbound_{stat_prefix}"),
            "rds": { "route_config_name": rc.name },
        },
    })
}

fn tcp_filter(proxy: Option<&TcpProxy>) -> Value {
    let mut config = Map::new();
    config.insert(
        "@type".into(),
        format!("{TYPE_PREFIX}envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy").into(),
    );
    match proxy {
        Some(proxy) => {
            config.insert("stat_prefix".into(), proxy.stat_prefix.clone().into());
            insert_clusters(&mut config, &proxy.clusters);
            config.insert(
                "metadata".into(),
                json!({ "filter_metadata": { "istio": {
                    "config": istio_config_path(&proxy.origin.virtual_service),
                    "field": proxy.origin.field,
                }}}),
            );
        }
        None => {
            config.insert("stat_prefix".into(), "BlackHoleCluster".into());
            config.insert("cluster".into(), "BlackHoleCluster".into());
        }
    }
    json!({ "name": "envoy.filters.network.tcp_proxy", "typed_config": config })
}

/// Envoy's `DownstreamTlsContext` of a terminating chain (the key material
/// itself is never dumped; the SDS-style name says where it comes from).
fn tls_transport_socket(tls: &TlsContext) -> Value {
    let version = |v: TlsVersion| match v {
        TlsVersion::V1_2 => "TLSv1_2",
        TlsVersion::V1_3 => "TLSv1_3",
    };
    let mut common = json!({
        "tls_params": {
            "tls_minimum_protocol_version": version(tls.min_version),
            "tls_maximum_protocol_version": version(tls.max_version),
        },
        "alpn_protocols": tls.alpn,
        "tls_certificate_sds_secret_configs": [ { "name": tls.certificate.sds_name() } ],
    });
    if !tls.cipher_suites.is_empty() {
        common["tls_params"]["cipher_suites"] = json!(tls.cipher_suites);
    }
    if let Some(ca) = &tls.ca {
        let name = match ca {
            CaSource::File(path) => format!("file-root:{}", path.display()),
            CaSource::Secret { origin, .. } => {
                format!(
                    "kubernetes://{}",
                    origin.rsplit('/').next().unwrap_or(origin)
                )
            }
            CaSource::Missing(_) => "-".to_owned(),
        };
        common["validation_context_sds_secret_config"] = json!({ "name": name });
        if !tls.subject_alt_names.is_empty() {
            common["combined_validation_context"] = json!({ "default_validation_context": {
                "match_subject_alt_names": tls.subject_alt_names.iter().map(|n| json!({ "exact": n })).collect::<Vec<_>>(),
            }});
        }
    }
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": format!("{TYPE_PREFIX}envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
            "common_tls_context": common,
            "require_client_certificate": tls.client_auth == ClientAuth::Required,
        },
    })
}

fn filter_chain(l: &Listener, chain: &FilterChain) -> Value {
    let mut out = json!({ "name": chain.name });
    if !chain.server_names.is_empty() {
        out["filter_chain_match"] = json!({ "server_names": chain.server_names });
    }
    let filter = match &chain.action {
        ChainAction::Http { tls, routes } => {
            out["transport_socket"] = tls_transport_socket(tls);
            http_filter(&l.name, routes)
        }
        ChainAction::Tcp { tls, proxy } => {
            out["transport_socket"] = tls_transport_socket(tls);
            tcp_filter(proxy.as_ref())
        }
        ChainAction::Passthrough(proxy) => tcp_filter(Some(proxy)),
    };
    out["filters"] = json!([filter]);
    out
}

fn listener(l: &Listener) -> Value {
    let chains = match &l.kind {
        ListenerKind::Http(rc) => json!([ { "filters": [ http_filter(&l.name, rc) ] } ]),
        ListenerKind::Tcp(proxy) => json!([ { "filters": [ tcp_filter(proxy.as_ref()) ] } ]),
        ListenerKind::Tls(tls) => {
            Value::Array(tls.chains.iter().map(|c| filter_chain(l, c)).collect())
        }
    };
    let mut out = json!({
        "@type": format!("{TYPE_PREFIX}envoy.config.listener.v3.Listener"),
        "name": l.name,
        "address": { "socket_address": { "address": l.address.to_string(), "port_value": l.port } },
        "filter_chains": chains,
        "traffic_direction": "OUTBOUND",
        "metadata": { "filter_metadata": { "ingressd": {
            "protocol": l.kind.protocol(),
            "service_port": l.service_port,
            "node_port": l.node_port,
            "servers": l.servers.iter().map(|s| json!({
                "gateway": s.gateway,
                "server": format!("spec.servers[{}]", s.index),
                "port_name": s.port_name,
            })).collect::<Vec<_>>(),
        }}},
    });
    if matches!(l.kind, ListenerKind::Tls(_)) {
        out["listener_filters"] = json!([{ "name": "envoy.filters.listener.tls_inspector" }]);
    }
    out
}

/// Envoy's `*_headers_to_add` / `*_headers_to_remove` of a route or a
/// weighted cluster.
fn insert_header_policy(out: &mut Map<String, Value>, policy: &HeaderPolicy) {
    for (side, ops) in [("request", &policy.request), ("response", &policy.response)] {
        let add: Vec<Value> = ops
            .set
            .iter()
            .map(|(n, v)| (n, v, "OVERWRITE_IF_EXISTS_OR_ADD"))
            .chain(
                ops.add
                    .iter()
                    .map(|(n, v)| (n, v, "APPEND_IF_EXISTS_OR_ADD")),
            )
            .map(|(n, v, action)| {
                json!({
                    "header": { "key": n.as_str(), "value": String::from_utf8_lossy(v.as_bytes()) },
                    "append_action": action,
                })
            })
            .collect();
        if !add.is_empty() {
            out.insert(format!("{side}_headers_to_add"), add.into());
        }
        if !ops.remove.is_empty() {
            out.insert(
                format!("{side}_headers_to_remove"),
                ops.remove
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
    }
}

/// The fault and CORS filters' per-route configs.
fn per_filter_config(policy: &RoutePolicy) -> Option<Value> {
    let mut out = Map::new();
    if let Some(fault) = &policy.fault {
        let percent = |p: f64| json!({ "numerator": (p * 10_000.0).round() as u64, "denominator": "MILLION" });
        let mut config = json!({
            "@type": format!("{TYPE_PREFIX}envoy.extensions.filters.http.fault.v3.HTTPFault"),
        });
        if let Some((delay, p)) = fault.delay {
            config["delay"] =
                json!({ "fixed_delay": to_proto_json(delay), "percentage": percent(p) });
        }
        if let Some((abort, p)) = fault.abort {
            config["abort"] = match abort {
                FaultAbort::Http(status) => {
                    json!({ "http_status": status, "percentage": percent(p) })
                }
                FaultAbort::Grpc(code) => json!({ "grpc_status": code, "percentage": percent(p) }),
            };
        }
        out.insert("envoy.filters.http.fault".into(), config);
    }
    if let Some(cors) = &policy.cors {
        let mut config = json!({
            "@type": format!("{TYPE_PREFIX}envoy.extensions.filters.http.cors.v3.CorsPolicy"),
            "allow_origin_string_match": cors.allow_origins.iter()
                .map(|m| string_matcher(m).remove("string_match").unwrap_or_else(|| json!({ "safe_regex": { "regex": ".*" } })))
                .collect::<Vec<_>>(),
            "allow_credentials": cors.allow_credentials,
        });
        for (key, value) in [
            ("allow_methods", &cors.allow_methods),
            ("allow_headers", &cors.allow_headers),
            ("expose_headers", &cors.expose_headers),
        ] {
            if !value.is_empty() {
                config[key] = value.clone().into();
            }
        }
        if let Some(age) = cors.max_age {
            config["max_age"] = age.to_string().into();
        }
        out.insert("envoy.filters.http.cors".into(), config);
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// `cluster` for one destination, `weighted_clusters` for several.
fn insert_clusters(out: &mut Map<String, Value>, clusters: &[WeightedCluster]) {
    if let [single] = clusters
        && single.headers.is_none()
    {
        out.insert("cluster".into(), single.name.clone().into());
    } else {
        let clusters: Vec<Value> = clusters
            .iter()
            .map(|c| {
                let mut o = Map::new();
                o.insert("name".into(), c.name.clone().into());
                o.insert("weight".into(), c.weight.into());
                if let Some(h) = &c.headers {
                    insert_header_policy(&mut o, h);
                    if let Some(host) = &h.host_rewrite {
                        o.insert("host_rewrite_literal".into(), host.clone().into());
                    }
                }
                Value::Object(o)
            })
            .collect();
        out.insert("weighted_clusters".into(), json!({ "clusters": clusters }));
    }
}

fn istio_config_path(key: &str) -> String {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    format!("/apis/networking.istio.io/v1/namespaces/{namespace}/virtual-service/{name}")
}

fn route_config(rc: &RouteConfig) -> Value {
    json!({
        "@type": format!("{TYPE_PREFIX}envoy.config.route.v3.RouteConfiguration"),
        "name": rc.name,
        "virtual_hosts": rc.virtual_hosts.iter().map(virtual_host).collect::<Vec<_>>(),
        "validate_clusters": false,
    })
}

fn virtual_host(vh: &VirtualHost) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), vh.name.clone().into());
    out.insert("domains".into(), json!(vh.domains));
    out.insert(
        "routes".into(),
        vh.routes.iter().map(route).collect::<Vec<_>>().into(),
    );
    if vh.require_tls {
        out.insert("require_tls".into(), "ALL".into());
    }
    out.insert("include_request_attempt_count".into(), true.into());
    Value::Object(out)
}

/// One route as Envoy prints it (also used by `explain`).
pub fn route(r: &Route) -> Value {
    let mut out = Map::new();
    if !r.name.is_empty() {
        out.insert("name".into(), r.name.clone().into());
    }
    out.insert("match".into(), route_match(r));
    if let Some(h) = &r.policy.headers {
        insert_header_policy(&mut out, h);
    }
    if let Some(config) = per_filter_config(&r.policy) {
        out.insert("typed_per_filter_config".into(), config);
    }
    match &r.action {
        RouteAction::Forward(f) => {
            let mut action = Map::new();
            insert_clusters(&mut action, &f.clusters);
            action.insert(
                "timeout".into(),
                f.timeout
                    .map_or_else(|| "0s".to_owned(), to_proto_json)
                    .into(),
            );
            if let Some(p) = &f.prefix_rewrite {
                action.insert("prefix_rewrite".into(), p.clone().into());
            }
            if let Some((pattern, substitution)) = &f.regex_rewrite {
                action.insert(
                    "regex_rewrite".into(),
                    json!({ "pattern": { "regex": pattern.source }, "substitution": substitution }),
                );
            }
            if let Some(h) = &f.host_rewrite {
                action.insert("host_rewrite_literal".into(), h.clone().into());
            }
            if f.retry.attempts > 0 {
                let mut retry = json!({
                    "retry_on": f.retry.retry_on.to_envoy(),
                    "num_retries": f.retry.attempts,
                    "retry_host_predicate": [{ "name": "envoy.retry_host_predicates.previous_hosts" }],
                    "host_selection_retry_max_attempts": "5",
                });
                if let Some(t) = f.retry.per_try_timeout {
                    retry["per_try_timeout"] = to_proto_json(t).into();
                }
                if !f.retry.status_codes.is_empty() {
                    retry["retriable_status_codes"] = json!(f.retry.status_codes);
                }
                action.insert("retry_policy".into(), retry);
            }
            if !f.mirrors.is_empty() {
                action.insert(
                    "request_mirror_policies".into(),
                    f.mirrors
                        .iter()
                        .map(|m| {
                            json!({
                                "cluster": m.cluster,
                                "runtime_fraction": { "default_value": {
                                    "numerator": (m.percent * 10_000.0).round() as u64,
                                    "denominator": "MILLION",
                                }},
                            })
                        })
                        .collect(),
                );
            }
            action.insert("max_grpc_timeout".into(), "0s".into());
            out.insert("route".into(), Value::Object(action));
        }
        RouteAction::DirectResponse { status, body } => {
            let mut direct = Map::new();
            direct.insert("status".into(), (*status).into());
            if !body.is_empty() {
                let body = match std::str::from_utf8(body) {
                    Ok(text) => json!({ "inline_string": text }),
                    Err(_) => {
                        use base64::Engine as _;
                        json!({ "inline_bytes": base64::engine::general_purpose::STANDARD.encode(body) })
                    }
                };
                direct.insert("body".into(), body);
            }
            out.insert("direct_response".into(), Value::Object(direct));
        }
        RouteAction::Redirect(r) => {
            let mut redirect = Map::new();
            if let Some(s) = &r.scheme {
                redirect.insert("scheme_redirect".into(), s.clone().into());
            }
            if let Some(a) = &r.authority {
                redirect.insert("host_redirect".into(), a.clone().into());
            }
            if let Some(p) = r.port {
                redirect.insert("port_redirect".into(), p.into());
            }
            if let Some(p) = &r.path {
                redirect.insert("path_redirect".into(), p.clone().into());
            }
            let code = match r.status {
                302 => "FOUND",
                303 => "SEE_OTHER",
                307 => "TEMPORARY_REDIRECT",
                308 => "PERMANENT_REDIRECT",
                _ => "MOVED_PERMANENTLY",
            };
            redirect.insert("response_code".into(), code.into());
            out.insert("redirect".into(), Value::Object(redirect));
        }
    }
    if let Some(origin) = &r.origin {
        out.insert(
            "metadata".into(),
            json!({ "filter_metadata": { "istio": {
                "config": istio_config_path(&origin.virtual_service),
                "field": origin.field,
            }}}),
        );
    }
    Value::Object(out)
}

fn route_match(r: &Route) -> Value {
    let m = &r.matcher;
    let mut out = Map::new();
    match &m.path {
        PathMatch::Prefix(p) => out.insert("prefix".into(), p.clone().into()),
        PathMatch::Exact(p) => out.insert("path".into(), p.clone().into()),
        PathMatch::Regex(p) => out.insert("safe_regex".into(), json!({ "regex": p.source })),
    };
    out.insert("case_sensitive".into(), (!m.ignore_case).into());
    if !m.headers.is_empty() {
        out.insert(
            "headers".into(),
            m.headers
                .iter()
                .map(header_matcher)
                .collect::<Vec<_>>()
                .into(),
        );
    }
    if !m.query_params.is_empty() {
        out.insert(
            "query_parameters".into(),
            m.query_params
                .iter()
                .map(|q| {
                    let mut o = string_matcher(&q.kind);
                    o.insert("name".into(), q.name.clone().into());
                    Value::Object(o)
                })
                .collect::<Vec<_>>()
                .into(),
        );
    }
    Value::Object(out)
}

fn header_matcher(h: &HeaderMatcher) -> Value {
    let mut o = string_matcher(&h.kind);
    o.insert("name".into(), h.name.clone().into());
    if h.invert {
        o.insert("invert_match".into(), true.into());
    }
    Value::Object(o)
}

fn string_matcher(kind: &StringMatcher) -> Map<String, Value> {
    let mut o = Map::new();
    match kind {
        StringMatcher::Exact(s) => {
            o.insert("string_match".into(), json!({ "exact": s }));
        }
        StringMatcher::Prefix(s) => {
            o.insert("string_match".into(), json!({ "prefix": s }));
        }
        StringMatcher::Regex(p) => {
            o.insert(
                "string_match".into(),
                json!({ "safe_regex": { "regex": p.source } }),
            );
        }
        StringMatcher::Present => {
            o.insert("present_match".into(), true.into());
        }
    }
    o
}

fn cluster(c: &Cluster) -> Value {
    let (kind, service) = match &c.discovery {
        Discovery::Service { namespace, name } => ("Service", format!("{namespace}/{name}")),
        Discovery::ServiceEntry { namespace, name } => {
            ("ServiceEntry", format!("{namespace}/{name}"))
        }
    };
    let mut out = json!({
        "@type": format!("{TYPE_PREFIX}envoy.config.cluster.v3.Cluster"),
        "name": c.name,
        "type": "EDS",
        "eds_cluster_config": { "service_name": c.name },
        "connect_timeout": to_proto_json(c.connect_timeout),
        "lb_policy": match &c.policy.lb {
            LbPolicy::LeastRequest => "LEAST_REQUEST",
            LbPolicy::RoundRobin => "ROUND_ROBIN",
            LbPolicy::Random => "RANDOM",
            LbPolicy::ConsistentHash(_) => "MAGLEV",
        },
        "metadata": { "filter_metadata": { "istio": {
            "services": [ { "host": c.host, "name": service.rsplit('/').next(), "namespace": service.split('/').next() } ],
            "default_original_port": c.port,
            "subset": c.subset,
        }, "ingressd": { "discovered_by": kind } } },
    });
    let limits = &c.policy.limits;
    let limit = |v: Option<u32>| v.unwrap_or(u32::MAX);
    out["circuit_breakers"] = json!({ "thresholds": [{
        "max_connections": limit(limits.max_connections),
        "max_pending_requests": limit(limits.max_pending_requests),
        "max_requests": limit(limits.max_requests),
        "max_retries": limit(limits.max_retries),
    }]});
    if let Some(max) = limits.max_requests_per_connection {
        out["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "common_http_protocol_options": { "max_requests_per_connection": max },
            }
        });
    }
    if let Some(o) = &c.policy.outlier {
        out["outlier_detection"] = json!({
            "consecutive_5xx": o.consecutive_5xx,
            "consecutive_gateway_failure": o.consecutive_gateway_errors,
            "enforcing_consecutive_gateway_failure": if o.consecutive_gateway_errors > 0 { 100 } else { 0 },
            "interval": to_proto_json(o.interval),
            "base_ejection_time": to_proto_json(o.base_ejection_time),
            "max_ejection_percent": o.max_ejection_percent,
        });
        out["common_lb_config"] =
            json!({ "healthy_panic_threshold": { "value": f64::from(o.min_health_percent) } });
    }
    if let LbPolicy::ConsistentHash(key) = &c.policy.lb {
        out["metadata"]["filter_metadata"]["ingressd"]["hash_key"] = match key {
            HashKey::Header(h) => json!({ "header": h.as_str() }),
            HashKey::Cookie { name, path, ttl } => {
                json!({ "cookie": { "name": name, "path": path, "ttl": ttl.map(to_proto_json) } })
            }
            HashKey::SourceIp => json!({ "source_ip": true }),
            HashKey::QueryParam(q) => json!({ "query_parameter": q }),
        };
    }
    if let Some(idle) = limits.idle_timeout {
        out["common_http_protocol_options"] = json!({ "idle_timeout": to_proto_json(idle) });
    }
    if c.protocol == UpstreamProtocol::Http2 {
        out["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": format!("{TYPE_PREFIX}envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                "explicit_http_config": { "http2_protocol_options": {} },
            }
        });
    }
    out
}

fn endpoints(c: &Cluster) -> Value {
    json!({
        "@type": format!("{TYPE_PREFIX}envoy.config.endpoint.v3.ClusterLoadAssignment"),
        "cluster_name": c.name,
        "endpoints": [ {
            "lb_endpoints": c.endpoints.iter().map(|e| json!({
                "endpoint": { "address": { "socket_address": {
                    "address": e.address.ip().to_string(),
                    "port_value": e.address.port(),
                } } },
                "health_status": if e.serving { "HEALTHY" } else { "DRAINING" },
                "metadata": { "filter_metadata": { "ingressd": { "target": e.target } } },
            })).collect::<Vec<_>>(),
        } ],
    })
}
