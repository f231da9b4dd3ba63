//! Kernel stage, the hook seam: what the forwarding logic in `forward` needs
//! from the program it runs in. `tc_ingress` (`TcContext`) and `xdp_ingress`
//! (`XdpContext`) implement [`Hook`]; everything else (parsing, conntrack,
//! frontend and Maglev lookups, SNAT port allocation, FIB lookup, counters)
//! is shared, monomorphised into each program.
//!
//! What differs between the hooks:
//!
//! | | TC (tcx) | XDP (native) |
//! |---|---|---|
//! | reads | `bpf_skb_load_bytes` (non-linear skbs too) | direct packet access |
//! | checksums | `l3/l4_csum_replace` (keep `CHECKSUM_PARTIAL` right) | RFC 1624 arithmetic on the headers |
//! | unresolved next hop | `bpf_redirect_neigh` | not possible: pass up (`PassNoNeigh`) |
//! | redirect verdict | `TC_ACT_REDIRECT` | `XDP_REDIRECT` |

use aya_ebpf::EbpfContext;
use ingress_common::lb::Reason;

use crate::fib::Route;
use crate::nat::Tuple;
use crate::parse::Tcp4;

/// A program context the forwarding logic can run in.
pub trait Hook: EbpfContext {
    /// Whether [`Hook::redirect`] can send a packet whose next hop has no
    /// resolved MAC address yet (TC: `bpf_redirect_neigh`). When not, the
    /// forwarding logic passes such packets up before changing anything.
    const RESOLVES_NEIGHBOURS: bool;

    /// Length of the frame (Ethernet header included).
    fn frame_len(&self) -> u32;

    /// Index of the interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;

    /// A copy of the `T` at `offset` bytes into the frame, `None` past its end.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;

    /// `tot_len` to give `bpf_fib_lookup` for a packet whose IPv4 total
    /// length is `ip_tot_len`; 0 skips the kernel's MTU check.
    fn fib_tot_len(&self, ip_tot_len: u16) -> u16;

    /// Rewrites addresses and ports to `to`, checksums updated incrementally.
    fn rewrite(&self, pkt: &Tcp4, to: &Tuple) -> Result<(), Reason>;

    /// Sends the rewritten packet out of `route`'s interface; the program's
    /// return value on success.
    fn redirect(&self, route: &Route) -> Result<u32, Reason>;
}
