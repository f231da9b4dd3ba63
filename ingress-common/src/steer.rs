//! NodePort steering of L7 ports with `sk_lookup`.
//!
//! For an HTTP(S) server, a connection to `<node address>:<nodePort>` must
//! reach the daemon's listener on the server's targetPort. The `sk_lookup`
//! program runs when the kernel looks up the socket for a new connection:
//! if the local port is a steered nodePort, it hands the connection to the
//! listening socket in `STEER_SOCKETS`. No packet is rewritten, so there is
//! no NAT state, the daemon sees the client's real address, and replies
//! leave from the nodePort as the client expects.

/// Hash map `local port (u32, host order) -> slot (u32)` of `STEER_SOCKETS`.
pub const STEER_PORTS_MAP: &str = "STEER_PORTS";
/// Sock map `slot -> listening socket`, filled by the daemon.
pub const STEER_SOCKETS_MAP: &str = "STEER_SOCKETS";
/// Steered ports (and socket slots) at most.
pub const STEER_CAPACITY: u32 = 1024;

/// Per-CPU array indexed by [`SteerReason`].
pub const STEER_STATS_MAP: &str = "STEER_STATS";
pub const STEER_STATS_CAPACITY: u32 = 4;

/// Name of the `sk_lookup` program (attached to the daemon's network namespace).
pub const SK_LOOKUP_PROGRAM: &str = "sk_lookup_steer";

/// What the `sk_lookup` program did with a lookup for a steered port.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerReason {
    /// Assigned to the listener socket.
    Steered = 0,
    /// The port is steered but no socket is in its slot (daemon restarting):
    /// the normal lookup continues (and finds nothing: connection refused).
    NoSocket = 1,
    /// `bpf_sk_assign` failed.
    AssignFailed = 2,
}

impl SteerReason {
    pub const ALL: [SteerReason; 3] = [
        SteerReason::Steered,
        SteerReason::NoSocket,
        SteerReason::AssignFailed,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            SteerReason::Steered => "steered",
            SteerReason::NoSocket => "no_socket",
            SteerReason::AssignFailed => "assign_failed",
        }
    }
}
