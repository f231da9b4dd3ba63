//! In-kernel TCP forwarding: frontends, Maglev tables, backends, connection
//! tracking and counters.
//!
//! Userspace decides, the kernel looks up. Userspace computes, from the
//! compiled snapshot, one *service* per forwarded TCP server (its frontends:
//! the nodePort and the listener port), the weighted backend set and its
//! Maglev table; the TC program only does O(1) lookups:
//!
//! ```text
//! packet to local addr:port
//!   -> CONNTRACK[flow]            hit: rewrite as the entry says, redirect
//!   -> FRONTENDS[(addr, port)]    (exact address first, then addr 0 = any)
//!   -> MAGLEV[table_index(service, table, hash(flow) % MAGLEV_SIZE)] -> backend id
//!   -> BACKENDS[id]               DNAT to the backend, SNAT to the egress address
//!   -> CONNTRACK += original and reply entries, FIB lookup, redirect
//! ```
//!
//! Addresses and ports are stored in network byte order (`_be` fields), as
//! they are on the wire; counters and indexes in host order.

/// Hash map `FrontendKey -> Frontend`.
pub const FRONTENDS_MAP: &str = "LB_FRONTENDS";
pub const FRONTENDS_CAPACITY: u32 = 32_768;

/// Array of backend ids (`u32`), `MAGLEV_SIZE` slots per table, two tables
/// per service (see [`maglev_index`]). Slot value 0 means "no backend".
pub const MAGLEV_MAP: &str = "LB_MAGLEV";
/// Slots of one Maglev table: a prime, at least 100x the backends of a
/// service for an even spread (Maglev paper, section 3.4).
pub const MAGLEV_SIZE: u32 = 1021;
/// Services the maps hold by default; userspace may raise it at load time
/// (the Maglev array is sized `2 * MAX_SERVICES * MAGLEV_SIZE`).
pub const MAX_SERVICES: u32 = 1024;

/// Array `backend id -> Backend`. Id 0 is never used.
pub const BACKENDS_MAP: &str = "LB_BACKENDS";
pub const BACKENDS_CAPACITY: u32 = 65_536;

/// LRU hash map `FlowKey -> FlowState`, two entries per connection (one per
/// direction).
pub const CONNTRACK_MAP: &str = "LB_CONNTRACK";
pub const CONNTRACK_CAPACITY: u32 = 262_144;

/// Hash map `ifindex (u32) -> IPv4 address (u32, network order)`: the
/// address to SNAT to when a forwarded packet leaves through that interface.
pub const SNAT_ADDRS_MAP: &str = "LB_SNAT_ADDRS";
pub const SNAT_ADDRS_CAPACITY: u32 = 256;

/// Array with one [`LbConfig`].
pub const CONFIG_MAP: &str = "LB_CONFIG";

/// Per-CPU array indexed by [`Reason`]: packets per verdict reason.
pub const REASONS_MAP: &str = "LB_REASONS";
pub const REASONS_CAPACITY: u32 = 32;

/// Per-CPU array indexed by service id: [`TrafficCounters`] of each service.
pub const SERVICE_STATS_MAP: &str = "LB_SERVICE_STATS";
/// Per-CPU array indexed by backend id: [`TrafficCounters`] of each backend.
pub const BACKEND_STATS_MAP: &str = "LB_BACKEND_STATS";

/// Name of the TC classifier (attached with tcx on ingress of the node
/// interfaces that do not get native XDP).
pub const TC_PROGRAM: &str = "tc_ingress";

/// Name of the XDP program: the same forwarding as [`TC_PROGRAM`] over the
/// same maps, attached in driver (native) mode where that pays off.
pub const XDP_PROGRAM: &str = "xdp_ingress";

/// IP protocol number of TCP, the only one forwarded so far.
pub const PROTO_TCP: u8 = 6;

/// Where a frontend listens. `addr_be == 0` matches every local address
/// (a nodePort, or a listener bound to 0.0.0.0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 8);

