//! `cargo xtask bench tcp`: TCP forwarding through the node by four datapaths, side by side.
//!
//! ```text
//!  ingressd-bench-tcp-client     ingressd-bench-tcp-node              ingressd-bench-tcp-pods
//!  198.18.0.2 ---- veth ---- cl0 198.18.0.1 | pd0 198.18.1.1 ---- veth ---- 198.18.1.10:5201
//!  iperf3 -c, connect loop       node:30306 -> 198.18.1.10:5201         iperf3 -s / acceptor
//!  (core 0)                      (core 1: RPS of cl0/pd0, haproxy,      (core 0)
//!                                 ingressd)
//! ```
//!
//! Datapaths: `direct` (the client connects to the backend, the node only routes),
//! `iptables` (kube-proxy's DNAT + MASQUERADE in the node's nat table), `haproxy` (TCP mode
//! with splice) and `ingressd` (`run --kernel on`: `tc_ingress` forwards in the kernel).
//! Only one of them handles node:30306 at a time: the iptables rules exist and the daemon
//! (with its pins) runs only during their own runs; HAProxy stays up and is reached only
//! when neither of the other two intercepts the port.
//!
//! Node CPU: receive packet steering sends every packet the node's interfaces receive to
//! core 1 and every packet the client and pods receive to core 0, so all of the node's work
//! (forwarding in softirq, HAProxy, the daemon) runs on core 1 and nothing of the
//! endpoints does. See [`node_ticks`] for how core 1's time is read.
//!
//! The config and rule generators and the parsers are pure and unit-tested.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ingressd_tests::config::service_with_endpoints;
use ingressd_tests::topology::NODE_ADDR;
use ingressd_tests::{ConfigDir, Ns, Proc, Topology, run_bounded};

use super::cpu;
use super::http::{fmt_load, load_average, pinned, rel, wait_listening, wait_quiet};
use super::report::{cpu_model, first_line, median, update_named_section};
use crate::util::{build_release_bins, is_root, output, repo_root, target_dir};

/// The heading of the section this benchmark owns in `docs/benchmarks.md`.
pub const SECTION: &str = "## TCP forwarding";

const PREFIX: &str = "ingressd-bench-tcp";
/// The backend: iperf3's server, later the connection acceptor.
const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 5201);
/// The measured nodePort, forwarded by every datapath but `direct`.
const NODE_PORT: u16 = 30306;
/// The measured service's Gateway server port (= the gateway Service's targetPort).
const LISTEN_PORT: u16 = 3306;
/// Filler service `i` (from 1) has nodePort `FILLER_NODE_PORT + i` ...
const FILLER_NODE_PORT: u16 = 40_000;
/// ... and server port / targetPort `FILLER_LISTEN_PORT + i`.
const FILLER_LISTEN_PORT: u16 = 10_000;
/// Most services the generators can number without port clashes.
const MAX_GENERATED: u32 = 20_000;
/// `--max-services` of the daemon under test: the 10,000-service step fits
/// (its Maglev tables take 2 x 1021 x 4 bytes per service, about 84 MB).
const KERNEL_SERVICES: u32 = 10_240;
/// The client, the backends and the load run here.
const ENDPOINT_CORE: usize = 0;
/// Everything of the node runs here.
const NODE_CORE: usize = 1;
/// The node's nat chains (kube-proxy's KUBE-NODEPORTS and its masquerade, flattened).
const CHAIN: &str = "INGRESSD-BENCH";
const POST_CHAIN: &str = "INGRESSD-BENCH-POST";
/// Longest wait for a quiet machine before one run.
const QUIET_WAIT: Duration = Duration::from_secs(15);
/// Where the daemon pins its kernel state (removed with `ingressd cleanup` after each run).
const PIN_ROOT: &str = "/sys/fs/bpf/ingressd-bench-tcp";

/// One way through the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Datapath {
    /// Routing only: the client connects to the backend itself.
    Direct,
    /// DNAT of node:30306 + MASQUERADE in the nat table (kube-proxy's iptables mode).
    Iptables,
    /// HAProxy in TCP mode, `option splice-auto`, one thread.
    Haproxy,
    /// `ingressd run --kernel on`: DNAT + SNAT in `tc_ingress`.
    Ingressd,
}

impl Datapath {
    const ALL: [Datapath; 4] = [
        Datapath::Direct,
        Datapath::Iptables,
        Datapath::Haproxy,
        Datapath::Ingressd,
    ];

    fn label(self) -> &'static str {
        match self {
            Datapath::Direct => "direct",
            Datapath::Iptables => "iptables",
            Datapath::Haproxy => "haproxy",
            Datapath::Ingressd => "ingressd",
        }
    }

    /// Where the client connects.
    fn target(self) -> SocketAddrV4 {
        match self {
            Datapath::Direct => BACKEND,
            _ => SocketAddrV4::new(NODE_ADDR, NODE_PORT),
        }
    }
}

/// Options of `cargo xtask bench tcp`.
#[derive(Args, Debug)]
pub struct TcpArgs {
    /// Measured rounds; each round runs every datapath once (A B C D, repeated).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Rounds of the rule-scaling runs.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    scale_rounds: u32,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=30))]
    duration: u64,
    /// Streams of the multi-stream iperf3 run.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=64))]
    streams: u32,
    /// Seconds per connection-rate run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=30))]
    conn_secs: u64,
    /// Most connections per connection-rate run.
    #[arg(long, default_value_t = 200_000)]
    conn_max: u64,
    /// Datapaths to run, in this order within each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,iptables,haproxy,ingressd"
    )]
    datapaths: Vec<Datapath>,
    /// Service counts for the rule-scaling runs (after a run with 1 service).
    #[arg(long, value_delimiter = ',', default_value = "1024,10000")]
    scale: Vec<u32>,
    /// Print the results without writing docs/benchmarks.md.
    #[arg(long)]
    no_write: bool,
    /// Other load (CPU of processes outside the benchmark, in cores) above which a run is
    /// redone.
    #[arg(long, default_value_t = 0.10)]
    max_other_load: f64,
    /// How often one run may be redone because of other load (bounded in time as well).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=5))]
    retries: u32,
}

// ---------------------------------------------------------------------------------------
// Pure: configs, rules, parsers, accounting.

/// The nodePort and the Gateway server port (= targetPort) of service `i` (0 is measured).
fn service_ports(i: u32) -> (u16, u16) {
    if i == 0 {
        return (NODE_PORT, LISTEN_PORT);
    }
    let i = u16::try_from(i).expect("service counts are capped at MAX_GENERATED");
    (FILLER_NODE_PORT + i, FILLER_LISTEN_PORT + i)
}

/// ingressd's config for `services` forwarded TCP services, as `(file name, YAML)`: the
/// `istio-ingressgateway` NodePort Service with one port per service, a Gateway with one
/// TCP server per port, one VirtualService with one `tcp` route per port to the backend,
/// and the backend's Service + EndpointSlice. Few documents and one file per big one,
/// because the daemon's YAML loader takes at most 1024 documents and 250,000 nodes per
/// file. Service 0 is the measured one (nodePort 30306, port 3306).
pub fn istio_files(services: u32) -> Vec<(String, String)> {
    assert!((1..=MAX_GENERATED).contains(&services));
    let mut svc = String::from(
        "\
apiVersion: v1
kind: Service
metadata:
  name: istio-ingressgateway
  namespace: istio-system
  labels:
    istio: ingressgateway
spec:
  type: NodePort
  selector:
    istio: ingressgateway
  ports:
",
    );
    let mut gateway = String::from(
        "\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: bench-gateway
  namespace: istio-system
spec:
  selector:
    istio: ingressgateway
  servers:
",
    );
    let mut routes = String::new();
    for i in 0..services {
        let (node_port, port) = service_ports(i);
        let _ = write!(
            svc,
            "  - name: tcp-{i}\n    port: {port}\n    targetPort: {port}\n    nodePort: {node_port}\n    protocol: TCP\n"
        );
        let _ = write!(
            gateway,
            "  - hosts:\n    - '*'\n    port:\n      name: tcp-{i}\n      number: {port}\n      protocol: TCP\n"
        );
        let _ = write!(
            routes,
            "  - match:\n    - port: {port}\n    route:\n    - destination:\n        host: bench-backend.default.svc.cluster.local\n        port:\n          number: {backend_port}\n",
            backend_port = BACKEND.port()
        );
    }
    let backend = service_with_endpoints(
        "bench-backend",
        "tcp-bench",
        BACKEND.port(),
        BACKEND.port(),
        &[*BACKEND.ip()],
    );
    let header = "# Generated by `cargo xtask bench tcp`; do not edit.\n";
    vec![
        ("gateway-service.yaml".to_owned(), format!("{header}{svc}")),
        ("gateway.yaml".to_owned(), format!("{header}{gateway}")),
        (
            "virtualservice.yaml".to_owned(),
            format!(
                "{header}\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: bench-tcp
  namespace: default
spec:
  gateways:
  - istio-system/bench-gateway
  hosts:
  - '*'
  tcp:
{routes}"
            ),
        ),
        ("backend.yaml".to_owned(), format!("{header}{backend}")),
    ]
}

/// `iptables-restore --noflush` input for the nat table: `rules` DNAT rules in [`CHAIN`]
/// (declaring the chains flushes them), the measured nodePort's rule last, so a new
/// connection to it walks every rule (kube-proxy's KUBE-NODEPORTS matches linearly
/// too), and one MASQUERADE of DNATed connections in [`POST_CHAIN`].
pub fn iptables_rules(rules: u32) -> String {
    assert!((1..=MAX_GENERATED).contains(&rules));
    let mut text = format!("*nat\n:{CHAIN} - [0:0]\n:{POST_CHAIN} - [0:0]\n");
    for i in (1..rules).chain([0]) {
        let (node_port, _) = service_ports(i);
        let _ = writeln!(
            text,
            "-A {CHAIN} -p tcp -m tcp --dport {node_port} -j DNAT --to-destination {BACKEND}"
        );
    }
    let _ = writeln!(
        text,
        "-A {POST_CHAIN} -m conntrack --ctstate DNAT -j MASQUERADE\nCOMMIT"
    );
    text
}

/// The jumps into the bench chains, as `iptables -t nat` arguments after `-A`/`-D`:
/// nodePorts are matched on any local address (kube-proxy's `--dst-type LOCAL`).
fn iptables_jumps() -> [Vec<&'static str>; 2] {
    [
        vec![
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            CHAIN,
        ],
        vec!["POSTROUTING", "-j", POST_CHAIN],
    ]
}

/// HAProxy in TCP mode with splice, one thread, on node:30306.
pub fn haproxy_config() -> String {
    format!(
        "\
# Generated by `cargo xtask bench tcp`; do not edit.
global
    nbthread 1
    maxconn 4096

defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend bench_tcp
    bind {NODE_ADDR}:{NODE_PORT}
    default_backend bench_backend

backend bench_backend
    server b0 {BACKEND}
"
    )
}

