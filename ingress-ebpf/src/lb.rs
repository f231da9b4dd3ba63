//! Kernel stage, load balancing: frontend lookup and Maglev backend choice.
//!
//! Userspace computes the Maglev tables; here is only `hash % MAGLEV_SIZE`
//! and three O(1) lookups (frontend, Maglev slot, backend).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use ingress_common::lb::{
    BACKEND_ACTIVE, BACKENDS_CAPACITY, Backend, FRONTENDS_CAPACITY, Frontend, FrontendKey,
    MAGLEV_SIZE, MAX_SERVICES, PROTO_TCP, Reason, flow_hash, maglev_index,
};

use crate::parse::Tcp4;

#[map(name = "LB_FRONTENDS")]
static LB_FRONTENDS: HashMap<FrontendKey, Frontend> =
    HashMap::with_max_entries(FRONTENDS_CAPACITY, 0);

#[map(name = "LB_MAGLEV")]
static LB_MAGLEV: Array<u32> = Array::with_max_entries(2 * MAX_SERVICES * MAGLEV_SIZE, 0);

#[map(name = "LB_BACKENDS")]
static LB_BACKENDS: Array<Backend> = Array::with_max_entries(BACKENDS_CAPACITY, 0);

/// The frontend for a TCP packet to `daddr:dport`: the exact address first,
/// then the wildcard address 0 (nodePorts, listeners on 0.0.0.0).
#[inline(always)]
pub fn frontend(daddr_be: u32, dport_be: u16) -> Option<Frontend> {
    let mut key = FrontendKey {
        addr_be: daddr_be,
        port_be: dport_be,
        proto: PROTO_TCP,
        _pad: 0,
    };
    if let Some(frontend) = LB_FRONTENDS.get_ptr(key) {
        // SAFETY: a value pointer from a successful lookup; copied out at once.
        return Some(unsafe { *frontend });
    }
    key.addr_be = 0;
    LB_FRONTENDS
        .get_ptr(key)
        // SAFETY: as above.
        .map(|frontend| unsafe { *frontend })
}

/// The backend (id and endpoint) the live Maglev table of `frontend` gives
/// this packet's flow. `DropNoBackend` for an empty slot or a backend that is
/// not active (being removed, or never written).
#[inline(always)]
pub fn pick_backend(frontend: &Frontend, pkt: &Tcp4) -> Result<(u32, Backend), Reason> {
    let hash = flow_hash(pkt.saddr_be, pkt.daddr_be, pkt.sport_be, pkt.dport_be);
    let index = maglev_index(frontend.service_id, frontend.table, hash % MAGLEV_SIZE);
    let backend_id = LB_MAGLEV.get(index).copied().ok_or(Reason::DropNoBackend)?;
    if backend_id == 0 {
        return Err(Reason::DropNoBackend);
    }
    let backend = LB_BACKENDS
        .get(backend_id)
        .copied()
        .ok_or(Reason::DropNoBackend)?;
    if backend.flags & BACKEND_ACTIVE == 0 {
        return Err(Reason::DropNoBackend);
    }
    Ok((backend_id, backend))
}
