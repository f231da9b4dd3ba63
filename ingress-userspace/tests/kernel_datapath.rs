//! Root test of the kernel stage's forwarding and steering programs.
//!
//! `tc_ingress` is driven with `BPF_PROG_TEST_RUN` from packet fixtures in
//! Katran's form `{description, input, expected verdict, expected output}`,
//! with the maps filled by the test the way userspace fills them from a
//! snapshot. Each case also asserts which `LB_REASONS` counter moved (exactly
//! one, by one). The program's FIB lookups need real routes and neighbours, so
//! the cases run on a thread inside a network namespace built for them:
//!
//! ```text
//!              ns <tag>-node (forwarding on)                      ns <tag>-peer
//! client  <tag>c 198.18.0.1/24  02:00:00:00:00:01  ----  veth peer (client side)
//!         neigh 198.18.0.2 (client)     02:00:00:00:00:02
//! pods    <tag>p 198.18.1.1/24  02:00:00:00:01:01  ----  veth peer (pods side)
//!         neigh 198.18.1.20 (backend)   02:00:00:00:01:14
//!         neigh 198.18.1.21 (backend B) 02:00:00:00:01:15
//! extra   <tag>x 198.18.2.1/24  02:00:00:00:02:01  ----  veth peer (no SNAT address)
//!         neigh 198.18.2.20             02:00:00:00:02:14
//! ```
//!
//! The packets are never sent: `BPF_PROG_TEST_RUN` returns the verdict and
//! the rewritten bytes. Checksums of every forwarded packet are recomputed
//! from scratch by `packets::verify_tcp_checksums`, and the expected frames
//! are built with full checksum computations, never incrementally.
//!
//! `sk_lookup_steer` is attached to a namespace of its own; a connection to
//! a steered port must reach the listener in `STEER_SOCKETS`.
//!
//! Needs root. Without it the tests fail, unless `INGRESSD_SKIP_ROOT_TESTS=1`,
//! which turns them into a loud skip.

mod packets;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{Array, HashMap, PerCpuArray, SockMap};
use aya::programs::{SchedClassifier, SkLookup, TcAttachType, TestRun, TestRunOptions, Xdp};
use ingress_common::counter::PORT_COUNTER_PROGRAM;
use ingress_common::lb::{
    BACKEND_ACTIVE, BACKEND_STATS_MAP, BACKENDS_MAP, Backend, CONFIG_MAP, CONNTRACK_MAP, FLOW_FIN,
    FLOW_REPLY, FLOW_RST, FRONTENDS_MAP, FlowKey, FlowState, Frontend, FrontendKey, LbConfig,
    MAGLEV_MAP, MAGLEV_SIZE, PROTO_TCP, REASONS_MAP, Reason, SERVICE_STATS_MAP, SNAT_ADDRS_MAP,
    TC_PROGRAM, TrafficCounters, flow_hash, maglev_index,
};
use ingress_common::steer::{
    SK_LOOKUP_PROGRAM, STEER_PORTS_MAP, STEER_SOCKETS_MAP, STEER_STATS_MAP, SteerReason,
};
use packets::{ACK, FIN, Mac, PSH, RST, SYN, Tcp};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 2];
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE_C_MAC: Mac = [2, 0, 0, 0, 0, 1];
const NODE_PODS: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const NODE_P_MAC: Mac = [2, 0, 0, 0, 1, 1];
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
const BACKEND_MAC: Mac = [2, 0, 0, 0, 1, 0x14];
const BACKEND_B: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 21);
const BACKEND_B_MAC: Mac = [2, 0, 0, 0, 1, 0x15];
const NODE_X: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const NODE_X_MAC: Mac = [2, 0, 0, 0, 2, 1];
const BACKEND_X: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 20);
const BACKEND_X_MAC: Mac = [2, 0, 0, 0, 2, 0x14];
/// In the test range, but no route leads there.
const UNROUTED: Ipv4Addr = Ipv4Addr::new(198, 19, 77, 7);

