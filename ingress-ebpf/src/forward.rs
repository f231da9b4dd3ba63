//! Kernel stage, forwarding: the decision of `tc_ingress` and `xdp_ingress`,
//! generic over the [`Hook`] it runs in.
//!
//! ```text
//! parse -> conntrack hit?  yes: FIB toward the entry's destination, rewrite, redirect
//!                          no:  frontend? no: pass
//!                               pure SYN? no: drop
//!                               Maglev -> backend, FIB -> egress, SNAT address and
//!                               port, conntrack entries, rewrite, redirect
//! ```
//!
//! Nothing is written (packet or conntrack) before the route is known to be
//! usable by the hook, so a packet passed for `PassNoNeigh` goes up exactly
//! as it arrived.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use ingress_common::lb::{FLOW_REPLY, Reason};

use crate::fib::{self, Route};
use crate::hook::Hook;
use crate::nat::{self, Tuple};
use crate::parse::{self, Tcp4};
use crate::{conntrack, lb, stats};

/// Forwards the packet (`Ok((reason, redirect verdict))`) or says why not;
/// the caller counts the reason and turns an `Err` into pass or drop.
#[inline(always)]
pub fn forward<C: Hook>(ctx: &C) -> Result<(Reason, u32), Reason> {
    let pkt = parse::tcp4(ctx)?;
    let ingress_ifindex = ctx.ingress_ifindex();
    let len = ctx.frame_len();
    // SAFETY: plain helper call.
    let now_ns = unsafe { bpf_ktime_get_ns() };

    let key = conntrack::key(pkt.saddr_be, pkt.daddr_be, pkt.sport_be, pkt.dport_be);
    if let Some(flow) = conntrack::lookup_and_touch(&key, pkt.flags, now_ns) {
        let route = route(
            ctx,
            &pkt,
            ingress_ifindex,
            flow.new_saddr_be,
            flow.new_daddr_be,
        )?;
        let to = Tuple {
            saddr_be: flow.new_saddr_be,
            daddr_be: flow.new_daddr_be,
            sport_be: flow.new_sport_be,
            dport_be: flow.new_dport_be,
        };
        ctx.rewrite(&pkt, &to)?;
        let verdict = ctx.redirect(&route)?;
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
    let route = route(ctx, &pkt, ingress_ifindex, 0, backend.addr_be)?;
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
    ctx.rewrite(&pkt, &to)?;
    let verdict = ctx.redirect(&route)?;
    stats::count_traffic(frontend.service_id, backend_id, len, true);
    Ok((Reason::Forwarded, verdict))
}

/// The FIB's route for the rewritten packet, if this hook can use it.
#[inline(always)]
fn route<C: Hook>(
    ctx: &C,
    pkt: &Tcp4,
    ingress_ifindex: u32,
    saddr_be: u32,
    daddr_be: u32,
) -> Result<Route, Reason> {
    let route = fib::lookup(
        ctx,
        ingress_ifindex,
        saddr_be,
        daddr_be,
        ctx.fib_tot_len(pkt.tot_len),
    )?;
    if !C::RESOLVES_NEIGHBOURS && !route.neighbour_resolved() {
        return Err(Reason::PassNoNeigh);
    }
    Ok(route)
}
