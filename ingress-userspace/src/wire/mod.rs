//! Wire stage: YAML files -> typed Kubernetes and Istio objects.
//!
//! Every `*.yaml`/`*.yml` under the config directory is read, in path order,
//! each file as a stream of YAML documents (`---`). A document is dispatched
//! on `apiVersion` + `kind` and decoded into the structs of [`istio`] and
//! [`k8s`]. Unknown kinds and unknown fields are warnings that name the file,
//! the document index and the field path; a document that cannot be decoded
//! (wrong type, bad YAML) is an error, and the rest of the files still load.
//!
//! `kind: List` documents (what `kubectl get -o yaml` prints) are unpacked.

pub mod istio;
pub mod k8s;

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::diag::{Diagnostic, Diagnostics, Source};

/// One decoded object: where it came from, its identity and its body.
#[derive(Clone, Debug)]
pub struct Object<T> {
    pub source: Source,
    pub api_version: String,
    pub metadata: k8s::ObjectMeta,
    pub body: T,
}

impl<T> Object<T> {
    /// `metadata.name` (the loader guarantees it is present and non-empty).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// `metadata.namespace`, `default` when absent (as `kubectl apply` does).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }
}

/// `spec` (and an ignored `status`) of the kinds that have one.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct WithSpec<T> {
    pub spec: Option<T>,
    pub status: Option<Value>,
}

/// Everything loaded from a config directory, by kind, in load order.
#[derive(Clone, Debug, Default)]
pub struct WireConfig {
    pub gateways: Vec<Object<istio::GatewaySpec>>,
    pub virtual_services: Vec<Object<istio::VirtualServiceSpec>>,
    pub destination_rules: Vec<Object<istio::DestinationRuleSpec>>,
    pub service_entries: Vec<Object<istio::ServiceEntrySpec>>,
    pub services: Vec<Object<k8s::ServiceSpec>>,
    pub endpoint_slices: Vec<Object<k8s::EndpointSliceBody>>,
    pub secrets: Vec<Object<k8s::SecretBody>>,
    pub pods: Vec<Object<k8s::PodBody>>,
}

const ISTIO_VERSIONS: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const ENDPOINT_SLICE_VERSIONS: [&str; 2] = ["discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"];

/// Loads every YAML file under `dir` (recursively, sorted by path).
///
/// Entries whose name starts with `..` are skipped: Kubernetes ConfigMap and
/// Secret volumes keep their real files in `..<timestamp>/` directories
/// behind a `..data` symlink, and reading both would load everything twice.
pub fn load_dir(dir: &Path, diagnostics: &mut Diagnostics) -> WireConfig {
    let mut config = WireConfig::default();
    let mut files = Vec::new();
    if let Err(err) = collect_yaml_files(dir, &mut files) {
        diagnostics.push(Diagnostic::error(
            &Source {
                file: Some(dir.to_path_buf()),
                document: None,
            },
            format!("cannot read config directory: {err}"),
        ));
        return config;
    }
    files.sort();
    for file in files {
        match fs::read_to_string(&file) {
            Ok(text) => load_str(&text, &file, &mut config, diagnostics),
            Err(err) => diagnostics.push(Diagnostic::error(
                &Source {
                    file: Some(file.clone()),
                    document: None,
                },
                format!("cannot read file: {err}"),
            )),
        }
    }
    config
}

