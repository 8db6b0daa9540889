//! `lost` / `suppressed` notices and the `flow` rows of the reset summary.

use serde::Serialize;

use super::time::Time;

/// A kernel counter that moved since the last report: records lost to a full ring buffer or to
/// a failure, or suppressed by the event budget. Nothing is lost or suppressed silently.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CounterReport {
    pub time: Time,
    /// The counter (`lost_invalid`, `suppressed_reset`, `read_failed`, ...; see README).
    pub counter: &'static str,
    pub count: u64,
}

/// One flow of the reset summary (`--summary`): client -> service -> backend.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowReport {
    pub client: String,
    pub service: String,
    pub backend: String,
    pub resets: u64,
    pub reasons: Vec<String>,
    pub first: Time,
    pub last: Time,
}
