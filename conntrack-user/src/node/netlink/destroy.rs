//! Conntrack's destroy events (`NFNLGRP_CONNTRACK_DESTROY`): the entries the kernel removed,
//! who asked for it, and how long they lived.

use std::{io, time::Duration};

use netlink_packet_core::{
    parse_u64_be, NetlinkMessage, NetlinkPayload, Nla, NlasIterator, NLA_TYPE_MASK,
};
use netlink_packet_netfilter::{
    conntrack::{ConntrackAttribute, ConntrackMessage},
    NetfilterMessage, NetfilterMessageInner,
};

use super::{
    ctnetlink::entry,
    socket::{frames, nla_value, Socket},
    Entry, IPS_ASSURED,
};

/// `NFNLGRP_CONNTRACK_DESTROY` (include/uapi/linux/netfilter/nfnetlink.h).
pub(super) const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

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
    let m = NetlinkMessage::<NetfilterMessage>::deserialize(msg).ok()?;
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Delete(attrs)),
        ..
    }) = &m.payload
    else {
        return None;
    };
    Some(Destroyed {
        entry: entry(attrs)?,
        portid: m.header.port_number,
        age_ns: age_ns(attrs),
    })
}

/// netlink-packet-netfilter 0.4.0 has no CTA_TIMESTAMP (an untyped `Other` attribute): its
/// nested `CTA_TIMESTAMP_START`/`_STOP` (ns, big endian) are read here.
fn age_ns(attrs: &[ConntrackAttribute]) -> Option<u64> {
    const CTA_TIMESTAMP: u16 = 20;
    const CTA_TIMESTAMP_START: u16 = 1;
    const CTA_TIMESTAMP_STOP: u16 = 2;
    let ts = attrs.iter().find_map(|a| match a {
        ConntrackAttribute::Other(n) if n.kind() & NLA_TYPE_MASK == CTA_TIMESTAMP => {
            Some(nla_value(n))
        }
        _ => None,
    })?;
    let (mut start, mut stop) = (None, None);
    for nla in NlasIterator::new(&ts) {
        let nla = nla.ok()?;
        match nla.kind() {
            CTA_TIMESTAMP_START => start = parse_u64_be(nla.value()).ok(),
            CTA_TIMESTAMP_STOP => stop = parse_u64_be(nla.value()).ok(),
            _ => {}
        }
    }
    Some(stop?.saturating_sub(start?))
}

/// A subscription to conntrack's destroy events (`NFNLGRP_CONNTRACK_DESTROY`) in the caller's
/// namespace. The kernel sends them only for entries created while someone listens
/// (`nf_conntrack_events=2`, the default since Linux 5.19: the event cache extension is added
/// at creation only when a listener exists, nf_conntrack_ecache.c `nf_ct_ecache_ext_add()`).
/// The kernel filters them for this socket ([`lost_entries_only`]): flows that ended normally
/// never reach it.
pub struct DestroyEvents {
    sock: Socket,
    buf: Vec<u8>,
}

/// What one [`DestroyEvents::recv`] saw besides the events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The socket overflowed (ENOBUFS): the kernel dropped events for this listener.
    pub overflowed: bool,
    /// The clock's reading before the receive that found the queue empty: every event sent
    /// before it has been taken (but those an overflow dropped, which never come). None when
    /// the receive ended otherwise.
    pub drained_at: Option<u64>,
}

/// Receive buffer asked for (SO_RCVBUFFORCE, root): a storm of expiries must not overflow it
/// between two reads of the thread (an overflow is counted, never silent).
const DESTROY_RCVBUF: i32 = 8 << 20;

impl DestroyEvents {
    pub fn open() -> io::Result<Self> {
        Self::with_rcvbuf(DESTROY_RCVBUF)
    }

