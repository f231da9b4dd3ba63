//! `cargo xtask bench http`: host + prefix routing through ingressd, nginx and HAProxy.
//!
//! ```text
//!  ingressd-bench-client        ingressd-bench-node                  ingressd-bench-pods
//!  198.18.0.2  ---- veth ----  198.18.0.1 | 198.18.1.1 ---- veth ----  198.18.1.10:8080
//!   wrk, h2load (core 0)         :8080 ingressd (h1 + h2c)  (core 1)    198.18.1.11:8080
//!                                :8081/:8091 nginx (h1/h2c) (core 1)     backend (core 0)
//!                                :8082/:8092 haproxy (acl)  (core 1)
//!                                :8083/:8093 haproxy (map)  (core 1)
//! ```
//!
//! Every proxy serves the same [`RouteTable`] with one worker pinned to core 1 and
//! keep-alive to the backend pool. The benchmark goes through the tables one after the
//! other (100 hosts x 10 routes; 1,000 and 10,000 hosts x 3 routes): it starts the
//! proxies with the table, times how long they take to serve it and reads their resident
//! memory, checks the routing, and for the measured tables runs wrk (HTTP/1.1, every
//! route in turn) and h2load (h2c) against each proxy in turn (A B C A B C ...), reading
//! each run's proxy CPU time from `/proc`; then it stops them. The idle proxies stay up
//! between their runs; they use no CPU meanwhile.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ingressd_tests::topology::NODE_ADDR;
use ingressd_tests::{Ns, Proc, Topology, run_bounded};

use super::report::{self, Run, SECTION, cpu_model, first_line};
use super::routes::{RouteTable, thousands};
use super::tls::{Profile, dso_shares, parse_h2load, top_symbols};
use super::wrk::{self, WrkResult};
use super::{cpu, haproxy, istio, nginx};
use crate::util::{build_release_bins, is_root, output, repo_root, target_dir};

const PREFIX: &str = "ingressd-bench";
/// The backend pool: two addresses in the pods namespace, one port.
const BACKENDS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 8080),
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 11), 8080),
];
/// Core of the proxy under test.
const PROXY_CORE: &str = "1";
/// Longest wait for a quiet machine before one run.
const QUIET_WAIT: Duration = Duration::from_secs(15);
/// Core of the load generator and the backend.
const LOAD_CORE: &str = "0";
/// The issue's memory target for ingressd at 10,000 hosts.
const MEMORY_TARGET_MIB: f64 = 100.0;

/// A proxy under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyKind {
    /// `ingressd run --kernel off`.
    Ingressd,
    /// nginx: `server_name` blocks with prefix `location`s.
    Nginx,
    /// HAProxy with one `use_backend ... if host path` rule per route.
    Haproxy,
    /// HAProxy with one `map_beg` lookup on host + path.
    HaproxyMap,
}

impl ProxyKind {
    fn label(self) -> &'static str {
        match self {
            ProxyKind::Ingressd => "ingressd",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy (acl)",
            ProxyKind::HaproxyMap => "haproxy (map)",
        }
    }

    fn port(self) -> u16 {
        match self {
            ProxyKind::Ingressd => istio::LISTEN_PORT,
            ProxyKind::Nginx => 8081,
            ProxyKind::Haproxy => 8082,
            ProxyKind::HaproxyMap => 8083,
        }
    }

    fn addr(self) -> SocketAddrV4 {
        SocketAddrV4::new(NODE_ADDR, self.port())
    }

    /// Where the proxy takes h2c with prior knowledge: ingressd on its one port (it tells
    /// HTTP/2 by the connection preface), nginx and HAProxy on a port of its own.
    fn addr_h2(self) -> SocketAddrV4 {
        match self {
            ProxyKind::Ingressd => self.addr(),
            _ => SocketAddrV4::new(NODE_ADDR, self.port() + 10),
        }
    }
}

/// What answers behind the proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// nginx with one worker returning a fixed 200 (cheapest per request).
    Nginx,
    /// Two `ingressd-testapp counter` processes (JSON echo of each request, one log line each).
    Testapp,
}

/// A protocol of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 with wrk, every route of the table in turn.
    H1,
    /// h2c (prior knowledge) with h2load, the routes of one host.
    H2,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::H1 => "HTTP/1.1",
            Protocol::H2 => "HTTP/2",
        }
    }
}

/// Options of `cargo xtask bench http`.
#[derive(Args, Debug)]
pub struct HttpArgs {
    /// Measured rounds; each round runs every proxy once per protocol.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    duration: u64,
    /// Seconds of unmeasured load per proxy and protocol before the first round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=30))]
    warmup: u64,
    /// wrk connections (one wrk thread).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    connections: u32,
    /// h2load clients (connections; one h2load thread).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    h2_clients: u32,
    /// h2load concurrent streams per connection.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    h2_streams: u32,
    /// Protocols to measure, in this order within each round.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "h1,h2")]
    protocols: Vec<Protocol>,
    /// Proxies to run, in this order within each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ingressd,nginx,haproxy,haproxy-map"
    )]
    proxies: Vec<ProxyKind>,
    /// Virtual hosts (x 3 routes) of the large table, measured like the standard one
    /// (0: skip it). HAProxy's acl form is left out there: its rules are evaluated one
    /// after the other, 3 per host.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=50_000))]
    large_hosts: u64,
    /// Virtual hosts (x 3 routes) of the tables only loaded, for the start-up time and
    /// resident memory (comma-separated; 0: none).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    memory_hosts: Vec<u64>,
    /// The backend behind every proxy.
    #[arg(long, value_enum, default_value = "nginx")]
    backend: BackendKind,
    /// After the rounds of the standard table, profile ingressd and nginx with `perf record
    /// -g` during one more HTTP/1.1 run each, and report the top symbols.
    #[arg(long)]
    profile: bool,
    /// Print the results without writing docs/benchmarks.md.
    #[arg(long)]
    no_write: bool,
    /// Other load (CPU outside the benchmark, in cores) above which a run is redone.
    #[arg(long, default_value_t = 0.10)]
    max_other_load: f64,
    /// How often one run may be redone because of other load. Redoing and waiting for a
    /// quiet machine together stop once they took as long as the planned measuring time.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=5))]
    retries: u32,
}

/// A proxy that runs, with what the measurement needs.
struct Running {
    kind: ProxyKind,
    proc: Proc,
}

/// One route table the benchmark loads, and what it does with it.
struct Phase {
    table: RouteTable,
    /// Load runs (else only start-up time and memory).
    measured: bool,
    proxies: Vec<ProxyKind>,
}

/// The tables in the order they run: the standard one (measured), the memory-only ones,
/// the large one (measured, without HAProxy's acl form).
fn phases(args: &HttpArgs) -> Vec<Phase> {
    let backends = BACKENDS.to_vec();
    let mut phases = vec![Phase {
        table: RouteTable::standard(backends.clone()),
        measured: true,
        proxies: args.proxies.clone(),
    }];
    let large: Vec<ProxyKind> = args
        .proxies
        .iter()
        .copied()
        .filter(|p| *p != ProxyKind::Haproxy)
        .collect();
    for &hosts in &args.memory_hosts {
        if hosts > 0 && hosts != args.large_hosts {
            phases.push(Phase {
                table: RouteTable::large(hosts as usize, backends.clone()),
                measured: false,
                proxies: large.clone(),
            });
        }
    }
    if args.large_hosts > 0 {
        phases.push(Phase {
            table: RouteTable::large(args.large_hosts as usize, backends),
            measured: true,
            proxies: large,
        });
    }
    phases
}

