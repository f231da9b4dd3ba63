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
/// last good snapshot rather than a partial one. This is the directory
/// source's rule, where one edit is one change a person makes and can fix.
pub fn build_from_wire(
    wire: &wire::WireConfig,
    options: &Options,
    diagnostics: Diagnostics,
) -> Outcome {
    let outcome = build_per_object(wire, options, diagnostics);
    if outcome.diagnostics.has_errors() {
        return Outcome {
            snapshot: None,
            diagnostics: outcome.diagnostics,
        };
    }
    outcome
}

/// Compiles objects already loaded, leaving out each object that has an
/// error (the loader and the model drop them; binding and compiling only
/// ever warn) and applying the rest: the Kubernetes source's rule, where
/// objects come from many owners and one invalid object must not stop the
/// others. The snapshot is always `Some`; its diagnostics hold the errors.
pub fn build_per_object(
    wire: &wire::WireConfig,
    options: &Options,
    mut diagnostics: Diagnostics,
) -> Outcome {
    let model = model::build(wire, &mut diagnostics);
    analyze::analyze(&model, &options.gateway, &mut diagnostics);
    let mut snapshot = compile::compile(&model, &options.gateway, &mut diagnostics);
    snapshot.diagnostics = diagnostics.clone();
    Outcome {
        snapshot: Some(snapshot),
        diagnostics,
    }
}
