//! `invalid` / `ignored`: a packet conntrack refused (or only logged), with the entry it had
//! and what became of the packet.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{Enrichment, NfHook, ReasonText, TcpFlags, Time};

/// One direction's TCP window as conntrack tracks it (`struct ip_ct_tcp_state`,
/// include/net/netfilter/nf_conntrack_tcp.h): the sequence numbers it will accept.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct WindowReport {
    /// Highest sequence number sent in this direction (`td_end`).
    pub td_end: u32,
    /// Highest sequence number this direction may send: the peer's ack plus its window
    /// (`td_maxend`; a SEQ over it is "over the window of the receiver").
    pub td_maxend: u32,
    /// Largest window this direction's peer announced (`td_maxwin`).
    pub td_maxwin: u32,
    /// Highest ack this direction sent (`td_maxack`).
    pub td_maxack: u32,
    /// Window scale (`td_scale`).
    pub td_scale: u8,
    /// `IP_CT_TCP_FLAG_BE_LIBERAL` set for this direction (e.g. a connection picked up
    /// mid-stream): window checks are off.
    pub liberal: bool,
}

/// A conntrack entry: from the kernel at the moment it refused the packet (`source: kernel`,
/// with both windows), or from a ctnetlink lookup just after (`source: ctnetlink`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConntrackReport {
    /// `kernel` or `ctnetlink`.
    pub source: &'static str,
    /// The direction the packet travelled in.
    pub direction: Direction,
    pub orig_src: IpAddr,
    pub orig_sport: u16,
    pub orig_dst: IpAddr,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
    pub reply_sport: u16,
    pub reply_dst: IpAddr,
    pub reply_dport: u16,
    pub tcp_state: Option<&'static str>,
    pub assured: bool,
    /// The window of the original direction (client -> service) and of the reply direction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_window: Option<WindowReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_window: Option<WindowReport>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InvalidReport {
    pub time: Time,
    pub netns: u32,
    pub hook: NfHook,
    pub in_iface: Option<Arc<str>>,
    pub out_iface: Option<Arc<str>>,
    pub proto: u8,
    pub src: IpAddr,
    pub sport: Option<u16>,
    pub dst: IpAddr,
    pub dport: Option<u16>,
    pub flags: Option<TcpFlags>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    pub len: Option<u16>,
    /// Conntrack's own words for the refusal, as its log line would print them (e.g. "SEQ is
    /// over upper bound 1234 (over the window of the receiver)"), or `unknown (why)`.
    pub reason: ReasonText,
    /// By how many sequence numbers the packet missed the bound the reason names (SEQ or ACK
    /// over the upper bound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missed_by: Option<u32>,
    pub fate: Fate,
    /// Why the kernel freed the packet when it did not survive (`NETFILTER_DROP` with
    /// `dropped`; e.g. `NO_SOCKET` with `passed`: it reached a host that had no socket for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<Arc<str>>,
    /// Boxed: most verdicts have none, and each report moves through the pipeline's queues.
    pub conntrack: Option<Box<ConntrackReport>>,
    /// Whether the packet belonged to a flow conntrack was tracking: a confirmed entry had its
    /// tuple (the kernel's entry at the refusal, or the ctnetlink lookup just after). `false`
    /// for port scans (SYN|FIN, NULL, XMAS, FIN segments to closed ports) and strays of long-gone
    /// flows: they reset nothing anyone cares about. `null` when it could not be told
    /// (`enrichment: skipped`, not TCP, no ctnetlink).
    pub tracked: Option<bool>,
    /// `skipped` when the ctnetlink lookup of the entry could not be made in time (the lookup
    /// queue was full, or the answer came too late): `conntrack` is then null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Enrichment>,
    /// The Service this flow belongs to, `namespace/name:portname` as kube-proxy's rules name it
    /// (omitted when no rule names it; see README "Service names").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Arc<str>>,
}

/// What happened to an INVALID packet after conntrack refused it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// A netfilter rule dropped it: the node is protected.
    Dropped,
    /// Not dropped by netfilter: it went on without its NAT reversed, the dangerous case.
    Passed,
    /// The kernel does not say (no `kfree_skb` reason on this kernel).
    Unknown,
    /// `ignored` packets: conntrack let it through with its entry and its NAT.
    Accepted,
}

impl Fate {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dropped => "dropped",
            Self::Passed => "passed",
            Self::Unknown => "unknown",
            Self::Accepted => "accepted",
        }
    }
}

pub use crate::node::netlink::Direction;
