//! Consumer: the snapshot as Envoy's v3 `/config_dump` JSON.

use crate::snapshot::Snapshot;

/// The `/config_dump` document for `snapshot`.
pub fn config_dump(snapshot: &Snapshot) -> serde_json::Value {
    let _ = snapshot;
    serde_json::json!({ "configs": [] })
}