/// What one iperf3 client run reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Iperf {
    /// Bytes the server received.
    pub bytes: u64,
    /// Seconds the server received for.
    pub seconds: f64,
    /// TCP retransmissions on the sender.
    pub retransmits: u64,
}

impl Iperf {
    /// Received Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
}

/// Parses `iperf3 -J` output of a client run.
pub fn parse_iperf(json: &str) -> Result<Iperf> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(error) = v["error"].as_str() {
        bail!("iperf3: {error}");
    }
    let received = &v["end"]["sum_received"];
    let bytes = received["bytes"]
        .as_u64()
        .context("iperf3: no end.sum_received.bytes")?;
    let seconds = received["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .context("iperf3: no end.sum_received.seconds")?;
    Ok(Iperf {
        bytes,
        seconds,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}

/// The in-kernel drop counters in the daemon's `/stats/prometheus`:
/// `ingressd_kernel_packets_total{reason="drop_..."}` -> packets, the non-zero ones.
pub fn parse_drops(text: &str) -> BTreeMap<String, u64> {
    let mut drops = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("ingressd_kernel_packets_total{reason=\"") else {
            continue;
        };
        let Some((reason, value)) = rest.split_once("\"}") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if reason.starts_with("drop_") && value > 0.0 {
            drops.insert(reason.to_owned(), value as u64);
        }
    }
    drops
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn fmt_drops(drops: &BTreeMap<String, u64>) -> String {
    drops
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One core's `/proc/stat` columns, in clock ticks, grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreCols {
    /// user + nice + system: time charged to whatever task ran.
    pub process: u64,
    /// irq + softirq: ticks that landed in interrupt or softirq context (whatever task
    /// was current; without `CONFIG_IRQ_TIME_ACCOUNTING` the same tick is also in that
    /// task's stime).
    pub interrupt: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Every column.
    pub total: u64,
}

/// The `cpuN` lines of `/proc/stat`, indexed by N.
pub fn parse_cores(text: &str) -> Vec<CoreCols> {
    let mut cores = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let Some(index) = parts
            .next()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let c: Vec<u64> = parts.take(8).filter_map(|c| c.parse().ok()).collect();
        if c.len() < 8 {
            continue;
        }
        if cores.len() <= index {
            cores.resize(index + 1, CoreCols::default());
        }
        cores[index] = CoreCols {
            process: c[0] + c[1] + c[2],
            interrupt: c[5] + c[6],
            idle: c[3] + c[4],
            total: c.iter().sum(),
        };
    }
    cores
}

fn read_cores() -> Vec<CoreCols> {
    std::fs::read_to_string("/proc/stat")
        .map(|t| parse_cores(&t))
        .unwrap_or_default()
}

/// The node's CPU ticks on its core between two samples: every interrupt/softirq tick
/// there (the forwarding, and HAProxy's and the daemon's packet processing), plus the
/// task ticks of the node's processes (HAProxy, the daemon), capped by the core's task
/// ticks so that a softirq tick that landed in HAProxy's context (counted both in the
/// softirq column and in its stime) is not counted twice. The cap also keeps other
/// processes that ran on the core out, unless HAProxy's share was larger.
pub fn node_ticks(before: CoreCols, after: CoreCols, node_proc_ticks: u64) -> u64 {
    let interrupt = after.interrupt.saturating_sub(before.interrupt);
    let process = after.process.saturating_sub(before.process);
    interrupt + process.min(node_proc_ticks)
}

/// Busy fraction of a core between two samples.
fn busy_fraction(before: CoreCols, after: CoreCols) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return f64::NAN;
    }
    let idle = after.idle.saturating_sub(before.idle);
    (total - idle.min(total)) as f64 / total as f64
}

/// `pid -> ticks` of the processes that are not this benchmark's: neither `me` nor its
/// descendants, nor kernel threads (pid 2 and its children). `procs` is `pid -> (ppid,
/// ticks)`.
pub fn foreign_ticks(procs: &HashMap<u32, (u32, u64)>, me: u32) -> HashMap<u32, u64> {
    let ours = |mut pid: u32| {
        // Bounded walk up the parent chain (pid 1 and 0 end it).
        for _ in 0..64 {
            if pid == me {
                return true;
            }
            if pid <= 2 {
                return pid == 2;
            }
            match procs.get(&pid) {
                Some((ppid, _)) => pid = *ppid,
                None => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|(pid, _)| !ours(**pid))
        .map(|(pid, (_, ticks))| (*pid, *ticks))
        .collect()
}

/// Ticks the foreign processes used between two samples (processes that appeared in
/// between count from 0).
pub fn foreign_delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum()
}

fn all_processes() -> HashMap<u32, (u32, u64)> {
    let mut procs = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Ok(parsed) = cpu::parse_stat(&stat)
        {
            procs.insert(pid, parsed);
        }
    }
    procs
}

// ---------------------------------------------------------------------------------------
// Measurement windows.

/// CPU use during one measured run.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// The node's CPU seconds (see [`node_ticks`]).
    pub node_s: f64,
    /// Busy fraction of core 0 (client + backend) and core 1 (the node).
    pub busy: [f64; 2],
    /// CPU of processes outside the benchmark, in cores.
    pub other_load: f64,
}

struct Window {
    cores: Vec<CoreCols>,
    node: u64,
    foreign: HashMap<u32, u64>,
    started: Instant,
}

fn node_proc_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| cpu::tree_cpu(*p).ok())
        .map(|t| t.ticks)
        .sum()
}

impl Window {
    fn open(node_pids: &[u32]) -> Self {
        let me = std::process::id();
        Window {
            foreign: foreign_ticks(&all_processes(), me),
            node: node_proc_ticks(node_pids),
            cores: read_cores(),
            started: Instant::now(),
        }
    }

    fn close(self, node_pids: &[u32], clk: u64) -> Result<CpuUse> {
        let cores = read_cores();
        let wall_s = self.started.elapsed().as_secs_f64();
        let node = node_proc_ticks(node_pids).saturating_sub(self.node);
        let foreign = foreign_ticks(&all_processes(), std::process::id());
        let (Some(b1), Some(a1), Some(b0), Some(a0)) = (
            self.cores.get(NODE_CORE),
            cores.get(NODE_CORE),
            self.cores.get(ENDPOINT_CORE),
            cores.get(ENDPOINT_CORE),
        ) else {
            bail!("/proc/stat has no cpu{NODE_CORE} line: this benchmark needs 2 cores");
        };
        let clk = clk as f64;
        Ok(CpuUse {
            node_s: node_ticks(*b1, *a1, node) as f64 / clk,
            busy: [busy_fraction(*b0, *a0), busy_fraction(*b1, *a1)],
            other_load: foreign_delta(&self.foreign, &foreign) as f64 / clk / wall_s,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Results and the report.

/// One iperf3 run through one datapath.
#[derive(Clone, Debug)]
pub struct ThroughputRun {
    pub datapath: Datapath,
    pub round: u32,
    pub streams: u32,
    pub iperf: Iperf,
    pub cpu: CpuUse,
    pub attempt: u32,
}

impl ThroughputRun {
    /// Node CPU seconds per GB (10^9 bytes) received.
    pub fn node_s_per_gb(&self) -> f64 {
        self.cpu.node_s / (self.iperf.bytes as f64 / 1e9)
    }
}

/// A bounded connect/close loop's outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConnResult {
    /// Connections that completed (connect, one byte from the backend, close).
    pub ok: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Seconds the loop ran.
    pub seconds: f64,
    /// Completed connections that took longer than 100 ms.
    pub slow: u64,
    /// The longest a completed connection took, seconds.
    pub max_s: f64,
    /// Connections completed before the first failure (all of them when none failed) ...
    pub clean_ok: u64,
    /// ... and the seconds until that failure began.
    pub clean_s: f64,
}

impl ConnResult {
    /// Completed connections per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.seconds
    }

    /// Completed connections per second until the first failure.
    pub fn clean_rate(&self) -> f64 {
        self.clean_ok as f64 / self.clean_s
    }
}

/// One connection-rate run through one datapath.
#[derive(Clone, Debug)]
pub struct ConnRun {
    pub datapath: Datapath,
    pub round: u32,
    pub conn: ConnResult,
    /// The daemon's in-kernel drops during the run (ingressd only).
    pub drops: BTreeMap<String, u64>,
    pub cpu: CpuUse,
    pub attempt: u32,
}

/// One rule-scaling step.
#[derive(Clone, Debug)]
pub struct ScaleStep {
    /// `ingressd` or `iptables`.
    pub system: &'static str,
    /// Round, from 1 (0 in the medians of [`summarize_scale`]).
    pub round: u32,
    /// Services (ingressd) or DNAT rules (iptables) present.
    pub services: u32,
    /// Seconds from the config write to the daemon's `kernel maps updated`, or of the
    /// `iptables-restore`.
    pub program_s: f64,
    /// Services the kernel forwards (ingressd only).
    pub in_kernel: Option<u32>,
    pub conn: ConnResult,
    pub other_load: f64,
    /// The daemon's in-kernel drops during the step (ingressd only).
    pub drops: BTreeMap<String, u64>,
}

/// Medians per datapath.
#[derive(Clone, Debug)]
pub struct Summary {
    pub datapath: Datapath,
    pub gbps_1: f64,
    pub gbps_n: f64,
    pub cpu_gb_1: f64,
    pub cpu_gb_n: f64,
    pub conn_rate: f64,
    /// Connections per second until a run's first failure (median).
    pub clean_conn_rate: f64,
    /// In-kernel drops over all connection runs (ingressd).
    pub drops: BTreeMap<String, u64>,
    pub node_busy_n: f64,
    pub endpoint_busy_n: f64,
    /// Medians of the per-round ratios ([`paired`]): throughput to direct (1 stream, N
    /// streams), node CPU per GB to HAProxy (1, N), new conn/s to direct.
    pub vs_direct_1: f64,
    pub vs_direct_n: f64,
    pub vs_haproxy_cpu_1: f64,
    pub vs_haproxy_cpu_n: f64,
    pub conn_vs_direct: f64,
    pub retransmits: u64,
}

/// The median over the rounds of `f(run of d) / f(run of base)`, pairing the runs of the
/// same round and the same test (so a slow drift of the machine cancels out); NaN when
/// `base` did not run.
pub fn paired<R>(
    runs: &[R],
    d: Datapath,
    base: Datapath,
    same_test: impl Fn(&R, &R) -> bool,
    datapath: impl Fn(&R) -> Datapath,
    f: impl Fn(&R) -> f64,
) -> f64 {
    let ratios: Vec<f64> = runs
        .iter()
        .filter(|r| datapath(r) == d)
        .filter_map(|r| {
            runs.iter()
                .find(|b| datapath(b) == base && same_test(r, b))
                .map(|b| f(r) / f(b))
        })
        .collect();
    median(&ratios)
}

/// One summary per datapath that ran, in [`Datapath::ALL`] order.
pub fn summarize(tput: &[ThroughputRun], conns: &[ConnRun]) -> Vec<Summary> {
    Datapath::ALL
        .iter()
        .filter(|d| tput.iter().any(|r| r.datapath == **d))
        .map(|&d| {
            let runs = |single: bool| -> Vec<&ThroughputRun> {
                tput.iter()
                    .filter(|r| r.datapath == d && (r.streams == 1) == single)
                    .collect()
            };
            let med = |rs: &[&ThroughputRun], f: &dyn Fn(&ThroughputRun) -> f64| {
                median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            let (one, many) = (runs(true), runs(false));
            let mine: Vec<&ConnRun> = conns.iter().filter(|r| r.datapath == d).collect();
            let tput_ratio =
                |base: Datapath, streams_one: bool, f: &dyn Fn(&ThroughputRun) -> f64| {
                    paired(
                        tput,
                        d,
                        base,
                        |r, b| {
                            r.round == b.round
                                && r.streams == b.streams
                                && (r.streams == 1) == streams_one
                        },
                        |r| r.datapath,
                        f,
                    )
                };
            Summary {
                datapath: d,
                vs_direct_1: tput_ratio(Datapath::Direct, true, &|r| r.iperf.gbps()),
                vs_direct_n: tput_ratio(Datapath::Direct, false, &|r| r.iperf.gbps()),
                vs_haproxy_cpu_1: tput_ratio(
                    Datapath::Haproxy,
                    true,
                    &ThroughputRun::node_s_per_gb,
                ),
                vs_haproxy_cpu_n: tput_ratio(
                    Datapath::Haproxy,
                    false,
                    &ThroughputRun::node_s_per_gb,
                ),
                conn_vs_direct: paired(
                    conns,
                    d,
                    Datapath::Direct,
                    |r, b| r.round == b.round,
                    |r| r.datapath,
                    |r| r.conn.rate(),
                ),
                gbps_1: med(&one, &|r| r.iperf.gbps()),
                gbps_n: med(&many, &|r| r.iperf.gbps()),
                cpu_gb_1: med(&one, &ThroughputRun::node_s_per_gb),
                cpu_gb_n: med(&many, &ThroughputRun::node_s_per_gb),
                node_busy_n: med(&many, &|r| r.cpu.busy[NODE_CORE]),
                endpoint_busy_n: med(&many, &|r| r.cpu.busy[ENDPOINT_CORE]),
                conn_rate: median(&mine.iter().map(|r| r.conn.rate()).collect::<Vec<_>>()),
                clean_conn_rate: median(
                    &mine.iter().map(|r| r.conn.clean_rate()).collect::<Vec<_>>(),
                ),
                drops: mine.iter().fold(BTreeMap::new(), |mut all, r| {
                    for (reason, n) in &r.drops {
                        *all.entry(reason.clone()).or_default() += n;
                    }
                    all
                }),
                retransmits: tput
                    .iter()
                    .filter(|r| r.datapath == d)
                    .map(|r| r.iperf.retransmits)
                    .sum(),
            }
        })
        .collect()
}

fn ratio(value: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && value.is_finite() => format!("{:.2}", value / b),
        _ => "-".to_owned(),
    }
}

fn fixed(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "-".to_owned()
    }
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.0}%", v * 100.0)
    }
}

