//! Shared fixtures of the kernel datapath tests (`kernel_datapath.rs` for
//! `tc_ingress`, `kernel_xdp.rs` for `xdp_ingress`): namespaces and the
//! node/peer topology, the loaded object with typed map access, one runner
//! for both hooks, and the Katran-style case table both programs must pass
//! with the same verdicts, bytes and reason counters.
//!
//! ```text
//!              ns <tag>-node (forwarding on)                      ns <tag>-peer
//! client  <tag>c 198.18.0.1/24  02:00:00:00:00:01  ----  veth peer (client side)
//!         neigh 198.18.0.2 (client)     02:00:00:00:00:02
//! pods    <tag>p 198.18.1.1/24  02:00:00:00:01:01  ----  veth peer (pods side)
//!         neigh 198.18.1.20 (backend)   02:00:00:00:01:14
//!         neigh 198.18.1.21 (backend B) 02:00:00:00:01:15
//!         (198.18.1.30: routed, no neighbour entry)
//! extra   <tag>x 198.18.2.1/24  02:00:00:00:02:01  ----  veth peer (no SNAT address)
//!         neigh 198.18.2.20             02:00:00:00:02:14
//! ```
#![allow(
    dead_code,
    reason = "each test binary uses its own subset of the shared fixtures"
)]

pub mod packets;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{Array, HashMap, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp};
use ingress_common::lb::{
    BACKEND_ACTIVE, BACKEND_STATS_MAP, BACKENDS_MAP, Backend, CONFIG_MAP, CONNTRACK_MAP, FLOW_FIN,
    FLOW_REPLY, FLOW_RST, FRONTENDS_MAP, FlowKey, FlowState, Frontend, FrontendKey, LbConfig,
    MAGLEV_MAP, MAGLEV_SIZE, PROTO_TCP, REASONS_MAP, Reason, SERVICE_STATS_MAP, SNAT_ADDRS_MAP,
    TC_PROGRAM, TrafficCounters, XDP_PROGRAM, flow_hash, maglev_index,
};
use packets::{ACK, FIN, Mac, PSH, RST, SYN, Tcp};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 2];
pub const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_C_MAC: Mac = [2, 0, 0, 0, 0, 1];
pub const NODE_PODS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const NODE_P_MAC: Mac = [2, 0, 0, 0, 1, 1];
pub const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
pub const BACKEND_MAC: Mac = [2, 0, 0, 0, 1, 0x14];
pub const BACKEND_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);
pub const BACKEND_B_MAC: Mac = [2, 0, 0, 0, 1, 0x15];
pub const NODE_X: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const NODE_X_MAC: Mac = [2, 0, 0, 0, 2, 1];
pub const BACKEND_X: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 20);
pub const BACKEND_X_MAC: Mac = [2, 0, 0, 0, 2, 0x14];
/// On the pods subnet, without a neighbour entry.
pub const BACKEND_NO_NEIGH: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 30);
/// In the test range, but no route leads there.
pub const UNROUTED: Ipv4Addr = Ipv4Addr::new(198, 19, 77, 7);

pub const NODE_PORT: u16 = 30_306;
pub const BACKEND_PORT: u16 = 3306;
/// Wildcard-address frontends, one per failure mode.
pub const PORT_EMPTY_TABLE: u16 = 30_307;
pub const PORT_INACTIVE_BACKEND: u16 = 30_308;
pub const PORT_NO_SNAT_ADDRESS: u16 = 30_309;
pub const PORT_NO_ROUTE: u16 = 30_310;
pub const PORT_NO_NEIGH: u16 = 30_311;

pub const CLIENT_PORT: u16 = 40_001;
pub const CLIENT_PORT_OPTIONS: u16 = 40_002;

/// The forwarding program under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `tc_ingress`, run with an `__sk_buff` context.
    Tc,
    /// `xdp_ingress`, run with an `xdp_md` context.
    Xdp,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Hook::Tc => TC_PROGRAM,
            Hook::Xdp => XDP_PROGRAM,
        }
    }
}

/// Verdicts, whatever the hook calls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// TC: `TC_ACT_UNSPEC` (-1), tcx "next"; XDP: `XDP_PASS`. The stack
    /// gets the packet.
    Pass,
    /// `TC_ACT_SHOT` / `XDP_DROP`.
    Drop,
    /// `TC_ACT_REDIRECT` / `XDP_REDIRECT`.
    Redirect,
}

impl Verdict {
    /// The program's return value as `BPF_PROG_TEST_RUN` reports it.
    pub fn code(self, hook: Hook) -> u32 {
        match (hook, self) {
            (Hook::Tc, Verdict::Pass) => u32::MAX,
            (Hook::Tc, Verdict::Drop) => 2,
            (Hook::Tc, Verdict::Redirect) => 7,
            (Hook::Xdp, Verdict::Drop) => 1,
            (Hook::Xdp, Verdict::Pass) => 2,
            (Hook::Xdp, Verdict::Redirect) => 4,
        }
    }
}

/// The 4 bytes of XDP metadata `xdp_ingress` puts on a packet it counted
/// and passed (`PASSED_MAGIC` in `ingress-ebpf/src/xdp_ingress.rs`), as
/// they appear in front of the frame in `BPF_PROG_TEST_RUN`'s output.
pub const XDP_PASSED_MARK: [u8; 4] = 0x1d5e_0a55u32.to_ne_bytes();

pub enum Expect {
    /// The output frame equals the input.
    Unchanged,
    /// The output frame equals these bytes (and its checksums verify).
    Frame(Vec<u8>),
}

