//! `cargo xtask bench tls`: TLS termination, ingressd (rustls) vs nginx (OpenSSL).
//!
//! ```text
//!  ingressd-bench-tls-client    ingressd-bench-tls-node                ingressd-bench-tls-pods
//!  198.18.0.2 ---- veth ----  198.18.0.1 | 198.18.1.1 ---- veth ----  198.18.1.10:8080
//!   h2load, curl (core 0)       :8443 ingressd        (core 1)          nginx, files (core 0)
//!                               :8444 nginx, no resumption (core 1)
//!                               :8445 nginx, tickets          (same worker)
//! ```
//!
//! Both servers use the same ECDSA P-256 certificate (made at run time), TLS 1.3 only, and
//! the clients offer only X25519 and TLS_AES_128_GCM_SHA256. Three tests per server and
//! round, the servers alternating:
//!
//! - **full handshakes**: `h2load --h1 -c C -n N -H 'Connection: close'`: C clients, each
//!   reconnecting after every response, so N connections with one request each. h2load
//!   reuses a client's `SSL` object across reconnects and so resumes the previous session
//!   whenever the server issued a ticket; for these runs a tiny preloaded library
//!   ([`NO_RESUME_SHIM`]) drops that session before each connect, so every handshake is a
//!   full one. Both servers answer `GET /` with a fixed body (nginx `return 200`, ingressd a
//!   `directResponse`): the work measured is TCP + TLS + one small HTTP/1.1 exchange.
//! - **resumed handshakes**: the same h2load without the library (nginx on its port with a
//!   session tickets): every connection after a client's first resumes.
//! - **bulk**: one curl connection downloading `--bulk-mib` through the server from an nginx
//!   backend (`/bulk/...`, proxied by both).
//!
//! Every connection and byte is counted in the client namespace (`/proc/net/snmp`,
//! `/proc/net/netstat`), and the server's CPU time is read from `/proc/<pid>/stat`. The
//! bytes each connection received from the server tell full from resumed handshakes (a
//! resumed one has no Certificate and CertificateVerify).
//!
//! The generators and parsers are pure and unit-tested.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ingressd_tests::topology::NODE_ADDR;
use ingressd_tests::{Ns, Proc, Topology, run_bounded};

use super::cpu;
use super::http::{
    fmt_load, ingressd_tuning, load_average, pinned, rel, spawn_nginx, wait_listening, wait_quiet,
};
use super::istio::{self, TlsSite};
use super::nginx;
use super::report::{cpu_model, first_line, median, update_named_section};
use crate::util::{build_release_bins, is_root, output, repo_root, target_dir};

/// The heading of this benchmark's section in `docs/benchmarks.md`.
pub const SECTION: &str = "## TLS termination";

const PREFIX: &str = "ingressd-bench-tls";
/// The one host name: certificate, SNI, `Host`, Gateway and VirtualService host.
const HOST: &str = "tls.bench.example";
/// What both servers answer `GET /` with.
const BODY: &str = "bench tls\n";
/// Paths under this prefix go to the backend.
const BULK_PREFIX: &str = "/bulk";
/// The file the backend serves for the bulk test (under its root).
const BULK_PATH: &str = "/bulk/64MiB";
/// Its size.
const BULK_FILE_BYTES: u64 = 64 << 20;
/// The backend in the pods namespace.
const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 10), 8080);
/// nginx's port without session resumption (full handshakes, bulk).
const NGINX_FULL_PORT: u16 = 8444;
/// nginx's port with session tickets (resumed handshakes).
const NGINX_RESUME_PORT: u16 = 8445;
/// Core of the server under test.
const SERVER_CORE: &str = "1";
/// Core of the load generators and the backend.
const LOAD_CORE: &str = "0";
/// The only key exchange group the clients offer.
const GROUP: &str = "X25519";
/// The only TLS 1.3 cipher suite the clients offer.
const SUITE: &str = "TLS_AES_128_GCM_SHA256";
/// Longest wait for a quiet machine before one run.
const QUIET_WAIT: Duration = Duration::from_secs(15);

/// A TLS server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServerKind {
    /// `ingressd run --kernel off --concurrency 1`, rustls.
    Ingressd,
    /// nginx, one worker, OpenSSL.
    Nginx,
}

impl ServerKind {
    fn label(self) -> &'static str {
        match self {
            ServerKind::Ingressd => "ingressd",
            ServerKind::Nginx => "nginx",
        }
    }

    /// The port a test connects to.
    fn port(self, test: Test) -> u16 {
        match (self, test) {
            (ServerKind::Ingressd, _) => istio::TLS_LISTEN_PORT,
            (ServerKind::Nginx, Test::Resumed) => NGINX_RESUME_PORT,
            (ServerKind::Nginx, _) => NGINX_FULL_PORT,
        }
    }
}

/// What one run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// New connections, full handshakes.
    Full,
    /// New connections resuming the client's previous session.
    Resumed,
    /// One connection downloading a large body.
    Bulk,
}

impl Test {
    fn label(self) -> &'static str {
        match self {
            Test::Full => "full handshakes",
            Test::Resumed => "resumed handshakes",
            Test::Bulk => "bulk",
        }
    }
}

/// Options of `cargo xtask bench tls`.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Measured rounds; each round runs every test on every server.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Connections (= full handshakes) per full-handshake run.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(500..=200_000))]
    handshakes: u64,
    /// Connections per resumed-handshake run (each client's first is a full handshake).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(500..=200_000))]
    resumptions: u64,
    /// Concurrent h2load clients.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    clients: u32,
    /// MiB per bulk run, on one connection (a multiple of 64).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(64..=8192))]
    bulk_mib: u64,
    /// Unmeasured full handshakes per server before the first round.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=50_000))]
    warmup: u64,
    /// Servers to run, in this order within each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ingressd,nginx"
    )]
    servers: Vec<ServerKind>,
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
    /// After the rounds, profile each server with `perf record -e cpu-clock` during one
    /// more (unmeasured) full-handshake run; the top symbols go into the report.
    #[arg(long)]
    profile: bool,
}

impl TlsArgs {
    /// Transfers of the bulk file per bulk run.
    fn bulk_transfers(&self) -> u64 {
        (self.bulk_mib << 20).div_ceil(BULK_FILE_BYTES)
    }
}

// ---------------------------------------------------------------------------------------
// Generators.

/// C source of the library preloaded into h2load for the full-handshake runs.
///
/// h2load keeps a client's `SSL` object when it reconnects (its `SSL_shutdown` returns 1
/// because it marks the peer's close_notify as received itself) and calls
/// `SSL_set_connect_state` on it again; OpenSSL then offers the session of the previous
/// connection. This wrapper clears that session first, so each connection starts without
/// one. Symbols are looked up at call time, so the library loads into any process.
pub const NO_RESUME_SHIM: &str = r#"/* Generated by `cargo xtask bench tls`: preloaded into h2load so that every
 * reconnect does a full handshake (h2load reuses its SSL object, and with it the
 * previous connection's session). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;

void SSL_set_connect_state(SSL *s) {
    static void (*real)(SSL *);
    static int (*set_session)(SSL *, SSL_SESSION *);
    if (real == NULL) {
        real = (void (*)(SSL *))dlsym(RTLD_NEXT, "SSL_set_connect_state");
        set_session = (int (*)(SSL *, SSL_SESSION *))dlsym(RTLD_DEFAULT, "SSL_set_session");
    }
    if (set_session != NULL) {
        set_session(s, NULL);
    }
    real(s);
}
"#;

/// The h2load arguments of one handshake run: HTTP/1.1, `Connection: close` (one request
/// per connection, the client reconnects), one thread, only [`GROUP`] and [`SUITE`];
/// `--connect-to` the server while the URL carries the host name (SNI and `Host`).
pub fn h2load_args(target: SocketAddrV4, connections: u64, clients: u32) -> Vec<String> {
    let clients = u64::from(clients).min(connections);
    vec![
        "--h1".to_owned(),
        "-t1".to_owned(),
        format!("-c{clients}"),
        format!("-n{connections}"),
        "-H".to_owned(),
        "Connection: close".to_owned(),
        format!("--groups={GROUP}"),
        format!("--tls13-ciphers={SUITE}"),
        format!("--connect-to={target}"),
        format!("https://{HOST}/"),
    ]
}

/// The curl config (`curl -K`) of one bulk run: `transfers` downloads of the bulk file,
/// one after the other on one connection, each printing `<status> <bytes> <new
/// connections> <seconds>`.
pub fn bulk_curl_config(target: SocketAddrV4, transfers: u64, max_secs: u64) -> String {
    let mut conf = format!(
        "# Generated by `cargo xtask bench tls`: the bulk run.\n\
         silent\nshow-error\nhttp1.1\ntlsv1.3\ntls-max = \"1.3\"\ncurves = \"{GROUP}\"\n\
         tls13-ciphers = \"{SUITE}\"\ninsecure\nresolve = \"{HOST}:{port}:{ip}\"\n\
         max-time = {max_secs}\n",
        port = target.port(),
        ip = target.ip(),
    );
    for i in 0..transfers {
        let _ = write!(
            conf,
            "url = \"https://{HOST}:{port}{BULK_PATH}?n={i}\"\noutput = \"/dev/null\"\n\
             write-out = \"%{{http_code}} %{{size_download}} %{{num_connects}} %{{time_total}}\\n\"\n",
            port = target.port(),
        );
    }
    conf
}

// ---------------------------------------------------------------------------------------
// Parsers.

/// What h2load printed about one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct H2load {
    /// `finished in`, seconds.
    pub secs: f64,
    /// Requests done.
    pub done: u64,
    /// Requests that got a 2xx.
    pub ok_2xx: u64,
    /// Failed + errored + timed out.
    pub failed: u64,
    /// `TLS Protocol:`.
    pub protocol: String,
    /// `Cipher:`.
    pub cipher: String,
    /// `Server Temp Key:`.
    pub temp_key: String,
}

