//! The seed article's gateway, ready to test: topology, backends, config and a running
//! `ingressd --kernel off`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::Result;

use crate::config::{ConfigDir, SeedConfig};
use crate::proc::Proc;
use crate::topology::Topology;

/// First counter backend (`counter-a`).
pub const COUNTER_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// Second counter backend (`counter-b`).
pub const COUNTER_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
/// The TCP echo backend behind the `mysql` route.
pub const TCP_ECHO: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
/// Container port of the counter backends.
pub const COUNTER_PORT: u16 = 8080;

/// Everything one seed test needs. Fields drop in order: the daemon first (so its
/// logs print before the namespaces go), the topology last.
pub struct SeedGateway {
    /// `ingressd run --config <config> --kernel off`.
    pub daemon: Proc,
    /// The two counter backends.
    pub counters: Vec<Proc>,
    /// The TCP echo backend on 198.18.1.20:3306.
    pub echo: Proc,
    /// The config directory the daemon watches.
    pub config: ConfigDir,
    /// The namespaces.
    pub topo: Topology,
}

impl SeedGateway {
    /// The seed config without the HTTPS server (TLS comes later).
    pub fn seed_config() -> SeedConfig {
        SeedConfig {
            counter_backends: vec![COUNTER_A, COUNTER_B],
            counter_port: COUNTER_PORT,
            mysql_backends: vec![TCP_ECHO],
            tls_files: None,
        }
    }

    /// Everything the daemon logged (stderr) so far.
    pub fn log(&self) -> String {
        self.daemon.stderr()
    }

    /// Builds the topology, starts the backends, writes the seed config and starts
    /// `ingressd run --kernel off <extra...>`, waiting until it is ready.
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::start_with(&[], extra)
    }

    /// [`SeedGateway::start`] with more config files written next to the seed's.
    pub fn start_with(files: &[(String, String)], extra: &[&str]) -> Result<Self> {
        let topo = Topology::builder()
            .pod_addrs([COUNTER_A, COUNTER_B, TCP_ECHO])
            .build()?;
        let counters = vec![
            topo.start_counter(sock(COUNTER_A, COUNTER_PORT), "counter-a")?,
            topo.start_counter(sock(COUNTER_B, COUNTER_PORT), "counter-b")?,
        ];
        let echo = topo.start_tcp_echo(sock(TCP_ECHO, 3306), "tcp-echo")?;
        let config = ConfigDir::temp()?;
        config.write_all(&Self::seed_config().files())?;
        config.write_all(files)?;
        let mut args = vec!["--kernel", "off"];
        args.extend_from_slice(extra);
        let daemon = topo.start_ingressd(config.path(), &args)?;
        Ok(Self {
            daemon,
            counters,
            echo,
            config,
            topo,
        })
    }
}

/// `SocketAddr` from an IPv4 address and a port.
pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}