/// A frontend's service and which of its two Maglev tables is live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// Index of the service (Maglev tables, service counters); `< MAX_SERVICES`.
    pub service_id: u32,
    /// 0 or 1: the live table. Userspace writes the other one, then flips
    /// this (make-before-break).
    pub table: u32,
    /// `FRONTEND_*` flags.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Frontend>() == 16);

/// The Maglev slot index of `slot` in table `table` of service `service_id`.
#[inline(always)]
pub const fn maglev_index(service_id: u32, table: u32, slot: u32) -> u32 {
    (service_id * 2 + (table & 1)) * MAGLEV_SIZE + slot
}

/// One backend endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr_be: u32,
    pub port_be: u16,
    /// `BACKEND_*` flags.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 8);

/// The backend slot is in use.
pub const BACKEND_ACTIVE: u16 = 1;

/// A connection-tracking key: the packet's addresses and ports as seen on
/// arrival, before any rewrite.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// What to do with packets of one direction of a tracked connection:
/// rewrite source and destination to these values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub new_saddr_be: u32,
    pub new_daddr_be: u32,
    pub new_sport_be: u16,
    pub new_dport_be: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// `FLOW_*` flags.
    pub flags: u32,
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FlowState>() == 32);

/// The entry is for the reply direction (backend -> client).
pub const FLOW_REPLY: u32 = 1;
/// A FIN was seen in this direction.
pub const FLOW_FIN: u32 = 2;
/// A RST was seen: the connection is over; userspace may reap the entry.
pub const FLOW_RST: u32 = 4;

/// Global settings, written by userspace once per load.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbConfig {
    /// SNAT source ports are taken from `[snat_port_min, snat_port_max]`
    /// (host order), a range outside the node's ephemeral ports.
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    /// [`ABI_VERSION`](crate::ABI_VERSION) of the userspace that wrote the maps.
    pub abi_version: u32,
}
const _: () = assert!(core::mem::size_of::<LbConfig>() == 8);

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            snat_port_min: 61_000,
            snat_port_max: 65_535,
            abi_version: crate::ABI_VERSION,
        }
    }
}

/// Packets, bytes and new connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}
const _: () = assert!(core::mem::size_of::<TrafficCounters>() == 24);

/// Why the forwarding program (`tc_ingress` or `xdp_ingress`) gave a packet
/// the verdict it did. The discriminant is the index into `LB_REASONS`.
/// Every packet is counted exactly once. New reasons are appended: the
/// discriminants are indexes into pinned maps.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Forwarded to a backend (original direction).
    Forwarded = 0,
    /// Reply forwarded back to the client.
    ReplyForwarded = 1,
    /// Passed: not IPv4 (ARP, IPv6, ...).
    PassNotIpv4 = 2,
    /// Passed: IPv4 but not TCP.
    PassNotTcp = 3,
    /// Passed: no frontend and no tracked flow for this destination.
    PassNoFrontend = 4,
    /// Passed: an IPv4 fragment (never forwarded; the stack reassembles).
    PassFragment = 5,
    /// Passed: truncated Ethernet/IP/TCP header or bogus header length.
    PassMalformed = 6,
    /// Dropped: a frontend without any backend.
    DropNoBackend = 7,
    /// Dropped: no free SNAT port for the new connection.
    DropSnatExhausted = 8,
    /// Dropped: the FIB has no route to the backend (or the client).
    DropNoRoute = 9,
    /// Dropped: a non-SYN packet for a frontend without a tracked flow
    /// (e.g. after the conntrack entry was evicted).
    DropNoFlow = 10,
    /// Dropped: the conntrack map refused the new entries.
    DropConntrackFull = 11,
    /// Dropped: no SNAT address is known for the egress interface.
    DropNoSnatAddress = 12,
    /// Dropped: rewriting the packet failed (helper error).
    DropRewrite = 13,
    /// Passed (`xdp_ingress` only): the FIB knows the route but not the
    /// next hop's MAC address yet. XDP cannot ask the neighbour code to
    /// resolve it (TC has `bpf_redirect_neigh`), so the packet goes up,
    /// unchanged, to the TC program behind it.
    PassNoNeigh = 14,
}

