//! Wire stage: the Kubernetes core objects the gateway reads (Service,
//! EndpointSlice, Secret, Pod) and the object metadata all kinds share.
//!
//! Only the fields the gateway uses are typed. Fields that real manifests
//! carry but the gateway ignores (`status`, `managedFields`, `clusterIP`, ...)
//! are listed as raw values so that `kubectl get -o yaml` output loads
//! without a wall of unknown-field warnings.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `metadata`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
    /// RFC 3339; orders VirtualServices that share a host.
    pub creation_timestamp: Option<String>,
    pub resource_version: Option<String>,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub generate_name: Option<String>,
    pub managed_fields: Option<Value>,
    pub owner_references: Option<Value>,
    pub finalizers: Option<Value>,
    pub deletion_timestamp: Option<Value>,
    pub deletion_grace_period_seconds: Option<Value>,
    pub self_link: Option<Value>,
}

/// Either an integer or a string (`targetPort: 8080` or `targetPort: http`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

/// `Service.spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Option<Vec<ServicePort>>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<Value>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Value>,
    #[serde(rename = "externalIPs")]
    pub external_ips: Option<Value>,
    pub external_name: Option<Value>,
    pub external_traffic_policy: Option<Value>,
    pub internal_traffic_policy: Option<Value>,
    pub health_check_node_port: Option<Value>,
    pub ip_families: Option<Value>,
    pub ip_family_policy: Option<Value>,
    #[serde(rename = "loadBalancerIP")]
    pub load_balancer_ip: Option<Value>,
    pub load_balancer_class: Option<Value>,
    pub load_balancer_source_ranges: Option<Value>,
    pub allocate_load_balancer_node_ports: Option<Value>,
    pub publish_not_ready_addresses: Option<Value>,
    pub session_affinity: Option<Value>,
    pub session_affinity_config: Option<Value>,
    pub traffic_distribution: Option<Value>,
}

/// `Service.spec.ports[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
    pub port: Option<i64>,
    pub target_port: Option<IntOrString>,
    pub node_port: Option<i64>,
}

/// `EndpointSlice` (discovery.k8s.io/v1): its fields sit at the top level,
/// not under `spec`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceBody {
    pub address_type: Option<String>,
    pub endpoints: Option<Vec<SliceEndpoint>>,
    pub ports: Option<Vec<SlicePort>>,
}

/// `EndpointSlice.endpoints[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    pub addresses: Option<Vec<String>>,
    pub conditions: Option<EndpointConditions>,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    pub target_ref: Option<ObjectReference>,
    pub hints: Option<Value>,
    pub deprecated_topology: Option<Value>,
}

/// `EndpointSlice.endpoints[].conditions`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// `ObjectReference` (only what identifies the target).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub api_version: Option<Value>,
    pub resource_version: Option<Value>,
    pub field_path: Option<Value>,
}

/// `EndpointSlice.ports[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlicePort {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

/// `Secret` fields (top level): base64 `data` and plain `stringData`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretBody {
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub data: Option<BTreeMap<String, String>>,
    pub string_data: Option<BTreeMap<String, String>>,
    pub immutable: Option<bool>,
}

/// `Pod`: the gateway reads only metadata (labels, for subsets) and the pod
/// IPs; `spec` is accepted and ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodBody {
    pub spec: Option<Value>,
    pub status: Option<PodStatus>,
}

/// `Pod.status` (only the addresses).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIp>>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `Pod.status.podIPs[]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIp {
    pub ip: Option<String>,
}
