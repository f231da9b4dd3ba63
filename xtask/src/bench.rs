//! `cargo xtask bench <name>`: benchmarks (not tests).

use anyhow::Result;
use clap::Subcommand;

use crate::setup;

/// The benchmarks.
#[derive(Subcommand)]
pub enum Bench {
    /// HTTP routing: ingressd vs nginx vs HAProxy in the namespace topology.
    Http,
}

/// Runs one benchmark.
pub fn run(bench: Bench) -> Result<()> {
    setup::run(setup::Mode::Install)?;
    match bench {
        Bench::Http => {
            println!("bench http: not yet implemented");
            Ok(())
        }
    }
}
