//! `cargo xtask test`: setup, build the binaries the integration tests run, run all tests.

use anyhow::{Result, bail};

use crate::setup;
use crate::util::{cargo, is_root, run};

/// Runs every test of the host crates; `args` go to `cargo test` after its own arguments.
pub fn run_tests(args: &[String]) -> Result<()> {
    let skip_root = std::env::var(ingressd_tests::root::SKIP_VAR).is_ok_and(|v| v == "1");
    let root = is_root();
    if !root && !skip_root {
        bail!(
            "cargo xtask test runs tests in network namespaces and needs root.\n\
             Run it as root (e.g. `sudo -E cargo xtask test`), or set {}=1 to run only \
             the tests that do not need root.",
            ingressd_tests::root::SKIP_VAR
        );
    }
    setup::run(if root {
        setup::Mode::Install
    } else {
        setup::Mode::CheckOnly
    })?;
    // The integration tests start target/debug/ingressd and ingressd-testapp.
    run(cargo().args([
        "build",
        "--workspace",
        "--exclude",
        "ingress-ebpf",
        "--bins",
    ]))?;
    run(cargo()
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "ingress-ebpf",
        ])
        .args(args))?;
    // The MySQL path once more with the kernel forwarding it (the run above
    // covers the userspace TCP proxy). Only when the full suite ran.
    if root && args.is_empty() {
        run(cargo().env(ingressd_tests::kernel::KERNEL_VAR, "on").args([
            "test",
            "--no-fail-fast",
            "--package",
            "ingressd-tests",
            "--test",
            "mysql",
        ]))?;
    }
    if !root {
        println!();
        println!("==================================================================");
        println!(" SKIPPED: every test that needs root (network namespaces, eBPF).");
        println!(" Only unprivileged tests ran. Run `cargo xtask test` as root for all.");
        println!("==================================================================");
    }
    Ok(())
}
