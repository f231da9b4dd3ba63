//! Packet fixtures for the kernel datapath tests: builders for Ethernet
//! frames (IPv4 TCP with options and fragments, UDP, ICMP, ARP, IPv6) and an
//! independent checksum computation (RFC 791 / RFC 793, computed from
//! scratch over the whole header or segment, never incrementally) to check
//! what the kernel program wrote.

use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// An IPv4 TCP segment in an Ethernet frame, every field settable so tests
/// can build hostile variants. [`Tcp::frame`] computes correct checksums.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub saddr: Ipv4Addr,
    pub daddr: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub ttl: u8,
    pub id: u16,
    /// Flags and fragment offset, as in the header (host order).
    pub frag_off: u16,
    /// IPv4 options; padded with zeroes (end of options) to 4 bytes.
    pub ip_options: Vec<u8>,
    /// TCP options; padded with zeroes to 4 bytes.
    pub tcp_options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Tcp {
    pub fn new(
        src_mac: Mac,
        dst_mac: Mac,
        (saddr, sport): (Ipv4Addr, u16),
        (daddr, dport): (Ipv4Addr, u16),
        flags: u8,
    ) -> Self {
        Tcp {
            dst_mac,
            src_mac,
            saddr,
            daddr,
            sport,
            dport,
            flags,
            seq: 0x1000_0000,
            ack: if flags & ACK != 0 { 0x2000_0000 } else { 0 },
            ttl: 64,
            id: 0x4242,
            // Don't fragment, as Linux sends TCP.
            frag_off: 0x4000,
            ip_options: Vec::new(),
            // MSS 1460, like a real SYN.
            tcp_options: if flags & SYN != 0 {
                vec![2, 4, 0x05, 0xb4]
            } else {
                Vec::new()
            },
            payload: Vec::new(),
        }
    }

    /// The frame, with both checksums computed from scratch.
    pub fn frame(&self) -> Vec<u8> {
        let ip_options = pad4(&self.ip_options);
        let tcp_options = pad4(&self.tcp_options);
        let ihl = 20 + ip_options.len();
        let doff = 20 + tcp_options.len();
        let tot_len = ihl + doff + self.payload.len();

        let mut tcp = Vec::with_capacity(doff + self.payload.len());
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push(((doff / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64_240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0]); // checksum
        tcp.extend_from_slice(&[0, 0]); // urgent pointer
        tcp.extend_from_slice(&tcp_options);
        tcp.extend_from_slice(&self.payload);
        let check = tcp_checksum(self.saddr, self.daddr, &tcp);
        tcp[16..18].copy_from_slice(&check.to_be_bytes());

        let mut ip = ipv4_header(
            ihl,
            tot_len,
            self.id,
            self.frag_off,
            self.ttl,
            6,
            (self.saddr, self.daddr),
            &ip_options,
        );
        ip.extend_from_slice(&tcp);
        ethernet(self.dst_mac, self.src_mac, ETHERTYPE_IPV4, &ip)
    }
}

fn pad4(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

pub fn ethernet(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An IPv4 header with a correct checksum.
#[expect(clippy::too_many_arguments, reason = "one argument per header field")]
pub fn ipv4_header(
    ihl: usize,
    tot_len: usize,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    (saddr, daddr): (Ipv4Addr, Ipv4Addr),
    options: &[u8],
) -> Vec<u8> {
    let mut ip = Vec::with_capacity(ihl);
    ip.push(0x40 | (ihl / 4) as u8);
    ip.push(0);
    ip.extend_from_slice(&(tot_len as u16).to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&frag_off.to_be_bytes());
    ip.push(ttl);
    ip.push(protocol);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&saddr.octets());
    ip.extend_from_slice(&daddr.octets());
    ip.extend_from_slice(options);
    let check = internet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    ip
}

/// UDP datagram in IPv4 in Ethernet (UDP checksum computed).
pub fn udp(src_mac: Mac, dst_mac: Mac, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let payload = b"hello";
    let mut udp = Vec::new();
    udp.extend_from_slice(&src.1.to_be_bytes());
    udp.extend_from_slice(&dst.1.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let check = l4_checksum(src.0, dst.0, 17, &udp);
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut ip = ipv4_header(20, 20 + udp.len(), 1, 0, 64, 17, (src.0, dst.0), &[]);
    ip.extend_from_slice(&udp);
    ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, &ip)
}

/// ICMP echo request in IPv4 in Ethernet.
pub fn icmp_echo(src_mac: Mac, dst_mac: Mac, saddr: Ipv4Addr, daddr: Ipv4Addr) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"ping");
    let check = internet_checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    let mut ip = ipv4_header(20, 20 + icmp.len(), 2, 0, 64, 1, (saddr, daddr), &[]);
    ip.extend_from_slice(&icmp);
    ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, &ip)
}

/// ARP request "who has `target`".
pub fn arp_request(src_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&src_mac);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    ethernet([0xff; 6], src_mac, ETHERTYPE_ARP, &arp)
}

/// An IPv6 TCP SYN to `dport` (checksum left zero: nothing may look at it).
pub fn ipv6_tcp_syn(src_mac: Mac, dst_mac: Mac, dport: u16) -> Vec<u8> {
    let mut ip6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    ip6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    ip6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = SYN;
    ip6.extend_from_slice(&tcp);
    ethernet(dst_mac, src_mac, ETHERTYPE_IPV6, &ip6)
}

/// The 16-bit one's complement of the one's complement sum of `parts`
/// (concatenated; an odd total length is padded with a zero byte).
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum over the IPv4 pseudo-header and `segment` (whose own
/// checksum field must be zero).
pub fn l4_checksum(saddr: Ipv4Addr, daddr: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&saddr.octets());
    pseudo.extend_from_slice(&daddr.octets());
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    internet_checksum(&[&pseudo, segment])
}

pub fn tcp_checksum(saddr: Ipv4Addr, daddr: Ipv4Addr, segment: &[u8]) -> u16 {
    l4_checksum(saddr, daddr, 6, segment)
}

/// Recomputes both checksums of an IPv4 TCP frame from scratch and compares
/// them with the ones in the frame.
pub fn verify_tcp_checksums(frame: &[u8]) -> Result<(), String> {
    let ip = frame.get(14..).ok_or("no IP header")?;
    let ihl = usize::from(ip.first().ok_or("no IP header")? & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let header = ip.get(..ihl).ok_or("IP header truncated")?;
    let mut zeroed = header.to_vec();
    zeroed[10..12].copy_from_slice(&[0, 0]);
    let ip_check = internet_checksum(&[&zeroed]);
    let found = u16::from_be_bytes([header[10], header[11]]);
    if ip_check != found {
        return Err(format!(
            "IP checksum {found:#06x}, recomputed {ip_check:#06x}"
        ));
    }
    let segment = ip.get(ihl..tot_len).ok_or("TCP segment truncated")?;
    let mut zeroed = segment.to_vec();
    zeroed[16..18].copy_from_slice(&[0, 0]);
    let saddr = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let daddr = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let tcp_check = tcp_checksum(saddr, daddr, &zeroed);
    let found = u16::from_be_bytes([segment[16], segment[17]]);
    if tcp_check != found {
        return Err(format!(
            "TCP checksum {found:#06x}, recomputed {tcp_check:#06x}"
        ));
    }
    Ok(())
}
