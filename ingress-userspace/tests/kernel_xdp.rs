//! Root test of `xdp_ingress`, the native-XDP twin of `tc_ingress`.
//!
//! The same Katran-style table as `kernel_datapath.rs` (in `common/`), run
//! through `BPF_PROG_TEST_RUN` on `xdp_ingress`: same verdicts (in XDP
//! terms), same output bytes, same reason counters, checksums recomputed
//! from scratch. XDP-only cases: a passed packet carries the "passed" mark
//! in its XDP metadata, and a next hop without a neighbour entry is passed
//! up unchanged and unmarked (`PassNoNeigh`) without creating a flow.
//!
//! Then real TCP between namespaces through `xdp_ingress` attached in driver
//! mode on the node's veths, with `tc_ingress` behind it (tcx) as the daemon
//! attaches them; the receiving veth peers get an XDP program of their own,
//! without which a veth drops frames redirected into it.
//!
//! Needs root. Without it the tests fail, unless `INGRESSD_SKIP_ROOT_TESTS=1`,
//! which turns them into a loud skip.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use aya::Ebpf;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use common::packets::{SYN, Tcp};
use common::{
    BACKEND, BACKEND_PORT, CLIENT, CLIENT_MAC, Case, Datapath, Expect, Hook, NODE, NODE_C_MAC,
    NODE_PODS, NODE_PORT, Namespaces, PORT_NO_NEIGH, Verdict, datapath_cases, flow_key, ifindex,
    in_netns, ip, root_or_skip, set_tx_checksum_offload, spawn_echo_server, tag, three_namespaces,
    topology, truncated_frames_through_a_live_attachment,
};
use ingress_common::counter::PORT_COUNTER_PROGRAM;
use ingress_common::lb::{
    BACKEND_ACTIVE, LbConfig, Reason, SERVICE_STATS_MAP, TC_PROGRAM, XDP_PROGRAM,
};

#[test]
fn xdp_ingress_forwards_tcp_frontends_and_passes_everything_else() {
    if !root_or_skip("kernel_xdp") {
        return;
    }
    let t = tag("ixd");
    let namespaces = topology(&t);
    let node = namespaces.0[0].clone();
    in_netns(&node, move || {
        let (mut dp, syn_frame) = datapath_cases(&t, Hook::Xdp);
        let if_client = ifindex(&format!("{t}c"));
        let syn = Tcp::new(
            CLIENT_MAC,
            NODE_C_MAC,
            (CLIENT, 40_007),
            (NODE, PORT_NO_NEIGH),
            SYN,
        );
        dp.check(&[Case {
            description: "backend without a neighbour entry: passed up unchanged and unmarked",
            ifindex: if_client,
            input: syn.frame(),
            verdict: Verdict::Pass,
            output: Expect::Unchanged,
            reason: Reason::PassNoNeigh,
        }]);
        assert!(
            dp.flow(&flow_key(CLIENT, 40_007, NODE, PORT_NO_NEIGH))
                .is_none(),
            "a packet passed for an unresolved neighbour must not open a flow"
        );
        // XDP test runs take any frame of at least an Ethernet header; the
        // cut ones are passed as malformed like the others.
        for len in [14, 15, 14 + 12, 14 + 19, 14 + 20, 14 + 20 + 19] {
            dp.check(&[Case {
                description: "frame cut inside the IPv4 or TCP header",
                ifindex: if_client,
                input: syn_frame[..len].to_vec(),
                verdict: Verdict::Pass,
                output: Expect::Unchanged,
                reason: Reason::PassMalformed,
            }]);
        }
        assert!(
            dp.run(if_client, &syn_frame[..13]).is_err(),
            "BPF_PROG_TEST_RUN rejects a frame shorter than an Ethernet header"
        );
        truncated_frames_through_a_live_attachment(&mut dp, &t, &syn_frame);
    });
    drop(namespaces);
}

