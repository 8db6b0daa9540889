//! Every conntrack event of the caller's namespace (`NFNLGRP_CONNTRACK_NEW`, `_UPDATE`,
//! `_DESTROY`), read in place like the dump (`dump::entry_of`): what `ct-trace top` keeps its
//! table with between dumps.
//!
//! The kernel sends an entry's events only if the entry has the event cache extension, added
//! at its creation: always with `nf_conntrack_events=1`, only while a listener exists with `2`
//! (the default since Linux 5.19, commit 90d1daa45849 "netfilter: conntrack: add
//! nf_conntrack_events autodetect mode"), never with `0`. Entries created before the first
//! listener are silent: their state changes and their end send nothing.

use std::{io, time::Duration};

use super::{
    destroy::NFNLGRP_CONNTRACK_DESTROY,
    dump::entry_of,
    socket::{frames, Socket},
    Entry,
};

/// `NFNLGRP_CONNTRACK_NEW`, `NFNLGRP_CONNTRACK_UPDATE` (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW` (new and update events) and `_DELETE`.
const CT_NEW: u16 = 1 << 8;
const CT_DELETE: u16 = 1 << 8 | 2;
/// Set on a NEW event (`ctnetlink_conntrack_event()`: `NLM_F_CREATE|NLM_F_EXCL` for IPCT_NEW
/// and IPCT_RELATED), not on an update.
const NLM_F_CREATE: u16 = 0x400;

/// One event: the entry's id (`CTA_ID`) and the entry as the event has it. An update carries
/// the TCP state only when it changed (IPCT_PROTOINFO); a destroy never does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    New(u32, Entry),
    Update(u32, Entry),
    Destroy(u32, Entry),
}

/// What one [`CtEvents::recv`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Got {
    /// Events (possibly none of ctnetlink's): receive again.
    Some,
    /// Nothing queued (or the wait ended): every event sent before the receive was taken.
    Empty,
    /// The socket overflowed (ENOBUFS): the kernel dropped events for this listener.
    Overflowed,
    /// An event this parser cannot read: the table can no longer be trusted.
    Unreadable,
}

/// Parses one multicast message (netlink header included); `None` when it is not a
/// ctnetlink entry event, `Some(None)` when it is one that cannot be read.
pub fn parse_event(frame: &[u8]) -> Option<Option<Event>> {
    let kind = u16::from_ne_bytes([*frame.get(4)?, *frame.get(5)?]);
    let flags = u16::from_ne_bytes([*frame.get(6)?, *frame.get(7)?]);
    if kind != CT_NEW && kind != CT_DELETE {
        return None;
    }
    let Some((id, e)) = frame.get(16..).and_then(entry_of) else {
        return Some(None);
    };
    Some(Some(match (kind, flags & NLM_F_CREATE != 0) {
        (CT_DELETE, _) => Event::Destroy(id, e),
        (_, true) => Event::New(id, e),
        _ => Event::Update(id, e),
    }))
}

/// A subscription to all three groups.
pub struct CtEvents {
    sock: Socket,
    buf: Vec<u8>,
}

impl CtEvents {
    /// Subscribes with a receive buffer of `rcvbuf` bytes. A receive waits at most 50 ms.
    pub fn open(rcvbuf: i32) -> io::Result<Self> {
        Ok(Self {
            sock: Socket::subscribe(
                Duration::from_millis(50),
                &[
                    NFNLGRP_CONNTRACK_NEW,
                    NFNLGRP_CONNTRACK_UPDATE,
                    NFNLGRP_CONNTRACK_DESTROY,
                ],
                rcvbuf,
            )?,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// One datagram, its events given to `f` in the order the kernel sent them; `wait`: block
    /// (up to 50 ms) when nothing is queued.
    pub fn recv(&mut self, wait: bool, mut f: impl FnMut(Event)) -> io::Result<Got> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        match self.sock.recv(&mut self.buf, flags) {
            Ok(b) => {
                for ev in frames(b).filter_map(parse_event) {
                    match ev {
                        Some(ev) => f(ev),
                        None => return Ok(Got::Unreadable),
                    }
                }
                Ok(Got::Some)
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(Got::Empty),
                Some(libc::ENOBUFS) => Ok(Got::Overflowed),
                _ => Err(e),
            },
        }
    }

    /// Throws away everything queued (after an overflow: those events are older than the
    /// dump that follows). Bounded: a queue refilled faster than it is read ends the loop too.
    pub fn discard(&mut self) -> io::Result<()> {
        for _ in 0..1_000_000 {
            match self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT) {
                Ok(_) => {}
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EINTR) => {}
                    Some(libc::EAGAIN) => return Ok(()),
                    _ => return Err(e),
                },
            }
        }
        Ok(())
    }
}
