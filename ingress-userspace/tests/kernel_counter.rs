//! Root test of the kernel stage: loads `xdp_port_counter` on a veth inside
//! a network namespace of its own, sends a known number of packets across the
//! veth and reads the per-port and pass-reason counters back.
//!
//! Topology (both namespaces are created and deleted by the test):
//!
//! ```text
//! ns <tag>-tx  veth <tag>a 198.18.0.1/30 ---- veth <tag>b 198.18.0.2/30 (XDP)  ns <tag>-rx
//! ```
//!
//! Needs root. Without it the test fails, unless `INGRESSD_SKIP_ROOT_TESTS=1`,
//! which turns it into a loud skip.

use std::fs::File;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use ingress_common::counter::PassReason;
use ingress_userspace::kernel::{AttachMode, PortCounterProgram};

const TX_ADDR: &str = "198.18.0.1";
const RX_ADDR: &str = "198.18.0.2";
const UDP_PORT: u16 = 9;
const TCP_PORT: u16 = 10;
const UDP_PACKETS: u64 = 50;
const UDP_PAYLOAD: usize = 32;
const TCP_ATTEMPTS: u64 = 5;
const PINGS: u64 = 3;

/// Deletes the namespaces (and with them the veth pair) when dropped, also
/// when the test panics.
struct Namespaces {
    tx: String,
    rx: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.tx, &self.rx] {
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
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: setns on a valid namespace fd; it only affects this thread,
        // which exists for this closure alone.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn xdp_port_counter_counts_packets_by_destination_port() {
    if !is_root() {
        if std::env::var("INGRESSD_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
            eprintln!("\n*** SKIPPED kernel_counter: not root (INGRESSD_SKIP_ROOT_TESTS=1) ***\n");
            return;
        }
        panic!(
            "kernel_counter needs root (network namespaces, XDP); run as root or set INGRESSD_SKIP_ROOT_TESTS=1 to skip"
        );
    }

    // Interface names are limited to 15 bytes: "ikc" + 6 hex digits + suffix.
    let tag = format!(
        "ikc{:06x}",
        (std::process::id()
            ^ std::time::UNIX_EPOCH
                .elapsed()
                .map_or(0, |d| d.subsec_nanos()))
            & 0xff_ffff
    );
    let namespaces = Namespaces {
        tx: format!("{tag}-tx"),
        rx: format!("{tag}-rx"),
    };
    let (veth_tx, veth_rx) = (format!("{tag}a"), format!("{tag}b"));
    ip(&["netns", "add", &namespaces.tx]);
    ip(&["netns", "add", &namespaces.rx]);
    ip(&[
        "link",
        "add",
        &veth_tx,
        "netns",
        &namespaces.tx,
        "type",
        "veth",
        "peer",
        "name",
        &veth_rx,
        "netns",
        &namespaces.rx,
    ]);
    for (ns, dev, addr) in [
        (&namespaces.tx, &veth_tx, TX_ADDR),
        (&namespaces.rx, &veth_rx, RX_ADDR),
    ] {
        ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    // Load and attach inside the receiving namespace: the interface name is
    // resolved in the namespace of the calling thread.
    let dev = veth_rx.clone();
    let program = in_netns(&namespaces.rx, move || {
        let mut program = PortCounterProgram::load().expect("loading the eBPF object");
        program
            .attach(&dev, AttachMode::Skb)
            .expect("attaching xdp_port_counter");
        program
    });
    let before = program
        .port_counter(UDP_PORT)
        .expect("reading PORT_COUNTERS");
    assert_eq!(before.packets, 0);

    // Resolve the neighbour first so no packet of the counted burst waits on ARP.
    let ping = Command::new("ip")
        .args(["netns", "exec", &namespaces.tx, "ping", "-c"])
        .arg(PINGS.to_string())
        .args(["-i", "0.2", "-W", "1", RX_ADDR])
        .output()
        .expect("running ping");
    assert!(
        ping.status.success(),
        "ping across the veth failed: {}",
        String::from_utf8_lossy(&ping.stderr)
    );

    in_netns(&namespaces.tx, || {
        let socket = UdpSocket::bind((TX_ADDR, 0)).expect("binding a UDP socket");
        for _ in 0..UDP_PACKETS {
            socket
                .send_to(&[0u8; UDP_PAYLOAD], (RX_ADDR, UDP_PORT))
                .expect("sending UDP");
        }
        let target: SocketAddr = format!("{RX_ADDR}:{TCP_PORT}").parse().expect("address");
        for _ in 0..TCP_ATTEMPTS {
            // Nothing listens: one SYN, answered by a RST, refused.
            let _ = TcpStream::connect_timeout(&target, Duration::from_secs(1));
        }
    });
    // Generic XDP runs synchronously on receive; give the softirq a moment anyway.
    std::thread::sleep(Duration::from_millis(200));

    let udp = program
        .port_counter(UDP_PORT)
        .expect("reading PORT_COUNTERS");
    assert_eq!(udp.packets, UDP_PACKETS, "UDP packets to port {UDP_PORT}");
    // Ethernet 14 + IPv4 20 + UDP 8 + payload.
    assert_eq!(udp.bytes, UDP_PACKETS * (14 + 20 + 8 + UDP_PAYLOAD) as u64);
    let tcp = program
        .port_counter(TCP_PORT)
        .expect("reading PORT_COUNTERS");
    assert_eq!(tcp.packets, TCP_ATTEMPTS, "TCP SYNs to port {TCP_PORT}");

    let all = program.port_counters().expect("scanning PORT_COUNTERS");
    assert!(
        all.iter()
            .any(|p| p.port == UDP_PORT && p.packets == UDP_PACKETS)
    );
    assert!(all.iter().all(|p| p.packets > 0));

    let reasons = program.pass_reasons().expect("reading PASS_REASONS");
    let count = |reason: PassReason| {
        reasons
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    };
    assert!(
        count(PassReason::NotTcpUdp) >= PINGS,
        "pings counted as not_tcp_udp: {reasons:?}"
    );
    assert!(
        count(PassReason::NotIpv4) >= 1,
        "ARP counted as not_ipv4: {reasons:?}"
    );
    assert!(
        count(PassReason::Counted) >= UDP_PACKETS + TCP_ATTEMPTS,
        "counted: {reasons:?}"
    );

    drop(program);
    drop(namespaces);
}