/// Attaches `xdp_port_counter` (passes every packet) in driver mode to
/// `dev` in namespace `ns`: a veth drops frames another device's XDP program
/// redirects into it unless its peer, the receiving end, runs XDP itself.
/// The returned object keeps it attached.
fn xdp_receiver(ns: &str, dev: String) -> Ebpf {
    in_netns(ns, move || {
        let mut ebpf = Ebpf::load(ingress_userspace::kernel::object()).expect("parsing the object");
        let program: &mut Xdp = ebpf
            .program_mut(PORT_COUNTER_PROGRAM)
            .expect("xdp_port_counter in the object")
            .try_into()
            .expect("xdp_port_counter is XDP");
        program.load().expect("loading xdp_port_counter");
        program
            .attach(&dev, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attaching xdp_port_counter to {dev}: {e}"));
        ebpf
    })
}

/// Real TCP through `xdp_ingress` (driver mode) on both node interfaces,
/// `tc_ingress` behind it: a client connects to the nodePort, the kernel
/// forwards to an echo server in the pods namespace, and the data comes
/// back. Neighbours are left to ARP, so the first SYN finds no neighbour
/// for the backend: `xdp_ingress` passes it (`PassNoNeigh`) and
/// `tc_ingress` forwards it with `bpf_redirect_neigh`; the second
/// connection goes through XDP alone. The senders compute full checksums
/// (see below), which the receiving stacks verify.
///
/// ```text
/// ns client  <tag>C 198.18.0.2 -- <tag>c 198.18.0.1  ns node  <tag>p 198.18.1.1 -- <tag>P 198.18.1.20  ns pods
///   (xdp_port_counter)   (xdp_ingress drv + tc_ingress on both node interfaces)  (xdp_port_counter)  echo :3306
/// ```
#[test]
fn xdp_ingress_forwards_real_tcp_connections_between_namespaces() {
    if !root_or_skip("kernel_xdp") {
        return;
    }
    const ROUNDS: usize = 2;
    const PAYLOAD: usize = 256 * 1024;
    let t = tag("ixe");
    let (namespaces, client_ns, node_ns, pods_ns) = three_namespaces(&t);
    let _client_xdp = xdp_receiver(&client_ns, format!("{t}C"));
    let _pods_xdp = xdp_receiver(&pods_ns, format!("{t}P"));

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
        let mut dp = Datapath::load(Hook::Xdp);
        dp.set_config(LbConfig::default());
        dp.set_frontend(NODE, NODE_PORT, 0, 0);
        dp.set_backend(1, BACKEND, BACKEND_PORT, BACKEND_ACTIVE);
        dp.fill_maglev(0, 0, 1);
        dp.set_snat_addr(if_client, NODE);
        dp.set_snat_addr(if_pods, NODE_PODS);
        let devs = [format!("{node_t}c"), format!("{node_t}p")];
        {
            let program: &mut Xdp = dp
                .ebpf
                .program_mut(XDP_PROGRAM)
                .expect("xdp_ingress in the object")
                .try_into()
                .expect("xdp_ingress is XDP");
            for dev in &devs {
                program
                    .attach(dev, XdpMode::Driver)
                    .unwrap_or_else(|e| panic!("attaching xdp_ingress to {dev} (drv): {e}"));
            }
        }
        let program: &mut SchedClassifier = dp
            .ebpf
            .program_mut(TC_PROGRAM)
            .expect("tc_ingress in the object")
            .try_into()
            .expect("tc_ingress is a classifier");
        program.load().expect("loading tc_ingress");
        for dev in &devs {
            program
                .attach(dev, TcAttachType::Ingress)
                .unwrap_or_else(|e| panic!("attaching tc_ingress to {dev}: {e}"));
        }

        // The senders compute full checksums: a veth hands a local
        // socket's CHECKSUM_PARTIAL packet to native XDP as it is (the TCP
        // field holds only the pseudo-header sum) and an XDP redirect drops
        // the skb that said so, so the receiver would reject it, rewritten
        // or not. A NIC never receives partial checksums; on veth this is
        // why `--xdp auto` keeps TC (ARCHITECTURE.md).
        let client_dev = format!("{node_t}C");
        let pods_dev = format!("{node_t}P");
        in_netns(&client_ns2, move || {
            set_tx_checksum_offload(&client_dev, false)
        });
        in_netns(&pods_ns2, move || set_tx_checksum_offload(&pods_dev, false));
        let mut no_neigh_after_round = Vec::new();
        for round in 0..ROUNDS {
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
            no_neigh_after_round.push(dp.reasons()[Reason::PassNoNeigh as usize]);
        }
        assert_eq!(
            no_neigh_after_round,
            [1, 1],
            "only the first SYN of the first round meets an unresolved neighbour; \
             the second connection is forwarded by xdp_ingress from its SYN on"
        );
        (dp.reasons(), dp.traffic(SERVICE_STATS_MAP, 0))
    });

    let peers = server.join().expect("echo server");
    for peer in &peers {
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(NODE_PODS),
            "the backend sees the SNAT address"
        );
    }
    let count = |reason: Reason| dp_reasons[reason as usize];
    eprintln!(
        "reasons: {:?}",
        Reason::ALL
            .iter()
            .map(|r| (r.label(), count(*r)))
            .filter(|(_, n)| *n != 0)
            .collect::<Vec<_>>()
    );
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

