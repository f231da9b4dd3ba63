//! Link options of the eBPF object (the linker is bpf-linker).

fn main() {
    // bpf-linker passes `--bpf-expand-memcpy-in-order` to LLVM by default,
    // which also stops LLVM from expanding small memsets into stores: every
    // zeroed struct (the 64-byte FIB lookup request, key padding) became a
    // BPF-to-BPF call into a byte-by-byte loop on the per-packet path. The
    // in-order memcpy only matters to offloading JITs that pattern-match
    // copies; the generic expansion is what clang uses for BPF by default.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
