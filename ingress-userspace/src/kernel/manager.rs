//! Kernel stage, lifecycle: load or adopt the pinned programs, links and maps
//! under the pin root, attach `tc_ingress` (tcx) or `xdp_ingress` (native
//! XDP, `tc_ingress` behind it) per interface and `sk_lookup_steer`, write
//! plans by their ordered diff, reap conntrack, read state back, and remove
//! everything on `cleanup`.
//!
//! Pin layout (root `/sys/fs/bpf/ingressd` unless told otherwise):
//!
//! ```text
//! <root>/<MAP NAME>                  every LB_* and STEER_* map
//! <root>/progs/tc_ingress            the programs
//! <root>/progs/xdp_ingress           (when an interface got native XDP)
//! <root>/progs/sk_lookup_steer
//! <root>/links/tc_ingress@<ifname>   one tcx ingress link per interface
//! <root>/links/xdp_ingress@<ifname>  one XDP (driver mode) link per XDP interface
//! <root>/links/sk_lookup_steer@netns the netns link
//! ```
//!
//! Pinned links keep the programs attached when the daemon dies (even
//! `kill -9`); a restarted daemon whose ABI matches (`LB_CONFIG.abi_version`)
//! adopts them as they are, reads the maps back and reconciles by the same
//! diff. Only `cleanup` (and `run --kernel off`) detaches.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use aya::EbpfLoader;
use aya::maps::{Array, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, SkLookup, TcAttachType, Xdp};
use ingress_common::ABI_VERSION;
use ingress_common::lb::{
    CONFIG_MAP, FRONTENDS_CAPACITY, FRONTENDS_MAP, LbConfig, MAGLEV_MAP, MAGLEV_SIZE, MAX_SERVICES,
    SERVICE_STATS_MAP, TC_PROGRAM, XDP_PROGRAM,
};
use ingress_common::steer::SK_LOOKUP_PROGRAM;
use serde_json::{Value, json};

use super::KernelError;
use super::maps::{LB_MAPS, LbMaps, Reaped};
use crate::kernel_plan::{self, KernelPlan, KernelState, Op};
use crate::snapshot::Snapshot;

/// Where the daemon pins by default.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/ingressd";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `--xdp`: which forwarding hook each interface gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Native XDP (`xdp_ingress`) on interfaces whose driver is not a
    /// virtual device's and accepts a driver-mode attachment; TC elsewhere.
    #[default]
    Auto,
    /// Native XDP on every interface; an interface that refuses is an error.
    On,
    /// TC (`tc_ingress`) only.
    Off,
}

/// How to set up the kernel path.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// Pin directory on a bpffs.
    pub pin_root: PathBuf,
    /// Interfaces to attach to; empty: every UP non-loopback interface with
    /// an IPv4 address in the daemon's network namespace.
    pub interfaces: Vec<String>,
    pub xdp: XdpMode,
    /// TCP services the maps hold (sizes `LB_MAGLEV`, `LB_SERVICE_STATS`
    /// and `LB_FRONTENDS` at load time).
    pub max_services: u32,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            interfaces: Vec::new(),
            xdp: XdpMode::Auto,
            max_services: MAX_SERVICES,
        }
    }
}

/// Map sizes for `max_services` services: two Maglev tables per service, its
/// counters, and room for its two frontends (nodePort, listener port).
fn service_capacities(max_services: u32) -> [(&'static str, u32); 3] {
    [
        (MAGLEV_MAP, 2 * max_services * MAGLEV_SIZE),
        (SERVICE_STATS_MAP, max_services),
        (FRONTENDS_MAP, FRONTENDS_CAPACITY.max(2 * max_services)),
    ]
}

/// Whether the pinned maps were created for `max_services` services.
fn pinned_capacity_matches(root: &Path, max_services: u32) -> bool {
    service_capacities(max_services).iter().all(|(name, size)| {
        MapData::from_pin(root.join(name))
            .ok()
            .and_then(|m| m.info().ok())
            .is_some_and(|info| info.max_entries() == *size)
    })
}

/// Which hook an interface got and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceHook {
    pub name: String,
    pub ifindex: u32,
    /// The SNAT address of forwarded packets leaving through it.
    pub address: Ipv4Addr,
    /// `tc` (tcx ingress) or `xdp` (native XDP, `tc_ingress` behind it for
    /// packets whose next hop is not resolved yet).
    pub hook: &'static str,
    pub driver: Option<String>,
    pub reason: String,
    /// `attached` now or `kept` (adopted from the pins); for `xdp`, of the
    /// XDP link.
    pub link: &'static str,
}

