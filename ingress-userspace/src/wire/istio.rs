//! Wire stage: Istio `networking.istio.io` objects as written in YAML.
//!
//! These mirror the v1/v1beta1/v1alpha3 schema (one schema, three versions):
//! every field optional, names in camelCase. Nothing is validated here; the
//! model stage turns these into checked types and names the failing field.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `Gateway.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub selector: Option<BTreeMap<String, String>>,
    pub servers: Option<Vec<Server>>,
}

/// `Gateway.spec.servers[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    pub port: Option<Port>,
    pub bind: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub tls: Option<ServerTls>,
    pub name: Option<String>,
    pub default_endpoint: Option<String>,
}

/// `Gateway.spec.servers[].port`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    pub number: Option<i64>,
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub target_port: Option<i64>,
}

/// `Gateway.spec.servers[].tls`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTls {
    pub https_redirect: Option<bool>,
    pub mode: Option<String>,
    pub server_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub ca_crl: Option<String>,
    pub credential_name: Option<String>,
    pub credential_names: Option<Vec<String>>,
    pub tls_certificates: Option<Vec<Value>>,
    pub subject_alt_names: Option<Vec<String>>,
    pub verify_certificate_spki: Option<Vec<String>>,
    pub verify_certificate_hash: Option<Vec<String>>,
    pub min_protocol_version: Option<String>,
    pub max_protocol_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
}

/// `VirtualService.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    pub hosts: Option<Vec<String>>,
    pub gateways: Option<Vec<String>>,
    pub http: Option<Vec<HttpRoute>>,
    pub tls: Option<Vec<TlsRoute>>,
    pub tcp: Option<Vec<TcpRoute>>,
    pub export_to: Option<Vec<String>>,
}

/// `VirtualService.spec.http[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Option<Vec<HttpMatchRequest>>,
    pub route: Option<Vec<HttpRouteDestination>>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub delegate: Option<Delegate>,
    pub rewrite: Option<HttpRewrite>,
    pub timeout: Option<String>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFaultInjection>,
    pub mirror: Option<Destination>,
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    pub mirror_percent: Option<i64>,
    pub mirrors: Option<Vec<HttpMirrorPolicy>>,
    pub cors_policy: Option<CorsPolicy>,
    pub headers: Option<Headers>,
}

/// `Percent`: a double in [0, 100].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    pub value: Option<f64>,
}

/// `HTTPFaultInjection`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpFaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

/// `HTTPFaultInjection.Delay`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    pub fixed_delay: Option<String>,
    pub exponential_delay: Option<String>,
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    pub percent: Option<i64>,
}

/// `HTTPFaultInjection.Abort`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: Option<i64>,
    pub grpc_status: Option<String>,
    pub http2_error: Option<String>,
    pub percentage: Option<Percent>,
}

/// `HTTPMirrorPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    pub destination: Option<Destination>,
    pub percentage: Option<Percent>,
}

/// `CorsPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    pub allow_origins: Option<Vec<StringMatch>>,
    /// Deprecated exact origins.
    pub allow_origin: Option<Vec<String>>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
    pub unmatched_preflights: Option<String>,
}

/// `RegexRewrite`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: Option<String>,
    pub rewrite: Option<String>,
}

/// Istio's `StringMatch`: exactly one of the three.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// `VirtualService.spec.http[].match[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Option<BTreeMap<String, StringMatch>>,
    pub port: Option<i64>,
    pub source_labels: Option<BTreeMap<String, String>>,
    pub gateways: Option<Vec<String>>,
    pub query_params: Option<BTreeMap<String, StringMatch>>,
    pub ignore_uri_case: Option<bool>,
    pub without_headers: Option<BTreeMap<String, StringMatch>>,
    pub source_namespace: Option<String>,
    pub stat_prefix: Option<String>,
}

/// `Destination`: a service host, optional subset and port.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: Option<String>,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

/// `PortSelector`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    pub number: Option<i64>,
}

/// `HTTPRouteDestination`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    pub destination: Option<Destination>,
    pub weight: Option<i64>,
    pub headers: Option<Headers>,
}

/// `RouteDestination` (TCP and TLS routes).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Option<Destination>,
    pub weight: Option<i64>,
}

/// `Headers`: request and response header operations.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    pub set: Option<BTreeMap<String, String>>,
    pub add: Option<BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

/// `HTTPRedirect`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<i64>,
    pub derive_port: Option<String>,
    pub scheme: Option<String>,
    pub redirect_code: Option<i64>,
}

/// `HTTPDirectResponse`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpDirectResponse {
    pub status: Option<i64>,
    pub body: Option<HttpBody>,
}

/// `HTTPBody`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBody {
    pub string: Option<String>,
    pub bytes: Option<String>,
}

