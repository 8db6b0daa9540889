//! `rst_sent` / `rst_received`: a TCP reset the kernel sent or received, and the packet that
//! made it send one.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{Enrichment, ResetCause, TcpFlags, Time};

/// The packet that made the kernel send a reset, as it arrived.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Trigger {
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub len: u16,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ResetReport {
    pub time: Time,
    pub netns: u32,
    /// The reset's direction: from the host that sent it to its peer.
    pub src: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dst: Option<IpAddr>,
    pub dport: Option<u16>,
    pub flags: Option<TcpFlags>,
    pub seq: Option<u32>,
    pub ack: Option<u32>,
    /// `enum sk_rst_reason` name (6.10+), or why it is not known.
    pub reason: Option<Arc<str>>,
    pub iface: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// Whether a socket owned the triggering packet (false: "no socket", the ct-trace case).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<bool>,
    /// True when the triggering packet had been marked INVALID by conntrack on its way.
    pub caused_by_invalid: bool,
    /// What conntrack did to the triggering packet on its way, when it let it through without
    /// its NAT: `invalid_packet` (marked INVALID) or `entry_lost` (picked up mid-stream after
    /// its flow's entry went), each with an `attribution`; or `stray` when nothing shows that
    /// the packet belonged to a flow conntrack was tracking (a port scan, a segment of a
    /// long-gone flow): harmless, not attributed, shown only with `--resets all`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<ResetCause>,
    /// `skipped` on a `stray` whose entry lookup could not be made in time: nothing showed the
    /// flow was tracked, so nothing is blamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrichment: Option<Enrichment>,
}