/// The loaded (or adopted) kernel path.
#[derive(Debug)]
pub struct KernelManager {
    root: PathBuf,
    maps: LbMaps,
    /// Mirror of what the maps hold, kept by applying the same ops.
    state: KernelState,
    /// The last plan written.
    plan: KernelPlan,
    hooks: Vec<InterfaceHook>,
    adopted: bool,
    sk_lookup: &'static str,
    /// Steering slots this process put a socket into (a sock map's keys
    /// cannot be listed: every index exists).
    socket_slots: std::collections::BTreeSet<u32>,
}

/// Mounts bpffs on `/sys/fs/bpf` when `root` lives there and it is missing.
pub fn ensure_bpffs(root: &Path) -> Result<(), KernelError> {
    let base = Path::new("/sys/fs/bpf");
    if root.starts_with(base) && !is_bpffs(base) {
        let source = CString::new("bpf").expect("no NUL in a literal");
        let target = CString::new("/sys/fs/bpf").expect("no NUL in a literal");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(KernelError::Bpffs(format!(
                "mounting bpffs on /sys/fs/bpf: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    let mut probe = root;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(probe) {
        return Err(KernelError::Bpffs(format!(
            "{} is not on a bpf filesystem",
            probe.display()
        )));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> KernelError {
    move |source| KernelError::Io { what, source }
}

fn pin_err(path: &Path) -> impl FnOnce(aya::pin::PinError) -> KernelError + '_ {
    move |source| KernelError::Pin {
        path: path.display().to_string(),
        source,
    }
}

fn program_err(program: &'static str) -> impl Fn(aya::programs::ProgramError) -> KernelError {
    move |source| KernelError::Program { program, source }
}

/// The ABI version in the pinned `LB_CONFIG`, if there is one.
fn pinned_abi(root: &Path) -> Option<u32> {
    let data = MapData::from_pin(root.join(CONFIG_MAP)).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    let array: Array<MapData, LbConfig> = Array::try_from(map).ok()?;
    array.get(&0, 0).ok().map(|c| c.abi_version)
}

/// What an interface gets before trying: TC (with why), or an attempt at
/// native XDP (with why, if it works).
enum HookChoice {
    Tc(String),
    TryXdp(String),
}

/// The hook `--xdp` asks for on an interface with `driver`.
fn hook_choice(xdp: XdpMode, driver: Option<&str>) -> HookChoice {
    match (xdp, driver) {
        (XdpMode::Off, _) => HookChoice::Tc("tc: --xdp off".to_owned()),
        (XdpMode::On, driver) => HookChoice::TryXdp(format!(
            "xdp (drv): --xdp on (driver {}); tc_ingress behind it for unresolved neighbours",
            driver.unwrap_or("unknown")
        )),
        (XdpMode::Auto, Some(d)) if VIRTUAL_DRIVERS.contains(&d) => HookChoice::Tc(format!(
            "tc: {d} is a virtual device; native XDP there drops GSO and costs about 4x single-stream throughput"
        )),
        (XdpMode::Auto, None) => HookChoice::Tc(
            "tc: driver unknown (no ethtool driver info), so not tried for native XDP".to_owned(),
        ),
        (XdpMode::Auto, Some(d)) => HookChoice::TryXdp(format!(
            "xdp (drv): driver {d} runs native XDP; tc_ingress behind it for unresolved neighbours"
        )),
    }
}

/// `xdp_ingress`: the pinned program when adopting, else loaded from the
/// object and pinned (once, on first use).
fn xdp_program<'a>(
    object: &'a mut Option<&mut aya::programs::Program>,
    pinned: &'a mut Option<Xdp>,
    adopt: bool,
    pin: &Path,
) -> Result<&'a mut Xdp, KernelError> {
    if pinned.is_none() && adopt {
        *pinned = Xdp::from_pin(pin, aya_obj::programs::XdpAttachType::Interface).ok();
    }
    if let Some(program) = pinned.as_mut() {
        return Ok(program);
    }
    let program: &mut Xdp = object
        .as_deref_mut()
        .ok_or(KernelError::MissingProgram(XDP_PROGRAM))?
        .try_into()
        .map_err(program_err(XDP_PROGRAM))?;
    if program.fd().is_err() {
        program.load().map_err(program_err(XDP_PROGRAM))?;
        let _ = std::fs::remove_file(pin);
        program.pin(pin).map_err(pin_err(pin))?;
    }
    Ok(program)
}

/// Attaches `xdp_ingress` to `name` in driver mode and pins the link, or
/// keeps the pinned link when adopting.
fn attach_xdp(
    program: &mut Xdp,
    name: &str,
    pin: &Path,
    adopt: bool,
) -> Result<&'static str, KernelError> {
    if adopt && PinnedLink::from_pin(pin).is_ok() {
        return Ok("kept");
    }
    let _ = std::fs::remove_file(pin);
    let id = program
        .attach(name, aya::programs::XdpMode::Driver)
        .map_err(|source| KernelError::Attach {
            program: XDP_PROGRAM,
            interface: name.to_owned(),
            mode: super::AttachMode::Driver,
            source,
        })?;
    let link = program.take_link(id).map_err(program_err(XDP_PROGRAM))?;
    let fd: FdLink = link.try_into().map_err(|e| KernelError::Link {
        what: format!("{XDP_PROGRAM} on {name} is not a bpf_link"),
        source: e,
    })?;
    fd.pin(pin).map_err(pin_err(pin))?;
    Ok("attached")
}

/// Attaches `tc_ingress` (tcx ingress) to `name` and pins the link, or keeps
/// the pinned link when adopting and it is still attached there.
fn attach_tc(
    tc: &mut SchedClassifier,
    tc_id: u32,
    name: &str,
    links: &Path,
    adopt: bool,
) -> Result<&'static str, KernelError> {
    let pin = links.join(format!("{TC_PROGRAM}@{name}"));
    let attached_here = SchedClassifier::query_tcx(name, TcAttachType::Ingress)
        .map(|(_, programs)| programs.iter().any(|p| p.id() == tc_id))
        .unwrap_or(false);
    if adopt && attached_here && PinnedLink::from_pin(&pin).is_ok() {
        return Ok("kept");
    }
    let _ = std::fs::remove_file(&pin);
    let id = tc
        .attach_with_options(
            name,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|source| KernelError::Attach {
            program: TC_PROGRAM,
            interface: name.to_owned(),
            mode: super::AttachMode::Skb,
            source,
        })?;
    let link = tc.take_link(id).map_err(program_err(TC_PROGRAM))?;
    let fd: FdLink = link.try_into().map_err(|e| KernelError::Link {
        what: format!("{TC_PROGRAM} on {name} is not a tcx link"),
        source: e,
    })?;
    fd.pin(&pin).map_err(pin_err(&pin))?;
    Ok("attached")
}

