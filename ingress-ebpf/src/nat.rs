//! Kernel stage, NAT: SNAT addresses and ports, and the rewrite of a
//! packet's addresses and ports (DNAT + SNAT on the way to a backend, the
//! reverse on the way back).

use core::num::NonZeroU32;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
    programs::{TcContext, XdpContext},
};
use ingress_common::lb::{
    Backend, FLOW_REPLY, FlowState, LbConfig, Reason, SNAT_ADDRS_CAPACITY, flow_hash,
};

use crate::conntrack::{self, Claim};
use crate::csum;
use crate::parse::{ETH_HLEN, IP_ADDRS_OFF, Ipv4Hdr, Tcp4, TcpHdr, ptr_at};

#[map(name = "LB_SNAT_ADDRS")]
static LB_SNAT_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(SNAT_ADDRS_CAPACITY, 0);

#[map(name = "LB_CONFIG")]
static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// SNAT ports tried for one new connection before giving up. Bounded so the
/// verifier can see the loop end; 16 misses in a row only happen when the
/// range is nearly full for this backend, and then dropping the SYN (the
/// client retries) is better than scanning thousands of ports per packet.
const SNAT_PROBES: u32 = 16;

/// Addresses and ports of a packet after the rewrite (network order).
pub struct Tuple {
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
}

/// The address forwarded packets leaving through `ifindex` are SNATed to.
#[inline(always)]
pub fn snat_addr(ifindex: u32) -> Result<u32, Reason> {
    LB_SNAT_ADDRS
        .get_ptr(ifindex)
        // SAFETY: a value pointer from a successful lookup; copied out at once.
        .map(|addr| unsafe { *addr })
        .ok_or(Reason::DropNoSnatAddress)
}

/// Creates the two conntrack entries of a new connection from the client
/// `pkt` came from to `backend`, SNATed to `snat_addr_be`, and returns the
/// SNAT port (network order).
///
/// The port search starts at `flow_hash(client, backend) % range` inside the
/// configured range (deterministic, so tests can predict it; spread, so
/// connections do not all compete for the bottom of the range) and walks up
/// from there, wrapping inside the range. A port is taken
/// by inserting the reply entry (backend -> SNAT address:port) with
/// `BPF_NOEXIST`: two CPUs can never claim the same port towards the same
/// backend. The original-direction entry is written after that.
#[inline(always)]
pub fn open_flow(
    pkt: &Tcp4,
    service_id: u32,
    backend_id: u32,
    backend: &Backend,
    snat_addr_be: u32,
    now_ns: u64,
) -> Result<u16, Reason> {
    let config = match LB_CONFIG.get(0) {
        // All zeroes: userspace has not written the config (yet).
        Some(config) if config.abi_version != 0 => *config,
        _ => LbConfig::default(),
    };
    let (min, max) = (
        u32::from(config.snat_port_min),
        u32::from(config.snat_port_max),
    );
    if min == 0 || max < min {
        return Err(Reason::DropSnatExhausted);
    }
    // Non-zero by construction; the type keeps a division-by-zero panic
    // path (which the verifier would reject) out of the program.
    let Some(range) = NonZeroU32::new(max - min + 1) else {
        return Err(Reason::DropSnatExhausted);
    };
    let start = flow_hash(pkt.saddr_be, backend.addr_be, pkt.sport_be, backend.port_be) % range;
    let reply = FlowState {
        new_saddr_be: pkt.daddr_be,
        new_daddr_be: pkt.saddr_be,
        new_sport_be: pkt.dport_be,
        new_dport_be: pkt.sport_be,
        service_id,
        backend_id,
        flags: FLOW_REPLY,
        last_seen_ns: now_ns,
    };
    for probe in 0..SNAT_PROBES {
        let port_be = ((min + (start + probe) % range) as u16).to_be();
        let reply_key = conntrack::key(backend.addr_be, snat_addr_be, backend.port_be, port_be);
        match conntrack::claim(&reply_key, &reply) {
            Claim::Claimed => {}
            // A port held by a connection that is over is taken over.
            Claim::Taken if conntrack::reclaim_if_closed(&reply_key, now_ns) => {
                match conntrack::claim(&reply_key, &reply) {
                    Claim::Claimed => {}
                    Claim::Taken => continue,
                    Claim::Failed => return Err(Reason::DropConntrackFull),
                }
            }
            Claim::Taken => continue,
            Claim::Failed => return Err(Reason::DropConntrackFull),
        }
        let original_key = conntrack::key(pkt.saddr_be, pkt.daddr_be, pkt.sport_be, pkt.dport_be);
        let original = FlowState {
            new_saddr_be: snat_addr_be,
            new_daddr_be: backend.addr_be,
            new_sport_be: port_be,
            new_dport_be: backend.port_be,
            service_id,
            backend_id,
            flags: 0,
            last_seen_ns: now_ns,
        };
        if conntrack::insert(&original_key, &original).is_err() {
            conntrack::remove(&reply_key);
            return Err(Reason::DropConntrackFull);
        }
        return Ok(port_be);
    }
    Err(Reason::DropSnatExhausted)
}

