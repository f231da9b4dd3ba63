//! Kernel stage, maps: typed handles on the load-balancer and steering maps,
//! writing a plan's ops into them and reading their state and counters back.
//!
//! The maps come from the loaded object (and are then pinned), from pins
//! (adoption after a restart), or are created here without any program
//! ([`LbMaps::create_pinned`], for tests and tools): the writing logic is
//! the same for all three.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, SockMap};
use aya_obj::generated::bpf_map_type;
use ingress_common::lb::{
    BACKEND_STATS_MAP, BACKENDS_CAPACITY, BACKENDS_MAP, Backend, CONFIG_MAP, CONNTRACK_CAPACITY,
    CONNTRACK_MAP, FLOW_FIN, FLOW_RST, FRONTENDS_CAPACITY, FRONTENDS_MAP, FlowKey, FlowState,
    Frontend, FrontendKey, LbConfig, MAGLEV_MAP, MAGLEV_SIZE, MAX_SERVICES, REASONS_CAPACITY,
    REASONS_MAP, Reason, SERVICE_STATS_MAP, SNAT_ADDRS_CAPACITY, SNAT_ADDRS_MAP, TrafficCounters,
    maglev_index,
};
use ingress_common::steer::{
    STEER_CAPACITY, STEER_PORTS_MAP, STEER_SOCKETS_MAP, STEER_STATS_CAPACITY, STEER_STATS_MAP,
    SteerReason,
};

use super::KernelError;
use crate::kernel_plan::{FrontendAddr, KernelState, Limits, Op, backend_address, backend_value};

/// Every map this module handles, with how to create it standalone:
/// (name, type, key size, value size, max entries).
pub const LB_MAPS: [(&str, bpf_map_type, u32, u32, u32); 12] = [
    (
        FRONTENDS_MAP,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        size_of::<FrontendKey>() as u32,
        size_of::<Frontend>() as u32,
        FRONTENDS_CAPACITY,
    ),
    (
        MAGLEV_MAP,
        bpf_map_type::BPF_MAP_TYPE_ARRAY,
        4,
        4,
        2 * MAX_SERVICES * MAGLEV_SIZE,
    ),
    (
        BACKENDS_MAP,
        bpf_map_type::BPF_MAP_TYPE_ARRAY,
        4,
        size_of::<Backend>() as u32,
        BACKENDS_CAPACITY,
    ),
    (
        CONNTRACK_MAP,
        bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
        size_of::<FlowKey>() as u32,
        size_of::<FlowState>() as u32,
        CONNTRACK_CAPACITY,
    ),
    (
        SNAT_ADDRS_MAP,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        4,
        4,
        SNAT_ADDRS_CAPACITY,
    ),
    (
        CONFIG_MAP,
        bpf_map_type::BPF_MAP_TYPE_ARRAY,
        4,
        size_of::<LbConfig>() as u32,
        1,
    ),
    (
        REASONS_MAP,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        8,
        REASONS_CAPACITY,
    ),
    (
        SERVICE_STATS_MAP,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        size_of::<TrafficCounters>() as u32,
        MAX_SERVICES,
    ),
    (
        BACKEND_STATS_MAP,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        size_of::<TrafficCounters>() as u32,
        BACKENDS_CAPACITY,
    ),
    (
        STEER_PORTS_MAP,
        bpf_map_type::BPF_MAP_TYPE_HASH,
        4,
        4,
        STEER_CAPACITY,
    ),
    (
        STEER_SOCKETS_MAP,
        bpf_map_type::BPF_MAP_TYPE_SOCKMAP,
        4,
        4,
        STEER_CAPACITY,
    ),
    (
        STEER_STATS_MAP,
        bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        8,
        STEER_STATS_CAPACITY,
    ),
];

/// Typed handles on every load-balancer and steering map.
pub struct LbMaps {
    frontends: HashMap<MapData, FrontendKey, Frontend>,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    conntrack: HashMap<MapData, FlowKey, FlowState>,
    snat: HashMap<MapData, u32, u32>,
    config: Array<MapData, LbConfig>,
    reasons: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    steer_ports: HashMap<MapData, u32, u32>,
    steer_sockets: SockMap<MapData>,
    steer_stats: PerCpuArray<MapData, u64>,
    limits: Limits,
}

impl std::fmt::Debug for LbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbMaps")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Sums of one per-CPU [`TrafficCounters`] slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
}

/// What one conntrack reaping pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    pub scanned: usize,
    pub removed: usize,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map { map, source }
}

