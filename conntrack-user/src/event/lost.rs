//! The reports of lost entries and table pressure (`table_full`, `evicted`, `midstream`, and
//! the `lost` part of an attribution). The pipeline fills them (`pipeline::lost`); their text
//! lines are `output::text`'s.

use std::{net::SocketAddr, sync::Arc};

use serde::{ser::SerializeStruct, Serialize, Serializer};

use super::{
    packet::{some_field, MidstreamShows, Packet, Segment, TableFullShows},
    tags::NfHook,
    time::Time,
};
use crate::node::netlink::{tcp_state_name, Entry, IPS_ASSURED};

/// How an entry went.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum How {
    /// Removed by `early_drop` to make room in a full table.
    Evicted,
    /// Its timeout ran out (idle longer than `nf_conntrack_tcp_timeout_*`).
    Expired,
    /// Deleted by a process over ctnetlink (`conntrack -D`, a CNI plugin, kube-proxy).
    Deleted,
    /// ct-trace did not see it go (it went before ct-trace started, or before the kernel
    /// sent events for it).
    Unknown,
}

/// A conntrack entry: both tuples, so the Service (original destination) and the backend
/// (reply source) are named. Endpoints print as `addr:port` (`[addr]:port` for IPv6).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowEntry {
    pub proto: u8,
    #[serde(serialize_with = "as_text")]
    pub orig_src: SocketAddr,
    #[serde(serialize_with = "as_text")]
    pub orig_dst: SocketAddr,
    #[serde(serialize_with = "as_text")]
    pub reply_src: SocketAddr,
    #[serde(serialize_with = "as_text")]
    pub reply_dst: SocketAddr,
    pub tcp_state: Option<&'static str>,
    pub assured: bool,
}

fn as_text<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(a)
}

impl FlowEntry {
    pub fn of(e: &Entry) -> Self {
        Self {
            proto: e.orig.proto,
            orig_src: SocketAddr::new(e.orig.src, e.orig.sport),
            orig_dst: SocketAddr::new(e.orig.dst, e.orig.dport),
            reply_src: SocketAddr::new(e.reply.src, e.reply.sport),
            reply_dst: SocketAddr::new(e.reply.dst, e.reply.dport),
            tcp_state: e.tcp_state.map(tcp_state_name),
            assured: e.status & IPS_ASSURED != 0,
        }
    }

    /// Whether conntrack translated the flow (a Service's DNAT, an SNAT): only then does losing
    /// the entry change its packets.
    pub fn nat(&self) -> bool {
        self.reply_src != self.orig_dst || self.reply_dst != self.orig_src
    }

    /// Whether a packet from `src` to `dst` is the flow's answer (backend -> client) as it
    /// travels without the entry, i.e. untranslated.
    pub fn is_reply(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        src == self.reply_src && dst == self.reply_dst
    }
}

/// An entry that went, as `midstream` and `attribution` carry it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LostReport {
    pub how: How,
    /// False when `how` was inferred (see the module doc) or is `unknown`.
    pub certain: bool,
    /// When ct-trace saw it go (null when unknown).
    pub time: Option<Time>,
    /// The entry as it was (null when unknown).
    pub entry: Option<FlowEntry>,
}

impl LostReport {
    pub fn unknown() -> Self {
        Self {
            how: How::Unknown,
            certain: false,
            time: None,
            entry: None,
        }
    }
}

/// `table_full`: conntrack had no room for this packet's new entry, and netfilter dropped it.
/// JSON: the packet's `time`, `netns`, then `entries`, `entries_source`, `max`, then the
/// packet's `proto`, addresses, ports and flags ([`TableFullShows`]), then `service_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFullReport {
    /// The refused packet: its flow's original tuple (the client and the Service it asked for).
    pub packet: Packet,
    /// Entries in the namespace's table: read by the program at the drop (`entries_source:
    /// "kernel"`), or by ct-trace as it took the event (`"ct-trace"`, Linux 5.19+).
    pub entries: Option<u32>,
    pub entries_source: &'static str,
    pub max: Option<u32>,
    /// The Service the refused flow asked for, `namespace/name:portname` as kube-proxy's rules name it
    /// (omitted when no rule names it; see README "Service names").
    pub service_name: Option<Arc<str>>,
}

