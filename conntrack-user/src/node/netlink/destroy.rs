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
    Entry,
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
