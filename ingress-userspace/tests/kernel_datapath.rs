//! Root test of the kernel stage's forwarding and steering programs.
//!
//! `tc_ingress` is driven with `BPF_PROG_TEST_RUN` from packet fixtures in
//! Katran's form `{description, input, expected verdict, expected output}`,
//! with the maps filled by the test the way userspace fills them from a
//! snapshot. Each case also asserts which `LB_REASONS` counter moved (exactly
//! one, by one). The program's FIB lookups need real routes and neighbours, so
//! the cases run on a thread inside a network namespace built for them (the
//! topology and the table are in `common/`, shared with `kernel_xdp.rs`,
//! which runs the same table on `xdp_ingress`).
//!
//! The packets are never sent: `BPF_PROG_TEST_RUN` returns the verdict and
//! the rewritten bytes. Checksums of every forwarded packet are recomputed
//! from scratch by `common::packets::verify_tcp_checksums`, and the expected frames
//! are built with full checksum computations, never incrementally.
//!
//! `sk_lookup_steer` is attached to a namespace of its own; a connection to
//! a steered port must reach the listener in `STEER_SOCKETS`.
//!
//! Needs root. Without it the tests fail, unless `INGRESSD_SKIP_ROOT_TESTS=1`,
//! which turns them into a loud skip.

mod common;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap, PerCpuArray, SockMap};
use aya::programs::{SchedClassifier, SkLookup, TcAttachType, Xdp};
use common::packets::{SYN, Tcp};
use common::{
    BACKEND, BACKEND_NO_NEIGH, BACKEND_PORT, CLIENT, CLIENT_MAC, Case, Datapath, Expect, Hook,
    NODE, NODE_C_MAC, NODE_PODS, NODE_PORT, Namespaces, PORT_NO_NEIGH, Verdict, datapath_cases,
    first_snat_port, ifindex, in_netns, ip, root_or_skip, set_tx_checksum_offload,
    spawn_echo_server, tag, three_namespaces, topology, truncated_frames_through_a_live_attachment,
};
use ingress_common::counter::PORT_COUNTER_PROGRAM;
use ingress_common::lb::{BACKEND_ACTIVE, LbConfig, Reason, SERVICE_STATS_MAP, TC_PROGRAM};
use ingress_common::steer::{
    SK_LOOKUP_PROGRAM, STEER_PORTS_MAP, STEER_SOCKETS_MAP, STEER_STATS_MAP, SteerReason,
};

#[test]
fn tc_ingress_forwards_tcp_frontends_and_passes_everything_else() {
    if !root_or_skip("kernel_datapath") {
        return;
    }
    let t = tag("ikd");
    let namespaces = topology(&t);
    let node = namespaces.0[0].clone();
    in_netns(&node, move || {
        let (mut dp, syn_frame) = datapath_cases(&t, Hook::Tc);
        let if_client = ifindex(&format!("{t}c"));
        // An unresolved next hop: bpf_redirect_neigh takes it (the MACs are
        // the kernel's to fill in after the redirect).
        let syn = Tcp::new(
            CLIENT_MAC,
            NODE_C_MAC,
            (CLIENT, 40_007),
            (NODE, PORT_NO_NEIGH),
            SYN,
        );
        let snat = first_snat_port(
            (CLIENT, 40_007),
            (BACKEND_NO_NEIGH, BACKEND_PORT),
            LbConfig::default(),
        );
        dp.check(&[Case {
            description: "backend without a neighbour entry: rewritten, redirect_neigh",
            ifindex: if_client,
            input: syn.frame(),
            verdict: Verdict::Redirect,
            output: Expect::Frame(
                Tcp {
                    saddr: NODE_PODS,
                    daddr: BACKEND_NO_NEIGH,
                    sport: snat,
                    dport: BACKEND_PORT,
                    ..syn.clone()
                }
                .frame(),
            ),
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
        truncated_frames_through_a_live_attachment(&mut dp, &t, &syn_frame);
    });
    drop(namespaces);
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
    if let Ok(info) = steer.info() {
        eprintln!(
            "{SK_LOOKUP_PROGRAM}: {} instructions verified, {} translated",
            info.verified_instruction_count().unwrap_or(0),
            info.size_translated().unwrap_or(0) / 8
        );
    }
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
    let (namespaces, client_ns, node_ns, pods_ns) = three_namespaces(&t);

    // The backend: echoes every connection until EOF, reports client addresses.
    let server = spawn_echo_server(&pods_ns, ROUNDS);

    let node_t = t.clone();
    let (client_ns2, pods_ns2) = (client_ns.clone(), pods_ns.clone());
    let (dp_reasons, service) = in_netns(&node_ns, move || {
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1")
            .expect("enabling forwarding in the node namespace");
        let (if_client, if_pods) = (
            ifindex(&format!("{node_t}c")),
            ifindex(&format!("{node_t}p")),
        );
        let mut dp = Datapath::load(Hook::Tc);
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
