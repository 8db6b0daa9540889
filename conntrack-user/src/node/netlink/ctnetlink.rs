//! The ctnetlink conversation: an entry looked up by tuple, and the tuples and entries of
//! ctnetlink messages in this crate's types.

use std::{io, net::IpAddr, time::Duration};

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_netfilter::{
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, Tuple as CtTuple,
    },
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use super::{socket::Socket, Direction, Entry, Tuple};

pub(super) fn to_ct_tuple(t: &Tuple) -> Vec<CtTuple> {
    let (src, dst) = match (t.src, t.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (t.src, t.dst),
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(x) => IpAddr::V6(x.to_ipv6_mapped()),
                v6 => v6,
            };
            (v6(s), v6(d))
        }
    };
    vec![
        CtTuple::Ip(vec![
            IPTuple::SourceAddress(src),
            IPTuple::DestinationAddress(dst),
        ]),
        CtTuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(t.proto)),
            ProtoTuple::SourcePort(t.sport),
            ProtoTuple::DestinationPort(t.dport),
        ]),
    ]
}

pub(super) fn from_ct_tuple(nlas: &[CtTuple]) -> Option<Tuple> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, 0, 0, 0);
    for nla in nlas {
        match nla {
            CtTuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            CtTuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(p) => proto = u8::from(*p),
                        ProtoTuple::SourcePort(p) => sport = *p,
                        ProtoTuple::DestinationPort(p) => dport = *p,
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

/// The attributes of a ctnetlink message carrying an entry (NEW/GET answer, DELETE event).
pub(super) fn ct_attrs(m: &NetfilterMessage) -> Option<&[ConntrackAttribute]> {
    match &m.inner {
        NetfilterMessageInner::Conntrack(
            ConntrackMessage::New(a) | ConntrackMessage::Get(a) | ConntrackMessage::Delete(a),
        ) => Some(a),
        _ => None,
    }
}

pub(super) fn entry(attrs: &[ConntrackAttribute]) -> Option<Entry> {
    let (mut orig, mut reply, mut status, mut tcp_state) = (None, None, 0, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = from_ct_tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = from_ct_tuple(t),
            ConntrackAttribute::CtaStatus(s) => status = s.bits(),
            ConntrackAttribute::CtaProtoInfo(info) => {
                for i in info {
                    if let ProtoInfo::TCP(tcp) = i {
                        for t in tcp {
                            if let ProtoInfoTCP::State(s) = t {
                                tcp_state = Some(*s);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(Entry {
        orig: orig?,
        reply: reply?,
        status,
        tcp_state,
    })
}

/// A ctnetlink client in the current network namespace.
pub struct Conntrack {
    pub(super) sock: Socket,
}

impl Conntrack {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            sock: Socket::open(Duration::from_secs(1))?,
        })
    }

    /// The entry a packet with tuple `t` belongs to, and the direction it travelled in;
    /// `Ok(None)` when conntrack has no such entry (ENOENT).
    ///
    /// One GET: the kernel finds the entry by either of its tuples, whichever attribute
    /// (`CTA_TUPLE_REPLY` here) carries it (`ctnetlink_get_conntrack()` hashes the tuple and
    /// ignores the direction), so the direction is read from the entry: `t` is its reply tuple
    /// or its original one.
    pub fn lookup(&self, t: &Tuple) -> io::Result<Option<(Entry, Direction)>> {
        let family = if t.src.is_ipv4() && t.dst.is_ipv4() {
            NetfilterProtoFamily::IPv4
        } else {
            NetfilterProtoFamily::IPv6
        };
        let get = NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleReply(to_ct_tuple(t))]),
        );
        let s = self.sock.request(get, NLM_F_ACK)?;
        let mut found = None;
        match self.sock.answer(s, |m| {
            if found.is_none() {
                found = ct_attrs(&m).and_then(entry);
            }
        }) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(found.map(|e| {
            let dir = if e.orig == *t && e.reply != *t {
                Direction::Original
            } else {
                Direction::Reply
            };
            (e, dir)
        }))
    }

    /// Every entry of the namespace's table, both families (what `conntrack -L` lists), each
    /// given to `f` with its id (`CTA_ID`, unique while the entry lives) as it arrives: nothing
    /// is kept, so a table of any size costs one receive buffer (see `dump`). Returns how many
    /// entries were given.
    pub fn dump(&self, f: impl FnMut(u32, Entry)) -> io::Result<u64> {
        super::dump::dump(&self.sock, f)
    }

    /// Deletes the entry whose original tuple is `t` (`IPCTNL_MSG_CT_DELETE`, what
    /// `conntrack -D` sends) and waits for the kernel's ACK.
    pub fn delete(&self, t: &Tuple) -> io::Result<()> {
        let family = if t.src.is_ipv4() && t.dst.is_ipv4() {
            NetfilterProtoFamily::IPv4
        } else {
            NetfilterProtoFamily::IPv6
        };
        let del = NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(to_ct_tuple(t))]),
        );
        let s = self.sock.request(del, NLM_F_ACK)?;
        self.sock.answer(s, |_| {})
    }
}