pub struct Case {
    pub description: &'static str,
    /// Interface the packet arrives on.
    pub ifindex: u32,
    pub input: Vec<u8>,
    pub verdict: Verdict,
    pub output: Expect,
    pub reason: Reason,
}

/// Deletes the namespaces (and the veths in them) when dropped, also when
/// the test panics.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(status.success(), "ip {args:?} failed: {status}");
}

/// Runs `f` on a new thread that has joined network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Starts an echo server on BACKEND:BACKEND_PORT in `ns` that serves
/// `rounds` connections one after the other, each echoed until EOF, and
/// returns their peer addresses; returns once it listens.
pub fn spawn_echo_server(
    ns: &str,
    rounds: usize,
) -> std::thread::JoinHandle<Vec<std::net::SocketAddr>> {
    use std::io::{Read as _, Write as _};
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = spawn_in_netns(ns, move || {
        let listener =
            std::net::TcpListener::bind((BACKEND, BACKEND_PORT)).expect("binding the echo server");
        ready_tx.send(()).expect("signalling readiness");
        let mut peers = Vec::new();
        for _ in 0..rounds {
            let (mut stream, peer) = listener.accept().expect("accepting");
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf).expect("echo read");
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).expect("echo write");
            }
            peers.push(peer);
        }
        peers
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("echo server ready");
    server
}

/// Starts `f` on a new thread that has joined network namespace `ns`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a valid namespace fd; it only affects this thread,
        // which exists for this closure alone.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// `false` (after a loud line) when the test must be skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("INGRESSD_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("\n*** SKIPPED {test}: not root (INGRESSD_SKIP_ROOT_TESTS=1) ***\n");
        return false;
    }
    panic!(
        "{test} needs root (network namespaces, BPF); run as root or set INGRESSD_SKIP_ROOT_TESTS=1 to skip"
    );
}

/// A tag unique to this test process and call, short enough for interface
/// names (15 bytes at most): 3 letters + 6 hex digits + 1 suffix.
/// The client -- node -- pods namespaces of the real-TCP tests, named after
/// `t`: veths `<t>C`/`<t>c` (client/node) and `<t>p`/`<t>P` (node/pods) with
/// CLIENT, NODE, NODE_PODS and BACKEND on them, all up. Returns the guard
/// that deletes them, and the client, node and pods namespace names.
pub fn three_namespaces(t: &str) -> (Namespaces, String, String, String) {
    let names = ["client", "node", "pods"].map(|n| format!("{t}-{n}"));
    let namespaces = Namespaces(names.to_vec());
    let [client_ns, node_ns, pods_ns] = names;
    for ns in &namespaces.0 {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    for (outer_ns, outer, outer_addr, node_dev, node_addr) in [
        (&client_ns, format!("{t}C"), CLIENT, format!("{t}c"), NODE),
        (
            &pods_ns,
            format!("{t}P"),
            BACKEND,
            format!("{t}p"),
            NODE_PODS,
        ),
    ] {
        ip(&[
            "link", "add", &node_dev, "netns", &node_ns, "type", "veth", "peer", "name", &outer,
            "netns", outer_ns,
        ]);
        let node_cidr = format!("{node_addr}/24");
        let outer_cidr = format!("{outer_addr}/24");
        ip(&["-n", &node_ns, "addr", "add", &node_cidr, "dev", &node_dev]);
        ip(&["-n", outer_ns, "addr", "add", &outer_cidr, "dev", &outer]);
        ip(&["-n", &node_ns, "link", "set", &node_dev, "up"]);
        ip(&["-n", outer_ns, "link", "set", &outer, "up"]);
    }
    (namespaces, client_ns, node_ns, pods_ns)
}

pub fn tag(prefix: &str) -> String {
    format!(
        "{prefix}{:06x}",
        (std::process::id()
            ^ std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos()))
            & 0xff_ffff
    )
}

pub fn ifindex(name: &str) -> u32 {
    let c_name = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}