impl Reason {
    /// Every reason, in index order.
    pub const ALL: [Reason; 15] = [
        Reason::Forwarded,
        Reason::ReplyForwarded,
        Reason::PassNotIpv4,
        Reason::PassNotTcp,
        Reason::PassNoFrontend,
        Reason::PassFragment,
        Reason::PassMalformed,
        Reason::DropNoBackend,
        Reason::DropSnatExhausted,
        Reason::DropNoRoute,
        Reason::DropNoFlow,
        Reason::DropConntrackFull,
        Reason::DropNoSnatAddress,
        Reason::DropRewrite,
        Reason::PassNoNeigh,
    ];

    /// The label userspace exports.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::Forwarded => "forwarded",
            Reason::ReplyForwarded => "reply_forwarded",
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassNotTcp => "pass_not_tcp",
            Reason::PassNoFrontend => "pass_no_frontend",
            Reason::PassFragment => "pass_fragment",
            Reason::PassMalformed => "pass_malformed",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropSnatExhausted => "drop_snat_exhausted",
            Reason::DropNoRoute => "drop_no_route",
            Reason::DropNoFlow => "drop_no_flow",
            Reason::DropConntrackFull => "drop_conntrack_full",
            Reason::DropNoSnatAddress => "drop_no_snat_address",
            Reason::DropRewrite => "drop_rewrite",
            Reason::PassNoNeigh => "pass_no_neigh",
        }
    }
}

const _: () = assert!((Reason::ALL.len() as u32) <= REASONS_CAPACITY);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): `repr(C)`, explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::FrontendKey {}
    unsafe impl aya::Pod for super::Frontend {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::LbConfig {}
    unsafe impl aya::Pod for super::TrafficCounters {}
}

/// The flow hash that picks a Maglev slot: a murmur3-style mix of the
/// client's address and port and the frontend's address and port. Pure and
/// loop-free so that both the eBPF program and userspace (`explain`) compute
/// it the same way.
#[inline(always)]
pub const fn flow_hash(saddr_be: u32, daddr_be: u32, sport_be: u16, dport_be: u16) -> u32 {
    let mut h: u32 = 0x9747_b28c;
    h = mix(h, saddr_be);
    h = mix(h, daddr_be);
    h = mix(h, ((sport_be as u32) << 16) | dport_be as u32);
    // murmur3 finalizer
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_indexes_fit_the_array() {
        let last = maglev_index(MAX_SERVICES - 1, 1, MAGLEV_SIZE - 1);
        assert_eq!(last, 2 * MAX_SERVICES * MAGLEV_SIZE - 1);
        assert_eq!(maglev_index(3, 0, 0) + MAGLEV_SIZE, maglev_index(3, 1, 0));
    }

    #[test]
    fn flow_hash_spreads_client_ports_over_slots() {
        let mut slots = [0u32; MAGLEV_SIZE as usize];
        let node = u32::from_be_bytes([198, 18, 0, 1]).to_be();
        let flows = 50 * MAGLEV_SIZE;
        for flow in 0..flows {
            let client = (u32::from_be_bytes([198, 18, 0, 2]) + flow / 20_000).to_be();
            let sport = (30_000 + (flow % 20_000) as u16).to_be();
            let h = flow_hash(client, node, sport, 30_306u16.to_be());
            slots[(h % MAGLEV_SIZE) as usize] += 1;
        }
        let (min, max) = (slots.iter().min().copied(), slots.iter().max().copied());
        // 50 flows per slot on average; a decent hash stays well within 2x.
        assert!(
            min.unwrap_or(0) >= 20 && max.unwrap_or(u32::MAX) <= 100,
            "{min:?} {max:?}"
        );
    }
}
