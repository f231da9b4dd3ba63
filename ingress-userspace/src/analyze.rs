//! Analyze stage: warnings about configs that are valid but will not do
//! what was meant — the mistakes that make a route silently not show up in
//! an Istio gateway:
//!
//! - a VirtualService naming a Gateway that does not exist;
//! - a VirtualService whose hosts intersect no server of its Gateways;
//! - a VirtualService without `gateways` (mesh only, ignored by a gateway);
//! - a destination host with no Service or ServiceEntry, a destination
//!   port the Service does not have, a subset no DestinationRule defines;
//! - a Gateway that does not select this workload;
//! - a Gateway server port missing from the gateway Service;
//! - routes after a catch-all, which can never match.

use crate::compile::{gateway_applies, gateway_services, matching_hosts};
use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{Destination, HttpAction, Meta, Model, RouteDestination};
use crate::snapshot::GatewayIdentity;

/// Appends analyzer warnings for `model` as seen by the workload `identity`.
pub fn analyze(model: &Model, identity: &GatewayIdentity, diagnostics: &mut Diagnostics) {
    let mut warn = |meta: &Meta, kind: &str, field: String, message: String| {
        diagnostics.push(
            Diagnostic::warning(&meta.source, message)
                .resource(format!("{kind} {}", meta.key()))
                .field(field),
        );
    };
    let labels = identity
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");

    // Gateways: selection and the gateway Service's ports.
    let services = gateway_services(model, identity);
    let service = services.first().copied();
    if let [used, others @ ..] = services.as_slice()
        && !others.is_empty()
    {
        let others: Vec<&str> = others.iter().map(|s| s.meta.name.as_str()).collect();
        warn(
            &used.meta,
            "service",
            "spec.selector".into(),
            format!(
                "{} Services in {} select the gateway workload ({labels}); this one gives the ports and nodePorts; ignored: {} (label the one to use {}={})",
                others.len() + 1,
                identity.namespace,
                others.join(", "),
                crate::compile::SERVICE_PROXY_NAME.0,
                crate::compile::SERVICE_PROXY_NAME.1,
            ),
        );
    }
    for gateway in &model.gateways {
        if !gateway_applies(gateway, identity) {
            warn(
                &gateway.meta,
                "gateway",
                "spec.selector".into(),
                format!(
                    "the selector does not match this gateway workload ({labels}); the Gateway is not applied here"
                ),
            );
            continue;
        }
        for server in &gateway.servers {
            let port = server.port.number;
            match service {
                None => warn(
                    &gateway.meta,
                    "gateway",
                    format!("spec.servers[{}].port.number", server.index),
                    format!(
                        "no Service in namespace {} selects the gateway workload ({labels}): port {port} is bound as is and has no nodePort",
                        identity.namespace
                    ),
                ),
                Some(svc) if !svc.ports.iter().any(|p| p.port == port) => warn(
                    &gateway.meta,
                    "gateway",
                    format!("spec.servers[{}].port.number", server.index),
                    format!(
                        "port {port} is missing from the gateway Service {}: add it there (with a nodePort) or clients cannot reach it through the Service",
                        svc.meta.key()
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    let delegates: Vec<(String, String)> = model
        .virtual_services
        .iter()
        .flat_map(|vs| vs.http.iter())
        .filter_map(|r| match &r.action {
            crate::model::HttpAction::Delegate { name, namespace } => {
                Some((namespace.clone(), name.clone()))
            }
            _ => None,
        })
        .collect();
    for vs in &model.virtual_services {
        let is_delegate = delegates
            .iter()
            .any(|(ns, name)| *ns == vs.meta.namespace && *name == vs.meta.name);
        if vs.hosts.is_empty() {
            if !is_delegate {
                warn(
                    &vs.meta,
                    "virtualservice",
                    "spec.hosts".into(),
                    "no hosts and no VirtualService delegates to it: it routes nothing".into(),
                );
            }
            continue;
        }
        if vs.gateways.is_empty() {
            warn(&vs.meta, "virtualservice", "spec.gateways".into(),
                "no gateways: the VirtualService applies to the mesh (sidecars) only and is ignored by the gateway; add the Gateway's name".into());
        }
        let mut bound_servers = 0usize;
        let mut intersecting = 0usize;
        for (i, name) in vs.gateways.iter().enumerate() {
            if name == "mesh" {
                continue;
            }
            let Some(gateway) = model.gateways.iter().find(|g| g.meta.key() == *name) else {
                warn(
                    &vs.meta,
                    "virtualservice",
                    format!("spec.gateways[{i}]"),
                    format!("gateway {name} does not exist; the routes for it never show up"),
                );
                continue;
            };
            bound_servers += gateway.servers.len();
            intersecting += gateway
                .servers
                .iter()
                .filter(|s| !matching_hosts(s, vs).is_empty())
                .count();
        }
        if bound_servers > 0 && intersecting == 0 {
            let hosts = vs
                .hosts
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            warn(
                &vs.meta,
                "virtualservice",
                "spec.hosts".into(),
                format!(
                    "the hosts [{hosts}] match no server host of the bound gateways (mind the namespace part of server hosts); the VirtualService never shows up"
                ),
            );
        }

        let mut check_destination = |field: String, d: &Destination| {
            let service = model.services.iter().find(|s| s.fqdn() == d.host);
            let entry = model
                .service_entries
                .iter()
                .find(|se| se.hosts.iter().any(|h| h.as_str() == d.host));
            let ports: Vec<u16> = match (service, entry) {
                (Some(s), _) => s.ports.iter().map(|p| p.port).collect(),
                (None, Some(se)) => se.ports.iter().map(|p| p.number).collect(),
                (None, None) => {
                    warn(
                        &vs.meta,
                        "virtualservice",
                        format!("{field}.host"),
                        format!(
                            "no Service or ServiceEntry for host {}; requests routed here get 503 (no cluster)",
                            d.host
                        ),
                    );
                    return;
                }
            };
            if let Some(port) = d.port {
                if !ports.contains(&port) {
                    warn(
                        &vs.meta,
                        "virtualservice",
                        format!("{field}.port.number"),
                        format!(
                            "{} has no port {port} (ports: {ports:?}); requests routed here get 503 (no cluster)",
                            d.host
                        ),
                    );
                }
            } else if ports.len() > 1 {
                warn(
                    &vs.meta,
                    "virtualservice",
                    format!("{field}.port"),
                    format!(
                        "{} has several ports {ports:?}; without destination.port the gateway server port is used",
                        d.host
                    ),
                );
            }
            if let Some(subset) = &d.subset {
                let defined = model
                    .destination_rules
                    .iter()
                    .filter(|dr| dr.host.as_str() == d.host)
                    .any(|dr| dr.subsets.iter().any(|s| &s.name == subset));
                if !defined {
                    warn(
                        &vs.meta,
                        "virtualservice",
                        format!("{field}.subset"),
                        format!(
                            "no DestinationRule for {} defines subset {subset:?}; requests routed here get 503 (no cluster)",
                            d.host
                        ),
                    );
                }
            }
        };
        let mut check_all = |prefix: String, destinations: &[RouteDestination]| {
            for (j, d) in destinations.iter().enumerate() {
                check_destination(format!("{prefix}.route[{j}].destination"), &d.destination);
            }
        };
        for route in &vs.http {
            if let HttpAction::Route(destinations) = &route.action {
                check_all(format!("spec.http[{}]", route.index), destinations);
            }
        }
        for route in &vs.tcp {
            check_all(format!("spec.tcp[{}]", route.index), &route.destinations);
        }

        // Routes after a catch-all are dropped, as Istio does.
        let catch_all = vs
            .http
            .iter()
            .position(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.is_catch_all()));
        if let Some(at) = catch_all
            && at + 1 < vs.http.len()
        {
            warn(
                &vs.meta,
                "virtualservice",
                format!("spec.http[{}]", at + 1),
                format!(
                    "unreachable: spec.http[{at}] matches every request, so this and later routes never match"
                ),
            );
        }
    }
}
