//! Kernel stage, planning (pure): the compiled snapshot -> what the BPF maps
//! must hold, and the ordered, make-before-break diff from what they hold now.
//!
//! Userspace decides, the kernel looks up. For every TCP listener with a
//! `TcpProxy` the plan has one *service*: its frontends (the nodePort on any
//! local address, and the listener's own address and port), its weighted
//! backend set and its Maglev table. For every HTTP listener with a nodePort
//! it has one *steering* entry (nodePort -> the listener's socket slot).
//!
//! Ids are handed out so that they stay stable across reloads and restarts:
//! a service keeps its id as long as one of its frontends does, a backend
//! as long as its address does, a steering slot as long as its nodePort does.
//! The previous ids come from the previous plan or, after a restart, from
//! the maps themselves ([`KernelState::ids`]).
//!
//! Nothing here does I/O; `explain` uses it offline and the kernel manager
//! (`kernel::`) applies [`diff`] to the live maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use ingress_common::lb::{
    BACKEND_ACTIVE, BACKENDS_CAPACITY, Backend, Frontend, FrontendKey, MAGLEV_SIZE, MAX_SERVICES,
    PROTO_TCP,
};
use ingress_common::steer::STEER_CAPACITY;
use serde_json::{Value, json};

use crate::snapshot::{Listener, ListenerKind, Snapshot, TcpProxy};

/// Where a frontend listens: `addr` `0.0.0.0` means every local address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendAddr {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl FrontendAddr {
    /// The map key of this frontend.
    pub fn key(self) -> FrontendKey {
        FrontendKey {
            addr_be: u32::from(self.addr).to_be(),
            port_be: self.port.to_be(),
            proto: PROTO_TCP,
            _pad: 0,
        }
    }

    /// The frontend of a map key (`None` for a protocol other than TCP).
    pub fn from_key(key: &FrontendKey) -> Option<Self> {
        (key.proto == PROTO_TCP).then(|| FrontendAddr {
            addr: Ipv4Addr::from(u32::from_be(key.addr_be)),
            port: u16::from_be(key.port_be),
        })
    }
}

impl std::fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// The map value of a backend address.
pub fn backend_value(address: SocketAddrV4) -> Backend {
    Backend {
        addr_be: u32::from(*address.ip()).to_be(),
        port_be: address.port().to_be(),
        flags: BACKEND_ACTIVE,
    }
}

/// The address of an active backend map value.
pub fn backend_address(value: &Backend) -> Option<SocketAddrV4> {
    (value.flags & BACKEND_ACTIVE != 0).then(|| {
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(value.addr_be)),
            u16::from_be(value.port_be),
        )
    })
}

/// Capacities the plan must fit in (the loaded maps' sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub services: u32,
    pub backends: u32,
    pub steer_slots: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            services: MAX_SERVICES,
            backends: BACKENDS_CAPACITY,
            steer_slots: STEER_CAPACITY,
        }
    }
}

/// Everything the kernel must hold for one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelPlan {
    /// In-kernel forwarded TCP services, sorted by listener bind port.
    pub services: Vec<ServicePlan>,
    /// Every backend of every service, by id (ids from 1; 0 means none).
    pub backends: BTreeMap<u32, BackendPlan>,
    /// Steered L7 nodePorts, sorted by nodePort.
    pub steering: Vec<SteerPlan>,
    /// What the kernel does not take over, and why (served in userspace).
    pub notes: Vec<String>,
}

/// One in-kernel forwarded TCP service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePlan {
    /// Index of its Maglev tables and counters.
    pub id: u32,
    /// The listener name (`0.0.0.0_3306`).
    pub listener: String,
    /// The listener's bind port.
    pub listener_port: u16,
    /// The listener's nodePort, when it has one.
    pub node_port: Option<u16>,
    /// Sorted.
    pub frontends: Vec<FrontendAddr>,
    /// Sorted by address; weights are integers reduced by their gcd.
    pub backends: Vec<WeightedBackend>,
    /// `MAGLEV_SIZE` backend ids.
    pub table: Vec<u32>,
}

/// A backend of a service and its weight there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedBackend {
    pub id: u32,
    pub address: SocketAddrV4,
    pub weight: u64,
    /// The clusters this address came from (sorted).
    pub clusters: Vec<String>,
}

/// One backend map entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPlan {
    pub address: SocketAddrV4,
    /// The first (sorted) cluster that has this address: the metrics label.
    pub cluster: String,
}