    /// [`DestroyEvents::open`] with another receive buffer (a test overflows a small one).
    pub(super) fn with_rcvbuf(rcvbuf: i32) -> io::Result<Self> {
        // A receive waits at most 100 ms, so the thread notices a stop.
        let sock = Socket::subscribe(
            Duration::from_millis(100),
            &[NFNLGRP_CONNTRACK_DESTROY],
            rcvbuf,
        )?;
        // Without the filter every event still comes, only more of them: not a reason to stop.
        if let Err(e) = sock.attach_filter(&lost_entries_only()) {
            log::warn!("destroy events unfiltered (SO_ATTACH_FILTER: {e}): every closing flow's event is read");
        }
        Ok(Self {
            sock,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Waits up to 100 ms for events, then takes every one already queued (also after an
    /// overflow, which it reports).
    pub fn recv(
        &mut self,
        out: &mut Vec<Destroyed>,
        clock: impl Fn() -> u64,
    ) -> io::Result<Received> {
        let mut flags = 0;
        let mut overflowed = false;
        loop {
            // Read before the receive: if it finds the queue empty, every event the kernel
            // sent before this instant has been taken (the kernel queues them in order).
            let before = clock();
            match self.sock.recv(&mut self.buf, flags) {
                Ok(b) => out.extend(frames(b).filter_map(parse_destroyed)),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        return Ok(Received {
                            overflowed,
                            drained_at: Some(before),
                        })
                    }
                    Some(libc::EINTR) => {
                        return Ok(Received {
                            overflowed,
                            drained_at: None,
                        })
                    }
                    // The overflow is reported by the first receive after it, ahead of the
                    // events still queued (`sock_error()` comes first in
                    // `__skb_try_recv_datagram()`, net/core/datagram.c), and until the queue is
                    // empty the kernel drops every new event for this socket
                    // (`netlink_overrun()` sets NETLINK_S_CONGESTED; only `netlink_rcv_wake()`,
                    // on a receive that leaves the queue empty, clears it). Returning here left
                    // the queue full while the thread classified, read the counters and slept:
                    // every event of that time was lost too. So the queue is drained now.
                    Some(libc::ENOBUFS) => overflowed = true,
                    _ => return Err(e),
                },
            }
            flags = libc::MSG_DONTWAIT;
        }
    }
}

/// Where a test of [`lost_entries_only`] goes.
#[derive(Clone, Copy)]
enum To {
    Next,
    Keep,
    Drop,
}

/// One classic BPF instruction, before its jumps are resolved.
enum Ins {
    Op(u16, u32),
    Jump(u16, u32, To, To),
}

/// The socket filter of the destroy subscription: the kernel drops, before they are queued,
/// the events ct-trace has nothing to tell from - an entry the kernel itself destroyed
/// (`nlmsg_pid` 0) that was ASSURED (so no `early_drop` eviction, which takes only unassured
/// entries) and is either not TCP or a TCP flow that had closed (TIME_WAIT, CLOSE). Those are
/// the ordinary end of every connection, one per closing flow: on a connection-per-request
/// workload they were nearly every event, each woke the watcher and was parsed to be thrown
/// away ([`crate::pipeline::lost`] keeps, of the expired, only TCP flows that could still have
/// been alive). What is kept: deletions by a process, every unassured entry (an eviction
/// candidate: the classifier matches them to the `early_drop` counter), and TCP flows that
/// expired in another state (an idle flow's entry lost mid-stream). An event missing an
/// attribute the test reads is kept: before Linux 5.11 destroy events carry no CTA_PROTOINFO
/// ("netfilter: ctnetlink: add timeout and protoinfo to destroy events"), so there only the
/// non-TCP ends are dropped. The kernel still builds every event (ctnetlink sends to
/// the group once anyone listens); the filter saves the queueing, the wake-ups and the parsing.
///
/// Attributes are found with the netlink extensions of classic BPF (`SKF_AD_NLATTR`: A = the
/// offset of the attribute of type X in the attributes from offset A; `SKF_AD_NLATTR_NEST`:
/// the same inside the nested attribute at offset A; 0 when absent; net/core/filter.c). A
/// load is in network order, as ctnetlink puts CTA_STATUS.
fn lost_entries_only() -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_B, BPF_IMM, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX,
        BPF_MISC, BPF_RET, BPF_TAX, BPF_W, SKF_AD_NLATTR, SKF_AD_NLATTR_NEST, SKF_AD_OFF,
    };
    use To::*;
    const fn op(code: u32) -> u16 {
        code as u16
    }
    // After struct nlmsghdr (16 bytes) and struct nfgenmsg (4).
    const ATTRS: u32 = 20;
    const NLMSG_PID: u32 = 12;
    // include/uapi/linux/netfilter/nfnetlink_conntrack.h
    const CTA_TUPLE_ORIG: u32 = 1;
    const CTA_STATUS: u32 = 3;
    const CTA_PROTOINFO: u32 = 4;
    const CTA_TUPLE_PROTO: u32 = 2;
    const CTA_PROTO_NUM: u32 = 1;
    const CTA_PROTOINFO_TCP: u32 = 1;
    const CTA_PROTOINFO_TCP_STATE: u32 = 1;
    // enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h)
    const TIME_WAIT: u32 = 7;
    const CLOSE: u32 = 8;
    let ld_abs = |k: u32| Ins::Op(op(BPF_LD | BPF_W | BPF_ABS), k);
    let ld_imm = |k: u32| Ins::Op(op(BPF_LD | BPF_IMM), k);
    let ldx_imm = |k: u32| Ins::Op(op(BPF_LDX | BPF_IMM), k);
    let nlattr = || ld_abs((SKF_AD_OFF + SKF_AD_NLATTR) as u32);
    let nlattr_nest = || ld_abs((SKF_AD_OFF + SKF_AD_NLATTR_NEST) as u32);
    let tax = || Ins::Op(op(BPF_MISC | BPF_TAX), 0);
    let jeq = |k: u32, t: To, f: To| Ins::Jump(op(BPF_JMP | BPF_JEQ | BPF_K), k, t, f);
    // A = the attribute's offset; 0 (absent): keep.
    let found = || jeq(0, Keep, Next);
    let word_at_x = || Ins::Op(op(BPF_LD | BPF_W | BPF_IND), 4);
    let byte_at_x = || Ins::Op(op(BPF_LD | BPF_B | BPF_IND), 4);
    let mut p = vec![
        ld_abs(NLMSG_PID),
        jeq(0, Next, Keep),
        // CTA_STATUS: unassured, keep.
        ldx_imm(CTA_STATUS),
        ld_imm(ATTRS),
        nlattr(),
        found(),
        tax(),
        word_at_x(),
        Ins::Jump(op(BPF_JMP | BPF_JSET | BPF_K), IPS_ASSURED, Next, Keep),
        // CTA_TUPLE_ORIG / CTA_TUPLE_PROTO / CTA_PROTO_NUM: not TCP, drop.
        ldx_imm(CTA_TUPLE_ORIG),
        ld_imm(ATTRS),
        nlattr(),
        found(),
        ldx_imm(CTA_TUPLE_PROTO),
        nlattr_nest(),
        found(),
        ldx_imm(CTA_PROTO_NUM),
        nlattr_nest(),
        found(),
        tax(),
        byte_at_x(),
        jeq(u32::from(conntrack_common::IPPROTO_TCP), Next, Drop),
        // CTA_PROTOINFO / CTA_PROTOINFO_TCP / CTA_PROTOINFO_TCP_STATE: closed, drop.
        ldx_imm(CTA_PROTOINFO),
        ld_imm(ATTRS),
        nlattr(),
        found(),
        ldx_imm(CTA_PROTOINFO_TCP),
        nlattr_nest(),
        found(),
        ldx_imm(CTA_PROTOINFO_TCP_STATE),
        nlattr_nest(),
        found(),
        tax(),
        byte_at_x(),
        jeq(TIME_WAIT, Drop, Next),
        jeq(CLOSE, Drop, Keep),
    ];
    let keep = p.len();
    p.push(Ins::Op(op(BPF_RET | BPF_K), u32::MAX));
    p.push(Ins::Op(op(BPF_RET | BPF_K), 0));
    let to = |i: usize, t: To| -> u8 {
        let target = match t {
            Next => i + 1,
            Keep => keep,
            Drop => keep + 1,
        };
        (target - i - 1) as u8
    };
    p.iter()
        .enumerate()
        .map(|(i, ins)| match *ins {
            Ins::Op(code, k) => libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            },
            Ins::Jump(code, k, t, f) => libc::sock_filter {
                code,
                jt: to(i, t),
                jf: to(i, f),
                k,
            },
        })
        .collect()
}
