//! Kernel stage, `tc_ingress`: in-kernel forwarding of TCP frontends
//! (DNAT + SNAT to a Maglev-chosen backend, reverse NAT of the replies),
//! attached with tcx on ingress of the node interfaces (all of them with
//! `--xdp off`; behind `xdp_ingress` on the others). The decision is
//! `forward`, shared with `xdp_ingress`; here are the TC specifics.
//!
//! Every packet is counted exactly once in `LB_REASONS`. Packets that are
//! not ours are passed with `TC_ACT_UNSPEC` (tcx: "next"), so programs
//! attached after this one (a CNI's, say) still see them. A packet that
//! `xdp_ingress` on the same interface already counted and passed (it says
//! so in the XDP metadata, see `xdp_ingress`) is passed without a look.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use ingress_common::lb::Reason;

use crate::fib::{self, Route};
use crate::forward::forward;
use crate::hook::Hook;
use crate::nat::{self, Tuple};
use crate::parse::Tcp4;
use crate::{stats, xdp_ingress};

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    if xdp_ingress::passed_by_xdp(&ctx) {
        return TC_ACT_UNSPEC;
    }
    let (reason, verdict) = match forward(&ctx) {
        Ok((reason, verdict)) => (reason, verdict as i32),
        Err(reason) => (reason, verdict_of(reason)),
    };
    stats::count_reason(reason);
    verdict
}

/// The verdict of a packet that is not forwarded.
#[inline(always)]
fn verdict_of(reason: Reason) -> i32 {
    match reason {
        Reason::PassNotIpv4
        | Reason::PassNotTcp
        | Reason::PassNoFrontend
        | Reason::PassFragment
        | Reason::PassMalformed
        | Reason::PassNoNeigh => TC_ACT_UNSPEC,
        _ => TC_ACT_SHOT as i32,
    }
}

impl Hook for TcContext {
    const RESOLVES_NEIGHBOURS: bool = true;

    #[inline(always)]
    fn frame_len(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        TcContext::load(self, offset).ok()
    }

    #[inline(always)]
    fn fib_tot_len(&self, _ip_tot_len: u16) -> u16 {
        // The kernel then checks the MTU against the skb itself, which is
        // right for GSO packets too.
        0
    }

    #[inline(always)]
    fn rewrite(&self, pkt: &Tcp4, to: &Tuple) -> Result<(), Reason> {
        nat::rewrite(self, pkt, to)
    }

    #[inline(always)]
    fn redirect(&self, route: &Route) -> Result<u32, Reason> {
        fib::redirect(self, route).map(|verdict| verdict as u32)
    }
}
