//! Kernel stage, NodePort steering of L7 ports: `sk_lookup_steer` hands new
//! TCP connections to a steered local port to the daemon's listener.
//!
//! No packet is rewritten: the kernel's socket lookup for the connection
//! returns the listener in `STEER_SOCKETS`, so the daemon sees the client's
//! real address and replies leave from the port the client connected to.

use aya_ebpf::{
    bindings::sk_action,
    macros::{map, sk_lookup},
    maps::{HashMap, PerCpuArray, SockMap},
    programs::SkLookupContext,
};
use ingress_common::steer::{STEER_CAPACITY, STEER_STATS_CAPACITY, SteerReason};

use crate::parse::IPPROTO_TCP;

#[map(name = "STEER_PORTS")]
static STEER_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(STEER_CAPACITY, 0);

#[map(name = "STEER_SOCKETS")]
static STEER_SOCKETS: SockMap = SockMap::with_max_entries(STEER_CAPACITY, 0);

#[map(name = "STEER_STATS")]
static STEER_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STEER_STATS_CAPACITY, 0);

/// `-ENOENT`: the socket map slot is empty.
const ENOENT: i32 = -2;

#[sk_lookup]
pub fn sk_lookup_steer(ctx: SkLookupContext) -> u32 {
    // SAFETY: reading fields of the program's own context.
    let (protocol, local_port) = unsafe { ((*ctx.lookup).protocol, (*ctx.lookup).local_port) };
    if protocol != u32::from(IPPROTO_TCP) {
        return sk_action::SK_PASS;
    }
    let Some(slot) = STEER_PORTS.get_ptr(local_port) else {
        return sk_action::SK_PASS;
    };
    // SAFETY: a value pointer from a successful lookup; copied out at once.
    let slot = unsafe { *slot };
    let reason = match STEER_SOCKETS.redirect_sk_lookup(&ctx, slot, 0) {
        Ok(()) => SteerReason::Steered,
        Err(ENOENT) => SteerReason::NoSocket,
        Err(_) => SteerReason::AssignFailed,
    };
    if let Some(count) = STEER_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *count += 1 };
    }
    // SK_PASS in every case: after a successful assignment the kernel uses
    // the assigned socket; otherwise the normal lookup goes on.
    sk_action::SK_PASS
}
