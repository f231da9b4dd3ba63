//! Deployment: `deploy/manifests/ingressd.yaml` (the Helm chart rendered at its defaults)
//! parsed into k8s-openapi types, its security-relevant fields asserted, and the chart,
//! its values and the Containerfile checked against it. Needs no root and no cluster.
//!
//! With `helm` on PATH the chart is also rendered and compared with the committed
//! manifests (and rendered with a few values changed); `BLESS=1` then rewrites the
//! committed file from the chart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Release name and namespace the committed manifests are rendered for.
const RELEASE: &str = "ingressd";
const NAMESPACE: &str = "istio-system";
/// Where the daemon serves `/healthz/ready` and `/healthz/live`.
const STATUS_PORT: i32 = 15021;
/// The article's ports: (name, port, targetPort, nodePort).
const GATEWAY_PORTS: &[(&str, i32, i32, i32)] =
    &[("http2", 80, 8080, 30080), ("https", 443, 8443, 30443)];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo().join("deploy/helm/ingressd")
}

fn manifests_path() -> PathBuf {
    repo().join("deploy/manifests/ingressd.yaml")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The objects of one rendering, each kind exactly once.
struct Manifests {
    daemon_set: DaemonSet,
    service: Service,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    cluster_role_binding: ClusterRoleBinding,
    role: Role,
    role_binding: RoleBinding,
}

/// The documents of a multi-document YAML stream, as JSON values (empty documents
/// dropped, as kubectl does).
fn documents(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// `doc` as a `T`, failing on any field `T` does not know: k8s-openapi ignores unknown
/// fields, so a misspelt field (`hostNetwrok`) would otherwise vanish silently. The object
/// is serialized back and must equal the document.
fn typed<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<T> {
    let object: T = serde_json::from_value(doc.clone())?;
    let back = serde_json::to_value(&object)?;
    let mut differences = Vec::new();
    diff(doc, &back, "", &mut differences);
    ensure!(
        differences.is_empty(),
        "fields the Kubernetes type does not know or reads differently: {}",
        differences.join("; ")
    );
    Ok(object)
}

/// Paths where `a` (the document) and `b` (its round trip) differ.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let sub = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(l), Some(r)) => diff(l, r, &sub, out),
                    (Some(l), None) => out.push(format!("{sub}: {l} is dropped")),
                    (None, Some(r)) => out.push(format!("{sub}: {r} appears")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                diff(l, r, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} became {b}")),
        _ => {}
    }
}

fn parse_manifests(text: &str) -> Result<Manifests> {
    let mut daemon_set = None;
    let mut service = None;
    let mut service_account = None;
    let mut cluster_role = None;
    let mut cluster_role_binding = None;
    let mut role = None;
    let mut role_binding = None;
    fn set<T>(slot: &mut Option<T>, value: T, what: &str) -> Result<()> {
        ensure!(slot.is_none(), "more than one {what}");
        *slot = Some(value);
        Ok(())
    }
    for (i, doc) in documents(text)?.iter().enumerate() {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let ctx = || format!("document {i} ({api_version} {kind})");
        match (api_version, kind) {
            ("apps/v1", "DaemonSet") => set(&mut daemon_set, typed(doc).with_context(ctx)?, kind),
            ("v1", "Service") => set(&mut service, typed(doc).with_context(ctx)?, kind),
            ("v1", "ServiceAccount") => {
                set(&mut service_account, typed(doc).with_context(ctx)?, kind)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                set(&mut cluster_role, typed(doc).with_context(ctx)?, kind)
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => set(
                &mut cluster_role_binding,
                typed(doc).with_context(ctx)?,
                kind,
            ),
            ("rbac.authorization.k8s.io/v1", "Role") => {
                set(&mut role, typed(doc).with_context(ctx)?, kind)
            }
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                set(&mut role_binding, typed(doc).with_context(ctx)?, kind)
            }
            _ => bail!(
                "{}: not an object the deployment is expected to have",
                ctx()
            ),
        }?;
    }
    Ok(Manifests {
        daemon_set: daemon_set.context("no DaemonSet")?,
        service: service.context("no Service")?,
        service_account: service_account.context("no ServiceAccount")?,
        cluster_role: cluster_role.context("no ClusterRole")?,
        cluster_role_binding: cluster_role_binding.context("no ClusterRoleBinding")?,
        role: role.context("no Role")?,
        role_binding: role_binding.context("no RoleBinding")?,
    })
}

fn committed() -> Manifests {
    parse_manifests(&read(&manifests_path()))
        .unwrap_or_else(|e| panic!("{}: {e:#}", manifests_path().display()))
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the DaemonSet has a pod template spec")
}

/// The one container, `ingressd`.
fn container(ds: &DaemonSet) -> &Container {
    let pod = pod_spec(ds);
    assert_eq!(pod.containers.len(), 1, "one container in the gateway pod");
    assert!(pod.init_containers.is_none(), "no init containers");
    assert_eq!(pod.containers[0].name, "ingressd");
    &pod.containers[0]
}

fn args(ds: &DaemonSet) -> &[String] {
    container(ds).args.as_deref().unwrap_or_default()
}

/// The value after `name` in the argument list (which must hold `name` at most once).
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let at: Vec<usize> = (0..args.len()).filter(|&i| args[i] == name).collect();
    assert!(at.len() <= 1, "{name} given {} times: {args:?}", at.len());
    at.first()
        .map(|&i| args.get(i + 1).map(String::as_str).unwrap_or_default())
}

