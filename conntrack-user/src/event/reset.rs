//! `rst_sent` / `rst_received`: a TCP reset the kernel sent or received, and the packet that
//! made it send one.

use std::sync::Arc;

use serde::{ser::SerializeStruct, Serialize, Serializer};

use super::{
    flags::TcpFlags,
    packet::{some_field, Packet, ResetShows},
    tags::{Enrichment, ResetCause},
};

/// The packet that made the kernel send a reset, as it arrived.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Trigger {
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    pub len: u16,
}

/// A reset. JSON: the packet's `time`, `netns`, addresses, ports, flags, `seq` and `ack`
/// ([`ResetShows`]), then the fields below in their order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetReport {
    /// The reset itself, in its direction: from the host that sent it to its peer (TCP, no
    /// payload, no hook).
    pub packet: Packet,
    /// `enum sk_rst_reason` name (6.10+), or why it is not known.
    pub reason: Option<Arc<str>>,
    pub iface: Option<Arc<str>>,
    pub trigger: Option<Trigger>,
    /// Whether a socket owned the triggering packet (false: "no socket", the ct-trace case).
    pub socket: Option<bool>,
    /// True when the triggering packet had been marked INVALID by conntrack on its way.
    pub caused_by_invalid: bool,
    /// What conntrack did to the triggering packet on its way, when it let it through without
    /// its NAT: `invalid_packet` (marked INVALID) or `entry_lost` (picked up mid-stream after
    /// its flow's entry went), each with an `attribution`; or `stray` when nothing shows that
    /// the packet belonged to a flow conntrack was tracking (a port scan, a segment of a
    /// long-gone flow): harmless, not attributed, shown only with `--resets all`.
    pub cause: Option<ResetCause>,
    /// `skipped` on a `stray` whose entry lookup could not be made in time: nothing showed the
    /// flow was tracked, so nothing is blamed.
    pub enrichment: Option<Enrichment>,
}

impl Serialize for ResetReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("ResetReport", Packet::shown::<ResetShows>() + 7)?;
        self.packet.serialize_head::<ResetShows, _>(&mut m)?;
        self.packet.serialize_tuple::<ResetShows, _>(&mut m)?;
        m.serialize_field("reason", &self.reason)?;
        m.serialize_field("iface", &self.iface)?;
        some_field(&mut m, "trigger", &self.trigger)?;
        some_field(&mut m, "socket", &self.socket)?;
        m.serialize_field("caused_by_invalid", &self.caused_by_invalid)?;
        some_field(&mut m, "cause", &self.cause)?;
        some_field(&mut m, "enrichment", &self.enrichment)?;
        m.end()
    }
}
