//! Kernel stage, accounting of `tc_ingress`: one per-CPU counter per verdict
//! reason, and packet/byte/connection counters per service and per backend.
//! Userspace sums the per-CPU values and exports them.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use ingress_common::lb::{
    BACKENDS_CAPACITY, MAX_SERVICES, REASONS_CAPACITY, Reason, TrafficCounters,
};

#[map(name = "LB_REASONS")]
static LB_REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASONS_CAPACITY, 0);

#[map(name = "LB_SERVICE_STATS")]
static LB_SERVICE_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "LB_BACKEND_STATS")]
static LB_BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(BACKENDS_CAPACITY, 0);

/// Counts one packet under `reason`. Called exactly once per packet.
#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(slot) = LB_REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

/// Counts a forwarded packet of `bytes` (frame length) for its service and
/// backend, and a new connection when `new_connection`.
#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u32, new_connection: bool) {
    add(
        LB_SERVICE_STATS.get_ptr_mut(service_id),
        bytes,
        new_connection,
    );
    add(
        LB_BACKEND_STATS.get_ptr_mut(backend_id),
        bytes,
        new_connection,
    );
}

#[inline(always)]
fn add(slot: Option<*mut TrafficCounters>, bytes: u32, new_connection: bool) {
    if let Some(slot) = slot {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(bytes);
            (*slot).connections += u64::from(new_connection);
        }
    }
}
