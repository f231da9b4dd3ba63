//! The test topology: `client` --veth-- `node` --veth-- `pods`, in network namespaces.
//!
//! ```text
//!  client ns                 node ns (ingressd)                 pods ns (backends)
//!  eth0 198.18.0.2/24 ---- cl0 198.18.0.1/24
//!                              pd0 198.18.1.1/24 ---- eth0 198.18.1.2/24 (+ .10, .11, ...)
//! ```
//!
//! Veth pairs are created inside the namespaces (`ip -n A link add ... netns B`),
//! so nothing is ever attached to the root namespace. Interface names only need
//! to be unique per namespace, so they are the same in every topology.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{Proc, kill_child, run_bounded, run_ok};

/// Address of the client in the client namespace.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Address of the node on the client side: where clients send their requests.
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Address of the node on the pods side: the pods' default gateway.
pub const NODE_PODS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
/// Primary address of the pods namespace.
pub const PODS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);

/// Upper bound for the `ip` commands that build and remove the topology.
const IP_TIMEOUT: Duration = Duration::from_secs(20);

/// One of the three namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    /// Where clients (curl, sockets) run.
    Client,
    /// Where ingressd runs: the Kubernetes node.
    Node,
    /// Where the backends run.
    Pods,
}

impl Ns {
    fn index(self) -> usize {
        match self {
            Ns::Client => 0,
            Ns::Node => 1,
            Ns::Pods => 2,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Ns::Client => "client",
            Ns::Node => "node",
            Ns::Pods => "pods",
        }
    }
}

/// Builds a [`Topology`].
pub struct TopologyBuilder {
    prefix: Option<String>,
    replace_existing: bool,
    pod_addrs: Vec<Ipv4Addr>,
    log_dir: Option<PathBuf>,
}

impl TopologyBuilder {
    /// Fixed namespace name prefix (`<prefix>-client`, ...) instead of a unique one.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_owned());
        self
    }

    /// Delete namespaces of the same names (and their processes) left over from an earlier run.
    pub fn replace_existing(mut self, yes: bool) -> Self {
        self.replace_existing = yes;
        self
    }

    /// Extra addresses for the pods namespace (one per backend), from 198.18.1.0/24.
    pub fn pod_addrs(mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.pod_addrs.extend(addrs);
        self
    }

    /// Directory for the processes' log files (default: a temporary directory).
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Creates the namespaces, links, addresses and routes.
    pub fn build(self) -> Result<Topology> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        if COUNTER.load(Ordering::Relaxed) == 0 {
            remove_stale_namespaces();
        }
        let prefix = self.prefix.unwrap_or_else(|| {
            format!(
                "ingd-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )
        });
        let names = [Ns::Client, Ns::Node, Ns::Pods].map(|ns| format!("{prefix}-{}", ns.suffix()));
        if self.replace_existing {
            for name in &names {
                remove_netns(name);
            }
            // A killed earlier run may have left its daemon's pins behind.
            let _ =
                std::fs::remove_dir_all(Path::new(TEST_PIN_ROOT).join(&names[Ns::Node.index()]));
        }
        let (log_dir, tmp) = match self.log_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (dir, None)
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("ingressd-test-logs-")
                    .tempdir()
                    .context("creating log dir")?;
                (tmp.path().to_owned(), Some(tmp))
            }
        };
        // From here on Drop cleans up whatever was created, also on error.
        let topo = Topology {
            names,
            procs: Mutex::new(Vec::new()),
            log_dir,
            _tmp: tmp,
            created: Mutex::new(Vec::new()),
        };
        topo.create(&self.pod_addrs)?;
        Ok(topo)
    }
}

/// Three network namespaces joined by veth pairs; see the module docs.
///
/// Dropping it kills every process started through it and deletes the namespaces.
pub struct Topology {
    names: [String; 3],
    procs: Mutex<Vec<(String, Arc<Mutex<Child>>)>>,
    log_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    created: Mutex<Vec<String>>,
}