/// `Delegate`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delegate {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// `HTTPRewrite`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `HTTPRetry`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    pub attempts: Option<i64>,
    pub per_try_timeout: Option<String>,
    pub retry_on: Option<String>,
    pub retry_remote_localities: Option<bool>,
}

/// `TCPRoute`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(rename = "match")]
    pub matches: Option<Vec<L4MatchAttributes>>,
    pub route: Option<Vec<RouteDestination>>,
}

/// `L4MatchAttributes`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    pub destination_subnets: Option<Vec<String>>,
    pub port: Option<i64>,
    pub source_labels: Option<BTreeMap<String, String>>,
    pub gateways: Option<Vec<String>>,
    pub source_namespace: Option<String>,
}

/// `TLSRoute`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(rename = "match")]
    pub matches: Option<Vec<TlsMatchAttributes>>,
    pub route: Option<Vec<RouteDestination>>,
}

/// `TLSMatchAttributes`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    pub sni_hosts: Option<Vec<String>>,
    pub destination_subnets: Option<Vec<String>>,
    pub port: Option<i64>,
    pub source_labels: Option<BTreeMap<String, String>>,
    pub gateways: Option<Vec<String>>,
    pub source_namespace: Option<String>,
}

/// `DestinationRule.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    pub host: Option<String>,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Option<Vec<Subset>>,
    pub export_to: Option<Vec<String>>,
    pub workload_selector: Option<Value>,
}

/// `DestinationRule.spec.subsets[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `TrafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<Value>,
    pub port_level_settings: Option<Vec<PortTrafficPolicy>>,
    pub tunnel: Option<Value>,
    pub proxy_protocol: Option<Value>,
    pub retry_budget: Option<Value>,
}

/// `TrafficPolicy.PortTrafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    pub port: Option<PortSelector>,
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<Value>,
}

/// `LoadBalancerSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    pub simple: Option<String>,
    pub consistent_hash: Option<ConsistentHashLb>,
    pub locality_lb_setting: Option<Value>,
    pub warmup_duration_secs: Option<String>,
    pub warmup: Option<Value>,
}

/// `LoadBalancerSettings.ConsistentHashLB`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    pub http_header_name: Option<String>,
    pub http_cookie: Option<HttpCookie>,
    pub use_source_ip: Option<bool>,
    pub http_query_parameter_name: Option<String>,
    pub ring_hash: Option<Value>,
    pub maglev: Option<Value>,
    pub minimum_ring_size: Option<i64>,
}

/// `ConsistentHashLB.HTTPCookie`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: Option<String>,
    pub path: Option<String>,
    pub ttl: Option<String>,
    pub attributes: Option<Vec<Value>>,
}

/// `ConnectionPoolSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    pub tcp: Option<TcpPoolSettings>,
    pub http: Option<HttpPoolSettings>,
}

/// `ConnectionPoolSettings.TCPSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpPoolSettings {
    pub max_connections: Option<i64>,
    pub connect_timeout: Option<String>,
    pub tcp_keepalive: Option<Value>,
    pub max_connection_duration: Option<String>,
    pub idle_timeout: Option<String>,
}

/// `ConnectionPoolSettings.HTTPSettings`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPoolSettings {
    pub http1_max_pending_requests: Option<i64>,
    pub http2_max_requests: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub max_retries: Option<i64>,
    pub idle_timeout: Option<String>,
    pub h2_upgrade_policy: Option<String>,
    pub use_client_protocol: Option<bool>,
    pub max_concurrent_streams: Option<i64>,
}

/// `OutlierDetection`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub split_external_local_origin_errors: Option<bool>,
    pub consecutive_local_origin_failures: Option<i64>,
    pub consecutive_gateway_errors: Option<i64>,
    pub consecutive_5xx_errors: Option<i64>,
    /// Deprecated alias of consecutive5xxErrors.
    pub consecutive_errors: Option<i64>,
    pub interval: Option<String>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_percent: Option<i64>,
    pub min_health_percent: Option<i64>,
}

/// `ServiceEntry.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    pub hosts: Option<Vec<String>>,
    pub addresses: Option<Vec<String>>,
    pub ports: Option<Vec<ServicePort>>,
    pub location: Option<String>,
    pub resolution: Option<String>,
    pub endpoints: Option<Vec<WorkloadEntry>>,
    pub workload_selector: Option<Value>,
    pub export_to: Option<Vec<String>>,
    pub subject_alt_names: Option<Vec<String>>,
}

/// `ServiceEntry.spec.ports[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub number: Option<i64>,
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub target_port: Option<i64>,
}

/// `ServiceEntry.spec.endpoints[]` (a WorkloadEntry spec).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub address: Option<String>,
    pub ports: Option<BTreeMap<String, i64>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub network: Option<String>,
    pub locality: Option<String>,
    pub weight: Option<i64>,
    pub service_account: Option<String>,
}
