//! Decoding ring-buffer records into typed events. A record that is too short, from another
//! build (version), or of an unknown kind is an error, never a panic or garbage.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use conntrack_common::{Drop, Header, Kind, Packet, Reason, Reset, Verdict, WIRE_VERSION};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record has wire version {0}, this ct-trace speaks {WIRE_VERSION}")]
    Version(u8),
    #[error("record has unknown kind {0}")]
    Kind(u8),
    #[error("{kind:?} record of {len} bytes, expected {want}")]
    Truncated { kind: Kind, len: usize, want: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Reset(Kind, Reset),
    Invalid(Verdict),
    Drop(Drop),
    Reason(Box<Reason>),
}

fn read<T: Copy>(b: &[u8], kind: Kind) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if b.len() < want {
        return Err(DecodeError::Truncated {
            kind,
            len: b.len(),
            want,
        });
    }
    // SAFETY: length checked; T is a repr(C) type of integers and byte arrays (any bit pattern
    // is valid), read unaligned because ring buffer records are only 8-byte aligned.
    Ok(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
}

pub fn decode(b: &[u8]) -> Result<Event, DecodeError> {
    if b.len() < std::mem::size_of::<Header>() {
        return Err(DecodeError::Short(b.len()));
    }
    let (version, kind) = (b[0], b[1]);
    if version != WIRE_VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = Kind::try_from(kind).map_err(DecodeError::Kind)?;
    Ok(match kind {
        Kind::RstSent | Kind::RstReceived => Event::Reset(kind, read(b, kind)?),
        Kind::Invalid => Event::Invalid(read(b, kind)?),
        Kind::Drop => Event::Drop(read(b, kind)?),
        Kind::Reason => Event::Reason(Box::new(read(b, kind)?)),
    })
}

/// Addresses of a packet in their usual text forms.
pub fn addrs(p: &Packet) -> (IpAddr, IpAddr) {
    let v = |a: &[u8; 16]| -> IpAddr {
        if p.family == 6 {
            Ipv6Addr::from(*a).into()
        } else {
            Ipv4Addr::new(a[0], a[1], a[2], a[3]).into()
        }
    };
    (v(&p.saddr), v(&p.daddr))
}

/// TCP flags in tcpdump's order, e.g. `SYN|ACK`.
pub fn tcp_flags(f: u8) -> String {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let v: Vec<&str> = NAMES
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) value with explicit padding.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    fn reset() -> Reset {
        let mut r = Reset::default();
        r.header.version = WIRE_VERSION;
        r.header.kind = Kind::RstSent as u8;
        r.packet.family = 4;
        r.packet.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        r.packet.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        r.packet.sport = 80;
        r.packet.seq = 7;
        r
    }

    #[test]
    fn decodes_a_reset() {
        let r = reset();
        assert_eq!(decode(&bytes(&r)), Ok(Event::Reset(Kind::RstSent, r)));
        let (s, d) = addrs(&r.packet);
        assert_eq!(
            (s.to_string(), d.to_string()),
            ("10.0.0.1".into(), "10.0.0.2".into())
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut b = bytes(&reset());
        b[0] = 99;
        assert_eq!(decode(&b), Err(DecodeError::Version(99)));
        b[0] = WIRE_VERSION;
        b[1] = 200;
        assert_eq!(decode(&b), Err(DecodeError::Kind(200)));
        b[1] = Kind::Invalid as u8;
        assert!(matches!(
            decode(&b[..40]),
            Err(DecodeError::Truncated { .. })
        ));
        for n in 0..b.len() {
            let _ = decode(&b[..n]);
        }
    }

    #[test]
    fn flags_read_like_tcpdump() {
        assert_eq!(tcp_flags(0x12), "SYN|ACK");
        assert_eq!(tcp_flags(0x14), "RST|ACK");
        assert_eq!(tcp_flags(0), "none");
    }

    #[test]
    fn ipv6_addresses_print_in_their_usual_form() {
        let mut p = Packet {
            family: 6,
            ..Default::default()
        };
        p.saddr[15] = 1;
        p.daddr[..2].copy_from_slice(&[0xfd, 0x00]);
        let (s, d) = addrs(&p);
        assert_eq!(
            (s.to_string(), d.to_string()),
            ("::1".into(), "fd00::".into())
        );
    }
}