/// One steered nodePort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteerPlan {
    pub node_port: u16,
    /// Index in `STEER_SOCKETS` where the daemon puts the listener's socket.
    pub slot: u32,
    pub listener: String,
    /// The bind port of the listener whose socket takes the connections.
    pub listener_port: u16,
}

impl KernelPlan {
    /// The service that forwards `port` (a nodePort or a listener port).
    pub fn service_for_port(&self, port: u16) -> Option<&ServicePlan> {
        self.services
            .iter()
            .find(|s| s.frontends.iter().any(|f| f.port == port))
    }

    /// The steering entry of nodePort `port`.
    pub fn steering_for_port(&self, port: u16) -> Option<&SteerPlan> {
        self.steering.iter().find(|s| s.node_port == port)
    }

    /// Ports the userspace listener `listener_port` must not bind because the
    /// kernel takes them: steered or forwarded nodePorts.
    pub fn kernel_takes_node_port(&self, listener_port: u16) -> bool {
        self.steering
            .iter()
            .any(|s| s.listener_port == listener_port)
            || self
                .services
                .iter()
                .any(|s| s.listener_port == listener_port && s.node_port.is_some())
    }

    /// The ids this plan handed out, for the next plan.
    pub fn ids(&self) -> Ids {
        let mut ids = Ids::default();
        for service in &self.services {
            for frontend in &service.frontends {
                ids.services.insert(*frontend, service.id);
            }
        }
        for (id, backend) in &self.backends {
            ids.backends.insert(backend.address, *id);
        }
        for steer in &self.steering {
            ids.slots.insert(steer.node_port, steer.slot);
        }
        ids
    }
}

/// Ids handed out before, keyed by what survives a restart in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    /// Frontend -> service id.
    pub services: BTreeMap<FrontendAddr, u32>,
    /// Backend address -> backend id.
    pub backends: BTreeMap<SocketAddrV4, u32>,
    /// Steered nodePort -> socket slot.
    pub slots: BTreeMap<u16, u32>,
}

/// Hands out ids in `[first, limit)`: the previous one when there is one,
/// else the lowest one nobody used before, else the lowest free one.
struct Allocator {
    first: u32,
    limit: u32,
    previously_used: BTreeSet<u32>,
    claimed: BTreeSet<u32>,
}

impl Allocator {
    fn new(first: u32, limit: u32, previous: impl IntoIterator<Item = u32>) -> Self {
        Allocator {
            first,
            limit,
            previously_used: previous.into_iter().collect(),
            claimed: BTreeSet::new(),
        }
    }

    fn claim(&mut self, previous: Option<u32>) -> Option<u32> {
        if let Some(id) = previous.filter(|id| (self.first..self.limit).contains(id))
            && self.claimed.insert(id)
        {
            return Some(id);
        }
        // Ids of removed entries are reused last, so an entry being removed
        // and one being added never share an id within one diff.
        let fresh = (self.first..self.limit)
            .find(|id| !self.claimed.contains(id) && !self.previously_used.contains(id));
        let id =
            fresh.or_else(|| (self.first..self.limit).find(|id| !self.claimed.contains(id)))?;
        self.claimed.insert(id);
        Some(id)
    }
}

