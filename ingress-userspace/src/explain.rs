//! Consumer: `ingressd explain`, where one request would go.

use serde::Serialize;

use crate::snapshot::Snapshot;

/// The request to explain.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Query {
    pub port: u16,
    pub host: Option<String>,
    pub path: Option<String>,
    pub method: Option<String>,
    /// `http`, `http2` or `tcp`; default from the listener.
    pub protocol: Option<String>,
    pub tls: bool,
    pub sni: Option<String>,
}

/// One JSON object: listener, route_config, virtual_host, route, cluster,
/// endpoints, and `error` when the request would not reach a backend.
pub fn explain(snapshot: &Snapshot, query: &Query) -> serde_json::Value {
    let _ = (snapshot, query);
    serde_json::json!({ "error": "no_listener" })
}