fn pod_labels(ds: &DaemonSet) -> BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn pod_annotations(ds: &DaemonSet) -> BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

/// `--gateway-labels k=v,k2=v2` as a map.
fn gateway_labels_arg(ds: &DaemonSet) -> BTreeMap<String, String> {
    let arg = flag(args(ds), "--gateway-labels").expect("--gateway-labels is given");
    arg.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The capabilities the container adds, in order.
fn added_capabilities(ds: &DaemonSet) -> Vec<String> {
    container(ds)
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
}

/// (path, port) of an httpGet probe.
fn http_probe(probe: Option<&Probe>, which: &str) -> (String, i32) {
    let get = probe
        .and_then(|p| p.http_get.as_ref())
        .unwrap_or_else(|| panic!("{which} is an httpGet probe"));
    let port = match &get.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => panic!("{which} probes the named port {s}; use the number"),
    };
    (get.path.clone().unwrap_or_default(), port)
}

/// Prometheus may scrape only what answers: annotations exactly when the metrics port
/// (`--metrics-addr`, `/stats/prometheus` alone) is on, and then on its port; the admin API
/// (`/quitquitquit`) stays on loopback either way.
fn assert_metrics_consistent(ds: &DaemonSet) {
    let admin: SocketAddr = flag(args(ds), "--admin-addr")
        .expect("--admin-addr is given")
        .parse()
        .expect("--admin-addr is an address");
    assert!(admin.ip().is_loopback(), "admin API on {admin}");
    let metrics = flag(args(ds), "--metrics-addr").expect("--metrics-addr is given");
    // Off reads as a loopback address below: no annotations.
    let admin: SocketAddr = if metrics == "off" {
        admin
    } else {
        metrics
            .parse()
            .expect("--metrics-addr is an address or off")
    };
    let annotations = pod_annotations(ds);
    if admin.ip().is_loopback() {
        let scrape: Vec<&String> = annotations
            .keys()
            .filter(|k| k.starts_with("prometheus.io/"))
            .collect();
        assert!(
            scrape.is_empty(),
            "scrape annotations {scrape:?} point at no metrics port"
        );
    } else {
        assert_eq!(
            annotations.get("prometheus.io/scrape").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&admin.port().to_string()),
            "the scrape port is the metrics port"
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/stats/prometheus")
        );
        let ports = container(ds).ports.clone().unwrap_or_default();
        assert!(
            ports
                .iter()
                .any(|p| p.container_port == i32::from(admin.port())),
            "the metrics port is declared as a host port: {ports:?}"
        );
    }
}