/// Converts an untyped map into a typed one, naming the map on error.
fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    name: &'static str,
    map: Map,
) -> Result<T, KernelError> {
    T::try_from(map).map_err(map_err(name))
}

impl LbMaps {
    /// Builds the handles from a source of maps by name.
    fn from_source(
        mut take: impl FnMut(&'static str) -> Result<Map, KernelError>,
    ) -> Result<Self, KernelError> {
        let maglev_data = take(MAGLEV_MAP)?;
        let maglev: Array<MapData, u32> = typed(MAGLEV_MAP, maglev_data)?;
        let backends: Array<MapData, Backend> = typed(BACKENDS_MAP, take(BACKENDS_MAP)?)?;
        let steer_sockets: SockMap<MapData> = typed(STEER_SOCKETS_MAP, take(STEER_SOCKETS_MAP)?)?;
        let limits = Limits {
            services: maglev.len() / (2 * MAGLEV_SIZE),
            backends: backends.len(),
            steer_slots: STEER_CAPACITY,
        };
        Ok(LbMaps {
            frontends: typed(FRONTENDS_MAP, take(FRONTENDS_MAP)?)?,
            maglev,
            backends,
            conntrack: typed(CONNTRACK_MAP, take(CONNTRACK_MAP)?)?,
            snat: typed(SNAT_ADDRS_MAP, take(SNAT_ADDRS_MAP)?)?,
            config: typed(CONFIG_MAP, take(CONFIG_MAP)?)?,
            reasons: typed(REASONS_MAP, take(REASONS_MAP)?)?,
            service_stats: typed(SERVICE_STATS_MAP, take(SERVICE_STATS_MAP)?)?,
            backend_stats: typed(BACKEND_STATS_MAP, take(BACKEND_STATS_MAP)?)?,
            steer_ports: typed(STEER_PORTS_MAP, take(STEER_PORTS_MAP)?)?,
            steer_sockets,
            steer_stats: typed(STEER_STATS_MAP, take(STEER_STATS_MAP)?)?,
            limits,
        })
    }

    /// Takes the maps out of a loaded object (its programs keep using them).
    pub fn from_object(ebpf: &mut aya::Ebpf) -> Result<Self, KernelError> {
        Self::from_source(|name| ebpf.take_map(name).ok_or(KernelError::MissingMap(name)))
    }

    /// Opens the maps pinned in `dir` (`dir/<MAP NAME>`).
    pub fn from_pins(dir: &Path) -> Result<Self, KernelError> {
        Self::from_source(|name| {
            let data = MapData::from_pin(dir.join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    /// Creates every map without a program and pins it in `dir`, or opens
    /// the pin that is already there.
    pub fn create_pinned(dir: &Path) -> Result<Self, KernelError> {
        for (name, kind, key, value, max) in LB_MAPS {
            let path = dir.join(name);
            if path.exists() {
                continue;
            }
            let obj = aya_obj::Map::new_from_params(kind as u32, key, value, max, 0);
            let data = MapData::create(obj, name, None).map_err(map_err(name))?;
            data.pin(&path).map_err(|source| KernelError::Pin {
                path: path.display().to_string(),
                source,
            })?;
        }
        Self::from_pins(dir)
    }

    /// The capacities of these maps, for the planner.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The global settings (`None` when never written).
    pub fn config(&self) -> Result<Option<LbConfig>, KernelError> {
        let config = self.config.get(&0, 0).map_err(map_err(CONFIG_MAP))?;
        Ok((config.abi_version != 0).then_some(config))
    }

    pub fn set_config(&mut self, config: LbConfig) -> Result<(), KernelError> {
        self.config.set(0, config, 0).map_err(map_err(CONFIG_MAP))
    }

    /// `ifindex -> IPv4 address` entries.
    pub fn snat_addrs(&self) -> Result<BTreeMap<u32, Ipv4Addr>, KernelError> {
        let mut out = BTreeMap::new();
        for entry in self.snat.iter() {
            let (ifindex, addr_be) = entry.map_err(map_err(SNAT_ADDRS_MAP))?;
            out.insert(ifindex, Ipv4Addr::from(u32::from_be(addr_be)));
        }
        Ok(out)
    }

    /// Makes `LB_SNAT_ADDRS` exactly `wanted`.
    pub fn set_snat_addrs(&mut self, wanted: &BTreeMap<u32, Ipv4Addr>) -> Result<(), KernelError> {
        for (ifindex, addr) in wanted {
            self.snat
                .insert(ifindex, u32::from(*addr).to_be(), 0)
                .map_err(map_err(SNAT_ADDRS_MAP))?;
        }
        for ifindex in self.snat_addrs()?.keys() {
            if !wanted.contains_key(ifindex) {
                self.snat.remove(ifindex).map_err(map_err(SNAT_ADDRS_MAP))?;
            }
        }
        Ok(())
    }

    /// Reads what the maps hold: frontends, active backends, the live table
    /// of every service a frontend points at, steered ports.
    pub fn read_state(&self) -> Result<KernelState, KernelError> {
        let mut state = KernelState::default();
        for entry in self.frontends.iter() {
            let (key, value) = entry.map_err(map_err(FRONTENDS_MAP))?;
            if let Some(frontend) = FrontendAddr::from_key(&key) {
                state.frontends.insert(frontend, value);
            }
        }
        for (id, value) in self.backends.iter().enumerate() {
            let value = value.map_err(map_err(BACKENDS_MAP))?;
            if let (Some(address), Ok(id)) = (backend_address(&value), u32::try_from(id)) {
                state.backends.insert(id, address);
            }
        }
        let live: Vec<(u32, u32)> = state
            .frontends
            .values()
            .map(|f| (f.service_id, f.table & 1))
            .collect();
        for (service_id, table) in live {
            if state.tables.contains_key(&(service_id, table)) {
                continue;
            }
            let slots = self.read_table(service_id, table)?;
            state.tables.insert((service_id, table), slots);
        }
        for entry in self.steer_ports.iter() {
            let (port, slot) = entry.map_err(map_err(STEER_PORTS_MAP))?;
            if let Ok(port) = u16::try_from(port) {
                state.steering.insert(port, slot);
            }
        }
        Ok(state)
    }

    /// The contents of Maglev table `table` of `service_id`.
    pub fn read_table(&self, service_id: u32, table: u32) -> Result<Vec<u32>, KernelError> {
        (0..MAGLEV_SIZE)
            .map(|slot| {
                self.maglev
                    .get(&maglev_index(service_id, table, slot), 0)
                    .map_err(map_err(MAGLEV_MAP))
            })
            .collect()
    }

    /// Performs one write of a diff.
    pub fn apply(&mut self, op: &Op) -> Result<(), KernelError> {
        match op {
            Op::SetBackend { id, address } => self
                .backends
                .set(*id, backend_value(*address), 0)
                .map_err(map_err(BACKENDS_MAP)),
            Op::WriteTable {
                service_id,
                table,
                slots,
            } => {
                for (slot, backend) in (0..MAGLEV_SIZE).zip(slots) {
                    self.maglev
                        .set(maglev_index(*service_id, *table, slot), backend, 0)
                        .map_err(map_err(MAGLEV_MAP))?;
                }
                Ok(())
            }
            Op::SetFrontend { frontend, value } => self
                .frontends
                .insert(frontend.key(), value, 0)
                .map_err(map_err(FRONTENDS_MAP)),
            Op::DeleteFrontend { frontend } => {
                ignore_missing(self.frontends.remove(&frontend.key()), FRONTENDS_MAP)
            }
            Op::DeleteBackend { id } => self
                .backends
                .set(*id, Backend::default(), 0)
                .map_err(map_err(BACKENDS_MAP)),
            Op::SetSteer { port, slot } => self
                .steer_ports
                .insert(u32::from(*port), slot, 0)
                .map_err(map_err(STEER_PORTS_MAP)),
            Op::DeleteSteer { port } => {
                ignore_missing(self.steer_ports.remove(&u32::from(*port)), STEER_PORTS_MAP)
            }
        }
    }

    /// Puts a listening socket into steering slot `slot`.
    pub fn set_socket(&mut self, slot: u32, socket: &impl AsRawFd) -> Result<(), KernelError> {
        self.steer_sockets
            .set(slot, socket, 0)
            .map_err(map_err(STEER_SOCKETS_MAP))
    }

    /// Empties steering slot `slot` (no error when it was empty: the kernel
    /// empties a slot itself when its socket closes).
    pub fn clear_socket(&mut self, slot: u32) -> Result<(), KernelError> {
        match self.steer_sockets.clear_index(&slot) {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(())
            }
            other => ignore_missing(other, STEER_SOCKETS_MAP),
        }
    }

    /// Number of conntrack entries (two per connection).
    pub fn conntrack_len(&self) -> Result<usize, KernelError> {
        let mut n = 0;
        for key in self.conntrack.keys() {
            key.map_err(map_err(CONNTRACK_MAP))?;
            n += 1;
        }
        Ok(n)
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Result<Vec<(FlowKey, FlowState)>, KernelError> {
        self.conntrack
            .iter()
            .map(|r| r.map_err(map_err(CONNTRACK_MAP)))
            .collect()
    }

    /// Inserts a conntrack entry (tests and tools; the program writes them).
    pub fn insert_flow(&mut self, key: FlowKey, state: FlowState) -> Result<(), KernelError> {
        self.conntrack
            .insert(key, state, 0)
            .map_err(map_err(CONNTRACK_MAP))
    }

    /// Removes the entries of connections that are over (a RST seen), that
    /// closed (a FIN seen) and stayed quiet for `fin_timeout_ns`, or that
    /// stayed quiet for `idle_timeout_ns`, with their other direction.
    /// `now_ns` is `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
    pub fn reap(
        &mut self,
        now_ns: u64,
        idle_timeout_ns: u64,
        fin_timeout_ns: u64,
    ) -> Result<Reaped, KernelError> {
        let entries = self.conntrack()?;
        let mut doomed = Vec::new();
        for (key, state) in &entries {
            let quiet = now_ns.saturating_sub(state.last_seen_ns);
            let over = state.flags & FLOW_RST != 0
                || (state.flags & FLOW_FIN != 0 && quiet > fin_timeout_ns)
                || quiet > idle_timeout_ns;
            if over {
                doomed.push(*key);
                // The other direction's key is this direction's rewrite, reversed.
                doomed.push(FlowKey {
                    saddr_be: state.new_daddr_be,
                    daddr_be: state.new_saddr_be,
                    sport_be: state.new_dport_be,
                    dport_be: state.new_sport_be,
                    proto: key.proto,
                    _pad: [0; 3],
                });
            }
        }
        doomed.sort_by_key(|k| (k.saddr_be, k.daddr_be, k.sport_be, k.dport_be, k.proto));
        doomed.dedup();
        let mut removed = 0;
        for key in doomed {
            if self.conntrack.remove(&key).is_ok() {
                removed += 1;
            }
        }
        Ok(Reaped {
            scanned: entries.len(),
            removed,
        })
    }

    /// Packets by verdict reason, summed over CPUs, every reason included.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>, KernelError> {
        Reason::ALL
            .iter()
            .map(|&reason| {
                let values = self
                    .reasons
                    .get(&(reason as u32), 0)
                    .map_err(map_err(REASONS_MAP))?;
                Ok((reason, values.iter().fold(0u64, |s, v| s.wrapping_add(*v))))
            })
            .collect()
    }

    /// Steering lookups by reason, summed over CPUs.
    pub fn steer_reasons(&self) -> Result<Vec<(SteerReason, u64)>, KernelError> {
        SteerReason::ALL
            .iter()
            .map(|&reason| {
                let values = self
                    .steer_stats
                    .get(&(reason as u32), 0)
                    .map_err(map_err(STEER_STATS_MAP))?;
                Ok((reason, values.iter().fold(0u64, |s, v| s.wrapping_add(*v))))
            })
            .collect()
    }

    /// Counters of service `id`.
    pub fn service_traffic(&self, id: u32) -> Result<Traffic, KernelError> {
        let values = self
            .service_stats
            .get(&id, 0)
            .map_err(map_err(SERVICE_STATS_MAP))?;
        Ok(sum_traffic(&values))
    }

    /// Counters of backend `id`.
    pub fn backend_traffic(&self, id: u32) -> Result<Traffic, KernelError> {
        let values = self
            .backend_stats
            .get(&id, 0)
            .map_err(map_err(BACKEND_STATS_MAP))?;
        Ok(sum_traffic(&values))
    }

    /// Active backends by id, read from the map.
    pub fn backends(&self) -> Result<BTreeMap<u32, SocketAddrV4>, KernelError> {
        Ok(self.read_state()?.backends)
    }
}

fn sum_traffic(values: &[TrafficCounters]) -> Traffic {
    values.iter().fold(Traffic::default(), |t, v| Traffic {
        packets: t.packets.wrapping_add(v.packets),
        bytes: t.bytes.wrapping_add(v.bytes),
        connections: t.connections.wrapping_add(v.connections),
    })
}

/// Deleting what is not there is not an error for a reconciler.
fn ignore_missing(
    result: Result<(), aya::maps::MapError>,
    map: &'static str,
) -> Result<(), KernelError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound | aya::maps::MapError::ElementNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other.map_err(map_err(map)),
    }
}
