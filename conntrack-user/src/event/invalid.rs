//! `invalid` / `ignored`: a packet conntrack refused (or only logged), with the entry it had
//! and what became of the packet.

use std::{net::IpAddr, sync::Arc};

use serde::{ser::SerializeStruct, Serialize, Serializer};

use super::{
    packet::{some_field, InvalidShows, Packet},
    reason::ReasonText,
    tags::Enrichment,
};

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

/// A refused (or only logged) packet. JSON: the packet's `time`, `netns`, `hook`, then
/// `in_iface`, `out_iface`, then the packet's `proto`, addresses, ports, flags, `seq`, `ack` and
/// `len` ([`InvalidShows`]), then the fields below in their order. `output::json` writes the
/// same bytes by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidReport {
    /// The packet conntrack refused, as it arrived (only its addresses and protocol when it was
    /// not TCP).
    pub packet: Packet,
    pub in_iface: Option<Arc<str>>,
    pub out_iface: Option<Arc<str>>,
    /// Conntrack's own words for the refusal, as its log line would print them (e.g. "SEQ is
    /// over upper bound 1234 (over the window of the receiver)"), or `unknown (why)`.
    pub reason: ReasonText,
    /// By how many sequence numbers the packet missed the bound the reason names (SEQ or ACK
    /// over the upper bound); omitted when none.
    pub missed_by: Option<u32>,
    pub fate: Fate,
    /// Why the kernel freed the packet when it did not survive (`NETFILTER_DROP` with
    /// `dropped`; e.g. `NO_SOCKET` with `passed`: it reached a host that had no socket for it);
    /// omitted when none.
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
    /// queue was full, or the answer came too late): `conntrack` is then null. Omitted otherwise.
    pub enrichment: Option<Enrichment>,
    /// The Service this flow belongs to, `namespace/name:portname` as kube-proxy's rules name it
    /// (omitted when no rule names it; see README "Service names").
    pub service_name: Option<Arc<str>>,
}

impl Serialize for InvalidReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("InvalidReport", Packet::shown::<InvalidShows>() + 10)?;
        self.packet.serialize_head::<InvalidShows, _>(&mut m)?;
        m.serialize_field("in_iface", &self.in_iface)?;
        m.serialize_field("out_iface", &self.out_iface)?;
        self.packet.serialize_tuple::<InvalidShows, _>(&mut m)?;
        m.serialize_field("reason", &self.reason)?;
        some_field(&mut m, "missed_by", &self.missed_by)?;
        m.serialize_field("fate", &self.fate)?;
        some_field(&mut m, "drop_reason", &self.drop_reason)?;
        m.serialize_field("conntrack", &self.conntrack)?;
        m.serialize_field("tracked", &self.tracked)?;
        some_field(&mut m, "enrichment", &self.enrichment)?;
        some_field(&mut m, "service_name", &self.service_name)?;
        m.end()
    }
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
