//! Starting `ingressd` and the test backends inside a [`Topology`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bins::{ingressd_bin, testapp_bin};
use crate::proc::{Proc, run_bounded};
use crate::topology::{NODE_ADDR, Ns, Topology};

/// Where `ingressd` serves `/healthz/ready` by default, as seen from the node namespace.
pub const STATUS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15021));
/// Where `ingressd` serves its admin API by default (node namespace only).
pub const ADMIN_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 15000));
/// How long `ingressd` may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `198.18.0.1:port`: the node as the client namespace reaches it.
pub fn node(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(NODE_ADDR, port))
}

/// `http://198.18.0.1:port/path`.
pub fn node_url(port: u16, path: &str) -> String {
    format!("http://{}{path}", node(port))
}

impl Topology {
    /// Starts `ingressd run --config <config> <extra...>` in the node namespace and waits
    /// (bounded) until `/healthz/ready` answers 200.
    pub fn start_ingressd(&self, config: &Path, extra: &[&str]) -> Result<Proc> {
        self.start_ingressd_with(&ingressd_bin()?, config, extra)
    }

    /// [`Topology::start_ingressd`] with an explicit binary.
    pub fn start_ingressd_with(&self, bin: &Path, config: &Path, extra: &[&str]) -> Result<Proc> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), "--config".as_ref()];
        args.push(config.as_os_str());
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        // Each topology pins its kernel state in a directory of its own, so
        // daemons of tests running in parallel never adopt each other's maps;
        // dropping the topology removes it.
        let pin_root = self.pin_root();
        if !extra.contains(&"--bpffs-root") {
            args.push("--bpffs-root".as_ref());
            args.push(pin_root.as_os_str());
        }
        let daemon = self.spawn(Ns::Node, "ingressd", bin, args)?;
        self.wait_ready(&daemon, READY_TIMEOUT)?;
        Ok(daemon)
    }

    /// Waits until `daemon` answers 200 on `/healthz/ready`; fails early if it exits.
    pub fn wait_ready(&self, daemon: &Proc, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = daemon.try_status()? {
                bail!(
                    "ingressd exited ({status}) before it became ready\n{}",
                    daemon.log_tail(40)
                );
            }
            if let Ok(r) = self.http_get(Ns::Node, STATUS_ADDR, "/healthz/ready")
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ingressd not ready within {timeout:?}\n{}",
                    daemon.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `ingressd-testapp counter --listen <addr> --name <name>` in the pods
    /// namespace and waits until it accepts connections.
    pub fn start_counter(&self, addr: SocketAddr, name: &str) -> Result<Proc> {
        self.start_backend("counter", addr, name)
    }

    /// Starts `ingressd-testapp tcp-echo --listen <addr> --name <name>` in the pods
    /// namespace and waits until it accepts connections.
    pub fn start_tcp_echo(&self, addr: SocketAddr, name: &str) -> Result<Proc> {
        self.start_backend("tcp-echo", addr, name)
    }

    fn start_backend(&self, kind: &str, addr: SocketAddr, name: &str) -> Result<Proc> {
        self.start_backend_with(&testapp_bin()?, kind, addr, name)
    }

    /// Starts a testapp backend of `kind` from an explicit binary.
    pub fn start_backend_with(
        &self,
        bin: &Path,
        kind: &str,
        addr: SocketAddr,
        name: &str,
    ) -> Result<Proc> {
        let listen = addr.to_string();
        let proc = self.spawn(
            Ns::Pods,
            name,
            bin,
            [kind, "--listen", &listen, "--name", name],
        )?;
        self.wait_tcp(Ns::Pods, addr, Duration::from_secs(10))
            .with_context(|| format!("{name} did not start\n{}", proc.log_tail(20)))?;
        Ok(proc)
    }
}

/// Runs `ingressd <args>` (check, explain, dump: no namespace needed), bounded.
pub fn ingressd_cli(args: &[&str]) -> Result<Output> {
    ingressd_cli_with(&ingressd_bin()?, args)
}

/// [`ingressd_cli`] with an explicit binary.
pub fn ingressd_cli_with(bin: &Path, args: &[&str]) -> Result<Output> {
    run_bounded(Command::new(bin).args(args), Duration::from_secs(30))
}

/// `ingressd explain --config <config> --port <port> --host <host> --path <path>`, parsed.
pub fn explain(
    bin: &Path,
    config: &Path,
    port: u16,
    host: &str,
    path: &str,
) -> Result<serde_json::Value> {
    let config = config.to_string_lossy();
    let port = port.to_string();
    let out = ingressd_cli_with(
        bin,
        &[
            "explain", "--config", &config, "--port", &port, "--host", host, "--path", path,
        ],
    )?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "ingressd explain printed no JSON ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
