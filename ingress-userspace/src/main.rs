//! `ingressd`: the command line. `run` starts the daemon; `check`, `explain`
//! and `dump` run the same config pipeline offline; `cleanup` removes the
//! kernel path's pinned programs, links and maps.

use std::collections::BTreeMap;

/// mimalloc: the proxy allocates per request (headers, bodies, futures);
/// glibc's malloc and free were a tenth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use ingress_userspace::daemon::{self, KernelMode, RunOptions, SourceOptions};
use ingress_userspace::kernel::AttachMode;
use ingress_userspace::kernel::manager::{self as kernel_manager, DEFAULT_PIN_ROOT, XdpMode};
use ingress_userspace::pipeline::{self, Options, Outcome};
use ingress_userspace::proxy::access_log::{AccessLog, AccessLogFormat};
use ingress_userspace::snapshot::GatewayIdentity;
use ingress_userspace::source::kubernetes::{KubeOptions, KubeSource};
use ingress_userspace::{dump, explain};

/// An Envoy-free, eBPF-accelerated Istio ingress gateway.
#[derive(Debug, Parser)]
#[command(name = "ingressd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the config in DIR (watched; changes apply live).
    Run(RunArgs),
    /// Validate and analyze the config; exit 1 on errors.
    Check(ConfigArgs),
    /// Print, as JSON, where one request would go.
    Explain(ExplainArgs),
    /// Print the /config_dump JSON of the config, offline.
    Dump(ConfigArgs),
    /// Detach and remove every program, link and map pinned under the pin root.
    Cleanup(CleanupArgs),
}

#[derive(Debug, Args)]
struct CleanupArgs {
    /// Directory on bpffs where the kernel path pins its programs, links and maps.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    bpffs_root: PathBuf,
}

/// The config and the gateway workload it is compiled for.
#[derive(Debug, Args)]
struct ConfigArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// Where the Istio and Kubernetes objects come from.
#[derive(Debug, Args)]
struct SourceArgs {
    /// A directory, or the cluster's API server (for `check`, `explain`
    /// and `dump`: what the daemons there compile right now).
    #[arg(long, value_enum, default_value = "directory")]
    source: SourceArg,
    /// Directory of Istio/Kubernetes YAML (`*.yaml`, `*.yml`, recursively);
    /// required with `--source directory`.
    #[arg(long, value_name = "DIR", required_if_eq("source", "directory"))]
    config: Option<PathBuf>,
    /// Kubeconfig file for `--source kubernetes` (default: in-cluster
    /// config, else `$KUBECONFIG` / `~/.kube/config`).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

impl ConfigArgs {
    fn options(&self) -> Options {
        self.gateway.options()
    }

    /// Loads and compiles the config from its source. From the API, an
    /// invalid object is left out (as the daemon does) and reported.
    fn load(&self) -> Outcome {
        match (&self.source.source, &self.source.config) {
            (SourceArg::Directory, Some(dir)) => pipeline::build_from_dir(dir, &self.options()),
            (SourceArg::Directory, None) => {
                failed("--config DIR is required (or --source kubernetes)".to_owned())
            }
            (SourceArg::Kubernetes, _) => match self.load_kubernetes() {
                Ok(outcome) => outcome,
                Err(error) => failed(format!("{error:#}")),
            },
        }
    }

    fn load_kubernetes(&self) -> anyhow::Result<Outcome> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the runtime")?;
        runtime.block_on(async {
            let options = KubeOptions {
                kubeconfig: self.source.kubeconfig.clone(),
                node_name: None,
            };
            let mut source = KubeSource::start(&options, &self.gateway.gateway_namespace).await?;
            tokio::time::timeout(Duration::from_secs(60), source.first_build(&self.options()))
                .await
                .context("the API server did not list every kind within 60 s")?
        })
    }
}

/// An outcome with one error and no snapshot.
fn failed(message: String) -> Outcome {
    let mut diagnostics = ingress_userspace::diag::Diagnostics::default();
    diagnostics.push(ingress_userspace::diag::Diagnostic::error(
        &ingress_userspace::diag::Source {
            file: Some(PathBuf::from("command line")),
            document: None,
        },
        message,
    ));
    Outcome {
        snapshot: None,
        diagnostics,
    }
}

