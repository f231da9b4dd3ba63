//! Kernel stage: loading the eBPF object and attaching its programs.

/// The eBPF object built by `build.rs`, aligned for the ELF parser.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-ebpf"))
}