/// How long a proxy took to serve a table and how much memory it held.
#[derive(Clone, Debug)]
struct Footprint {
    table: String,
    hosts: usize,
    proxy: String,
    /// From spawning the process to serving (ingressd: `/healthz/ready` 200, then the
    /// port accepts; the others: the port accepts).
    startup: Duration,
    /// ingressd only: wall time of `ingressd check --config` (the same pipeline, offline).
    check: Option<Check>,
    /// The proxy's memory right after it served.
    loaded: Memory,
    /// Its memory after the load runs (measured tables only).
    after: Option<Memory>,
}

/// Runs the benchmark.
pub fn run_http(args: &HttpArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench http creates network namespaces and needs root");
    }
    if args.proxies.is_empty() || args.protocols.is_empty() {
        bail!("--proxies and --protocols must not be empty");
    }
    if !(0.0..=2.0).contains(&args.max_other_load) {
        bail!("--max-other-load is in cores, between 0 and 2");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let check_stop = || {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    };

    let needs_build =
        args.proxies.contains(&ProxyKind::Ingressd) || args.backend == BackendKind::Testapp;
    if needs_build {
        build_release_bins(true)?;
    }
    check_stop()?;
    let release = target_dir().join("release");
    let ingressd = release.join("ingressd");
    let testapp = release.join("ingressd-testapp");

    let load_start = report_load("before the benchmark");
    let dir = target_dir().join("bench").join("http");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let phases = phases(args);
    let pool = RouteTable::standard(BACKENDS.to_vec());

    println!(
        "\n== topology {PREFIX}-{{client,node,pods}}; files in {}",
        rel(&dir).display()
    );
    let topo = Topology::builder()
        .prefix(PREFIX)
        .replace_existing(true)
        .pod_addrs(pool.backend_ips())
        .log_dir(dir.join("logs"))
        .build()?;

    let backends = start_backend(&topo, args.backend, &pool, &dir, &testapp)?;
    println!(
        "   backend: {:?} on {} (pods ns, core {LOAD_CORE})",
        args.backend,
        join(&pool.backends)
    );

    let clk = cpu::clock_ticks();
    // The measuring time all measured tables plan; waiting for a quiet machine and
    // redoing runs may add at most as much.
    let planned: u64 = phases
        .iter()
        .filter(|p| p.measured)
        .map(|p| {
            args.duration
                * u64::from(args.rounds)
                * p.proxies.len() as u64
                * args.protocols.len() as u64
        })
        .sum();
    let retry_deadline = Instant::now() + Duration::from_secs(planned) * 2;
    let mut runs = Vec::new();
    let mut footprints = Vec::new();
    let mut profiles = Vec::new();
    for (n, phase) in phases.iter().enumerate() {
        let table = &phase.table;
        let phase_dir = dir.join(format!("table-{n}-{}", table.hosts));
        std::fs::create_dir_all(&phase_dir)?;
        println!(
            "\n== {} ({} routes){}",
            table.describe(),
            thousands(table.routes()),
            if phase.measured {
                ""
            } else {
                ": start-up time and memory only"
            }
        );
        let mut proxies = Vec::new();
        for &kind in &phase.proxies {
            check_stop()?;
            let (proc, startup, check) = start_proxy(&topo, kind, table, &phase_dir, &ingressd)?;
            let mem = memory(proc.pid())?;
            println!(
                "   {}: serving on {} and {} (h2c) after {:.2} s{}, {:.1} MiB resident, {:.1} MiB PSS (pid {})",
                kind.label(),
                kind.addr(),
                kind.addr_h2(),
                startup.as_secs_f64(),
                check.map_or_else(String::new, |c| format!(
                    " (`ingressd check` {:.2} s, peak {:.1} MiB)",
                    c.wall.as_secs_f64(),
                    mib(c.peak_kib)
                )),
                mib(mem.rss_kib),
                mib(mem.pss_kib),
                proc.pid()
            );
            footprints.push(Footprint {
                table: table.describe(),
                hosts: table.hosts,
                proxy: kind.label().to_owned(),
                startup,
                check,
                loaded: mem,
                after: None,
            });
            proxies.push(Running { kind, proc });
        }

        let checked = if table.routes() <= 1000 {
            table.requests()
        } else {
            table.request_per_host()
        };
        println!(
            "   routing check: {} requests answer 200 from the backend, others do not",
            checked.len()
        );
        for p in &proxies {
            check_stop()?;
            precheck(&topo, p.kind, table, &checked, &phase_dir, args.backend)?;
            if phase.measured && args.protocols.contains(&Protocol::H2) {
                precheck_h2(&topo, p.kind, table, &phase_dir)?;
            }
            println!("   {}: ok", p.kind.label());
        }
        if !phase.measured {
            stop_all(proxies);
            continue;
        }

        let load = Load::write(table, &phase_dir, args)?;
        if args.warmup > 0 {
            println!(
                "   warm-up: {}s per proxy and protocol",
                args.warmup * args.protocols.len() as u64
            );
            for p in &proxies {
                for &protocol in &args.protocols {
                    check_stop()?;
                    let r = load.run(&topo, p.kind, protocol, args.warmup)?;
                    println!(
                        "   {} {}: {:.0} req/s",
                        p.kind.label(),
                        protocol.label(),
                        r.rps()
                    );
                }
            }
        }
        // Every process of the benchmark, to tell its CPU time from other work.
        let bench_pids: Vec<u32> = backends
            .iter()
            .chain(proxies.iter().map(|p| &p.proc))
            .map(Proc::pid)
            .collect();
        println!(
            "   {} rounds of {}s per proxy and protocol (order {})",
            args.rounds,
            args.duration,
            proxies
                .iter()
                .map(|p| p.kind.label())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for round in 1..=args.rounds {
            for &protocol in &args.protocols {
                for p in &proxies {
                    let mut attempt = 0;
                    let run = loop {
                        check_stop()?;
                        attempt += 1;
                        let wait = QUIET_WAIT
                            .min(retry_deadline.saturating_duration_since(Instant::now()));
                        if !wait_quiet(clk, args.max_other_load, wait, &check_stop)? {
                            println!("   (the machine stayed busy; measuring anyway)");
                        }
                        let scenario = format!("{}, {}", protocol.label(), table.describe());
                        let mut run = measure(p, &bench_pids, clk, || {
                            load.run(&topo, p.kind, protocol, args.duration)
                        })?;
                        run.scenario = scenario;
                        run.round = round;
                        run.attempt = attempt;
                        print_run(&run);
                        if run.other_load <= args.max_other_load
                            || attempt > args.retries
                            || Instant::now() >= retry_deadline
                        {
                            break run;
                        }
                        println!(
                            "   (other load {:.0}% of a core during that run; redoing it)",
                            run.other_load * 100.0
                        );
                    };
                    runs.push(run);
                }
            }
        }
        for p in &proxies {
            if let Some(status) = p.proc.try_status()? {
                bail!(
                    "{} exited during the benchmark ({status})\n{}",
                    p.kind.label(),
                    p.proc.log_tail(20)
                );
            }
            let mem = memory(p.proc.pid())?;
            println!(
                "   {}: {:.1} MiB resident, {:.1} MiB PSS after the load",
                p.kind.label(),
                mib(mem.rss_kib),
                mib(mem.pss_kib)
            );
            if let Some(f) = footprints
                .iter_mut()
                .rev()
                .find(|f| f.proxy == p.kind.label() && f.hosts == table.hosts)
            {
                f.after = Some(mem);
            }
        }
        if args.profile && n == 0 {
            for p in &proxies {
                if matches!(p.kind, ProxyKind::Ingressd | ProxyKind::Nginx) {
                    check_stop()?;
                    println!(
                        "   profile: perf record -g during one more HTTP/1.1 run of {}",
                        p.kind.label()
                    );
                    let profile = profile(&topo, p, &load, &phase_dir, args.duration)?;
                    for (pct, what) in profile.dsos.iter().chain(&profile.symbols) {
                        println!("     {pct:5.2}% {what}");
                    }
                    profiles.push((p.kind, profile));
                }
            }
        }
        stop_all(proxies);
    }
    let load_end = load_average();
    drop(backends);
    drop(topo);

    let facts = Facts::collect(args, &ingressd, &load_start, &load_end);
    let section = section(&runs, &footprints, &profiles, &phases, &facts, args);
    println!("\n{section}");
    if !args.no_write {
        let path = repo_root().join("docs").join("benchmarks.md");
        let old = std::fs::read_to_string(&path).ok();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, report::update_section(old.as_deref(), &section))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} (section \"{SECTION}\")", rel(&path).display());
    }
    let bad: u64 = runs
        .iter()
        .map(|r| r.wrk.status_errors + r.wrk.socket_errors)
        .sum();
    if bad > 0 {
        bail!("{bad} failed requests during the measured runs (see the table)");
    }
    Ok(())
}

