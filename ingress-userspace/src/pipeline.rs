//! The config pipeline end to end: directory -> wire -> model -> analyze ->
//! compile. The daemon, `check`, `explain` and `dump` all enter here, so they
//! see the same diagnostics and the same snapshot.

use std::path::Path;

use crate::diag::Diagnostics;
use crate::snapshot::{GatewayIdentity, Snapshot};
use crate::{analyze, compile, model, wire};

/// What the pipeline needs besides the files.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The gateway workload this daemon is (namespace and labels).
    pub gateway: GatewayIdentity,
}

/// The result of one pipeline run.
#[derive(Debug)]
pub struct Outcome {
    /// `Some` when there were no errors. Its `diagnostics` hold the warnings.
    pub snapshot: Option<Snapshot>,
    /// Every error and warning: loading and validation in file order, then
    /// analyzer and compiler warnings.
    pub diagnostics: Diagnostics,
}

/// Loads every `*.yaml`/`*.yml` under `dir` and compiles it.
pub fn build_from_dir(dir: &Path, options: &Options) -> Outcome {
    let mut diagnostics = Diagnostics::default();
    let wire = wire::load_dir(dir, &mut diagnostics);
    build_from_wire(&wire, options, diagnostics)
}

/// Compiles objects already loaded (by the directory or another source).
///
/// Any error rejects the whole configuration: a daemon keeps serving its
/// last good snapshot rather than a partial one.
pub fn build_from_wire(
    wire: &wire::WireConfig,
    options: &Options,
    mut diagnostics: Diagnostics,
) -> Outcome {
    let model = model::build(wire, &mut diagnostics);
    analyze::analyze(&model, &options.gateway, &mut diagnostics);
    let mut snapshot = compile::compile(&model, &options.gateway, &mut diagnostics);
    if diagnostics.has_errors() {
        return Outcome {
            snapshot: None,
            diagnostics,
        };
    }
    snapshot.diagnostics = diagnostics.clone();
    Outcome {
        snapshot: Some(snapshot),
        diagnostics,
    }
}
