//! Builds the eBPF programs of `ingress-ebpf` for the bpf target and leaves the
//! object in `OUT_DIR/ingress-ebpf`, where `kernel::object()` embeds it.
//!
//! The eBPF side is built with Debian's `rustc-web` (sysroot `/usr`): building
//! `core` for the bpf target needs the `core` source of exactly the compiler's
//! version, which only that toolchain ships here (see ARCHITECTURE.md,
//! "Toolchain"). `cargo xtask setup` installs it and bpf-linker.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // SAFETY: the build script is single-threaded; nothing reads the
    // environment concurrently. aya-build adds `-Z build-std=core` when it
    // sees RUSTC_BOOTSTRAP=1 in its own environment.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    // aya-build relays every line the inner cargo prints as a build warning;
    // keep it to real diagnostics.
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../ingress-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("non-UTF-8 path to ingress-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ingress-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("/usr"),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs the toolchain they need",
    )
}
