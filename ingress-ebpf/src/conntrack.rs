//! Kernel stage, connection tracking: the LRU map of flows, two entries per
//! forwarded connection (client -> frontend, and backend -> SNAT address).
//!
//! Entries are keyed by the packet as it arrives and say how to rewrite it.
//! Only `tc_ingress` creates them (on a SYN to a frontend); userspace reaps
//! closed or idle ones, and the LRU evicts the oldest when the map is full.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::LruHashMap};
use ingress_common::lb::{CONNTRACK_CAPACITY, FLOW_FIN, FLOW_RST, FlowKey, FlowState, PROTO_TCP};

use crate::parse::{TCP_FIN, TCP_RST};

#[map(name = "LB_CONNTRACK")]
static LB_CONNTRACK: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(CONNTRACK_CAPACITY, 0);

/// `-EEXIST`, what an insert with `BPF_NOEXIST` returns for a taken key.
const EEXIST: i32 = -17;

/// The key of a TCP packet from `saddr:sport` to `daddr:dport`.
#[inline(always)]
pub fn key(saddr_be: u32, daddr_be: u32, sport_be: u16, dport_be: u16) -> FlowKey {
    FlowKey {
        saddr_be,
        daddr_be,
        sport_be,
        dport_be,
        proto: PROTO_TCP,
        _pad: [0; 3],
    }
}

/// Looks the packet's flow up; on a hit, records the time and the FIN/RST
/// flags of this packet in the entry and returns a copy of it.
#[inline(always)]
pub fn lookup_and_touch(key: &FlowKey, tcp_flags: u8, now_ns: u64) -> Option<FlowState> {
    let entry = LB_CONNTRACK.get_ptr_mut(key)?;
    let mut seen = 0;
    if tcp_flags & TCP_FIN != 0 {
        seen |= FLOW_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        seen |= FLOW_RST;
    }
    // SAFETY: a value pointer from a successful lookup. Plain stores into a
    // shared entry: another CPU handling the same flow at the same instant
    // writes the same kind of values, and a lost update of a timestamp or a
    // flag bit is harmless (the next packet sets it again).
    unsafe {
        (*entry).last_seen_ns = now_ns;
        if seen != 0 {
            (*entry).flags |= seen;
        }
        Some(*entry)
    }
}

/// Outcome of trying to claim a reply key.
pub enum Claim {
    Claimed,
    /// The key is in use by another connection.
    Taken,
    /// The map refused the entry for another reason.
    Failed,
}

/// Inserts `state` under `key` only if the key is free (`BPF_NOEXIST`): the
/// atomic test-and-set that makes SNAT port allocation race-free between CPUs.
#[inline(always)]
pub fn claim(key: &FlowKey, state: &FlowState) -> Claim {
    match LB_CONNTRACK.insert(key, state, u64::from(BPF_NOEXIST)) {
        Ok(()) => Claim::Claimed,
        Err(EEXIST) => Claim::Taken,
        Err(_) => Claim::Failed,
    }
}

/// How long after its last packet a connection closed by FINs both ways
/// keeps its SNAT port, so the last ACKs still find their entries.
const FIN_GRACE_NS: u64 = 1_000_000_000;

/// Frees a taken reply key whose connection is over: a RST seen either way,
/// or a FIN seen both ways at least [`FIN_GRACE_NS`] ago. Removes both
/// entries of that connection and returns whether the key is free now.
///
/// Without this, the SNAT ports of closed connections stay taken until the
/// userspace reaper runs, and a burst of short connections to one backend
/// exhausts the probes of new SYNs.
#[inline(always)]
pub fn reclaim_if_closed(reply_key: &FlowKey, now_ns: u64) -> bool {
    // SAFETY: a copy is taken at once; the entry may change under us, which
    // at worst makes us keep a port one packet longer.
    let Some(reply) = (unsafe { LB_CONNTRACK.get(reply_key) }).copied() else {
        return true;
    };
    // The reply entry rewrites to (frontend -> client): the original
    // direction's key is the reverse of that.
    let original_key = key(
        reply.new_daddr_be,
        reply.new_saddr_be,
        reply.new_dport_be,
        reply.new_sport_be,
    );
    // SAFETY: as above.
    let original = unsafe { LB_CONNTRACK.get(&original_key) }.copied();
    let (original_flags, original_seen) = original.map_or((0, 0), |o| (o.flags, o.last_seen_ns));
    let flags = reply.flags | original_flags;
    let last_seen = if original_seen > reply.last_seen_ns {
        original_seen
    } else {
        reply.last_seen_ns
    };
    let reset = flags & FLOW_RST != 0;
    let finished = reply.flags & FLOW_FIN != 0
        && original_flags & FLOW_FIN != 0
        && now_ns.saturating_sub(last_seen) >= FIN_GRACE_NS;
    if !(reset || finished) {
        return false;
    }
    if original.is_some() {
        remove(&original_key);
    }
    remove(reply_key);
    true
}

/// Inserts or replaces the entry of `key`.
#[inline(always)]
pub fn insert(key: &FlowKey, state: &FlowState) -> Result<(), i32> {
    LB_CONNTRACK.insert(key, state, 0)
}

/// Removes the entry of `key` (undoing a claim whose pair failed).
#[inline(always)]
pub fn remove(key: &FlowKey) {
    let _ = LB_CONNTRACK.remove(key);
}
