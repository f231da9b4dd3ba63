//! Kernel stage, routing: `bpf_fib_lookup` for the rewritten destination and
//! the redirect out of the interface the kernel's FIB chose (TC:
//! `bpf_redirect` with the neighbour's MAC, or `bpf_redirect_neigh`; XDP:
//! `bpf_redirect` with the neighbour's MAC only).

use core::mem;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT,
        bpf_fib_lookup as FibLookup, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::{TcContext, XdpContext},
};
use ingress_common::lb::Reason;

use crate::parse::{IPPROTO_TCP, ptr_at};

const AF_INET: u8 = 2;

/// Where the FIB sends a packet.
pub struct Route {
    /// Egress interface.
    pub ifindex: u32,
    /// The neighbour's and the egress interface's MAC addresses, when the
    /// neighbour is resolved; `None` makes [`redirect`] let the kernel's
    /// neighbour code resolve `nexthop_be` (`bpf_redirect_neigh`).
    macs: Option<[u8; 12]>,
    nexthop_be: u32,
}

impl Route {
    /// Whether the neighbour's MAC address is known (else only
    /// `bpf_redirect_neigh`, a TC helper, can send the packet).
    #[inline(always)]
    pub fn neighbour_resolved(&self) -> bool {
        self.macs.is_some()
    }
}

/// Looks up the route for a packet from `saddr` to `daddr` that arrived on
/// `ingress_ifindex`, as the forwarding path would (so forwarding must be
/// enabled on the ingress interface, as on any Kubernetes node).
/// `DropNoRoute` for anything but a usable unicast route (no route,
/// blackhole, prohibit, local destination, forwarding disabled, MTU).
///
/// `tot_len` 0 leaves the MTU check to the kernel (TC: against the skb, GSO
/// aware); XDP passes the IPv4 total length, since an XDP redirect of a
/// frame larger than the egress MTU is dropped without a trace.
#[inline(always)]
pub fn lookup<C: EbpfContext>(
    ctx: &C,
    ingress_ifindex: u32,
    saddr_be: u32,
    daddr_be: u32,
    tot_len: u16,
) -> Result<Route, Reason> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut params: FibLookup = unsafe { mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_TCP;
    params.ifindex = ingress_ifindex;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_3.ipv4_src = saddr_be;
    params.__bindgen_anon_4.ipv4_dst = daddr_be;
    // SAFETY: `params` is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut params,
            mem::size_of::<FibLookup>() as i32,
            0,
        )
    };
    // SAFETY (unions): the kernel wrote these members for an IPv4 lookup.
    let nexthop_be = unsafe { params.__bindgen_anon_4.ipv4_dst };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&params.dmac);
            macs[6..].copy_from_slice(&params.smac);
            Ok(Route {
                ifindex: params.ifindex,
                macs: Some(macs),
                nexthop_be,
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Route {
            ifindex: params.ifindex,
            macs: None,
            nexthop_be,
        }),
        _ => Err(Reason::DropNoRoute),
    }
}

/// Sends the (already rewritten) packet out of `route`'s interface. Returns
/// the TC verdict of the redirect helper (`TC_ACT_REDIRECT`); a helper that
/// refuses (it answers `TC_ACT_SHOT`) counts as a failed rewrite.
#[inline(always)]
pub fn redirect(ctx: &TcContext, route: &Route) -> Result<i32, Reason> {
    let verdict = redirect_to(ctx, route)?;
    if verdict == TC_ACT_REDIRECT as i32 {
        Ok(verdict)
    } else {
        Err(Reason::DropRewrite)
    }
}

/// XDP: writes the route's MAC addresses and redirects. A route without a
/// resolved neighbour never gets here (the forwarding logic passes the
/// packet up first); should one, it is passed up too.
#[inline(always)]
pub fn redirect_xdp(ctx: &XdpContext, route: &Route) -> Result<u32, Reason> {
    let Some(macs) = route.macs else {
        return Err(Reason::PassNoNeigh);
    };
    let eth: *mut [u8; 12] = ptr_at::<[u8; 12]>(ctx.data(), ctx.data_end(), 0)
        .ok_or(Reason::DropRewrite)?
        .cast_mut();
    // SAFETY: bounds checked by ptr_at; the frame is writable in XDP.
    unsafe { *eth = macs };
    // SAFETY: plain helper call.
    let action = unsafe { bpf_redirect(route.ifindex, 0) } as u32;
    if action == xdp_action::XDP_REDIRECT {
        Ok(action)
    } else {
        Err(Reason::DropRewrite)
    }
}

#[inline(always)]
fn redirect_to(ctx: &TcContext, route: &Route) -> Result<i32, Reason> {
    match route.macs {
        Some(macs) => {
            ctx.store(0, &macs, 0).map_err(|_| Reason::DropRewrite)?;
            // SAFETY: plain helper call.
            Ok(unsafe { bpf_redirect(route.ifindex, 0) } as i32)
        }
        None => {
            // SAFETY: a zeroed bpf_redir_neigh is valid; filled for IPv4 below.
            let mut nh: aya_ebpf::bindings::bpf_redir_neigh = unsafe { mem::zeroed() };
            nh.nh_family = u32::from(AF_INET);
            nh.__bindgen_anon_1.ipv4_nh = route.nexthop_be;
            // SAFETY: `nh` is valid for the size passed.
            Ok(unsafe {
                bpf_redirect_neigh(
                    route.ifindex,
                    &mut nh,
                    mem::size_of::<aya_ebpf::bindings::bpf_redir_neigh>() as i32,
                    0,
                )
            } as i32)
        }
    }
}
