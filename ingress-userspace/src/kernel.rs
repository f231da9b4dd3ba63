//! Kernel stage: loading the eBPF object, attaching its programs and reading
//! their counters.
//!
//! For now the object holds one program, `xdp_port_counter`, which counts
//! packets by destination port and passes every packet. Dropping a
//! [`PortCounterProgram`] detaches it from every interface.

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
    /// Reading a map failed.
    #[error("reading map {map}")]
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
        let map_error = |source| KernelError::Map {
            map: PORT_COUNTERS_MAP,
            source,
        };
        let map = self
            .ebpf
            .map(PORT_COUNTERS_MAP)
            .ok_or(KernelError::MissingMap(PORT_COUNTERS_MAP))?;
        let array = PerCpuArray::<_, PortCounter>::try_from(map).map_err(map_error)?;
        let mut totals = Vec::new();
        for (index, values) in array.iter().enumerate() {
            let values = values.map_err(map_error)?;
            let (packets, bytes) = values.iter().fold((0u64, 0u64), |(p, b), v| {
                (p.wrapping_add(v.packets), b.wrapping_add(v.bytes))
            });
            if packets != 0 || bytes != 0 {
                let Ok(port) = u16::try_from(index) else {
                    break;
                };
                totals.push(PortTotals {
                    port,
                    packets,
                    bytes,
                });
            }
        }
        Ok(totals)
    }

    /// The totals for one port.
    pub fn port_counter(&self, port: u16) -> Result<PortTotals, KernelError> {
        let map_error = |source| KernelError::Map {
            map: PORT_COUNTERS_MAP,
            source,
        };
        let map = self
            .ebpf
            .map(PORT_COUNTERS_MAP)
            .ok_or(KernelError::MissingMap(PORT_COUNTERS_MAP))?;
        let array = PerCpuArray::<_, PortCounter>::try_from(map).map_err(map_error)?;
        let values = array.get(&u32::from(port), 0).map_err(map_error)?;
        let (packets, bytes) = values.iter().fold((0u64, 0u64), |(p, b), v| {
            (p.wrapping_add(v.packets), b.wrapping_add(v.bytes))
        });
        Ok(PortTotals {
            port,
            packets,
            bytes,
        })
    }

    /// Packets by pass reason, summed over CPUs, every reason included.
    pub fn pass_reasons(&self) -> Result<Vec<(PassReason, u64)>, KernelError> {
        let map_error = |source| KernelError::Map {
            map: PASS_REASONS_MAP,
            source,
        };
        let map = self
            .ebpf
            .map(PASS_REASONS_MAP)
            .ok_or(KernelError::MissingMap(PASS_REASONS_MAP))?;
        let array = PerCpuArray::<_, u64>::try_from(map).map_err(map_error)?;
        PassReason::ALL
            .iter()
            .map(|&reason| {
                let values = array.get(&(reason as u32), 0).map_err(map_error)?;
                Ok((
                    reason,
                    values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)),
                ))
            })
            .collect()
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