/// XDP: rewrites the packet's addresses and ports to `to` in place, with
/// RFC 1624 updates of the IPv4 header checksum (addresses) and the TCP
/// checksum (pseudo-header addresses and ports). Branch-free: unchanged
/// fields add `~x + x`, negative zero, which leaves the sum as it is.
#[inline(always)]
pub fn rewrite_xdp(ctx: &XdpContext, pkt: &Tcp4, to: &Tuple) -> Result<(), Reason> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ip = ptr_at::<Ipv4Hdr>(start, end, ETH_HLEN)
        .ok_or(Reason::DropRewrite)?
        .cast_mut();
    // The offset was checked by parse; the mask restates its bound (at most
    // 14 + 60) for the verifier, which may have lost it across the map
    // lookups and helper calls since.
    let l4_off = (pkt.l4_off & 0x7f) as usize;
    let tcp = ptr_at::<TcpHdr>(start, end, l4_off)
        .ok_or(Reason::DropRewrite)?
        .cast_mut();
    let addrs = csum::diff32(pkt.saddr_be, to.saddr_be) + csum::diff32(pkt.daddr_be, to.daddr_be);
    let ports = csum::diff16(pkt.sport_be, to.sport_be) + csum::diff16(pkt.dport_be, to.dport_be);
    // SAFETY: both headers bounds-checked above; the frame is writable.
    unsafe {
        (*ip).check_be = csum::apply((*ip).check_be, addrs);
        (*ip).saddr_be = to.saddr_be;
        (*ip).daddr_be = to.daddr_be;
        (*tcp).check_be = csum::apply((*tcp).check_be, addrs + ports);
        (*tcp).source_be = to.sport_be;
        (*tcp).dest_be = to.dport_be;
    }
    Ok(())
}

/// TC: rewrites the packet's addresses and ports to `to`, with incremental
/// checksum updates. Only writes what changes.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, pkt: &Tcp4, to: &Tuple) -> Result<(), Reason> {
    if pkt.saddr_be != to.saddr_be {
        csum::replace_addr(ctx, pkt.l4_off, pkt.saddr_be, to.saddr_be)?;
    }
    if pkt.daddr_be != to.daddr_be {
        csum::replace_addr(ctx, pkt.l4_off, pkt.daddr_be, to.daddr_be)?;
    }
    if pkt.sport_be != to.sport_be {
        csum::replace_port(ctx, pkt.l4_off, pkt.sport_be, to.sport_be)?;
    }
    if pkt.dport_be != to.dport_be {
        csum::replace_port(ctx, pkt.l4_off, pkt.dport_be, to.dport_be)?;
    }
    ctx.store(IP_ADDRS_OFF as usize, &[to.saddr_be, to.daddr_be], 0)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.store(pkt.l4_off as usize, &[to.sport_be, to.dport_be], 0)
        .map_err(|_| Reason::DropRewrite)
}
