//! `cargo xtask bench http`: host + prefix routing through ingressd, nginx and HAProxy.
//!
//! ```text
//!  ingressd-bench-client        ingressd-bench-node                  ingressd-bench-pods
//!  198.18.0.2  ---- veth ----  198.18.0.1 | 198.18.1.1 ---- veth ----  198.18.1.10:8080
//!   wrk (core 0)                 :8080 ingressd       (core 1)          198.18.1.11:8080
//!                                :8081 nginx          (core 1)           backend (core 0)
//!                                :8082 haproxy (acl)  (core 1)
//!                                :8083 haproxy (map)  (core 1)
//! ```
//!
//! Every proxy serves the same [`RouteTable`] with one worker pinned to core 1 and
//! keep-alive to the backend pool. After a routing check and a warm-up, wrk runs against
//! each proxy in turn (A B C A B C ...), and each run's proxy CPU time is read from
//! `/proc`. The idle proxies stay up between their runs; they use no CPU meanwhile.

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
use super::routes::RouteTable;
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
}

/// What answers behind the proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// nginx with one worker returning a fixed 200 (cheapest per request).
    Nginx,
    /// Two `ingressd-testapp counter` processes (JSON echo of each request, one log line each).
    Testapp,
}

/// Options of `cargo xtask bench http`.
#[derive(Args, Debug)]
pub struct HttpArgs {
    /// Measured rounds; each round runs every proxy once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    duration: u64,
    /// Seconds of unmeasured load per proxy before the first round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=30))]
    warmup: u64,
    /// wrk connections (one wrk thread).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    connections: u32,
    /// Proxies to run, in this order within each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ingressd,nginx,haproxy,haproxy-map"
    )]
    proxies: Vec<ProxyKind>,
    /// The backend behind every proxy.
    #[arg(long, value_enum, default_value = "nginx")]
    backend: BackendKind,
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