const NODE_PORT: u16 = 30_306;
const BACKEND_PORT: u16 = 3306;
/// Wildcard-address frontends, one per failure mode.
const PORT_EMPTY_TABLE: u16 = 30_307;
const PORT_INACTIVE_BACKEND: u16 = 30_308;
const PORT_NO_SNAT_ADDRESS: u16 = 30_309;
const PORT_NO_ROUTE: u16 = 30_310;

const CLIENT_PORT: u16 = 40_001;
const CLIENT_PORT_OPTIONS: u16 = 40_002;

/// TC verdicts as `BPF_PROG_TEST_RUN` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// `TC_ACT_UNSPEC` (-1): tcx "next", the stack gets the packet.
    Pass,
    /// `TC_ACT_SHOT`.
    Drop,
    /// `TC_ACT_REDIRECT`.
    Redirect,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Pass => u32::MAX,
            Verdict::Drop => 2,
            Verdict::Redirect => 7,
        }
    }
}

enum Expect {
    /// The output frame equals the input.
    Unchanged,
    /// The output frame equals these bytes (and its checksums verify).
    Frame(Vec<u8>),
}

struct Case {
    description: &'static str,
    /// Interface the packet arrives on.
    ifindex: u32,
    input: Vec<u8>,
    verdict: Verdict,
    output: Expect,
    reason: Reason,
}

/// Deletes the namespaces (and the veths in them) when dropped, also when
/// the test panics.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"));
    assert!(status.success(), "ip {args:?} failed: {status}");
}

/// Runs `f` on a new thread that has joined network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f)
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Starts `f` on a new thread that has joined network namespace `ns`.
fn spawn_in_netns<T: Send + 'static>(
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
fn root_or_skip(test: &str) -> bool {
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
fn tag(prefix: &str) -> String {
    format!(
        "{prefix}{:06x}",
        (std::process::id()
            ^ std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos()))
            & 0xff_ffff
    )
}

fn ifindex(name: &str) -> u32 {
    let c_name = std::ffi::CString::new(name).expect("interface name");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}