/// `28.05s`, `270.41ms`, `950us` -> seconds.
fn parse_duration(text: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        bail!("no unit in `{text}`");
    };
    Ok(number.parse::<f64>().with_context(|| format!("`{text}`"))? * scale)
}

/// The number before `word` in a comma-separated h2load summary line (`20000 done`).
fn count_before(line: &str, word: &str) -> Result<u64> {
    line.split(',')
        .map(str::trim)
        .find_map(|part| {
            let (n, w) = part.rsplit_once(' ')?;
            let n = n.rsplit(' ').next()?;
            (w == word).then(|| n.parse().ok()).flatten()
        })
        .with_context(|| format!("no `{word}` count in `{line}`"))
}

/// Parses h2load's summary.
pub fn parse_h2load(stdout: &str) -> Result<H2load> {
    let mut r = H2load::default();
    let mut seen = 0;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let d = rest.split(',').next().unwrap_or("");
            r.secs = parse_duration(d.trim())?;
            seen += 1;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            r.done = count_before(rest, "done")?;
            r.failed = count_before(rest, "failed")?
                + count_before(rest, "errored")?
                + count_before(rest, "timeout")?;
            seen += 1;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            r.ok_2xx = count_before(rest, "2xx")?;
            seen += 1;
        } else if let Some(v) = line.strip_prefix("TLS Protocol: ") {
            r.protocol = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("Cipher: ") {
            r.cipher = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("Server Temp Key: ") {
            r.temp_key = v.trim().to_owned();
        }
    }
    if seen != 3 {
        bail!("h2load printed no complete summary:\n{stdout}");
    }
    Ok(r)
}

/// The counters of `/proc/net/snmp` and `/proc/net/netstat` (pairs of `Prefix: names` and
/// `Prefix: values` lines) as `Prefix.Name -> value`.
pub fn parse_net_counters(text: &str) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    let mut names: Option<(&str, Vec<&str>)> = None;
    for line in text.lines() {
        let Some((prefix, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        match names.take() {
            Some((p, n)) if p == prefix && fields.iter().all(|f| f.parse::<i64>().is_ok()) => {
                for (name, value) in n.iter().zip(&fields) {
                    // Negative values (Tcp MaxConn -1) are not counters.
                    if let Ok(v) = value.parse::<u64>() {
                        counters.insert(format!("{prefix}.{name}"), v);
                    }
                }
            }
            _ => names = Some((prefix, fields)),
        }
    }
    counters
}

/// One `openssl s_client` handshake, as it reported it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SClient {
    /// `New` or `Reused`.
    pub reused: bool,
    /// From `New, TLSv1.3, Cipher is ...`.
    pub protocol: String,
    /// The cipher suite.
    pub cipher: String,
    /// `Server Temp Key:` (absent on resumption).
    pub temp_key: String,
    /// `Peer signature type:`.
    pub signature: String,
    /// `Server public key is N bit`.
    pub key_bits: u32,
    /// Session tickets the server sent.
    pub tickets: u32,
    /// The response's status line.
    pub status_line: String,
}

/// Parses what `openssl s_client` printed for one connection with one HTTP request.
pub fn parse_s_client(stdout: &str) -> SClient {
    let mut r = SClient::default();
    for line in stdout.lines() {
        let line = line.trim_end();
        if let Some(rest) = line
            .strip_prefix("New, ")
            .or_else(|| line.strip_prefix("Reused, "))
        {
            r.reused = line.starts_with("Reused");
            if let Some((proto, cipher)) = rest.split_once(", Cipher is ") {
                r.protocol = proto.to_owned();
                r.cipher = cipher.to_owned();
            }
        } else if let Some(v) = line.strip_prefix("Server Temp Key: ") {
            r.temp_key = v.to_owned();
        } else if let Some(v) = line.strip_prefix("Peer signature type: ") {
            r.signature = v.to_owned();
        } else if let Some(v) = line
            .strip_prefix("Server public key is ")
            .and_then(|v| v.strip_suffix(" bit"))
        {
            r.key_bits = v.parse().unwrap_or(0);
        } else if line.starts_with("Post-Handshake New Session Ticket arrived") {
            r.tickets += 1;
        } else if line.starts_with("HTTP/1.") && r.status_line.is_empty() {
            r.status_line = line.to_owned();
        }
    }
    r
}

/// One bulk transfer's curl write-out line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transfer {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub bytes: u64,
    /// New connections curl opened for it.
    pub connects: u64,
    /// Seconds from start to end of the transfer.
    pub secs: f64,
}

/// Parses the write-out lines of [`bulk_curl_config`].
pub fn parse_transfers(stdout: &str) -> Result<Vec<Transfer>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 {
                bail!("unexpected curl line `{l}`");
            }
            Ok(Transfer {
                status: f[0].parse().with_context(|| format!("`{l}`"))?,
                bytes: f[1].parse().with_context(|| format!("`{l}`"))?,
                connects: f[2].parse().with_context(|| format!("`{l}`"))?,
                secs: f[3].parse().with_context(|| format!("`{l}`"))?,
            })
        })
        .collect()
}

/// The rustls crypto provider the daemon is built with, from the workspace's
/// `Cargo.lock`: `rustls <version> with <provider> <version>`, where the provider is the
/// one of `aws-lc-rs` and `ring` among the dependencies of the `rustls` package (Cargo
/// lists optional dependencies only when a feature enables them).
pub fn rustls_provider(lock: &str) -> Option<String> {
    let packages: Vec<&str> = lock.split("[[package]]").skip(1).collect();
    let field = |pkg: &str, key: &str| -> Option<String> {
        pkg.lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .map(|v| v.trim_matches('"').to_owned())
    };
    let version_of = |name: &str| {
        packages
            .iter()
            .find(|p| field(p, "name").as_deref() == Some(name))
            .and_then(|p| field(p, "version"))
            .unwrap_or_else(|| "?".to_owned())
    };
    let rustls = packages
        .iter()
        .filter(|p| field(p, "name").as_deref() == Some("rustls"))
        .max_by_key(|p| field(p, "version"))?;
    let deps: Vec<&str> = rustls
        .split_once("dependencies = [")
        .map(|(_, d)| d.split(']').next().unwrap_or(""))
        .unwrap_or("")
        .lines()
        .map(|l| l.trim().trim_end_matches(',').trim_matches('"'))
        .collect();
    let has = |name: &str| deps.iter().any(|d| d.split(' ').next() == Some(name));
    let providers: Vec<String> = ["aws-lc-rs", "ring"]
        .into_iter()
        .filter(|p| has(p))
        .map(|p| format!("{p} {}", version_of(p)))
        .collect();
    Some(format!(
        "rustls {} with {}",
        field(rustls, "version").unwrap_or_default(),
        if providers.is_empty() {
            "no built-in provider".to_owned()
        } else {
            providers.join(" and ")
        }
    ))
}

/// The first `n` entries of `perf report --stdio --sort dso,sym` (lines like
/// `    12.34%  ingressd  [.] aws_lc_0_32_0_ecp_nistz256_point_add`), as `(percent,
/// "dso symbol")`.
pub fn top_symbols(report: &str, n: usize) -> Vec<(f64, String)> {
    report
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (pct, rest) = l.split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let rest = rest.split_whitespace().collect::<Vec<_>>();
            let (dso, sym) = match rest.as_slice() {
                [dso, kind, sym @ ..] if kind.starts_with('[') => (*dso, sym.join(" ")),
                _ => return None,
            };
            Some((pct, format!("{dso} {sym}")))
        })
        .take(n)
        .collect()
}

/// The entries of `perf report --stdio --sort dso` (lines like `    53.49%  ingressd`), as
/// `(percent, dso)`.
pub fn dso_shares(report: &str) -> Vec<(f64, String)> {
    report
        .lines()
        .filter_map(|l| {
            let (pct, rest) = l.trim().split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let dso = rest.trim();
            (!dso.is_empty() && !dso.contains(' ')).then(|| (pct, dso.to_owned()))
        })
        .collect()
}

/// What `perf` saw of one server during a full-handshake run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Profile {
    /// Share of the samples per binary or library (`[kernel.kallsyms]`: the kernel).
    pub dsos: Vec<(f64, String)>,
    /// The top symbols.
    pub symbols: Vec<(f64, String)>,
}

// ---------------------------------------------------------------------------------------
// Results.