/// The plan for `snapshot`, keeping the ids of `previous` where it can.
pub fn plan(snapshot: &Snapshot, previous: &Ids, limits: Limits) -> KernelPlan {
    let mut out = KernelPlan::default();
    let mut service_ids = Allocator::new(0, limits.services, previous.services.values().copied());
    let mut backend_ids = Allocator::new(1, limits.backends, previous.backends.values().copied());
    let mut slots = Allocator::new(0, limits.steer_slots, previous.slots.values().copied());

    // Id claims go in two passes (services that existed before first) so a
    // new service never takes the id an old one is about to keep.
    let mut pending: Vec<(&Listener, &TcpProxy, Vec<FrontendAddr>)> = Vec::new();
    for listener in &snapshot.listeners {
        match &listener.kind {
            ListenerKind::Tcp(Some(proxy)) => {
                let frontends = frontends_of(listener, &mut out.notes);
                pending.push((listener, proxy, frontends));
            }
            ListenerKind::Tcp(None) => out.notes.push(format!(
                "{}: TCP server without a route: closed in userspace",
                listener.name
            )),
            ListenerKind::Http(_) | ListenerKind::Tls(_) => {
                let Some(node_port) = listener.node_port.filter(|&n| n != listener.port) else {
                    continue;
                };
                let Some(slot) = slots.claim(previous.slots.get(&node_port).copied()) else {
                    out.notes.push(format!(
                        "{}: nodePort {node_port} not steered: more than {} steered ports",
                        listener.name, limits.steer_slots
                    ));
                    continue;
                };
                out.steering.push(SteerPlan {
                    node_port,
                    slot,
                    listener: listener.name.clone(),
                    listener_port: listener.port,
                });
            }
        }
    }
    let previous_id = |frontends: &[FrontendAddr]| {
        frontends
            .iter()
            .find_map(|f| previous.services.get(f).copied())
    };
    let mut ids: Vec<Option<u32>> = vec![None; pending.len()];
    for (index, (_, _, frontends)) in pending.iter().enumerate() {
        if let Some(id) = previous_id(frontends) {
            ids[index] = service_ids.claim(Some(id)).filter(|&got| got == id);
        }
    }
    for (index, (listener, proxy, frontends)) in pending.into_iter().enumerate() {
        let id = match ids[index] {
            Some(id) => id,
            None => match service_ids.claim(None) {
                Some(id) => id,
                None => {
                    out.notes.push(format!(
                        "{}: not forwarded in the kernel: more than {} services",
                        listener.name, limits.services
                    ));
                    continue;
                }
            },
        };
        let mut backends = Vec::new();
        for (address, weight, clusters) in weighted_endpoints(snapshot, proxy, &mut out.notes) {
            let known = out.ids_of_backend(address);
            let Some(backend_id) =
                known.or_else(|| backend_ids.claim(previous.backends.get(&address).copied()))
            else {
                out.notes.push(format!(
                    "{}: backend {address} left out: more than {} backends",
                    listener.name, limits.backends
                ));
                continue;
            };
            out.backends
                .entry(backend_id)
                .or_insert_with(|| BackendPlan {
                    address,
                    cluster: clusters.first().cloned().unwrap_or_default(),
                });
            backends.push(WeightedBackend {
                id: backend_id,
                address,
                weight,
                clusters,
            });
        }
        let table = maglev_table(&backends);
        out.services.push(ServicePlan {
            id,
            listener: listener.name.clone(),
            listener_port: listener.port,
            node_port: listener.node_port.filter(|&n| n != listener.port),
            frontends,
            backends,
            table,
        });
    }
    out.services.sort_by_key(|s| s.listener_port);
    out.steering.sort_by_key(|s| s.node_port);
    out
}

impl KernelPlan {
    /// The id an address already got in this plan (another service has it).
    fn ids_of_backend(&self, address: SocketAddrV4) -> Option<u32> {
        self.backends
            .iter()
            .find(|(_, b)| b.address == address)
            .map(|(id, _)| *id)
    }
}

fn frontends_of(listener: &Listener, notes: &mut Vec<String>) -> Vec<FrontendAddr> {
    let mut frontends = BTreeSet::new();
    match listener.address {
        IpAddr::V4(addr) => {
            frontends.insert(FrontendAddr {
                addr,
                port: listener.port,
            });
        }
        IpAddr::V6(addr) if addr.is_unspecified() => {
            frontends.insert(FrontendAddr {
                addr: Ipv4Addr::UNSPECIFIED,
                port: listener.port,
            });
        }
        IpAddr::V6(_) => notes.push(format!(
            "{}: IPv6 listener address: only its nodePort is forwarded in the kernel",
            listener.name
        )),
    }
    if let Some(node_port) = listener.node_port {
        frontends.insert(FrontendAddr {
            addr: Ipv4Addr::UNSPECIFIED,
            port: node_port,
        });
    }
    frontends.into_iter().collect()
}

