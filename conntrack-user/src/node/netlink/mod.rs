//! Two small nfnetlink conversations, in the caller's network namespace:
//! - ctnetlink: `IPCTNL_MSG_CT_GET` by tuple (the conntrack entry a packet belongs to, whose
//!   original tuple names the Service address a client connected to before DNAT) and the
//!   destroy events of `NFNLGRP_CONNTRACK_DESTROY`. Messages are built and parsed by
//!   `netlink-packet-netfilter` (typed tuples, status, TCP protoinfo) and
//!   `netlink-packet-core` (framing, ACK/error/DONE), over a `netlink-sys` socket;
//! - nfnetlink_hook dump (5.14+, `NFNL_SUBSYS_HOOK`): which functions sit on a netfilter hook,
//!   i.e. whether conntrack is active at all in this namespace (its hooks are registered only
//!   when a rule or NAT needs them; without them every packet looks untracked).
//!
//! - ctnetlink statistics (`IPCTNL_MSG_CT_GET_STATS_CPU`): conntrack's per-CPU counters where
//!   `/proc/net/stat/nf_conntrack` does not exist.
//!
//! By file: `socket` (the transport all share), `ctnetlink` (the lookup), `dump` (the whole
//! table, read in place), `destroy` (the destroy events), `events` (every entry event, read in
//! place, for `top`), `hook` (the hook dump), `stats` (the
//! counters).

mod ctnetlink;
mod destroy;
mod dump;
mod events;
mod hook;
mod socket;
pub mod stats;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use netlink_packet_netfilter::conntrack::Status;

pub use self::{
    ctnetlink::Conntrack,
    destroy::{parse_destroyed, DestroyEvents, Destroyed},
    events::{parse_event, CtEvents, Event, Got},
    hook::{conntrack_hooked, conntrack_hooked_at, hooks, HookEntry},
};

/// `IPS_ASSURED` in `ct->status`.
pub const IPS_ASSURED: u32 = Status::Assured.bits();

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

/// The direction a packet travelled in, relative to its conntrack entry.
#[derive(Clone, Copy, Debug, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// As the connection was opened (client -> Service).
    Original,
    /// The answer (backend -> client).
    Reply,
}

/// Names of `enum tcp_conntrack` (include/uapi/linux/netfilter/nf_conntrack_tcp.h);
/// netlink-packet-netfilter 0.4.0 gives the state as a bare `u8`.
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