fn collect_yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("..") {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symlinks, so symlinked files (Kubernetes volume
        // layout) are read through their link.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            collect_yaml_files(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads the YAML documents of one file into `config`.
pub fn load_str(text: &str, file: &Path, config: &mut WireConfig, diagnostics: &mut Diagnostics) {
    let documents: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(documents) => documents,
        Err(err) => {
            diagnostics.push(Diagnostic::error(
                &Source {
                    file: Some(file.to_path_buf()),
                    document: None,
                },
                format!("invalid YAML: {}", one_line(&err.to_string())),
            ));
            return;
        }
    };
    for (index, document) in documents.into_iter().enumerate() {
        let source = Source::new(file, index);
        load_document(document, &source, "", config, diagnostics);
    }
}

/// The warning for a field the gateway does not know.
pub const UNKNOWN_FIELD: &str = "unknown field ignored";

/// Loads one object (already parsed, e.g. from the Kubernetes API) into
/// `config`, with the same checks as a document of a file.
pub fn load_object(
    object: Value,
    source: &Source,
    config: &mut WireConfig,
    diagnostics: &mut Diagnostics,
) {
    load_document(object, source, "", config, diagnostics);
}

fn load_document(
    document: Value,
    source: &Source,
    prefix: &str,
    config: &mut WireConfig,
    diagnostics: &mut Diagnostics,
) {
    let mut fields = match document {
        Value::Null => return,
        Value::Object(fields) => fields,
        other => {
            diagnostics.push(
                Diagnostic::error(
                    source,
                    format!("expected a mapping, found {}", type_name(&other)),
                )
                .field(root_or(prefix)),
            );
            return;
        }
    };
    let api_version = take_string(&mut fields, "apiVersion");
    let kind = take_string(&mut fields, "kind");
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        diagnostics.push(
            Diagnostic::warning(source, "document without apiVersion and kind is ignored")
                .field(root_or(prefix)),
        );
        return;
    };

    if kind == "List" || kind.ends_with("List") {
        if let Some(Value::Array(items)) = fields.remove("items") {
            for (i, item) in items.into_iter().enumerate() {
                load_document(
                    item,
                    source,
                    &format!("{prefix}items[{i}]."),
                    config,
                    diagnostics,
                );
            }
        }
        return;
    }

    let resource_kind = kind.to_ascii_lowercase();
    let metadata_value = fields.remove("metadata").unwrap_or(Value::Null);
    let mut unknown = Vec::new();
    let metadata: k8s::ObjectMeta =
        match decode(metadata_value, &format!("{prefix}metadata"), &mut unknown) {
            Ok(metadata) => metadata,
            Err((field, message)) => {
                diagnostics.push(
                    Diagnostic::error(source, message)
                        .resource(resource_kind)
                        .field(field),
                );
                return;
            }
        };
    let Some(name) = metadata.name.clone().filter(|n| !n.is_empty()) else {
        diagnostics.push(
            Diagnostic::error(source, "metadata.name is required")
                .resource(resource_kind)
                .field(format!("{prefix}metadata.name")),
        );
        return;
    };
    let namespace = metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    let resource = format!("{resource_kind} {namespace}/{name}");

    let rest = Value::Object(fields);
    let version = api_version.as_str();
    macro_rules! decode_into {
        ($list:expr, $ty:ty, $project:expr) => {{
            match decode::<$ty>(rest, prefix.trim_end_matches('.'), &mut unknown) {
                Ok(body) => {
                    $list.push(Object {
                        source: source.clone(),
                        api_version: api_version.clone(),
                        metadata,
                        body: $project(body),
                    });
                }
                Err((field, message)) => {
                    diagnostics.push(
                        Diagnostic::error(source, message)
                            .resource(resource.clone())
                            .field(field),
                    );
                    return;
                }
            }
        }};
    }
    match kind.as_str() {
        "Gateway" if ISTIO_VERSIONS.contains(&version) => {
            decode_into!(
                config.gateways,
                WithSpec<istio::GatewaySpec>,
                spec_or_default
            )
        }
        "VirtualService" if ISTIO_VERSIONS.contains(&version) => {
            decode_into!(
                config.virtual_services,
                WithSpec<istio::VirtualServiceSpec>,
                spec_or_default
            )
        }
        "DestinationRule" if ISTIO_VERSIONS.contains(&version) => {
            decode_into!(
                config.destination_rules,
                WithSpec<istio::DestinationRuleSpec>,
                spec_or_default
            )
        }
        "ServiceEntry" if ISTIO_VERSIONS.contains(&version) => {
            decode_into!(
                config.service_entries,
                WithSpec<istio::ServiceEntrySpec>,
                spec_or_default
            )
        }
        "Service" if version == "v1" => {
            decode_into!(config.services, WithSpec<k8s::ServiceSpec>, spec_or_default)
        }
        "EndpointSlice" if ENDPOINT_SLICE_VERSIONS.contains(&version) => {
            decode_into!(
                config.endpoint_slices,
                k8s::EndpointSliceBody,
                std::convert::identity
            )
        }
        "Secret" if version == "v1" => {
            decode_into!(config.secrets, k8s::SecretBody, std::convert::identity)
        }
        "Pod" if version == "v1" => decode_into!(config.pods, k8s::PodBody, std::convert::identity),
        "Gateway" | "VirtualService" | "DestinationRule" | "ServiceEntry" | "Service"
        | "EndpointSlice" | "Secret" | "Pod" => {
            diagnostics.push(
                Diagnostic::warning(
                    source,
                    format!("apiVersion {api_version} of {kind} is not supported; ignored"),
                )
                .resource(resource)
                .field(format!("{prefix}apiVersion")),
            );
            return;
        }
        _ => {
            diagnostics.push(
                Diagnostic::warning(
                    source,
                    format!("kind {kind} ({api_version}) is not used by the gateway; ignored"),
                )
                .resource(resource),
            );
            return;
        }
    }
    for field in unknown {
        diagnostics.push(
            Diagnostic::warning(source, UNKNOWN_FIELD)
                .resource(resource.clone())
                .field(field),
        );
    }
}