/// Stops the proxies of one table before the next one starts on the same ports: SIGTERM
/// first, so that nginx's master takes its worker with it.
fn stop_all(proxies: Vec<Running>) {
    for p in proxies {
        p.proc.stop(Duration::from_secs(10));
    }
}

/// The load average, with a warning when it is above 1.
fn report_load(when: &str) -> Vec<f64> {
    let load = load_average();
    if load.first().is_some_and(|l| *l > 1.0) {
        println!(
            "warning: load average {} {when}; other work on this machine skews the numbers",
            fmt_load(&load)
        );
    }
    load
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Memory of a process tree, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    /// VmRSS (`/proc/<pid>/status`) summed: pages shared by nginx's master and worker count
    /// twice.
    rss_kib: u64,
    /// Pss (`/proc/<pid>/smaps_rollup`) summed: shared pages divided among their users.
    pss_kib: u64,
}

/// The memory of `root` and its descendants (nginx's master and worker).
fn memory(root: u32) -> Result<Memory> {
    let mut total = Memory::default();
    for pid in cpu::tree_cpu(root)?.pids {
        // A process that exited meanwhile, or a zombie (no such lines), holds no memory.
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            total.rss_kib += kib_field(&status, "VmRSS:").unwrap_or(0);
        }
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            total.pss_kib += kib_field(&rollup, "Pss:").unwrap_or(0);
        }
    }
    Ok(total)
}

/// The value of a `Name:    12345 kB` line (`/proc/<pid>/status`, `smaps_rollup`), KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The load generators' inputs for one table: wrk's Lua script (every route in turn) and
/// h2load's URI list (the routes of the table's middle host: h2load sends every request
/// of a run to one authority).
struct Load {
    script: PathBuf,
    uris: PathBuf,
    clients: u32,
    streams: u32,
    connections: u32,
}

impl Load {
    fn write(table: &RouteTable, dir: &Path, args: &HttpArgs) -> Result<Self> {
        let script = dir.join("routes.lua");
        std::fs::write(&script, wrk::lua_script(&table.requests()))
            .with_context(|| format!("writing {}", script.display()))?;
        let h2_host = table.host(table.hosts / 2);
        let uris = dir.join("h2-uris.txt");
        std::fs::write(&uris, h2_uris(table, &h2_host))
            .with_context(|| format!("writing {}", uris.display()))?;
        Ok(Self {
            script,
            uris,
            clients: args.h2_clients,
            streams: args.h2_streams,
            connections: args.connections,
        })
    }

    fn run(
        &self,
        topo: &Topology,
        kind: ProxyKind,
        protocol: Protocol,
        secs: u64,
    ) -> Result<WrkResult> {
        match protocol {
            Protocol::H1 => run_wrk(topo, kind, &self.script, self.connections, secs),
            Protocol::H2 => {
                let args = h2load_args(
                    kind.addr_h2(),
                    &self.uris,
                    self.clients,
                    self.streams,
                    H2Bound::Duration(secs),
                );
                run_h2load(topo, kind, &args, secs)
            }
        }
    }
}

/// `http://<host><prefix>item` for every prefix of the table, one a line.
fn h2_uris(table: &RouteTable, host: &str) -> String {
    table
        .prefix_list()
        .iter()
        .map(|p| format!("http://{host}{p}item\n"))
        .collect()
}

/// What ends an h2load run.
#[derive(Clone, Copy, Debug)]
enum H2Bound {
    /// `-D <secs>` (the process is also killed 30 s after that).
    Duration(u64),
    /// `-n <requests>`.
    Requests(u64),
}

/// h2load's arguments: h2c with prior knowledge (an `http://` URI without `--h1`), one
/// thread, `clients` connections with `streams` concurrent streams each, the URIs from
/// `uris` (one authority) and the connections to `target`.
fn h2load_args(
    target: SocketAddrV4,
    uris: &Path,
    clients: u32,
    streams: u32,
    bound: H2Bound,
) -> Vec<String> {
    vec![
        "-t1".to_owned(),
        format!("-c{clients}"),
        format!("-m{streams}"),
        match bound {
            H2Bound::Duration(secs) => format!("-D{secs}"),
            H2Bound::Requests(n) => format!("-n{n}"),
        },
        format!("--connect-to={target}"),
        "-i".to_owned(),
        uris.display().to_string(),
    ]
}

/// Runs h2load from the client namespace on core 0; its summary in [`WrkResult`]'s shape
/// (h2load gives no latency percentiles: 0, shown as `-`).
fn run_h2load(topo: &Topology, kind: ProxyKind, args: &[String], secs: u64) -> Result<WrkResult> {
    let mut all = vec!["-c".to_owned(), LOAD_CORE.to_owned(), "h2load".to_owned()];
    all.extend(args.iter().cloned());
    let mut cmd = topo.exec_command(Ns::Client, "taskset", all);
    let out = run_bounded(&mut cmd, Duration::from_secs(secs + 30))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "h2load against {} failed ({}): {stdout}{}",
            kind.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let r = parse_h2load(&stdout)?;
    if !stdout.contains("Application protocol: h2c") {
        bail!(
            "h2load against {} did not speak h2c:\n{stdout}",
            kind.label()
        );
    }
    Ok(WrkResult {
        requests: r.done,
        duration_us: (r.secs * 1e6) as u64,
        status_errors: r.done.saturating_sub(r.ok_2xx),
        socket_errors: r.failed,
        p50_us: 0,
        p99_us: 0,
    })
}

/// 200 h2c requests to the routes of the h2 host must all answer 2xx.
fn precheck_h2(topo: &Topology, kind: ProxyKind, table: &RouteTable, dir: &Path) -> Result<()> {
    let uris = dir.join(format!("precheck-h2-{}.txt", kind.port()));
    std::fs::write(&uris, h2_uris(table, &table.host(table.hosts / 2)))?;
    let args = h2load_args(kind.addr_h2(), &uris, 2, 10, H2Bound::Requests(200));
    let r = run_h2load(topo, kind, &args, 10)?;
    if r.requests != 200 || r.status_errors > 0 || r.socket_errors > 0 {
        bail!(
            "{}: h2c routing check: {} of 200 done, {} not 2xx, {} failed",
            kind.label(),
            r.requests,
            r.status_errors,
            r.socket_errors
        );
    }
    Ok(())
}