pub fn mac(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An address as the program stores it: network order in a native `u32`.
pub fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub fn flow_key(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16) -> FlowKey {
    FlowKey {
        saddr_be: be(saddr),
        daddr_be: be(daddr),
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

/// The SNAT port the program picks for a new connection when the range is
/// free: the first probe, `min + flow_hash(client, backend) % range`.
pub fn first_snat_port(client: (Ipv4Addr, u16), backend: (Ipv4Addr, u16), config: LbConfig) -> u16 {
    let range = u32::from(config.snat_port_max - config.snat_port_min) + 1;
    let hash = flow_hash(
        be(client.0),
        be(backend.0),
        client.1.to_be(),
        backend.1.to_be(),
    );
    config.snat_port_min + (hash % range) as u16
}

/// The loaded object with the program of `hook` ready for test runs, and
/// typed access to its maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub hook: Hook,
}

/// Size of `struct __sk_buff` (6.x). BPF_PROG_TEST_RUN accepts it as the
/// context; only a few fields may be set.
pub const SKB_CTX_LEN: usize = 192;
pub const SKB_INGRESS_IFINDEX_OFF: usize = 36;
pub const SKB_IFINDEX_OFF: usize = 40;
/// Size of `struct xdp_md` and the offset of `ingress_ifindex` in it.
pub const XDP_MD_LEN: usize = 24;
pub const XDP_MD_DATA_END_OFF: usize = 4;
pub const XDP_MD_INGRESS_IFINDEX_OFF: usize = 12;

impl Datapath {
    /// Loads the object and the program of `hook` (not attached).
    pub fn load(hook: Hook) -> Self {
        let mut ebpf = Ebpf::load(ingress_userspace::kernel::object()).expect("parsing the object");
        let name = hook.program();
        let program = ebpf.program_mut(name).expect("program in the object");
        let (loaded, info) = match hook {
            Hook::Tc => {
                let program: &mut SchedClassifier =
                    program.try_into().expect("tc_ingress is a classifier");
                (program.load(), program.info())
            }
            Hook::Xdp => {
                let program: &mut Xdp = program.try_into().expect("xdp_ingress is XDP");
                (program.load(), program.info())
            }
        };
        if let Err(e) = loaded {
            panic!("the verifier rejected {name}: {e:#?}");
        }
        if let Ok(info) = info {
            eprintln!(
                "{name}: {} instructions verified, {} translated",
                info.verified_instruction_count().unwrap_or(0),
                info.size_translated().unwrap_or(0) / 8
            );
        }
        Datapath { ebpf, hook }
    }

    /// Runs the program once on `input` arriving on `ifindex`.
    pub fn run(
        &self,
        ifindex: u32,
        input: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let program = self
            .ebpf
            .program(self.hook.program())
            .expect("program in the object");
        let mut out = vec![0u8; input.len() + 256];
        let result = match self.hook {
            Hook::Tc => {
                let program: &SchedClassifier =
                    program.try_into().expect("tc_ingress is a classifier");
                let mut ctx = [0u8; SKB_CTX_LEN];
                ctx[SKB_INGRESS_IFINDEX_OFF..][..4].copy_from_slice(&ifindex.to_ne_bytes());
                ctx[SKB_IFINDEX_OFF..][..4].copy_from_slice(&ifindex.to_ne_bytes());
                program.test_run(TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::new()
                })?
            }
            Hook::Xdp => {
                let program: &Xdp = program.try_into().expect("xdp_ingress is XDP");
                // struct xdp_md: data (0: no metadata in front), data_end
                // (must be the frame's length), data_meta (0),
                // ingress_ifindex, rx_queue_index, egress_ifindex.
                let mut ctx = [0u8; XDP_MD_LEN];
                let len = u32::try_from(input.len()).expect("a test frame fits in u32");
                ctx[XDP_MD_DATA_END_OFF..][..4].copy_from_slice(&len.to_ne_bytes());
                ctx[XDP_MD_INGRESS_IFINDEX_OFF..][..4].copy_from_slice(&ifindex.to_ne_bytes());
                program.test_run(TestRunOptions {
                    data_in: Some(input),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    ..TestRunOptions::new()
                })?
            }
        };
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    pub fn reasons(&self) -> Vec<u64> {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(REASONS_MAP).expect(REASONS_MAP))
                .expect("LB_REASONS is a per-CPU array");
        Reason::ALL
            .iter()
            .map(|r| {
                array
                    .get(&(*r as u32), 0)
                    .expect("reading LB_REASONS")
                    .iter()
                    .sum()
            })
            .collect()
    }

    pub fn traffic(&self, map: &str, index: u32) -> TrafficCounters {
        let array: PerCpuArray<_, TrafficCounters> =
            PerCpuArray::try_from(self.ebpf.map(map).expect("stats map"))
                .expect("stats map is a per-CPU array");
        array.get(&index, 0).expect("reading stats").iter().fold(
            TrafficCounters::default(),
            |sum, c| TrafficCounters {
                packets: sum.packets + c.packets,
                bytes: sum.bytes + c.bytes,
                connections: sum.connections + c.connections,
            },
        )
    }

    pub fn flow(&self, key: &FlowKey) -> Option<FlowState> {
        let map: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.ebpf.map(CONNTRACK_MAP).expect(CONNTRACK_MAP))
                .expect("LB_CONNTRACK is a hash map");
        map.get(key, 0).ok()
    }

    pub fn set_frontend(&mut self, addr: Ipv4Addr, port: u16, service_id: u32, table: u32) {
        let mut map: HashMap<_, FrontendKey, Frontend> =
            HashMap::try_from(self.ebpf.map_mut(FRONTENDS_MAP).expect(FRONTENDS_MAP))
                .expect("LB_FRONTENDS is a hash map");
        let key = FrontendKey {
            addr_be: be(addr),
            port_be: port.to_be(),
            proto: PROTO_TCP,
            _pad: 0,
        };
        let frontend = Frontend {
            service_id,
            table,
            flags: 0,
            _pad: 0,
        };
        map.insert(key, frontend, 0).expect("writing LB_FRONTENDS");
    }

    pub fn set_backend(&mut self, id: u32, addr: Ipv4Addr, port: u16, flags: u16) {
        let mut map: Array<_, Backend> =
            Array::try_from(self.ebpf.map_mut(BACKENDS_MAP).expect(BACKENDS_MAP))
                .expect("LB_BACKENDS is an array");
        let backend = Backend {
            addr_be: be(addr),
            port_be: port.to_be(),
            flags,
        };
        map.set(id, backend, 0).expect("writing LB_BACKENDS");
    }

    /// Points every slot of one Maglev table at `backend_id`.
    pub fn fill_maglev(&mut self, service_id: u32, table: u32, backend_id: u32) {
        let mut map: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(MAGLEV_MAP).expect(MAGLEV_MAP))
                .expect("LB_MAGLEV is an array");
        for slot in 0..MAGLEV_SIZE {
            map.set(maglev_index(service_id, table, slot), backend_id, 0)
                .expect("writing LB_MAGLEV");
        }
    }

    pub fn set_snat_addr(&mut self, ifindex: u32, addr: Ipv4Addr) {
        let mut map: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(SNAT_ADDRS_MAP).expect(SNAT_ADDRS_MAP))
                .expect("LB_SNAT_ADDRS is a hash map");
        map.insert(ifindex, be(addr), 0)
            .expect("writing LB_SNAT_ADDRS");
    }

    pub fn set_config(&mut self, config: LbConfig) {
        let mut map: Array<_, LbConfig> =
            Array::try_from(self.ebpf.map_mut(CONFIG_MAP).expect(CONFIG_MAP))
                .expect("LB_CONFIG is an array");
        map.set(0, config, 0).expect("writing LB_CONFIG");
    }

    /// Runs the cases in order; each must give its verdict, its output and
    /// move exactly its reason counter by one.
    pub fn check(&self, cases: &[Case]) {
        for case in cases {
            let before = self.reasons();
            let (verdict, output) = self
                .run(case.ifindex, &case.input)
                .unwrap_or_else(|e| panic!("{}: test run failed: {e:#?}", case.description));
            let after = self.reasons();
            let moved: Vec<&str> = Reason::ALL
                .iter()
                .enumerate()
                .filter(|(index, _)| after[*index] != before[*index])
                .map(|(_, reason)| reason.label())
                .collect();
            assert_eq!(
                verdict,
                case.verdict.code(self.hook),
                "{}: verdict {verdict:#x}, expected {:?} (reasons counted: {moved:?})",
                case.description,
                case.verdict
            );
            match &case.output {
                // A packet xdp_ingress passes carries its mark in the XDP
                // metadata, in front of the frame in the output; except
                // PassNoNeigh, left unmarked for tc_ingress behind it.
                Expect::Unchanged
                    if self.hook == Hook::Xdp
                        && case.verdict == Verdict::Pass
                        && case.reason != Reason::PassNoNeigh =>
                {
                    assert_eq!(
                        output,
                        [&XDP_PASSED_MARK[..], &case.input].concat(),
                        "{}: the packet must pass unchanged, marked as passed",
                        case.description
                    )
                }
                Expect::Unchanged => assert_eq!(
                    output, case.input,
                    "{}: the packet must pass unchanged",
                    case.description
                ),
                Expect::Frame(expected) => {
                    assert_eq!(
                        hex(&output),
                        hex(expected),
                        "{}: output frame (got, expected)",
                        case.description
                    );
                    if let Err(e) = packets::verify_tcp_checksums(&output) {
                        panic!("{}: {e}", case.description);
                    }
                }
            }
            for (index, reason) in Reason::ALL.iter().enumerate() {
                let moved = after[index] - before[index];
                let expected = u64::from(*reason == case.reason);
                assert_eq!(
                    moved,
                    expected,
                    "{}: LB_REASONS[{}] moved by {moved}, expected {expected} (reason {:?})",
                    case.description,
                    reason.label(),
                    case.reason
                );
            }
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds the node/peer namespaces of the module docs.
pub fn topology(t: &str) -> Namespaces {
    let namespaces = Namespaces(vec![format!("{t}-node"), format!("{t}-peer")]);
    let (node, peer) = (&namespaces.0[0], &namespaces.0[1]);
    ip(&["netns", "add", node]);
    ip(&["netns", "add", peer]);
    for (suffix, addr, node_mac, neighbours) in [
        ("c", NODE, NODE_C_MAC, vec![(CLIENT, CLIENT_MAC)]),
        (
            "p",
            NODE_PODS,
            NODE_P_MAC,
            vec![(BACKEND, BACKEND_MAC), (BACKEND_B, BACKEND_B_MAC)],
        ),
        ("x", NODE_X, NODE_X_MAC, vec![(BACKEND_X, BACKEND_X_MAC)]),
    ] {
        let dev = format!("{t}{suffix}");
        let peer_dev = format!("{t}{}", suffix.to_uppercase());
        ip(&[
            "link",
            "add",
            &dev,
            "netns",
            node,
            "address",
            &mac(node_mac),
            "type",
            "veth",
            "peer",
            "name",
            &peer_dev,
            "netns",
            peer,
        ]);
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &dev,
        ]);
        ip(&["-n", node, "link", "set", &dev, "up"]);
        ip(&["-n", peer, "link", "set", &peer_dev, "up"]);
        for (neighbour, neighbour_mac) in neighbours {
            ip(&[
                "-n",
                node,
                "neigh",
                "replace",
                &neighbour.to_string(),
                "lladdr",
                &mac(neighbour_mac),
                "dev",
                &dev,
                "nud",
                "permanent",
            ]);
        }
    }
    namespaces
}

