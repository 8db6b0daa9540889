//! Two small nfnetlink conversations, in the caller's network namespace:
//! - ctnetlink `IPCTNL_MSG_CT_GET` by tuple: the conntrack entry a packet belongs to, whose
//!   original tuple names the Service address a client connected to before DNAT;
//! - nfnetlink_hook dump (5.14+, `NFNL_SUBSYS_HOOK`): which functions sit on a netfilter hook,
//!   i.e. whether conntrack is active at all in this namespace (its hooks are registered only
//!   when a rule or NAT needs them; without them every packet looks untracked).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const NETLINK_NETFILTER: i32 = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFNL_SUBSYS_HOOK: u16 = 15;
const NFNL_MSG_HOOK_GET: u16 = 0;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
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
const CTA_TIMESTAMP: u16 = 20;
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_TIMESTAMP_STOP: u16 = 2;
/// `NFNLGRP_CONNTRACK_DESTROY` (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

const NFNLA_HOOK_PRIORITY: u16 = 2;
const NFNLA_HOOK_FUNCTION_NAME: u16 = 4;
const NFNLA_HOOK_HOOKNUM: u16 = 1;

/// `IPS_ASSURED` in `ct->status`.
pub const IPS_ASSURED: u32 = 1 << 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: u8,
}

/// A conntrack entry as ctnetlink returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub status: u32,
    /// `enum tcp_conntrack` (`TCP_CONNTRACK_ESTABLISHED` = 3 ...), when TCP.
    pub tcp_state: Option<u8>,
}

pub use crate::report::Direction;

/// Names of `enum tcp_conntrack` (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
pub fn tcp_state_name(s: u8) -> &'static str {
    match s {
        0 => "NONE",
        1 => "SYN_SENT",
        2 => "SYN_RECV",
        3 => "ESTABLISHED",
        4 => "FIN_WAIT",
        5 => "CLOSE_WAIT",
        6 => "LAST_ACK",
        7 => "TIME_WAIT",
        8 => "CLOSE",
        9 => "SYN_SENT2",
        _ => "UNKNOWN",
    }
}

struct Socket(OwnedFd);

impl Socket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2).
        let s = Self(unsafe { OwnedFd::from_raw_fd(fd) });
        // A dead kernel answer must not hang ct-trace: time out receives after one second.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid option pointer and length.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(s)
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: msg is a valid buffer; the kernel address is the zeroed sockaddr_nl.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives messages until DONE or an error/ack, calling `f` with each payload (after the
    /// netlink header) whose type is not a control message.
    fn recv_all(&self, seq: u32, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: buf is a valid writable buffer.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= 16 {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(msgs[4..6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(msgs[8..12].try_into().unwrap());
                if len < 16 || len > msgs.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad netlink length",
                    ));
                }
                let payload = &msgs[16..len];
                if mseq == seq {
                    match ty {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code = i32::from_ne_bytes(payload[0..4].try_into().unwrap());
                            return if code == 0 {
                                Ok(())
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        _ => f(payload),
                    }
                }
                msgs = &msgs[(len + 3) & !3..];
            }
        }
    }
}

fn seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Builds a netlink message: header, nfgenmsg, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(ty: u16, flags: u16, family: u8, seq: u32) -> Self {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&ty.to_ne_bytes());
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&[family, 0, 0, 0]);
        Self(b)
    }
    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Self)) {
        let start = self.0.len();
        self.attr(ty | NLA_F_NESTED, &[]);
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Iterates the attributes of a buffer: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((ty, payload))
    })
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

