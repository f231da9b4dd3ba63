//! Kernel stage, checksums: incremental updates of the IPv4 header checksum
//! and the TCP checksum (RFC 1624) for rewritten addresses and ports.
//!
//! TC uses the kernel helpers rather than arithmetic on the packet because
//! they also keep the skb's checksum state right: for `CHECKSUM_PARTIAL`
//! packets (sent by a local socket, e.g. through a veth) the TCP field holds
//! only the pseudo-header sum and port changes must not touch it, and for
//! `CHECKSUM_COMPLETE` packets `skb->csum` must follow the pseudo-header.
//!
//! XDP has no such helpers and no skb: native XDP sees the frame as the
//! driver received it, whose TCP checksum field is a full checksum (a NIC
//! does not receive partial checksums; veth resolves a local sender's
//! `CHECKSUM_PARTIAL` before running a native XDP program), so the update
//! is plain RFC 1624 arithmetic: [`diff32`], [`diff16`], [`apply`].

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

/// The one's-complement sum of the 16-bit words `!from` and `to` of a
/// 32-bit field (RFC 1624: `~m + m'`). Both as read from the packet; the
/// one's-complement sum does not depend on byte order (RFC 1071, 2.B), as
/// long as the checksum field is read the same way.
#[inline(always)]
pub const fn diff32(from: u32, to: u32) -> u32 {
    let from = !from;
    (from >> 16) + (from & 0xffff) + (to >> 16) + (to & 0xffff)
}

/// [`diff32`] for a 16-bit field.
#[inline(always)]
pub const fn diff16(from: u16, to: u16) -> u32 {
    (!from) as u32 + to as u32
}

/// RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`, with `diff` the sum of the
/// `~m + m'` terms of every changed field (at most a few dozen 16-bit
/// words, so two folds make the sum 16 bits again).
#[inline(always)]
pub const fn apply(check: u16, diff: u32) -> u16 {
    let mut sum = (!check) as u32 + diff;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