/// Serving IPv4 endpoints of the proxy's clusters with integer weights:
/// each cluster's route weight split evenly over its serving endpoints
/// (an address in several clusters adds up), reduced by the gcd.
fn weighted_endpoints(
    snapshot: &Snapshot,
    proxy: &TcpProxy,
    notes: &mut Vec<String>,
) -> Vec<(SocketAddrV4, u64, Vec<String>)> {
    let mut groups: Vec<(u64, Vec<SocketAddrV4>, &str)> = Vec::new();
    for weighted in &proxy.clusters {
        let Some(cluster) = snapshot.cluster(&weighted.name) else {
            continue;
        };
        let mut serving = Vec::new();
        for endpoint in cluster.endpoints.iter().filter(|e| e.serving) {
            match endpoint.address {
                SocketAddr::V4(v4) => serving.push(v4),
                SocketAddr::V6(v6) => notes.push(format!(
                    "{}: IPv6 endpoint {v6} not forwarded in the kernel",
                    cluster.name
                )),
            }
        }
        if weighted.weight > 0 && !serving.is_empty() {
            groups.push((u64::from(weighted.weight), serving, &cluster.name));
        }
    }
    // Exact when the endpoint counts have a small common multiple, else
    // fixed point with 10^6 resolution.
    let lcm = groups.iter().try_fold(1u64, |acc, (_, eps, _)| {
        let n = eps.len() as u64;
        let l = acc / gcd(acc, n) * n;
        (l <= 10_000).then_some(l)
    });
    let mut by_address: BTreeMap<SocketAddrV4, (u64, BTreeSet<String>)> = BTreeMap::new();
    for (weight, endpoints, cluster) in &groups {
        let n = endpoints.len() as u64;
        let each = match lcm {
            Some(l) => weight * (l / n),
            None => ((weight * 1_000_000) / n).max(1),
        };
        for address in endpoints {
            let entry = by_address.entry(*address).or_default();
            entry.0 += each;
            entry.1.insert((*cluster).to_owned());
        }
    }
    let divisor = by_address
        .values()
        .fold(0u64, |acc, (w, _)| gcd(acc, *w))
        .max(1);
    by_address
        .into_iter()
        .map(|(address, (weight, clusters))| {
            (address, weight / divisor, clusters.into_iter().collect())
        })
        .collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The weighted Maglev table of a service (see [`crate::maglev::table`]):
/// backends in address order, identified by `ip << 16 | port`, slots
/// holding backend ids. Deterministic in the set of (address, weight); zero
/// weights get no slot; an empty set gives a table of zeros (the kernel
/// drops with `DropNoBackend`).
pub fn maglev_table(backends: &[WeightedBackend]) -> Vec<u32> {
    let mut live: Vec<&WeightedBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    live.sort_by_key(|b| (b.address.ip().octets(), b.address.port()));
    let members: Vec<(u64, u64)> = live
        .iter()
        .map(|b| {
            let identity =
                u64::from(u32::from(*b.address.ip())) << 16 | u64::from(b.address.port());
            (identity, b.weight)
        })
        .collect();
    crate::maglev::table(&members, u64::from(MAGLEV_SIZE))
        .into_iter()
        .map(|slot| match slot {
            0 => 0,
            index => live[index as usize - 1].id,
        })
        .collect()
}

/// Slots per backend id in `table` (0 = no backend is counted too).
pub fn slot_counts(table: &[u32]) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for id in table {
        *counts.entry(*id).or_default() += 1;
    }
    counts
}

/// What the maps hold now, as far as the diff needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelState {
    pub frontends: BTreeMap<FrontendAddr, Frontend>,
    /// Active backends by id.
    pub backends: BTreeMap<u32, SocketAddrV4>,
    /// Contents of the live table of each service some frontend points at,
    /// keyed by (service id, table).
    pub tables: BTreeMap<(u32, u32), Vec<u32>>,
    /// Steered nodePort -> slot.
    pub steering: BTreeMap<u16, u32>,
}

impl KernelState {
    /// The ids in the maps, to keep them across a restart.
    pub fn ids(&self) -> Ids {
        Ids {
            services: self
                .frontends
                .iter()
                .map(|(f, v)| (*f, v.service_id))
                .collect(),
            backends: self.backends.iter().map(|(id, a)| (*a, *id)).collect(),
            slots: self.steering.clone(),
        }
    }

    /// Applies `op` to this mirror of the maps.
    pub fn apply(&mut self, op: &Op) {
        let replaced = match op {
            Op::SetBackend { id, address } => {
                self.backends.insert(*id, *address);
                None
            }
            Op::WriteTable {
                service_id,
                table,
                slots,
            } => {
                self.tables.insert((*service_id, *table), slots.clone());
                None
            }
            Op::SetFrontend { frontend, value } => self.frontends.insert(*frontend, *value),
            Op::DeleteFrontend { frontend } => self.frontends.remove(frontend),
            Op::DeleteBackend { id } => {
                self.backends.remove(id);
                None
            }
            Op::SetSteer { port, slot } => {
                self.steering.insert(*port, *slot);
                None
            }
            Op::DeleteSteer { port } => {
                self.steering.remove(port);
                None
            }
        };
        // The mirror keeps the tables a frontend points at (what
        // `LbMaps::read_state` reads back): forget one nobody uses anymore.
        if let Some(old) = replaced {
            let key = (old.service_id, old.table & 1);
            if !self
                .frontends
                .values()
                .any(|f| (f.service_id, f.table & 1) == key)
            {
                self.tables.remove(&key);
            }
        }
    }
}