/// The results table: absolute numbers, then ratios (throughput and connections to
/// direct, CPU per GB to HAProxy).
pub fn table(s: &[Summary], streams: u32) -> String {
    let mut t = format!(
        "| datapath | 1 stream | {streams} streams | node CPU/GB, 1 stream | node CPU/GB, {streams} streams \
         | new conn/s | new conn/s until the first failure | node core busy ({streams} streams) | client+backend core busy ({streams} streams) \
         | 1 stream vs direct | {streams} streams vs direct | CPU/GB vs HAProxy (1 / {streams}) | conn/s vs direct |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    );
    for x in s {
        let _ = writeln!(
            t,
            "| {} | {:.2} Gbit/s | {:.2} Gbit/s | {:.3} s | {:.3} s | {:.0} | {:.0} | {} | {} | {} | {} | {} / {} | {} |",
            x.datapath.label(),
            x.gbps_1,
            x.gbps_n,
            x.cpu_gb_1,
            x.cpu_gb_n,
            x.conn_rate,
            x.clean_conn_rate,
            pct(x.node_busy_n),
            pct(x.endpoint_busy_n),
            fixed(x.vs_direct_1),
            fixed(x.vs_direct_n),
            fixed(x.vs_haproxy_cpu_1),
            fixed(x.vs_haproxy_cpu_n),
            fixed(x.conn_vs_direct),
        );
    }
    t
}

/// Whether a ratio meets a bound, as the report says it.
fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

/// The verdicts on the issue's three targets.
pub fn targets(s: &[Summary], scale: &[ScaleStep], streams: u32) -> String {
    let find = |d: Datapath| s.iter().find(|x| x.datapath == d);
    let mut out = String::new();
    match (find(Datapath::Ingressd), find(Datapath::Direct)) {
        (Some(i), Some(d)) => {
            let (r1, rn) = (i.vs_direct_1, i.vs_direct_n);
            let _ = writeln!(
                out,
                "- Throughput at least 0.9x direct: {}: 1 stream {:.3}x (medians {:.2} vs {:.2} Gbit/s), \
                 {streams} streams {:.3}x ({:.2} vs {:.2} Gbit/s).",
                verdict(r1 >= 0.9 && rn >= 0.9),
                r1,
                i.gbps_1,
                d.gbps_1,
                rn,
                i.gbps_n,
                d.gbps_n
            );
        }
        _ => out.push_str("- Throughput at least 0.9x direct: not measured in this run.\n"),
    }
    match (find(Datapath::Ingressd), find(Datapath::Haproxy)) {
        (Some(i), Some(h)) => {
            let (r1, rn) = (i.vs_haproxy_cpu_1, i.vs_haproxy_cpu_n);
            let _ = writeln!(
                out,
                "- Node CPU per GB at most 1/3 of HAProxy's: {}: 1 stream {:.3}x (medians {:.3} vs {:.3} s/GB), \
                 {streams} streams {:.3}x ({:.3} vs {:.3} s/GB).",
                verdict(r1 <= 1.0 / 3.0 && rn <= 1.0 / 3.0),
                r1,
                i.cpu_gb_1,
                h.cpu_gb_1,
                rn,
                i.cpu_gb_n,
                h.cpu_gb_n
            );
        }
        _ => {
            out.push_str("- Node CPU per GB at most 1/3 of HAProxy's: not measured in this run.\n")
        }
    }
    let ingressd: Vec<&ScaleStep> = scale.iter().filter(|x| x.system == "ingressd").collect();
    match ingressd.split_first() {
        Some((base, rest)) if !rest.is_empty() => {
            let mut parts = Vec::new();
            let mut flat = true;
            let mut all_in_kernel = true;
            for step in rest {
                let r = step.conn.clean_rate() / base.conn.clean_rate();
                flat &= r >= 0.9;
                let kernel = step.in_kernel.unwrap_or(0);
                all_in_kernel &= kernel == step.services;
                parts.push(format!(
                    "{} services ({} in the kernel) {:.0}/s = {:.3}x",
                    step.services,
                    kernel,
                    step.conn.clean_rate(),
                    r
                ));
            }
            let largest = rest.iter().map(|s| s.services).max().unwrap_or(0);
            let status = if flat && all_in_kernel {
                verdict(true).to_owned()
            } else if flat {
                format!(
                    "**not met as stated**: the rate stays flat (within 10%), but not all of the \
                     {largest} services are forwarded in the kernel"
                )
            } else {
                verdict(false).to_owned()
            };
            let _ = writeln!(
                out,
                "- Connection rate flat (within 10%) from 1 to {largest} services: {status}: \
                 new connections per second until the first failure: 1 service {:.0}/s; {}.",
                base.conn.clean_rate(),
                parts.join("; ")
            );
        }
        _ => out.push_str("- Connection rate flat from 1 to 10,000 services: not measured.\n"),
    }
    out
}

/// One step per (datapath, service count) with the medians over the rounds: time to
/// program, new connections per second (all, and until the first failure), the fewest
/// services in the kernel, failures and drops summed, the most other load.
pub fn summarize_scale(steps: &[ScaleStep]) -> Vec<ScaleStep> {
    let mut keys: Vec<(&'static str, u32)> = Vec::new();
    for s in steps {
        if !keys.contains(&(s.system, s.services)) {
            keys.push((s.system, s.services));
        }
    }
    keys.into_iter()
        .map(|(system, services)| {
            let mine: Vec<&ScaleStep> = steps
                .iter()
                .filter(|s| s.system == system && s.services == services)
                .collect();
            let med = |f: &dyn Fn(&ScaleStep) -> f64| {
                median(&mine.iter().map(|s| f(s)).collect::<Vec<_>>())
            };
            let mut drops: BTreeMap<String, u64> = BTreeMap::new();
            for (reason, n) in mine.iter().flat_map(|s| &s.drops) {
                *drops.entry(reason.clone()).or_default() += n;
            }
            // Rates as counts over one second, so that rate() and clean_rate() are the medians.
            ScaleStep {
                system,
                round: 0,
                services,
                program_s: med(&|s| s.program_s),
                in_kernel: mine.iter().filter_map(|s| s.in_kernel).min(),
                conn: ConnResult {
                    ok: med(&|s| s.conn.rate()).round() as u64,
                    failed: mine.iter().map(|s| s.conn.failed).sum(),
                    seconds: 1.0,
                    slow: mine.iter().map(|s| s.conn.slow).sum(),
                    max_s: mine.iter().map(|s| s.conn.max_s).fold(0.0, f64::max),
                    clean_ok: med(&|s| s.conn.clean_rate()).round() as u64,
                    clean_s: 1.0,
                },
                other_load: mine.iter().map(|s| s.other_load).fold(0.0, f64::max),
                drops,
            }
        })
        .collect()
}

/// Says which datapaths were limited by the client + backend core rather than by the
/// node: then their throughput is the endpoints' limit, and the throughput target shows
/// that the datapath does not slow the endpoints down, not how much it could carry.
pub fn bottleneck_note(s: &[Summary], streams: u32) -> String {
    let bound: Vec<&str> = s
        .iter()
        .filter(|x| x.endpoint_busy_n >= 0.95 && x.node_busy_n < 0.5)
        .map(|x| x.datapath.label())
        .collect();
    if bound.is_empty() {
        return String::new();
    }
    format!(
        "With {streams} streams the client + backend core was at least 95% busy and the node's \
         core less than half busy for: {}. Their throughput is what the endpoints manage on one \
         core, not the datapath's capacity; the throughput target then says that the datapath \
         does not slow the endpoints down. Single runs on this shared VM spread by up to about \
         ±20% (see Every run), which the per-round ratios absorb better than the medians.\n",
        bound.join(", ")
    )
}

/// What the report says about connections the kernel path dropped, if it dropped any.
pub fn drops_note(s: &[Summary], scale: &[ScaleStep]) -> String {
    let mut all: BTreeMap<String, u64> = BTreeMap::new();
    for (reason, n) in s
        .iter()
        .flat_map(|x| &x.drops)
        .chain(scale.iter().flat_map(|x| &x.drops))
    {
        *all.entry(reason.clone()).or_default() += n;
    }
    if all.is_empty() {
        return "ingressd's `tc_ingress` dropped no packet during the connection runs.\n"
            .to_owned();
    }
    let mut note = format!(
        "**ingressd dropped SYNs during the connection runs** ({}, from the daemon's \
         `/stats/prometheus`); each such connection failed after the client's 1 s timeout, \
         which is what pulls its new conn/s down.",
        fmt_drops(&all)
    );
    if all.contains_key("drop_snat_exhausted") {
        note.push_str(
            " `drop_snat_exhausted`: a new connection's SNAT port is probed linearly, 16 ports \
             from a hash, in 61000-65535 (4,536 ports per backend), and a closed connection's \
             conntrack entries stay until the daemon's reaper removes them (every 10 s), so \
             after roughly 2,000-2,500 new connections to one backend within a few seconds \
             new SYNs find 16 taken ports in a row and are dropped. The sustained rate per \
             backend is thereby bounded to a few hundred connections per second; removing \
             the limit needs the kernel side (a wider SNAT range, more probes, or freeing \
             a port when its connection is reset or closed), not the benchmark. \
             \"until the first failure\" is the rate before that happened.",
        );
    }
    note.push('\n');
    note
}

/// The rule-scaling table.
pub fn scale_table(steps: &[ScaleStep]) -> String {
    let mut t = String::from(
        "| round | datapath | services | forwarded in the kernel | time to program | new conn/s | failed | new conn/s until the first failure | vs 1 service | kernel drops | other load |\n\
         |--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for s in steps {
        let base = steps
            .iter()
            .find(|b| b.system == s.system && b.round == s.round && b.services == 1)
            .map(|b| b.conn.clean_rate());
        let program = if s.program_s.is_nan() {
            "-".to_owned()
        } else {
            format!("{:.3} s", s.program_s)
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {program} | {:.0} | {} | {:.0} | {} | {} | {} |",
            if s.round == 0 {
                "median".to_owned()
            } else {
                s.round.to_string()
            },
            s.system,
            s.services,
            s.in_kernel
                .map_or_else(|| "-".to_owned(), |k| k.to_string()),
            s.conn.rate(),
            s.conn.failed,
            s.conn.clean_rate(),
            ratio(s.conn.clean_rate(), base),
            or_dash(&fmt_drops(&s.drops)),
            pct(s.other_load),
        );
    }
    t
}

/// Every run, for the record.
pub fn runs_table(tput: &[ThroughputRun], conns: &[ConnRun]) -> String {
    let mut t = String::from(
        "| round | datapath | test | result | node CPU | node CPU/GB | retransmits | core 0 busy | core 1 busy | other load | attempt |\n\
         |--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in tput {
        let _ = writeln!(
            t,
            "| {} | {} | iperf3 -P {} | {:.2} Gbit/s | {:.2} s | {:.3} s | {} | {} | {} | {} | {} |",
            r.round,
            r.datapath.label(),
            r.streams,
            r.iperf.gbps(),
            r.cpu.node_s,
            r.node_s_per_gb(),
            r.iperf.retransmits,
            pct(r.cpu.busy[0]),
            pct(r.cpu.busy[1]),
            pct(r.cpu.other_load),
            r.attempt
        );
    }
    for r in conns {
        let _ = writeln!(
            t,
            "| {} | {} | connect loop | {:.0} conn/s ({} failed, {} over 100 ms{}) | {:.2} s | - | - | {} | {} | {} | {} |",
            r.round,
            r.datapath.label(),
            r.conn.rate(),
            r.conn.failed,
            r.conn.slow,
            if r.drops.is_empty() {
                String::new()
            } else {
                format!("; kernel drops: {}", fmt_drops(&r.drops))
            },
            r.cpu.node_s,
            pct(r.cpu.busy[0]),
            pct(r.cpu.busy[1]),
            pct(r.cpu.other_load),
            r.attempt
        );
    }
    t
}

// ---------------------------------------------------------------------------------------
// Processes and kernel state.

/// Sets `sched_setaffinity` of the calling thread to one core.
fn pin_thread(core: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it and
    // sched_setaffinity(0, ...) only changes the calling thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `SO_LINGER {on, 0}`: close sends RST and leaves no TIME_WAIT behind.
fn linger_zero(fd: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a valid pointer.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The backend of the connection-rate runs: accepts, sends one byte, waits for the
/// client to close (at most 1 s), closes with RST. One connection at a time, like the
/// client; a thread of this process on core 0, its socket in the pods namespace.
struct Acceptor {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Acceptor {
    fn start(topo: &Topology) -> Result<Self> {
        let listener = topo
            .in_ns(Ns::Pods, || TcpListener::bind(SocketAddr::V4(BACKEND)))?
            .with_context(|| format!("binding the acceptor to {BACKEND}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("bench-acceptor".into())
            .spawn(move || {
                pin_thread(ENDPOINT_CORE);
                let mut poll = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                while !flag.load(Ordering::Relaxed) {
                    // SAFETY: one valid pollfd, 100 ms timeout (so `stop` is seen).
                    let ready = unsafe { libc::poll(&mut poll, 1, 100) };
                    if ready <= 0 {
                        continue;
                    }
                    let Ok((mut stream, _)) = listener.accept() else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    if stream.write_all(b"x").is_ok() {
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 16];
                        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                    }
                    linger_zero(&stream);
                }
            })
            .context("starting the acceptor thread")?;
        Ok(Acceptor {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects to `target` from the client namespace one connection at a time for `secs`
/// (at most `max` connections): connect, read the backend's byte, close with RST. A
/// connection counts when the byte arrived, so every datapath is measured end to end
/// (a proxy completes the client's handshake before it connects to the backend).
fn connect_loop(topo: &Topology, target: SocketAddrV4, secs: u64, max: u64) -> Result<ConnResult> {
    topo.in_ns(Ns::Client, move || {
        pin_thread(ENDPOINT_CORE);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        let mut result = ConnResult::default();
        let mut first_error = None;
        while Instant::now() < deadline && result.ok + result.failed < max {
            let began = Instant::now();
            let attempt = (|| -> std::io::Result<()> {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte)?;
                linger_zero(&s);
                Ok(())
            })();
            match attempt {
                Ok(()) => {
                    result.ok += 1;
                    let took = began.elapsed().as_secs_f64();
                    if took > 0.1 {
                        result.slow += 1;
                    }
                    result.max_s = result.max_s.max(took);
                }
                Err(e) => {
                    if result.failed == 0 {
                        result.clean_ok = result.ok;
                        result.clean_s = began.duration_since(started).as_secs_f64();
                    }
                    result.failed += 1;
                    first_error.get_or_insert(e);
                    // Keep a broken datapath from spinning for the whole run.
                    if result.failed >= 100 {
                        break;
                    }
                }
            }
        }
        result.seconds = started.elapsed().as_secs_f64();
        if result.failed == 0 {
            result.clean_ok = result.ok;
            result.clean_s = result.seconds;
        }
        if result.ok == 0 {
            bail!(
                "no connection to {target} completed: {}",
                first_error.map_or_else(|| "no attempt".to_owned(), |e| e.to_string())
            );
        }
        Ok(result)
    })?
}

/// Runs a short command in the node namespace; fails unless it exits 0.
fn node_cmd(topo: &Topology, program: &str, args: &[&str]) -> Result<()> {
    let mut cmd = topo.exec_command(Ns::Node, program, args);
    let out = run_bounded(&mut cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        bail!(
            "{program} {} in the node namespace failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The nat rules of the iptables datapath; removed (with the node's conntrack table)
/// when dropped.
struct Iptables<'a> {
    topo: &'a Topology,
    dir: PathBuf,
    jumps: bool,
}

impl<'a> Iptables<'a> {
    fn new(topo: &'a Topology, dir: &Path) -> Self {
        Iptables {
            topo,
            dir: dir.to_owned(),
            jumps: false,
        }
    }

    /// Replaces the rules with `rules` DNAT rules; returns the seconds `iptables-restore`
    /// took.
    fn install(&mut self, rules: u32) -> Result<f64> {
        if !self.jumps {
            node_cmd(self.topo, "iptables", &["-t", "nat", "-N", CHAIN])?;
            node_cmd(self.topo, "iptables", &["-t", "nat", "-N", POST_CHAIN])?;
            self.jumps = true;
            for jump in iptables_jumps() {
                let mut args = vec!["-t", "nat", "-A"];
                args.extend(jump);
                node_cmd(self.topo, "iptables", &args)?;
            }
        }
        let file = self.dir.join(format!("iptables-{rules}.rules"));
        std::fs::write(&file, iptables_rules(rules))?;
        let file = file.display().to_string();
        let started = Instant::now();
        node_cmd(self.topo, "iptables-restore", &["--noflush", &file])?;
        let secs = started.elapsed().as_secs_f64();
        let out = self.topo.exec(
            Ns::Node,
            "iptables",
            ["-t", "nat", "-S", CHAIN],
            Duration::from_secs(60),
        )?;
        let installed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("-j DNAT"))
            .count();
        if installed != rules as usize {
            bail!("iptables-restore installed {installed} DNAT rules instead of {rules}");
        }
        Ok(secs)
    }

    /// Removes the jumps, the chains and the node's conntrack entries.
    fn remove(&mut self) -> Result<()> {
        if !self.jumps {
            return Ok(());
        }
        for jump in iptables_jumps() {
            let mut args = vec!["-t", "nat", "-D"];
            args.extend(jump);
            node_cmd(self.topo, "iptables", &args)?;
        }
        for chain in [CHAIN, POST_CHAIN] {
            node_cmd(self.topo, "iptables", &["-t", "nat", "-F", chain])?;
            node_cmd(self.topo, "iptables", &["-t", "nat", "-X", chain])?;
        }
        self.jumps = false;
        // Connections of this datapath keep their NAT in conntrack; drop them so that no
        // later run meets them. Without the conntrack tool they age out (seconds for
        // the reset connections of the connect loop).
        let _ = node_cmd(self.topo, "conntrack", &["-F"]);
        Ok(())
    }
}

impl Drop for Iptables<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("warning: removing the benchmark's iptables rules: {e:#}");
        }
    }
}

/// The daemon's config directory in a Kubernetes ConfigMap volume's layout, so that a
/// change of several files is one atomic step: the files are symlinks into `..data`,
/// itself a symlink to a version directory outside the watched directory; a new version
/// is written in full, then `..data` is replaced by a rename.
struct VersionedConfig {
    root: PathBuf,
    versions: PathBuf,
    version: u32,
}

impl VersionedConfig {
    fn new(dir: &Path) -> Result<Self> {
        let root = dir.join("ingressd-config");
        let versions = dir.join("ingressd-config-versions");
        for d in [&root, &versions] {
            if d.exists() {
                std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
            }
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(VersionedConfig {
            root,
            versions,
            version: 0,
        })
    }

    /// Makes the config `services` services, in one rename.
    fn write(&mut self, services: u32) -> Result<()> {
        use std::os::unix::fs::symlink;
        self.version += 1;
        let version = self.versions.join(format!("v{}", self.version));
        std::fs::create_dir_all(&version)?;
        let files = istio_files(services);
        for (name, yaml) in &files {
            std::fs::write(version.join(name), yaml)?;
        }
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        symlink(&version, &tmp).context("linking the new config version")?;
        std::fs::rename(&tmp, self.root.join("..data")).context("swapping ..data")?;
        for (name, _) in &files {
            let link = self.root.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link)?;
            }
        }
        Ok(())
    }

    fn path(&self) -> &Path {
        &self.root
    }
}

/// The daemon and its pinned kernel state.
struct Daemon<'a> {
    topo: &'a Topology,
    bin: PathBuf,
    config: VersionedConfig,
    proc: Option<Proc>,
}

impl<'a> Daemon<'a> {
    fn new(topo: &'a Topology, bin: &Path, dir: &Path) -> Result<Self> {
        let d = Daemon {
            topo,
            bin: bin.to_owned(),
            config: VersionedConfig::new(dir)?,
            proc: None,
        };
        // Pins of an interrupted earlier run.
        d.cleanup()?;
        Ok(d)
    }

    /// Starts `ingressd run --kernel on` with `services` services, on the node's core,
    /// and waits until it is ready and wrote the kernel maps.
    fn start(&mut self, services: u32) -> Result<&Proc> {
        self.config.write(services)?;
        let config = self.config.path().display().to_string();
        let proc = self.topo.spawn(
            Ns::Node,
            "ingressd",
            "taskset",
            pinned(
                &NODE_CORE.to_string(),
                &self.bin,
                &[
                    "run",
                    "--config",
                    &config,
                    "--kernel",
                    "on",
                    "--concurrency",
                    "1",
                    "--access-log-format",
                    "off",
                    "--bpffs-root",
                    PIN_ROOT,
                    // Room in the kernel maps for the default scaling steps.
                    "--max-services",
                    &KERNEL_SERVICES.to_string(),
                ],
            ),
        )?;
        self.topo.wait_ready(&proc, Duration::from_secs(60))?;
        proc.wait_for_output(
            Duration::from_secs(60),
            "`kernel maps updated`",
            |_, err| err.contains("kernel maps updated"),
        )?;
        Ok(self.proc.insert(proc))
    }

    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Writes a config of `services` services and waits for the daemon to have written
    /// the kernel maps; returns the seconds from the write and how many services the
    /// kernel forwards.
    fn reprogram(&mut self, services: u32) -> Result<(f64, u32)> {
        let proc = self.proc.as_ref().context("the daemon is not running")?;
        let offset = proc.stderr().len();
        let started = Instant::now();
        self.config.write(services)?;
        let deadline = started + Duration::from_secs(240);
        loop {
            let log = proc.stderr();
            let new = log.get(offset..).unwrap_or("");
            if let Some(at) = new.find("kernel maps updated") {
                let elapsed = started.elapsed().as_secs_f64();
                let left_out = new[..at].matches("not forwarded in the kernel").count();
                let left_out = u32::try_from(left_out).unwrap_or(u32::MAX);
                return Ok((elapsed, services.saturating_sub(left_out)));
            }
            if new.contains("config reload failed") || new.contains("writing the kernel maps") {
                bail!(
                    "ingressd did not take {services} services:\n{}",
                    proc.log_tail(20)
                );
            }
            if let Some(status) = proc.try_status()? {
                bail!("ingressd exited ({status})\n{}", proc.log_tail(40));
            }
            if Instant::now() >= deadline {
                bail!(
                    "ingressd did not update the kernel maps within 240 s of the config write\n{}",
                    proc.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's in-kernel drop counters since it started (its admin API).
    fn kernel_drops(&self) -> Result<BTreeMap<String, u64>> {
        let out = self.topo.exec(
            Ns::Node,
            "curl",
            [
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:15000/stats/prometheus",
            ],
            Duration::from_secs(10),
        )?;
        Ok(parse_drops(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Stops the daemon and removes everything it attached and pinned.
    fn stop(&mut self) -> Result<()> {
        if let Some(proc) = self.proc.take() {
            proc.stop(Duration::from_secs(10));
        }
        self.cleanup()
    }

    fn cleanup(&self) -> Result<()> {
        if !Path::new(PIN_ROOT).exists() {
            return Ok(());
        }
        let bin = self.bin.display().to_string();
        node_cmd(self.topo, &bin, &["cleanup", "--bpffs-root", PIN_ROOT])?;
        let _ = std::fs::remove_dir_all(PIN_ROOT);
        Ok(())
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: cleaning up after ingressd: {e:#}");
        }
    }
}

/// Receive packet steering and socket sysctls of the topology: packets the node's
/// interfaces receive are processed on the node's core, packets the client and the pods
/// receive on the endpoints' core; wide ephemeral port ranges and TIME_WAIT reuse for
/// the connect loop.
fn tune(topo: &Topology) -> Result<()> {
    let node_mask = format!("{:x}", 1u32 << NODE_CORE);
    let endpoint_mask = format!("{:x}", 1u32 << ENDPOINT_CORE);
    for (ns, dev, mask) in [
        (Ns::Client, "eth0", &endpoint_mask),
        (Ns::Node, "cl0", &node_mask),
        (Ns::Node, "pd0", &node_mask),
        (Ns::Pods, "eth0", &endpoint_mask),
    ] {
        let script = format!("echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus");
        let out = topo.exec(ns, "sh", ["-c", &script], Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "setting RPS of {dev}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for ns in [Ns::Client, Ns::Node, Ns::Pods] {
        let out = topo.exec(
            ns,
            "sysctl",
            [
                "-q",
                "-w",
                "net.ipv4.ip_local_port_range=10240 60999",
                "net.ipv4.tcp_tw_reuse=1",
            ],
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!("sysctl: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The run.

struct Bench<'a> {
    topo: &'a Topology,
    args: &'a TcpArgs,
    clk: u64,
    haproxy: Proc,
    stop: Arc<AtomicBool>,
    retry_deadline: Instant,
}

impl Bench<'_> {
    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Runs `f` after waiting for a quiet machine; redoes it (bounded) when other load
    /// disturbed it.
    fn measured<T>(
        &self,
        mut f: impl FnMut() -> Result<(T, CpuUse)>,
        show: impl Fn(&T, &CpuUse, u32),
    ) -> Result<(T, CpuUse, u32)> {
        let mut attempt = 0;
        loop {
            self.check_stop()?;
            attempt += 1;
            let wait = QUIET_WAIT.min(
                self.retry_deadline
                    .saturating_duration_since(Instant::now()),
            );
            if !wait_quiet(self.clk, self.args.max_other_load, wait, &|| {
                self.check_stop()
            })? {
                println!("   (the machine stayed busy; measuring anyway)");
            }
            let (value, cpu) = f()?;
            show(&value, &cpu, attempt);
            if cpu.other_load <= self.args.max_other_load
                || attempt > self.args.retries
                || Instant::now() >= self.retry_deadline
            {
                return Ok((value, cpu, attempt));
            }
            println!(
                "   (other load {:.0}% of a core during that run; redoing it)",
                cpu.other_load * 100.0
            );
        }
    }

    fn haproxy_ticks(&self) -> u64 {
        cpu::tree_cpu(self.haproxy.pid()).map_or(0, |t| t.ticks)
    }

    /// Fails when HAProxy (always listening on node:30306) worked during a run of another
    /// datapath: then that datapath did not take the port and HAProxy was measured.
    fn check_bypassed(&self, d: Datapath, haproxy_before: u64) -> Result<()> {
        let used = self.haproxy_ticks().saturating_sub(haproxy_before);
        if d != Datapath::Haproxy && used > 5 {
            bail!(
                "haproxy used {used} CPU ticks during the {} run: that datapath did not take \
                 node:{NODE_PORT}",
                d.label()
            );
        }
        Ok(())
    }

    fn node_pids(&self, daemon: &Daemon<'_>) -> Vec<u32> {
        let mut pids = vec![self.haproxy.pid()];
        pids.extend(daemon.pid());
        pids
    }

    /// Makes `d` the one datapath that handles node:30306.
    fn activate(
        &self,
        d: Datapath,
        iptables: &mut Iptables<'_>,
        daemon: &mut Daemon<'_>,
    ) -> Result<()> {
        match d {
            Datapath::Direct | Datapath::Haproxy => {}
            Datapath::Iptables => {
                iptables.install(1)?;
            }
            Datapath::Ingressd => {
                daemon.start(1)?;
            }
        }
        Ok(())
    }

    fn deactivate(
        &self,
        d: Datapath,
        iptables: &mut Iptables<'_>,
        daemon: &mut Daemon<'_>,
    ) -> Result<()> {
        match d {
            Datapath::Direct | Datapath::Haproxy => Ok(()),
            Datapath::Iptables => iptables.remove(),
            Datapath::Ingressd => daemon.stop(),
        }
    }

    fn iperf(&self, d: Datapath, streams: u32) -> Result<Iperf> {
        let target = d.target();
        let (ip, port, secs, parallel) = (
            target.ip().to_string(),
            target.port().to_string(),
            self.args.duration.to_string(),
            streams.to_string(),
        );
        let mut last = None;
        // The server may still be finishing the previous test ("busy"); one retry.
        for _ in 0..2 {
            let mut cmd = self.topo.exec_command(
                Ns::Client,
                "taskset",
                [
                    "-c",
                    &ENDPOINT_CORE.to_string(),
                    "iperf3",
                    "-c",
                    &ip,
                    "-p",
                    &port,
                    "-t",
                    &secs,
                    "-P",
                    &parallel,
                    "-J",
                    "--connect-timeout",
                    "3000",
                ],
            );
            let out = run_bounded(&mut cmd, Duration::from_secs(self.args.duration + 30))?;
            match parse_iperf(&String::from_utf8_lossy(&out.stdout)) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    last = Some(e.context(format!("iperf3 through {}", d.label())));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        Err(last.expect("the loop ran"))
    }
}

/// Runs the benchmark.
pub fn run_tcp(args: &TcpArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench tcp creates network namespaces and needs root");
    }
    if !(0.0..=2.0).contains(&args.max_other_load) {
        bail!("--max-other-load is in cores, between 0 and 2");
    }
    if args
        .scale
        .iter()
        .any(|&n| !(2..=MAX_GENERATED).contains(&n))
    {
        bail!("--scale counts are between 2 and {MAX_GENERATED}");
    }
    if std::thread::available_parallelism().map_or(0, |n| n.get()) < 2 {
        bail!("this benchmark needs 2 cores (endpoints on core 0, the node on core 1)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let ingressd = build_release_bins(false)?.join("ingressd");

    let load_start = load_average();
    if load_start.first().is_some_and(|l| *l > 1.0) {
        println!(
            "warning: load average {} before the benchmark; other work on this machine skews the numbers",
            fmt_load(&load_start)
        );
    }
    let dir = target_dir().join("bench").join("tcp");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    // The generated configs must be what the daemon accepts.
    for n in std::iter::once(1).chain(args.scale.iter().copied()) {
        let check_dir = dir.join(format!("check-{n}"));
        ConfigDir::at(&check_dir)?.write_all(&istio_files(n))?;
        let started = Instant::now();
        let out = run_bounded(
            Command::new(&ingressd).args(["check", "--config", &check_dir.display().to_string()]),
            Duration::from_secs(300),
        )?;
        if !out.status.success() {
            bail!(
                "ingressd check rejected the config with {n} services ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!(
            "   ingressd check: {n} services accepted in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }

    println!(
        "\n== topology {PREFIX}-{{client,node,pods}}; files in {}",
        rel(&dir).display()
    );
    let topo = Topology::builder()
        .prefix(PREFIX)
        .replace_existing(true)
        .pod_addrs([*BACKEND.ip()])
        .log_dir(dir.join("logs"))
        .build()?;
    tune(&topo)?;

    let haproxy_cfg = dir.join("haproxy.cfg");
    std::fs::write(&haproxy_cfg, haproxy_config())?;
    let haproxy = topo.spawn(
        Ns::Node,
        "haproxy",
        "taskset",
        pinned(
            &NODE_CORE.to_string(),
            Path::new("haproxy"),
            &["-db", "-f", &haproxy_cfg.display().to_string()],
        ),
    )?;
    wait_listening(
        &topo,
        Ns::Node,
        &[&haproxy],
        &[SocketAddrV4::new(NODE_ADDR, NODE_PORT)],
        Duration::from_secs(20),
    )?;
    let mut iptables = Iptables::new(&topo, &dir);
    let mut daemon = Daemon::new(&topo, &ingressd, &dir)?;

    let planned =
        Duration::from_secs((2 * args.duration + args.conn_secs) * u64::from(args.rounds) * 4);
    let bench = Bench {
        topo: &topo,
        args,
        clk: cpu::clock_ticks(),
        haproxy,
        stop,
        retry_deadline: Instant::now() + planned * 2,
    };

    // Throughput.
    let iperf_server = topo.spawn(
        Ns::Pods,
        "iperf3-server",
        "taskset",
        pinned(
            &ENDPOINT_CORE.to_string(),
            Path::new("iperf3"),
            &[
                "-s",
                "-B",
                &BACKEND.ip().to_string(),
                "-p",
                &BACKEND.port().to_string(),
            ],
        ),
    )?;
    wait_listening(
        &topo,
        Ns::Pods,
        &[&iperf_server],
        &[BACKEND],
        Duration::from_secs(10),
    )?;
    println!(
        "\n== throughput: {} rounds of iperf3 -t {} with 1 and {} streams (order {})",
        args.rounds,
        args.duration,
        args.streams,
        args.datapaths
            .iter()
            .map(|d| d.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut tput = Vec::new();
    for round in 1..=args.rounds {
        for &d in &args.datapaths {
            bench.activate(d, &mut iptables, &mut daemon)?;
            for streams in [1, args.streams] {
                let pids = bench.node_pids(&daemon);
                let (iperf, cpu, attempt) = bench.measured(
                    || {
                        let haproxy = bench.haproxy_ticks();
                        let w = Window::open(&pids);
                        let r = bench.iperf(d, streams)?;
                        let cpu = w.close(&pids, bench.clk)?;
                        bench.check_bypassed(d, haproxy)?;
                        Ok((r, cpu))
                    },
                    |r: &Iperf, c, attempt| {
                        println!(
                            "   round {round} {:<9} -P {streams:<2} {:>6.2} Gbit/s  node {:.3} s/GB  core0 {:>3.0}%  core1 {:>3.0}%  other {:>3.0}%  (attempt {attempt})",
                            d.label(),
                            r.gbps(),
                            c.node_s / (r.bytes as f64 / 1e9),
                            c.busy[0] * 100.0,
                            c.busy[1] * 100.0,
                            c.other_load * 100.0
                        );
                    },
                )?;
                tput.push(ThroughputRun {
                    datapath: d,
                    round,
                    streams,
                    iperf,
                    cpu,
                    attempt,
                });
            }
            bench.deactivate(d, &mut iptables, &mut daemon)?;
        }
    }
    iperf_server.stop(Duration::from_secs(5));
    drop(iperf_server);

    // Connection rate.
    let acceptor = Acceptor::start(&topo)?;
    println!(
        "\n== new connections: {} rounds of a {} s connect loop (connect, 1 byte from the backend, RST)",
        args.rounds, args.conn_secs
    );
    let mut conns = Vec::new();
    for round in 1..=args.rounds {
        for &d in &args.datapaths {
            bench.activate(d, &mut iptables, &mut daemon)?;
            let pids = bench.node_pids(&daemon);
            let (conn, cpu, attempt) = bench.measured(
                || {
                    let haproxy = bench.haproxy_ticks();
                    let w = Window::open(&pids);
                    let r = connect_loop(&topo, d.target(), args.conn_secs, args.conn_max)?;
                    let cpu = w.close(&pids, bench.clk)?;
                    bench.check_bypassed(d, haproxy)?;
                    Ok((r, cpu))
                },
                |r: &ConnResult, c, attempt| {
                    println!(
                        "   round {round} {:<9} {:>7.0} conn/s ({} failed, {} over 100 ms, max {:.0} ms)  core1 {:>3.0}%  other {:>3.0}%  (attempt {attempt})",
                        d.label(),
                        r.rate(),
                        r.failed,
                        r.slow,
                        r.max_s * 1000.0,
                        c.busy[1] * 100.0,
                        c.other_load * 100.0
                    );
                },
            )?;
            let drops = if d == Datapath::Ingressd {
                daemon.kernel_drops()?
            } else {
                BTreeMap::new()
            };
            conns.push(ConnRun {
                datapath: d,
                round,
                conn,
                drops,
                cpu,
                attempt,
            });
            bench.deactivate(d, &mut iptables, &mut daemon)?;
        }
    }

    // Rule scaling.
    println!(
        "\n== rule scaling: services {}",
        args.scale
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut scale = Vec::new();
    let conn_step = |d: Datapath,
                     services: u32,
                     program_s: f64,
                     in_kernel: Option<u32>|
     -> Result<ScaleStep> {
        let target = SocketAddrV4::new(NODE_ADDR, NODE_PORT);
        let (conn, cpu, _) = bench.measured(
            || {
                let haproxy = bench.haproxy_ticks();
                let w = Window::open(&[]);
                let r = connect_loop(&topo, target, args.conn_secs, args.conn_max)?;
                let cpu = w.close(&[], bench.clk)?;
                bench.check_bypassed(d, haproxy)?;
                Ok((r, cpu))
            },
            |_: &ConnResult, _, _| {},
        )?;
        let program = if program_s.is_nan() {
            "(nothing to time)".to_owned()
        } else {
            format!("programmed in {program_s:.3} s")
        };
        println!(
            "   {:<8} {services:>6} services: {program}{}; {:.0} conn/s, {:.0} until the first failure ({} failed, {} over 100 ms), other {:.0}%",
            d.label(),
            in_kernel.map_or_else(String::new, |k| format!(" ({k} in the kernel)")),
            conn.rate(),
            conn.clean_rate(),
            conn.failed,
            conn.slow,
            cpu.other_load * 100.0
        );
        Ok(ScaleStep {
            system: d.label(),
            round: 0,
            services,
            program_s,
            in_kernel,
            conn,
            other_load: cpu.other_load,
            drops: BTreeMap::new(),
        })
    };
    for round in 1..=args.scale_rounds {
        // ingressd: a fresh daemon (empty conntrack) per step; the baseline has nothing to
        // time, the others from the config write to the kernel maps.
        for n in std::iter::once(1).chain(args.scale.iter().copied()) {
            bench.check_stop()?;
            daemon.start(1)?;
            let (secs, in_kernel) = if n == 1 {
                (f64::NAN, 1)
            } else {
                daemon.reprogram(n)?
            };
            let mut step = conn_step(Datapath::Ingressd, n, secs, Some(in_kernel))?;
            step.round = round;
            step.drops = daemon.kernel_drops()?;
            scale.push(step);
            daemon.stop()?;
        }
        {
            let secs = iptables.install(1)?;
            let mut step = conn_step(Datapath::Iptables, 1, secs, None)?;
            step.round = round;
            scale.push(step);
            for &n in &args.scale {
                bench.check_stop()?;
                iptables.remove()?;
                let secs = iptables.install(n)?;
                let mut step = conn_step(Datapath::Iptables, n, secs, None)?;
                step.round = round;
                scale.push(step);
            }
            iptables.remove()?;
        }
    }
    drop(acceptor);
    let load_end = load_average();

    if let Some(status) = bench.haproxy.try_status()? {
        bail!(
            "haproxy exited during the benchmark ({status})\n{}",
            bench.haproxy.log_tail(20)
        );
    }
    drop(bench);
    drop(daemon);
    drop(iptables);
    drop(topo);

    let summaries = summarize(&tput, &conns);
    let facts = Facts::collect(&load_start, &load_end);
    let section = section(&summaries, &tput, &conns, &scale, &facts, args);
    println!("\n{section}");
    if !args.no_write {
        let path = repo_root().join("docs").join("benchmarks.md");
        let old = std::fs::read_to_string(&path).ok();
        std::fs::write(
            &path,
            update_named_section(old.as_deref(), SECTION, &section),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} (section \"{SECTION}\")", rel(&path).display());
    }
    Ok(())
}

/// What the report says about the machine and the software.
struct Facts {
    date: String,
    cpu: String,
    cores: usize,
    kernel: String,
    versions: String,
    ingressd: String,
    load_start: String,
    load_end: String,
    busy: bool,
}

impl Facts {
    fn collect(load_start: &[f64], load_end: &[f64]) -> Self {
        let cpu = cpu_model();
        let commit = output(Command::new("git").args(["describe", "--always", "--dirty"]))
            .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
        Facts {
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned()),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: first_line(Command::new("uname").arg("-r")),
            versions: [
                first_line(Command::new("iperf3").arg("--version")),
                first_line(Command::new("haproxy").arg("-v")),
                first_line(Command::new("iptables").arg("-V")),
            ]
            .join("; "),
            ingressd: format!(
                "ingressd {commit} (release build, `run --kernel on --concurrency 1 --access-log-format off`, pinned to core 1)"
            ),
            busy: load_start.first().is_some_and(|l| *l > 1.0)
                || load_end.first().is_some_and(|l| *l > 1.0),
            load_start: fmt_load(load_start),
            load_end: fmt_load(load_end),
        }
    }
}

/// The `## TCP forwarding` section of docs/benchmarks.md.
fn section(
    summaries: &[Summary],
    tput: &[ThroughputRun],
    conns: &[ConnRun],
    scale: &[ScaleStep],
    facts: &Facts,
    args: &TcpArgs,
) -> String {
    let scale_medians = summarize_scale(scale);
    let others: Vec<f64> = tput
        .iter()
        .map(|r| r.cpu.other_load)
        .chain(conns.iter().map(|r| r.cpu.other_load))
        .collect();
    let retrans: Vec<String> = summaries
        .iter()
        .map(|s| format!("{} {}", s.datapath.label(), s.retransmits))
        .collect();
    format!(
        "{SECTION}

_Written by `cargo xtask bench tcp` on {date}; rerunning it rewrites this section._

Medians of {rounds} rounds. Throughput is what the iperf3 server received; node CPU/GB is
the node's CPU seconds (forwarding in softirq plus HAProxy's or the daemon's own time) per
10^9 bytes; new conn/s is a one-at-a-time connect loop. Ratios: throughput and connections
to direct (higher is better), CPU/GB to HAProxy (lower is better); each is the median of
the per-round ratios (against direct or HAProxy in the same round), so that slow changes of
the machine's speed between rounds cancel out, and the targets are judged on them.

{table}
Targets:

{targets}
{bottleneck}
{drops_note}
### Rule scaling

Services forwarded (ingressd: TCP servers + `tcp` routes; iptables: DNAT rules in one
chain, the measured nodePort's rule last), the time to program them, and the connection
rate through node:30306 with them present; medians of {scale_rounds} rounds.

{scale_table}
### Machine

- {cpu}, {cores} cores; Linux {kernel}
- {versions}
- {ingressd}
- Load average (1/5/15 min) before: {load_start}; after: {load_end}{load_note}
- Other load, the CPU of processes outside the benchmark during the runs: median
  {other_median}, at most {other_max} of one core
- TCP retransmissions over all iperf3 runs: {retrans}

### Method

- Topology: network namespaces `client` (198.18.0.2) -- veth -- `node` (198.18.0.1 |
  198.18.1.1) -- veth -- `pods` (backend {backend}); ip_forward on in the node.
- Datapaths, alternated within each round (direct, iptables, haproxy, ingressd), one at a
  time: **direct**: the client connects to {backend}, the node routes. **iptables**: nat
  rules in the node namespace, `PREROUTING -m addrtype --dst-type LOCAL -j {chain}`, `-p tcp
  --dport 30306 -j DNAT --to-destination {backend}` and `MASQUERADE` of DNATed connections
  (kube-proxy's iptables mode, flattened), installed with `iptables-restore` before the
  runs and removed (with `conntrack -F`) after. **haproxy**: `mode tcp`, `option
  splice-auto`, `nbthread 1`, listening on 198.18.0.1:30306. **ingressd**: `ingressd run
  --kernel on` with one Gateway TCP server (port 3306, nodePort 30306 in the
  `istio-ingressgateway` Service), a VirtualService `tcp` route and the backend's Service +
  EndpointSlice; started for its runs, stopped and `ingressd cleanup`ed after, so its
  programs are attached only during its own runs.
- Cores: the client (iperf3 -c, the connect loop) and the backend (iperf3 -s, the
  acceptor) run on core 0; HAProxy and the daemon on core 1. Receive packet steering
  (`rps_cpus`) processes what the node's interfaces receive on core 1 and what the client's
  and the pods' interfaces receive on core 0, so all of the node's packet work runs on core 1
  and none of the endpoints' does (on veth it would otherwise run on the sender's core).
- Node CPU: from `/proc/stat` of core 1 before and after each run: its irq + softirq ticks
  plus its user + system ticks, the latter capped by the CPU time of HAProxy's and the
  daemon's processes (`/proc/<pid>/stat`), so other processes on core 1 are not charged to
  the node and a softirq tick in HAProxy's context (the kernel counts it both as softirq
  and in the task's system time: tick accounting, no `CONFIG_IRQ_TIME_ACCOUNTING`) is
  counted once. Tick resolution is 10 ms.
- Throughput: `iperf3 -c <target> -t {duration} -P 1` and `-P {streams}` from the client
  namespace, server `iperf3 -s` in the pods namespace; target node:30306 (direct: the
  backend). iperf3's control and data connections all go through the datapath.
- New connections: a loop on one thread for {conn_secs} s (at most {conn_max} connections):
  `connect`, read one byte the backend sends after `accept`, close with `SO_LINGER 0`
  (RST); the backend (a thread on core 0) accepts, sends the byte, waits for the close and
  closes with RST. A connection counts when the byte arrived, so proxies are measured end
  to end. Ephemeral ports 10240-60999 (below ingressd's SNAT ports), `tcp_tw_reuse=1` in every namespace.
- Rule scaling: ingressd: a fresh daemon runs with 1 service, then its config is replaced
  by one with N services: N ports in the gateway Service (service i > 0: port 10000+i,
  nodePort 40000+i), N TCP servers in the Gateway, one VirtualService with N `tcp` routes
  (the daemon's YAML loader takes at most 1024 documents and 250,000 nodes per file, so
  not one VirtualService per service), all to the same backend Service. The files are
  swapped in at once the way a Kubernetes ConfigMap volume does it (a `..data` symlink
  replaced by a rename). The time is from the swap to the daemon's next `kernel maps
  updated` log line (it includes the config watcher's ~200 ms debounce); the services it
  left out of the kernel are its `not forwarded in the kernel` notes. iptables:
  `iptables-restore --noflush` of the chain with N rules (wall time of the command, rule
  count checked after). Then the connect loop through node:30306 with the N services
  present; the daemon's kernel drop counters are read after it.
- Before each run the benchmark waits (at most 15 s) until the machine is quiet; a run with
  more than {max_other:.0}% of a core of other load is redone, at most {retries} times
  (attempt column); waiting and redoing stop once they took as long as the planned runs.

### Every run

{runs_table}
{scale_runs}",
        date = facts.date,
        rounds = args.rounds,
        scale_rounds = args.scale_rounds,
        table = table(summaries, args.streams),
        targets = targets(summaries, &scale_medians, args.streams),
        drops_note = drops_note(summaries, scale),
        bottleneck = bottleneck_note(summaries, args.streams),
        scale_table = scale_table(&scale_medians),
        scale_runs = scale_table(scale),
        cpu = facts.cpu,
        cores = facts.cores,
        kernel = facts.kernel,
        versions = facts.versions,
        ingressd = facts.ingressd,
        load_start = facts.load_start,
        load_end = facts.load_end,
        load_note = if facts.busy {
            " (above 1: other work shared the cores during the run, so the numbers are noisier)"
        } else {
            ""
        },
        other_median = pct(median(&others)),
        other_max = pct(others.iter().copied().fold(0.0, f64::max)),
        retrans = retrans.join(", "),
        backend = BACKEND,
        chain = CHAIN,
        duration = args.duration,
        streams = args.streams,
        conn_secs = args.conn_secs,
        conn_max = args.conn_max,
        max_other = args.max_other_load * 100.0,
        retries = args.retries,
        runs_table = runs_table(tput, conns),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ports_do_not_clash() {
        let mut node_ports = std::collections::BTreeSet::new();
        let mut listen_ports = std::collections::BTreeSet::new();
        for i in 0..MAX_GENERATED {
            let (node, listen) = service_ports(i);
            assert!(node_ports.insert(node), "nodePort {node} twice");
            assert!(listen_ports.insert(listen), "port {listen} twice");
            assert!(!listen_ports.contains(&node) && !node_ports.contains(&listen));
            assert_ne!(listen, BACKEND.port());
        }
        assert_eq!(service_ports(0), (30306, 3306));
        assert_eq!(service_ports(1), (40001, 10001));
    }

    #[test]
    fn iptables_rules_put_the_measured_port_last() {
        let text = iptables_rules(3);
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(
            rules,
            [
                "-A INGRESSD-BENCH -p tcp -m tcp --dport 40001 -j DNAT --to-destination 198.18.1.10:5201",
                "-A INGRESSD-BENCH -p tcp -m tcp --dport 40002 -j DNAT --to-destination 198.18.1.10:5201",
                "-A INGRESSD-BENCH -p tcp -m tcp --dport 30306 -j DNAT --to-destination 198.18.1.10:5201",
                "-A INGRESSD-BENCH-POST -m conntrack --ctstate DNAT -j MASQUERADE",
            ]
        );
        assert!(text.starts_with("*nat\n:INGRESSD-BENCH - [0:0]\n:INGRESSD-BENCH-POST - [0:0]\n"));
        assert!(text.ends_with("COMMIT\n"));
        assert_eq!(
            iptables_rules(10_000)
                .lines()
                .filter(|l| l.contains("DNAT --to"))
                .count(),
            10_000
        );
    }

    #[test]
    fn haproxy_is_tcp_with_splice_on_one_thread() {
        let c = haproxy_config();
        for want in [
            "mode tcp",
            "option splice-auto",
            "nbthread 1",
            "bind 198.18.0.1:30306",
            "server b0 198.18.1.10:5201",
        ] {
            assert!(c.contains(want), "{want} missing:\n{c}");
        }
    }

    /// The daemon's own pipeline accepts the config without a diagnostic, and its kernel
    /// plan forwards every service (up to the map capacity) to the backend, with the
    /// measured nodePort among them.
    #[test]
    fn ingressd_plans_every_service_in_the_kernel() {
        use ingress_userspace::kernel_plan::{Ids, Limits, plan};
        use ingress_userspace::pipeline::{Options, build_from_dir};

        for n in [1, 3] {
            let dir = tempfile::tempdir().expect("temp dir");
            for (name, yaml) in istio_files(n) {
                std::fs::write(dir.path().join(name), yaml).expect("write");
            }
            let outcome = build_from_dir(dir.path(), &Options::default());
            let shown: Vec<String> = outcome
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect();
            assert!(shown.is_empty(), "diagnostics: {shown:#?}");
            let snapshot = outcome.snapshot.expect("no errors, so a snapshot");
            let p = plan(&snapshot, &Ids::default(), Limits::default());
            assert!(p.notes.is_empty(), "{:#?}", p.notes);
            assert_eq!(p.services.len(), n as usize);
            let measured = p
                .service_for_port(NODE_PORT)
                .expect("nodePort 30306 forwarded");
            assert_eq!(measured.listener_port, LISTEN_PORT);
            assert_eq!(measured.backends.len(), 1);
            assert_eq!(measured.backends[0].address, BACKEND);
            for i in 1..n {
                let (node_port, _) = service_ports(i);
                assert!(
                    p.service_for_port(node_port).is_some(),
                    "nodePort {node_port}"
                );
            }
        }
    }

    /// The daemon's loader reads the ConfigMap-style directory through its `..data` link
    /// and sees only the latest version.
    #[test]
    fn versioned_config_swaps_every_file_at_once() {
        use ingress_userspace::pipeline::{Options, build_from_dir};

        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = VersionedConfig::new(dir.path()).expect("config dir");
        for n in [3, 2] {
            config.write(n).expect("write");
            let outcome = build_from_dir(config.path(), &Options::default());
            let shown: Vec<String> = outcome
                .diagnostics
                .iter()
                .map(ToString::to_string)
                .collect();
            assert!(shown.is_empty(), "diagnostics: {shown:#?}");
            let snapshot = outcome.snapshot.expect("a snapshot");
            assert_eq!(snapshot.listeners.len(), n as usize);
        }
        let link = std::fs::read_link(config.path().join("..data")).expect("..data link");
        assert!(link.ends_with("v2"), "{}", link.display());
    }

    #[test]
    fn paired_ratios_pair_runs_of_the_same_round() {
        let mut runs = Vec::new();
        // The machine slows down in round 2; ingressd stays at 0.9x direct throughout.
        for (round, speed) in [(1, 10.0), (2, 5.0), (3, 10.0)] {
            for (d, gbps) in [(Datapath::Direct, speed), (Datapath::Ingressd, speed * 0.9)] {
                let mut r = tput(d, 1, gbps, 0.1);
                r.round = round;
                runs.push(r);
            }
        }
        let r = paired(
            &runs,
            Datapath::Ingressd,
            Datapath::Direct,
            |a, b| a.round == b.round && a.streams == b.streams,
            |r| r.datapath,
            |r| r.iperf.gbps(),
        );
        assert!((r - 0.9).abs() < 1e-6, "{r}");
        let missing = paired(
            &runs,
            Datapath::Ingressd,
            Datapath::Haproxy,
            |a, b| a.round == b.round,
            |r| r.datapath,
            |r| r.iperf.gbps(),
        );
        assert!(missing.is_nan());
    }

    #[test]
    fn kernel_drops_from_prometheus() {
        let text = "# TYPE ingressd_kernel_packets_total counter\n\
            ingressd_kernel_packets_total{reason=\"forwarded\"} 9420\n\
            ingressd_kernel_packets_total{reason=\"drop_snat_exhausted\"} 3\n\
            ingressd_kernel_packets_total{reason=\"drop_no_backend\"} 0\n\
            ingressd_kernel_packets_total{reason=\"pass_not_ipv4\"} 2\n";
        let drops = parse_drops(text);
        assert_eq!(
            drops,
            BTreeMap::from([("drop_snat_exhausted".to_owned(), 3)])
        );
        assert_eq!(fmt_drops(&drops), "drop_snat_exhausted 3");
    }

    #[test]
    fn iperf_json() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bytes":5000000000,"retransmits":7},
            "sum_received":{"bytes":4000000000,"seconds":4.0}}}"#;
        let r = parse_iperf(json).unwrap();
        assert_eq!(
            r,
            Iperf {
                bytes: 4_000_000_000,
                seconds: 4.0,
                retransmits: 7
            }
        );
        assert!((r.gbps() - 8.0).abs() < 1e-9);
        let err = parse_iperf(
            r#"{"start":{},"end":{},"error":"the server is busy running a test. try again later"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        assert!(parse_iperf("not json").is_err());
    }

    #[test]
    fn node_ticks_count_softirq_once() {
        let cores = parse_cores(
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 10 100 0 0 5 0 0 0\ncpu1 10 0 10 100 0 1 5 0 0 0\nintr 5\n",
        );
        assert_eq!(cores.len(), 2);
        assert_eq!(
            cores[1],
            CoreCols {
                process: 20,
                interrupt: 6,
                idle: 100,
                total: 126
            }
        );
        let after = CoreCols {
            process: 80,
            interrupt: 46,
            idle: 120,
            total: 246,
        };
        // Kernel datapath: no node process, so other tasks on the core are not the node's.
        assert_eq!(node_ticks(cores[1], after, 0), 40);
        // HAProxy used 50 ticks, 10 of them softirq already in the interrupt column.
        assert_eq!(node_ticks(cores[1], after, 50), 40 + 50);
        // More process ticks claimed than the core had: capped at the core's.
        assert_eq!(node_ticks(cores[1], after, 500), 40 + 60);
        assert!((busy_fraction(cores[1], after) - 100.0 / 120.0).abs() < 1e-9);
    }

    #[test]
    fn foreign_processes_exclude_ours_and_kernel_threads() {
        let procs = HashMap::from([
            (1, (0, 5)),
            (2, (0, 0)),
            (10, (2, 50)),   // kthread (ksoftirqd)
            (100, (1, 7)),   // xtask's parent shell: foreign
            (200, (100, 3)), // me
            (300, (200, 9)), // my child
            (301, (300, 4)), // grandchild
            (400, (1, 11)),  // someone's build
        ]);
        let f = foreign_ticks(&procs, 200);
        let mut pids: Vec<u32> = f.keys().copied().collect();
        pids.sort_unstable();
        assert_eq!(pids, [1, 100, 400]);
        let after = HashMap::from([(1, 5), (100, 8), (400, 31), (500, 2)]);
        assert_eq!(foreign_delta(&f, &after), 1 + 20 + 2);
    }

    fn tput(d: Datapath, streams: u32, gbps: f64, node_s: f64) -> ThroughputRun {
        ThroughputRun {
            datapath: d,
            round: 1,
            streams,
            iperf: Iperf {
                bytes: (gbps * 1e9 / 8.0 * 4.0) as u64,
                seconds: 4.0,
                retransmits: 0,
            },
            cpu: CpuUse {
                node_s,
                ..CpuUse::default()
            },
            attempt: 1,
        }
    }

    fn conn(d: Datapath, rate: f64) -> ConnRun {
        ConnRun {
            datapath: d,
            round: 1,
            conn: ConnResult {
                ok: rate as u64 * 2,
                failed: 0,
                seconds: 2.0,
                clean_ok: rate as u64 * 2,
                clean_s: 2.0,
                ..ConnResult::default()
            },
            drops: BTreeMap::new(),
            cpu: CpuUse::default(),
            attempt: 1,
        }
    }

    fn step(system: &'static str, services: u32, in_kernel: Option<u32>, rate: f64) -> ScaleStep {
        ScaleStep {
            system,
            round: 1,
            services,
            program_s: 0.5,
            in_kernel,
            conn: ConnResult {
                ok: rate as u64 * 2,
                failed: 0,
                seconds: 2.0,
                clean_ok: rate as u64 * 2,
                clean_s: 2.0,
                ..ConnResult::default()
            },
            drops: BTreeMap::new(),
            other_load: 0.0,
        }
    }

    #[test]
    fn summaries_ratios_and_verdicts() {
        let runs = vec![
            tput(Datapath::Direct, 1, 10.0, 0.5),
            tput(Datapath::Direct, 8, 12.0, 0.6),
            tput(Datapath::Haproxy, 1, 5.0, 2.5),
            tput(Datapath::Haproxy, 8, 6.0, 3.0),
            tput(Datapath::Ingressd, 1, 9.5, 0.5),
            tput(Datapath::Ingressd, 8, 11.0, 0.6),
        ];
        let conns = vec![
            conn(Datapath::Direct, 10_000.0),
            conn(Datapath::Haproxy, 4_000.0),
            conn(Datapath::Ingressd, 9_000.0),
        ];
        let s = summarize(&runs, &conns);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].datapath, Datapath::Direct);
        let i = &s[2];
        assert!((i.gbps_1 - 9.5).abs() < 1e-6);
        // 9.5 Gbit/s for 4 s = 4.75 GB; 0.5 s over it.
        assert!((i.cpu_gb_1 - 0.5 / 4.75).abs() < 1e-6);
        let t = table(&s, 8);
        assert!(
            t.contains("| ingressd | 9.50 Gbit/s | 11.00 Gbit/s |"),
            "{t}"
        );
        assert!(t.contains("| 0.95 | 0.92 | 0.11 / 0.11 | 0.90 |"), "{t}");

        let scale = vec![
            step("ingressd", 1, Some(1), 9_000.0),
            step("ingressd", 1024, Some(1024), 8_900.0),
            step("ingressd", 10_000, Some(1024), 8_800.0),
            step("iptables", 1, None, 9_000.0),
            step("iptables", 10_000, None, 3_000.0),
        ];
        let v = targets(&s, &scale, 8);
        assert!(
            v.contains("Throughput at least 0.9x direct: **met**"),
            "{v}"
        );
        assert!(v.contains("at most 1/3 of HAProxy's: **met**"), "{v}");
        assert!(v.contains("**not met as stated**"), "{v}");
        assert!(v.contains("10000 services (1024 in the kernel)"), "{v}");
        let flat_in_kernel = targets(&s, &scale[..2], 8);
        assert!(
            flat_in_kernel.contains("1 to 1024 services: **met**"),
            "{flat_in_kernel}"
        );
        let st = scale_table(&scale);
        assert!(
            st.contains("| 1 | iptables | 10000 | - | 0.500 s | 3000 | 0 | 3000 | 0.33 | - | 0% |"),
            "{st}"
        );
        assert!(drops_note(&s, &scale).contains("dropped no packet"));
        let mut busy = s.clone();
        for x in &mut busy {
            x.endpoint_busy_n = 0.99;
            x.node_busy_n = if x.datapath == Datapath::Haproxy {
                0.95
            } else {
                0.06
            };
        }
        let note = bottleneck_note(&busy, 8);
        assert!(note.contains("for: direct, ingressd."), "{note}");
        assert!(bottleneck_note(&s, 8).is_empty());
        let mut dropped = scale.clone();
        dropped[2].drops.insert("drop_snat_exhausted".to_owned(), 3);
        let note = drops_note(&s, &dropped);
        assert!(note.contains("(drop_snat_exhausted 3,"), "{note}");
        assert_eq!(runs_table(&runs, &conns).lines().count(), 2 + 9);

        let mut rounds = Vec::new();
        for (round, (rate, program)) in [(3000.0, 0.2), (1000.0, 0.4), (2000.0, 0.3)]
            .into_iter()
            .enumerate()
        {
            let mut one = step("iptables", 1, None, 4000.0);
            one.round = round as u32 + 1;
            let mut many = step("iptables", 10_000, None, rate);
            many.round = round as u32 + 1;
            many.program_s = program;
            rounds.extend([one, many]);
        }
        let medians = summarize_scale(&rounds);
        assert_eq!(medians.len(), 2);
        assert_eq!(medians[1].conn.clean_rate(), 2000.0);
        assert_eq!(medians[1].program_s, 0.3);
        let t = scale_table(&medians);
        assert!(
            t.contains("| median | iptables | 10000 | - | 0.300 s | 2000 | 0 | 2000 | 0.50 |"),
            "{t}"
        );
        assert!(scale_table(&rounds).contains("| 2 | iptables | 10000 | - | 0.400 s | 1000 |"));
    }
}