/// The gateway workload this daemon is.
#[derive(Debug, Args)]
struct GatewayArgs {
    /// Namespace of the gateway workload.
    #[arg(long, default_value = "istio-system", value_name = "NS")]
    gateway_namespace: String,
    /// Labels of the gateway workload, `k=v,k2=v2`.
    #[arg(long, default_value = "istio=ingressgateway", value_parser = parse_labels, value_name = "LABELS")]
    gateway_labels: Labels,
}

impl GatewayArgs {
    fn options(&self) -> Options {
        Options {
            gateway: GatewayIdentity {
                namespace: self.gateway_namespace.clone(),
                labels: self.gateway_labels.0.clone(),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct Labels(BTreeMap<String, String>);

fn parse_labels(value: &str) -> Result<Labels, String> {
    let mut labels = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, val) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        if key.is_empty() {
            return Err(format!("`{pair}` has an empty key"));
        }
        labels.insert(key.to_owned(), val.to_owned());
    }
    if labels.is_empty() {
        return Err("at least one key=value label is needed".to_owned());
    }
    Ok(Labels(labels))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum KernelArg {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpArg {
    /// Native XDP where it pays off (drivers of physical NICs that accept it), TC elsewhere.
    Auto,
    /// Native XDP on every interface; an interface that refuses it is an error.
    On,
    /// TC (tcx) only.
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    /// Generic XDP (works everywhere; keeps GSO on veth).
    Skb,
    /// Native driver XDP.
    Drv,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccessLogArg {
    Text,
    Json,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SourceArg {
    /// `--config DIR`, watched.
    Directory,
    /// The Kubernetes API (in-cluster config, or `--kubeconfig`).
    Kubernetes,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// This node's name (downward API `spec.nodeName`): the Node whose
    /// addresses pick the interfaces, and the Events' reporting instance.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// This node's address (downward API `status.hostIP`).
    #[arg(long, env = "HOST_IP", value_name = "IP")]
    host_ip: Option<IpAddr>,
    #[command(flatten)]
    gateway: GatewayArgs,
    /// Use the eBPF kernel path: `auto` falls back to userspace when it cannot load.
    #[arg(long, value_enum, default_value = "auto")]
    kernel: KernelArg,
    /// Interfaces to attach the kernel programs to (default: every UP
    /// non-loopback interface with an IPv4 address). Also where the XDP port
    /// counter goes when given.
    #[arg(long, value_delimiter = ',', value_name = "IF,...")]
    interfaces: Vec<String>,
    /// Forwarding hook choice per interface.
    #[arg(long, value_enum, default_value = "auto")]
    xdp: XdpArg,
    /// XDP attach mode of the per-port packet counter (`xdp_port_counter`,
    /// attached with `--interfaces`); the forwarding hook is `--xdp`.
    #[arg(long, value_enum, default_value = "skb")]
    port_counter_mode: XdpModeArg,
    /// Directory on bpffs where the kernel path pins its programs, links and maps.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    bpffs_root: PathBuf,
    /// Envoy-style admin API.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics alone (`GET /stats/prometheus`), safe to expose
    /// beyond the node, unlike the admin API: Istio's Envoy metrics port.
    /// `off` to serve none.
    #[arg(long, default_value = "0.0.0.0:15090", value_parser = parse_optional_addr, value_name = "ADDR|off")]
    metrics_addr: OptionalAddr,
    /// Istio status port (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    status_addr: SocketAddr,
    /// How long in-flight requests may take to finish on shutdown (`5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Format of the daemon's own log (stderr).
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Format of the access log (stdout).
    #[arg(long, value_enum, default_value = "text")]
    access_log_format: AccessLogArg,
    /// Worker threads serving connections (Envoy's `--concurrency`); one per
    /// core when absent.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
    /// TCP services the kernel maps hold (the Maglev tables take
    /// 2 x 1021 x 4 bytes per service); services beyond it are served in
    /// userspace and logged.
    #[arg(long, value_name = "N", default_value_t = ingress_common::lb::MAX_SERVICES,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_services: u32,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Port the request arrives on (bind port, Service port or nodePort).
    #[arg(long)]
    port: u16,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    path: Option<String>,
    #[arg(long)]
    method: Option<String>,
    /// The request uses TLS.
    #[arg(long)]
    tls: bool,
    /// SNI of the TLS request.
    #[arg(long, requires = "tls")]
    sni: Option<String>,
    #[arg(long, value_parser = ["http", "http2", "tcp"])]
    protocol: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_parser = parse_header, value_name = "NAME: VALUE")]
    headers: Vec<(String, String)>,
}

fn parse_header(value: &str) -> Result<(String, String), String> {
    let (name, val) = value
        .split_once(':')
        .ok_or_else(|| format!("`{value}` is not `name: value`"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{value}` has an empty header name"));
    }
    Ok((name.to_ascii_lowercase(), val.trim().to_owned()))
}

/// An address, or none (`off`).
#[derive(Clone, Copy, Debug)]
struct OptionalAddr(Option<SocketAddr>);

fn parse_optional_addr(value: &str) -> Result<OptionalAddr, String> {
    if value == "off" {
        return Ok(OptionalAddr(None));
    }
    value
        .parse()
        .map(|addr| OptionalAddr(Some(addr)))
        .map_err(|e| format!("`{value}` is not an address like 0.0.0.0:15090 or `off`: {e}"))
}

/// `5s`, `250ms`, `1m`, or plain seconds.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{value}` is not a duration like 5s or 500ms"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{value}` (use ms, s, m, h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{value}`: {e}"))
}

fn main() -> ExitCode {
    ingress_userspace::tune_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(&args),
        Command::Explain(args) => {
            let Some(snapshot) = usable(args.config.load()) else {
                return ExitCode::FAILURE;
            };
            let query = explain::Query {
                port: args.port,
                host: args.host,
                path: args.path,
                method: args.method,
                protocol: args.protocol,
                tls: args.tls,
                sni: args.sni,
                headers: args.headers,
            };
            print_json(&explain::explain(&snapshot, &query))
        }
        Command::Cleanup(args) => cleanup(&args),
        Command::Dump(args) => {
            let Some(snapshot) = usable(args.load()) else {
                return ExitCode::FAILURE;
            };
            print_json(&dump::config_dump(&snapshot))
        }
    }
}

/// The snapshot of an offline run, or the errors on stderr.
fn usable(outcome: Outcome) -> Option<ingress_userspace::snapshot::Snapshot> {
    if outcome.snapshot.is_none() {
        for diagnostic in outcome.diagnostics.errors() {
            eprintln!("{diagnostic}");
        }
        eprintln!("the config has errors; run `ingressd check` for details");
        return None;
    }
    // From the API, objects with errors are left out and the rest applies,
    // as in the daemon: say which.
    for diagnostic in outcome.diagnostics.errors() {
        eprintln!("{diagnostic} (object left out)");
    }
    outcome.snapshot
}

fn print_json(value: &serde_json::Value) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: encoding JSON: {error}");
            ExitCode::FAILURE
        }
    }
}

