//! The seed's MySQL path end to end: the real `mariadb` client in the client namespace,
//! through the gateway's TCP server (nodePort 30306 and listener port 3306), to real
//! MariaDB servers (and TCP echo servers) in the pods namespace.
//!
//! The daemon runs with `--kernel $INGRESSD_TEST_KERNEL` (default `off`): the same
//! tests check the userspace TCP proxy and, with `on` (`cargo xtask test` runs this
//! file a second time that way), the in-kernel forwarding. Tests that only mean
//! something with the kernel path (daemon killed while flows continue, `ingressd
//! cleanup`, NodePort steering) force `--kernel on` whatever the variable says.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ingressd_tests::config::{COUNTER_HOST, ConfigDir, SeedConfig, service_with_endpoints};
use ingressd_tests::fixture::{COUNTER_A, COUNTER_PORT};
use ingressd_tests::kernel::{BpfIds, PinRoot};
use ingressd_tests::mariadb::{self, MariaDb, Session, Target};
use ingressd_tests::tcp::send_and_half_close;
use ingressd_tests::topology::NODE_PODS_ADDR;
use ingressd_tests::{
    KernelMode, Ns, Proc, Topology, ingressd_bin, kernel_mode, node, node_url, require_root,
    run_bounded, sock,
};

/// The MariaDB servers, `mysql-a` (server id 1, behind Service `mysql`) and `mysql-b`
/// (server id 2, behind Service `mysql-b`).
const MYSQL: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 1, 30), Ipv4Addr::new(198, 18, 1, 31)];
/// The TCP echo servers `echo-a` and `echo-b` (port 3306, Services of the same names).
const ECHO: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 1, 40), Ipv4Addr::new(198, 18, 1, 41)];
/// The client namespace's address, as the daemon should see it.
const CLIENT: &str = "198.18.0.2";
/// The gateway's TCP ports for MySQL: the nodePort and the listener (target) port.
const PORTS: [u16; 2] = [30306, 3306];
/// How long a config change may take to reach new connections (the contract says ~1 s).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Which backends a test needs.
#[derive(Clone, Copy, Default)]
struct Backends {
    /// How many of [`MYSQL`] to start (0..=2).
    mariadb: usize,
    /// How many of [`ECHO`] to start (0..=2).
    echo: usize,
    /// Start `counter-a` for the HTTP server.
    counter: bool,
    /// The `mysql` VirtualService's TCP route from the start, as (Service, weight);
    /// empty: the seed's route to Service `mysql` (mysql-a).
    route: &'static [(&'static str, u32)],
}

/// Topology, backends, config and a running daemon. Fields drop in order: the daemon
/// first, the namespaces after the processes in them, the pin directory (cleaned up
/// when the kernel path was used) last.
struct Gateway {
    daemon: Proc,
    mode: KernelMode,
    _backends: Vec<Proc>,
    dbs: Vec<MariaDb>,
    config: ConfigDir,
    topo: Topology,
    pins: PinRoot,
}

impl Gateway {
    /// The gateway in the kernel mode under test.
    fn start(backends: Backends) -> Result<Self> {
        Self::start_in(kernel_mode(), backends)
    }

