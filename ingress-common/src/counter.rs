//! Packet accounting of the port-counter XDP program.
//!
//! `xdp_port_counter` counts every IPv4 TCP/UDP packet it sees by destination
//! port, and every packet it could not attribute to a port by a [`PassReason`].
//! It never changes a packet: every verdict is `XDP_PASS`.

/// Name of the per-CPU array indexed by destination port (host byte order).
pub const PORT_COUNTERS_MAP: &str = "PORT_COUNTERS";
/// One slot per possible port number.
pub const PORT_COUNTERS_CAPACITY: u32 = 65_536;

/// Name of the per-CPU array indexed by [`PassReason`].
pub const PASS_REASONS_MAP: &str = "PASS_REASONS";
/// Number of slots in the pass-reason array (reasons are `0..PASS_REASONS_CAPACITY`).
pub const PASS_REASONS_CAPACITY: u32 = 8;

/// Name of the XDP program in the object file.
pub const PORT_COUNTER_PROGRAM: &str = "xdp_port_counter";

/// Value of one `PORT_COUNTERS` slot, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounter {
    /// Packets seen with this destination port.
    pub packets: u64,
    /// Bytes of those packets, from the start of the Ethernet header.
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PortCounter>() == 16);

#[cfg(feature = "user")]
// SAFETY: `PortCounter` is `repr(C)`, has no padding and every bit pattern is valid.
unsafe impl aya::Pod for PortCounter {}

/// Why a packet was passed without being counted by port. The discriminant is
/// the index into `PASS_REASONS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassReason {
    /// Counted in `PORT_COUNTERS` (kept here so totals add up).
    Counted = 0,
    /// Shorter than an Ethernet header, or an IP/L4 header ran past the end.
    Truncated = 1,
    /// Not IPv4 (ARP, IPv6, ...).
    NotIpv4 = 2,
    /// IPv4 but neither TCP nor UDP (ICMP, ...).
    NotTcpUdp = 3,
    /// A non-first IPv4 fragment: it carries no L4 header.
    Fragment = 4,
    /// IPv4 header length field below 20 bytes.
    BadHeaderLength = 5,
}

impl PassReason {
    /// Every reason, in index order.
    pub const ALL: [PassReason; 6] = [
        PassReason::Counted,
        PassReason::Truncated,
        PassReason::NotIpv4,
        PassReason::NotTcpUdp,
        PassReason::Fragment,
        PassReason::BadHeaderLength,
    ];

    /// The label userspace exports for this reason.
    pub const fn label(self) -> &'static str {
        match self {
            PassReason::Counted => "counted",
            PassReason::Truncated => "truncated",
            PassReason::NotIpv4 => "not_ipv4",
            PassReason::NotTcpUdp => "not_tcp_udp",
            PassReason::Fragment => "fragment",
            PassReason::BadHeaderLength => "bad_header_length",
        }
    }
}

const _: () = assert!((PassReason::ALL.len() as u32) <= PASS_REASONS_CAPACITY);
