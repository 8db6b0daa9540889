//! The event model: what ct-trace reports, typed until it is printed. One [`Report`] per event
//! (`report`), each kind's struct beside its concept (`invalid`, `reset`, `attribution`, `lost`,
//! `counter`, `summary`), the packet the packet kinds share (`packet`), the run's tallies
//! (`tally`), and the small values they carry: times
//! (`time`), TCP flags (`flags`), ends of flows (`endpoint`), conntrack's reasons (`reason`) and
//! the closed sets of words (`tags`). The pipeline fills them; `output` renders them (text,
//! JSON, pcapng, metrics) and is the only place they become strings. Nothing here imports
//! `pipeline` or `output`.

pub mod attribution;
pub mod counter;
pub mod endpoint;
pub mod flags;
pub mod invalid;
pub mod lost;
pub mod packet;
pub mod reason;
pub mod report;
pub mod reset;
pub mod summary;
pub mod tags;
pub mod tally;
pub mod time;

pub use attribution::AttributionReport;
pub use counter::{CounterReport, FlowReport};
pub use endpoint::{endpoint, endpoint_of, Endpoint};
pub use flags::TcpFlags;
pub use invalid::{ConntrackReport, Direction, Fate, InvalidReport, WindowReport};
pub use lost::{
    how_name, EvictedReport, FlowEntry, How, LostReport, MidstreamReport, TableFullReport,
};
pub use packet::{
    InvalidShows, MidstreamShows, Packet, ResetShows, Segment, Shows, TableFullShows,
};
pub use reason::ReasonText;
pub use report::Report;
pub use reset::{ResetReport, Trigger};
pub use summary::SummaryReport;
pub use tags::{Enrichment, NfHook, ResetCause};
pub use tally::{EvictedTally, InvalidTally, KindTally, StrayTally, TableTally};
pub use time::Time;