fn mac(mac: Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An address as the program stores it: network order in a native `u32`.
fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn flow_key(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16) -> FlowKey {
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
fn first_snat_port(client: (Ipv4Addr, u16), backend: (Ipv4Addr, u16), config: LbConfig) -> u16 {
    let range = u32::from(config.snat_port_max - config.snat_port_min) + 1;
    let hash = flow_hash(
        be(client.0),
        be(backend.0),
        client.1.to_be(),
        backend.1.to_be(),
    );
    config.snat_port_min + (hash % range) as u16
}

/// The loaded object with `tc_ingress` ready for test runs, and typed
/// access to its maps.
struct Datapath {
    ebpf: Ebpf,
}

/// Size of `struct __sk_buff` (6.x). BPF_PROG_TEST_RUN accepts it as the
/// context; only a few fields may be set.
const SKB_CTX_LEN: usize = 192;
const SKB_INGRESS_IFINDEX_OFF: usize = 36;
const SKB_IFINDEX_OFF: usize = 40;

impl Datapath {
    fn load() -> Self {
        let mut ebpf = Ebpf::load(ingress_userspace::kernel::object()).expect("parsing the object");
        let program: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .expect("tc_ingress in the object")
            .try_into()
            .expect("tc_ingress is a classifier");
        if let Err(e) = program.load() {
            panic!("the verifier rejected {TC_PROGRAM}: {e:#?}");
        }
        if let Ok(info) = program.info() {
            eprintln!(
                "{TC_PROGRAM}: {} instructions verified, {} translated",
                info.verified_instruction_count().unwrap_or(0),
                info.size_translated().unwrap_or(0) / 8
            );
        }
        Datapath { ebpf }
    }

    /// Runs `tc_ingress` once on `input` arriving on `ifindex`.
    fn run(
        &self,
        ifindex: u32,
        input: &[u8],
    ) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
        let program: &SchedClassifier = self
            .ebpf
            .program(TC_PROGRAM)
            .expect("tc_ingress in the object")
            .try_into()
            .expect("tc_ingress is a classifier");
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_INGRESS_IFINDEX_OFF..][..4].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[SKB_IFINDEX_OFF..][..4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; input.len() + 256];
        let result = program.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    fn reasons(&self) -> Vec<u64> {
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

    fn traffic(&self, map: &str, index: u32) -> TrafficCounters {
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

    fn flow(&self, key: &FlowKey) -> Option<FlowState> {
        let map: HashMap<_, FlowKey, FlowState> =
            HashMap::try_from(self.ebpf.map(CONNTRACK_MAP).expect(CONNTRACK_MAP))
                .expect("LB_CONNTRACK is a hash map");
        map.get(key, 0).ok()
    }

    fn set_frontend(&mut self, addr: Ipv4Addr, port: u16, service_id: u32, table: u32) {
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

    fn set_backend(&mut self, id: u32, addr: Ipv4Addr, port: u16, flags: u16) {
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
    fn fill_maglev(&mut self, service_id: u32, table: u32, backend_id: u32) {
        let mut map: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(MAGLEV_MAP).expect(MAGLEV_MAP))
                .expect("LB_MAGLEV is an array");
        for slot in 0..MAGLEV_SIZE {
            map.set(maglev_index(service_id, table, slot), backend_id, 0)
                .expect("writing LB_MAGLEV");
        }
    }

    fn set_snat_addr(&mut self, ifindex: u32, addr: Ipv4Addr) {
        let mut map: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(SNAT_ADDRS_MAP).expect(SNAT_ADDRS_MAP))
                .expect("LB_SNAT_ADDRS is a hash map");
        map.insert(ifindex, be(addr), 0)
            .expect("writing LB_SNAT_ADDRS");
    }

    fn set_config(&mut self, config: LbConfig) {
        let mut map: Array<_, LbConfig> =
            Array::try_from(self.ebpf.map_mut(CONFIG_MAP).expect(CONFIG_MAP))
                .expect("LB_CONFIG is an array");
        map.set(0, config, 0).expect("writing LB_CONFIG");
    }

    /// Runs the cases in order; each must give its verdict, its output and
    /// move exactly its reason counter by one.
    fn check(&self, cases: &[Case]) {
        for case in cases {
            let before = self.reasons();
            let (verdict, output) = self
                .run(case.ifindex, &case.input)
                .unwrap_or_else(|e| panic!("{}: test run failed: {e:#?}", case.description));
            let after = self.reasons();
            assert_eq!(
                verdict,
                case.verdict.code(),
                "{}: verdict {verdict:#x}, expected {:?}",
                case.description,
                case.verdict
            );
            match &case.output {
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

fn hex(bytes: &[u8]) -> String {
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
fn topology(t: &str) -> Namespaces {
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

#[test]
fn tc_ingress_forwards_tcp_frontends_and_passes_everything_else() {
    if !root_or_skip("kernel_datapath") {
        return;
    }
    let t = tag("ikd");
    let namespaces = topology(&t);
    let node = namespaces.0[0].clone();
    in_netns(&node, move || datapath_cases(&t));
    drop(namespaces);
}

fn datapath_cases(t: &str) {
    // bpf_fib_lookup answers for the forwarding path only when forwarding
    // is on (as on every Kubernetes node). /proc/sys/net follows the netns
    // of the thread that opens it.
    std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1")
        .expect("enabling forwarding in the test namespace");
    let if_client = ifindex(&format!("{t}c"));
    let if_pods = ifindex(&format!("{t}p"));

    let mut dp = Datapath::load();
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

    // BPF_PROG_TEST_RUN (6.18) refuses frames with the IPv4 EtherType that
    // are shorter than Ethernet + a 20-byte IPv4 header before the program
    // runs, but a veth delivers them to tc ingress: those go through a live
    // attachment instead.
    for len in [13, 14, 15, 33] {
        assert!(
            dp.run(if_client, &syn_frame[..len]).is_err(),
            "BPF_PROG_TEST_RUN rejects a {len}-byte IPv4 frame"
        );
    }
    truncated_frames_through_a_live_attachment(&mut dp, t, &syn_frame);
}

/// Attaches `tc_ingress` with tcx on the node's client-facing veth, sends
/// frames cut inside the IPv4 header from the peer end with a raw packet
/// socket, and checks they were passed as malformed.
fn truncated_frames_through_a_live_attachment(dp: &mut Datapath, t: &str, syn_frame: &[u8]) {
    let program: &mut SchedClassifier = dp
        .ebpf
        .program_mut(TC_PROGRAM)
        .expect("tc_ingress in the object")
        .try_into()
        .expect("tc_ingress is a classifier");
    program
        .attach(&format!("{t}c"), TcAttachType::Ingress)
        .expect("attaching tc_ingress with tcx");
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
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl<T> Tap for T {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

#[test]
fn every_program_in_the_object_passes_the_verifier() {
    if !root_or_skip("kernel_datapath") {
        return;
    }
    let mut ebpf = Ebpf::load(ingress_userspace::kernel::object()).expect("parsing the object");
    let tc: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .expect("tc_ingress")
        .try_into()
        .expect("classifier");
    tc.load().unwrap_or_else(|e| panic!("{TC_PROGRAM}: {e:#?}"));
    let steer: &mut SkLookup = ebpf
        .program_mut(SK_LOOKUP_PROGRAM)
        .expect("sk_lookup_steer")
        .try_into()
        .expect("sk_lookup");
    steer
        .load()
        .unwrap_or_else(|e| panic!("{SK_LOOKUP_PROGRAM}: {e:#?}"));
    let xdp: &mut Xdp = ebpf
        .program_mut(PORT_COUNTER_PROGRAM)
        .expect("xdp_port_counter")
        .try_into()
        .expect("xdp");
    xdp.load()
        .unwrap_or_else(|e| panic!("{PORT_COUNTER_PROGRAM}: {e:#?}"));
}

#[test]
fn sk_lookup_steers_a_node_port_to_the_listener() {
    if !root_or_skip("kernel_datapath") {
        return;
    }
    let namespaces = Namespaces(vec![format!("{}-steer", tag("iks"))]);
    let ns = namespaces.0[0].clone();
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let path = format!("/run/netns/{ns}");
    in_netns(&ns, move || {
        let mut ebpf = Ebpf::load(ingress_userspace::kernel::object()).expect("parsing the object");
        let program: &mut SkLookup = ebpf
            .program_mut(SK_LOOKUP_PROGRAM)
            .expect("sk_lookup_steer in the object")
            .try_into()
            .expect("sk_lookup_steer is an sk_lookup program");
        program
            .load()
            .unwrap_or_else(|e| panic!("the verifier rejected {SK_LOOKUP_PROGRAM}: {e:#?}"));
        let netns = File::open(&path).expect("opening the namespace");
        program.attach(netns).expect("attaching to the namespace");

        // The daemon's listener, on a port of its own choosing.
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the listener");
        let listener_addr = listener.local_addr().expect("listener address");
        {
            let mut sockets =
                SockMap::try_from(ebpf.map_mut(STEER_SOCKETS_MAP).expect(STEER_SOCKETS_MAP))
                    .expect("STEER_SOCKETS is a sock map");
            sockets.set(0, &listener, 0).expect("listener into slot 0");
        }
        {
            let mut ports: HashMap<_, u32, u32> =
                HashMap::try_from(ebpf.map_mut(STEER_PORTS_MAP).expect(STEER_PORTS_MAP))
                    .expect("STEER_PORTS is a hash map");
            ports.insert(30_080, 0, 0).expect("steer 30080 to slot 0");
            // Steered, but the slot is empty (daemon restarting).
            ports.insert(30_081, 1, 0).expect("steer 30081 to slot 1");
        }

        let steered: SocketAddr = "127.0.0.1:30080".parse().expect("address");
        let mut client = TcpStream::connect_timeout(&steered, Duration::from_secs(2))
            .expect("connecting to the steered port");
        let (mut accepted, peer) = listener.accept().expect("accepting the steered connection");
        assert_eq!(peer, client.local_addr().expect("client address"));
        assert_eq!(
            accepted.local_addr().expect("accepted address"),
            steered,
            "the daemon sees the port the client connected to (listener is {listener_addr})"
        );
        client.write_all(b"ping").expect("writing");
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).expect("reading");
        assert_eq!(&buf, b"ping");

        for port in [30_081, 30_082] {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
            let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            assert!(refused.is_err(), "port {port}: nothing listens there");
        }

        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(ebpf.map(STEER_STATS_MAP).expect(STEER_STATS_MAP))
                .expect("STEER_STATS is a per-CPU array");
        let count = |reason: SteerReason| -> u64 {
            stats
                .get(&(reason as u32), 0)
                .expect("reading STEER_STATS")
                .iter()
                .sum()
        };
        assert_eq!(count(SteerReason::Steered), 1);
        assert_eq!(count(SteerReason::NoSocket), 1);
        assert_eq!(count(SteerReason::AssignFailed), 0);
    });
    drop(namespaces);
}

/// Sets a device's TX checksum offload (legacy `ETHTOOL_STXCSUM` ioctl, so
/// the test needs no ethtool binary). With it off the sender computes full
/// checksums in software and the receiver verifies them: a wrong incremental
/// update in `tc_ingress` then loses the segment instead of being hidden by
/// `CHECKSUM_PARTIAL`.
fn set_tx_checksum_offload(dev: &str, on: bool) {
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

/// Real TCP through `tc_ingress` on both node interfaces: a client in one
/// namespace connects to the nodePort, the kernel forwards to an echo
/// server in the pods namespace, and the data comes back. The maps are
/// filled by the test as userspace would. Neighbours are left to ARP, so the
/// first packets take the `bpf_redirect_neigh` path. Run twice: with the
/// veths' checksum offload (`CHECKSUM_PARTIAL` packets) and without it
/// (full software checksums, verified by the receiving stacks).
///
/// ```text
/// ns client  <tag>C 198.18.0.2 -- <tag>c 198.18.0.1  ns node  <tag>p 198.18.1.1 -- <tag>P 198.18.1.20  ns pods
///                                 (tc_ingress on both node interfaces)                   echo :3306
/// ```
#[test]
fn tc_ingress_forwards_real_tcp_connections_between_namespaces() {
    if !root_or_skip("kernel_datapath") {
        return;
    }
    const ROUNDS: usize = 2;
    const PAYLOAD: usize = 256 * 1024;
    let t = tag("ike");
    let namespaces = Namespaces(vec![
        format!("{t}-client"),
        format!("{t}-node"),
        format!("{t}-pods"),
    ]);
    let (client_ns, node_ns, pods_ns) = (
        namespaces.0[0].clone(),
        namespaces.0[1].clone(),
        namespaces.0[2].clone(),
    );
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
        ip(&[
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{node_addr}/24"),
            "dev",
            &node_dev,
        ]);
        ip(&[
            "-n",
            outer_ns,
            "addr",
            "add",
            &format!("{outer_addr}/24"),
            "dev",
            &outer,
        ]);
        ip(&["-n", &node_ns, "link", "set", &node_dev, "up"]);
        ip(&["-n", outer_ns, "link", "set", &outer, "up"]);
    }

    // The backend: echoes every connection until EOF, reports client addresses.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = spawn_in_netns(&pods_ns, move || {
        let listener = TcpListener::bind((BACKEND, BACKEND_PORT)).expect("binding the echo server");
        ready_tx.send(()).expect("signalling readiness");
        let mut peers = Vec::new();
        for _ in 0..ROUNDS {
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

    let node_t = t.clone();
    let (client_ns2, pods_ns2) = (client_ns.clone(), pods_ns.clone());
    let (dp_reasons, service) = in_netns(&node_ns, move || {
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1")
            .expect("enabling forwarding in the node namespace");
        let (if_client, if_pods) = (
            ifindex(&format!("{node_t}c")),
            ifindex(&format!("{node_t}p")),
        );
        let mut dp = Datapath::load();
        dp.set_config(LbConfig::default());
        dp.set_frontend(NODE, NODE_PORT, 0, 0);
        dp.set_backend(1, BACKEND, BACKEND_PORT, BACKEND_ACTIVE);
        dp.fill_maglev(0, 0, 1);
        dp.set_snat_addr(if_client, NODE);
        dp.set_snat_addr(if_pods, NODE_PODS);
        let program: &mut SchedClassifier = dp
            .ebpf
            .program_mut(TC_PROGRAM)
            .expect("tc_ingress in the object")
            .try_into()
            .expect("tc_ingress is a classifier");
        for dev in [format!("{node_t}c"), format!("{node_t}p")] {
            program
                .attach(&dev, TcAttachType::Ingress)
                .unwrap_or_else(|e| panic!("attaching tc_ingress to {dev}: {e}"));
        }

        for round in 0..ROUNDS {
            if round == 1 {
                let client_dev = format!("{node_t}C");
                let pods_dev = format!("{node_t}P");
                in_netns(&client_ns2, move || {
                    set_tx_checksum_offload(&client_dev, false)
                });
                in_netns(&pods_ns2, move || set_tx_checksum_offload(&pods_dev, false));
            }
            in_netns(&client_ns2, move || {
                let target = SocketAddr::from((NODE, NODE_PORT));
                let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("round {round}: connecting to the nodePort: {e}"));
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let data: Vec<u8> = (0..PAYLOAD).map(|i| (i * 7 + round) as u8).collect();
                let writer = {
                    let mut stream = stream.try_clone().expect("clone");
                    let data = data.clone();
                    std::thread::spawn(move || {
                        stream.write_all(&data).expect("writing");
                        stream
                            .shutdown(std::net::Shutdown::Write)
                            .expect("shutdown");
                    })
                };
                let mut echoed = Vec::with_capacity(PAYLOAD);
                stream
                    .read_to_end(&mut echoed)
                    .unwrap_or_else(|e| panic!("round {round}: reading the echo: {e}"));
                writer.join().expect("writer");
                assert!(echoed == data, "round {round}: echoed data differs");
            });
        }
        (dp.reasons(), dp.traffic(SERVICE_STATS_MAP, 0))
    });

    let peers = server.join().expect("echo server");
    for peer in &peers {
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(NODE_PODS),
            "the backend sees the SNAT address"
        );
        let config = LbConfig::default();
        assert!(
            (config.snat_port_min..=config.snat_port_max).contains(&peer.port()),
            "SNAT port {} in the configured range",
            peer.port()
        );
    }
    let count = |reason: Reason| dp_reasons[reason as usize];
    assert!(count(Reason::Forwarded) > 0 && count(Reason::ReplyForwarded) > 0);
    for reason in Reason::ALL {
        if reason.label().starts_with("drop_") {
            assert_eq!(count(reason), 0, "{}: {dp_reasons:?}", reason.label());
        }
    }
    assert_eq!(service.connections, ROUNDS as u64);
    assert_eq!(
        service.packets,
        count(Reason::Forwarded) + count(Reason::ReplyForwarded)
    );
    drop(namespaces);
}