#[test]
fn manifests_hold_exactly_the_expected_objects_in_the_release_namespace() {
    let m = committed();
    let name = m.daemon_set.metadata.name.as_deref();
    assert_eq!(name, Some(RELEASE));
    for (kind, namespace) in [
        ("DaemonSet", &m.daemon_set.metadata.namespace),
        ("Service", &m.service.metadata.namespace),
        ("ServiceAccount", &m.service_account.metadata.namespace),
        ("Role", &m.role.metadata.namespace),
        ("RoleBinding", &m.role_binding.metadata.namespace),
    ] {
        assert_eq!(namespace.as_deref(), Some(NAMESPACE), "{kind}");
    }
    assert!(m.cluster_role.metadata.namespace.is_none());
    assert!(m.cluster_role_binding.metadata.namespace.is_none());
}

#[test]
fn gateway_runs_on_the_host_network_with_the_narrowest_capabilities() {
    let ds = committed().daemon_set;
    let pod = pod_spec(&ds);
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_ne!(pod.host_pid, Some(true), "no hostPID");
    assert_ne!(pod.host_ipc, Some(true), "no hostIPC");

    let sc = container(&ds)
        .security_context
        .as_ref()
        .expect("the container has a securityContext");
    assert_ne!(sc.privileged, Some(true), "not privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false), "no_new_privs");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // UID 0 with the capabilities below (the Containerfile says why not a non-root UID
    // with file capabilities); stated explicitly, not left to the image's USER.
    assert_eq!(sc.run_as_user, Some(0), "runAsUser");
    assert_eq!(sc.run_as_group, Some(0), "runAsGroup");
    assert_eq!(sc.run_as_non_root, Some(false), "runAsNonRoot");
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "drop ALL"
    );
    let mut added = added_capabilities(&ds);
    added.sort();
    assert_eq!(added, ["BPF", "NET_ADMIN", "PERFMON"], "added capabilities");
    assert!(
        pod.security_context
            .as_ref()
            .is_none_or(|p| p.run_as_user.is_none() && p.run_as_non_root.is_none()),
        "the identity is set on the container only"
    );
}

#[test]
fn bpffs_comes_from_the_host_without_mount_propagation() {
    let ds = committed().daemon_set;
    let volumes = pod_spec(&ds).volumes.clone().unwrap_or_default();
    assert_eq!(volumes.len(), 1, "the only volume is bpffs: {volumes:?}");
    let host = volumes[0].host_path.as_ref().expect("a hostPath volume");
    assert_eq!(host.path, "/sys/fs/bpf");
    assert_eq!(host.type_.as_deref(), Some("Directory"));
    let mounts = container(&ds).volume_mounts.clone().unwrap_or_default();
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].name, volumes[0].name);
    assert_eq!(mounts[0].mount_path, "/sys/fs/bpf");
    assert!(
        mounts[0]
            .mount_propagation
            .as_deref()
            .is_none_or(|p| p == "None"),
        "Bidirectional needs privileged and HostToContainer is not needed"
    );
    assert_ne!(mounts[0].read_only, Some(true), "pins are written there");
    let root = flag(args(&ds), "--bpffs-root").expect("--bpffs-root");
    assert!(
        root.starts_with("/sys/fs/bpf/"),
        "pins under the mounted bpffs: {root}"
    );
}

#[test]
fn probes_rollout_and_resources() {
    let ds = committed().daemon_set;
    let c = container(&ds);
    assert_eq!(
        http_probe(c.readiness_probe.as_ref(), "readiness"),
        ("/healthz/ready".to_owned(), STATUS_PORT)
    );
    assert_eq!(
        http_probe(c.liveness_probe.as_ref(), "liveness"),
        ("/healthz/live".to_owned(), STATUS_PORT)
    );
    if c.startup_probe.is_some() {
        assert_eq!(
            http_probe(c.startup_probe.as_ref(), "startup"),
            ("/healthz/live".to_owned(), STATUS_PORT),
            "a startup probe must not wait for readiness (syncing may take long)"
        );
    }
    // Probes come from the kubelet on the node's address.
    assert_eq!(
        flag(args(&ds), "--status-addr"),
        Some(format!("0.0.0.0:{STATUS_PORT}").as_str())
    );

    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert!(
        rolling
            .max_surge
            .as_ref()
            .is_none_or(|s| *s == IntOrString::Int(0)),
        "no surge: two gateways on a node would share host ports and pins"
    );

    let drain = flag(args(&ds), "--drain-timeout").expect("--drain-timeout");
    let drain: i64 = drain
        .strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("--drain-timeout {drain} in whole seconds"));
    let grace = pod_spec(&ds)
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace > drain,
        "grace period {grace}s must exceed the drain {drain}s"
    );

    let resources = c.resources.as_ref().expect("resources");
    for (what, set) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let set = set.as_ref().unwrap_or_else(|| panic!("resources.{what}"));
        for key in ["cpu", "memory"] {
            assert!(
                set.get(key).is_some_and(|q| !q.0.is_empty()),
                "resources.{what}.{key}"
            );
        }
    }
}