impl KernelManager {
    /// Loads the object (or adopts the pins), attaches and pins everything.
    pub fn start(options: &KernelOptions) -> Result<Self, KernelError> {
        let root = options.pin_root.clone();
        ensure_bpffs(&root)?;
        let adopt = match pinned_abi(&root) {
            Some(v) if v == ABI_VERSION && pinned_capacity_matches(&root, options.max_services) => {
                true
            }
            Some(v) if v == ABI_VERSION => {
                tracing::warn!(
                    max_services = options.max_services,
                    "pinned kernel maps were sized for another --max-services: re-creating them"
                );
                cleanup(&root)?;
                false
            }
            Some(v) => {
                tracing::warn!(
                    pinned = v,
                    ours = ABI_VERSION,
                    "pinned kernel state has another ABI: removing it"
                );
                cleanup(&root)?;
                false
            }
            None => {
                if root.exists() {
                    cleanup(&root)?;
                }
                false
            }
        };
        let links = root.join("links");
        let progs = root.join("progs");
        for dir in [&root, &links, &progs] {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        let interfaces = select_interfaces(&options.interfaces)?;

        let mut loader = EbpfLoader::new();
        for (name, ..) in LB_MAPS {
            loader.map_pin_path(name, root.join(name));
        }
        for (name, size) in service_capacities(options.max_services) {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader.load(super::object())?;
        // Both forwarding programs at once (one mutable borrow of the object).
        let (mut tc_object, mut xdp_object) = (None, None);
        for (name, program) in ebpf.programs_mut() {
            match name {
                TC_PROGRAM => tc_object = Some(program),
                XDP_PROGRAM => xdp_object = Some(program),
                _ => {}
            }
        }

        // tc_ingress: the pinned program when adopting, else a fresh one.
        let tc_pin = progs.join(TC_PROGRAM);
        let mut pinned_tc = if adopt {
            SchedClassifier::from_pin(&tc_pin).ok()
        } else {
            None
        };
        let tc: &mut SchedClassifier = match pinned_tc.as_mut() {
            Some(program) => program,
            None => {
                let program: &mut SchedClassifier = tc_object
                    .take()
                    .ok_or(KernelError::MissingProgram(TC_PROGRAM))?
                    .try_into()
                    .map_err(program_err(TC_PROGRAM))?;
                program.load().map_err(program_err(TC_PROGRAM))?;
                let _ = std::fs::remove_file(&tc_pin);
                program.pin(&tc_pin).map_err(pin_err(&tc_pin))?;
                program
            }
        };
        let tc_id = tc.info().map_err(program_err(TC_PROGRAM))?.id();
        // xdp_ingress: loaded (or taken from its pin) only when an
        // interface may get native XDP.
        let xdp_pin = progs.join(XDP_PROGRAM);
        let mut pinned_xdp = None;
        let mut hooks = Vec::new();
        let mut wanted: Vec<String> = Vec::new();
        for (name, ifindex, address) in &interfaces {
            let driver = driver_of(name);
            let mut choice = hook_choice(options.xdp, driver.as_deref());
            let mut xdp_link = None;
            if let HookChoice::TryXdp(why) = &choice {
                let xdp = xdp_program(&mut xdp_object, &mut pinned_xdp, adopt, &xdp_pin)?;
                let pin = links.join(format!("{XDP_PROGRAM}@{name}"));
                match attach_xdp(xdp, name, &pin, adopt) {
                    Ok(link) => {
                        xdp_link = Some(link);
                        wanted.push(format!("{XDP_PROGRAM}@{name}"));
                        choice = HookChoice::TryXdp(why.clone());
                    }
                    Err(error) if options.xdp == XdpMode::On => return Err(error),
                    Err(error) => {
                        choice = HookChoice::Tc(format!(
                            "tc: native XDP refused ({}); driver {}",
                            super::chain(&error),
                            driver.as_deref().unwrap_or("unknown")
                        ));
                    }
                }
            }
            // tc_ingress on every interface: the hook itself, or behind
            // xdp_ingress for the packets it passes up (PassNoNeigh).
            let tc_link = attach_tc(tc, tc_id, name, &links, adopt)?;
            wanted.push(format!("{TC_PROGRAM}@{name}"));
            let (hook, reason, link) = match (choice, xdp_link) {
                (HookChoice::TryXdp(why), Some(link)) => ("xdp", why, link),
                (HookChoice::Tc(why), _) | (HookChoice::TryXdp(why), None) => ("tc", why, tc_link),
            };
            hooks.push(InterfaceHook {
                name: name.clone(),
                ifindex: *ifindex,
                address: *address,
                hook,
                reason,
                driver,
                link,
            });
        }
        // Links no longer wanted go (removing the pin detaches): interfaces
        // no longer selected, XDP links of interfaces that got TC now.
        for entry in
            std::fs::read_dir(&links).map_err(io(format!("reading {}", links.display())))?
        {
            let entry = entry.map_err(io(format!("reading {}", links.display())))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let ours = file.starts_with(&format!("{TC_PROGRAM}@"))
                || file.starts_with(&format!("{XDP_PROGRAM}@"));
            if ours && !wanted.contains(&file) {
                tracing::info!(link = %file, "detaching a link no longer wanted");
                let _ = std::fs::remove_file(entry.path());
            }
        }

        // sk_lookup_steer on the daemon's (this thread's) network namespace.
        let sk_pin = links.join(format!("{SK_LOOKUP_PROGRAM}@netns"));
        let sk_lookup = if adopt && PinnedLink::from_pin(&sk_pin).is_ok() {
            "kept"
        } else {
            let program: &mut SkLookup = ebpf
                .program_mut(SK_LOOKUP_PROGRAM)
                .ok_or(KernelError::MissingProgram(SK_LOOKUP_PROGRAM))?
                .try_into()
                .map_err(program_err(SK_LOOKUP_PROGRAM))?;
            program.load().map_err(program_err(SK_LOOKUP_PROGRAM))?;
            let prog_pin = progs.join(SK_LOOKUP_PROGRAM);
            let _ = std::fs::remove_file(&prog_pin);
            program.pin(&prog_pin).map_err(pin_err(&prog_pin))?;
            let netns = File::open("/proc/thread-self/ns/net")
                .map_err(io("opening /proc/thread-self/ns/net".into()))?;
            let id = program
                .attach(&netns)
                .map_err(program_err(SK_LOOKUP_PROGRAM))?;
            let link: FdLink = program
                .take_link(id)
                .map_err(program_err(SK_LOOKUP_PROGRAM))?
                .into();
            let _ = std::fs::remove_file(&sk_pin);
            link.pin(&sk_pin).map_err(pin_err(&sk_pin))?;
            "attached"
        };

        let maps = LbMaps::from_object(&mut ebpf)?;
        let mut manager = Self::with_maps(root, maps, adopt)?;
        manager.hooks = hooks;
        manager.sk_lookup = sk_lookup;
        let snat: BTreeMap<u32, Ipv4Addr> = manager
            .hooks
            .iter()
            .map(|h| (h.ifindex, h.address))
            .collect();
        manager.maps.set_snat_addrs(&snat)?;
        Ok(manager)
    }

    /// A manager over maps opened elsewhere (tests, tools): writes
    /// `LB_CONFIG` when it differs and reads the current state back.
    pub fn with_maps(root: PathBuf, mut maps: LbMaps, adopted: bool) -> Result<Self, KernelError> {
        if maps.config()? != Some(LbConfig::default()) {
            maps.set_config(LbConfig::default())?;
        }
        let state = maps.read_state()?;
        Ok(KernelManager {
            root,
            maps,
            state,
            plan: KernelPlan::default(),
            hooks: Vec::new(),
            adopted,
            sk_lookup: "none",
            socket_slots: std::collections::BTreeSet::new(),
        })
    }

    /// Whether pinned state was adopted instead of loaded fresh.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn hooks(&self) -> &[InterfaceHook] {
        &self.hooks
    }

    pub fn maps(&self) -> &LbMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut LbMaps {
        &mut self.maps
    }

    /// What the maps hold (as mirrored).
    pub fn state(&self) -> &KernelState {
        &self.state
    }

    /// The last plan written.
    pub fn current_plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// The plan for `snapshot`, keeping the ids in the maps.
    pub fn plan_for(&self, snapshot: &Snapshot) -> KernelPlan {
        kernel_plan::plan(snapshot, &self.state.ids(), self.maps.limits())
    }

    /// Writes `plan` by its ordered diff; returns the ops performed. On an
    /// error the mirror keeps what was written so far.
    pub fn apply(&mut self, plan: &KernelPlan) -> Result<Vec<Op>, KernelError> {
        let ops = kernel_plan::diff(&self.state, plan);
        for op in &ops {
            self.maps.apply(op)?;
            self.state.apply(op);
        }
        self.plan = plan.clone();
        Ok(ops)
    }

    /// Puts the listening sockets of the steered listeners (by bind port)
    /// into their slots of `plan` and empties the slots `plan` does not use.
    /// Call before [`apply`](Self::apply) so a steered port always finds its socket.
    pub fn register_sockets(
        &mut self,
        plan: &KernelPlan,
        sockets: &BTreeMap<u16, std::os::fd::RawFd>,
    ) -> Result<usize, KernelError> {
        let mut registered = 0;
        for steer in &plan.steering {
            if let Some(fd) = sockets.get(&steer.listener_port) {
                self.maps.set_socket(steer.slot, &RawFdRef(*fd))?;
                self.socket_slots.insert(steer.slot);
                registered += 1;
            }
        }
        let used: Vec<u32> = plan.steering.iter().map(|s| s.slot).collect();
        let stale: Vec<u32> = self
            .socket_slots
            .iter()
            .copied()
            .filter(|slot| !used.contains(slot))
            .collect();
        for slot in stale {
            self.maps.clear_socket(slot)?;
            self.socket_slots.remove(&slot);
        }
        Ok(registered)
    }

    /// One conntrack reaping pass (RST: now; FIN: after 60 s quiet; any:
    /// after `idle` quiet).
    pub fn reap(&mut self, idle: std::time::Duration) -> Result<Reaped, KernelError> {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        self.maps.reap(monotonic_ns(), idle_ns, 60_000_000_000)
    }

    /// The counters for `/stats/prometheus`: reasons, steering, and the
    /// services and backends of the current plan.
    pub fn stats(&self) -> Result<crate::stats::KernelStats, KernelError> {
        use crate::stats::{KernelStats, KernelTraffic};
        let traffic =
            |labels: [(&'static str, String); 2], t: super::maps::Traffic| KernelTraffic {
                labels,
                packets: t.packets,
                bytes: t.bytes,
                connections: t.connections,
            };
        let mut stats = KernelStats {
            reasons: self
                .maps
                .reasons()?
                .into_iter()
                .map(|(r, n)| (r.label(), n))
                .collect(),
            steering: self
                .maps
                .steer_reasons()?
                .into_iter()
                .map(|(r, n)| (r.label(), n))
                .collect(),
            ..KernelStats::default()
        };
        for service in &self.plan.services {
            stats.services.push(traffic(
                [
                    ("listener", service.listener.clone()),
                    ("port", service.listener_port.to_string()),
                ],
                self.maps.service_traffic(service.id)?,
            ));
        }
        for (id, backend) in &self.plan.backends {
            stats.backends.push(traffic(
                [
                    ("cluster", backend.cluster.clone()),
                    ("backend", backend.address.to_string()),
                ],
                self.maps.backend_traffic(*id)?,
            ));
        }
        Ok(stats)
    }

    /// Every file under the pin root.
    pub fn pins(&self) -> Vec<String> {
        let mut out = Vec::new();
        list_files(&self.root, &mut out);
        out.sort();
        out.into_iter().map(|p| p.display().to_string()).collect()
    }

    /// The `ingressd.KernelDump` entry of `/config_dump`, read from the live maps.
    pub fn dump(&self) -> Value {
        let read = || -> Result<Value, KernelError> {
            let state = self.maps.read_state()?;
            let config = self.maps.config()?;
            let services: Vec<Value> = {
                let mut by_service: BTreeMap<u32, (u32, Vec<String>)> = BTreeMap::new();
                for (frontend, value) in &state.frontends {
                    let entry = by_service
                        .entry(value.service_id)
                        .or_insert((value.table & 1, Vec::new()));
                    entry.1.push(frontend.to_string());
                }
                by_service
                    .into_iter()
                    .map(|(id, (table, frontends))| {
                        let slots = state
                            .tables
                            .get(&(id, table))
                            .map(|t| kernel_plan::slot_counts(t))
                            .unwrap_or_default();
                        let listener = self
                            .plan
                            .services
                            .iter()
                            .find(|s| s.id == id)
                            .map(|s| s.listener.clone());
                        json!({
                            "id": id,
                            "listener": listener,
                            "frontends": frontends,
                            "live_table": table,
                            "slots_per_backend": slots.iter().map(|(backend, n)| {
                                let name = if *backend == 0 {
                                    "none".to_owned()
                                } else {
                                    state.backends.get(backend).map_or_else(|| format!("id {backend} (not active)"), |a| a.to_string())
                                };
                                (name, json!(n))
                            }).collect::<serde_json::Map<String, Value>>(),
                        })
                    })
                    .collect()
            };
            Ok(json!({
                "@type": "ingressd.KernelDump",
                "pin_root": self.root.display().to_string(),
                "adopted": self.adopted,
                "hooks": self.hooks.iter().map(|h| json!({
                    "interface": h.name,
                    "ifindex": h.ifindex,
                    "address": h.address.to_string(),
                    "hook": h.hook,
                    "driver": h.driver,
                    "reason": h.reason,
                    "link": h.link,
                })).collect::<Vec<_>>(),
                "sk_lookup": { "program": SK_LOOKUP_PROGRAM, "netns_link": self.sk_lookup },
                "pins": self.pins(),
                "config": config.map(|c| json!({
                    "snat_port_min": c.snat_port_min,
                    "snat_port_max": c.snat_port_max,
                    "abi_version": c.abi_version,
                })),
                "snat_addrs": self.maps.snat_addrs()?.iter().map(|(i, a)| (i.to_string(), json!(a.to_string()))).collect::<serde_json::Map<String, Value>>(),
                "frontends": state.frontends.iter().map(|(f, v)| json!({
                    "frontend": f.to_string(),
                    "service_id": v.service_id,
                    "table": v.table,
                })).collect::<Vec<_>>(),
                "backends": state.backends.iter().map(|(id, a)| json!({
                    "id": id,
                    "address": a.to_string(),
                    "cluster": self.plan.backends.get(id).map(|b| b.cluster.clone()),
                })).collect::<Vec<_>>(),
                "services": services,
                "steering": state.steering.iter().map(|(port, slot)| json!({
                    "node_port": port,
                    "slot": slot,
                    "listener": self.plan.steering_for_port(*port).map(|s| s.listener.clone()),
                })).collect::<Vec<_>>(),
                "steering_sockets": self.socket_slots,
                "conntrack_entries": self.maps.conntrack_len()?,
            }))
        };
        read().unwrap_or_else(|error| {
            json!({
                "@type": "ingressd.KernelDump",
                "error": super::chain(&error),
            })
        })
    }
}

/// A borrowed raw fd for `SockMap::set`.
struct RawFdRef(std::os::fd::RawFd);

impl AsRawFd for RawFdRef {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into a timespec we own.
    let ts = unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        ts
    };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Removes every link, program and map pin under `root`, links first (so
/// the programs detach before anything else goes), then the directories.
/// Returns what it removed.
pub fn cleanup(root: &Path) -> Result<Vec<String>, KernelError> {
    let mut removed = Vec::new();
    if !root.exists() {
        return Ok(removed);
    }
    let mut files = Vec::new();
    list_files(root, &mut files);
    let rank = |p: &PathBuf| {
        if p.starts_with(root.join("links")) {
            0
        } else if p.starts_with(root.join("progs")) {
            1
        } else {
            2
        }
    };
    files.sort_by_key(|p| (rank(p), p.clone()));
    for file in files {
        std::fs::remove_file(&file).map_err(io(format!("removing {}", file.display())))?;
        removed.push(file.display().to_string());
    }
    for dir in [root.join("links"), root.join("progs"), root.to_path_buf()] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
            removed.push(format!("{}/", dir.display()));
        }
    }
    Ok(removed)
}

/// The interfaces to attach to, with ifindex and IPv4 address.
fn select_interfaces(given: &[String]) -> Result<Vec<(String, u32, Ipv4Addr)>, KernelError> {
    let all = ipv4_interfaces().map_err(io("listing interfaces (getifaddrs)".into()))?;
    let mut out: Vec<(String, u32, Ipv4Addr)> = Vec::new();
    if given.is_empty() {
        for (name, address, up, loopback) in all {
            if up && !loopback && !out.iter().any(|(n, ..)| *n == name) {
                let ifindex = ifindex(&name)?;
                out.push((name, ifindex, address));
            }
        }
        if out.is_empty() {
            return Err(KernelError::Interfaces(
                "no UP non-loopback interface with an IPv4 address".into(),
            ));
        }
    } else {
        for name in given {
            let ifindex = ifindex(name)?;
            let address = all
                .iter()
                .find(|(n, ..)| n == name)
                .map(|(_, a, ..)| *a)
                .ok_or_else(|| {
                    KernelError::Interfaces(format!("{name} has no IPv4 address to SNAT to"))
                })?;
            out.push((name.clone(), ifindex, address));
        }
    }
    Ok(out)
}

fn ifindex(name: &str) -> Result<u32, KernelError> {
    let c = CString::new(name)
        .map_err(|_| KernelError::Interfaces(format!("bad interface name {name:?}")))?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(KernelError::Interfaces(format!(
            "no interface named {name}"
        )));
    }
    Ok(index)
}

