//! One TCP segment forged from the server's side of a live connection, the way a misbehaving
//! backend (or the write-ups' "boom-server") would send it: the connection's exact sequence
//! numbers are read from the server socket with `TCP_REPAIR`, the IPv4 and TCP headers are
//! built by ct-trace's one packet builder (`output::packet`, which `--pcap` uses too), and the
//! packet leaves through an `IPPROTO_RAW` socket (`IP_HDRINCL` implied) opened in the server's
//! namespace.

use std::{
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `TCP_REPAIR`, `TCP_REPAIR_QUEUE`, `TCP_QUEUE_SEQ` (include/uapi/linux/tcp.h).
const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
/// Leaves repair mode without sending a window probe (`TCP_REPAIR_OFF_NO_WP`).
const TCP_REPAIR_OFF_NO_WP: i32 = -1;

use crate::output::packet::Spec;
pub use conntrack_common::tcp_flags::{ACK, PSH, RST};

/// The sequence numbers of one side of a connection, as its socket knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqState {
    /// The next sequence number this side sends (`write_seq`).
    pub snd_next: u32,
    /// The next sequence number this side expects from its peer (`rcv_nxt`).
    pub rcv_next: u32,
}

/// Reads `snd_next`/`rcv_next` of an established socket. Repair mode only lets the numbers be
/// read; it is left without a window probe, so the connection sees no packet from this.
pub fn read_seq(sock: &impl AsRawFd) -> io::Result<SeqState> {
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, TCP_REPAIR, 1)?;
    let read = || -> io::Result<SeqState> {
        setsockopt_int(fd, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
        let snd_next = getsockopt_u32(fd, TCP_QUEUE_SEQ)?;
        setsockopt_int(fd, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        let rcv_next = getsockopt_u32(fd, TCP_QUEUE_SEQ)?;
        Ok(SeqState { snd_next, rcv_next })
    };
    let got = read();
    let off = setsockopt_int(fd, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    let got = got?;
    off?;
    Ok(got)
}

fn setsockopt_int(fd: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a live fd and a pointer to an int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_u32(fd: i32, name: i32) -> io::Result<u32> {
    let mut v: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: a live fd, an out pointer and its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            name,
            (&mut v as *mut u32).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// A TCP segment to forge, in host byte order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub payload: Vec<u8>,
}

impl Segment {
    /// The whole IPv4 packet: a 20-byte IP header (DF, TTL 64), a 20-byte TCP header, the
    /// payload; both checksums filled in (by the one packet builder, `output::packet`).
    pub fn packet(&self) -> Vec<u8> {
        Spec {
            src: (*self.src.ip()).into(),
            dst: (*self.dst.ip()).into(),
            proto: libc::IPPROTO_TCP as u8,
            ports: Some((self.src.port(), self.dst.port())),
            seq: self.seq,
            ack: self.ack,
            flags: self.flags,
            window: self.window,
            ip_id: 0x4c41,
            dont_fragment: true,
            payload: &self.payload,
        }
        .build()
    }

    /// The flags as ct-trace prints them (`ACK`, `PSH|ACK`, `RST`, ...).
    pub fn flag_names(&self) -> String {
        crate::event::TcpFlags(self.flags).to_string()
    }
}

/// A raw IPv4 socket (`IPPROTO_RAW`: the caller writes the IP header) in the calling thread's
/// network namespace.
pub struct RawSocket(OwnedFd);

impl RawSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd this function owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn send(&self, seg: &Segment) -> io::Result<()> {
        let pkt = seg.packet();
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(seg.dst.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a live fd, the packet buffer and a sockaddr_in of the length given.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use conntrack_common::tcp_flags::{RST, SYN};

    use super::*;
    use crate::output::packet::checksum;

    /// The TCP checksum: over the IPv4 pseudo-header (addresses, protocol, TCP length) and the
    /// segment (its checksum field zero when building, as is when verifying).
    fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&src.octets());
        pseudo[4..8].copy_from_slice(&dst.octets());
        pseudo[9] = libc::IPPROTO_TCP as u8;
        pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
        checksum(&[&pseudo, segment])
    }

    fn seg(payload: &[u8]) -> Segment {
        Segment {
            src: "10.78.2.2:8080".parse().unwrap(),
            dst: "10.78.1.2:41234".parse().unwrap(),
            seq: 0x8000_0001,
            ack: 0x1234_5678,
            flags: ACK,
            window: 502,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn ip_checksum_of_a_known_header() {
        // RFC 1071's worked example style header (192.168.0.1 -> 192.168.0.199, UDP).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&[&h]), 0xb861);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(checksum(&[&[0x01]]), checksum(&[&[0x01, 0x00]]));
        assert_eq!(checksum(&[&[0xff, 0xff]]), 0);
    }

    #[test]
    fn built_packets_verify() {
        for payload in [&b""[..], b"x", b"0123456789"] {
            let s = seg(payload);
            let p = s.packet();
            assert_eq!(p.len(), 40 + payload.len());
            assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
            // A header with its checksum sums to zero.
            assert_eq!(checksum(&[&p[..20]]), 0, "ip header");
            assert_eq!(
                tcp_checksum(*s.src.ip(), *s.dst.ip(), &p[20..]),
                0,
                "tcp segment of {} bytes",
                payload.len()
            );
            assert_eq!(&p[20..22], &8080u16.to_be_bytes());
            assert_eq!(&p[22..24], &41234u16.to_be_bytes());
            assert_eq!(&p[24..28], &0x8000_0001u32.to_be_bytes());
            assert_eq!(p[33], ACK);
        }
    }

    #[test]
    fn tcp_checksum_matches_a_hand_computed_one() {
        // 10.0.0.1:1 -> 10.0.0.2:2, seq 0, ack 0, SYN, window 0, no payload. Sum of the
        // pseudo-header and header words: 0x0a00+0x0001+0x0a00+0x0002+0x0006+0x0014 (pseudo)
        // + 0x0001+0x0002+0x5002 (ports, offset|flags) = 0x6422; checksum = !0x6422.
        let s = Segment {
            src: "10.0.0.1:1".parse().unwrap(),
            dst: "10.0.0.2:2".parse().unwrap(),
            seq: 0,
            ack: 0,
            flags: SYN,
            window: 0,
            payload: vec![],
        };
        let p = s.packet();
        assert_eq!(u16::from_be_bytes([p[36], p[37]]), !0x6422u16);
    }

    #[test]
    fn flags_are_named_like_ct_trace_names_them() {
        let mut s = seg(b"");
        assert_eq!(s.flag_names(), "ACK");
        s.flags = PSH | ACK;
        assert_eq!(s.flag_names(), "PSH|ACK");
        s.flags = RST;
        assert_eq!(s.flag_names(), "RST");
    }
}
