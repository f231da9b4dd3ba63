//! Kernel stage, routing: `bpf_fib_lookup` for the rewritten destination and
//! the redirect out of the interface the kernel's FIB chose.

use core::mem;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibLookup},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use ingress_common::lb::Reason;

use crate::parse::IPPROTO_TCP;

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

/// Looks up the route for a packet from `saddr` to `daddr` that arrived on
/// `ingress_ifindex`, as the forwarding path would (so forwarding must be
/// enabled on the ingress interface, as on any Kubernetes node).
/// `DropNoRoute` for anything but a usable unicast route (no route,
/// blackhole, prohibit, local destination, forwarding disabled, MTU).
#[inline(always)]
pub fn lookup(
    ctx: &TcContext,
    ingress_ifindex: u32,
    saddr_be: u32,
    daddr_be: u32,
) -> Result<Route, Reason> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid request skeleton.
    let mut params: FibLookup = unsafe { mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = IPPROTO_TCP;
    params.ifindex = ingress_ifindex;
    // tot_len stays 0: the kernel then checks the MTU against the skb itself,
    // which is right for GSO packets too.
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
/// the TC verdict of the redirect helper (`TC_ACT_REDIRECT`).
#[inline(always)]
pub fn redirect(ctx: &TcContext, route: &Route) -> Result<i32, Reason> {
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
