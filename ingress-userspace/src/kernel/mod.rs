//! Kernel stage: loading the eBPF object, attaching its programs, writing
//! the plan into its maps and reading their counters.
//!
//! - [`manager`]: the forwarding and steering path (`tc_ingress`,
//!   `sk_lookup_steer`): load or adopt pins, attach, apply plan diffs,
//!   reap conntrack, `cleanup`.
//! - [`maps`]: typed handles on the `LB_*`/`STEER_*` maps.
//! - [`PortCounterProgram`] (here): `xdp_port_counter`, which counts packets
//!   by destination port and passes every packet. Dropping it detaches it.

pub mod manager;
pub mod maps;

use std::fmt;

use aya::Ebpf;
use aya::maps::PerCpuArray;
use aya::programs::{Xdp, XdpMode};
use ingress_common::counter::{
    PASS_REASONS_MAP, PORT_COUNTER_PROGRAM, PORT_COUNTERS_MAP, PassReason, PortCounter,
};

/// The eBPF object built by `build.rs`, aligned for the ELF parser.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-ebpf"))
}

/// Why the kernel path could not be set up or read. The underlying aya error
/// is the `source`; print with `{:#}` through anyhow (or [`chain`]) to see it.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The object could not be parsed or its maps created.
    #[error("loading the eBPF object")]
    Load(#[from] aya::EbpfError),
    /// A program the daemon needs is not in the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map the daemon needs is not in the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The verifier rejected the program, or attaching it failed.
    #[error("loading program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Attaching to one interface failed.
    #[error("attaching {program} to {interface} ({mode})")]
    Attach {
        program: &'static str,
        interface: String,
        mode: AttachMode,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Pinning to bpffs failed.
    #[error("pinning {path}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    /// A link could not be converted or pinned.
    #[error("{what}")]
    Link {
        what: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// bpffs is missing and could not be mounted, or the pin root is elsewhere.
    #[error("bpffs: {0}")]
    Bpffs(String),
    /// The interfaces to attach to could not be found.
    #[error("interfaces: {0}")]
    Interfaces(String),
    /// A filesystem operation on the pins failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing a map failed.
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// `error` and its causes on one line, `a: b: c`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// How an XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// Generic XDP, after the kernel built an skb. The default: native XDP on
    /// veth disables GSO for the device and costs about 4x in throughput.
    #[default]
    Skb,
    /// Native XDP in the driver, for NICs where it pays off.
    Driver,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Skb => "skb",
            AttachMode::Driver => "drv",
        })
    }
}

impl From<AttachMode> for XdpMode {
    fn from(mode: AttachMode) -> Self {
        match mode {
            AttachMode::Skb => XdpMode::Skb,
            AttachMode::Driver => XdpMode::Driver,
        }
    }
}

/// Per-port totals summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortTotals {
    pub port: u16,
    pub packets: u64,
    pub bytes: u64,
}

/// The loaded port-counter program and the interfaces it is attached to.
pub struct PortCounterProgram {
    ebpf: Ebpf,
    interfaces: Vec<(String, AttachMode)>,
}

impl fmt::Debug for PortCounterProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortCounterProgram")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

impl PortCounterProgram {
    /// Loads the object and the XDP program into the kernel (not attached yet).
    pub fn load() -> Result<Self, KernelError> {
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(object())?;
        let program = xdp_program(&mut ebpf)?;
        program.load().map_err(|source| KernelError::Program {
            program: PORT_COUNTER_PROGRAM,
            source,
        })?;
        Ok(Self {
            ebpf,
            interfaces: Vec::new(),
        })
    }

    /// Attaches the program to `interface` (in the calling thread's network
    /// namespace).
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), KernelError> {
        let program = xdp_program(&mut self.ebpf)?;
        program
            .attach(interface, mode.into())
            .map_err(|source| KernelError::Attach {
                program: PORT_COUNTER_PROGRAM,
                interface: interface.to_owned(),
                mode,
                source,
            })?;
        self.interfaces.push((interface.to_owned(), mode));
        Ok(())
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[(String, AttachMode)] {
        &self.interfaces
    }

    /// Every port with a non-zero count, summed over CPUs. Reads all 65536
    /// slots: a few tens of milliseconds, so keep it off async workers.
    pub fn port_counters(&self) -> Result<Vec<PortTotals>, KernelError> {
        let array = self.per_cpu_array::<PortCounter>(PORT_COUNTERS_MAP)?;
        let mut totals = Vec::new();
        for (index, values) in array.iter().enumerate() {
            let values = values.map_err(map_error(PORT_COUNTERS_MAP))?;
            let Ok(port) = u16::try_from(index) else {
                break;
            };
            let total = sum_port_counter(port, &values);
            if total.packets != 0 || total.bytes != 0 {
                totals.push(total);
            }
        }
        Ok(totals)
    }

    /// The totals for one port.
    pub fn port_counter(&self, port: u16) -> Result<PortTotals, KernelError> {
        let array = self.per_cpu_array::<PortCounter>(PORT_COUNTERS_MAP)?;
        let values = array
            .get(&u32::from(port), 0)
            .map_err(map_error(PORT_COUNTERS_MAP))?;
        Ok(sum_port_counter(port, &values))
    }

    /// Packets by pass reason, summed over CPUs, every reason included.
    pub fn pass_reasons(&self) -> Result<Vec<(PassReason, u64)>, KernelError> {
        let array = self.per_cpu_array::<u64>(PASS_REASONS_MAP)?;
        PassReason::ALL
            .iter()
            .map(|&reason| {
                let values = array
                    .get(&(reason as u32), 0)
                    .map_err(map_error(PASS_REASONS_MAP))?;
                Ok((
                    reason,
                    values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)),
                ))
            })
            .collect()
    }

    /// The per-CPU array `name` of the loaded object.
    fn per_cpu_array<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&aya::maps::MapData, V>, KernelError> {
        let map = self.ebpf.map(name).ok_or(KernelError::MissingMap(name))?;
        PerCpuArray::try_from(map).map_err(map_error(name))
    }
}

/// Wraps a map error with the map's name.
fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map { map, source }
}

/// One port's counters summed over CPUs.
fn sum_port_counter(port: u16, values: &[PortCounter]) -> PortTotals {
    let (packets, bytes) = values.iter().fold((0u64, 0u64), |(p, b), v| {
        (p.wrapping_add(v.packets), b.wrapping_add(v.bytes))
    });
    PortTotals {
        port,
        packets,
        bytes,
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, KernelError> {
    ebpf.program_mut(PORT_COUNTER_PROGRAM)
        .ok_or(KernelError::MissingProgram(PORT_COUNTER_PROGRAM))?
        .try_into()
        .map_err(|source| KernelError::Program {
            program: PORT_COUNTER_PROGRAM,
            source,
        })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; newer ones use the
/// memory cgroup and ignore it. Raising it is harmless either way.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; failure is reported by
    // the return value, which we ignore (loading reports the real error).
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
}