impl Serialize for TableFullReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("TableFullReport", Packet::shown::<TableFullShows>() + 4)?;
        self.packet.serialize_head::<TableFullShows, _>(&mut m)?;
        m.serialize_field("entries", &self.entries)?;
        m.serialize_field("entries_source", self.entries_source)?;
        m.serialize_field("max", &self.max)?;
        self.packet.serialize_tuple::<TableFullShows, _>(&mut m)?;
        some_field(&mut m, "service_name", &self.service_name)?;
        m.end()
    }
}

/// `evicted`: an entry removed by `early_drop` to make room.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EvictedReport {
    pub time: Time,
    pub netns: u32,
    /// Entries / max of the table when ct-trace read them, right after the eviction.
    pub entries: Option<u64>,
    pub max: Option<u32>,
    pub entry: FlowEntry,
    /// Seconds the entry lived (only with `nf_conntrack_timestamp=1`).
    pub age_s: Option<f64>,
    /// False when the eviction is inferred from the kernel's counter (see README).
    pub certain: bool,
    /// The Service this flow belongs to, `namespace/name:portname` as kube-proxy's rules name it
    /// (omitted when no rule names it; see README "Service names").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<Arc<str>>,
}

/// `midstream`: a TCP packet other than a SYN created a new entry: its flow's entry was lost, and
/// with it the Service's NAT. The new entry's original tuple is the packet's. JSON: the packet's
/// `time`, `netns`, `hook`, then `entries`, `entries_source`, `max`, then the packet's
/// addresses, ports, flags, `seq`, `ack` and `len` ([`MidstreamShows`]), then `lost` and
/// `service_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MidstreamReport {
    /// The packet: TCP, with its ports, flags, sequence numbers and length always known (private:
    /// it is only made from a [`Segment`], by [`MidstreamReport::new`]).
    packet: Packet,
    pub entries: Option<u32>,
    pub entries_source: &'static str,
    pub max: Option<u32>,
    /// The entry the flow had before, and how it went.
    pub lost: LostReport,
    /// The Service this flow belongs to, `namespace/name:portname` as kube-proxy's rules name it
    /// (omitted when no rule names it; see README "Service names").
    pub service_name: Option<Arc<str>>,
}

impl MidstreamReport {
    /// The record of `segment`, seen at `hook`, before the entry its flow lost is known
    /// (`lost` unknown, no Service name yet).
    pub fn new(
        (time, netns, hook): (Time, u32, NfHook),
        segment: Segment,
        (entries, entries_source, max): (Option<u32>, &'static str, Option<u32>),
    ) -> Self {
        Self {
            packet: Packet::tcp(time, netns, hook, segment),
            entries,
            entries_source,
            max,
            lost: LostReport::unknown(),
            service_name: None,
        }
    }

    pub fn packet(&self) -> &Packet {
        &self.packet
    }
}

impl Serialize for MidstreamReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("MidstreamReport", Packet::shown::<MidstreamShows>() + 5)?;
        self.packet.serialize_head::<MidstreamShows, _>(&mut m)?;
        m.serialize_field("entries", &self.entries)?;
        m.serialize_field("entries_source", self.entries_source)?;
        m.serialize_field("max", &self.max)?;
        self.packet.serialize_tuple::<MidstreamShows, _>(&mut m)?;
        m.serialize_field("lost", &self.lost)?;
        some_field(&mut m, "service_name", &self.service_name)?;
        m.end()
    }
}

pub fn how_name(h: How) -> &'static str {
    match h {
        How::Evicted => "evicted",
        How::Expired => "expired",
        How::Deleted => "deleted",
        How::Unknown => "unknown",
    }
}