fn spec_or_default<T: Default>(with_spec: WithSpec<T>) -> T {
    with_spec.spec.unwrap_or_default()
}

/// Decodes `value` into `T`, recording unknown fields as paths under
/// `prefix`. On failure returns the field path and the message.
fn decode<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    unknown: &mut Vec<String>,
) -> Result<T, (String, String)> {
    let mut on_unknown = |path: serde_ignored::Path<'_>| {
        unknown.push(join_path(prefix, &ignored_path(&path)));
    };
    let ignored = serde_ignored::Deserializer::new(value, &mut on_unknown);
    serde_path_to_error::deserialize(ignored).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        (
            join_path(prefix, &path),
            one_line(&err.into_inner().to_string()),
        )
    })
}

/// `serde_ignored`'s path as `a.b[0].c`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join_path(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn root_or(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('.');
    if trimmed.is_empty() {
        "(document)".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn take_string(fields: &mut Map<String, Value>, key: &str) -> Option<String> {
    match fields.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (WireConfig, Diagnostics) {
        let mut diagnostics = Diagnostics::default();
        let mut config = WireConfig::default();
        load_str(text, Path::new("t.yaml"), &mut config, &mut diagnostics);
        (config, diagnostics)
    }

    #[test]
    fn multi_document_with_every_version() {
        let (config, diags) = load(
            r#"
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: vs}
spec: {hosts: [a], gateways: [istio-system/gw]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr}
spec: {host: a, subsets: [{name: v1, labels: {version: v1}}]}
---
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec:
  ports: [{name: http, port: 80, targetPort: http-alt}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [198.18.1.10], conditions: {ready: true}}]
ports: [{name: http, port: 8080}]
"#,
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(config.gateways.len(), 1);
        assert_eq!(config.gateways[0].namespace(), "istio-system");
        assert_eq!(config.virtual_services[0].namespace(), "default");
        assert_eq!(config.destination_rules.len(), 1);
        assert_eq!(
            config.services[0].body.ports.as_ref().unwrap()[0].target_port,
            Some(k8s::IntOrString::String("http-alt".into()))
        );
        // Document indexes count the non-empty documents of the file.
        assert_eq!(config.endpoint_slices[0].source.document, Some(4));
    }

    #[test]
    fn unknown_fields_and_kinds_are_warnings_with_paths() {
        let (config, diags) = load(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: 80, name: http, protocol: HTTP, colour: blue}
    hosts: ["*"]
  sever: []
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
"#,
        );
        assert_eq!(config.gateways.len(), 1);
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(!diags.has_errors(), "{text:?}");
        assert!(
            text.contains(&"warning: t.yaml[0]: gateway default/gw: spec.servers[0].port.colour: unknown field ignored".to_owned()),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("spec.sever: unknown field")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.starts_with("warning: t.yaml[1]: deployment default/d: kind Deployment")), "{text:?}");
    }

    #[test]
    fn type_errors_name_the_field_and_keep_other_documents() {
        let (config, diags) = load(
            r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  servers:
  - port: {number: eighty}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs}
spec: {hosts: [a]}
"#,
        );
        assert_eq!(config.gateways.len(), 0);
        assert_eq!(config.virtual_services.len(), 1);
        let errors: Vec<String> = diags.errors().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "error: t.yaml[0]: gateway default/gw: spec.servers[0].port.number: invalid type"
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn missing_name_bad_yaml_and_lists() {
        let (_, diags) = load("apiVersion: v1\nkind: Service\nmetadata: {}\n");
        assert!(
            diags
                .iter()
                .any(|d| d.field.as_deref() == Some("metadata.name"))
        );
        let (_, diags) = load("a: [\n");
        assert!(diags.has_errors());
        assert!(
            diags
                .iter()
                .next()
                .unwrap()
                .message
                .starts_with("invalid YAML")
        );
        let (config, diags) = load(
            r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a}
  spec: {ports: [{port: 80}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: p, labels: {app: a}}
  spec: {containers: []}
  status: {podIP: 198.18.1.10, phase: Running}
"#,
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(config.services.len(), 1);
        assert_eq!(config.pods.len(), 1);
    }
}
