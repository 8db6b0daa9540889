//! The one builder of packets ct-trace writes: IPv4 or IPv6 and a TCP or UDP header with their
//! Internet checksums (RFC 1071), for `--pcap`'s reconstructed packets and the lab's forged
//! segments alike.

use std::net::{IpAddr, Ipv6Addr};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// TTL / hop limit of every packet built here.
pub const TTL: u8 = 64;

/// A packet's header fields, in host byte order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Source and destination ports; without them (or for another protocol than TCP and UDP)
    /// only the IP header is built.
    pub ports: Option<(u16, u16)>,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// IPv4 only.
    pub ip_id: u16,
    /// IPv4 only: the Don't Fragment bit.
    pub dont_fragment: bool,
    /// Transport payload, written after the transport header.
    pub payload: &'a [u8],
}

impl Spec<'_> {
    /// The packet's bytes: an IPv4 header when both addresses are IPv4, else an IPv6 header
    /// (IPv4 addresses mapped), then the transport header and the payload, checksums filled in.
    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::with_capacity(20 + self.payload.len());
        match (self.proto, self.ports) {
            (IPPROTO_TCP, Some((sp, dp))) => {
                l4.extend_from_slice(&sp.to_be_bytes());
                l4.extend_from_slice(&dp.to_be_bytes());
                l4.extend_from_slice(&self.seq.to_be_bytes());
                l4.extend_from_slice(&self.ack.to_be_bytes());
                // Data offset 5 words: no options.
                l4.push(5 << 4);
                l4.push(self.flags);
                l4.extend_from_slice(&self.window.to_be_bytes());
                // Checksum, urgent pointer.
                l4.extend_from_slice(&[0; 4]);
            }
            (IPPROTO_UDP, Some((sp, dp))) => {
                l4.extend_from_slice(&sp.to_be_bytes());
                l4.extend_from_slice(&dp.to_be_bytes());
                l4.extend_from_slice(&(8 + self.payload.len() as u16).to_be_bytes());
                l4.extend_from_slice(&[0; 2]);
            }
            // ICMP and the rest: no more than the IP header.
            _ => {}
        }
        if !l4.is_empty() {
            l4.extend_from_slice(self.payload);
        }
        let l4_len = l4.len() as u16;
        let mut pkt = Vec::with_capacity(40 + l4.len());
        let pseudo: Vec<u8> = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = [0u8; 20];
                h[0] = 0x45;
                h[2..4].copy_from_slice(&(20 + l4_len).to_be_bytes());
                h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
                if self.dont_fragment {
                    h[6] = 0x40;
                }
                h[8] = TTL;
                h[9] = self.proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = checksum(&[&h]);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                pkt.extend_from_slice(&h);
                [
                    &s.octets()[..],
                    &d.octets(),
                    &[0, self.proto],
                    &l4_len.to_be_bytes(),
                ]
                .concat()
            }
            (s, d) => {
                let (s, d) = (to_v6(s), to_v6(d));
                pkt.push(0x60);
                pkt.extend_from_slice(&[0; 3]);
                pkt.extend_from_slice(&l4_len.to_be_bytes());
                pkt.push(self.proto);
                pkt.push(TTL);
                pkt.extend_from_slice(&s.octets());
                pkt.extend_from_slice(&d.octets());
                [
                    &s.octets()[..],
                    &d.octets(),
                    &u32::from(l4_len).to_be_bytes(),
                    &[0, 0, 0, self.proto],
                ]
                .concat()
            }
        };
        if !l4.is_empty() {
            let at = if self.proto == IPPROTO_TCP { 16 } else { 6 };
            let mut c = checksum(&[&pseudo, &l4]);
            // UDP: a computed 0 is sent as all ones (0 means "no checksum").
            if self.proto == IPPROTO_UDP && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        pkt.extend_from_slice(&l4);
        pkt
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each of even length
/// except possibly the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_a_known_ipv4_header() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&h]), 0xb861);
    }

    #[test]
    fn checksums_verify_to_zero() {
        let spec = Spec {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: IPPROTO_TCP,
            ports: Some((80, 40000)),
            seq: 1,
            ack: 2,
            flags: 0x18,
            window: 512,
            ip_id: 7,
            dont_fragment: true,
            payload: b"abc",
        };
        let p = spec.build();
        assert_eq!(p.len(), 43);
        assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header");
        let pseudo = [&p[12..20], &[0, IPPROTO_TCP, 0, 23][..]].concat();
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0, "TCP");
    }
}
