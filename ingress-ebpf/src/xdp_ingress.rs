//! Kernel stage, `xdp_ingress`: the forwarding of `tc_ingress` (same maps,
//! same decisions, same counters) in native XDP, for interfaces whose driver
//! runs XDP before it builds an skb. The decision is `forward`; here are the
//! XDP specifics: direct packet access, RFC 1624 checksum arithmetic
//! (`nat::rewrite_xdp`), MAC rewrite from the FIB result and `bpf_redirect`.
//!
//! Verdicts: forwarded -> `XDP_REDIRECT`; not ours -> `XDP_PASS`; drops ->
//! `XDP_DROP`. Every packet is counted exactly once in `LB_REASONS`.
//!
//! `tc_ingress` is attached behind this program (tcx on the same
//! interface) for the one case XDP cannot finish: a next hop whose MAC is
//! not resolved (`PassNoNeigh`). Such a packet goes up unchanged and
//! unmarked, and `tc_ingress` forwards it with `bpf_redirect_neigh`, which
//! also makes the kernel resolve the neighbour for the packets after it.
//! Every other passed packet is marked in the XDP metadata
//! ([`PASSED_MAGIC`]) so that `tc_ingress` lets it through without counting
//! it a second time.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_meta,
    macros::xdp,
    programs::{TcContext, XdpContext},
};
use ingress_common::lb::Reason;

use crate::fib::{self, Route};
use crate::forward::forward;
use crate::hook::Hook;
use crate::nat::{self, Tuple};
use crate::parse::{Tcp4, ptr_at};
use crate::stats;

/// The 4 bytes of XDP metadata on a packet this program counted and passed
/// ("ingressd XDP passed"). A driver without metadata support refuses the
/// mark; `tc_ingress` then counts such a packet again (documented).
pub const PASSED_MAGIC: u32 = 0x1d5e_0a55;
const META_LEN: usize = 4;

#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    match forward(&ctx) {
        Ok((reason, action)) => {
            stats::count_reason(reason);
            action
        }
        Err(reason) => {
            stats::count_reason(reason);
            match reason {
                // Unmarked: tc_ingress behind us forwards it.
                Reason::PassNoNeigh => XDP_PASS,
                Reason::PassNotIpv4
                | Reason::PassNotTcp
                | Reason::PassNoFrontend
                | Reason::PassFragment
                | Reason::PassMalformed => {
                    mark_passed(&ctx);
                    XDP_PASS
                }
                _ => XDP_DROP,
            }
        }
    }
}

/// Puts [`PASSED_MAGIC`] into the packet's XDP metadata (best effort).
#[inline(always)]
fn mark_passed(ctx: &XdpContext) {
    // SAFETY: plain helper call on the program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META_LEN as i32)) } != 0 {
        return;
    }
    // Pointers are re-read after the helper: it invalidated the old ones.
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + META_LEN > data {
        return;
    }
    // SAFETY: `[meta, meta + 4)` is inside the metadata area (checked).
    unsafe { *(meta as *mut u32) = PASSED_MAGIC };
}

/// For `tc_ingress`: whether `xdp_ingress` already counted and passed this
/// packet (its metadata carries [`PASSED_MAGIC`]).
#[inline(always)]
pub fn passed_by_xdp(ctx: &TcContext) -> bool {
    // SAFETY: reading fields of the program's own context.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + META_LEN > data {
        return false;
    }
    // SAFETY: `[meta, meta + 4)` is inside the metadata area (checked).
    unsafe { *(meta as *const u32) == PASSED_MAGIC }
}

impl Hook for XdpContext {
    const RESOLVES_NEIGHBOURS: bool = false;

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let ptr = ptr_at::<T>(self.data(), self.data_end(), offset)?;
        // SAFETY: bounds checked by ptr_at.
        Some(unsafe { *ptr })
    }

    #[inline(always)]
    fn fib_tot_len(&self, ip_tot_len: u16) -> u16 {
        ip_tot_len
    }

    #[inline(always)]
    fn rewrite(&self, pkt: &Tcp4, to: &Tuple) -> Result<(), Reason> {
        nat::rewrite_xdp(self, pkt, to)
    }

    #[inline(always)]
    fn redirect(&self, route: &Route) -> Result<u32, Reason> {
        fib::redirect_xdp(self, route)
    }
}