    fn start_in(mode: KernelMode, backends: Backends) -> Result<Self> {
        let pins = PinRoot::new(mode)?;
        let topo = Topology::builder()
            .pod_addrs(MYSQL.into_iter().chain(ECHO).chain([COUNTER_A]))
            .build()?;
        let mut procs = Vec::new();
        for (i, addr) in ECHO.iter().enumerate().take(backends.echo) {
            procs.push(topo.start_tcp_echo(sock(*addr, 3306), ["echo-a", "echo-b"][i])?);
        }
        if backends.counter {
            procs.push(topo.start_counter(sock(COUNTER_A, COUNTER_PORT), "counter-a")?);
        }
        let mut dbs = Vec::new();
        for (i, addr) in MYSQL.iter().enumerate().take(backends.mariadb) {
            let id = u32::try_from(i + 1).context("server id")?;
            dbs.push(MariaDb::start(&topo, ["mysql-a", "mysql-b"][i], *addr, id)?);
        }
        let config = ConfigDir::temp()?;
        let seed = SeedConfig {
            counter_backends: if backends.counter {
                vec![COUNTER_A]
            } else {
                Vec::new()
            },
            counter_port: COUNTER_PORT,
            mysql_backends: vec![MYSQL[0]],
            tls_files: None,
        };
        config.write_all(&seed.files())?;
        config.write("mysql-b-service.yaml", &tcp_service("mysql-b", &[MYSQL[1]]))?;
        config.write("echo-a-service.yaml", &tcp_service("echo-a", &[ECHO[0]]))?;
        config.write("echo-b-service.yaml", &tcp_service("echo-b", &[ECHO[1]]))?;
        if !backends.route.is_empty() {
            config.write(
                "mysql-virtualservice.yaml",
                &tcp_virtual_service(backends.route),
            )?;
        }
        let daemon = start_daemon(&topo, &config, mode, &pins)?;
        Ok(Self {
            daemon,
            mode,
            _backends: procs,
            dbs,
            config,
            topo,
            pins,
        })
    }

    /// Points the `mysql` VirtualService's TCP route at `routes` (Service, weight).
    fn route(&self, routes: &[(&str, u32)]) -> Result<()> {
        self.config
            .write("mysql-virtualservice.yaml", &tcp_virtual_service(routes))?;
        Ok(())
    }

    /// One-shot `mariadb` client from the client namespace to the gateway's `port`.
    fn query(&self, port: u16, sql: &str) -> Result<Vec<Vec<String>>> {
        mariadb::query(&self.topo, Ns::Client, Target::new(node(port)), sql)
    }

    fn query_value(&self, port: u16, sql: &str) -> Result<String> {
        mariadb::query_value(&self.topo, Ns::Client, Target::new(node(port)), sql)
    }

    /// A long-lived `mariadb` session from the client namespace to the gateway's `port`.
    fn session(&self, port: u16) -> Result<Session> {
        Session::open(&self.topo, Ns::Client, Target::new(node(port)))
    }

    /// Polls new connections to `port` until they reach the MariaDB server with id
    /// `server_id`; any failed connection on the way is an error (a reload must not
    /// refuse or break new connections).
    fn wait_for_server(&self, port: u16, server_id: u32) -> Result<Duration> {
        let start = Instant::now();
        let want = server_id.to_string();
        let mut last = String::new();
        while start.elapsed() < RELOAD_TIMEOUT {
            last = self
                .query_value(port, "SELECT @@server_id")
                .context("a new connection during the reload")?;
            if last == want {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "new connections to port {port} did not reach server {server_id} within \
             {RELOAD_TIMEOUT:?}; the last reached server {last}"
        )
    }

    /// The daemon's access-log lines (`--access-log-format json`) for TCP connections
    /// to `upstream`.
    fn tcp_access_log(&self, upstream: &str) -> Vec<serde_json::Value> {
        self.daemon
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|j| j["upstream_host"] == upstream)
            .collect()
    }
}