#[test]
fn command_line_and_downward_api() {
    let ds = committed().daemon_set;
    let c = container(&ds);
    assert!(c.command.is_none(), "the image's ENTRYPOINT runs ingressd");
    let args = args(&ds);
    assert_eq!(args.first().map(String::as_str), Some("run"));
    for (name, value) in [
        ("--source", "kubernetes"),
        ("--gateway-namespace", "$(POD_NAMESPACE)"),
        ("--gateway-labels", "istio=ingressgateway"),
        ("--node-name", "$(NODE_NAME)"),
        ("--host-ip", "$(HOST_IP)"),
        ("--kernel", "auto"),
        ("--bpffs-root", "/sys/fs/bpf/ingressd"),
        ("--status-addr", "0.0.0.0:15021"),
        ("--admin-addr", "127.0.0.1:15000"),
        ("--metrics-addr", "0.0.0.0:15090"),
        ("--drain-timeout", "5s"),
    ] {
        assert_eq!(flag(args, name), Some(value), "{name} in {args:?}");
    }
    assert_eq!(
        flag(args, "--config"),
        None,
        "the API is the source, not a directory"
    );
    assert_eq!(
        flag(args, "--interfaces"),
        None,
        "only when set in the values"
    );

    let env: BTreeMap<&str, Option<&str>> = c
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let field = e
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            (e.name.as_str(), field)
        })
        .collect();
    for (name, field) in [
        ("NODE_NAME", "spec.nodeName"),
        ("HOST_IP", "status.hostIP"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        assert_eq!(env.get(name).copied(), Some(Some(field)), "env {name}");
    }
    // Kubernetes leaves an undefined $(VAR) in place, which the daemon would take literally.
    for arg in args {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find("$(") {
            let end = rest[start..].find(')').expect("$(VAR) is closed") + start;
            let var = &rest[start + 2..end];
            assert!(env.contains_key(var), "{arg} refers to {var}, not in env");
            rest = &rest[end + 1..];
        }
    }
}

/// The DaemonSet's arguments with the downward-API variables filled in, and the parts
/// that would touch this machine (the kernel path, the node's ports, bpffs) made harmless.
fn runnable_args(ds: &DaemonSet, scratch: &Path) -> Vec<String> {
    let fill = [
        ("$(POD_NAMESPACE)", NAMESPACE),
        ("$(NODE_NAME)", "node-1"),
        ("$(HOST_IP)", "198.18.0.1"),
        ("$(POD_NAME)", "ingressd-x1y2z"),
    ];
    let mut out: Vec<String> = Vec::new();
    for arg in args(ds) {
        let previous = out.last().map(String::as_str);
        let value = match previous {
            Some("--kernel") => "off".to_owned(),
            Some("--status-addr" | "--admin-addr" | "--metrics-addr") => "127.0.0.1:0".to_owned(),
            Some("--bpffs-root") => scratch.join("bpf").to_string_lossy().into_owned(),
            _ => fill
                .iter()
                .fold(arg.clone(), |a, (var, value)| a.replace(var, value)),
        };
        out.push(value);
    }
    out
}

#[test]
fn daemon_accepts_the_chart_command_line() {
    // The chart's arguments must parse: a flag the daemon does not know would crash-loop
    // every gateway. Without a cluster the daemon stops at finding one (exit 1, after
    // parsing), before the kernel path or any listener other than the status port.
    let ds = committed().daemon_set;
    let scratch = tempfile::tempdir().expect("temp dir");
    let args = runnable_args(&ds, scratch.path());
    let bin = ingressd_tests::ingressd_bin().expect("the ingressd binary");
    let mut cmd = Command::new(&bin);
    cmd.args(&args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", scratch.path())
        .env("KUBECONFIG", scratch.path().join("no-kubeconfig"));
    let out = ingressd_tests::run_bounded(&mut cmd, std::time::Duration::from_secs(30))
        .expect("ingressd exits without a cluster");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "ingressd rejects the chart's command line {args:?}: {stderr}"
    );
    assert!(
        !out.status.success(),
        "no cluster, yet ingressd succeeded: {stderr}"
    );
    assert!(
        stderr.contains("kubeconfig"),
        "ingressd stopped elsewhere than at finding the cluster: {stderr}"
    );
}

