//! Bounds-checked header access for packet programs.
//!
//! Every read goes through [`ptr_at`], which proves to the verifier that
//! `start + offset + size_of::<T>() <= end` before the pointer is formed.

use core::mem;

/// Ethernet header length (no VLAN tags).
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4, in network byte order as read from the wire.
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// A pointer to a `T` at `offset` bytes into the packet `[start, end)`, or
/// `None` when it would run past the end.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*const T> {
    let len = mem::size_of::<T>();
    if start + offset + len > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The fixed part of an IPv4 header, as on the wire.
#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len_be: u16,
    pub id_be: u16,
    pub frag_off_be: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check_be: u16,
    pub saddr_be: u32,
    pub daddr_be: u32,
}

/// Source and destination ports, the first four bytes of both TCP and UDP.
#[repr(C)]
pub struct L4Ports {
    pub source_be: u16,
    pub dest_be: u16,
}
