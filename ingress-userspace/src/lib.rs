//! `ingressd`: an Envoy-free, eBPF-accelerated Istio ingress gateway.
//!
//! Configuration flows one way through the modules of this crate:
//!
//! ```text
//! wire (YAML -> typed k8s/Istio objects)
//!   -> model (validated, parsed: errors name file, resource, field)
//!     -> compile (Istio binding/precedence rules -> one immutable Snapshot)
//!       -> { proxy (L7 userspace data path), kernel (BPF maps), explain, dump }
//! ```
//!
//! `wire`, `model`, `compile`, `snapshot`, `explain` and `dump` are pure: no
//! tokio, hyper or aya.

pub mod kernel;