#[test]
fn admin_api_stays_on_loopback_and_scrape_annotations_follow_it() {
    let ds = committed().daemon_set;
    // POST /quitquitquit must not be reachable from the cluster by default.
    let admin: SocketAddr = flag(args(&ds), "--admin-addr")
        .expect("--admin-addr")
        .parse()
        .expect("an address");
    assert!(admin.ip().is_loopback(), "admin API on {admin}");
    assert_metrics_consistent(&ds);
}

/// (apiGroup, resource, verb) triples a set of rules grants; wildcards, resourceNames and
/// nonResourceURLs fail the test.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.resource_names.is_none(), "resourceNames in {rule:?}");
        assert!(
            rule.non_resource_urls.is_none(),
            "nonResourceURLs in {rule:?}"
        );
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        assert!(!groups.is_empty() && !resources.is_empty(), "{rule:?}");
        for g in &groups {
            for r in &resources {
                for v in &rule.verbs {
                    for part in [g, r, v] {
                        assert!(!part.contains('*'), "wildcard in {rule:?}");
                    }
                    assert!(
                        out.insert((g.clone(), r.clone(), v.clone())),
                        "{g}/{r} {v} twice"
                    );
                }
            }
        }
    }
    out
}

fn triples(
    group: &str,
    resources: &[&str],
    verbs: &[&str],
) -> impl Iterator<Item = (String, String, String)> {
    let group = group.to_owned();
    resources.iter().flat_map(move |r| {
        let group = group.clone();
        verbs
            .iter()
            .map(move |v| (group.clone(), (*r).to_owned(), (*v).to_owned()))
    })
}

const READ: &[&str] = &["get", "list", "watch"];

#[test]
fn cluster_role_reads_exactly_the_watched_kinds_and_writes_only_events() {
    let role = committed().cluster_role;
    assert!(role.aggregation_rule.is_none());
    let granted = grants(role.rules.as_deref().unwrap_or_default());
    let expected: BTreeSet<_> = triples(
        "networking.istio.io",
        &[
            "gateways",
            "virtualservices",
            "destinationrules",
            "serviceentries",
        ],
        READ,
    )
    .chain(triples("", &["services", "pods"], READ))
    .chain(triples("", &["nodes"], &["get"]))
    .chain(triples("discovery.k8s.io", &["endpointslices"], READ))
    .chain(triples("events.k8s.io", &["events"], &["create", "patch"]))
    .collect();
    let missing: Vec<_> = expected.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert!(granted.iter().all(|(_, r, _)| r != "secrets"));
}

#[test]
fn secrets_are_readable_in_the_gateway_namespace_only() {
    let role = committed().role;
    assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
    let granted = grants(role.rules.as_deref().unwrap_or_default());
    let expected: BTreeSet<_> = triples("", &["secrets"], READ).collect();
    assert_eq!(granted, expected);
}

fn assert_binds(role_ref: &RoleRef, subjects: &[Subject], kind: &str, role: &str, sa: &str) {
    assert_eq!(role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(role_ref.kind, kind);
    assert_eq!(role_ref.name, role);
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, sa);
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
}