/// Runs the benchmark.
pub fn run_http(args: &HttpArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench http creates network namespaces and needs root");
    }
    if args.proxies.is_empty() {
        bail!("--proxies is empty");
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

    let load_start = load_average();
    if load_start.first().is_some_and(|l| *l > 1.0) {
        println!(
            "warning: load average {} before the benchmark; other work on this machine skews the numbers",
            fmt_load(&load_start)
        );
    }

    let dir = target_dir().join("bench").join("http");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let table = RouteTable::standard(BACKENDS.to_vec());

    println!(
        "\n== topology {PREFIX}-{{client,node,pods}}; files in {}",
        rel(&dir).display()
    );
    let topo = Topology::builder()
        .prefix(PREFIX)
        .replace_existing(true)
        .pod_addrs(table.backend_ips())
        .log_dir(dir.join("logs"))
        .build()?;

    let backends = start_backend(&topo, args.backend, &table, &dir, &testapp)?;
    println!(
        "   backend: {:?} on {} (pods ns, core {LOAD_CORE})",
        args.backend,
        join(&table.backends)
    );

    let mut proxies = Vec::new();
    for &kind in &args.proxies {
        check_stop()?;
        let proc = start_proxy(&topo, kind, &table, &dir, &ingressd)?;
        println!(
            "   {}: listening on {} (node ns, core {PROXY_CORE}, pid {})",
            kind.label(),
            kind.addr(),
            proc.pid()
        );
        proxies.push(Running { kind, proc });
    }

    println!("\n== routing check: every route answers 200 from the backend, others do not");
    for p in &proxies {
        check_stop()?;
        precheck(&topo, p.kind, &table, &dir, args.backend)?;
        println!(
            "   {}: {} routes ok",
            p.kind.label(),
            table.requests().len()
        );
    }

    let script = dir.join("routes.lua");
    std::fs::write(&script, wrk::lua_script(&table.requests()))
        .with_context(|| format!("writing {}", script.display()))?;
    if args.warmup > 0 {
        println!("\n== warm-up: {}s per proxy", args.warmup);
        for p in &proxies {
            check_stop()?;
            let r = run_wrk(&topo, p.kind, &script, args.connections, args.warmup)?;
            println!("   {}: {:.0} req/s", p.kind.label(), r.rps());
        }
    }

    let clk = cpu::clock_ticks();
    // Every process of the benchmark, to tell its CPU time from other work on the machine.
    let bench_pids: Vec<u32> = backends
        .iter()
        .chain(proxies.iter().map(|p| &p.proc))
        .map(Proc::pid)
        .collect();
    println!(
        "\n== {} rounds of {}s per proxy, wrk -t1 -c{} (order {})",
        args.rounds,
        args.duration,
        args.connections,
        proxies
            .iter()
            .map(|p| p.kind.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Other work on the machine (the other engineers' builds) skews a run; such runs are
    // redone, after waiting for a quiet moment, within a bounded number and time.
    let planned =
        Duration::from_secs(args.duration * u64::from(args.rounds) * proxies.len() as u64);
    // Waiting and redoing may add at most the planned time.
    let retry_deadline = Instant::now() + planned * 2;
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for p in &proxies {
            let mut attempt = 0;
            let run = loop {
                check_stop()?;
                attempt += 1;
                // Waiting, like redoing, stops once the time budget is spent.
                let wait = QUIET_WAIT.min(retry_deadline.saturating_duration_since(Instant::now()));
                if !wait_quiet(clk, args.max_other_load, wait, &check_stop)? {
                    println!("   (the machine stayed busy; measuring anyway)");
                }
                let mut run = measure(&topo, p, &bench_pids, round, &script, args, clk)?;
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
    let load_end = load_average();

    for p in &proxies {
        if let Some(status) = p.proc.try_status()? {
            bail!(
                "{} exited during the benchmark ({status})\n{}",
                p.kind.label(),
                p.proc.log_tail(20)
            );
        }
    }
    drop(proxies);
    drop(topo);

    let summaries = report::summarize(&runs);
    let facts = Facts::collect(args, &ingressd, &load_start, &load_end);
    let section = section(&summaries, &runs, &facts, args);
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

fn print_run(run: &Run) {
    println!(
        "   round {} {:<14} {:>8.0} req/s  p50 {:>5} µs  p99 {:>6} µs  {:>5.1} µs CPU/req  proxy CPU {:>3.0}%  core0 {:>3.0}%  other {:>3.0}%",
        run.round,
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

fn start_proxy(
    topo: &Topology,
    kind: ProxyKind,
    table: &RouteTable,
    dir: &Path,
    ingressd: &Path,
) -> Result<Proc> {
    let proc = match kind {
        ProxyKind::Ingressd => {
            let config = dir.join("ingressd-config");
            std::fs::create_dir_all(&config)?;
            for (name, yaml) in istio::files(table) {
                std::fs::write(config.join(&name), yaml)?;
            }
            let config_arg = config.display().to_string();
            let check = run_bounded(
                Command::new(ingressd).args(["check", "--config", &config_arg]),
                Duration::from_secs(30),
            )?;
            if !check.status.success() {
                bail!(
                    "ingressd check rejected the generated config ({}):\n{}{}",
                    check.status,
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
            }
            let mut run_args = vec!["run", "--config", &config_arg, "--kernel", "off"];
            run_args.extend(ingressd_tuning(ingressd));
            let proc = topo.spawn(
                Ns::Node,
                "ingressd",
                "taskset",
                pinned(PROXY_CORE, ingressd, &run_args),
            )?;
            topo.wait_ready(&proc, Duration::from_secs(30))?;
            proc
        }
        ProxyKind::Nginx => {
            let nginx_dir = dir.join("nginx-proxy");
            std::fs::create_dir_all(&nginx_dir)?;
            let conf = nginx_dir.join("nginx.conf");
            std::fs::write(&conf, nginx::proxy_config(table, kind.addr(), &nginx_dir))?;
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
            std::fs::write(&conf, haproxy::config(table, kind.addr(), routing, &map))?;
            let conf = conf.display().to_string();
            topo.spawn(
                Ns::Node,
                &format!("proxy-{name}"),
                "taskset",
                pinned(PROXY_CORE, Path::new("haproxy"), &["-db", "-f", &conf]),
            )?
        }
    };
    wait_listening(
        topo,
        Ns::Client,
        &[&proc],
        &[kind.addr()],
        Duration::from_secs(20),
    )?;
    Ok(proc)
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

/// Sends every routed request once through `kind` (one curl, keep-alive) and fails unless
/// each answers 200 with the backend's body; then checks that an unknown host and an
/// unrouted path are not answered 200, so the proxy really routes.
fn precheck(
    topo: &Topology,
    kind: ProxyKind,
    table: &RouteTable,
    dir: &Path,
    backend: BackendKind,
) -> Result<()> {
    let base = format!("http://{}", kind.addr());
    let mut config = String::new();
    let requests = table.requests();
    for (host, path) in &requests {
        config.push_str(&curl_entry(&base, host, path));
    }
    let file = dir.join(format!("precheck-{}.curl", kind.port()));
    std::fs::write(&file, &config)?;
    let out = topo.exec(
        Ns::Client,
        "curl",
        ["-s".as_ref(), "-K".as_ref(), file.as_os_str()],
        Duration::from_secs(60),
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

/// One measured run of `p`. Besides the proxy's own CPU time it samples every core and
/// every process of the benchmark (`bench_pids` and their children, this process and the
/// wrk it reaps), so that CPU time nobody of the benchmark used shows as other load.
fn measure(
    topo: &Topology,
    p: &Running,
    bench_pids: &[u32],
    round: u32,
    script: &Path,
    args: &HttpArgs,
    clk: u64,
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
    let wrk = run_wrk(topo, p.kind, script, args.connections, args.duration)?;
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
        proxy: p.kind.label().to_owned(),
        round,
        wrk,
        cpu_us: ticks as f64 * 1e6 / clk as f64,
        wall_s,
        core0_busy: cpu::busy_fraction(&cores_before, &cores_after, 0),
        core1_busy: cpu::busy_fraction(&cores_before, &cores_after, 1),
        other_load: other as f64 / clk as f64 / wall_s,
        attempt: 1,
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
            ingressd,
            busy: load_start.first().is_some_and(|l| *l > 1.0)
                || load_end.first().is_some_and(|l| *l > 1.0),
            load_start: fmt_load(load_start),
            load_end: fmt_load(load_end),
        }
    }
}

/// The `## HTTP routing` section of docs/benchmarks.md.
fn section(summaries: &[report::Summary], runs: &[Run], facts: &Facts, args: &HttpArgs) -> String {
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
    format!(
        "{SECTION}

_Written by `cargo xtask bench http` on {date}; rerunning it rewrites this section._

Medians of {rounds} runs of {duration} s per proxy. CPU/req is the proxy's user + system CPU time
per completed request; proxy CPU is the share of its core it used; core 0 busy is the load side
(wrk + backend). Ratios are to nginx (CPU/req and latency: lower is better).

{table}
{verdict}

{saturation}

### Machine

- {cpu}, {cores} cores; Linux {kernel}
- {nginx}; {haproxy}; {wrk}
- {ingressd}
- Load average (1/5/15 min) before: {load_start}; after: {load_end}{load_note}
- Other load, the CPU time on both cores not used by the benchmark's processes during the
  runs (other work on the machine, kernel work not charged to a process): median {other_median},
  at most {other_max} of one core

### Method

- Topology: network namespaces `client` (198.18.0.2) -- veth -- `node` (198.18.0.1, the proxies)
  -- veth -- `pods` (backend pool {backends}).
- Routing, generated for all proxies from one table: 100 virtual hosts `h000.bench.example` ..
  `h099.bench.example`, 10 prefix routes each (`/r0/` .. `/r9/`, nothing else), every route to
  the same two-endpoint pool, round-robin, upstream keep-alive. ingressd: one Gateway, 100
  VirtualServices with 10 `uri.prefix` routes each, a Service + EndpointSlice. nginx: 100
  `server_name` blocks with 10 prefix `location`s, `upstream` with `keepalive 128`. HAProxy
  (acl): 100 `hdr(host)` acls, 10 `path_beg` acls and 1000 `use_backend .. if host path` rules,
  evaluated in order. HAProxy (map): one `use_backend %[base,map_beg(..)]` over a 1000-line map
  (host + path prefix tree). HAProxy: `http-reuse always`.
- All proxies add `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Request-Id`, and keep no access
  log.
- Each proxy: one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, ingressd one tokio
  worker), pinned with `taskset -c 1`. Backend: {backend}, pinned to core 0.
- Load: `wrk -t1 -c{connections} -d{duration}s --latency` pinned to core 0 in the client namespace,
  with a Lua script cycling through all 1000 host/path pairs.
- Before measuring, every one of the 1000 routes is requested through each proxy and must answer
  200 with the backend's body, and an unknown host and unrouted paths must not get 200.
- Then {warmup} s of warm-up per proxy, then {rounds} rounds alternating the proxies ({order}).
  CPU time is utime + stime from `/proc/<pid>/stat` of the proxy's processes (nginx master and
  worker, haproxy, ingressd with all its threads) before and after each run.
- Other load is the CPU time on both cores that the benchmark's processes did not use. Before
  each run the benchmark waits (at most 15 s) until the machine is quiet; a run with more than
  {max_other:.0}% of a core of other load is redone, at most {retries} times (attempt column);
  waiting and redoing stop once they took as long as the planned runs.
- `status >= 400` is wrk's count of error responses; socket errors are connect/read/write/timeout.

### Every run

{runs_table}",
        date = facts.date,
        rounds = args.rounds,
        duration = args.duration,
        table = report::table(summaries),
        verdict = report::target_verdict(summaries),
        saturation = report::saturation_note(summaries),
        cpu = facts.cpu,
        cores = facts.cores,
        kernel = facts.kernel,
        nginx = facts.nginx,
        haproxy = facts.haproxy,
        wrk = facts.wrk,
        ingressd = facts.ingressd,
        load_start = facts.load_start,
        load_end = facts.load_end,
        load_note = if facts.busy {
            " (above 1: other work shared the cores during the run, so the numbers are noisier)"
        } else {
            ""
        },
        backends = join(&BACKENDS),
        backend = backend,
        connections = args.connections,
        warmup = args.warmup,
        order = args
            .proxies
            .iter()
            .map(|p| p.label())
            .collect::<Vec<_>>()
            .join(", "),
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
