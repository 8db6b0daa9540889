//! From ring-buffer records to reports: decoding (`events`), the correlation core
//! (`attribution`) and the bounded map it waits in (`bounded`), conntrack's log line and entry
//! (`reason`), ctnetlink lookups beside the event path (`enrich`), lost entries with the
//! destroy-event thread (`lost`, `destroy`), the `lost`/`suppressed` notices of ct-trace's
//! kernel counters (`notices`), the stages as the event loop drives them (`pipe`),
//! and reports put in time order (`order`).

pub mod attribution;
pub mod bounded;
pub mod destroy;
pub mod enrich;
pub mod events;
pub mod lost;
pub mod notices;
pub mod order;
pub mod pipe;
pub mod reason;