#[test]
fn bindings_grant_the_roles_to_the_gateway_service_account() {
    let m = committed();
    let sa = m.service_account.metadata.name.clone().expect("SA name");
    assert_eq!(
        pod_spec(&m.daemon_set).service_account_name.as_deref(),
        Some(sa.as_str()),
        "the pods run as the bound ServiceAccount"
    );
    assert_ne!(
        pod_spec(&m.daemon_set).automount_service_account_token,
        Some(false),
        "the daemon needs its token"
    );
    let cluster_role = m.cluster_role.metadata.name.clone().expect("name");
    assert_binds(
        &m.cluster_role_binding.role_ref,
        m.cluster_role_binding
            .subjects
            .as_deref()
            .unwrap_or_default(),
        "ClusterRole",
        &cluster_role,
        &sa,
    );
    let role = m.role.metadata.name.clone().expect("name");
    assert_eq!(
        m.role_binding.metadata.namespace.as_deref(),
        Some(NAMESPACE)
    );
    assert_binds(
        &m.role_binding.role_ref,
        m.role_binding.subjects.as_deref().unwrap_or_default(),
        "Role",
        &role,
        &sa,
    );
}

/// (name, port, targetPort, nodePort) of the Service's ports, all TCP.
fn service_ports(service: &Service) -> Vec<(String, i32, i32, i32)> {
    let spec = service.spec.as_ref().expect("Service spec");
    spec.ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            assert_eq!(p.protocol.as_deref(), Some("TCP"), "{p:?}");
            let target = match &p.target_port {
                Some(IntOrString::Int(n)) => *n,
                other => panic!("targetPort {other:?}: a number, the port the daemon binds"),
            };
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                target,
                p.node_port.unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn gateway_service_is_a_node_port_service_kube_proxy_leaves_alone() {
    let m = committed();
    let svc = &m.service;
    assert_eq!(svc.metadata.name.as_deref(), Some("istio-ingressgateway"));
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("service.kubernetes.io/service-proxy-name")
            .map(String::as_str),
        Some("ingressd")
    );
    assert_eq!(
        labels.get("istio").map(String::as_str),
        Some("ingressgateway")
    );
    let spec = svc.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    let expected: Vec<(String, i32, i32, i32)> = GATEWAY_PORTS
        .iter()
        .map(|(n, p, t, np)| ((*n).to_owned(), *p, *t, *np))
        .collect();
    assert_eq!(service_ports(svc), expected);

    // The Service selects the gateway pods by the gateway labels the daemon is given.
    let selector = spec.selector.clone().unwrap_or_default();
    assert_eq!(
        selector,
        BTreeMap::from([("istio".to_owned(), "ingressgateway".to_owned())])
    );
    assert_eq!(gateway_labels_arg(&m.daemon_set), selector);
    let pods = pod_labels(&m.daemon_set);
    for (k, v) in &selector {
        assert_eq!(pods.get(k), Some(v), "pod label {k}");
    }
    // The status and metrics ports are declared host ports; the listener ports are not,
    // so a port added to the Service changes no pod (the daemon follows the Service live).
    let declared: BTreeSet<i32> = container(&m.daemon_set)
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(declared, BTreeSet::from([STATUS_PORT, 15090]));
}

/// The `kind:`s a chart template file declares (top-level lines only).
fn template_kinds() -> BTreeSet<String> {
    let dir = chart_dir().join("templates");
    let mut kinds = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("templates/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            for line in read(&path).lines() {
                if let Some(kind) = line.strip_prefix("kind: ") {
                    kinds.insert(kind.trim().to_owned());
                }
            }
        }
    }
    kinds
}