/// `ingressd run --config DIR --kernel <mode> [--interfaces ...] [--bpffs-root DIR]
/// --access-log-format json`.
fn start_daemon(
    topo: &Topology,
    config: &ConfigDir,
    mode: KernelMode,
    pins: &PinRoot,
) -> Result<Proc> {
    let mut args = mode.daemon_args();
    args.extend(pins.args());
    args.extend(["--access-log-format".to_owned(), "json".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    topo.start_ingressd(config.path(), &args)
}

/// A Service `name` (port 3306 -> 3306) with an EndpointSlice of `addrs`.
fn tcp_service(name: &str, addrs: &[Ipv4Addr]) -> String {
    service_with_endpoints(name, "tcp-mysql", 3306, 3306, addrs)
}

/// The seed's `mysql` VirtualService with its TCP route to `routes`: `(Service in
/// default, weight)`; weights are left out for a single destination.
fn tcp_virtual_service(routes: &[(&str, u32)]) -> String {
    let mut yaml = String::from(
        "\
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: mysql
  namespace: default
spec:
  gateways:
  - default-gateway.istio-system.svc.cluster.local
  hosts:
  - '*'
  tcp:
  - match:
    - port: 3306
    route:
",
    );
    for (service, weight) in routes {
        yaml.push_str(&format!(
            "    - destination:\n        host: {service}.default.svc.cluster.local\n        \
             port:\n          number: 3306\n"
        ));
        if routes.len() > 1 {
            yaml.push_str(&format!("      weight: {weight}\n"));
        }
    }
    yaml
}

/// One exchange with a TCP echo server through the gateway, from inside the client
/// namespace: sends a line, half-closes, checks the echo, returns the server's name
/// from its `bye from NAME after N bytes` line.
fn echo_identity(port: u16, i: usize) -> Result<String> {
    let stream = std::net::TcpStream::connect_timeout(&node(port), Duration::from_secs(5))
        .with_context(|| format!("connection {i} to port {port}"))?;
    let data = format!("connection {i} to port {port}\n").into_bytes();
    let got = send_and_half_close(stream, data.clone(), Duration::from_secs(10), 4096)
        .with_context(|| format!("connection {i} to port {port}"))?;
    let text = String::from_utf8_lossy(&got);
    let Some(trailer) = got.strip_prefix(data.as_slice()) else {
        bail!("connection {i} to port {port}: echo differs: {text:?}");
    };
    let trailer = String::from_utf8_lossy(trailer);
    let expected_tail = format!(" after {} bytes\n", data.len());
    match trailer
        .strip_prefix("bye from ")
        .and_then(|t| t.strip_suffix(&expected_tail))
    {
        Some(name) => Ok(name.to_owned()),
        None => bail!("connection {i} to port {port}: unexpected trailer {trailer:?}"),
    }
}

/// The TCP peer address of this connection as the MariaDB server sees it.
const PEER_HOST_SQL: &str = "SELECT SUBSTRING_INDEX(HOST, ':', 1) \
     FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()";

#[test]
fn mariadb_queries_write_and_read_back_through_node_port_and_listener_port() {
    if !require_root("mariadb_queries_write_and_read_back_through_node_port_and_listener_port") {
        return;
    }
    let gw = Gateway::start(Backends {
        mariadb: 1,
        ..Backends::default()
    })
    .unwrap();
    gw.query(
        30306,
        "CREATE TABLE notes (id INT AUTO_INCREMENT PRIMARY KEY, via INT NOT NULL, \
         body MEDIUMTEXT NOT NULL)",
    )
    .unwrap();
    // 65,000 bytes: more than one TCP segment and socket buffer's worth each way.
    let unit = "abcdefghijklmnopqrstuvwxyz";
    let blob = unit.repeat(2500);
    for port in PORTS {
        let who = gw
            .query(port, "SELECT @@server_id, CURRENT_USER(), DATABASE()")
            .unwrap();
        assert_eq!(who, [["1", "lab@%", "lab"]], "port {port}");

        // A write, and a read back in a new connection.
        let rows = gw
            .query(
                port,
                &format!(
                    "INSERT INTO notes (via, body) VALUES ({port}, 'hello via {port}'), \
                     ({port}, '{blob}'); SELECT ROW_COUNT()"
                ),
            )
            .unwrap();
        assert_eq!(rows, [["2"]], "port {port}");
        let back = gw
            .query(
                port,
                &format!(
                    "SELECT LENGTH(body), body = REPEAT('{unit}', 2500) FROM notes \
                     WHERE via = {port} ORDER BY id"
                ),
            )
            .unwrap();
        assert_eq!(
            back,
            [
                vec![
                    format!("{}", "hello via ".len() + port.to_string().len()),
                    "0".to_owned()
                ],
                vec![blob.len().to_string(), "1".to_owned()],
            ],
            "port {port}"
        );
        let body = gw
            .query_value(
                port,
                &format!("SELECT body FROM notes WHERE via = {port} ORDER BY id DESC LIMIT 1"),
            )
            .unwrap();
        assert!(body == blob, "port {port}: the blob came back different");

        // The server sees the node (the gateway proxies, or the kernel SNATs to the
        // node's pods-side address), never the client.
        assert_eq!(
            gw.query_value(port, PEER_HOST_SQL).unwrap(),
            NODE_PODS_ADDR.to_string(),
            "port {port}"
        );
    }
    // Ground truth straight from the server, not through the gateway.
    let on_server = gw.dbs[0]
        .admin_query("SELECT via, COUNT(*) FROM notes GROUP BY via ORDER BY via")
        .unwrap();
    assert_eq!(on_server, [["3306", "2"], ["30306", "2"]]);

    // The daemon sees the client's real address for the connections it proxies; the
    // kernel path keeps these bytes (and their log lines) out of userspace.
    let upstream = gw.dbs[0].addr().to_string();
    match gw.mode {
        KernelMode::Off => {
            gw.daemon
                .wait_for_output(Duration::from_secs(5), "TCP access-log lines", |out, _| {
                    out.matches(&upstream).count() >= 10
                })
                .unwrap();
            let lines = gw.tcp_access_log(&upstream);
            let mut local_ports = BTreeSet::new();
            for line in &lines {
                let remote = line["downstream_remote_address"].as_str().unwrap_or("");
                assert!(remote.starts_with(&format!("{CLIENT}:")), "{line}");
                let local = line["downstream_local_address"].as_str().unwrap_or("");
                local_ports.insert(local.rsplit(':').next().unwrap_or("").to_owned());
                assert_eq!(
                    line["upstream_cluster"], "outbound|3306||mysql.default.svc.cluster.local",
                    "{line}"
                );
            }
            assert_eq!(
                local_ports,
                BTreeSet::from(["3306".to_owned(), "30306".to_owned()])
            );
        }
        KernelMode::On => {
            let lines = gw.tcp_access_log(&upstream);
            assert!(
                lines.is_empty(),
                "{} TCP connections went through the userspace proxy with --kernel on \
                 (the kernel should forward them); the first: {}",
                lines.len(),
                lines[0]
            );
        }
        KernelMode::Auto => {}
    }
}

#[test]
fn concurrent_mariadb_sessions_each_write_their_own_rows() {
    if !require_root("concurrent_mariadb_sessions_each_write_their_own_rows") {
        return;
    }
    const SESSIONS: usize = 8;
    const BATCHES: usize = 5;
    const ROWS_PER_BATCH: usize = 10;
    let gw = Gateway::start(Backends {
        mariadb: 1,
        ..Backends::default()
    })
    .unwrap();
    gw.query(
        3306,
        "CREATE TABLE ledger (session INT NOT NULL, n INT NOT NULL, via INT NOT NULL, \
         conn BIGINT NOT NULL, PRIMARY KEY (session, n))",
    )
    .unwrap();

    // Eight sessions open at the same time, half through each port.
    let mut sessions: Vec<(usize, u16, Session, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..SESSIONS)
            .map(|i| {
                let gw = &gw;
                s.spawn(move || {
                    let port = PORTS[i % 2];
                    let mut session = gw.session(port).unwrap();
                    let conn = session.query_value("SELECT CONNECTION_ID()").unwrap();
                    (i, port, session, conn)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let conns: BTreeSet<String> = sessions.iter().map(|(.., conn)| conn.clone()).collect();
    assert_eq!(
        conns.len(),
        SESSIONS,
        "one connection per session: {conns:?}"
    );
    let on_server: BTreeSet<String> = gw.dbs[0]
        .admin_query("SELECT ID FROM information_schema.PROCESSLIST")
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    assert!(
        conns.is_subset(&on_server),
        "not all sessions are open on the server at once: sessions {conns:?}, server {on_server:?}"
    );

    // Each writes its rows in several statements, interleaved with the others.
    let started = Instant::now();
    std::thread::scope(|s| {
        for (i, port, session, conn) in &mut sessions {
            s.spawn(move || {
                for batch in 0..BATCHES {
                    let values: Vec<String> = (0..ROWS_PER_BATCH)
                        .map(|k| {
                            let n = batch * ROWS_PER_BATCH + k;
                            format!("({i}, {n}, {port}, CONNECTION_ID())")
                        })
                        .collect();
                    session
                        .query(&format!(
                            "INSERT INTO ledger (session, n, via, conn) VALUES {}",
                            values.join(", ")
                        ))
                        .unwrap_or_else(|e| panic!("session {i}, batch {batch}: {e:#}"));
                }
                let mine = session
                    .query_value(&format!("SELECT COUNT(*) FROM ledger WHERE session = {i}"))
                    .unwrap();
                assert_eq!(mine, (BATCHES * ROWS_PER_BATCH).to_string(), "session {i}");
                // Still the same connection: nothing reconnected underneath.
                let still = session.query_value("SELECT CONNECTION_ID()").unwrap();
                assert_eq!(&still, conn, "session {i}");
            });
        }
    });
    eprintln!(
        "{SESSIONS} sessions wrote {} rows in {:?}",
        SESSIONS * BATCHES * ROWS_PER_BATCH,
        started.elapsed()
    );
    for (.., session, _) in sessions {
        session.close().unwrap();
    }

    // Every row is there, from the connection that wrote it: read through the gateway
    // in a new connection, and on the server itself.
    let expected: Vec<Vec<String>> = (0..SESSIONS)
        .map(|i| {
            vec![
                i.to_string(),
                PORTS[i % 2].to_string(),
                (BATCHES * ROWS_PER_BATCH).to_string(),
                "1".to_owned(),
            ]
        })
        .collect();
    let sql = "SELECT session, via, COUNT(*), COUNT(DISTINCT conn) FROM ledger \
               GROUP BY session, via ORDER BY session";
    assert_eq!(gw.query(30306, sql).unwrap(), expected);
    assert_eq!(gw.dbs[0].admin_query(sql).unwrap(), expected);
}

#[test]
fn weighted_tcp_route_splits_connections_80_20() {
    if !require_root("weighted_tcp_route_splits_connections_80_20") {
        return;
    }
    /// Connections, spread over [`THREADS`] threads and both ports.
    const CONNECTIONS: usize = 400;
    const THREADS: usize = 4;
    /// Allowed distance of echo-a's share from 80 %, in percentage points. The share
    /// of 400 independent 80/20 choices has a standard deviation of 2 points, so this
    /// is 4 standard deviations (a false failure less than once in 10,000 runs).
    const TOLERANCE_PP: f64 = 8.0;
    let gw = Gateway::start(Backends {
        echo: 2,
        route: &[("echo-a", 80), ("echo-b", 20)],
        ..Backends::default()
    })
    .unwrap();

    let started = Instant::now();
    // Threads spawned inside `in_ns` inherit its network namespace.
    let counts: BTreeMap<String, usize> = gw
        .topo
        .in_ns(Ns::Client, || {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        s.spawn(move || {
                            (0..CONNECTIONS / THREADS)
                                .map(|k| {
                                    let i = t * CONNECTIONS / THREADS + k;
                                    echo_identity(PORTS[i % 2], i)
                                })
                                .collect::<Result<Vec<String>>>()
                        })
                    })
                    .collect();
                let mut counts = BTreeMap::new();
                for h in handles {
                    for name in h.join().expect("connection thread panicked")? {
                        *counts.entry(name).or_insert(0) += 1;
                    }
                }
                Ok::<_, anyhow::Error>(counts)
            })
        })
        .unwrap()
        .unwrap();
    let a = counts.get("echo-a").copied().unwrap_or(0);
    let b = counts.get("echo-b").copied().unwrap_or(0);
    assert_eq!(
        a + b,
        CONNECTIONS,
        "connections reached other backends: {counts:?}"
    );
    let share = 100.0 * a as f64 / CONNECTIONS as f64;
    eprintln!(
        "{CONNECTIONS} connections in {:?}: echo-a {a} ({share:.1} %), echo-b {b}",
        started.elapsed()
    );
    assert!(
        (share - 80.0).abs() <= TOLERANCE_PP,
        "echo-a got {share:.1} % of {CONNECTIONS} connections, expected 80 ± {TOLERANCE_PP} \
         ({counts:?})"
    );
}

#[test]
fn route_change_moves_new_connections_while_open_sessions_stay() {
    if !require_root("route_change_moves_new_connections_while_open_sessions_stay") {
        return;
    }
    let gw = Gateway::start(Backends {
        mariadb: 2,
        ..Backends::default()
    })
    .unwrap();
    for db in &gw.dbs {
        db.admin_query("CREATE TABLE steps (step INT NOT NULL)")
            .unwrap();
    }

    // A session on mysql-a (the seed's route).
    let mut on_a = gw.session(30306).unwrap();
    assert_eq!(on_a.query_value("SELECT @@server_id").unwrap(), "1");
    let conn_a = on_a.query_value("SELECT CONNECTION_ID()").unwrap();
    on_a.query("INSERT INTO steps VALUES (1)").unwrap();

    // 1. The route moves to another Service: new connections go to mysql-b.
    gw.route(&[("mysql-b", 100)]).unwrap();
    let took = gw.wait_for_server(30306, 2).unwrap();
    eprintln!("route change reached new connections after {took:?}");
    for port in PORTS {
        for _ in 0..3 {
            assert_eq!(
                gw.query_value(port, "SELECT @@server_id").unwrap(),
                "2",
                "port {port}"
            );
        }
    }
    // ... while the open session still talks to mysql-a, on the same connection.
    assert_eq!(on_a.query_value("SELECT @@server_id").unwrap(), "1");
    assert_eq!(on_a.query_value("SELECT CONNECTION_ID()").unwrap(), conn_a);
    on_a.query("INSERT INTO steps VALUES (2)").unwrap();
    assert_eq!(on_a.query_value("SELECT COUNT(*) FROM steps").unwrap(), "2");

    // 2. The endpoints of the route's Service change: mysql-b leaves, mysql-a joins.
    let mut on_b = gw.session(3306).unwrap();
    assert_eq!(on_b.query_value("SELECT @@server_id").unwrap(), "2");
    let conn_b = on_b.query_value("SELECT CONNECTION_ID()").unwrap();
    gw.config
        .write("mysql-b-service.yaml", &tcp_service("mysql-b", &[MYSQL[0]]))
        .unwrap();
    let took = gw.wait_for_server(3306, 1).unwrap();
    eprintln!("endpoint change reached new connections after {took:?}");
    for port in PORTS {
        assert_eq!(
            gw.query_value(port, "SELECT @@server_id").unwrap(),
            "1",
            "port {port}"
        );
    }
    // The removed endpoint's established session continues until it closes.
    assert_eq!(on_b.query_value("SELECT @@server_id").unwrap(), "2");
    assert_eq!(on_b.query_value("SELECT CONNECTION_ID()").unwrap(), conn_b);
    on_b.query("INSERT INTO steps VALUES (3)").unwrap();
    assert_eq!(on_a.query_value("SELECT CONNECTION_ID()").unwrap(), conn_a);
    on_a.query("INSERT INTO steps VALUES (4)").unwrap();
    on_a.close().unwrap();
    on_b.close().unwrap();

    assert_eq!(
        gw.dbs[0]
            .admin_query("SELECT step FROM steps ORDER BY step")
            .unwrap(),
        [["1"], ["2"], ["4"]]
    );
    assert_eq!(
        gw.dbs[1].admin_query("SELECT step FROM steps").unwrap(),
        [["3"]]
    );
}

// ---- Tests of the in-kernel TCP path (issue 3): `--kernel on` whatever the env says.

#[test]
fn kill_9_keeps_kernel_flows_and_forwarding_then_restart_adopts_them() {
    if !require_root("kill_9_keeps_kernel_flows_and_forwarding_then_restart_adopts_them") {
        return;
    }
    let mut gw = Gateway::start_in(
        KernelMode::On,
        Backends {
            mariadb: 1,
            ..Backends::default()
        },
    )
    .unwrap();
    gw.query(30306, "CREATE TABLE beats (n INT NOT NULL)")
        .unwrap();
    let mut session = gw.session(30306).unwrap();
    let conn = session.query_value("SELECT CONNECTION_ID()").unwrap();
    let before = BpfIds::of_process(gw.daemon.pid()).unwrap();
    assert!(
        !before.programs.is_empty(),
        "with --kernel on the daemon holds no eBPF program"
    );

    // New connections keep arriving (bounded: at most 100, 50 ms apart) while the
    // daemon is killed and restarted; every one of them must be forwarded.
    let stop = AtomicBool::new(false);
    let topo = &gw.topo;
    let (results, daemon) = std::thread::scope(|s| {
        let arrivals = s.spawn(|| {
            let mut results = Vec::new();
            for i in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let target = Target::new(node(PORTS[i % 2]));
                results.push(mariadb::query_value(
                    topo,
                    Ns::Client,
                    target,
                    "SELECT @@server_id",
                ));
                std::thread::sleep(Duration::from_millis(50));
            }
            results
        });
        std::thread::sleep(Duration::from_millis(300));
        gw.daemon.signal(libc::SIGKILL).unwrap();
        assert!(
            gw.daemon
                .wait_timeout(Duration::from_secs(5))
                .unwrap()
                .is_some()
        );

        // The daemon is gone: the open session and new connections still work.
        let still = session
            .query_value("SELECT CONNECTION_ID()")
            .context("the session open while the daemon was killed")
            .unwrap();
        assert_eq!(still, conn);
        session.query("INSERT INTO beats VALUES (1)").unwrap();
        for port in PORTS {
            assert_eq!(
                gw.query_value(port, "SELECT @@server_id").unwrap(),
                "1",
                "port {port}"
            );
        }
        assert!(
            !gw.pins.pins().unwrap().is_empty(),
            "nothing pinned under the pin directory"
        );
        std::thread::sleep(Duration::from_millis(500));

        // Restarted, it adopts the pinned state without disturbing the flows.
        let daemon = start_daemon(topo, &gw.config, KernelMode::On, &gw.pins).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (arrivals.join().unwrap(), daemon)
    });
    let after = BpfIds::of_process(daemon.pid()).unwrap();
    gw.daemon = daemon;
    let failed: Vec<_> = results
        .iter()
        .filter(|r| r.as_ref().map_or(true, |v| v != "1"))
        .collect();
    assert!(
        results.len() >= 10,
        "too few connections tried: {}",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} new connections failed: {failed:?}",
        failed.len(),
        results.len()
    );
    assert!(
        !before.maps.is_disjoint(&after.maps),
        "the restarted daemon created new maps instead of adopting the pinned ones \
         (before {before:?}, after {after:?})"
    );
    let still = session
        .query_value("SELECT CONNECTION_ID()")
        .context("the session open while the daemon restarted")
        .unwrap();
    assert_eq!(still, conn);
    session.query("INSERT INTO beats VALUES (2)").unwrap();
    assert_eq!(
        session.query_value("SELECT COUNT(*) FROM beats").unwrap(),
        "2"
    );
    session.close().unwrap();
}