/// Runs the shared case table on the program of `hook` in the node
/// namespace of [`topology`] (the calling thread must be in it), with the
/// follow-up checks of conntrack entries, counters, a Maglev table flip and
/// SNAT exhaustion. Returns the datapath (maps as the cases left them) and
/// the client's SYN frame for hook-specific cases.
pub fn datapath_cases(t: &str, hook: Hook) -> (Datapath, Vec<u8>) {
    // bpf_fib_lookup answers for the forwarding path only when forwarding
    // is on (as on every Kubernetes node). /proc/sys/net follows the netns
    // of the thread that opens it.
    std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1")
        .expect("enabling forwarding in the test namespace");
    let if_client = ifindex(&format!("{t}c"));
    let if_pods = ifindex(&format!("{t}p"));

    let mut dp = Datapath::load(hook);
    let config = LbConfig::default();
    dp.set_config(config);
    // Service 0: the nodePort on the node's client-facing address; table 0
    // all backend 1, table 1 (for the flip below) all backend 5.
    dp.set_frontend(NODE, NODE_PORT, 0, 0);
    dp.set_backend(1, BACKEND, BACKEND_PORT, BACKEND_ACTIVE);
    dp.set_backend(5, BACKEND_B, BACKEND_PORT, BACKEND_ACTIVE);
    dp.fill_maglev(0, 0, 1);
    dp.fill_maglev(0, 1, 5);
    // Service 1: a frontend whose Maglev table is empty.
    dp.set_frontend(Ipv4Addr::UNSPECIFIED, PORT_EMPTY_TABLE, 1, 0);
    // Service 2: every slot points at backend 2, which is not active.
    dp.set_frontend(Ipv4Addr::UNSPECIFIED, PORT_INACTIVE_BACKEND, 2, 0);
    dp.set_backend(2, BACKEND, BACKEND_PORT, 0);
    dp.fill_maglev(2, 0, 2);
    // Service 3: backend behind the interface without SNAT address.
    dp.set_frontend(Ipv4Addr::UNSPECIFIED, PORT_NO_SNAT_ADDRESS, 3, 0);
    dp.set_backend(3, BACKEND_X, BACKEND_PORT, BACKEND_ACTIVE);
    dp.fill_maglev(3, 0, 3);
    // Service 4: backend without a route.
    dp.set_frontend(Ipv4Addr::UNSPECIFIED, PORT_NO_ROUTE, 4, 0);
    dp.set_backend(4, UNROUTED, BACKEND_PORT, BACKEND_ACTIVE);
    dp.fill_maglev(4, 0, 4);
    dp.set_snat_addr(if_client, NODE);
    dp.set_snat_addr(if_pods, NODE_PODS);

    let snat_port = first_snat_port((CLIENT, CLIENT_PORT), (BACKEND, BACKEND_PORT), config);
    let snat_port_options = first_snat_port(
        (CLIENT, CLIENT_PORT_OPTIONS),
        (BACKEND, BACKEND_PORT),
        config,
    );
    assert_ne!(
        snat_port, snat_port_options,
        "fixture: pick other client ports"
    );

    // Packets of the client's connection, and what they become.
    let from_client = |flags| {
        Tcp::new(
            CLIENT_MAC,
            NODE_C_MAC,
            (CLIENT, CLIENT_PORT),
            (NODE, NODE_PORT),
            flags,
        )
    };
    let to_backend = |tcp: &Tcp, sport| Tcp {
        src_mac: NODE_P_MAC,
        dst_mac: BACKEND_MAC,
        saddr: NODE_PODS,
        daddr: BACKEND,
        sport,
        dport: BACKEND_PORT,
        ..tcp.clone()
    };
    let from_backend = |flags| {
        Tcp::new(
            BACKEND_MAC,
            NODE_P_MAC,
            (BACKEND, BACKEND_PORT),
            (NODE_PODS, snat_port),
            flags,
        )
    };
    let to_client = |tcp: &Tcp| Tcp {
        src_mac: NODE_C_MAC,
        dst_mac: CLIENT_MAC,
        saddr: NODE,
        daddr: CLIENT,
        sport: NODE_PORT,
        dport: CLIENT_PORT,
        ..tcp.clone()
    };
    let forward = |description, tcp: Tcp| Case {
        description,
        ifindex: if_client,
        input: tcp.frame(),
        verdict: Verdict::Redirect,
        output: Expect::Frame(to_backend(&tcp, snat_port).frame()),
        reason: Reason::Forwarded,
    };
    let reply = |description, tcp: Tcp| Case {
        description,
        ifindex: if_pods,
        input: tcp.frame(),
        verdict: Verdict::Redirect,
        output: Expect::Frame(to_client(&tcp).frame()),
        reason: Reason::ReplyForwarded,
    };
    let pass = |description, ifindex, input: Vec<u8>, reason| Case {
        description,
        ifindex,
        input,
        verdict: Verdict::Pass,
        output: Expect::Unchanged,
        reason,
    };
    let dropped = |description, input: Vec<u8>, reason| Case {
        description,
        ifindex: if_client,
        input,
        verdict: Verdict::Drop,
        output: Expect::Unchanged,
        reason,
    };
    let to_port = |port, flags| {
        Tcp::new(
            CLIENT_MAC,
            NODE_C_MAC,
            (CLIENT, CLIENT_PORT),
            (NODE, port),
            flags,
        )
    };
    let syn = from_client(SYN);
    let syn_frame = syn.frame();
    // Mutates one byte range of a copy of `frame`.
    let patched = |frame: &[u8], at: usize, bytes: &[u8]| {
        let mut out = frame.to_vec();
        out[at..at + bytes.len()].copy_from_slice(bytes);
        out
    };

    let mut with_options = from_client(SYN);
    with_options.sport = CLIENT_PORT_OPTIONS;
    // NOP, NOP, router alert (RFC 2113): 2 + 4 bytes, padded to 8.
    with_options.ip_options = vec![1, 1, 148, 4, 0, 0];
    let mut padded_ack = from_client(ACK).frame();
    padded_ack.extend_from_slice(&[0; 6]);
    let mut padded_ack_out = to_backend(&from_client(ACK), snat_port).frame();
    padded_ack_out.extend_from_slice(&[0; 6]);
    let mut with_data = from_client(PSH | ACK);
    with_data.payload = b"\x0a\x00\x00\x00\x03select 1".to_vec();
    let mut reply_data = from_backend(PSH | ACK);
    reply_data.payload = vec![0x5a; 700];
    let mut mf_fragment = from_client(SYN);
    mf_fragment.frag_off = 0x2000;
    let mut later_fragment = from_client(SYN);
    later_fragment.frag_off = 0x0010;
    let mut cut_consistently = syn_frame[..14 + 20 + 10].to_vec();
    // IP total length says 30: IP header + 10 bytes of a TCP header.
    cut_consistently[16..18].copy_from_slice(&30u16.to_be_bytes());

    let cases = vec![
        forward(
            "SYN from the client to the nodePort is DNATed to the backend and SNATed to the node",
            syn.clone(),
        ),
        forward(
            "retransmitted SYN follows the conntrack entry (same SNAT port)",
            syn.clone(),
        ),
        reply(
            "SYN-ACK from the backend is reverse-NATed to the client",
            from_backend(SYN | ACK),
        ),
        forward(
            "mid-flow ACK with zero-length payload follows the conntrack entry",
            from_client(ACK),
        ),
        forward("data from the client follows the flow", with_data),
        Case {
            description: "Ethernet padding after a short segment is kept as it is",
            ifindex: if_client,
            input: padded_ack,
            verdict: Verdict::Redirect,
            output: Expect::Frame(padded_ack_out),
            reason: Reason::Forwarded,
        },
        reply(
            "reply data from the backend goes back to the client",
            reply_data,
        ),
        Case {
            description: "SYN with IP options from a new client port: forwarded, options intact",
            ifindex: if_client,
            input: with_options.frame(),
            verdict: Verdict::Redirect,
            output: Expect::Frame(to_backend(&with_options, snat_port_options).frame()),
            reason: Reason::Forwarded,
        },
        dropped(
            "ACK to the frontend without a flow is dropped",
            to_port(NODE_PORT, ACK).tap(|t| t.sport = 40_100).frame(),
            Reason::DropNoFlow,
        ),
        dropped(
            "SYN-ACK to the frontend without a flow is dropped",
            to_port(NODE_PORT, SYN | ACK)
                .tap(|t| t.sport = 40_101)
                .frame(),
            Reason::DropNoFlow,
        ),
        pass(
            "TCP to a port without frontend passes",
            if_client,
            to_port(22, SYN).frame(),
            Reason::PassNoFrontend,
        ),
        pass(
            "the nodePort on another local address passes (exact-address frontend)",
            if_client,
            to_port(NODE_PORT, SYN)
                .tap(|t| t.daddr = Ipv4Addr::new(198, 18, 0, 99))
                .frame(),
            Reason::PassNoFrontend,
        ),
        pass(
            "a stray segment from a backend to an unused SNAT port passes",
            if_pods,
            from_backend(ACK).tap(|t| t.dport = 1234).frame(),
            Reason::PassNoFrontend,
        ),
        pass(
            "ARP passes",
            if_client,
            packets::arp_request(CLIENT_MAC, CLIENT, NODE),
            Reason::PassNotIpv4,
        ),
        pass(
            "IPv6 TCP to the nodePort passes",
            if_client,
            packets::ipv6_tcp_syn(CLIENT_MAC, NODE_C_MAC, NODE_PORT),
            Reason::PassNotIpv4,
        ),
        pass(
            "ICMP echo passes",
            if_client,
            packets::icmp_echo(CLIENT_MAC, NODE_C_MAC, CLIENT, NODE),
            Reason::PassNotTcp,
        ),
        pass(
            "UDP to the nodePort passes",
            if_client,
            packets::udp(CLIENT_MAC, NODE_C_MAC, (CLIENT, 40_000), (NODE, NODE_PORT)),
            Reason::PassNotTcp,
        ),
        pass(
            "TCP header cut short (IP total length runs past the frame)",
            if_client,
            syn_frame[..14 + 20 + 10].to_vec(),
            Reason::PassMalformed,
        ),
        pass(
            "TCP header cut short (IP total length agrees with the cut)",
            if_client,
            cut_consistently,
            Reason::PassMalformed,
        ),
        pass(
            "IHL 4 (below the minimum of 5)",
            if_client,
            patched(&syn_frame, 14, &[0x44]),
            Reason::PassMalformed,
        ),
        pass(
            "IHL 0",
            if_client,
            patched(&syn_frame, 14, &[0x40]),
            Reason::PassMalformed,
        ),
        pass(
            "IHL 15: options beyond the packet",
            if_client,
            patched(&syn_frame, 14, &[0x4f]),
            Reason::PassMalformed,
        ),
        pass(
            "IP total length beyond the frame",
            if_client,
            patched(&syn_frame, 16, &1400u16.to_be_bytes()),
            Reason::PassMalformed,
        ),
        pass(
            "IP version 6 under the IPv4 EtherType",
            if_client,
            patched(&syn_frame, 14, &[0x65]),
            Reason::PassMalformed,
        ),
        pass(
            "TCP data offset 4 (below the minimum of 5)",
            if_client,
            patched(&syn_frame, 14 + 20 + 12, &[0x40]),
            Reason::PassMalformed,
        ),
        pass(
            "TCP data offset 15: beyond the segment",
            if_client,
            patched(&syn_frame, 14 + 20 + 12, &[0xf0]),
            Reason::PassMalformed,
        ),
        pass(
            "first fragment (MF) of a SYN to the nodePort passes",
            if_client,
            mf_fragment.frame(),
            Reason::PassFragment,
        ),
        pass(
            "later fragment (offset 128) to the nodePort passes",
            if_client,
            later_fragment.frame(),
            Reason::PassFragment,
        ),
        dropped(
            "frontend with an empty Maglev table drops the SYN",
            to_port(PORT_EMPTY_TABLE, SYN).frame(),
            Reason::DropNoBackend,
        ),
        dropped(
            "frontend whose backend is inactive drops the SYN",
            to_port(PORT_INACTIVE_BACKEND, SYN).frame(),
            Reason::DropNoBackend,
        ),
        dropped(
            "backend behind an interface without SNAT address",
            to_port(PORT_NO_SNAT_ADDRESS, SYN).frame(),
            Reason::DropNoSnatAddress,
        ),
        dropped(
            "backend without a route",
            to_port(PORT_NO_ROUTE, SYN).frame(),
            Reason::DropNoRoute,
        ),
        forward(
            "FIN from the client follows the flow",
            from_client(FIN | ACK),
        ),
        reply(
            "RST from the backend is reverse-NATed",
            from_backend(RST | ACK),
        ),
    ];
    dp.check(&cases);

    // The connection's two entries, as the program wrote them.
    let original = dp
        .flow(&flow_key(CLIENT, CLIENT_PORT, NODE, NODE_PORT))
        .expect("original-direction entry");
    assert_eq!(
        (
            original.new_saddr_be,
            original.new_daddr_be,
            original.new_sport_be,
            original.new_dport_be
        ),
        (
            be(NODE_PODS),
            be(BACKEND),
            snat_port.to_be(),
            BACKEND_PORT.to_be()
        )
    );
    assert_eq!((original.service_id, original.backend_id), (0, 1));
    assert_eq!(original.flags, FLOW_FIN, "FIN seen from the client");
    assert_ne!(original.last_seen_ns, 0);
    let reply_entry = dp
        .flow(&flow_key(BACKEND, BACKEND_PORT, NODE_PODS, snat_port))
        .expect("reply-direction entry");
    assert_eq!(
        (
            reply_entry.new_saddr_be,
            reply_entry.new_daddr_be,
            reply_entry.new_sport_be,
            reply_entry.new_dport_be
        ),
        (be(NODE), be(CLIENT), NODE_PORT.to_be(), CLIENT_PORT.to_be())
    );
    assert_eq!(reply_entry.flags, FLOW_REPLY | FLOW_RST);
    assert!(
        dp.flow(&flow_key(CLIENT, 40_100, NODE, NODE_PORT))
            .is_none(),
        "a dropped packet must not create a flow"
    );

    let forwarded: Vec<&Case> = cases
        .iter()
        .filter(|c| c.verdict == Verdict::Redirect)
        .collect();
    let service = dp.traffic(SERVICE_STATS_MAP, 0);
    let backend = dp.traffic(BACKEND_STATS_MAP, 1);
    assert_eq!(service, backend, "service 0 has one backend");
    assert_eq!(service.connections, 2, "the SYN and the SYN with options");
    assert_eq!(service.packets, forwarded.len() as u64);
    assert_eq!(
        service.bytes,
        forwarded.iter().map(|c| c.input.len() as u64).sum::<u64>()
    );
    assert_eq!(dp.traffic(SERVICE_STATS_MAP, 1), TrafficCounters::default());

    // Make-before-break: userspace flips the frontend to table 1 (backend 5).
    // New connections go there; the established one stays on backend 1.
    dp.set_frontend(NODE, NODE_PORT, 0, 1);
    let new_port = 40_003;
    let new_syn = from_client(SYN).tap(|t| t.sport = new_port);
    let new_snat = first_snat_port((CLIENT, new_port), (BACKEND_B, BACKEND_PORT), config);
    dp.check(&[
        Case {
            description: "after the table flip a new SYN goes to the new backend",
            ifindex: if_client,
            input: new_syn.frame(),
            verdict: Verdict::Redirect,
            output: Expect::Frame(
                Tcp {
                    src_mac: NODE_P_MAC,
                    dst_mac: BACKEND_B_MAC,
                    saddr: NODE_PODS,
                    daddr: BACKEND_B,
                    sport: new_snat,
                    dport: BACKEND_PORT,
                    ..new_syn.clone()
                }
                .frame(),
            ),
            reason: Reason::Forwarded,
        },
        forward(
            "after the table flip the established flow stays on its backend",
            from_client(ACK),
        ),
    ]);
    assert_eq!(dp.traffic(BACKEND_STATS_MAP, 5).connections, 1);

    // SNAT exhaustion: a one-port range. The first new connection to
    // backend 5 takes it (port 62000 towards backend 5 is free), the next
    // one finds it taken.
    let one_port = LbConfig {
        snat_port_min: 62_000,
        snat_port_max: 62_000,
        ..config
    };
    dp.set_config(one_port);
    let first = from_client(SYN).tap(|t| t.sport = 40_004);
    dp.check(&[
        Case {
            description: "one-port SNAT range: the first connection gets the port",
            ifindex: if_client,
            input: first.frame(),
            verdict: Verdict::Redirect,
            output: Expect::Frame(
                Tcp {
                    src_mac: NODE_P_MAC,
                    dst_mac: BACKEND_B_MAC,
                    saddr: NODE_PODS,
                    daddr: BACKEND_B,
                    sport: 62_000,
                    dport: BACKEND_PORT,
                    ..first.clone()
                }
                .frame(),
            ),
            reason: Reason::Forwarded,
        },
        dropped(
            "one-port SNAT range: the next connection finds no free port",
            from_client(SYN).tap(|t| t.sport = 40_005).frame(),
            Reason::DropSnatExhausted,
        ),
    ]);
    // Once the first connection is reset, its port is taken over at once by
    // the next new connection (not only when the userspace reaper runs).
    let reset = from_client(RST).tap(|t| t.sport = 40_004);
    let next = from_client(SYN).tap(|t| t.sport = 40_005);
    dp.check(&[
        Case {
            description: "one-port SNAT range: the first connection is reset",
            ifindex: if_client,
            input: reset.frame(),
            verdict: Verdict::Redirect,
            output: Expect::Frame(
                Tcp {
                    src_mac: NODE_P_MAC,
                    dst_mac: BACKEND_B_MAC,
                    saddr: NODE_PODS,
                    daddr: BACKEND_B,
                    sport: 62_000,
                    dport: BACKEND_PORT,
                    ..reset.clone()
                }
                .frame(),
            ),
            reason: Reason::Forwarded,
        },
        Case {
            description: "one-port SNAT range: a reset connection's port is reused",
            ifindex: if_client,
            input: next.frame(),
            verdict: Verdict::Redirect,
            output: Expect::Frame(
                Tcp {
                    src_mac: NODE_P_MAC,
                    dst_mac: BACKEND_B_MAC,
                    saddr: NODE_PODS,
                    daddr: BACKEND_B,
                    sport: 62_000,
                    dport: BACKEND_PORT,
                    ..next.clone()
                }
                .frame(),
            ),
            reason: Reason::Forwarded,
        },
        dropped(
            "one-port SNAT range: the live new connection keeps the port",
            from_client(SYN).tap(|t| t.sport = 40_007).frame(),
            Reason::DropSnatExhausted,
        ),
    ]);
    // The reply key includes the backend: port 62000 is still free towards
    // backend 1 (flip back to table 0).
    dp.set_frontend(NODE, NODE_PORT, 0, 0);
    let back = from_client(SYN).tap(|t| t.sport = 40_006);
    dp.check(&[Case {
        description: "one-port SNAT range: the port is still free towards another backend",
        ifindex: if_client,
        input: back.frame(),
        verdict: Verdict::Redirect,
        output: Expect::Frame(to_backend(&back, 62_000).frame()),
        reason: Reason::Forwarded,
    }]);

    // Service 5: a backend on a connected subnet whose MAC the node does
    // not know (no neighbour entry): the hook-specific case of each test.
    dp.set_frontend(Ipv4Addr::UNSPECIFIED, PORT_NO_NEIGH, 5, 0);
    dp.set_backend(6, BACKEND_NO_NEIGH, BACKEND_PORT, BACKEND_ACTIVE);
    dp.fill_maglev(5, 0, 6);
    dp.set_config(config);
    (dp, syn_frame)
}