fn yaml_file(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn chart_templates_and_values_agree_with_the_rendered_manifests() {
    let text = read(&manifests_path());
    let rendered_kinds: BTreeSet<String> = documents(&text)
        .expect("manifests parse")
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        template_kinds(),
        rendered_kinds,
        "kinds in templates/ vs rendered"
    );

    let m = committed();
    let values = yaml_file(&chart_dir().join("values.yaml"));
    let chart = yaml_file(&chart_dir().join("Chart.yaml"));
    let c = container(&m.daemon_set);

    // Image: repository and tag, the tag defaulting to appVersion.
    let tag = match values["image"]["tag"].as_str() {
        Some("") | None => chart["appVersion"].as_str().expect("appVersion"),
        Some(tag) => tag,
    };
    let image = format!(
        "{}:{tag}",
        values["image"]["repository"].as_str().expect("repo")
    );
    assert_eq!(c.image.as_deref(), Some(image.as_str()));
    assert_eq!(
        c.image_pull_policy.as_deref(),
        values["image"]["pullPolicy"].as_str()
    );

    // The gateway Service.
    assert_eq!(
        m.service.metadata.name.as_deref(),
        values["service"]["name"].as_str()
    );
    let spec = m.service.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), values["service"]["type"].as_str());
    let value_ports: Vec<(String, i32, i32, i32)> = values["service"]["ports"]
        .as_array()
        .expect("service.ports")
        .iter()
        .map(|p| {
            let n = |k: &str| p[k].as_i64().and_then(|n| i32::try_from(n).ok()).expect(k);
            (
                p["name"].as_str().expect("name").to_owned(),
                n("port"),
                n("targetPort"),
                n("nodePort"),
            )
        })
        .collect();
    assert_eq!(service_ports(&m.service), value_ports, "service.ports");

    // Gateway labels everywhere they are used.
    let labels: BTreeMap<String, String> =
        serde_json::from_value(values["gateway"]["labels"].clone()).expect("gateway.labels");
    assert_eq!(spec.selector.as_ref(), Some(&labels));
    assert_eq!(gateway_labels_arg(&m.daemon_set), labels);

    // Capabilities (no targetPort below 1024 at the defaults, so exactly the list).
    let caps: Vec<String> =
        serde_json::from_value(values["securityContext"]["capabilities"]["add"].clone())
            .expect("securityContext.capabilities.add");
    assert_eq!(added_capabilities(&m.daemon_set), caps);
    assert_eq!(
        container(&m.daemon_set)
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref())
            .map(|p| json!({"type": p.type_})),
        Some(values["securityContext"]["seccompProfile"].clone())
    );

    // Resources, compared as JSON (quantities are strings on both sides).
    assert_eq!(
        serde_json::to_value(c.resources.as_ref().expect("resources")).expect("json"),
        values["resources"],
        "resources"
    );

    // The daemon's flags from the values.
    let a = args(&m.daemon_set);
    assert_eq!(flag(a, "--kernel"), values["kernel"].as_str());
    assert_eq!(flag(a, "--log-format"), values["logFormat"].as_str());
    assert_eq!(
        flag(a, "--access-log-format"),
        values["accessLogFormat"].as_str()
    );
    let drain = values["drainTimeoutSeconds"]
        .as_i64()
        .expect("drainTimeoutSeconds");
    assert_eq!(
        flag(a, "--drain-timeout"),
        Some(format!("{drain}s").as_str())
    );
    assert_eq!(
        pod_spec(&m.daemon_set).termination_grace_period_seconds,
        Some(drain + 5)
    );
    assert_eq!(values["interfaces"], json!([]));
    assert_eq!(
        values["tlsSecretNames"],
        json!([]),
        "the Role has no resourceNames"
    );
    assert_eq!(values["extraArgs"], json!([]));
    assert_eq!(values["metrics"]["enabled"], json!(true));
    assert_eq!(values["metrics"]["port"], json!(15090));

    // Scheduling.
    let strategy = m
        .daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone());
    assert_eq!(
        strategy.map(|s| serde_json::to_value(s).expect("json")),
        Some(values["updateStrategy"]["maxUnavailable"].clone())
    );
    assert_eq!(
        pod_spec(&m.daemon_set)
            .node_selector
            .as_ref()
            .map(|s| serde_json::to_value(s).expect("json")),
        Some(values["nodeSelector"].clone())
    );
    assert_eq!(values["tolerations"], json!([]));
    assert!(pod_spec(&m.daemon_set).tolerations.is_none());
}