/// One measured run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Round, from 1.
    pub round: u32,
    /// The server.
    pub server: ServerKind,
    /// The test.
    pub test: Test,
    /// Connections the client opened (TCP active opens in the client namespace).
    pub connections: u64,
    /// Requests (handshake runs) or transfers (bulk) that succeeded.
    pub ok: u64,
    /// Requests or transfers that did not.
    pub failed: u64,
    /// Body bytes downloaded (bulk).
    pub body_bytes: u64,
    /// IP bytes the client namespace received.
    pub in_octets: u64,
    /// Seconds of the load (h2load's `finished in`, curl's transfer times).
    pub secs: f64,
    /// The server's CPU seconds over the run.
    pub cpu_s: f64,
    /// Wall seconds of the CPU sample.
    pub wall_s: f64,
    /// Busy fraction of core 0 (clients, backend).
    pub core0_busy: f64,
    /// Busy fraction of core 1 (the server).
    pub core1_busy: f64,
    /// CPU on both cores not used by the benchmark's processes, in cores.
    pub other_load: f64,
    /// Which attempt this was.
    pub attempt: u32,
}

impl Run {
    /// Connections per second (handshake runs).
    pub fn rate(&self) -> f64 {
        self.connections as f64 / self.secs
    }

    /// Server CPU microseconds per connection (handshake runs).
    pub fn cpu_us_per_conn(&self) -> f64 {
        if self.connections == 0 {
            return f64::NAN;
        }
        self.cpu_s * 1e6 / self.connections as f64
    }

    /// Bytes each connection received from the server (all IP bytes into the client).
    pub fn bytes_per_conn(&self) -> f64 {
        if self.connections == 0 {
            return f64::NAN;
        }
        self.in_octets as f64 / self.connections as f64
    }

    /// Body megabytes (10^6) per second (bulk).
    pub fn mb_per_s(&self) -> f64 {
        self.body_bytes as f64 / 1e6 / self.secs
    }

    /// Server CPU seconds per 10^9 body bytes (bulk).
    pub fn cpu_s_per_gb(&self) -> f64 {
        if self.body_bytes == 0 {
            return f64::NAN;
        }
        self.cpu_s / (self.body_bytes as f64 / 1e9)
    }

    /// The number the test is about: connections/s or MB/s.
    fn throughput(&self) -> f64 {
        match self.test {
            Test::Bulk => self.mb_per_s(),
            _ => self.rate(),
        }
    }

    /// Server CPU per unit: µs per connection or s per GB.
    fn cpu_per_unit(&self) -> f64 {
        match self.test {
            Test::Bulk => self.cpu_s_per_gb(),
            _ => self.cpu_us_per_conn(),
        }
    }

    /// Fraction of a core the server used.
    fn server_busy(&self) -> f64 {
        self.cpu_s / self.wall_s
    }
}

/// Medians of one server's runs of one test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    /// Connections/s or MB/s.
    pub throughput: f64,
    /// µs per connection or s per GB.
    pub cpu: f64,
    /// Fraction of a core the server used.
    pub busy: f64,
    /// Bytes per connection from the server.
    pub bytes_per_conn: f64,
    /// Failed requests or transfers, summed.
    pub failed: u64,
}

/// The medians of `server`'s runs of `test`, if it ran.
pub fn cell(runs: &[Run], server: ServerKind, test: Test) -> Option<Cell> {
    let mine: Vec<&Run> = runs
        .iter()
        .filter(|r| r.server == server && r.test == test)
        .collect();
    if mine.is_empty() {
        return None;
    }
    let pick = |f: &dyn Fn(&Run) -> f64| median(&mine.iter().map(|r| f(r)).collect::<Vec<_>>());
    Some(Cell {
        throughput: pick(&Run::throughput),
        cpu: pick(&Run::cpu_per_unit),
        busy: pick(&Run::server_busy),
        bytes_per_conn: pick(&Run::bytes_per_conn),
        failed: mine.iter().map(|r| r.failed).sum(),
    })
}

/// The median over the rounds of `f(ingressd's run) / f(nginx's run)` of `test`, pairing
/// the runs of one round (so that slow drifts of the machine cancel out); NaN when either
/// did not run.
pub fn paired_ratio(runs: &[Run], test: Test, f: impl Fn(&Run) -> f64) -> f64 {
    let ratios: Vec<f64> = runs
        .iter()
        .filter(|r| r.server == ServerKind::Ingressd && r.test == test)
        .filter_map(|r| {
            runs.iter()
                .find(|b| b.server == ServerKind::Nginx && b.test == test && b.round == r.round)
                .map(|b| f(r) / f(b))
        })
        .collect();
    median(&ratios)
}

/// What the prechecks found out about one server.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// A client offering the previous connection's session got it resumed.
    pub resumes: bool,
    /// Tickets the server sent after a full handshake.
    pub tickets: u32,
    /// What was negotiated (`TLSv1.3, TLS_AES_128_GCM_SHA256, X25519, ECDSA P-256`).
    pub negotiated: String,
}

fn fixed(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else {
        format!("{v:.decimals$}")
    }
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.0}%", v * 100.0)
    }
}

/// The results table: one row per server, then the ratios.
pub fn table(runs: &[Run], servers: &[ServerKind], observed: &[(ServerKind, Observed)]) -> String {
    let mut t = String::from(
        "| server | full handshakes/s | CPU per full handshake | server core busy (full) \
         | resumed handshakes/s | CPU per resumed handshake | bulk, 1 connection | CPU per GB (bulk) \
         | tickets sent per full handshake | failed |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for &s in servers {
        let full = cell(runs, s, Test::Full);
        let resumed = cell(runs, s, Test::Resumed);
        let bulk = cell(runs, s, Test::Bulk);
        let obs = observed.iter().find(|(k, _)| *k == s).map(|(_, o)| o);
        let failed: u64 = [full, resumed, bulk]
            .iter()
            .flatten()
            .map(|c| c.failed)
            .sum();
        let (resumed_rate, resumed_cpu) = match (resumed, obs) {
            (Some(c), _) => (fixed(c.throughput, 0), format!("{} µs", fixed(c.cpu, 1))),
            (None, Some(o)) if !o.resumes => ("not supported".to_owned(), "-".to_owned()),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} µs | {} | {} | {} | {} MB/s | {} s | {} | {} |",
            s.label(),
            full.map_or("-".to_owned(), |c| fixed(c.throughput, 0)),
            full.map_or("-".to_owned(), |c| fixed(c.cpu, 1)),
            full.map_or("-".to_owned(), |c| pct(c.busy)),
            resumed_rate,
            resumed_cpu,
            bulk.map_or("-".to_owned(), |c| fixed(c.throughput, 0)),
            bulk.map_or("-".to_owned(), |c| fixed(c.cpu, 3)),
            obs.map_or("-".to_owned(), |o| o.tickets.to_string()),
            failed,
        );
    }
    if servers.contains(&ServerKind::Ingressd) && servers.contains(&ServerKind::Nginx) {
        let r = |test, f: fn(&Run) -> f64| fixed(paired_ratio(runs, test, f), 2);
        let _ = writeln!(
            t,
            "| **ingressd / nginx** | {} | **{}** | | {} | {} | {} | {} | | |",
            r(Test::Full, Run::rate),
            r(Test::Full, Run::cpu_us_per_conn),
            r(Test::Resumed, Run::rate),
            r(Test::Resumed, Run::cpu_us_per_conn),
            r(Test::Bulk, Run::mb_per_s),
            r(Test::Bulk, Run::cpu_s_per_gb),
        );
    }
    t
}

/// The target of issue 4: ingressd's CPU per full handshake at most 0.7x nginx's.
pub fn target_verdict(runs: &[Run]) -> String {
    let ratio = paired_ratio(runs, Test::Full, Run::cpu_us_per_conn);
    let cpu = |s| cell(runs, s, Test::Full).map_or(f64::NAN, |c| c.cpu);
    if ratio.is_nan() {
        return "Target (CPU per full handshake at most 0.7x nginx's): not measured in this run \
                (it needs both servers)."
            .to_owned();
    }
    format!(
        "Target (CPU per full handshake at most 0.7x nginx's): {}: {ratio:.2}x (median of the \
         per-round ratios; medians ingressd {:.1} µs, nginx {:.1} µs per handshake).",
        if ratio <= 0.7 {
            "**met**"
        } else {
            "**not met**"
        },
        cpu(ServerKind::Ingressd),
        cpu(ServerKind::Nginx),
    )
}