fn parse_tuple(b: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, 0, 0, 0);
    for (ty, p) in attrs(b) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in attrs(p) {
                    let ip = match (ty, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => {
                            IpAddr::from(<[u8; 4]>::try_from(a).ok()?)
                        }
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::from(<[u8; 16]>::try_from(a).ok()?)
                        }
                        _ => continue,
                    };
                    if ty == CTA_IP_V4_SRC || ty == CTA_IP_V6_SRC {
                        src = Some(ip);
                    } else {
                        dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, a) in attrs(p) {
                    match ty {
                        CTA_PROTO_NUM => proto = *a.first()?,
                        CTA_PROTO_SRC_PORT => sport = be16(a)?,
                        CTA_PROTO_DST_PORT => dport = be16(a)?,
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

fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let body = payload.get(4..)?; // after nfgenmsg
    let (mut orig, mut reply, mut status, mut tcp_state) = (None, None, 0, None);
    for (ty, p) in attrs(body) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_tuple(p),
            CTA_TUPLE_REPLY => reply = parse_tuple(p),
            CTA_STATUS => status = be32(p)?,
            CTA_PROTOINFO => {
                for (ty, tcp) in attrs(p) {
                    if ty == CTA_PROTOINFO_TCP {
                        for (ty, a) in attrs(tcp) {
                            if ty == CTA_PROTOINFO_TCP_STATE {
                                tcp_state = a.first().copied();
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

fn put_tuple(m: &mut Msg, t: &Tuple) {
    m.nest(CTA_TUPLE_IP, |m| match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            m.attr(CTA_IP_V4_SRC, &s.octets());
            m.attr(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(x) => x.to_ipv6_mapped().octets(),
                IpAddr::V6(x) => x.octets(),
            };
            m.attr(CTA_IP_V6_SRC, &v6(s));
            m.attr(CTA_IP_V6_DST, &v6(d));
        }
    });
    m.nest(CTA_TUPLE_PROTO, |m| {
        m.attr(CTA_PROTO_NUM, &[t.proto]);
        m.attr(CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        m.attr(CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    });
}

/// A ctnetlink client in the current network namespace.
pub struct Conntrack {
    sock: Socket,
}

impl Conntrack {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            sock: Socket::open()?,
        })
    }

    /// The entry a packet with tuple `t` belongs to, and the direction it travelled in;
    /// `Ok(None)` when conntrack has no such entry.
    pub fn lookup(&self, t: &Tuple) -> io::Result<Option<(Entry, Direction)>> {
        for (attr, dir) in [
            (CTA_TUPLE_REPLY, Direction::Reply),
            (CTA_TUPLE_ORIG, Direction::Original),
        ] {
            let s = seq();
            let family = if t.src.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            } as u8;
            let mut m = Msg::new(
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                NLM_F_REQUEST | NLM_F_ACK,
                family,
                s,
            );
            m.nest(attr, |m| put_tuple(m, t));
            self.sock.send(&m.finish())?;
            let mut found = None;
            match self
                .sock
                .recv_all(s, |p| found = found.take().or_else(|| parse_entry(p)))
            {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
            if let Some(e) = found {
                return Ok(Some((e, dir)));
            }
        }
        Ok(None)
    }
}

/// An entry conntrack destroyed, as its ctnetlink destroy event says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destroyed {
    pub entry: Entry,
    /// Netlink port of the process that asked for the deletion (`conntrack -D`); 0 when the
    /// kernel itself destroyed the entry (timeout, early_drop, flush by the kernel).
    pub portid: u32,
    /// How long the entry lived, when `nf_conntrack_timestamp` is on (CTA_TIMESTAMP).
    pub age_ns: Option<u64>,
}

/// Parses one ctnetlink message (netlink header included) of the destroy group.
pub fn parse_destroyed(msg: &[u8]) -> Option<Destroyed> {
    let portid = u32::from_ne_bytes(msg.get(12..16)?.try_into().ok()?);
    let payload = msg.get(16..)?;
    let entry = parse_entry(payload)?;
    let (mut start, mut stop) = (None, None);
    for (ty, p) in attrs(payload.get(4..)?) {
        if ty == CTA_TIMESTAMP {
            for (ty, a) in attrs(p) {
                let v = a
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                match ty {
                    CTA_TIMESTAMP_START => start = v,
                    CTA_TIMESTAMP_STOP => stop = v,
                    _ => {}
                }
            }
        }
    }
    Some(Destroyed {
        entry,
        portid,
        age_ns: start.zip(stop).map(|(a, b)| b.saturating_sub(a)),
    })
}

/// A subscription to conntrack's destroy events (`NFNLGRP_CONNTRACK_DESTROY`) in the caller's
/// namespace. The kernel sends them only for entries created while someone listens
/// (`nf_conntrack_events=2`, the default since Linux 5.19: the event cache extension is added
/// at creation only when a listener exists, nf_conntrack_ecache.c `nf_ct_ecache_ext_add()`).
pub struct DestroyEvents {
    sock: Socket,
    buf: Vec<u8>,
}

/// Receive buffer asked for (SO_RCVBUFFORCE, root): a storm of expiries must not overflow it
/// between two reads of the thread (an overflow is counted, never silent).
const DESTROY_RCVBUF: i32 = 8 << 20;

impl DestroyEvents {
    pub fn open() -> io::Result<Self> {
        let sock = Socket::open()?;
        let fd = sock.0.as_raw_fd();
        // Bound first (the kernel picks the port): an unbound socket gets no multicast.
        // SAFETY: a zeroed sockaddr_nl with only the family set.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: valid address pointer and length.
        let rc = unsafe {
            libc::bind(
                fd,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let group = NFNLGRP_CONNTRACK_DESTROY;
        // SAFETY: valid option pointers and lengths.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                &group as *const u32 as *const libc::c_void,
                4,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above. Best effort: without it the default buffer is used.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &DESTROY_RCVBUF as *const i32 as *const libc::c_void,
                4,
            );
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: as above: a receive waits at most 100 ms, so the thread notices a stop.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Self {
            sock,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Waits up to 100 ms for events, then takes every one already queued. `Ok(false)` when
    /// the socket overflowed (ENOBUFS: the kernel dropped events for this listener).
    pub fn recv(&mut self, out: &mut Vec<Destroyed>) -> io::Result<bool> {
        let mut flags = 0;
        loop {
            // SAFETY: buf is a valid writable buffer.
            let n = unsafe {
                libc::recv(
                    self.sock.0.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(true),
                    Some(libc::ENOBUFS) => Ok(false),
                    _ => Err(e),
                };
            }
            let mut msgs = &self.buf[..n as usize];
            while msgs.len() >= 16 {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap()) as usize;
                if len < 16 || len > msgs.len() {
                    break;
                }
                if let Some(d) = parse_destroyed(&msgs[..len]) {
                    out.push(d);
                }
                msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
            }
            flags = libc::MSG_DONTWAIT;
        }
    }
}

/// One function registered on a netfilter hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookEntry {
    pub priority: i32,
    pub function: String,
}

/// The functions on hook `hooknum` of protocol family `pf` (NFPROTO_*) in this namespace.
pub fn hooks(pf: u8, hooknum: u32) -> io::Result<Vec<HookEntry>> {
    let sock = Socket::open()?;
    let s = seq();
    let mut m = Msg::new(
        (NFNL_SUBSYS_HOOK << 8) | NFNL_MSG_HOOK_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        pf,
        s,
    );
    m.attr(NFNLA_HOOK_HOOKNUM, &hooknum.to_be_bytes());
    sock.send(&m.finish())?;
    let mut out = Vec::new();
    sock.recv_all(s, |p| {
        let (mut priority, mut function) = (0, String::new());
        for (ty, a) in attrs(p.get(4..).unwrap_or_default()) {
            match ty {
                NFNLA_HOOK_PRIORITY => priority = be32(a).unwrap_or(0) as i32,
                NFNLA_HOOK_FUNCTION_NAME => {
                    function = String::from_utf8_lossy(a)
                        .trim_end_matches('\0')
                        .to_string()
                }
                _ => {}
            }
        }
        out.push(HookEntry { priority, function });
    })?;
    Ok(out)
}

/// Whether conntrack's own hook (`ipv4_conntrack_in`, `ipv6_conntrack_local` ...) is on
/// `hooknum`; `None` when this kernel cannot say (no nfnetlink_hook).
pub fn conntrack_hooked(pf: u8, hooknum: u32) -> Option<bool> {
    hooks(pf, hooknum).ok().map(|h| {
        h.iter()
            .any(|e| e.function.contains("conntrack_in") || e.function.contains("conntrack_local"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_round_trip_through_attributes() {
        let t = Tuple {
            src: "10.0.0.1".parse().unwrap(),
            sport: 1234,
            dst: "10.96.0.10".parse().unwrap(),
            dport: 80,
            proto: 6,
        };
        let mut m = Msg::new(0, 0, 2, 1);
        put_tuple(&mut m, &t);
        let b = m.finish();
        assert_eq!(parse_tuple(&b[20..]), Some(t));
    }

    #[test]
    fn truncated_attributes_end_iteration() {
        let b = [8u8, 0, 1, 0, 1, 2];
        assert_eq!(attrs(&b).count(), 0);
        assert_eq!(parse_tuple(&b), None);
    }
}