#[test]
fn containerfile_matches_the_pod_security_context() {
    let text = read(&repo().join("Containerfile"));
    let code: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let final_stage = code
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    let runtime = &code[final_stage..];
    assert!(
        runtime[0].starts_with("FROM gcr.io/distroless/cc-debian12"),
        "distroless runtime: {}",
        runtime[0]
    );
    // The image's default user is unprivileged; the DaemonSet states UID 0 itself (checked
    // above), so nothing depends on the image's USER.
    assert!(runtime.contains(&"USER 65532:65532"), "{runtime:?}");
    assert!(runtime.contains(&r#"ENTRYPOINT ["/usr/local/bin/ingressd"]"#));
    // File capabilities would need allowPrivilegeEscalation: true; the pod sets false.
    assert!(
        !code.iter().any(|l| l.contains("setcap")),
        "the binary carries no file capabilities"
    );
}

/// `helm template` of the chart with `extra` arguments (`--set ...`), `None` when helm is
/// not installed.
fn helm_template(extra: &[&str]) -> Option<String> {
    let chart = chart_dir();
    let mut cmd = Command::new("helm");
    cmd.args(["template", RELEASE])
        .arg(&chart)
        .args(["--namespace", NAMESPACE])
        .args(extra);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running helm: {e}"),
    };
    assert!(
        out.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("UTF-8"))
}

/// The lines of the committed file before the rendered documents.
fn header(text: &str) -> &str {
    let end = text.find("\n---\n").map_or(0, |i| i + 1);
    &text[..end]
}

/// Documents keyed by kind and name, for a comparison that ignores their order.
fn keyed(text: &str) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for doc in documents(text).expect("YAML") {
        let key = (
            doc["kind"].as_str().unwrap_or_default().to_owned(),
            doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        assert!(out.insert(key.clone(), doc).is_none(), "{key:?} twice");
    }
    out
}

#[test]
fn helm_renders_the_committed_manifests() {
    let Some(rendered) = helm_template(&[]) else {
        println!("deploy: helm is not installed; the chart was not rendered and compared");
        return;
    };
    let path = manifests_path();
    let committed_text = read(&path);
    if std::env::var("BLESS").is_ok_and(|v| v == "1") {
        let text = format!("{}{rendered}", header(&committed_text));
        std::fs::write(&path, text).expect("writing the manifests");
        println!("deploy: rewrote {} from the chart", path.display());
        return;
    }
    let (ours, helms) = (keyed(&committed_text), keyed(&rendered));
    let mut differences = Vec::new();
    for key in ours
        .keys()
        .chain(helms.keys().filter(|k| !ours.contains_key(*k)))
    {
        let (a, b) = (ours.get(key), helms.get(key));
        match (a, b) {
            (Some(a), Some(b)) => diff(a, b, &format!("{key:?}"), &mut differences),
            _ => differences.push(format!("{key:?}: only in one of them")),
        }
    }
    assert!(
        differences.is_empty(),
        "deploy/manifests/ingressd.yaml differs from `helm template` (BLESS=1 rewrites it):\n{}",
        differences.join("\n")
    );
    println!("deploy: helm template output equals the committed manifests");
    if committed_text[header(&committed_text).len()..] != rendered {
        // Comments or layout only (the objects are equal); another helm version may
        // print the same objects differently, so this is not a failure.
        println!(
            "deploy: the comments or layout differ from this helm's output; BLESS=1 rewrites them"
        );
    }

    // Values that change the security-relevant parts.
    let metrics =
        parse_manifests(&helm_template(&["--set", "metrics.enabled=false"]).expect("helm"))
            .expect("metrics rendering");
    assert_eq!(
        flag(args(&metrics.daemon_set), "--metrics-addr"),
        Some("off")
    );
    assert_metrics_consistent(&metrics.daemon_set);

    let low_port = r#"service.ports=[{"name":"http","port":80,"targetPort":80,"nodePort":30080}]"#;
    let low = parse_manifests(&helm_template(&["--set-json", low_port]).expect("helm"))
        .expect("low port rendering");
    let mut caps = added_capabilities(&low.daemon_set);
    caps.sort();
    assert_eq!(caps, ["BPF", "NET_ADMIN", "NET_BIND_SERVICE", "PERFMON"]);

    let interfaces =
        parse_manifests(&helm_template(&["--set", "interfaces={eth0,eth1}"]).expect("helm"))
            .expect("interfaces rendering");
    assert_eq!(
        flag(args(&interfaces.daemon_set), "--interfaces"),
        Some("eth0,eth1")
    );
    let names = parse_manifests(
        &helm_template(&[
            "--set-json",
            r#"tlsSecretNames=["counter-cert","counter-cert-cacert"]"#,
        ])
        .expect("helm"),
    )
    .expect("secret names rendering");
    let rules = names.role.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["counter-cert".to_owned(), "counter-cert-cacert".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["secrets".to_owned()][..])
    );
    println!(
        "deploy: helm renderings with metrics, a port below 1024, interfaces and Secret names checked"
    );
}