/// One map write, in the order [`diff`] gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `LB_BACKENDS[id] = address` (new or changed backend).
    SetBackend { id: u32, address: SocketAddrV4 },
    /// Fill Maglev table `table` (0/1) of a service, which no frontend uses yet.
    WriteTable {
        service_id: u32,
        table: u32,
        slots: Vec<u32>,
    },
    /// Add a frontend or flip it to its other table.
    SetFrontend {
        frontend: FrontendAddr,
        value: Frontend,
    },
    /// Remove a frontend nothing plans for.
    DeleteFrontend { frontend: FrontendAddr },
    /// `LB_BACKENDS[id] = 0`, after no table points at it anymore.
    DeleteBackend { id: u32 },
    /// `STEER_PORTS[port] = slot`.
    SetSteer { port: u16, slot: u32 },
    /// Remove a steered port.
    DeleteSteer { port: u16 },
}

impl Op {
    /// Short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::SetBackend { .. } => "set_backend",
            Op::WriteTable { .. } => "write_table",
            Op::SetFrontend { .. } => "set_frontend",
            Op::DeleteFrontend { .. } => "delete_frontend",
            Op::DeleteBackend { .. } => "delete_backend",
            Op::SetSteer { .. } => "set_steer",
            Op::DeleteSteer { .. } => "delete_steer",
        }
    }
}

/// The writes that turn `state` into `plan`, make-before-break: new or
/// changed backends first, then each changed service's Maglev table into
/// its inactive table, then frontends (new ones, and flips to the new
/// table) and steered ports, then removals of frontends and ports, then
/// removed backends. A packet never sees a frontend whose table points at a
/// backend id that is not written yet. Established flows do not depend on
/// any of it: conntrack entries hold addresses, not ids.
pub fn diff(state: &KernelState, plan: &KernelPlan) -> Vec<Op> {
    let mut backends = Vec::new();
    let mut tables = Vec::new();
    let mut frontends = Vec::new();
    let mut removals = Vec::new();
    let mut frees = Vec::new();

    for (id, backend) in &plan.backends {
        if state.backends.get(id) != Some(&backend.address) {
            backends.push(Op::SetBackend {
                id: *id,
                address: backend.address,
            });
        }
    }
    let mut wanted_frontends = BTreeSet::new();
    for service in &plan.services {
        // The table the service's existing frontends use, if any.
        let live = service
            .frontends
            .iter()
            .filter_map(|f| state.frontends.get(f))
            .chain(state.frontends.values())
            .find(|v| v.service_id == service.id)
            .map(|v| v.table & 1);
        let current = live.and_then(|t| state.tables.get(&(service.id, t)));
        let target = match (live, current) {
            (Some(t), Some(slots)) if *slots == service.table => t,
            (live, _) => {
                let target = live.map_or(0, |t| 1 - t);
                tables.push(Op::WriteTable {
                    service_id: service.id,
                    table: target,
                    slots: service.table.clone(),
                });
                target
            }
        };
        let value = Frontend {
            service_id: service.id,
            table: target,
            flags: 0,
            _pad: 0,
        };
        for frontend in &service.frontends {
            wanted_frontends.insert(*frontend);
            if state.frontends.get(frontend) != Some(&value) {
                frontends.push(Op::SetFrontend {
                    frontend: *frontend,
                    value,
                });
            }
        }
    }
    let mut wanted_ports = BTreeSet::new();
    for steer in &plan.steering {
        wanted_ports.insert(steer.node_port);
        if state.steering.get(&steer.node_port) != Some(&steer.slot) {
            frontends.push(Op::SetSteer {
                port: steer.node_port,
                slot: steer.slot,
            });
        }
    }
    for frontend in state.frontends.keys() {
        if !wanted_frontends.contains(frontend) {
            removals.push(Op::DeleteFrontend {
                frontend: *frontend,
            });
        }
    }
    for port in state.steering.keys() {
        if !wanted_ports.contains(port) {
            removals.push(Op::DeleteSteer { port: *port });
        }
    }
    for id in state.backends.keys() {
        if !plan.backends.contains_key(id) {
            frees.push(Op::DeleteBackend { id: *id });
        }
    }
    backends
        .into_iter()
        .chain(tables)
        .chain(frontends)
        .chain(removals)
        .chain(frees)
        .collect()
}