fn print_run(run: &Run) {
    println!(
        "   round {} {:<9} {:<14} {:>8.0} req/s  p50 {:>5} µs  p99 {:>6} µs  {:>5.1} µs CPU/req  proxy CPU {:>3.0}%  core0 {:>3.0}%  other {:>3.0}%",
        run.round,
        run.scenario.split(',').next().unwrap_or_default(),
        run.proxy,
        run.wrk.rps(),
        run.wrk.p50_us,
        run.wrk.p99_us,
        run.cpu_per_request(),
        run.proxy_utilization() * 100.0,
        run.core0_busy * 100.0,
        run.other_load * 100.0,
    );
}

/// Waits until both cores together are busier than `max_load` cores for no more than one
/// second-long sample (the benchmark's own processes are idle between runs), at most
/// `timeout`. Returns whether the machine got quiet.
pub(super) fn wait_quiet(
    clk: u64,
    max_load: f64,
    timeout: Duration,
    check_stop: &dyn Fn() -> Result<()>,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let before = cpu::cores();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        let after = cpu::cores();
        let busy: u64 = (0..after.len())
            .map(|n| cpu::busy_ticks(&before, &after, n))
            .sum();
        let load = busy as f64 / clk as f64 / started.elapsed().as_secs_f64();
        if load <= max_load {
            return Ok(true);
        }
        check_stop()?;
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// `taskset -c <core> <program> <args...>` as the argument list for [`Topology::spawn`].
pub(super) fn pinned(core: &str, program: &Path, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "-c".to_owned(),
        core.to_owned(),
        program.display().to_string(),
    ];
    v.extend(args.iter().map(|a| (*a).to_owned()));
    v
}

fn start_backend(
    topo: &Topology,
    kind: BackendKind,
    table: &RouteTable,
    dir: &Path,
    testapp: &Path,
) -> Result<Vec<Proc>> {
    let procs = match kind {
        BackendKind::Nginx => {
            let nginx_dir = dir.join("nginx-backend");
            std::fs::create_dir_all(&nginx_dir)?;
            let conf = nginx_dir.join("nginx.conf");
            std::fs::write(&conf, nginx::backend_config(&table.backends, &nginx_dir))?;
            vec![spawn_nginx(
                topo,
                Ns::Pods,
                "backend-nginx",
                LOAD_CORE,
                &nginx_dir,
                &conf,
            )?]
        }
        BackendKind::Testapp => {
            let mut procs = Vec::new();
            for (i, addr) in table.backends.iter().enumerate() {
                let name = format!("backend-testapp-{i}");
                let listen = addr.to_string();
                procs.push(topo.spawn(
                    Ns::Pods,
                    &name,
                    "taskset",
                    pinned(
                        LOAD_CORE,
                        testapp,
                        &["counter", "--listen", &listen, "--name", &name],
                    ),
                )?);
            }
            procs
        }
    };
    let refs: Vec<&Proc> = procs.iter().collect();
    wait_listening(
        topo,
        Ns::Pods,
        &refs,
        &table.backends,
        Duration::from_secs(10),
    )?;
    Ok(procs)
}

pub(super) fn spawn_nginx(
    topo: &Topology,
    ns: Ns,
    name: &str,
    core: &str,
    dir: &Path,
    conf: &Path,
) -> Result<Proc> {
    let prefix = dir.display().to_string();
    let error_log = dir.join("error.log").display().to_string();
    let conf = conf.display().to_string();
    topo.spawn(
        ns,
        name,
        "taskset",
        pinned(
            core,
            Path::new("nginx"),
            &["-p", &prefix, "-e", &error_log, "-c", &conf],
        ),
    )
}

/// What `ingressd check` took on one config.
#[derive(Clone, Copy, Debug)]
struct Check {
    /// Wall time.
    wall: Duration,
    /// Peak resident memory (`ru_maxrss` from `wait4`), KiB.
    peak_kib: u64,
}

/// Runs `ingressd check --config <config>` (output in `dir`), bounded by `timeout`, and
/// fails unless it accepts the config; its wall time and peak memory are those of the
/// config pipeline alone (read, parse, analyze, compile), the work the daemon does at
/// start and on every change.
fn run_check(ingressd: &Path, config: &Path, dir: &Path, timeout: Duration) -> Result<Check> {
    let out_path = dir.join("ingressd-check.log");
    let out = std::fs::File::create(&out_path)?;
    let started = Instant::now();
    let mut child = Command::new(ingressd)
        .arg("check")
        .arg("--config")
        .arg(config)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting ingressd check")?;
    let pid = child.id() as libc::pid_t;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child; both pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let wall = started.elapsed();
            let log = std::fs::read_to_string(&out_path).unwrap_or_default();
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
                bail!(
                    "ingressd check rejected the generated config (wait status {status}):\n{log}"
                );
            }
            return Ok(Check {
                wall,
                peak_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            });
        }
        if r < 0 {
            bail!(
                "wait4 on ingressd check: {}",
                std::io::Error::last_os_error()
            );
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ingressd check took longer than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `kind` with `table` and waits until it serves; returns it with the time from
/// spawning it to serving and, for ingressd, the wall time of `ingressd check` on the same
/// files.
fn start_proxy(
    topo: &Topology,
    kind: ProxyKind,
    table: &RouteTable,
    dir: &Path,
    ingressd: &Path,
) -> Result<(Proc, Duration, Option<Check>)> {
    // Large tables take the daemon seconds to compile.
    let timeout = Duration::from_secs(30 + (table.routes() / 500) as u64);
    let mut check_time = None;
    let started;
    let proc = match kind {
        ProxyKind::Ingressd => {
            let config = dir.join("ingressd-config");
            std::fs::create_dir_all(&config)?;
            for (name, yaml) in istio::files(table) {
                std::fs::write(config.join(&name), yaml)?;
            }
            let config_arg = config.display().to_string();
            check_time = Some(run_check(ingressd, &config, dir, timeout)?);
            let mut run_args = vec!["run", "--config", &config_arg, "--kernel", "off"];
            run_args.extend(ingressd_tuning(ingressd));
            started = Instant::now();
            let proc = topo.spawn(
                Ns::Node,
                "ingressd",
                "taskset",
                pinned(PROXY_CORE, ingressd, &run_args),
            )?;
            topo.wait_ready(&proc, timeout)?;
            proc
        }
        ProxyKind::Nginx => {
            let nginx_dir = dir.join("nginx-proxy");
            std::fs::create_dir_all(&nginx_dir)?;
            let conf = nginx_dir.join("nginx.conf");
            std::fs::write(
                &conf,
                nginx::proxy_config(table, kind.addr(), kind.addr_h2(), &nginx_dir),
            )?;
            started = Instant::now();
            spawn_nginx(topo, Ns::Node, "proxy-nginx", PROXY_CORE, &nginx_dir, &conf)?
        }
        ProxyKind::Haproxy | ProxyKind::HaproxyMap => {
            let (name, routing) = if kind == ProxyKind::Haproxy {
                ("haproxy-acl", haproxy::Routing::Acl)
            } else {
                ("haproxy-map", haproxy::Routing::Map)
            };
            let map = dir.join(format!("{name}.map"));
            std::fs::write(&map, haproxy::route_map(table))?;
            let conf = dir.join(format!("{name}.cfg"));
            std::fs::write(
                &conf,
                haproxy::config(table, kind.addr(), kind.addr_h2(), routing, &map),
            )?;
            let conf = conf.display().to_string();
            started = Instant::now();
            topo.spawn(
                Ns::Node,
                &format!("proxy-{name}"),
                "taskset",
                pinned(PROXY_CORE, Path::new("haproxy"), &["-db", "-f", &conf]),
            )?
        }
    };
    let mut addrs = vec![kind.addr()];
    if kind.addr_h2() != kind.addr() {
        addrs.push(kind.addr_h2());
    }
    wait_listening(topo, Ns::Client, &[&proc], &addrs, timeout)?;
    let startup = started.elapsed();
    // nginx forks its worker after binding; wait for it so its memory is counted.
    if kind == ProxyKind::Nginx {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cpu::tree_cpu(proc.pid())?.pids.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok((proc, startup, check_time))
}

/// Waits until every address accepts connections from `ns`; fails early, with their
/// logs, when one of `procs` exits.
pub(super) fn wait_listening(
    topo: &Topology,
    ns: Ns,
    procs: &[&Proc],
    addrs: &[SocketAddrV4],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for addr in addrs {
        loop {
            for p in procs {
                if let Some(status) = p.try_status()? {
                    bail!(
                        "{} exited ({status}) before listening\n{}",
                        p.name(),
                        p.log_tail(20)
                    );
                }
            }
            match topo.wait_tcp(ns, SocketAddr::V4(*addr), Duration::from_millis(200)) {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    let logs: Vec<String> = procs.iter().map(|p| p.log_tail(20)).collect();
                    return Err(
                        e.context(format!("nothing listening on {addr}\n{}", logs.join("\n")))
                    );
                }
                Err(_) => {}
            }
        }
    }
    Ok(())
}

/// Flags of `ingressd run` that make the comparison fair, when this build has them:
/// one worker thread, and no access log (nginx and HAProxy log nothing either).
pub(super) fn ingressd_tuning(ingressd: &Path) -> Vec<&'static str> {
    let help = output(Command::new(ingressd).args(["run", "--help"])).unwrap_or_default();
    let mut extra = Vec::new();
    if help.contains("--concurrency") {
        extra.extend(["--concurrency", "1"]);
    }
    if help.contains("--access-log-format") {
        extra.extend(["--access-log-format", "off"]);
    }
    extra
}

