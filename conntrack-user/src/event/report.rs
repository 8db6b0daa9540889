//! [`Report`]: one per event, every kind ct-trace prints on stdout. Field names are the public
//! interface (documented in README.md); add, never rename. Rendering them (text, JSON, pcapng)
//! is `output`'s.

use serde::Serialize;

use super::{
    attribution::AttributionReport,
    counter::{CounterReport, FlowReport},
    invalid::InvalidReport,
    lost::{EvictedReport, MidstreamReport, TableFullReport},
    packet::Packet,
    reset::ResetReport,
    summary::SummaryReport,
    tags::ResetCause,
    time::Time,
};

/// Everything ct-trace prints on stdout: one serde-tagged type, `kind` first.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Report {
    RstSent(ResetReport),
    RstReceived(ResetReport),
    Invalid(InvalidReport),
    /// Conntrack logged the packet as out of window but only ignored it (6.1+
    /// `NFCT_TCP_IGNORE`): it kept its entry and its NAT, so it is not INVALID.
    Ignored(InvalidReport),
    // The largest kinds are boxed: every report moves through the pipeline's queues at the
    // size of its largest kind (with `midstream` inline, 304 bytes instead of 240 on x86-64).
    Attribution(Box<AttributionReport>),
    TableFull(TableFullReport),
    Evicted(EvictedReport),
    Midstream(Box<MidstreamReport>),
    Lost(CounterReport),
    Suppressed(CounterReport),
    Flow(FlowReport),
    Summary(Box<SummaryReport>),
}

impl Report {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RstSent(_) => "rst_sent",
            Self::RstReceived(_) => "rst_received",
            Self::Invalid(_) => "invalid",
            Self::Ignored(_) => "ignored",
            Self::Attribution(_) => "attribution",
            Self::TableFull(_) => "table_full",
            Self::Evicted(_) => "evicted",
            Self::Midstream(_) => "midstream",
            Self::Lost(_) => "lost",
            Self::Suppressed(_) => "suppressed",
            Self::Flow(_) => "flow",
            Self::Summary(_) => "summary",
        }
    }

    /// A reset of a packet of no flow conntrack was tracking (see [`ResetReport::cause`]).
    pub fn is_stray(&self) -> bool {
        matches!(self, Self::RstSent(r) if r.cause == Some(ResetCause::Stray))
    }

    /// When it happened; `None` for the flow rows and the summary, which are made at exit.
    pub fn time(&self) -> Option<Time> {
        Some(match self {
            Self::RstSent(r) | Self::RstReceived(r) => r.packet.time,
            Self::Invalid(r) | Self::Ignored(r) => r.packet.time,
            Self::Attribution(r) => r.time,
            Self::TableFull(r) => r.packet.time,
            Self::Evicted(r) => r.time,
            Self::Midstream(r) => r.packet().time,
            Self::Lost(r) | Self::Suppressed(r) => r.time,
            Self::Flow(_) | Self::Summary(_) => return None,
        })
    }

    /// The packet the report is about; `None` for the kinds without one (`attribution`,
    /// `evicted`, counters, flows, the summary).
    pub fn packet(&self) -> Option<&Packet> {
        match self {
            Self::RstSent(r) | Self::RstReceived(r) => Some(&r.packet),
            Self::Invalid(r) | Self::Ignored(r) => Some(&r.packet),
            Self::TableFull(r) => Some(&r.packet),
            Self::Midstream(r) => Some(r.packet()),
            _ => None,
        }
    }
}