/// Notes on what limited the handshake rates and on resumption, from the runs.
pub fn notes(runs: &[Run], servers: &[ServerKind], observed: &[(ServerKind, Observed)]) -> String {
    let mut notes = Vec::new();
    for test in [Test::Full, Test::Resumed] {
        let light: Vec<&str> = servers
            .iter()
            .filter(|&&s| cell(runs, s, test).is_some_and(|c| c.busy < 0.9))
            .map(|s| s.label())
            .collect();
        if !light.is_empty() {
            notes.push(format!(
                "During the {} the server used less than 90% of its core for: {}. Its \
                 handshakes/s is then what the load side (h2load does the client half of \
                 every handshake on core 0) managed, not the server's capacity; CPU per \
                 handshake compares the servers regardless.",
                test.label(),
                light.join(", ")
            ));
        }
    }
    let capacity: Vec<String> = servers
        .iter()
        .filter_map(|&s| cell(runs, s, Test::Full).map(|c| (s, c)))
        .filter(|(_, c)| c.cpu > 0.0)
        .map(|(s, c)| format!("{} about {:.0}", s.label(), 1e6 / c.cpu))
        .collect();
    if !capacity.is_empty() {
        notes.push(format!(
            "At its median CPU cost per full handshake, one core would sustain: {} full \
             handshakes per second (1 s / CPU per handshake; an estimate, not measured).",
            capacity.join(", ")
        ));
    }
    for &s in servers {
        let (Some(full), Some(resumed)) = (cell(runs, s, Test::Full), cell(runs, s, Test::Resumed))
        else {
            continue;
        };
        notes.push(format!(
            "{}: {:.0} bytes from the server per connection with full handshakes, {:.0} with \
             resumed ones (a resumed handshake has no Certificate and CertificateVerify).",
            s.label(),
            full.bytes_per_conn,
            resumed.bytes_per_conn
        ));
    }
    for (s, o) in observed {
        if !o.resumes {
            notes.push(format!(
                "{} did not resume a session offered by `openssl s_client -sess_in` (no session \
                 cache or tickets), so it has no resumed-handshake runs.",
                s.label()
            ));
        }
    }
    notes.join("\n\n")
}

/// Every run, for the record.
pub fn runs_table(runs: &[Run]) -> String {
    let mut t = String::from(
        "| round | server | test | connections | answered | result | server CPU | CPU per unit | bytes from server per connection | server core busy | core 0 busy | core 1 busy | other load | failed | attempt |\n\
         |--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in runs {
        let (result, unit) = match r.test {
            Test::Bulk => (
                format!("{} MB/s", fixed(r.mb_per_s(), 0)),
                format!("{} s/GB", fixed(r.cpu_s_per_gb(), 3)),
            ),
            _ => (
                format!("{}/s", fixed(r.rate(), 0)),
                format!("{} µs", fixed(r.cpu_us_per_conn(), 1)),
            ),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {result} | {:.2} s | {unit} | {} | {} | {} | {} | {} | {} | {} |",
            r.round,
            r.server.label(),
            r.test.label(),
            r.connections,
            r.ok,
            r.cpu_s,
            if r.test == Test::Bulk {
                "-".to_owned()
            } else {
                fixed(r.bytes_per_conn(), 0)
            },
            pct(r.server_busy()),
            pct(r.core0_busy),
            pct(r.core1_busy),
            pct(r.other_load),
            r.failed,
            r.attempt,
        );
    }
    t
}

// ---------------------------------------------------------------------------------------
// The run.

/// A server that runs.
struct Running {
    kind: ServerKind,
    proc: Proc,
}

struct Bench<'a> {
    topo: &'a Topology,
    args: &'a TlsArgs,
    dir: PathBuf,
    shim: PathBuf,
    clk: u64,
    stop: Arc<AtomicBool>,
    /// Every process of the benchmark, to tell its CPU time from other work.
    bench_pids: Vec<u32>,
    retry_deadline: Instant,
}

impl Bench<'_> {
    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn target(&self, server: ServerKind, test: Test) -> SocketAddrV4 {
        SocketAddrV4::new(NODE_ADDR, server.port(test))
    }

    /// The client namespace's TCP and IP counters.
    fn client_counters(&self) -> Result<HashMap<String, u64>> {
        let out = self.topo.exec(
            Ns::Client,
            "cat",
            ["/proc/net/snmp", "/proc/net/netstat"],
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!("reading the client's /proc/net counters failed");
        }
        Ok(parse_net_counters(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Runs h2load from the client namespace on core 0; `full` preloads the no-resume shim.
    fn h2load(&self, target: SocketAddrV4, connections: u64, full: bool) -> Result<H2load> {
        let mut args = vec!["-c".to_owned(), LOAD_CORE.to_owned()];
        if full {
            args.push("env".to_owned());
            args.push(format!("LD_PRELOAD={}", self.shim.display()));
        }
        args.push("h2load".to_owned());
        args.extend(h2load_args(target, connections, self.args.clients));
        let mut cmd = self.topo.exec_command(Ns::Client, "taskset", &args);
        // At least 100 connections a second, or the run is a failure anyway.
        let out = run_bounded(&mut cmd, Duration::from_secs(30 + connections / 100))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "h2load against {target} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let r = parse_h2load(&stdout)?;
        if r.protocol != "TLSv1.3" || r.cipher != SUITE || !r.temp_key.starts_with(GROUP) {
            bail!(
                "h2load against {target} negotiated {} {} {} instead of TLSv1.3 {SUITE} {GROUP}",
                r.protocol,
                r.cipher,
                r.temp_key
            );
        }
        Ok(r)
    }

    /// Runs the bulk download from the client namespace on core 0.
    fn bulk(&self, target: SocketAddrV4, transfers: u64) -> Result<Vec<Transfer>> {
        let max_secs = 30 + transfers * 10;
        let conf = self.dir.join(format!("bulk-{}.curl", target.port()));
        std::fs::write(&conf, bulk_curl_config(target, transfers, max_secs))?;
        let conf = conf.display().to_string();
        let mut cmd = self.topo.exec_command(
            Ns::Client,
            "taskset",
            ["-c", LOAD_CORE, "curl", "-K", &conf],
        );
        let out = run_bounded(&mut cmd, Duration::from_secs(max_secs + 30))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "curl against {target} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_transfers(&stdout)
    }

    /// One measured run of `test` on `server`: the load, the server's CPU time, the
    /// client's counters, and the CPU nobody of the benchmark used.
    fn measure(&self, server: &Running, test: Test, round: u32) -> Result<Run> {
        let ours = || -> Result<u64> {
            let mut ticks = cpu::self_with_children()?;
            for pid in &self.bench_pids {
                ticks += cpu::tree_cpu(*pid)?.ticks;
            }
            Ok(ticks)
        };
        let target = self.target(server.kind, test);
        let net_before = self.client_counters()?;
        let cores_before = cpu::cores();
        let ours_before = ours()?;
        let before = cpu::tree_cpu(server.proc.pid())?;
        let started = Instant::now();
        let (ok, failed, body_bytes, secs) = match test {
            Test::Full | Test::Resumed => {
                let n = if test == Test::Full {
                    self.args.handshakes
                } else {
                    self.args.resumptions
                };
                let r = self.h2load(target, n, test == Test::Full)?;
                (
                    r.ok_2xx,
                    r.failed + (r.done - r.ok_2xx.min(r.done)),
                    0,
                    r.secs,
                )
            }
            Test::Bulk => {
                let transfers = self.bulk(target, self.args.bulk_transfers())?;
                let good = transfers
                    .iter()
                    .filter(|t| t.status == 200 && t.bytes == BULK_FILE_BYTES)
                    .count() as u64;
                let bytes = transfers.iter().map(|t| t.bytes).sum();
                let secs = transfers.iter().map(|t| t.secs).sum();
                let missing = self.args.bulk_transfers().saturating_sub(good);
                (good, missing, bytes, secs)
            }
        };
        let after = cpu::tree_cpu(server.proc.pid())?;
        let wall_s = started.elapsed().as_secs_f64();
        let ours_after = ours()?;
        let cores_after = cpu::cores();
        let net_after = self.client_counters()?;
        if before.pids != after.pids {
            bail!(
                "{}: its processes changed during the run ({:?} -> {:?})",
                server.kind.label(),
                before.pids,
                after.pids
            );
        }
        let delta = |key: &str| {
            net_after
                .get(key)
                .copied()
                .unwrap_or(0)
                .saturating_sub(net_before.get(key).copied().unwrap_or(0))
        };
        let busy: u64 = [0, 1]
            .iter()
            .map(|&n| cpu::busy_ticks(&cores_before, &cores_after, n))
            .sum();
        let other = busy.saturating_sub(ours_after.saturating_sub(ours_before));
        Ok(Run {
            round,
            server: server.kind,
            test,
            // Connections that were established (active opens minus failed attempts).
            connections: delta("Tcp.ActiveOpens").saturating_sub(delta("Tcp.AttemptFails")),
            ok,
            failed,
            body_bytes,
            in_octets: delta("IpExt.InOctets"),
            secs,
            cpu_s: after.ticks.saturating_sub(before.ticks) as f64 / self.clk as f64,
            wall_s,
            core0_busy: cpu::busy_fraction(&cores_before, &cores_after, 0),
            core1_busy: cpu::busy_fraction(&cores_before, &cores_after, 1),
            other_load: other as f64 / self.clk as f64 / wall_s,
            attempt: 1,
        })
    }

    /// [`Bench::measure`] after waiting for a quiet machine, redone (bounded) when other
    /// load disturbed it.
    fn measured(&self, server: &Running, test: Test, round: u32) -> Result<Run> {
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
            let mut run = self.measure(server, test, round)?;
            run.attempt = attempt;
            print_run(&run);
            if run.other_load <= self.args.max_other_load
                || attempt > self.args.retries
                || Instant::now() >= self.retry_deadline
            {
                return Ok(run);
            }
            println!(
                "   (other load {:.0}% of a core during that run; redoing it)",
                run.other_load * 100.0
            );
        }
    }

    /// One `openssl s_client` connection with a `GET /`, saving or offering a session.
    fn s_client(&self, target: SocketAddrV4, session: &Path, offer: bool) -> Result<SClient> {
        let sess = format!(
            "{} {}",
            if offer { "-sess_in" } else { "-sess_out" },
            session.display()
        );
        let script = format!(
            "printf 'GET / HTTP/1.1\\r\\nHost: {HOST}\\r\\nConnection: close\\r\\n\\r\\n' | \
             openssl s_client -connect {target} -servername {HOST} -tls1_3 -groups {GROUP} \
             -ciphersuites {SUITE} -ign_eof {sess} 2>&1"
        );
        let out = self
            .topo
            .exec(Ns::Client, "sh", ["-c", &script], Duration::from_secs(20))?;
        Ok(parse_s_client(&String::from_utf8_lossy(&out.stdout)))
    }

    /// One unmeasured full-handshake run with `perf record -e cpu-clock` attached to the
    /// server's processes; returns the shares per library and the top symbols.
    fn profile(&self, server: &Running) -> Result<Profile> {
        let label = server.kind.label();
        let pids: Vec<String> = cpu::tree_cpu(server.proc.pid())?
            .pids
            .iter()
            .map(ToString::to_string)
            .collect();
        let data = self.dir.join(format!("perf-{label}.data"));
        let mut perf = Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "999", "-p"])
            .arg(pids.join(","))
            .arg("-o")
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf record")?;
        std::thread::sleep(Duration::from_millis(500));
        let load = self.h2load(
            self.target(server.kind, Test::Full),
            self.args.handshakes,
            true,
        );
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
        load?;
        let report = |sort: &str| -> Result<String> {
            let out = run_bounded(
                Command::new("perf")
                    .args(["report", "--stdio", "--no-children", "--sort", sort])
                    .args(["--percent-limit", "0.5", "-i"])
                    .arg(&data),
                Duration::from_secs(120),
            )?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let name = format!("perf-{label}-{}.txt", sort.replace(',', "-"));
            std::fs::write(self.dir.join(name), text.as_bytes())?;
            Ok(text)
        };
        Ok(Profile {
            dsos: dso_shares(&report("dso")?),
            symbols: top_symbols(&report("dso,sym")?, 15),
        })
    }

    /// Checks what both tests rely on: TLS 1.3 with X25519, AES-128-GCM and the ECDSA
    /// P-256 certificate, the fixed `200`, the bulk file through the server, and whether a
    /// session resumes; with h2load, that the shim makes every handshake full (fewer bytes
    /// per connection without it when the server resumes).
    fn precheck(&self, server: &Running) -> Result<Observed> {
        let label = server.kind.label();
        let full = self.target(server.kind, Test::Full);
        let resumable = self.target(server.kind, Test::Resumed);
        let session = self.dir.join(format!("session-{}.pem", resumable.port()));
        let first = self.s_client(resumable, &session, false)?;
        if first.protocol != "TLSv1.3"
            || first.cipher != SUITE
            || !first.temp_key.starts_with(GROUP)
            || first.signature != "ECDSA"
            || first.key_bits != 256
        {
            bail!("{label}: openssl s_client negotiated {first:?}");
        }
        if !first.status_line.starts_with("HTTP/1.1 200") {
            bail!("{label}: GET / answered `{}`", first.status_line);
        }
        let again = self.s_client(resumable, &session, true)?;
        let negotiated = format!(
            "{}, {}, {}, {} P-256 certificate",
            first.protocol,
            first.cipher,
            first.temp_key.split(',').next().unwrap_or(""),
            first.signature
        );
        let observed = Observed {
            resumes: again.reused,
            tickets: first.tickets,
            negotiated,
        };
        println!(
            "   {label}: {}; {} session tickets per handshake; offered session {}",
            observed.negotiated,
            observed.tickets,
            if again.reused {
                "resumed"
            } else {
                "not resumed"
            }
        );

        let transfers = self.bulk(full, 1)?;
        if transfers.len() != 1
            || transfers[0].status != 200
            || transfers[0].bytes != BULK_FILE_BYTES
        {
            bail!("{label}: the bulk file came back as {transfers:?}");
        }

        // The shim: with it, no resumption even where the server resumes.
        let probe = |port_test: Test, shim: bool| -> Result<f64> {
            let before = self.client_counters()?;
            let r = self.h2load(self.target(server.kind, port_test), 200, shim)?;
            let after = self.client_counters()?;
            let d = |k: &str| {
                after
                    .get(k)
                    .unwrap_or(&0)
                    .saturating_sub(*before.get(k).unwrap_or(&0))
            };
            if r.ok_2xx != 200 || d("Tcp.ActiveOpens") != 200 {
                bail!(
                    "{label}: 200 h2load requests gave {} 2xx answers over {} connections",
                    r.ok_2xx,
                    d("Tcp.ActiveOpens")
                );
            }
            Ok(d("IpExt.InOctets") as f64 / 200.0)
        };
        let with_shim = probe(Test::Resumed, true)?;
        let without = probe(Test::Resumed, false)?;
        println!(
            "   {label}: h2load, 200 connections: {with_shim:.0} bytes each from the server \
             with the no-resume library, {without:.0} without"
        );
        if observed.resumes && without > with_shim - 200.0 {
            bail!(
                "{label} resumes sessions, but h2load's connections without the no-resume \
                 library were not smaller ({without:.0} vs {with_shim:.0} bytes): the resumed \
                 runs would measure full handshakes"
            );
        }
        Ok(observed)
    }
}