/// Sends each of `requests` once through `kind` (one curl, keep-alive) and fails unless
/// each answers 200 with the backend's body; then checks that an unknown host and an
/// unrouted path are not answered 200, so the proxy really routes.
fn precheck(
    topo: &Topology,
    kind: ProxyKind,
    table: &RouteTable,
    requests: &[(String, String)],
    dir: &Path,
    backend: BackendKind,
) -> Result<()> {
    let base = format!("http://{}", kind.addr());
    let mut config = String::new();
    for (host, path) in requests {
        config.push_str(&curl_entry(&base, host, path));
    }
    let file = dir.join(format!("precheck-{}.curl", kind.port()));
    std::fs::write(&file, &config)?;
    let out = topo.exec(
        Ns::Client,
        "curl",
        ["-s".as_ref(), "-K".as_ref(), file.as_os_str()],
        Duration::from_secs(60 + requests.len() as u64 / 200),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    if lines.len() != requests.len() {
        bail!(
            "{}: routing check got {} answers for {} requests (curl {}): {}",
            kind.label(),
            lines.len(),
            requests.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut failures = Vec::new();
    for ((host, path), line) in requests.iter().zip(&lines) {
        let ok = match backend {
            BackendKind::Nginx => *line == format!("200 {}", nginx::BACKEND_BODY.len()),
            BackendKind::Testapp => line.starts_with("200 "),
        };
        if !ok {
            failures.push(format!("{host}{path}: {line}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{}: {} of {} routes did not answer 200 from the backend, e.g.\n  {}",
            kind.label(),
            failures.len(),
            requests.len(),
            failures
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    let unrouted = [
        (
            format!("unknown.{}", super::routes::DOMAIN),
            table.prefix(0) + "item",
        ),
        (table.host(0), "/zz/item".to_owned()),
        (table.host(0), "/r0".to_owned()),
    ];
    let mut config = String::new();
    for (host, path) in &unrouted {
        config.push_str(&curl_entry(&base, host, path));
    }
    let file = dir.join(format!("precheck-unrouted-{}.curl", kind.port()));
    std::fs::write(&file, &config)?;
    let out = topo.exec(
        Ns::Client,
        "curl",
        ["-s".as_ref(), "-K".as_ref(), file.as_os_str()],
        Duration::from_secs(30),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for ((host, path), line) in unrouted.iter().zip(stdout.lines()) {
        if line.starts_with("200 ") || line.starts_with("000 ") {
            bail!(
                "{}: {host}{path} has no route but was answered `{line}`",
                kind.label()
            );
        }
    }
    Ok(())
}

/// One transfer in a curl config file (`curl -K`); prints `<status> <body size>`.
fn curl_entry(base: &str, host: &str, path: &str) -> String {
    format!(
        "url = \"{base}{path}\"\nheader = \"Host: {host}\"\noutput = \"/dev/null\"\n\
         write-out = \"%{{http_code}} %{{size_download}}\\n\"\nmax-time = 5\nnext\n"
    )
}

/// Runs wrk from the client namespace on core 0 against `kind`.
fn run_wrk(
    topo: &Topology,
    kind: ProxyKind,
    script: &Path,
    connections: u32,
    secs: u64,
) -> Result<WrkResult> {
    let url = format!("http://{}/", kind.addr());
    let mut cmd = topo.exec_command(
        Ns::Client,
        "taskset",
        [
            "-c".to_owned(),
            LOAD_CORE.to_owned(),
            "wrk".to_owned(),
            "-t1".to_owned(),
            format!("-c{connections}"),
            format!("-d{secs}s"),
            "--latency".to_owned(),
            "-s".to_owned(),
            script.display().to_string(),
            url,
        ],
    );
    let out = run_bounded(&mut cmd, Duration::from_secs(secs + 30))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk against {} failed ({}): {stdout}{}",
            kind.label(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wrk::parse_result(&stdout)
}

/// One measured run of `p` under `load`. Besides the proxy's own CPU time it samples
/// every core and every process of the benchmark (`bench_pids` and their children, this
/// process and the load generator it reaps), so that CPU time nobody of the benchmark
/// used shows as other load. The caller fills in scenario, round and attempt.
fn measure(
    p: &Running,
    bench_pids: &[u32],
    clk: u64,
    load: impl FnOnce() -> Result<WrkResult>,
) -> Result<Run> {
    let ours = || -> Result<u64> {
        let mut ticks = cpu::self_with_children()?;
        for pid in bench_pids {
            ticks += cpu::tree_cpu(*pid)?.ticks;
        }
        Ok(ticks)
    };
    let cores_before = cpu::cores();
    let ours_before = ours()?;
    let before = cpu::tree_cpu(p.proc.pid())?;
    let started = Instant::now();
    let wrk = load()?;
    let after = cpu::tree_cpu(p.proc.pid())?;
    let wall_s = started.elapsed().as_secs_f64();
    let ours_after = ours()?;
    let cores_after = cpu::cores();
    if before.pids != after.pids {
        bail!(
            "{}: its processes changed during the run ({:?} -> {:?}); CPU time would be wrong",
            p.kind.label(),
            before.pids,
            after.pids
        );
    }
    let ticks = after.ticks.saturating_sub(before.ticks);
    let busy: u64 = [0, 1]
        .iter()
        .map(|&n| cpu::busy_ticks(&cores_before, &cores_after, n))
        .sum();
    let other = busy.saturating_sub(ours_after.saturating_sub(ours_before));
    Ok(Run {
        scenario: String::new(),
        proxy: p.kind.label().to_owned(),
        round: 0,
        wrk,
        cpu_us: ticks as f64 * 1e6 / clk as f64,
        wall_s,
        core0_busy: cpu::busy_fraction(&cores_before, &cores_after, 0),
        core1_busy: cpu::busy_fraction(&cores_before, &cores_after, 1),
        other_load: other as f64 / clk as f64 / wall_s,
        attempt: 1,
    })
}

/// `perf record -g -e cpu-clock` attached to the proxy's processes during one more
/// HTTP/1.1 run; returns the shares per binary or library and the top userspace symbols
/// (self time), and keeps the reports (also the call graph, `--children`) in `dir`.
fn profile(topo: &Topology, p: &Running, load: &Load, dir: &Path, secs: u64) -> Result<Profile> {
    let label = p.kind.label();
    let pids: Vec<String> = cpu::tree_cpu(p.proc.pid())?
        .pids
        .iter()
        .map(ToString::to_string)
        .collect();
    let data = dir.join(format!("perf-{label}.data"));
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-g", "-e", "cpu-clock", "-F", "999", "-p"])
        .arg(pids.join(","))
        .arg("-o")
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting perf record")?;
    std::thread::sleep(Duration::from_millis(500));
    let run = load.run(topo, p.kind, Protocol::H1, secs);
    // SIGINT makes perf record write its data and exit.
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while perf.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = perf.kill();
            let _ = perf.wait();
            bail!("perf record did not stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run?;
    let report = |sort: &str, children: bool| -> Result<String> {
        let out = run_bounded(
            Command::new("perf")
                .args(["report", "--stdio", "--sort", sort])
                .arg(if children {
                    "--children"
                } else {
                    "--no-children"
                })
                .args(["--percent-limit", "0.1", "-g", "none", "-i"])
                .arg(&data),
            Duration::from_secs(180),
        )?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let name = format!(
            "perf-{}-{}{}.txt",
            label.replace(' ', "-"),
            sort.replace(',', "-"),
            if children { "-children" } else { "" }
        );
        std::fs::write(dir.join(name), text.as_bytes())?;
        Ok(text)
    };
    let _ = report("dso,sym", true)?;
    Ok(Profile {
        dsos: dso_shares(&report("dso", false)?),
        symbols: top_symbols(&report("dso,sym", false)?, 200)
            .into_iter()
            .filter(|(_, sym)| !sym.starts_with("[kernel"))
            .take(20)
            .collect(),
    })
}

/// The 1, 5 and 15 minute load averages.
pub(super) fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

pub(super) fn fmt_load(load: &[f64]) -> String {
    load.iter()
        .map(|l| format!("{l:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn join(addrs: &[SocketAddrV4]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the report says about the machine and the software.
struct Facts {
    date: String,
    cpu: String,
    cores: usize,
    kernel: String,
    nginx: String,
    haproxy: String,
    wrk: String,
    h2load: String,
    ingressd: String,
    load_start: String,
    load_end: String,
    /// The 1-minute load average was above 1 before or after the run.
    busy: bool,
}

impl Facts {
    fn collect(args: &HttpArgs, ingressd: &Path, load_start: &[f64], load_end: &[f64]) -> Self {
        let cpu = cpu_model();
        let commit = output(Command::new("git").args(["describe", "--always", "--dirty"]))
            .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
        let ingressd = if args.proxies.contains(&ProxyKind::Ingressd) {
            let tuning = ingressd_tuning(ingressd);
            format!(
                "ingressd {commit} (release build, `run --kernel off{}{}`)",
                if tuning.is_empty() { "" } else { " " },
                tuning.join(" ")
            )
        } else {
            format!("ingressd not run (commit {commit})")
        };
        Self {
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned()),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: first_line(Command::new("uname").arg("-r")),
            nginx: first_line(Command::new("nginx").arg("-v")),
            haproxy: first_line(Command::new("haproxy").arg("-v")),
            wrk: first_line(Command::new("wrk").arg("-v")),
            h2load: first_line(Command::new("h2load").arg("--version")),
            ingressd,
            busy: load_start.first().is_some_and(|l| *l > 1.0)
                || load_end.first().is_some_and(|l| *l > 1.0),
            load_start: fmt_load(load_start),
            load_end: fmt_load(load_end),
        }
    }
}

/// The scenarios of `runs`, in the order they ran.
fn scenarios(runs: &[Run]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for r in runs {
        if !order.contains(&r.scenario) {
            order.push(r.scenario.clone());
        }
    }
    order
}

/// The target lines: CPU per request per scenario (median of the per-round ratios to
/// nginx) and ingressd's memory at the largest table.
fn targets(runs: &[Run], footprints: &[Footprint]) -> String {
    let mut out = String::new();
    let mut ratios = Vec::new();
    for scenario in scenarios(runs) {
        let mine: Vec<Run> = runs
            .iter()
            .filter(|r| r.scenario == scenario)
            .cloned()
            .collect();
        if let Some(ratio) = report::cpu_ratio_per_round(&mine) {
            let s = report::summarize(&mine);
            let cpu = |p: &str| {
                s.iter()
                    .find(|x| x.proxy == p)
                    .map_or(f64::NAN, |x| x.cpu_per_request)
            };
            ratios.push(format!(
                "{scenario}: {ratio:.2}x ({:.1} vs {:.1} µs)",
                cpu("ingressd"),
                cpu(report::BASELINE)
            ));
            if ratio > 1.0 {
                ratios.last_mut().expect("just pushed").push_str(" (over)");
            }
        }
    }
    if ratios.is_empty() {
        out.push_str(
            "- CPU per request at or below nginx's: not measured (it needs ingressd and nginx).\n",
        );
    } else {
        let met = if ratios.iter().any(|r| r.ends_with("(over)")) {
            "**not met**"
        } else {
            "**met**"
        };
        let _ = writeln!(
            out,
            "- CPU per request at or below nginx's (median of the per-round ratios ingressd / \
             nginx): {met}: {}.",
            ratios.join("; ")
        );
    }
    let largest = footprints
        .iter()
        .filter(|f| f.proxy == "ingressd")
        .max_by_key(|f| f.hosts);
    match largest {
        Some(f) => {
            let loaded = mib(f.loaded.rss_kib);
            let after = f.after.map(|m| mib(m.rss_kib));
            let verdict = if f.hosts < 10_000 {
                "not measured at 10,000 hosts".to_owned()
            } else {
                let judge = |v: f64| {
                    if v < MEMORY_TARGET_MIB {
                        "**met**"
                    } else {
                        "**not met**"
                    }
                };
                match after {
                    Some(a) if judge(a) != judge(loaded) => format!(
                        "{} while serving (after the load runs), {} right after the config is loaded",
                        judge(a),
                        judge(loaded)
                    ),
                    _ => judge(loaded).to_owned(),
                }
            };
            let _ = writeln!(
                out,
                "- Resident memory of ingressd at 10,000 hosts under {MEMORY_TARGET_MIB:.0} MiB: \
                 {verdict}: {} hosts: {loaded:.1} MiB once it serves the config{}{}.",
                thousands(f.hosts),
                after.map_or_else(String::new, |a| format!(", {a:.1} MiB after the load runs")),
                f.check.map_or_else(String::new, |c| format!(
                    "; `ingressd check` on the same files peaks at {:.1} MiB",
                    mib(c.peak_kib)
                ))
            );
        }
        None => out.push_str("- Resident memory at 10,000 hosts: ingressd not run.\n"),
    }
    out
}

/// Start-up time and memory per table and proxy, with ratios to nginx.
fn footprint_table(footprints: &[Footprint]) -> String {
    let mut t = String::from(
        "| table | proxy | serving after start | `ingressd check` | RSS, config loaded | RSS after the load | PSS, last | PSS vs nginx |\n\
         |---|---|--:|--:|--:|--:|--:|--:|\n",
    );
    let last = |f: &Footprint| f.after.unwrap_or(f.loaded);
    for f in footprints {
        let nginx = footprints
            .iter()
            .find(|n| n.hosts == f.hosts && n.proxy == report::BASELINE);
        let _ = writeln!(
            t,
            "| {} | {} | {:.2} s | {} | {:.1} MiB | {} | {:.1} MiB | {} |",
            f.table,
            f.proxy,
            f.startup.as_secs_f64(),
            f.check.map_or_else(
                || "-".to_owned(),
                |c| format!("{:.2} s, {:.1} MiB", c.wall.as_secs_f64(), mib(c.peak_kib))
            ),
            mib(f.loaded.rss_kib),
            f.after
                .map_or_else(|| "-".to_owned(), |m| format!("{:.1} MiB", mib(m.rss_kib))),
            mib(last(f).pss_kib),
            nginx.map_or_else(
                || "-".to_owned(),
                |n| format!("{:.2}", last(f).pss_kib as f64 / last(n).pss_kib as f64)
            ),
        );
    }
    t
}

/// The `### Profiles` subsection (empty without `--profile`).
fn profile_section(profiles: &[(ProxyKind, Profile)], duration: u64) -> String {
    if profiles.is_empty() {
        return String::new();
    }
    let mut t = format!(
        "### Profiles

`perf record -g -e cpu-clock -F 999 -p <proxy's pids>` during one more HTTP/1.1 run of
{duration} s per proxy on the 100-host table after its rounds; `perf report --no-children`:
the share of the proxy's samples per binary or library (`--sort dso`; `[kernel.kallsyms]`
is the kernel on the proxy's behalf: TCP, epoll, syscalls) and the top userspace symbols
by self time (`--sort dso,sym`, kernel symbols left out).

"
    );
    for (kind, profile) in profiles {
        let dsos: Vec<String> = profile
            .dsos
            .iter()
            .map(|(pct, dso)| format!("{dso} {pct:.1}%"))
            .collect();
        let _ = writeln!(
            t,
            "{}: {}\n\n| share | where |\n|--:|---|",
            kind.label(),
            dsos.join(", ")
        );
        for (pct, sym) in &profile.symbols {
            let _ = writeln!(t, "| {pct:.2}% | `{sym}` |");
        }
        t.push('\n');
    }
    t
}

/// The `## HTTP routing` section of docs/benchmarks.md.
fn section(
    runs: &[Run],
    footprints: &[Footprint],
    profiles: &[(ProxyKind, Profile)],
    phases: &[Phase],
    facts: &Facts,
    args: &HttpArgs,
) -> String {
    let others: Vec<f64> = runs.iter().map(|r| r.other_load).collect();
    let pct = |v: f64| format!("{:.0}%", v * 100.0);
    let backend = match args.backend {
        BackendKind::Nginx => format!(
            "nginx 1 worker returning a fixed `200` ({} bytes) on {}",
            nginx::BACKEND_BODY.len(),
            join(&BACKENDS)
        ),
        BackendKind::Testapp => format!(
            "two `ingressd-testapp counter` processes on {}",
            join(&BACKENDS)
        ),
    };
    let mut results = String::new();
    for scenario in scenarios(runs) {
        let mine: Vec<Run> = runs
            .iter()
            .filter(|r| r.scenario == scenario)
            .cloned()
            .collect();
        let summaries = report::summarize(&mine);
        let tool = if scenario.starts_with("HTTP/2") {
            "h2load"
        } else {
            "wrk"
        };
        let _ = write!(
            results,
            "### {scenario} ({tool})\n\n{}\n{}\n\n",
            report::table(&summaries),
            report::saturation_note(&summaries)
        );
    }
    let tables = phases
        .iter()
        .map(|p| {
            format!(
                "{}{}",
                p.table.describe(),
                if p.measured {
                    ""
                } else {
                    " (start-up and memory only)"
                }
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let large: Vec<String> = phases
        .iter()
        .filter(|p| p.table.prefixes != 10)
        .map(|p| {
            format!(
                "{} hosts `{}` .. `{}`{}",
                thousands(p.table.hosts),
                p.table.host(0),
                p.table.host(p.table.hosts - 1),
                if p.measured { "" } else { " (loaded only)" }
            )
        })
        .collect();
    let large_note = if large.is_empty() {
        "none".to_owned()
    } else {
        large.join(", ")
    };
    format!(
        "{SECTION}

_Written by `cargo xtask bench http` on {date}; rerunning it rewrites this section._

Medians of {rounds} rounds of {duration} s per proxy and load. CPU/req is the proxy's user +
system CPU time per completed request; proxy CPU is the share of its core it used; core 0
busy is the load side (wrk or h2load + backend). Ratios in the tables are of the medians, to
nginx (CPU/req and latency: lower is better); the targets are judged on the median of the
per-round ratios (runs of one round are close in time, so slow drifts of the machine
cancel out). Route tables: {tables}.

### Targets

{targets}
{results}### Start-up time and memory

Serving after start: from spawning the proxy to its ports accepting (ingressd: after its
`/healthz/ready` answers 200, i.e. the config is compiled and the listeners are up).
`ingressd check`: wall time and peak resident memory (`ru_maxrss`) of `ingressd check
--config DIR` on the same files: the same pipeline, offline (reading the YAML, parsing,
analysis, compiling the snapshot), the work the daemon does at start and on every change.
RSS: VmRSS from `/proc/<pid>/status`, summed over the proxy's processes (nginx: master +
worker, which share most of their pages, so the sum counts those twice), once the proxy
serves and after the load runs (measured tables only). PSS: `Pss` from
`/proc/<pid>/smaps_rollup` at the last of these moments, summed (shared pages divided among
the processes sharing them), and its ratio to nginx's.

{footprint_table}
### Machine

- {cpu}, {cores} cores; Linux {kernel}
- {nginx}; {haproxy}; {wrk}; {h2load}
- {ingressd}
- Load average (1/5/15 min) before: {load_start}; after: {load_end}{load_note}
- Other load, the CPU time on both cores not used by the benchmark's processes during the
  runs (other work on the machine, kernel work not charged to a process): median {other_median},
  at most {other_max} of one core

### Method

- Topology: network namespaces `client` (198.18.0.2) -- veth -- `node` (198.18.0.1, the proxies)
  -- veth -- `pods` (backend pool {backends}).
- Routing, generated for all proxies from one table: 100 virtual hosts `h000.bench.example` ..
  `h099.bench.example` with 10 prefix routes each (`/r0/` .. `/r9/`, nothing else); the large
  tables: {large_note}, with 3 prefix routes each (`/r0/` .. `/r2/`). Every route
  goes to the same two-endpoint pool, round-robin, upstream keep-alive. ingressd: one Gateway,
  one VirtualService per host with one `uri.prefix` route per path (500 VirtualServices per
  file), a Service + EndpointSlice and a DestinationRule with `loadBalancer: ROUND_ROBIN`
  (Istio's default, LEAST_REQUEST, would differ from the others). nginx: one `server_name`
  block per host with one prefix `location` per route, `upstream` with `keepalive 128`,
  `server_names_hash_max_size` sized for the table. HAProxy (acl, 100-host table only):
  one `hdr(host)` acl per host, one `path_beg` acl per prefix and one `use_backend .. if host
  path` rule per route, evaluated in order (3 rules per host would make it the slowest by far
  at 10,000 hosts). HAProxy (map): one `use_backend %[base,map_beg(..)]` over a map with one
  line per route (host + path prefix tree). HAProxy: `http-reuse always`.
- Retries, equal for all: ingressd applies Istio's default policy (no `retries` in the
  VirtualServices: 2 retries on connect-failure, refused-stream, unavailable, cancelled, 503,
  on another host); nginx `proxy_next_upstream error timeout http_503;
  proxy_next_upstream_tries 3;`; HAProxy `retries 2`, `retry-on conn-failure 503`, `option
  redispatch 1`. No retry happens in the runs (the backends always answer 200).
- HTTP/2: h2c with prior knowledge to all proxies: ingressd on its one port (it tells HTTP/2
  by the connection preface), nginx on a second `listen .. http2` (cleartext) in every server
  block, HAProxy on a second `bind .. proto h2`; upstream HTTP/1.1 for all.
- All proxies add `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id`, and keep no access
  log.
- Each proxy: one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, ingressd one tokio
  worker), pinned with `taskset -c 1`. Backend: {backend}, pinned to core 0.
- HTTP/1.1 load: `wrk -t1 -c{connections} -d{duration}s --latency` pinned to core 0 in the
  client namespace, with a Lua script cycling through every host/path pair of the table
  (1,000 or 30,000), so the requests spread over all hosts.
- HTTP/2 load: `h2load -t1 -c{h2_clients} -m{h2_streams} -D{duration}` pinned to core 0,
  `--connect-to` the proxy, `-i` a list of the routes of one host (the table's middle one:
  h2load sends all requests of a run with one authority); h2load reports no latency
  percentiles (`-`).
- Before measuring, each proxy must answer 200 with the backend's body to every route of the
  100-host table and to one route of every host of the large tables (the prefix cycling),
  and not 200 to an unknown host and unrouted paths; over h2c, 200 requests must all get
  2xx.
- Then {warmup} s of warm-up per proxy and load, then {rounds} rounds, each running every
  load on every proxy in turn ({order}). CPU time is utime + stime from `/proc/<pid>/stat`
  of the proxy's processes (nginx master and worker, haproxy, ingressd with all its threads)
  before and after each run. Every load is bounded in time (and killed 30 s after it).
- Other load is the CPU time on both cores that the benchmark's processes did not use. Before
  each run the benchmark waits (at most 15 s) until the machine is quiet; a run with more than
  {max_other:.0}% of a core of other load is redone, at most {retries} times (attempt column);
  waiting and redoing stop once they took as long as the planned runs.
- `status >= 400` is wrk's count of error responses (h2load: responses not 2xx); socket
  errors are connect/read/write/timeout (h2load: failed, errored and timed-out requests).

{profiles}### Every run

{runs_table}",
        date = facts.date,
        rounds = args.rounds,
        duration = args.duration,
        targets = targets(runs, footprints),
        footprint_table = footprint_table(footprints),
        cpu = facts.cpu,
        cores = facts.cores,
        kernel = facts.kernel,
        nginx = facts.nginx,
        haproxy = facts.haproxy,
        wrk = facts.wrk,
        h2load = facts.h2load,
        ingressd = facts.ingressd,
        load_start = facts.load_start,
        load_end = facts.load_end,
        load_note = if facts.busy {
            " (above 1: other work shared the cores during the run, so the numbers are noisier)"
        } else {
            ""
        },
        backends = join(&BACKENDS),
        connections = args.connections,
        h2_clients = args.h2_clients,
        h2_streams = args.h2_streams,
        warmup = args.warmup,
        order = args
            .proxies
            .iter()
            .map(|p| p.label())
            .collect::<Vec<_>>()
            .join(", "),
        profiles = profile_section(profiles, args.duration),
        runs_table = report::runs_table(runs),
        max_other = args.max_other_load * 100.0,
        retries = args.retries,
        other_median = pct(report::median(&others)),
        other_max = pct(others.iter().copied().fold(0.0, f64::max)),
    )
}

/// `path` relative to the repository root when it is inside it.
pub(super) fn rel(path: &Path) -> PathBuf {
    path.strip_prefix(repo_root())
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_proc() {
        let status = "Name:\tingressd\nVmPeak:\t  200000 kB\nVmRSS:\t   34567 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(34_567));
        assert_eq!(kib_field("Name:\tx\n", "VmRSS:"), None);
        let rollup = "55d0-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  5000 kB\nPss:  4321 kB\n";
        assert_eq!(kib_field(rollup, "Pss:"), Some(4321));
        let mem = memory(std::process::id()).unwrap();
        assert!(mem.rss_kib > 0 && mem.pss_kib > 0 && mem.pss_kib <= mem.rss_kib + 1024);
    }

    /// `run_check` reports wall time and peak memory of a program that succeeds, and the
    /// output of one that fails (`true` and `false` ignore the arguments).
    #[test]
    fn check_runs_are_timed_and_measured() {
        let dir = tempfile::tempdir().expect("temp dir");
        let timeout = Duration::from_secs(10);
        let ok = run_check(Path::new("true"), dir.path(), dir.path(), timeout).unwrap();
        assert!(ok.peak_kib > 0 && ok.wall < timeout);
        let err = run_check(Path::new("false"), dir.path(), dir.path(), timeout).unwrap_err();
        assert!(err.to_string().contains("rejected"), "{err}");
    }

    #[test]
    fn h2load_speaks_h2c_to_one_authority_bounded() {
        let table = RouteTable::large(10_000, BACKENDS.to_vec());
        let uris = h2_uris(&table, &table.host(5000));
        assert_eq!(
            uris,
            "http://h5000.bench.example/r0/item\nhttp://h5000.bench.example/r1/item\nhttp://h5000.bench.example/r2/item\n"
        );
        let target = ProxyKind::Nginx.addr_h2();
        assert_eq!(target.to_string(), "198.18.0.1:8091");
        assert_eq!(ProxyKind::Ingressd.addr_h2(), ProxyKind::Ingressd.addr());
        let args = h2load_args(target, Path::new("/d/u.txt"), 16, 10, H2Bound::Duration(10));
        assert_eq!(
            args,
            [
                "-t1",
                "-c16",
                "-m10",
                "-D10",
                "--connect-to=198.18.0.1:8091",
                "-i",
                "/d/u.txt"
            ]
        );
        assert!(!args.iter().any(|a| a == "--h1"));
        let args = h2load_args(target, Path::new("/d/u.txt"), 2, 10, H2Bound::Requests(200));
        assert!(args.contains(&"-n200".to_owned()));
    }

    #[test]
    fn phases_measure_the_standard_and_large_tables_and_load_the_others() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: HttpArgs,
        }
        let cli = Cli::parse_from(["bench"]);
        let p = phases(&cli.args);
        let shape: Vec<(usize, usize, bool, usize)> = p
            .iter()
            .map(|p| (p.table.hosts, p.table.prefixes, p.measured, p.proxies.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (100, 10, true, 4),
                (1000, 3, false, 3),
                (10_000, 3, true, 3)
            ]
        );
        assert!(!p[2].proxies.contains(&ProxyKind::Haproxy));
        let cli = Cli::parse_from(["bench", "--large-hosts", "0", "--memory-hosts", "0"]);
        assert_eq!(phases(&cli.args).len(), 1);
    }
}