/// The `kernel` object of `explain` for a port: steered to which listener,
/// or forwarded to which backend set, from the plan of the same snapshot.
/// `None` when the kernel does nothing for the port.
pub fn explain_port(plan: &KernelPlan, port: u16) -> Option<Value> {
    if let Some(steer) = plan.steering_for_port(port) {
        return Some(json!({
            "path": "steered",
            "hook": "sk_lookup (the daemon's network namespace)",
            "node_port": steer.node_port,
            "listener": steer.listener,
            "listener_port": steer.listener_port,
            "note": "no packet rewrite: the listener sees the client's own address",
        }));
    }
    let service = plan.service_for_port(port)?;
    Some(json!({
        "path": "forwarded",
        "hook": "per interface: xdp_ingress (native XDP) or tc_ingress (tcx ingress), see the kernel dump's hooks",
        "listener": service.listener,
        "frontends": service.frontends.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        "maglev": maglev_summary(service),
        "error": service.backends.is_empty().then_some("no_backend: the kernel drops new connections (drop_no_backend)"),
    }))
}

/// Backends with weights and Maglev slot shares of one service.
pub fn maglev_summary(service: &ServicePlan) -> Value {
    let counts = slot_counts(&service.table);
    let total_weight: u64 = service.backends.iter().map(|b| b.weight).sum();
    json!({
        "table_size": MAGLEV_SIZE,
        "empty_slots": counts.get(&0).copied().unwrap_or(0),
        "backends": service.backends.iter().map(|b| {
            let slots = counts.get(&b.id).copied().unwrap_or(0);
            json!({
                "address": b.address.to_string(),
                "clusters": b.clusters,
                "weight": b.weight,
                "weight_share": if total_weight == 0 { 0.0 } else { b.weight as f64 / total_weight as f64 },
                "slots": slots,
                "slot_share": slots as f64 / f64::from(MAGLEV_SIZE),
            })
        }).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use crate::snapshot::{
        Cluster, Discovery, Endpoint, RouteConfig, RouteOrigin, UpstreamProtocol, VirtualHostIndex,
        WeightedCluster,
    };

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, last), port)
    }

    fn backends(weights: &[(u8, u64)]) -> Vec<WeightedBackend> {
        weights
            .iter()
            .map(|&(last, weight)| WeightedBackend {
                id: u32::from(last),
                address: addr(last, 3306),
                weight,
                clusters: Vec::new(),
            })
            .collect()
    }

    fn share(table: &[u32], id: u32) -> f64 {
        table.iter().filter(|&&x| x == id).count() as f64 / table.len() as f64
    }

    #[test]
    fn table_is_full_and_shares_follow_weights() {
        let table = maglev_table(&backends(&[(1, 1), (2, 1), (3, 2)]));
        assert_eq!(table.len(), MAGLEV_SIZE as usize);
        assert!(table.iter().all(|&id| id != 0), "fully populated");
        for (id, want) in [(1, 0.25), (2, 0.25), (3, 0.5)] {
            let got = share(&table, id);
            assert!((got - want).abs() <= 0.02, "backend {id}: {got} vs {want}");
        }
        let table = maglev_table(&backends(&[(1, 1), (2, 9)]));
        assert!((share(&table, 1) - 0.1).abs() <= 0.02);
    }

    #[test]
    fn table_is_deterministic_and_order_independent() {
        let a = maglev_table(&backends(&[(1, 1), (2, 3), (3, 1)]));
        let b = maglev_table(&backends(&[(3, 1), (1, 1), (2, 3)]));
        assert_eq!(a, b);
        assert_eq!(a, maglev_table(&backends(&[(1, 1), (2, 3), (3, 1)])));
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let all: Vec<(u8, u64)> = (1..=8).map(|i| (i, 1)).collect();
        let before = maglev_table(&backends(&all));
        let after = maglev_table(&backends(&all[..7]));
        assert!(after.iter().all(|&id| id != 8 && id != 0));
        let kept_before: usize = before.iter().filter(|&&id| id != 8).count();
        let unchanged = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 8 && b == a)
            .count();
        // Maglev's promise: nearly all slots of the remaining backends stay.
        assert!(
            unchanged as f64 >= 0.9 * kept_before as f64,
            "{unchanged} of {kept_before} slots kept"
        );
    }

    #[test]
    fn zero_weights_and_empty_sets() {
        assert!(maglev_table(&[]).iter().all(|&id| id == 0));
        assert!(maglev_table(&backends(&[(1, 0)])).iter().all(|&id| id == 0));
        let table = maglev_table(&backends(&[(1, 0), (2, 5)]));
        assert!(table.iter().all(|&id| id == 2));
    }

    fn cluster(name: &str, endpoints: &[(SocketAddrV4, bool)]) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: name.to_owned(),
            host: "mysql.default.svc.cluster.local".into(),
            port: 3306,
            subset: String::new(),
            discovery: Discovery::Service {
                namespace: "default".into(),
                name: "mysql".into(),
            },
            endpoints: endpoints
                .iter()
                .map(|&(a, serving)| Endpoint {
                    address: SocketAddr::V4(a),
                    serving,
                    target: None,
                })
                .collect(),
            protocol: UpstreamProtocol::Tcp,
            connect_timeout: Duration::from_secs(1),
            policy: Default::default(),
        })
    }

    fn tcp_listener(port: u16, node_port: Option<u16>, clusters: &[(&str, u32)]) -> Listener {
        Listener {
            name: format!("0.0.0.0_{port}"),
            address: Ipv4Addr::UNSPECIFIED.into(),
            port,
            service_port: port,
            node_port,
            servers: Vec::new(),
            kind: ListenerKind::Tcp(Some(TcpProxy {
                clusters: clusters
                    .iter()
                    .map(|(n, w)| WeightedCluster {
                        name: (*n).to_owned(),
                        weight: *w,
                        headers: None,
                    })
                    .collect(),
                stat_prefix: "x".into(),
                origin: RouteOrigin {
                    virtual_service: "default/mysql".into(),
                    field: "spec.tcp[0]".into(),
                },
            })),
        }
    }

    fn http_listener(port: u16, node_port: u16) -> Listener {
        Listener {
            name: format!("0.0.0.0_{port}"),
            address: Ipv4Addr::UNSPECIFIED.into(),
            port,
            service_port: 80,
            node_port: Some(node_port),
            servers: Vec::new(),
            kind: ListenerKind::Http(RouteConfig {
                name: format!("http.{port}"),
                virtual_hosts: Vec::new(),
                index: VirtualHostIndex::build(&[]),
            }),
        }
    }

    fn snapshot(listeners: Vec<Listener>, clusters: Vec<Arc<Cluster>>) -> Snapshot {
        Snapshot {
            listeners,
            clusters: clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn plan_splits_route_weights_over_serving_endpoints() {
        let snap = snapshot(
            vec![
                http_listener(8080, 30080),
                tcp_listener(3306, Some(30306), &[("primary", 80), ("replica", 20)]),
            ],
            vec![
                cluster(
                    "primary",
                    &[(addr(20, 3306), true), (addr(22, 3306), false)],
                ),
                cluster("replica", &[(addr(21, 3306), true), (addr(23, 3306), true)]),
            ],
        );
        let plan = plan(&snap, &Ids::default(), Limits::default());
        assert_eq!(plan.steering.len(), 1);
        assert_eq!(plan.steering[0].node_port, 30080);
        assert_eq!(plan.steering[0].listener_port, 8080);
        let service = &plan.services[0];
        assert_eq!(
            service.frontends,
            vec![
                FrontendAddr {
                    addr: Ipv4Addr::UNSPECIFIED,
                    port: 3306
                },
                FrontendAddr {
                    addr: Ipv4Addr::UNSPECIFIED,
                    port: 30306
                },
            ]
        );
        // 80 over one endpoint, 20 over two: 80 : 10 : 10 -> 8 : 1 : 1.
        let weights: Vec<(SocketAddrV4, u64)> = service
            .backends
            .iter()
            .map(|b| (b.address, b.weight))
            .collect();
        assert_eq!(
            weights,
            vec![
                (addr(20, 3306), 8),
                (addr(21, 3306), 1),
                (addr(23, 3306), 1)
            ]
        );
        assert_eq!(plan.backends.len(), 3);
        assert!(plan.kernel_takes_node_port(3306));
        assert!(plan.kernel_takes_node_port(8080));
        let id20 = service.backends[0].id;
        assert!((share(&service.table, id20) - 0.8).abs() <= 0.02);
    }

    #[test]
    fn ids_stay_stable_across_plans() {
        let clusters = vec![
            cluster("a", &[(addr(1, 1), true), (addr(2, 1), true)]),
            cluster("b", &[(addr(3, 1), true)]),
        ];
        let first = plan(
            &snapshot(
                vec![
                    tcp_listener(1000, Some(31000), &[("a", 1)]),
                    tcp_listener(2000, None, &[("b", 1)]),
                ],
                clusters.clone(),
            ),
            &Ids::default(),
            Limits::default(),
        );
        // The first listener goes away; a new one comes before the second.
        let second = plan(
            &snapshot(
                vec![
                    tcp_listener(1500, None, &[("b", 1)]),
                    tcp_listener(2000, None, &[("b", 1)]),
                ],
                clusters,
            ),
            &first.ids(),
            Limits::default(),
        );
        let id_of = |p: &KernelPlan, port: u16| p.service_for_port(port).map(|s| s.id);
        assert_eq!(id_of(&second, 2000), id_of(&first, 2000));
        assert_ne!(id_of(&second, 1500), id_of(&first, 1000), "fresh id first");
        assert_eq!(
            second.ids().backends.get(&addr(3, 1)),
            first.ids().backends.get(&addr(3, 1))
        );
    }

    #[test]
    fn diff_is_make_before_break_and_converges() {
        let one = snapshot(
            vec![tcp_listener(3306, Some(30306), &[("db", 1)])],
            vec![cluster(
                "db",
                &[(addr(1, 3306), true), (addr(2, 3306), true)],
            )],
        );
        let first = plan(&one, &Ids::default(), Limits::default());
        let mut state = KernelState::default();
        let ops = diff(&state, &first);
        let kinds: Vec<&str> = ops.iter().map(Op::kind).collect();
        assert_eq!(
            kinds,
            [
                "set_backend",
                "set_backend",
                "write_table",
                "set_frontend",
                "set_frontend"
            ]
        );
        for op in &ops {
            state.apply(op);
        }
        assert!(diff(&state, &first).is_empty(), "converged");

        // Backend 1 leaves, 3 arrives.
        let two = snapshot(
            vec![tcp_listener(3306, Some(30306), &[("db", 1)])],
            vec![cluster(
                "db",
                &[(addr(2, 3306), true), (addr(3, 3306), true)],
            )],
        );
        let second = plan(&two, &first.ids(), Limits::default());
        let ops = diff(&state, &second);
        let kinds: Vec<&str> = ops.iter().map(Op::kind).collect();
        assert_eq!(
            kinds,
            [
                "set_backend",
                "write_table",
                "set_frontend",
                "set_frontend",
                "delete_backend"
            ]
        );
        let Op::WriteTable { table, .. } = &ops[1] else {
            panic!("{ops:?}")
        };
        assert_eq!(*table, 1, "the inactive table is written");
        for op in &ops {
            state.apply(op);
        }
        assert!(diff(&state, &second).is_empty());
        assert!(state.frontends.values().all(|f| f.table == 1));
        assert!(!state.backends.values().any(|a| *a == addr(1, 3306)));

        // Everything goes away.
        let ops = diff(&state, &KernelPlan::default());
        assert!(
            ops.iter()
                .all(|op| matches!(op, Op::DeleteFrontend { .. } | Op::DeleteBackend { .. }))
        );
        for op in &ops {
            state.apply(op);
        }
        assert_eq!(state, KernelState::default());
    }

    #[test]
    fn service_without_backends_gets_a_table_of_zeros() {
        let snap = snapshot(
            vec![tcp_listener(3306, Some(30306), &[("db", 1), ("gone", 1)])],
            vec![cluster("db", &[(addr(1, 3306), false)])],
        );
        let plan = plan(&snap, &Ids::default(), Limits::default());
        assert!(plan.services[0].backends.is_empty());
        assert!(plan.services[0].table.iter().all(|&id| id == 0));
        let explained = explain_port(&plan, 30306).expect("forwarded");
        assert_eq!(explained["path"], "forwarded");
        assert!(explained["error"].as_str().is_some());
    }

    #[test]
    fn explain_shows_slot_shares() {
        let snap = snapshot(
            vec![
                tcp_listener(3306, Some(30306), &[("db", 1)]),
                http_listener(8080, 30080),
            ],
            vec![cluster(
                "db",
                &[(addr(1, 3306), true), (addr(2, 3306), true)],
            )],
        );
        let plan = plan(&snap, &Ids::default(), Limits::default());
        let steered = explain_port(&plan, 30080).expect("steered");
        assert_eq!(steered["listener"], "0.0.0.0_8080");
        let forwarded = explain_port(&plan, 3306).expect("forwarded");
        let backends = forwarded["maglev"]["backends"].as_array().expect("array");
        let slots: u64 = backends.iter().filter_map(|b| b["slots"].as_u64()).sum();
        assert_eq!(slots, u64::from(MAGLEV_SIZE));
        assert!(explain_port(&plan, 9999).is_none());
    }
}