fn print_run(run: &Run) {
    let result = match run.test {
        Test::Bulk => format!(
            "{:>7.0} MB/s  {:>6.3} s CPU/GB",
            run.mb_per_s(),
            run.cpu_s_per_gb()
        ),
        _ => format!(
            "{:>7.0} conn/s  {:>6.1} µs CPU/conn  {:>5.0} B/conn",
            run.rate(),
            run.cpu_us_per_conn(),
            run.bytes_per_conn()
        ),
    };
    println!(
        "   round {} {:<9} {:<19} {result}  server {:>3.0}%  core0 {:>3.0}%  other {:>3.0}%  failed {}",
        run.round,
        run.server.label(),
        run.test.label(),
        run.server_busy() * 100.0,
        run.core0_busy * 100.0,
        run.other_load * 100.0,
        run.failed,
    );
}

/// Creates the ECDSA P-256 certificate (and key) for [`HOST`]; returns `(cert, key, DER
/// length of the certificate)`.
fn make_certificate(dir: &Path) -> Result<(PathBuf, PathBuf, usize)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = run_bounded(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "7"])
            .args(["-subj", &format!("/CN={HOST}")])
            .args(["-addext", &format!("subjectAltName=DNS:{HOST}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
        Duration::from_secs(30),
    )?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let der = run_bounded(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert),
        Duration::from_secs(30),
    )?;
    if !der.status.success() {
        bail!("openssl x509 failed");
    }
    Ok((cert, key, der.stdout.len()))
}