fn cleanup(args: &CleanupArgs) -> ExitCode {
    match kernel_manager::cleanup(&args.bpffs_root) {
        Ok(removed) if removed.is_empty() => {
            println!("nothing pinned under {}", args.bpffs_root.display());
            ExitCode::SUCCESS
        }
        Ok(removed) => {
            for path in &removed {
                println!("removed {path}");
            }
            println!("{} pin(s) and directories removed", removed.len());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", ingress_userspace::kernel::chain(&error));
            ExitCode::FAILURE
        }
    }
}

fn check(args: &ConfigArgs) -> ExitCode {
    let outcome = args.load();
    for diagnostic in outcome.diagnostics.iter() {
        println!("{diagnostic}");
    }
    let errors = outcome.diagnostics.errors().count();
    let mut warnings = outcome.diagnostics.warnings().count();
    // Certificates: read and checked as the daemon would load them. Only
    // warnings: the files may live on the gateway's nodes, not here.
    if let Some(snapshot) = &outcome.snapshot {
        let runtime = ingress_userspace::tls::store::TlsRuntime::new();
        let now = std::time::SystemTime::now();
        for spec in ingress_userspace::tls::store::tls_contexts(snapshot) {
            match runtime.probe(spec) {
                Ok(info) if info.days_until_expiry(now) < 14 => {
                    warnings += 1;
                    println!(
                        "warning: gateway {}.tls: certificate {} expires in {} day(s)",
                        spec.name,
                        info.subject,
                        info.days_until_expiry(now)
                    );
                }
                Ok(_) => {}
                Err(reason) => {
                    warnings += 1;
                    println!(
                        "warning: gateway {}.tls: TLS certificate not usable: {reason}",
                        spec.name
                    );
                }
            }
        }
    }
    let failed = errors > 0 || outcome.snapshot.is_none();
    println!(
        "{}: {errors} error(s), {warnings} warning(s)",
        if failed { "invalid" } else { "ok" }
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_format);
    let concurrency = args.concurrency.map(usize::from);
    let options = RunOptions {
        source: match (args.source.source, args.source.config) {
            (SourceArg::Kubernetes, _) => SourceOptions::Kubernetes(KubeOptions {
                kubeconfig: args.source.kubeconfig,
                node_name: args.node_name,
            }),
            (SourceArg::Directory, Some(dir)) => SourceOptions::Directory(dir),
            (SourceArg::Directory, None) => {
                eprintln!("error: --config DIR is required with --source directory");
                return ExitCode::from(2);
            }
        },
        host_ip: args.host_ip,
        gateway: args.gateway.options().gateway,
        admin_addr: args.admin_addr,
        status_addr: args.status_addr,
        metrics_addr: args.metrics_addr.0,
        drain_timeout: args.drain_timeout,
        kernel: match args.kernel {
            KernelArg::Auto => KernelMode::Auto,
            KernelArg::On => KernelMode::On,
            KernelArg::Off => KernelMode::Off,
        },
        interfaces: args.interfaces,
        xdp: match args.xdp {
            XdpArg::Auto => XdpMode::Auto,
            XdpArg::On => XdpMode::On,
            XdpArg::Off => XdpMode::Off,
        },
        pin_root: args.bpffs_root,
        max_services: args.max_services,
        port_counter_mode: match args.port_counter_mode {
            XdpModeArg::Skb => AttachMode::Skb,
            XdpModeArg::Drv => AttachMode::Driver,
        },
        access_log: AccessLog {
            format: match args.access_log_format {
                AccessLogArg::Text => AccessLogFormat::Text,
                AccessLogArg::Json => AccessLogFormat::Json,
                AccessLogArg::Off => AccessLogFormat::Off,
            },
        },
        command_line: std::env::args().collect(),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = concurrency {
        runtime.worker_threads(threads);
    }
    let result = runtime
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| runtime.block_on(daemon::run(options)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn labels() {
        let l = parse_labels("istio=ingressgateway,app=gw").unwrap();
        assert_eq!(l.0.len(), 2);
        assert_eq!(l.0["app"], "gw");
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("").is_err());
    }

    #[test]
    fn cli_contract_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        Cli::try_parse_from([
            "ingressd",
            "run",
            "--config",
            "d",
            "--kernel",
            "off",
            "--interfaces",
            "a,b",
            "--admin-addr",
            "127.0.0.1:15000",
            "--status-addr",
            "0.0.0.0:15021",
            "--gateway-namespace",
            "istio-system",
            "--gateway-labels",
            "istio=ingressgateway",
            "--drain-timeout",
            "1s",
            "--log-format",
            "json",
            "--access-log-format",
            "json",
        ])
        .unwrap();
        Cli::try_parse_from([
            "ingressd",
            "explain",
            "--config",
            "d",
            "--port",
            "80",
            "--host",
            "h",
            "--path",
            "/",
            "--method",
            "GET",
            "--tls",
            "--sni",
            "s",
            "--protocol",
            "http2",
        ])
        .unwrap();
        assert!(
            Cli::try_parse_from([
                "ingressd", "explain", "--config", "d", "--port", "80", "--sni", "s"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["ingressd", "check", "--config", "d", "--bogus"]).is_err());
        assert!(
            Cli::try_parse_from(["ingressd", "run", "--config", "d", "--kernel", "maybe"]).is_err()
        );
        Cli::try_parse_from(["ingressd", "dump", "--config", "d"]).unwrap();
        Cli::try_parse_from(["ingressd", "cleanup"]).unwrap();
        Cli::try_parse_from(["ingressd", "cleanup", "--bpffs-root", "/sys/fs/bpf/x"]).unwrap();
        Cli::try_parse_from([
            "ingressd",
            "run",
            "--config",
            "d",
            "--xdp",
            "off",
            "--bpffs-root",
            "/sys/fs/bpf/t",
        ])
        .unwrap();
        assert!(Cli::try_parse_from(["ingressd", "run", "--config", "d", "--xdp", "drv"]).is_err());
    }
}