/// Waits (bounded) until none of `ids` is loaded and nothing is pinned; the kernel frees
/// unpinned, unreferenced objects asynchronously.
fn wait_until_gone(ids: &BpfIds, pins: &PinRoot, after: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = ids.still_loaded()?;
        let pinned = pins.pins()?;
        if left.is_empty() && pinned.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("after {after}: still loaded {left:?}, still pinned {pinned:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cleanup_and_kernel_off_leave_no_program_link_or_pin() {
    if !require_root("cleanup_and_kernel_off_leave_no_program_link_or_pin") {
        return;
    }
    let mut gw = Gateway::start_in(
        KernelMode::On,
        Backends {
            echo: 1,
            route: &[("echo-a", 100)],
            ..Backends::default()
        },
    )
    .unwrap();
    let echo = |port| {
        gw.topo
            .in_ns(Ns::Client, move || echo_identity(port, 0))
            .unwrap()
    };
    assert_eq!(echo(30306).unwrap(), "echo-a");

    // 1. Killed (pins stay), then `ingressd run --kernel off` removes everything.
    let ids = BpfIds::of_process(gw.daemon.pid()).unwrap();
    assert!(
        !ids.programs.is_empty(),
        "with --kernel on the daemon holds no eBPF program"
    );
    gw.daemon.signal(libc::SIGKILL).unwrap();
    gw.daemon.wait_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        !gw.pins.pins().unwrap().is_empty(),
        "nothing pinned after kill -9"
    );
    gw.daemon = start_daemon(&gw.topo, &gw.config, KernelMode::Off, &gw.pins).unwrap();
    wait_until_gone(&ids, &gw.pins, "ingressd run --kernel off").unwrap();
    // It serves the route in userspace instead.
    assert_eq!(echo(30306).unwrap(), "echo-a");
    gw.daemon.stop(Duration::from_secs(10));

    // 2. Killed again, then `ingressd cleanup` removes everything, and a second run
    //    finds nothing to do.
    gw.daemon = start_daemon(&gw.topo, &gw.config, KernelMode::On, &gw.pins).unwrap();
    let ids = BpfIds::of_process(gw.daemon.pid()).unwrap();
    assert!(!ids.programs.is_empty());
    gw.daemon.signal(libc::SIGKILL).unwrap();
    gw.daemon.wait_timeout(Duration::from_secs(5)).unwrap();
    let bin = ingressd_bin().unwrap();
    for run in 1..=2 {
        // Like the daemon, through `nsenter --net`: `ip netns exec` would remount /sys
        // and hide the pins, and cleanup would succeed with nothing to do.
        let mut cleanup = Command::new("nsenter");
        cleanup
            .arg(format!("--net=/run/netns/{}", gw.topo.name(Ns::Node)))
            .arg("--")
            .arg(&bin)
            .arg("cleanup")
            .args(gw.pins.args());
        let out = run_bounded(&mut cleanup, Duration::from_secs(30)).unwrap();
        assert!(
            out.status.success(),
            "ingressd cleanup (run {run}) failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until_gone(&ids, &gw.pins, &format!("ingressd cleanup (run {run})")).unwrap();
    }
}

#[test]
fn http_node_port_is_steered_to_the_listener_with_the_client_address() {
    if !require_root("http_node_port_is_steered_to_the_listener_with_the_client_address") {
        return;
    }
    let gw = Gateway::start_in(
        KernelMode::On,
        Backends {
            counter: true,
            ..Backends::default()
        },
    )
    .unwrap();
    let r = gw
        .topo
        .get(&node_url(30080, "/steered"), COUNTER_HOST)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let json = r.json().unwrap();
    assert_eq!(json["instance"], "counter-a");
    let xff = json["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default();
    assert!(xff.contains(CLIENT), "x-forwarded-for: {xff}");

    // The daemon saw the client's own address and the nodePort it connected to...
    gw.daemon
        .wait_for_output(Duration::from_secs(5), "the access-log line", |out, _| {
            out.contains("/steered")
        })
        .unwrap();
    let stdout = gw.daemon.stdout();
    let line: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|j| j["path"] == "/steered")
        .unwrap();
    let remote = line["downstream_remote_address"].as_str().unwrap_or("");
    assert!(remote.starts_with(&format!("{CLIENT}:")), "{line}");
    assert_eq!(
        line["downstream_local_address"], "198.18.0.1:30080",
        "{line}"
    );
    // ... without a userspace socket on the nodePort: the kernel steered it.
    let ss = gw
        .topo
        .exec(
            Ns::Node,
            "ss",
            ["-Htln", "sport = :30080"],
            Duration::from_secs(10),
        )
        .unwrap();
    let listeners = String::from_utf8_lossy(&ss.stdout);
    assert!(
        listeners.trim().is_empty(),
        "something listens on 30080: {listeners}"
    );
}