/// Compiles [`NO_RESUME_SHIM`] into `dir`.
fn build_shim(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("no-resume.c");
    let lib = dir.join("no-resume.so");
    std::fs::write(&src, NO_RESUME_SHIM)?;
    let out = run_bounded(
        Command::new("cc")
            .args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl"),
        Duration::from_secs(60),
    )?;
    if !out.status.success() {
        bail!(
            "compiling the no-resume library failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(lib)
}

/// Sysctls of the client namespace: a wide ephemeral port range and TIME_WAIT reuse,
/// for the hundred thousand connections of a run.
fn tune(topo: &Topology) -> Result<()> {
    let out = topo.exec(
        Ns::Client,
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
    Ok(())
}

fn start_server(
    topo: &Topology,
    kind: ServerKind,
    site: &TlsSite<'_>,
    dir: &Path,
    ingressd: &Path,
) -> Result<Proc> {
    let proc = match kind {
        ServerKind::Ingressd => {
            let config = dir.join("ingressd-config");
            std::fs::create_dir_all(&config)?;
            for (name, yaml) in istio::tls_files(site) {
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
                pinned(SERVER_CORE, ingressd, &run_args),
            )?;
            topo.wait_ready(&proc, Duration::from_secs(30))?;
            proc
        }
        ServerKind::Nginx => {
            let nginx_dir = dir.join("nginx-tls");
            std::fs::create_dir_all(&nginx_dir)?;
            let conf = nginx_dir.join("nginx.conf");
            std::fs::write(
                &conf,
                nginx::tls_config(
                    site,
                    SocketAddrV4::new(NODE_ADDR, NGINX_FULL_PORT),
                    SocketAddrV4::new(NODE_ADDR, NGINX_RESUME_PORT),
                    &nginx_dir,
                ),
            )?;
            spawn_nginx(topo, Ns::Node, "tls-nginx", SERVER_CORE, &nginx_dir, &conf)?
        }
    };
    let mut ports = vec![kind.port(Test::Full)];
    if kind.port(Test::Resumed) != ports[0] {
        ports.push(kind.port(Test::Resumed));
    }
    let addrs: Vec<SocketAddrV4> = ports
        .into_iter()
        .map(|p| SocketAddrV4::new(NODE_ADDR, p))
        .collect();
    wait_listening(topo, Ns::Client, &[&proc], &addrs, Duration::from_secs(20))?;
    Ok(proc)
}

/// Runs the benchmark.
pub fn run_tls(args: &TlsArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench tls creates network namespaces and needs root");
    }
    if args.servers.is_empty() {
        bail!("--servers is empty");
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
    if args.servers.contains(&ServerKind::Ingressd) {
        build_release_bins(false)?;
    }
    let ingressd = target_dir().join("release").join("ingressd");

    let load_start = load_average();
    if load_start.first().is_some_and(|l| *l > 1.0) {
        println!(
            "warning: load average {} before the benchmark; other work on this machine skews the numbers",
            fmt_load(&load_start)
        );
    }
    let dir = target_dir().join("bench").join("tls");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert, key, cert_der_len) = make_certificate(&dir)?;
    let shim = build_shim(&dir)?;
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("bulk"))?;
    std::fs::write(
        www.join(BULK_PATH.trim_start_matches('/')),
        vec![0x5a_u8; BULK_FILE_BYTES as usize],
    )?;
    let site = TlsSite {
        host: HOST,
        cert: &cert,
        key: &key,
        body: BODY,
        bulk_prefix: BULK_PREFIX,
        backend: BACKEND,
    };

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

    let backend_dir = dir.join("nginx-backend");
    std::fs::create_dir_all(&backend_dir)?;
    let backend_conf = backend_dir.join("nginx.conf");
    std::fs::write(
        &backend_conf,
        nginx::file_backend_config(BACKEND, &www, &backend_dir),
    )?;
    let backend = spawn_nginx(
        &topo,
        Ns::Pods,
        "backend-nginx",
        LOAD_CORE,
        &backend_dir,
        &backend_conf,
    )?;
    wait_listening(
        &topo,
        Ns::Pods,
        &[&backend],
        &[BACKEND],
        Duration::from_secs(10),
    )?;
    println!(
        "   backend: nginx serving {BULK_PATH} ({BULK_FILE_BYTES} bytes) on {BACKEND} (pods ns, core {LOAD_CORE})"
    );

    let mut servers = Vec::new();
    for &kind in &args.servers {
        let proc = start_server(&topo, kind, &site, &dir, &ingressd)?;
        println!(
            "   {}: port {} (node ns, core {SERVER_CORE}, pid {})",
            kind.label(),
            if kind.port(Test::Full) == kind.port(Test::Resumed) {
                kind.port(Test::Full).to_string()
            } else {
                format!(
                    "{} (no resumption), {} (session tickets)",
                    kind.port(Test::Full),
                    kind.port(Test::Resumed)
                )
            },
            proc.pid()
        );
        servers.push(Running { kind, proc });
    }

    let planned = Duration::from_secs(
        u64::from(args.rounds) * servers.len() as u64 * (args.handshakes + args.resumptions) / 1000
            + 10,
    );
    let mut bench = Bench {
        topo: &topo,
        args,
        dir: dir.clone(),
        shim,
        clk: cpu::clock_ticks(),
        stop,
        bench_pids: Vec::new(),
        retry_deadline: Instant::now(),
    };
    bench.bench_pids = std::iter::once(&backend)
        .chain(servers.iter().map(|s| &s.proc))
        .map(Proc::pid)
        .collect();

    println!("\n== checks: protocol, group, cipher, certificate, answers, resumption");
    let mut observed = Vec::new();
    for s in &servers {
        bench.check_stop()?;
        observed.push((s.kind, bench.precheck(s)?));
    }

    if args.warmup > 0 {
        println!("\n== warm-up: {} full handshakes per server", args.warmup);
        for s in &servers {
            bench.check_stop()?;
            let r = bench.h2load(bench.target(s.kind, Test::Full), args.warmup, true)?;
            println!(
                "   {}: {:.0} conn/s",
                s.kind.label(),
                r.done as f64 / r.secs
            );
        }
    }

    println!(
        "\n== {} rounds: {} full handshakes, {} resumed handshakes (h2load -c{}), {} MiB on one connection, per server",
        args.rounds, args.handshakes, args.resumptions, args.clients, args.bulk_mib
    );
    bench.retry_deadline = Instant::now() + planned * 2;
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for test in [Test::Full, Test::Resumed, Test::Bulk] {
            for s in &servers {
                let resumes = observed.iter().any(|(k, o)| *k == s.kind && o.resumes);
                if test == Test::Resumed && !resumes {
                    continue;
                }
                runs.push(bench.measured(s, test, round)?);
            }
        }
    }
    let mut profiles = Vec::new();
    if args.profile {
        println!(
            "\n== profiles: perf record -e cpu-clock during {} more full handshakes per server",
            args.handshakes
        );
        for s in &servers {
            bench.check_stop()?;
            let profile = bench.profile(s)?;
            println!("   {}:", s.kind.label());
            for (pct, what) in profile.dsos.iter().chain(&profile.symbols) {
                println!("   {pct:>6.2}%  {what}");
            }
            profiles.push((s.kind, profile));
        }
    }
    let load_end = load_average();
    for s in &servers {
        if let Some(status) = s.proc.try_status()? {
            bail!(
                "{} exited during the benchmark ({status})\n{}",
                s.kind.label(),
                s.proc.log_tail(20)
            );
        }
    }
    drop(servers);
    drop(backend);
    drop(topo);

    let facts = Facts::collect(&ingressd, &load_start, &load_end);
    let section = section(
        &runs,
        &args.servers,
        &observed,
        &profiles,
        &facts,
        args,
        cert_der_len,
    );
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
    let failed: u64 = runs.iter().map(|r| r.failed).sum();
    if failed > 0 {
        bail!("{failed} failed requests or transfers during the measured runs (see the table)");
    }
    Ok(())
}

/// What the report says about the machine and the software.
struct Facts {
    date: String,
    cpu: String,
    cores: usize,
    kernel: String,
    nginx: String,
    openssl: String,
    tools: String,
    ingressd: String,
    provider: String,
    load_start: String,
    load_end: String,
    busy: bool,
}

impl Facts {
    fn collect(ingressd: &Path, load_start: &[f64], load_end: &[f64]) -> Self {
        let commit = output(Command::new("git").args(["describe", "--always", "--dirty"]))
            .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
        let tuning = ingressd_tuning(ingressd);
        let nginx_v = Command::new("nginx")
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        let nginx_openssl = nginx_v
            .lines()
            .find(|l| l.starts_with("built with OpenSSL"))
            .unwrap_or("OpenSSL unknown")
            .trim()
            .to_owned();
        let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap_or_default();
        Facts {
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
                .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned()),
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: first_line(Command::new("uname").arg("-r")),
            nginx: format!(
                "{}, {nginx_openssl}",
                first_line(Command::new("nginx").arg("-v"))
            ),
            openssl: first_line(Command::new("openssl").arg("version")),
            tools: [
                first_line(Command::new("h2load").arg("--version")),
                first_line(Command::new("curl").arg("--version")),
            ]
            .join("; "),
            ingressd: format!(
                "ingressd {commit} (release build, `run --kernel off{}{}`, pinned to core 1)",
                if tuning.is_empty() { "" } else { " " },
                tuning.join(" ")
            ),
            provider: rustls_provider(&lock)
                .unwrap_or_else(|| "no rustls in Cargo.lock".to_owned()),
            busy: load_start.first().is_some_and(|l| *l > 1.0)
                || load_end.first().is_some_and(|l| *l > 1.0),
            load_start: fmt_load(load_start),
            load_end: fmt_load(load_end),
        }
    }
}

