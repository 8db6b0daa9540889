//! The whole table, dumped (`IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`, what `conntrack -L` sends),
//! read without the typed parser: a 262,144-entry table is ~60 MB of messages per dump, and
//! netlink-packet-netfilter allocates a vector per nested attribute, which cost ~5 us an entry
//! (`cargo xtask bench`, "top on a filled table"). Here each message is read in place for
//! the five attributes `top` needs, and nothing is allocated per entry.
//!
//! Attribute numbers: `enum ctattr_type`, `ctattr_tuple`, `ctattr_ip`, `ctattr_l4proto`,
//! `ctattr_protoinfo`, `ctattr_protoinfo_tcp` (include/uapi/linux/netfilter/nfnetlink_conntrack.h).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};

use super::{socket::Socket, Entry, Tuple};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = 1 << 8 | 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: how dumped entries come.
const CT_NEW: u16 = 1 << 8;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_ID: u16 = 12;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

/// The attributes of `b` as (type without flags, value).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = b.get(4..len)?;
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?))
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn addr(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?).into()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?).into()),
        _ => None,
    }
}

fn tuple(v: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, 0, 0, 0);
    for (k, v) in attrs(v) {
        match k {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(v) {
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = addr(v),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = addr(v),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(v) {
                    match k {
                        CTA_PROTO_NUM => proto = *v.first()?,
                        CTA_PROTO_SRC_PORT => sport = be16(v)?,
                        CTA_PROTO_DST_PORT => dport = be16(v)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        sport,
        dst: dst?,
        dport,
        proto,
    })
}

/// One dumped entry's message payload (after the netlink header): its id and the entry.
pub(super) fn entry_of(payload: &[u8]) -> Option<(u32, Entry)> {
    // The 4-byte `struct nfgenmsg` first.
    let (mut orig, mut reply, mut status, mut tcp_state, mut id) = (None, None, 0, None, 0);
    for (k, v) in attrs(payload.get(4..)?) {
        match k {
            CTA_TUPLE_ORIG => orig = tuple(v),
            CTA_TUPLE_REPLY => reply = tuple(v),
            CTA_STATUS => status = be32(v)?,
            CTA_ID => id = be32(v)?,
            CTA_PROTOINFO => {
                for (k, v) in attrs(v) {
                    if k == CTA_PROTOINFO_TCP {
                        tcp_state = attrs(v)
                            .find(|(k, _)| *k == CTA_PROTOINFO_TCP_STATE)
                            .and_then(|(_, v)| v.first().copied());
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        id,
        Entry {
            orig: orig?,
            reply: reply?,
            status,
            tcp_state,
        },
    ))
}

/// Dumps the table through `sock`, both families, giving each entry to `f`; returns how many.
pub(super) fn dump(sock: &Socket, mut f: impl FnMut(u32, Entry)) -> io::Result<u64> {
    let seq = super::socket::next_seq();
    // nlmsghdr (16 bytes) + nfgenmsg (AF_UNSPEC: both families; version 0; res_id 0).
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&CT_GET.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]);
    sock.send(&req)?;
    let mut buf = vec![0u8; 1 << 17];
    let mut n = 0;
    loop {
        for frame in super::socket::frames(sock.recv(&mut buf, 0)?) {
            let kind = u16::from_ne_bytes([frame[4], frame[5]]);
            let this = u32::from_ne_bytes([frame[8], frame[9], frame[10], frame[11]]);
            if this != seq {
                continue;
            }
            match kind {
                NLMSG_DONE => return Ok(n),
                NLMSG_ERROR => {
                    let code = frame
                        .get(16..20)
                        .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(n);
                }
                CT_NEW => {
                    if let Some((id, e)) = entry_of(frame.get(16..).unwrap_or(&[])) {
                        n += 1;
                        f(id, e);
                    }
                }
                _ => {}
            }
        }
    }
}