/// Attaches the program (tcx, or XDP in driver mode) on the node's
/// client-facing veth, sends
/// frames cut inside the IPv4 header from the peer end with a raw packet
/// socket, and checks they were passed as malformed.
pub fn truncated_frames_through_a_live_attachment(dp: &mut Datapath, t: &str, syn_frame: &[u8]) {
    let dev = format!("{t}c");
    let program = dp
        .ebpf
        .program_mut(dp.hook.program())
        .expect("program in the object");
    match dp.hook {
        Hook::Tc => {
            let program: &mut SchedClassifier =
                program.try_into().expect("tc_ingress is a classifier");
            program
                .attach(&dev, TcAttachType::Ingress)
                .expect("attaching tc_ingress with tcx");
        }
        Hook::Xdp => {
            let program: &mut Xdp = program.try_into().expect("xdp_ingress is XDP");
            program
                .attach(&dev, aya::programs::XdpMode::Driver)
                .expect("attaching xdp_ingress in driver mode");
        }
    }
    let malformed = |dp: &Datapath| dp.reasons()[Reason::PassMalformed as usize];
    let before = malformed(dp);
    let frames: Vec<Vec<u8>> = [15, 14 + 12, 14 + 19]
        .iter()
        .map(|&len| syn_frame[..len].to_vec())
        .collect();
    let sent = frames.len() as u64;
    let peer = format!("{t}-peer");
    let peer_dev = format!("{t}C");
    in_netns(&peer, move || {
        let ifindex = ifindex(&peer_dev);
        // SAFETY: plain socket call; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&NODE_C_MAC);
        for frame in &frames {
            // SAFETY: valid buffer and address of the given lengths.
            let n = unsafe {
                libc::sendto(
                    fd,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(
                n,
                frame.len() as isize,
                "sending a {}-byte frame: {}",
                frame.len(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
    });
    // Delivery through the veth is asynchronous (backlog); wait, bounded.
    for _ in 0..50 {
        if malformed(dp) - before >= sent {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        malformed(dp) - before,
        sent,
        "frames cut inside the IPv4 header are passed as malformed"
    );
}

/// `x.tap(|x| ...)`: a modified copy in one expression.
pub trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl<T> Tap for T {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

/// Sets a device's TX checksum offload (legacy `ETHTOOL_STXCSUM` ioctl, so
/// the test needs no ethtool binary). With it off the sender computes full
/// checksums in software and the receiver verifies them: a wrong incremental
/// update in `tc_ingress` then loses the segment instead of being hidden by
/// `CHECKSUM_PARTIAL`.
pub fn set_tx_checksum_offload(dev: &str, on: bool) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Ifreq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    let mut ifr = Ifreq {
        name: [0; 16],
        data: &raw mut value,
        _pad: [0; 16],
    };
    ifr.name[..dev.len()].copy_from_slice(dev.as_bytes());
    // SAFETY: plain socket call; closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `ifr` points at a live ethtool_value for the whole call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut ifr) };
    let error = std::io::Error::last_os_error();
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    assert_eq!(rc, 0, "ETHTOOL_STXCSUM {dev} {on}: {error}");
}
