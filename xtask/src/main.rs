//! Project tasks: `cargo xtask setup|test|demo|bench`.
//!
//! Every child process runs with `~/.cargo/bin` first on `PATH` (rustup's cargo and
//! bpf-linker before Debian's `/usr/bin/cargo`) and with the repository root as its
//! working directory.

mod bench;
mod demo;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tasks for the ingressd workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the project needs (apt packages, bpf-linker, bpffs). Idempotent.
    Setup,
    /// Setup, build the binaries, run every test (root tests need root).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g.
        /// `-- --test seed_http -- --nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the seed article's gateway in network namespaces and send it requests.
    Demo {
        /// Exit after the requests instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
}

fn main() -> Result<()> {
    util::init_env()?;
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(setup::Mode::Install),
        Command::Test { args } => test::run_tests(&args),
        Command::Demo { once } => demo::run_demo(once),
        Command::Bench { bench } => bench::run(bench),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_takes_a_name_and_test_passes_args_through() {
        let cli = Cli::try_parse_from(["xtask", "bench", "http"]).unwrap();
        assert!(matches!(cli.command, Command::Bench { .. }));
        let cli = Cli::try_parse_from(["xtask", "test", "--", "--nocapture", "seed"]).unwrap();
        match cli.command {
            Command::Test { args } => assert_eq!(args, ["--nocapture", "seed"]),
            _ => panic!("parsed as another command"),
        }
    }
}