/// Whether `dev` (in the calling thread's namespace) has an XDP program.
fn has_xdp(dev: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-d", "link", "show", dev])
        .output()
        .expect("running ip link show");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// The manager's hook choice and XDP link lifecycle: `--xdp on` attaches
/// `xdp_ingress` in driver mode (veth accepts it) with `tc_ingress` behind,
/// pins `links/xdp_ingress@<if>`; a restart adopts the links; `--xdp auto`
/// puts veths on TC and removes the XDP links; cleanup leaves nothing.
#[test]
fn manager_picks_the_hook_per_interface_and_pins_xdp_links() {
    use ingress_userspace::kernel::manager::{self, KernelManager, KernelOptions, XdpMode};
    if !root_or_skip("kernel_xdp") {
        return;
    }
    let t = tag("ixm");
    let namespaces = Namespaces(vec![format!("{t}-node"), format!("{t}-peer")]);
    let (node, peer) = (namespaces.0[0].clone(), namespaces.0[1].clone());
    ip(&["netns", "add", &node]);
    ip(&["netns", "add", &peer]);
    let devs = [format!("{t}a"), format!("{t}b")];
    for (i, dev) in devs.iter().enumerate() {
        ip(&[
            "link",
            "add",
            dev,
            "netns",
            &node,
            "type",
            "veth",
            "peer",
            "name",
            &dev.to_uppercase(),
            "netns",
            &peer,
        ]);
        ip(&[
            "-n",
            &node,
            "addr",
            "add",
            &format!("198.18.{}.1/24", 40 + i),
            "dev",
            dev,
        ]);
        ip(&["-n", &node, "link", "set", dev, "up"]);
    }
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/ingressd-test-{t}"));
    let root2 = root.clone();
    in_netns(&node, move || {
        let options = |xdp| KernelOptions {
            pin_root: root2.clone(),
            interfaces: devs.to_vec(),
            xdp,
            ..KernelOptions::default()
        };
        let pins = |m: &KernelManager| -> Vec<String> {
            m.pins()
                .into_iter()
                .map(|p| {
                    p.trim_start_matches(&format!("{}/", root2.display()))
                        .to_owned()
                })
                .collect()
        };
        let started = KernelManager::start(&options(XdpMode::On))
            .unwrap_or_else(|e| panic!("--xdp on: {}", ingress_userspace::kernel::chain(&e)));
        for (hook, dev) in started.hooks().iter().zip(&devs) {
            assert_eq!((hook.hook, hook.link), ("xdp", "attached"), "{hook:?}");
            assert_eq!(hook.driver.as_deref(), Some("veth"));
            assert!(has_xdp(dev), "{dev} runs xdp_ingress");
            let pins = pins(&started);
            for link in [
                format!("links/xdp_ingress@{dev}"),
                format!("links/tc_ingress@{dev}"),
            ] {
                assert!(pins.contains(&link), "{link} in {pins:?}");
            }
            assert!(pins.contains(&"progs/xdp_ingress".to_owned()));
        }
        drop(started);
        assert!(
            devs.iter().all(|d| has_xdp(d)),
            "pinned links outlive the manager"
        );

        let adopted = KernelManager::start(&options(XdpMode::On)).expect("restart");
        assert!(adopted.adopted());
        for hook in adopted.hooks() {
            assert_eq!((hook.hook, hook.link), ("xdp", "kept"), "{hook:?}");
        }
        drop(adopted);

        let auto = KernelManager::start(&options(XdpMode::Auto)).expect("--xdp auto");
        for (hook, dev) in auto.hooks().iter().zip(&devs) {
            assert_eq!(hook.hook, "tc", "{hook:?}");
            assert!(hook.reason.contains("virtual device"), "{}", hook.reason);
            assert!(!has_xdp(dev), "the XDP link of {dev} was removed");
            assert!(!pins(&auto).contains(&format!("links/xdp_ingress@{dev}")));
        }
        drop(auto);

        let off = KernelManager::start(&options(XdpMode::Off)).expect("--xdp off");
        assert!(off.hooks().iter().all(|h| h.reason == "tc: --xdp off"));
        drop(off);
        manager::cleanup(&root2).expect("cleanup");
        assert!(!root2.exists(), "cleanup removes the pin root");
        assert!(devs.iter().all(|d| !has_xdp(d)));
    });
    let _ = manager::cleanup(&root);
    drop(namespaces);
}