/// The `## TLS termination` section of docs/benchmarks.md.
fn section(
    runs: &[Run],
    servers: &[ServerKind],
    observed: &[(ServerKind, Observed)],
    profiles: &[(ServerKind, Profile)],
    facts: &Facts,
    args: &TlsArgs,
    cert_der_len: usize,
) -> String {
    let others: Vec<f64> = runs.iter().map(|r| r.other_load).collect();
    let negotiated = observed
        .first()
        .map_or("-".to_owned(), |(_, o)| o.negotiated.clone());
    format!(
        "{SECTION}

_Written by `cargo xtask bench tls` on {date}; rerunning it rewrites this section._

ingressd (rustls: {provider}) and nginx (OpenSSL) terminating TLS with the same certificate,
one worker each on the same core. Medians of {rounds} rounds; the ratio row is ingressd / nginx,
the median of the per-round ratios (runs of the same round paired, so that slow drifts of
the machine cancel out). CPU is the server process's user + system time (`/proc/<pid>/stat`)
per handshake (per connection, each with one small HTTP/1.1 request) or per 10^9 bytes of body;
server core busy is that CPU time over the run's wall time. Negotiated by both: {negotiated}.

{table}
{verdict}

{notes}

### Machine

- {cpu}, {cores} cores; Linux {kernel}
- {nginx}; {openssl} (the clients)
- {tools}
- {ingressd}; rustls crypto provider from Cargo.lock: {provider}
- Load average (1/5/15 min) before: {load_start}; after: {load_end}{load_note}
- Other load, the CPU time on both cores not used by the benchmark's processes during the
  runs: median {other_median}, at most {other_max} of one core

### Method

- Topology: network namespaces `client` (198.18.0.2) -- veth -- `node` (198.18.0.1, the
  servers) -- veth -- `pods` (nginx backend {backend}). The server under test is pinned to
  core 1 (`taskset -c 1`: ingressd `--concurrency 1`, nginx `worker_processes 1`); h2load,
  curl and the backend run on core 0.
- Certificate: ECDSA P-256, self-signed for `{host}`, made by `openssl req -x509 -newkey ec
  -pkeyopt ec_paramgen_curve:P-256` at the start of the run ({cert_der_len} bytes DER); both
  servers load the same files. Both allow only TLS 1.3 (ingressd: Gateway server `tls: {{mode:
  SIMPLE, serverCertificate, privateKey, minProtocolVersion: TLSV1_3}}`; nginx `ssl_protocols
  TLSv1.3; ssl_ecdh_curve X25519`); the clients offer only X25519 and {suite}. The checks
  before the runs read the negotiated parameters with `openssl s_client`.
- Same work behind both: `GET /` is answered by the server itself with a fixed `200` and a
  {body_len}-byte body (ingressd: a VirtualService `directResponse`, nginx: `return 200`), so
  the handshake runs compare TCP + TLS + one HTTP/1.1 exchange with nothing upstream;
  `{bulk_prefix}/` is proxied by both to the backend (plain HTTP/1.1, upstream keep-alive; nginx
  `proxy_max_temp_file_size 0`, so nothing is buffered on disk, and 64 KiB proxy buffers,
  `proxy_buffer_size 64k; proxy_buffers 8 64k;`: with its default 4 KiB buffers nginx used
  about twice the CPU per GB here).
- Full handshakes: `h2load --h1 -t1 -c{clients} -n{handshakes} -H 'Connection: close'
  --groups={group} --tls13-ciphers={suite}`: {clients} clients on one thread, each reconnecting after
  every response, so {handshakes} connections with one request each. h2load reuses a client's
  `SSL` object across reconnects, and so resumes the previous session whenever the server
  issued a ticket; for these runs a small library preloaded into h2load (`LD_PRELOAD`; its
  source is `NO_RESUME_SHIM` in `xtask/src/bench/tls.rs`) clears that session before each
  connect. nginx serves them from a server that resumes nothing (`ssl_session_cache off;
  ssl_session_tickets off;`), ingressd with its one configuration (rustls with a stateless
  `Ticketer` and a session cache: it issues tickets after every full handshake).
- Resumed handshakes: the same h2load run ({resumptions} connections) without the library, so
  every connection but each client's first offers the session of the one before; nginx on a
  second port with `ssl_session_tickets on;` (stateless tickets, the session encrypted into
  the ticket, as rustls' `Ticketer` does for ingressd). The check before the
  runs offers one session with `openssl s_client -sess_out`/`-sess_in` (resumed or not; the
  tickets column counts the tickets that first connection received; nginx also sends two,
  unusable ones, on its port without resumption), and
  runs h2load for 200 connections with and without the library: without it the connections
  must receive at least 200 bytes less from a server that resumes (no Certificate, no
  CertificateVerify). The bytes per connection of every run are in the tables.
- Bulk: one curl process, one connection, {transfers} sequential downloads of a {bulk_file}-byte file
  ({bulk_mib} MiB in all, same cipher and group); MB/s is body bytes over the sum of curl's
  transfer times; CPU per GB is the server's CPU time per 10^9 body bytes.
- Connections are counted in the client namespace (`/proc/net/snmp` TCP active opens minus
  failed attempts); bytes per connection are the IP bytes the client namespace received
  (`/proc/net/netstat` InOctets) divided by them.
- Warm-up: {warmup} full handshakes per server before the first round. Each round runs full
  handshakes, resumed handshakes and bulk, each on every server in turn ({order}). Before each
  run the benchmark waits (at most 15 s) for a quiet machine; a run with more than
  {max_other:.0}% of a core of other load is redone, at most {retries} times (attempt column).

{profile}### Every run

{runs_table}",
        date = facts.date,
        provider = facts.provider,
        rounds = args.rounds,
        negotiated = negotiated,
        table = table(runs, servers, observed),
        verdict = target_verdict(runs),
        notes = notes(runs, servers, observed),
        cpu = facts.cpu,
        cores = facts.cores,
        kernel = facts.kernel,
        nginx = facts.nginx,
        openssl = facts.openssl,
        tools = facts.tools,
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
        backend = BACKEND,
        host = HOST,
        cert_der_len = cert_der_len,
        suite = SUITE,
        group = GROUP,
        body_len = BODY.len(),
        bulk_prefix = BULK_PREFIX,
        clients = args.clients,
        handshakes = args.handshakes,
        resumptions = args.resumptions,
        transfers = args.bulk_transfers(),
        bulk_file = BULK_FILE_BYTES,
        bulk_mib = args.bulk_mib,
        warmup = args.warmup,
        order = servers
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(", "),
        max_other = args.max_other_load * 100.0,
        retries = args.retries,
        runs_table = runs_table(runs),
        profile = profile_section(profiles, args.handshakes),
    )
}

/// The `### Profiles` subsection (empty without `--profile`).
fn profile_section(profiles: &[(ServerKind, Profile)], handshakes: u64) -> String {
    if profiles.is_empty() {
        return String::new();
    }
    let mut t = format!(
        "### Profiles

`perf record -e cpu-clock -F 999 -p <server's pids>` during one more full-handshake run of
{handshakes} connections per server after the measured rounds; `perf report --no-children`, the
share of the server's samples per binary or library (`--sort dso`; `[kernel.kallsyms]` is the
kernel on the server's behalf: TCP, epoll, syscalls) and the top symbols (`--sort dso,sym`).

"
    );
    for (server, profile) in profiles {
        let dsos: Vec<String> = profile
            .dsos
            .iter()
            .map(|(pct, dso)| format!("{dso} {pct:.1}%"))
            .collect();
        let _ = writeln!(
            t,
            "{}: {}\n\n| share | where |\n|--:|---|",
            server.label(),
            dsos.join(", ")
        );
        for (pct, sym) in &profile.symbols {
            let _ = writeln!(t, "| {pct:.2}% | `{sym}` |");
        }
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_reconnects_with_one_request_per_connection() {
        let target = SocketAddrV4::new(NODE_ADDR, 8443);
        let args = h2load_args(target, 20_000, 32);
        let line = args.join(" ");
        assert_eq!(
            line,
            "--h1 -t1 -c32 -n20000 -H Connection: close --groups=X25519 \
             --tls13-ciphers=TLS_AES_128_GCM_SHA256 --connect-to=198.18.0.1:8443 \
             https://tls.bench.example/"
        );
        // Never more clients than connections.
        assert!(h2load_args(target, 10, 32).contains(&"-c10".to_owned()));
    }

    #[test]
    fn shim_wraps_set_connect_state_and_drops_the_session() {
        assert!(NO_RESUME_SHIM.contains("void SSL_set_connect_state(SSL *s) {"));
        assert!(NO_RESUME_SHIM.contains("dlsym(RTLD_NEXT, \"SSL_set_connect_state\")"));
        assert!(NO_RESUME_SHIM.contains("set_session(s, NULL);"));
        assert_eq!(
            NO_RESUME_SHIM.matches('{').count(),
            NO_RESUME_SHIM.matches('}').count()
        );
    }

    #[test]
    fn bulk_config_downloads_on_one_connection() {
        let target = SocketAddrV4::new(NODE_ADDR, 8444);
        let conf = bulk_curl_config(target, 3, 60);
        assert!(conf.contains("resolve = \"tls.bench.example:8444:198.18.0.1\"\n"));
        assert!(conf.contains("curves = \"X25519\"\n"));
        assert!(conf.contains("tls13-ciphers = \"TLS_AES_128_GCM_SHA256\"\n"));
        assert!(conf.contains("tls-max = \"1.3\"\n"));
        assert_eq!(conf.matches("url = ").count(), 3);
        assert!(conf.contains("url = \"https://tls.bench.example:8444/bulk/64MiB?n=2\"\n"));
        assert_eq!(conf.matches("output = \"/dev/null\"\n").count(), 3);
        let args = TlsArgs {
            rounds: 1,
            handshakes: 1000,
            resumptions: 1000,
            clients: 1,
            bulk_mib: 1000,
            warmup: 0,
            servers: vec![],
            no_write: true,
            max_other_load: 0.1,
            retries: 0,
            profile: false,
        };
        assert_eq!(args.bulk_transfers(), 16);
    }

    #[test]
    fn parses_h2load() {
        let out = "starting benchmark...\n\
            spawning thread #0: 32 total client(s). 20000 total requests\n\
            TLS Protocol: TLSv1.3\n\
            Cipher: TLS_AES_128_GCM_SHA256\n\
            Server Temp Key: X25519 253 bits\n\
            Application protocol: http/1.1\n\
            progress: 10% done\n\n\
            finished in 28.05s, 713.06 req/s, 0B/s\n\
            requests: 20000 total, 20000 started, 19990 done, 19980 succeeded, 10 failed, 10 errored, 0 timeout\n\
            status codes: 19980 2xx, 0 3xx, 0 4xx, 0 5xx\n\
            traffic: 0B (0) total, 1.96MB (2060000) headers (space savings 0.00%), 58.59KB (60000) data\n";
        let r = parse_h2load(out).unwrap();
        assert_eq!(
            r,
            H2load {
                secs: 28.05,
                done: 19990,
                ok_2xx: 19980,
                failed: 20,
                protocol: "TLSv1.3".to_owned(),
                cipher: "TLS_AES_128_GCM_SHA256".to_owned(),
                temp_key: "X25519 253 bits".to_owned(),
            }
        );
        let ms = out.replace("28.05s", "270.41ms");
        assert!((parse_h2load(&ms).unwrap().secs - 0.27041).abs() < 1e-9);
        assert!(parse_h2load("starting benchmark...\n").is_err());
    }

    #[test]
    fn parses_proc_net_counters() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails\n\
            Tcp: 1 200 120000 -1 636 444 32\n\
            TcpExt: SyncookiesSent\nTcpExt: 0\n\
            IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets\n\
            IpExt: 0 0 0 0 0 0 3797120\n";
        let c = parse_net_counters(text);
        assert_eq!(c["Tcp.ActiveOpens"], 636);
        assert_eq!(c["Tcp.AttemptFails"], 32);
        assert_eq!(c["IpExt.InOctets"], 3_797_120);
        assert_eq!(c["Ip.DefaultTTL"], 64);
        assert!(!c.contains_key("Tcp.MaxConn"));
    }

    #[test]
    fn parses_s_client() {
        let out = "CONNECTED(00000003)\n---\nPeer signing digest: SHA256\n\
            Peer signature type: ECDSA\nServer Temp Key: X25519, 253 bits\n---\n\
            New, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256\nServer public key is 256 bit\n\
            ---\nPost-Handshake New Session Ticket arrived:\nSSL-Session:\n    Protocol  : TLSv1.3\n\
            ---\nPost-Handshake New Session Ticket arrived:\nSSL-Session:\n\
            HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\nbench tls\nclosed\n";
        let r = parse_s_client(out);
        assert_eq!(
            r,
            SClient {
                reused: false,
                protocol: "TLSv1.3".to_owned(),
                cipher: "TLS_AES_128_GCM_SHA256".to_owned(),
                temp_key: "X25519, 253 bits".to_owned(),
                signature: "ECDSA".to_owned(),
                key_bits: 256,
                tickets: 2,
                status_line: "HTTP/1.1 200 OK".to_owned(),
            }
        );
        let again = parse_s_client("Reused, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256\n");
        assert!(again.reused);
    }

    #[test]
    fn perf_report_top_symbols() {
        let report = "# Samples: 9K of event 'cpu-clock'\n#\n\
            # Overhead  Shared Object      Symbol\n\
            # ........  .................  ......\n#\n\
            \x20   21.50%  ingressd           [.] aws_lc_0_32_0_ecp_nistz256_ord_sqr_mont\n\
            \x20    9.25%  [kernel.kallsyms]  [k] _raw_spin_unlock_irqrestore\n\
            \x20    1.00%  libc.so.6          [.] __memmove_avx_unaligned_erms\n\
            \n#\n# (Cannot load tips.txt file, please install perf!)\n";
        let top = top_symbols(report, 2);
        assert_eq!(
            top,
            vec![
                (
                    21.5,
                    "ingressd aws_lc_0_32_0_ecp_nistz256_ord_sqr_mont".to_owned()
                ),
                (
                    9.25,
                    "[kernel.kallsyms] _raw_spin_unlock_irqrestore".to_owned()
                ),
            ]
        );
        assert_eq!(top_symbols(report, 10).len(), 3);
        assert!(profile_section(&[], 1).is_empty());
        let dsos = dso_shares(
            "# Overhead  Shared Object\n#\n    53.49%  ingressd         \n    33.95%  [kernel.kallsyms]\n\n#\n",
        );
        assert_eq!(
            dsos,
            vec![
                (53.49, "ingressd".to_owned()),
                (33.95, "[kernel.kallsyms]".to_owned())
            ]
        );
        let profile = Profile { dsos, symbols: top };
        let s = profile_section(&[(ServerKind::Nginx, profile)], 1000);
        assert!(
            s.contains("nginx: ingressd 53.5%, [kernel.kallsyms] 34.0%\n"),
            "{s}"
        );
        assert!(s.contains("| 21.50% | `ingressd aws_lc_0_32_0_ecp_nistz256_ord_sqr_mont` |"));
    }

    #[test]
    fn parses_curl_transfers() {
        let t = parse_transfers("200 67108864 1 0.151\n200 67108864 0 0.149\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].connects, 1);
        assert_eq!(t[1].connects, 0);
        assert_eq!(t[1].bytes, 67_108_864);
        assert!(parse_transfers("200 1\n").is_err());
    }

    #[test]
    fn rustls_provider_from_the_lock_file() {
        let lock = r#"
[[package]]
name = "aws-lc-rs"
version = "1.13.1"

[[package]]
name = "ring"
version = "0.17.14"

[[package]]
name = "rustls"
version = "0.21.12"
dependencies = [
 "ring",
]

[[package]]
name = "rustls"
version = "0.23.28"
dependencies = [
 "aws-lc-rs",
 "log",
 "rustls-pki-types",
]
"#;
        assert_eq!(
            rustls_provider(lock).unwrap(),
            "rustls 0.23.28 with aws-lc-rs 1.13.1"
        );
        assert!(rustls_provider("[[package]]\nname = \"tokio\"\n").is_none());
    }

    fn run(server: ServerKind, test: Test, round: u32, conns: u64, cpu_s: f64) -> Run {
        Run {
            round,
            server,
            test,
            connections: conns,
            ok: conns,
            failed: 0,
            body_bytes: if test == Test::Bulk { 1 << 30 } else { 0 },
            in_octets: conns * if test == Test::Resumed { 900 } else { 1500 },
            secs: 5.0,
            cpu_s,
            wall_s: 5.0,
            core0_busy: 1.0,
            core1_busy: 0.8,
            other_load: 0.01,
            attempt: 1,
        }
    }

    #[test]
    fn ratios_pair_the_runs_of_a_round() {
        use ServerKind::{Ingressd, Nginx};
        let runs = vec![
            run(Ingressd, Test::Full, 1, 10_000, 1.0),
            run(Nginx, Test::Full, 1, 10_000, 2.0),
            run(Ingressd, Test::Full, 2, 10_000, 3.0),
            run(Nginx, Test::Full, 2, 10_000, 4.0),
            run(Ingressd, Test::Full, 3, 10_000, 1.5),
            run(Nginx, Test::Full, 3, 10_000, 2.0),
            run(Ingressd, Test::Bulk, 1, 1, 0.5),
            run(Nginx, Test::Bulk, 1, 1, 1.0),
        ];
        // Per-round ratios 0.5, 0.75, 0.75: median 0.75 (the ratio of the medians is 1.5/2).
        assert!((paired_ratio(&runs, Test::Full, Run::cpu_us_per_conn) - 0.75).abs() < 1e-9);
        assert!(paired_ratio(&runs, Test::Resumed, Run::cpu_us_per_conn).is_nan());
        let c = cell(&runs, Ingressd, Test::Full).unwrap();
        assert!((c.cpu - 150.0).abs() < 1e-9);
        assert!((c.throughput - 2000.0).abs() < 1e-9);
        assert!(target_verdict(&runs).contains("**not met**: 0.75x"));
        let observed = vec![
            (
                Ingressd,
                Observed {
                    resumes: false,
                    tickets: 0,
                    negotiated: String::new(),
                },
            ),
            (
                Nginx,
                Observed {
                    resumes: true,
                    tickets: 2,
                    negotiated: String::new(),
                },
            ),
        ];
        let t = table(&runs, &[Ingressd, Nginx], &observed);
        assert!(
            t.contains("| ingressd | 2000 | 150.0 µs | 30% | not supported | - | 215 MB/s | 0.466 s | 0 | 0 |"),
            "{t}"
        );
        assert!(
            t.contains("| **ingressd / nginx** | 1.00 | **0.75** |"),
            "{t}"
        );
        assert!(notes(&runs, &[Ingressd, Nginx], &observed).contains("ingressd did not resume"));
        assert!(
            notes(&runs, &[Ingressd, Nginx], &observed)
                .contains("During the full handshakes the server used less than 90% of its core for: ingressd, nginx.")
        );
        assert_eq!(runs_table(&runs).lines().count(), 10);
        let met = vec![
            run(Ingressd, Test::Full, 1, 10_000, 1.0),
            run(Nginx, Test::Full, 1, 10_000, 2.0),
        ];
        assert!(target_verdict(&met).contains("**met**: 0.50x"));
    }
}
