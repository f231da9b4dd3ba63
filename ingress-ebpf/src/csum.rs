//! Kernel stage, checksums: incremental updates of the IPv4 header checksum
//! and the TCP checksum (RFC 1624) for rewritten addresses and ports.
//!
//! The kernel helpers are used rather than arithmetic on the packet because
//! they also keep the skb's checksum state right: for `CHECKSUM_PARTIAL`
//! packets (sent by a local socket, e.g. through a veth) the TCP field holds
//! only the pseudo-header sum and port changes must not touch it, and for
//! `CHECKSUM_COMPLETE` packets `skb->csum` must follow the pseudo-header.

use aya_ebpf::{bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use ingress_common::lb::Reason;

use crate::parse::{IP_CSUM_OFF, TCP_CSUM_OFF};

/// Accounts for an IPv4 address changing from `from` to `to` (both as on the
/// wire): in the IP header checksum, and in the TCP checksum through the
/// pseudo-header.
#[inline(always)]
pub fn replace_addr(ctx: &TcContext, l4_off: u32, from: u32, to: u32) -> Result<(), Reason> {
    ctx.l3_csum_replace(IP_CSUM_OFF as usize, u64::from(from), u64::from(to), 4)
        .map_err(|_| Reason::DropRewrite)?;
    ctx.l4_csum_replace(
        (l4_off + TCP_CSUM_OFF) as usize,
        u64::from(from),
        u64::from(to),
        u64::from(BPF_F_PSEUDO_HDR) | 4,
    )
    .map_err(|_| Reason::DropRewrite)
}

/// Accounts for a TCP port changing from `from` to `to` (as on the wire).
#[inline(always)]
pub fn replace_port(ctx: &TcContext, l4_off: u32, from: u16, to: u16) -> Result<(), Reason> {
    ctx.l4_csum_replace(
        (l4_off + TCP_CSUM_OFF) as usize,
        u64::from(from),
        u64::from(to),
        2,
    )
    .map_err(|_| Reason::DropRewrite)
}
