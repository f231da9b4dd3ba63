//! Kernel stage, parsing: bounds-checked header access for packet programs.
//!
//! XDP reads go through [`ptr_at`], which proves to the verifier that
//! `start + offset + size_of::<T>() <= end` before the pointer is formed.
//! [`tcp4`] parses through the [`Hook`] of the program (copies through
//! `bpf_skb_load_bytes` in TC, `ptr_at` in XDP).

use core::mem;

use ingress_common::lb::Reason;

use crate::hook::Hook;

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
#[derive(Clone, Copy)]
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

/// Offset of the IPv4 header checksum from the start of the frame.
pub const IP_CSUM_OFF: u32 = (ETH_HLEN + 10) as u32;
/// Offset of the IPv4 source address; the destination follows it.
pub const IP_ADDRS_OFF: u32 = (ETH_HLEN + 12) as u32;
/// Offset of the checksum inside the TCP header.
pub const TCP_CSUM_OFF: u32 = 16;

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The fixed 20 bytes of a TCP header, as on the wire.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub source_be: u16,
    pub dest_be: u16,
    pub seq_be: u32,
    pub ack_seq_be: u32,
    /// Data offset in the high nibble.
    pub doff_res: u8,
    pub flags: u8,
    pub window_be: u16,
    pub check_be: u16,
    pub urg_ptr_be: u16,
}

/// What the forwarding path needs from an IPv4 TCP packet that passed every check.
pub struct Tcp4 {
    /// Offset of the TCP header from the start of the frame (honours IHL).
    pub l4_off: u32,
    /// IPv4 total length (host order).
    pub tot_len: u16,
    pub saddr_be: u32,
    pub daddr_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flag byte.
    pub flags: u8,
}

impl Tcp4 {
    /// SYN without ACK, RST or FIN: the only packet that may open a flow.
    #[inline(always)]
    pub fn is_pure_syn(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
    }
}

/// Parses Ethernet, IPv4 and TCP headers of a frame, or says why the packet
/// is not a candidate for forwarding.
///
/// Reads are copies ([`Hook::load`]): in TC through `bpf_skb_load_bytes`,
/// which also works when the headers are not in the linear part of the skb
/// and bounds-checks against the real packet length; in XDP from a pointer
/// checked against `data_end`. No pointer to the packet survives this
/// function, so later packet-changing helpers cannot invalidate anything.
///
/// Checks, in order: Ethernet header present and EtherType IPv4; the fixed
/// IPv4 header present, version 4, IHL >= 5, total length covering the IP
/// header and not running past the frame (trailing Ethernet padding is
/// allowed); protocol TCP; not a fragment (MF set or a non-zero offset: a
/// first fragment has the ports but the rest of the flow would reach the
/// stack, so none is forwarded); the total length covering a TCP header,
/// which is present with a data offset >= 5 that stays within the IP total
/// length.
///
/// A GSO packet built by IPv4 BIG TCP (> 64 KiB, total length 0) is passed
/// as malformed; BIG TCP for IPv4 is off unless `gro_ipv4_max_size` is raised.
#[inline(always)]
pub fn tcp4<C: Hook>(ctx: &C) -> Result<Tcp4, Reason> {
    let ethertype: u16 = ctx.load(12).ok_or(Reason::PassMalformed)?;
    if ethertype != ETH_P_IP_BE {
        return Err(Reason::PassNotIpv4);
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN).ok_or(Reason::PassMalformed)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(Reason::PassMalformed);
    }
    let ihl = u32::from(ip.version_ihl & 0x0f) * 4;
    let tot_len = u32::from(u16::from_be(ip.tot_len_be));
    if ihl < 20 || tot_len < ihl || ETH_HLEN as u32 + tot_len > ctx.frame_len() {
        return Err(Reason::PassMalformed);
    }
    if ip.protocol != IPPROTO_TCP {
        return Err(Reason::PassNotTcp);
    }
    // More-fragments flag (0x2000) or a fragment offset (low 13 bits).
    if u16::from_be(ip.frag_off_be) & 0x3fff != 0 {
        return Err(Reason::PassFragment);
    }
    if tot_len < ihl + 20 {
        return Err(Reason::PassMalformed);
    }
    let l4_off = ETH_HLEN as u32 + ihl;
    let tcp: TcpHdr = ctx.load(l4_off as usize).ok_or(Reason::PassMalformed)?;
    let doff = u32::from(tcp.doff_res >> 4) * 4;
    if doff < 20 || ihl + doff > tot_len {
        return Err(Reason::PassMalformed);
    }
    Ok(Tcp4 {
        l4_off,
        tot_len: tot_len as u16,
        saddr_be: ip.saddr_be,
        daddr_be: ip.daddr_be,
        sport_be: tcp.source_be,
        dport_be: tcp.dest_be,
        flags: tcp.flags,
    })
}
