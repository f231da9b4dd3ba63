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

/// `mi_option_allow_thp` and `mi_option_minimal_purge_size` in mimalloc 3's
/// option enum (`mimalloc.h`; libmimalloc-sys names only the older ones).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
const MI_OPTION_MINIMAL_PURGE_SIZE: libmimalloc_sys::mi_option_t = 44;

/// Keeps the daemon's resident memory what it uses. mimalloc reserves a
/// 1 GiB arena and marks it `MADV_HUGEPAGE`; with THP in `madvise` mode
/// (Debian's default) khugepaged then collapses every 2 MiB range holding a
/// few live objects into a huge page, so RSS grew with time even while idle
/// (measured: 66 -> 125 MiB at 10,000 hosts, `AnonHugePages` 112 MiB), and
/// mimalloc purged freed memory only in 2 MiB units. Turns transparent huge
/// pages off for this process and lets mimalloc purge in 64 KiB units.
/// Call first thing in `main`.
pub fn tune_memory() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this process's
    // memory map; mi_option_set only stores an option value.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_MINIMAL_PURGE_SIZE, 64);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mimalloc_option_numbers_are_the_ones_we_set() {
        // Their defaults, as mimalloc.h documents them: allow_thp = 1,
        // minimal_purge_size = 0 (chosen at start: 64 KiB, 2 MiB with THP);
        // the neighbouring options have other defaults.
        // SAFETY: reading options has no preconditions.
        let (thp, purge) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_ALLOW_THP),
                libmimalloc_sys::mi_option_get(super::MI_OPTION_MINIMAL_PURGE_SIZE),
            )
        };
        assert_eq!(thp, 1);
        assert_eq!(purge, 0);
    }
}