/// The UP interfaces holding one of `addresses` (a node's InternalIP /
/// ExternalIP), in address order, each once.
pub fn interfaces_with_addresses(addresses: &[Ipv4Addr]) -> std::io::Result<Vec<String>> {
    let all = ipv4_interfaces()?;
    let mut out: Vec<String> = Vec::new();
    for address in addresses {
        for (name, _, _, _) in all
            .iter()
            .filter(|(_, a, up, loopback)| a == address && *up && !*loopback)
        {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    Ok(out)
}

/// (name, IPv4 address, up, loopback) of every IPv4 address of every interface.
fn ipv4_interfaces() -> std::io::Result<Vec<(String, Ipv4Addr, bool, bool)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not freed yet.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: non-null pointers into the list.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in.
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        // SAFETY: a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = entry.ifa_flags;
        out.push((
            name,
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
            flags & libc::IFF_UP as u32 != 0,
            flags & libc::IFF_LOOPBACK as u32 != 0,
        ));
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The driver of `name` (ethtool `GDRVINFO`), e.g. `veth`.
fn driver_of(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    // struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32],
    // bus_info[32], erom_version[32], reserved2[12], five u32.
    let mut info = [0u8; 196];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    // SAFETY: a zeroed ifreq; the name fits (checked) and ends with NUL.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return None;
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
    // SAFETY: socket/ioctl/close with valid arguments; `info` outlives the call.
    let ok = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut request);
        libc::close(fd);
        rc == 0
    };
    if !ok {
        return None;
    }
    let driver = &info[4..36];
    let end = driver.iter().position(|&b| b == 0).unwrap_or(driver.len());
    Some(String::from_utf8_lossy(&driver[..end]).into_owned()).filter(|d| !d.is_empty())
}

/// Drivers of virtual devices, where TC is the fast hook.
const VIRTUAL_DRIVERS: [&str; 10] = [
    "veth",
    "bridge",
    "vxlan",
    "tun",
    "dummy",
    "geneve",
    "macvlan",
    "ipvlan",
    "wireguard",
    "bond",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_choice_follows_the_flag_and_the_driver() {
        let tc = |c: HookChoice| matches!(c, HookChoice::Tc(_));
        assert!(tc(hook_choice(XdpMode::Off, Some("ixgbe"))));
        assert!(tc(hook_choice(XdpMode::Auto, Some("veth"))));
        assert!(tc(hook_choice(XdpMode::Auto, Some("bridge"))));
        assert!(tc(hook_choice(XdpMode::Auto, None)));
        assert!(!tc(hook_choice(XdpMode::Auto, Some("mlx5_core"))));
        assert!(!tc(hook_choice(XdpMode::On, Some("veth"))));
    }
}
