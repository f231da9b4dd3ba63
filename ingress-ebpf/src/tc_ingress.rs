//! Kernel stage, `tc_ingress`: in-kernel forwarding of TCP frontends
//! (DNAT + SNAT to a Maglev-chosen backend, reverse NAT of the replies),
//! attached with tcx on ingress of every node interface.
//!
//! ```text
//! parse -> conntrack hit?  yes: FIB toward the entry's destination, rewrite, redirect
//!                          no:  frontend? no: pass
//!                               pure SYN? no: drop
//!                               Maglev -> backend, FIB -> egress, SNAT address and
//!                               port, conntrack entries, rewrite, redirect
//! ```
//!
//! Every packet is counted exactly once in `LB_REASONS`. Packets that are
//! not ours are passed with `TC_ACT_UNSPEC` (tcx: "next"), so programs
//! attached after this one (a CNI's, say) still see them.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
};
use ingress_common::lb::{FLOW_REPLY, Reason};

use crate::nat::Tuple;
use crate::{conntrack, fib, lb, nat, parse, stats};

#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    let (reason, verdict) = match try_tc_ingress(&ctx) {
        Ok(forwarded) => forwarded,
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
        | Reason::PassMalformed => TC_ACT_UNSPEC,
        _ => TC_ACT_SHOT as i32,
    }
}

/// Forwards the packet (`Ok((reason, redirect verdict))`) or says why not.
#[inline(always)]
fn try_tc_ingress(ctx: &TcContext) -> Result<(Reason, i32), Reason> {
    let pkt = parse::tcp4(ctx)?;
    // SAFETY: reading fields of the program's own context.
    let (ingress_ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    // SAFETY: plain helper call.
    let now_ns = unsafe { bpf_ktime_get_ns() };

    let key = conntrack::key(pkt.saddr_be, pkt.daddr_be, pkt.sport_be, pkt.dport_be);
    if let Some(flow) = conntrack::lookup_and_touch(&key, pkt.flags, now_ns) {
        let route = fib::lookup(ctx, ingress_ifindex, flow.new_saddr_be, flow.new_daddr_be)?;
        let to = Tuple {
            saddr_be: flow.new_saddr_be,
            daddr_be: flow.new_daddr_be,
            sport_be: flow.new_sport_be,
            dport_be: flow.new_dport_be,
        };
        nat::rewrite(ctx, &pkt, &to)?;
        let verdict = fib::redirect(ctx, &route)?;
        stats::count_traffic(flow.service_id, flow.backend_id, len, false);
        let reason = if flow.flags & FLOW_REPLY != 0 {
            Reason::ReplyForwarded
        } else {
            Reason::Forwarded
        };
        return Ok((reason, verdict));
    }

    let frontend = lb::frontend(pkt.daddr_be, pkt.dport_be).ok_or(Reason::PassNoFrontend)?;
    if !pkt.is_pure_syn() {
        return Err(Reason::DropNoFlow);
    }
    let (backend_id, backend) = lb::pick_backend(&frontend, &pkt)?;
    let route = fib::lookup(ctx, ingress_ifindex, 0, backend.addr_be)?;
    let snat_addr_be = nat::snat_addr(route.ifindex)?;
    let snat_port_be = nat::open_flow(
        &pkt,
        frontend.service_id,
        backend_id,
        &backend,
        snat_addr_be,
        now_ns,
    )?;
    let to = Tuple {
        saddr_be: snat_addr_be,
        daddr_be: backend.addr_be,
        sport_be: snat_port_be,
        dport_be: backend.port_be,
    };
    nat::rewrite(ctx, &pkt, &to)?;
    let verdict = fib::redirect(ctx, &route)?;
    stats::count_traffic(frontend.service_id, backend_id, len, true);
    Ok((Reason::Forwarded, verdict))
}