impl Topology {
    /// A builder with unique namespace names (`ingd-<pid>-<n>-client`, ...).
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            prefix: None,
            replace_existing: false,
            pod_addrs: Vec::new(),
            log_dir: None,
        }
    }

    /// The name of a namespace (as in `ip netns list`).
    pub fn name(&self, ns: Ns) -> &str {
        &self.names[ns.index()]
    }

    /// Where a daemon started in this topology pins its programs, links and
    /// maps: `/sys/fs/bpf/ingressd-tests/<node namespace>`.
    pub fn pin_root(&self) -> PathBuf {
        Path::new(TEST_PIN_ROOT).join(self.name(Ns::Node))
    }

    /// Where process logs go.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    fn create(&self, pod_addrs: &[Ipv4Addr]) -> Result<()> {
        let [client, node, pods] = &self.names;
        for name in &self.names {
            ip(&["netns", "add", name])?;
            self.created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name.clone());
        }
        ip(&[
            "-n", client, "link", "add", "eth0", "type", "veth", "peer", "name", "cl0", "netns",
            node,
        ])?;
        ip(&[
            "-n", node, "link", "add", "pd0", "type", "veth", "peer", "name", "eth0", "netns", pods,
        ])?;
        ip(&["-n", client, "addr", "add", "198.18.0.2/24", "dev", "eth0"])?;
        ip(&["-n", node, "addr", "add", "198.18.0.1/24", "dev", "cl0"])?;
        ip(&["-n", node, "addr", "add", "198.18.1.1/24", "dev", "pd0"])?;
        ip(&["-n", pods, "addr", "add", "198.18.1.2/24", "dev", "eth0"])?;
        for addr in pod_addrs {
            if addr.octets()[..3] != [198, 18, 1] {
                bail!("pod address {addr} is outside 198.18.1.0/24");
            }
            if *addr == PODS_ADDR || *addr == NODE_PODS_ADDR {
                continue;
            }
            ip(&[
                "-n",
                pods,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
        }
        for (ns, dev) in [
            (client, "eth0"),
            (node, "cl0"),
            (node, "pd0"),
            (pods, "eth0"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        for ns in &self.names {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", client, "route", "add", "default", "via", "198.18.0.1"])?;
        ip(&["-n", pods, "route", "add", "default", "via", "198.18.1.1"])?;
        run_ok(
            Command::new("ip").args([
                "netns",
                "exec",
                node,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ]),
            IP_TIMEOUT,
        )?;
        Ok(())
    }

    /// Starts a long-running process in `ns` (through `nsenter --net`, which switches
    /// only the network namespace, so bpffs pins stay visible).
    ///
    /// `name` labels its log files. The process is killed when the returned [`Proc`]
    /// or the topology is dropped.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: Ns,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Result<Proc> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name(ns)))
            .arg("--")
            .arg(program)
            .args(args);
        let proc = Proc::spawn(name, &mut cmd, &self.log_dir)?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_owned(), proc.shared_child()));
        Ok(proc)
    }

    /// Runs a short command in `ns` (through `ip netns exec`), bounded by `timeout`.
    pub fn exec<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: Ns,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
        timeout: Duration,
    ) -> Result<Output> {
        run_bounded(&mut self.exec_command(ns, program, args), timeout)
    }

    /// The `ip netns exec NAME program args...` command, for callers that need to adjust it.
    pub fn exec_command<S: AsRef<std::ffi::OsStr>>(
        &self,
        ns: Ns,
        program: impl AsRef<std::ffi::OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(ns)])
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs `f` on a thread that has joined `ns`. Sockets created there stay in `ns`
    /// and can be used from any thread afterwards.
    pub fn in_ns<T: Send + 'static>(
        &self,
        ns: Ns,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.name(ns));
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let handle = thread::spawn(move || -> Result<T> {
            // SAFETY: setns(2) only changes this thread's network namespace; the fd is
            // a valid open namespace file for the duration of the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            Ok(f())
        });
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }

    /// Opens a TCP connection from `ns` to `addr` (bounded by `timeout`).
    pub fn connect(&self, ns: Ns, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.in_ns(ns, move || TcpStream::connect_timeout(&addr, timeout))?
            .with_context(|| format!("connecting to {addr}"))
    }

    /// Waits until `addr` accepts TCP connections from `ns`, at most `timeout`.
    pub fn wait_tcp(&self, ns: Ns, addr: SocketAddr, timeout: Duration) -> Result<()> {
        self.in_ns(ns, move || {
            let deadline = Instant::now() + timeout;
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => {
                        bail!("{addr} did not accept within {timeout:?}: {e}")
                    }
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
        })?
    }

    /// Kills every process started through [`Topology::spawn`] that still runs.
    pub fn kill_all(&self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, child) in procs {
            kill_child(&mut child.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.kill_all();
        // Unpinning the links detaches the programs; the maps go with the
        // last reference.
        let _ = std::fs::remove_dir_all(self.pin_root());
        let created = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        for name in created.iter().rev() {
            remove_netns(name);
        }
    }
}

/// Parent of the per-topology pin directories (see [`Topology::pin_root`]).
pub const TEST_PIN_ROOT: &str = "/sys/fs/bpf/ingressd-tests";

/// Deletes `ingd-<pid>-...` namespaces whose test process is gone (killed before its
/// `Drop` ran, e.g. by a timeout), so they do not pile up across runs.
fn remove_stale_namespaces() {
    let stale = |name: &str| {
        name.strip_prefix("ingd-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
            })
    };
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) {
            remove_netns(&name);
        }
    }
    // Pins of daemons whose test process died with them.
    for entry in std::fs::read_dir(TEST_PIN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        if stale(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run_ok(Command::new("ip").args(args), IP_TIMEOUT).map(|_| ())
}

/// Deletes a namespace if it exists, first killing the processes inside it
/// (only namespaces this harness names, so only processes it started).
pub fn remove_netns(name: &str) {
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    if let Ok(out) = run_bounded(Command::new("ip").args(["netns", "pids", name]), IP_TIMEOUT) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    if let Err(e) = run_ok(Command::new("ip").args(["netns", "del", name]), IP_TIMEOUT) {
        eprintln!("warning: could not delete network namespace {name}: {e:#}");
    }
}
