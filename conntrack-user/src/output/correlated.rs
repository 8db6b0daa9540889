//! What the exit summary and the counters' notices need of the correlator, as output sees it:
//! `pipeline` implements it, so that output (below the pipeline) never imports the pipeline.

use crate::event::{StrayTally, Time};

/// The correlator's state at the end of a run (and its clock).
pub trait Correlated {
    /// Wall-clock time of a kernel timestamp (`CLOCK_BOOTTIME` nanoseconds).
    fn time(&self, boot_ns: u64) -> Time;
    /// `nf_conntrack_max` as the last batch had it.
    fn ct_max(&self) -> Option<u32>;
    /// Reasons on packets that were neither INVALID nor TCP (not reported).
    fn reasons_unmatched(&self) -> u64;
    /// Reports that went out without their lookup's answer.
    fn enrichment_skipped(&self) -> u64;
    /// Resets of packets of no tracked flow.
    fn strays(&self) -> StrayTally;
    /// `evicted` events that were inferred, not certain.
    fn evicted_inferred(&self) -> u64;
}
