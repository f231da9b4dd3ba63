//! `cargo xtask bench <name>`: benchmarks (not tests).
//!
//! `http`: ingressd, nginx and HAProxy doing the same host + prefix routing, side by side
//! in the namespace topology. The config generators (`routes` -> `istio`, `nginx`,
//! `haproxy`) are pure and unit-tested; `http` runs the processes; `cpu`, `wrk` and
//! `report` measure and write `docs/benchmarks.md`.
//!
//! `tcp`: TCP forwarding through the node: routing only, iptables DNAT, HAProxy and
//! ingressd's in-kernel path, then rule scaling; one module (generators unit-tested there).
//!
//! `tls`: TLS termination, ingressd (rustls) vs nginx (OpenSSL): full and resumed
//! handshakes (h2load) and bulk throughput (curl); `istio` and `nginx` generate the
//! configs, `tls` runs them (its parsers and report unit-tested there).

mod cpu;
mod haproxy;
mod http;
mod istio;
mod nginx;
mod report;
mod routes;
mod tcp;
mod tls;
mod wrk;

use anyhow::Result;
use clap::Subcommand;

use crate::setup;

/// The benchmarks.
#[derive(Subcommand)]
pub enum Bench {
    /// HTTP routing: ingressd vs nginx vs HAProxy in the namespace topology.
    Http(http::HttpArgs),
    /// TCP forwarding: direct routing vs iptables vs HAProxy vs ingressd in the kernel.
    Tcp(tcp::TcpArgs),
    /// TLS termination: ingressd vs nginx, full and resumed handshakes, bulk throughput.
    Tls(tls::TlsArgs),
}

/// Runs one benchmark.
pub fn run(bench: Bench) -> Result<()> {
    setup::run(setup::Mode::Install)?;
    match bench {
        Bench::Http(args) => http::run_http(&args),
        Bench::Tcp(args) => tcp::run_tcp(&args),
        Bench::Tls(args) => tls::run_tls(&args),
    }
}
