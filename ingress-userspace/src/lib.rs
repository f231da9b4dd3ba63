//! `ingressd`: an Envoy-free, eBPF-accelerated Istio ingress gateway.
//!
//! Configuration flows one way through the modules of this crate:
//!
//! ```text
//! wire      YAML files -> typed Kubernetes/Istio objects (unknown fields: warnings)
//! model     -> validated, parsed resources (errors name file, resource, field)
//! analyze   -> warnings about configs that are valid but will not do what was meant
//! compile   -> Istio's binding and precedence rules -> one immutable Snapshot
//! snapshot  the compiled config, and request -> virtual host -> route selection
//!   consumers: proxy (userspace data path), kernel (BPF maps), explain, dump
//! ```
//!
//! `diag`, `wire`, `model`, `analyze`, `compile`, `snapshot`, `kernel_plan`, `explain`,
//! `dump`, `pipeline`, `maglev` and `tls::names` are pure: no tokio, hyper or aya.

pub mod admin;
pub mod analyze;
pub mod compile;
pub mod daemon;
pub mod diag;
pub mod dump;
pub mod explain;
pub mod kernel;
pub mod kernel_plan;
pub mod maglev;
pub mod model;
pub mod pipeline;
pub mod proxy;
pub mod snapshot;
pub mod source;
pub mod stats;
pub mod tls;
pub mod wire;

/// Parsing a large config peaks far above what the snapshot keeps (10,000
/// VirtualServices: ~230 MB while parsing, ~60 MB after); mimalloc returns
/// freed pages to the OS only when the thread allocates again, and the
/// pipeline's thread goes idle, so collect now.
pub fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions; it only frees memory this
    // thread's heap no longer uses (and is a no-op without mimalloc in use).
    unsafe { libmimalloc_sys::mi_collect(true) };
}
