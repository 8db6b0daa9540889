//! From ring-buffer records to reports: decoding (`events`), the correlation core
//! (`attribution`), conntrack's log line and entry (`reason`), ctnetlink lookups beside the event
//! path (`enrich`), and lost entries with the destroy-event thread (`lost`, `destroy`).

pub mod attribution;
pub mod destroy;
pub mod enrich;
pub mod events;
pub mod lost;
pub mod reason;
