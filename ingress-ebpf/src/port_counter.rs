//! `xdp_port_counter`: counts IPv4 TCP/UDP packets by destination port and
//! passes every packet unchanged. Packets it cannot attribute to a port are
//! counted by [`PassReason`] instead, so the two maps always add up to the
//! number of packets seen.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use ingress_common::counter::{
    PASS_REASONS_CAPACITY, PORT_COUNTERS_CAPACITY, PassReason, PortCounter,
};

use crate::parse::{ETH_HLEN, ETH_P_IP_BE, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, L4Ports, ptr_at};

#[map(name = "PORT_COUNTERS")]
static PORT_COUNTERS: PerCpuArray<PortCounter> =
    PerCpuArray::with_max_entries(PORT_COUNTERS_CAPACITY, 0);

#[map(name = "PASS_REASONS")]
static PASS_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PASS_REASONS_CAPACITY, 0);

#[xdp]
pub fn xdp_port_counter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match classify(&ctx) {
        Ok(port) => {
            if let Some(slot) = PORT_COUNTERS.get_ptr_mut(u32::from(port)) {
                // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
                unsafe {
                    (*slot).packets += 1;
                    (*slot).bytes += len;
                }
            }
            count_reason(PassReason::Counted);
        }
        Err(reason) => count_reason(reason),
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count_reason(reason: PassReason) {
    if let Some(slot) = PASS_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// The destination port (host order) of an IPv4 TCP/UDP packet.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<u16, PassReason> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let ethertype: *const u16 = ptr_at(start, end, 12).ok_or(PassReason::Truncated)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { *ethertype } != ETH_P_IP_BE {
        return Err(PassReason::NotIpv4);
    }
    let ip: *const Ipv4Hdr = ptr_at(start, end, ETH_HLEN).ok_or(PassReason::Truncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (version_ihl, protocol, frag_off) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).protocol,
            u16::from_be((*ip).frag_off_be),
        )
    };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(PassReason::BadHeaderLength);
    }
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return Err(PassReason::NotTcpUdp);
    }
    // Fragment offset (low 13 bits) non-zero: no L4 header in this packet.
    if frag_off & 0x1fff != 0 {
        return Err(PassReason::Fragment);
    }
    let ports: *const L4Ports = ptr_at(start, end, ETH_HLEN + ihl).ok_or(PassReason::Truncated)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(u16::from_be(unsafe { (*ports).dest_be }))
}
